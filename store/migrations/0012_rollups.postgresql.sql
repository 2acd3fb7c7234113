-- Plain PostgreSQL path only: the hourly rollups of 0012_rollups.timescaledb.sql as tables, with
-- the same names and columns, kept by the scenes service from ingest's change feed
-- (store/rollups.py): each refresh re-aggregates, for every device in the batches of
-- transactions between its watermark and the horizon, the hours those batches span. Readings
-- are never changed once stored, so a late batch re-aggregates its hours and nothing else.
-- Retention deletes their rows with the readings' (store/partitions.py).

create table rollup_watermarks (
    rollup        text primary key,
    xact_horizon  xid8 not null,
    updated_at    timestamptz not null default now()
);

create table manhole_hourly (
    bucket           timestamptz not null,
    device_id        text not null,
    readings         bigint not null,
    tilt_max_deg     real,
    water_max_cm     real,
    battery_min_pct  real,
    open_readings    bigint not null,
    primary key (device_id, bucket)
);

create table light_hourly (
    bucket          timestamptz not null,
    device_id       text not null,
    readings        bigint not null,
    on_readings     bigint not null,
    power_avg_w     double precision,
    dim_avg_pct     double precision,
    energy_max_kwh  double precision,
    primary key (device_id, bucket)
);

-- The devices of ``readings``'s batches of transactions in [from_xact, to_xact), each with the
-- hours its batches span.
create function cityops_fed_hours(readings text, from_xact xid8, to_xact xid8)
    returns table (device_id text, since timestamptz, until timestamptz)
    language sql stable as $$
    select t.device_id, date_bin('1 hour', min(b.min_ts), timestamptz '2000-01-01 00:00:00+00'),
        date_bin('1 hour', max(b.max_ts), timestamptz '2000-01-01 00:00:00+00') + interval '1 hour'
    from reading_batches b cross join unnest(b.device_ids) as t(device_id)
    where b.readings = $1 and b.xact >= from_xact and b.xact < to_xact
    group by 1
$$;

-- Re-aggregate the hours of those batches; the rows written.
create function cityops_refresh_manhole_hourly(from_xact xid8, to_xact xid8) returns bigint
    language sql as $$
    with written as (
        insert into manhole_hourly
        select
            date_bin('1 hour', r.ts, timestamptz '2000-01-01 00:00:00+00'),
            r.device_id,
            count(*),
            max(r.tilt_deg),
            max(r.water_level_cm),
            min(r.battery_pct),
            sum(case when r.cover_open then 1 else 0 end)
        from cityops_fed_hours('manhole_readings', from_xact, to_xact) as f
        join manhole_readings r
            on r.device_id = f.device_id and r.ts >= f.since and r.ts < f.until
        group by 1, 2
        on conflict (device_id, bucket) do update set
            readings = excluded.readings,
            tilt_max_deg = excluded.tilt_max_deg,
            water_max_cm = excluded.water_max_cm,
            battery_min_pct = excluded.battery_min_pct,
            open_readings = excluded.open_readings
        returning 1
    )
    select count(*) from written
$$;

create function cityops_refresh_light_hourly(from_xact xid8, to_xact xid8) returns bigint
    language sql as $$
    with written as (
        insert into light_hourly
        select
            date_bin('1 hour', r.ts, timestamptz '2000-01-01 00:00:00+00'),
            r.device_id,
            count(*),
            sum(case when r.lamp_on then 1 else 0 end),
            avg(r.power_w),
            avg(r.dim_pct),
            max(r.energy_kwh)
        from cityops_fed_hours('light_readings', from_xact, to_xact) as f
        join light_readings r
            on r.device_id = f.device_id and r.ts >= f.since and r.ts < f.until
        group by 1, 2
        on conflict (device_id, bucket) do update set
            readings = excluded.readings,
            on_readings = excluded.on_readings,
            power_avg_w = excluded.power_avg_w,
            dim_avg_pct = excluded.dim_avg_pct,
            energy_max_kwh = excluded.energy_max_kwh
        returning 1
    )
    select count(*) from written
$$;
