-- The rest of a city's registry: category-specific component properties (a lamp's cabinet,
-- circuit and rated power; a cover's installed angle), the district a device works in, and the
-- road segments with their sweeping plan.

alter table assets add column properties jsonb not null default '{}';

alter table devices add column region_id text references regions (region_id);

create table road_segments (
    segment_id       text primary key,
    name             text not null,
    road_class       text not null,
    region_id        text references regions (region_id),
    geometry         jsonb not null,          -- GeoJSON LineString, WGS-84
    length_m         double precision not null check (length_m > 0),
    required_passes  integer not null default 1 check (required_passes >= 0),
    window_start     time,
    window_end       time,
    max_speed_kmh    real not null default 8 check (max_speed_kmh > 0),
    working_width_m  real not null default 3 check (working_width_m > 0)
);
create index road_segments_region on road_segments (region_id);
