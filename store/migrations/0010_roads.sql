-- Clean roads (docs/scenes.md): each night's coverage per road segment and totals per sweeper.

-- One row per segment and night (the plan's window of that night, local time): the covered
-- share of its length, its valid passes, and the passes too fast or with brushes up.
create table road_nights (
    night          date not null,
    segment_id     text not null references road_segments (segment_id) on delete cascade,
    district       text not null,
    coverage       double precision not null check (coverage between 0 and 1),
    passes         integer not null,
    required       integer not null,
    fast_passes    integer not null,
    idle_passes    integer not null,
    computed_at    timestamptz not null default now(),
    primary key (night, segment_id)
);
create index road_nights_district on road_nights (night, district);

-- One row per sweeper and night: what it swept and drove inside its segments' windows.
create table sweeper_nights (
    night        date not null,
    device_id    text not null,
    district     text not null,
    swept_km     double precision not null,
    driven_km    double precision not null,
    over_limit_s double precision not null,   -- brushing faster than the segments' limits
    fixes        integer not null,
    computed_at  timestamptz not null default now(),
    primary key (night, device_id)
);

-- The district each road segment lies in ('' for none): the scenes partition their work by it.
create view segment_districts as
with recursive up as (
    select s.segment_id, r.region_id, r.parent_id, r.level
    from road_segments s join regions r on r.region_id = s.region_id
    union all
    select up.segment_id, r.region_id, r.parent_id, r.level
    from up join regions r on r.region_id = up.parent_id
    where up.level <> 'district'
)
select s.segment_id, coalesce(up.region_id, '') as district
from road_segments s left join up on up.segment_id = s.segment_id and up.level = 'district';
