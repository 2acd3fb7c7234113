-- Cases: one row per case (derivable from its events), an append-only event log, unit tokens.

create table cases (
    case_id        bigint generated always as identity primary key,
    category       text not null,
    subject        text not null,          -- asset code, device id, segment id, or lat,lon
    source         text not null check (source in ('sensor', 'inspector', 'citizen')),
    state          text not null,
    unit_id        text references units (unit_id),   -- responsible now
    routed_unit_id text references units (unit_id),   -- where routing sends it
    district_id    text references regions (region_id),
    severity       text not null,
    description    text,
    photo_url      text,
    lat            double precision,
    lon            double precision,
    reported_at    timestamptz not null,
    dispatched_at  timestamptz,
    deadline       timestamptz,
    accepted_at    timestamptz,
    disposed_at    timestamptz,
    closed_at      timestamptz,
    escalated_at   timestamptz,
    returns        integer not null default 0,
    reworks        integer not null default 0,
    reports        integer not null default 1,
    updated_at     timestamptz not null
);
-- One open case per (subject, category): repeats become events of the open case.
create unique index cases_one_open on cases (subject, category)
    where state not in ('closed', 'cancelled');
create index cases_unit_state on cases (unit_id, state, case_id);
create index cases_district_state on cases (district_id, state, case_id);
create index cases_deadline on cases (deadline) where state not in ('closed', 'cancelled');

create table case_events (
    event_id    bigint generated always as identity primary key,
    case_id     bigint not null references cases (case_id),
    at          timestamptz not null,
    actor       text not null,
    action      text not null,
    from_state  text,
    to_state    text not null,
    unit_id     text,
    note        text,
    photo_url   text,
    data        jsonb                    -- e.g. the deadline hours a dispatch granted
);
create index case_events_case on case_events (case_id, event_id);

create table unit_tokens (
    token_sha256  text primary key,
    unit_id       text not null references units (unit_id),
    role          text not null check (role in ('unit', 'coordinator', 'operator')),
    created_at    timestamptz not null default now()
);
