-- Anomaly models (models/): versioned per device type, each with its training window, feature
-- list, library versions, validation figures and its skops file with the file's checksum. At
-- most one model of a type is active: the one the scenes score with.
create table models (
    model_id       bigint generated always as identity primary key,
    device_type    text not null,
    version        integer not null,
    detector       text not null check (detector in ('robust', 'forest')),
    state          text not null default 'trained'
                   check (state in ('trained', 'active', 'retired')),
    trained_at     timestamptz not null default now(),
    trained_from   timestamptz not null,
    trained_until  timestamptz not null,
    window_h       integer not null check (window_h > 0),
    features       text[] not null,
    threshold      double precision not null,
    seed           integer not null,
    libraries      jsonb not null,
    validation     jsonb not null,
    sha256         text not null,
    file           bytea not null,
    activated_at   timestamptz,
    retired_at     timestamptz,
    unique (device_type, version)
);
create unique index models_one_active on models (device_type) where state = 'active';
