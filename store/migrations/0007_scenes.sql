-- Scenes: the change feed ingest writes with every batch, the scenes' watermarks and pending
-- deadlines, and the detections they produce (docs/scenes.md).

-- One row per readings table and committed batch, in the batch's transaction: the devices it
-- touched and its event-time span. xact is the writing transaction's id: a scene reads only rows
-- of transactions older than every transaction still running (pg_snapshot_xmin), so a batch that
-- commits late is never skipped by a watermark that has moved past it.
create table reading_batches (
    batch_id     bigint generated always as identity primary key,
    xact         xid8 not null default pg_current_xact_id(),
    committed_at timestamptz not null default now(),
    readings     text not null,             -- the readings table
    device_ids   text[] not null,
    min_ts       timestamptz not null,
    max_ts       timestamptz not null
);
create index reading_batches_xact on reading_batches (xact);

-- How far each partition (scene, district) has read the feed: every batch of a transaction
-- older than xact_horizon is done.
create table scene_watermarks (
    scene        text not null,
    district     text not null,
    xact_horizon xid8 not null,
    updated_at   timestamptz not null default now(),
    primary key (scene, district)
);

-- Devices a scene must look at again at a time of its own (a tilt that becomes a displaced cover
-- once it has lasted long enough), whether or not new readings arrive.
create table scene_deadlines (
    scene     text not null,
    device_id text not null,
    due_at    timestamptz not null,
    primary key (scene, device_id)
);
create index scene_deadlines_due on scene_deadlines (scene, due_at);

create table detections (
    detection_id    bigint generated always as identity primary key,
    scene           text not null,
    kind            text not null,             -- cover_displaced, cover_open, ...
    subject         text not null,             -- asset code, or device id without an asset
    device_id       text,
    district        text,
    severity        text not null check (severity in ('critical', 'major', 'minor', 'warning')),
    first_seen      timestamptz not null,
    last_seen       timestamptz not null,
    cleared_at      timestamptz,
    acknowledged_at timestamptz,
    count           integer not null default 1,
    evidence        jsonb not null,            -- readings that triggered it, thresholds in force
    case_id         bigint references cases (case_id),
    updated_at      timestamptz not null default now()
);
-- One episode is one detection: recomputing the same readings finds the same first_seen.
create unique index detections_episode on detections (subject, kind, first_seen);
-- At most one active detection per subject and kind.
create unique index detections_active on detections (subject, kind) where cleared_at is null;
create index detections_device on detections (device_id) where cleared_at is null;

-- The district each device lies in, by its component's region or else its own ('' for neither):
-- the scenes partition their work by it.
create view device_districts as
with recursive up as (
    select d.device_id, r.region_id, r.parent_id, r.level
    from devices d
    left join assets a on a.code = d.asset_code
    join regions r on r.region_id = coalesce(a.region_id, d.region_id)
    union all
    select up.device_id, r.region_id, r.parent_id, r.level
    from up join regions r on r.region_id = up.parent_id
    where up.level <> 'district'
)
select d.device_id, d.type, d.asset_code, coalesce(up.region_id, '') as district
from devices d left join up on up.device_id = d.device_id and up.level = 'district';
