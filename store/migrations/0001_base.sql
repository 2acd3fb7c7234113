-- cityops base schema: registry (units, regions, assets, devices), readings per device type,
-- quarantine. Shared by the TimescaleDB and the plain PostgreSQL path; the TimescaleDB path then
-- turns the *_readings tables and device_status into hypertables (store/db.py).

create table units (
    unit_id    text primary key,
    name       text not null,
    name_zh    text,
    level      text not null check (level in ('city', 'district', 'street', 'grid')),
    kind       text not null,            -- sanitation, drainage, power, ..., coordinating
    parent_id  text references units (unit_id),
    region_id  text
);

create table regions (
    region_id  text primary key,
    name       text not null,
    level      text not null check (level in ('district', 'street', 'grid')),
    parent_id  text references regions (region_id),
    boundary   jsonb                     -- GeoJSON geometry, WGS-84
);

-- The component dictionary: every coded piece of city infrastructure.
create table assets (
    code               text primary key check (code ~ '^[0-9]{16}$'),
    division           text not null,    -- administrative division (6 digits)
    major              text not null,
    minor              text not null,
    serial             text not null,
    category           text not null,
    name               text,
    competent_unit_id  text references units (unit_id),
    owner_unit_id      text references units (unit_id),
    maintainer_unit_id text references units (unit_id),
    lat                double precision check (lat between -90 and 90),
    lon                double precision check (lon between -180 and 180),
    accuracy_class     text check (accuracy_class in ('A', 'B', 'C')),
    region_id          text references regions (region_id),
    state              text not null default 'in_service',
    updated_at         timestamptz not null default now()
);
create index assets_category on assets (major, minor);

create table devices (
    device_id        text primary key check (device_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    type             text not null check (type in ('manhole', 'sweeper', 'light', 'gateway')),
    asset_code       text references assets (code),
    gateway_id       text,
    firmware         text,
    registered_at    timestamptz not null default now(),
    auto_registered  boolean not null default false,
    last_seen        timestamptz
);

create table manhole_readings (
    device_id       text not null,
    ts              timestamptz not null,
    tilt_deg        real,
    cover_open      boolean,
    water_level_cm  real,
    battery_pct     real,
    rssi_dbm        real,
    temp_c          real,
    event           text
);
create unique index manhole_readings_key on manhole_readings (device_id, ts);

create table sweeper_readings (
    device_id    text not null,
    ts           timestamptz not null,
    lat          double precision not null,
    lon          double precision not null,
    speed_kmh    real,
    heading_deg  real,
    brush_on     boolean,
    spray_on     boolean
);
create unique index sweeper_readings_key on sweeper_readings (device_id, ts);

create table light_readings (
    device_id     text not null,
    ts            timestamptz not null,
    lamp_on       boolean,
    dim_pct       real,
    voltage_v     real,
    current_a     real,
    power_w       real,
    power_factor  real,
    energy_kwh    double precision,
    fault_code    integer
);
create unique index light_readings_key on light_readings (device_id, ts);

create table device_status (
    device_id  text not null,
    ts         timestamptz not null,
    online     boolean,
    firmware   text
);
create unique index device_status_key on device_status (device_id, ts);

create table quarantine (
    id             bigint generated always as identity primary key,
    received_at    timestamptz not null,
    topic          text not null,
    reason         text not null,
    detail         text not null,
    payload        bytea not null,       -- capped at ingest.quarantine_raw_max_bytes
    payload_bytes  integer not null      -- the full size
);
create index quarantine_reason on quarantine (reason, received_at);
