-- TimescaleDB path only: hourly rollups of covers and lamps, per device, as continuous aggregates
-- (the dashboards' time series read these instead of the raw readings). The plain path keeps the
-- same relations, with the same columns, as tables (0012_rollups.postgresql.sql).
--
-- Real-time (materialized_only = false): the hours the policy has not materialized yet are
-- aggregated from the readings at query time, so a panel shows the last minutes too. The policy
-- re-materializes the last 3 days every 5 minutes; older late readings are recorded in the
-- aggregate's invalidation log and materialized by the next refresh that covers them.

create materialized view manhole_hourly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
    time_bucket('1 hour', ts) as bucket,
    device_id,
    count(*) as readings,
    max(tilt_deg) as tilt_max_deg,
    max(water_level_cm) as water_max_cm,
    min(battery_pct) as battery_min_pct,
    sum(case when cover_open then 1 else 0 end) as open_readings
from manhole_readings
group by 1, 2
with no data;

select add_continuous_aggregate_policy(
    'manhole_hourly',
    start_offset => interval '3 days',
    end_offset => interval '1 hour',
    schedule_interval => interval '5 minutes'
);

create materialized view light_hourly
with (timescaledb.continuous, timescaledb.materialized_only = false) as
select
    time_bucket('1 hour', ts) as bucket,
    device_id,
    count(*) as readings,
    sum(case when lamp_on then 1 else 0 end) as on_readings,
    avg(power_w) as power_avg_w,
    avg(dim_pct) as dim_avg_pct,
    max(energy_kwh) as energy_max_kwh
from light_readings
group by 1, 2
with no data;

select add_continuous_aggregate_policy(
    'light_hourly',
    start_offset => interval '3 days',
    end_offset => interval '1 hour',
    schedule_interval => interval '5 minutes'
);
