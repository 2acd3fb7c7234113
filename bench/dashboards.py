"""How fast every dashboard query answers over a month of a large city, against raw readings.

A city of --devices devices (default 150,000: two thirds manhole covers, the rest lamps, in 10
districts, with 20,000 road segments and 500 sweepers) and --days days of its history (default
30) are generated in the database with SQL and stored in a fresh database on the server's storage
path: hourly cover heartbeats, lamp reports every 30 minutes, with ingest's change feed; each
night's lighting and sweeping indicators; detections (one a device and week, 2 % of devices
with an active one); 1,500 cases a day with their events and the month's evaluation. Then the hourly
rollups are brought up to date as the path keeps them (TimescaleDB: refresh_continuous_aggregate;
plain: store.rollups.refresh over the feed), timed.

Each SQL query of each dashboard (cityops/grafana.py), with Grafana's macros and variables
expanded over the month, runs --repeat times; reported: p50 and p99 per query (target: every p99
under 1 s). The time series that read a rollup run again with the rollup replaced by the same
aggregation of the raw readings (the baseline, same run): their ratio is the rollup's gain.

The last line of output is JSON.

Usage: python bench/dashboards.py [--devices 150000] [--days 30] [--repeat 20]
       [--database-server postgresql://postgres@127.0.0.1:5433/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cases import evaluation  # noqa: E402
from cityops import grafana  # noqa: E402
from store import db, rollups  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402

DISTRICTS = 10


def division(n: str) -> str:
    """The administrative division code (6 digits) of item ``n``'s district, in SQL."""
    return f"lpad((210100 + mod({n}, {DISTRICTS}))::text, 6, '0')"


DIVISION = division("n")
SEGMENTS = 20_000
SWEEPERS = 500
CASES_PER_DAY = 1_500
#: The rollups' aggregation over the raw readings, as migration 0012 defines them: the baseline.
RAW = {
    "manhole_hourly": (
        "(select date_bin('1 hour', ts, timestamptz '2000-01-01') as bucket, device_id, "
        "count(*) as readings, max(tilt_deg) as tilt_max_deg, max(water_level_cm) as water_max_cm, "
        "min(battery_pct) as battery_min_pct, "
        "sum(case when cover_open then 1 else 0 end) as open_readings "
        "from manhole_readings group by 1, 2) as manhole_hourly"
    ),
    "light_hourly": (
        "(select date_bin('1 hour', ts, timestamptz '2000-01-01') as bucket, device_id, "
        "count(*) as readings, sum(case when lamp_on then 1 else 0 end) as on_readings, "
        "avg(power_w) as power_avg_w, avg(dim_pct) as dim_avg_pct, "
        "max(energy_kwh) as energy_max_kwh from light_readings group by 1, 2) as light_hourly"
    ),
}


def timed(conn: psycopg.Connection, what: str, sql: str, params: dict | None = None) -> float:
    began = time.perf_counter()
    psycopg.ClientCursor(conn).execute(sql, params)  # several statements, bound client-side
    seconds = time.perf_counter() - began
    print(f"  {what}: {seconds:.1f} s", flush=True)
    return seconds


def fill(conn: psycopg.Connection, devices: int, days: int, start: datetime) -> dict[str, float]:
    """The city and its month, generated in SQL; the seconds each part took."""
    covers = devices * 2 // 3
    lamps = devices - covers
    end = start + timedelta(days=days)
    p = {"covers": covers, "lamps": lamps, "start": start, "end": end, "days": days}
    took = {}
    took["registry"] = timed(
        conn,
        "registry",
        f"""
        insert into regions (region_id, name, level)
            select 'd' || d, 'District ' || d, 'district'
            from generate_series(0, {DISTRICTS - 1}) d;
        insert into regions (region_id, name, level, parent_id)
            select 'd' || d || '-s0', 'Street ' || d, 'street', 'd' || d
            from generate_series(0, {DISTRICTS - 1}) d;
        insert into units (unit_id, name, level, kind, region_id)
            select 'd' || d || '-' || k, k || ' of d' || d, 'district', k, 'd' || d
            from generate_series(0, {DISTRICTS - 1}) d,
                 unnest(array['drainage', 'power', 'sanitation', 'coordinating']) k;
        insert into assets (code, division, major, minor, serial, category, owner_unit_id,
                            lat, lon, region_id, properties)
            select {DIVISION} || '0101' || lpad(n::text, 6, '0'),
                   {DIVISION}, '01', '01', lpad(n::text, 6, '0'),
                   'sewage', 'd' || mod(n, {DISTRICTS}) || '-drainage',
                   41.7 + random() * 0.2, 123.3 + random() * 0.3,
                   'd' || mod(n, {DISTRICTS}) || '-s0', '{{}}'
            from generate_series(1, %(covers)s) n;
        insert into assets (code, division, major, minor, serial, category, owner_unit_id,
                            lat, lon, region_id, properties)
            select {DIVISION} || '0201' || lpad(n::text, 6, '0'),
                   {DIVISION}, '02', '01', lpad(n::text, 6, '0'),
                   'street_lamp', 'd' || mod(n, {DISTRICTS}) || '-power',
                   41.7 + random() * 0.2, 123.3 + random() * 0.3,
                   'd' || mod(n, {DISTRICTS}) || '-s0',
                   jsonb_build_object('cabinet_id', 'cab-' || mod(n, {DISTRICTS}) || '-' || n / 300,
                                      'rated_power_w', 120)
            from generate_series(1, %(lamps)s) n;
        insert into devices (device_id, type, asset_code)
            select 'mh-' || n, 'manhole',
                   {DIVISION} || '0101' || lpad(n::text, 6, '0')
            from generate_series(1, %(covers)s) n;
        insert into devices (device_id, type, asset_code, gateway_id)
            select 'lp-' || n, 'light',
                   {DIVISION} || '0201' || lpad(n::text, 6, '0'),
                   'cab-' || mod(n, {DISTRICTS}) || '-' || n / 300
            from generate_series(1, %(lamps)s) n;
        insert into devices (device_id, type, region_id)
            select 'sw-' || n, 'sweeper', 'd' || mod(n, {DISTRICTS})
            from generate_series(1, {SWEEPERS}) n;
        insert into road_segments (segment_id, name, road_class, region_id, geometry, length_m,
                                   window_start, window_end)
            select 'seg-' || n, 'Road ' || n / 20, 'primary', 'd' || mod(n, {DISTRICTS}) || '-s0',
                   jsonb_build_object('type', 'LineString', 'coordinates', jsonb_build_array(
                       jsonb_build_array(123.3 + mod(n, 300) * 0.001, 41.7 + n / 300 * 0.001),
                       jsonb_build_array(123.302 + mod(n, 300) * 0.001, 41.7 + n / 300 * 0.001))),
                   170, '00:00', '06:30'
            from generate_series(1, {SEGMENTS}) n;
        """,
        p,
    )
    took["manhole_readings"] = timed(
        conn,
        "cover heartbeats (hourly)",
        "insert into manhole_readings (device_id, ts, tilt_deg, cover_open, water_level_cm, "
        "battery_pct, rssi_dbm, temp_c) "
        "select 'mh-' || n, t, random() * 3, false, random() * 20, 90 - extract(epoch from "
        "t - %(start)s) / 86400 * 0.1, -90 + random() * 20, 5 + random() * 10 "
        "from generate_series(1, %(covers)s) n, "
        "generate_series(%(start)s, %(end)s - interval '1 second', interval '1 hour') t",
        p,
    )
    took["light_readings"] = timed(
        conn,
        "lamp reports (every 30 minutes)",
        "insert into light_readings (device_id, ts, lamp_on, dim_pct, voltage_v, current_a, "
        "power_w, power_factor, energy_kwh, fault_code) "
        "select 'lp-' || n, t, lit, case when lit then 100 else 0 end, 225 + random() * 10, "
        "case when lit then 0.5 else 0 end, case when lit then 110 + random() * 10 else 0 end, "
        "0.95, extract(epoch from t - %(start)s) / 86400 * 1.3, 0 "
        "from generate_series(1, %(lamps)s) n, "
        "generate_series(%(start)s, %(end)s - interval '1 second', interval '30 minutes') t, "
        "lateral (select extract(hour from t at time zone 'Asia/Shanghai') not between 7 and 16 "
        "as lit) l",
        p,
    )
    took["feed"] = timed(
        conn,
        "change feed (a batch per type and hour)",
        "insert into reading_batches (readings, device_ids, min_ts, max_ts) "
        "select r, (select array_agg(device_id) from devices where type = ty), h, "
        "h + interval '59 minutes' from generate_series(%(start)s, %(end)s - interval '1 hour', "
        "interval '1 hour') h, (values ('manhole_readings', 'manhole'), "
        "('light_readings', 'light')) v(r, ty)",
        p,
    )
    took["nights"] = timed(
        conn,
        "nights: lighting, roads, sweepers",
        f"""
        insert into lighting_nights (night, device_id, district, expected_s, lit_s, unknown_s,
                                     energy_kwh, day_burn_s, day_burn_kwh)
            select night, 'lp-' || n, 'd' || mod(n, {DISTRICTS}), 50400,
                   50400 * (0.95 + random() * 0.05), 0, 1.3,
                   case when random() < 0.01 then 3600 else 0 end, 0
            from generate_series(1, %(lamps)s) n,
                 generate_series(%(start)s::date, (%(end)s - interval '1 day')::date,
                                 interval '1 day') night;
        insert into road_nights (night, segment_id, district, coverage, passes, required,
                                 fast_passes, idle_passes)
            select night, 'seg-' || n, 'd' || mod(n, {DISTRICTS}), least(1, 0.7 + random() * 0.4),
                   (random() < 0.95)::int, 1, (random() < 0.02)::int, (random() < 0.01)::int
            from generate_series(1, {SEGMENTS}) n,
                 generate_series(%(start)s::date, (%(end)s - interval '1 day')::date,
                                 interval '1 day') night;
        insert into sweeper_nights (night, device_id, district, swept_km, driven_km,
                                    over_limit_s, fixes)
            select night, 'sw-' || n, 'd' || mod(n, {DISTRICTS}), 30 + random() * 10,
                   40 + random() * 10, random() * 600, 23400
            from generate_series(1, {SWEEPERS}) n,
                 generate_series(%(start)s::date, (%(end)s - interval '1 day')::date,
                                 interval '1 day') night;
        """,
        p,
    )
    took["detections_and_cases"] = timed(
        conn,
        "detections, cases and their events",
        f"""
        insert into detections (scene, kind, subject, device_id, district, severity, first_seen,
                                last_seen, cleared_at, evidence)
            select case when x.type = 'manhole' then 'covers' else 'lighting' end,
                   case when x.type = 'manhole' then 'cover_displaced' else 'lamp_out' end,
                   x.asset_code, x.device_id, 'd' || substr(x.asset_code, 6, 1),
                   case when random() < 0.2 then 'critical' else 'major' end, x.s, x.s,
                   case when not x.active then x.s + interval '2 hours' end, '{{}}'
            from (select d.*, %(start)s + w * interval '7 days' + random() * interval '6 days'
                         as s, w = %(days)s / 7 - 1 and random() < 0.02 as active
                  from devices d, generate_series(0, %(days)s / 7 - 1) w
                  where d.type in ('manhole', 'light')) x;
        insert into cases (category, subject, source, state, unit_id, routed_unit_id, district_id,
                           severity, reported_at, dispatched_at, deadline, disposed_at, closed_at,
                           updated_at)
            select 'cover_displaced', a.code, 'sensor',
                   case when c.closed then 'closed' else 'dispatched' end,
                   a.owner_unit_id, a.owner_unit_id, 'd' || substr(a.code, 6, 1),
                   case when random() < 0.1 then 'critical' else 'major' end, c.at, c.at,
                   c.at + interval '4 hours',
                   case when c.closed then c.at + interval '3 hours' end,
                   case when c.closed then c.at + interval '5 hours' end, c.at
            from (select mod(n, %(covers)s) + 1 as m, random() < 0.9 as closed,
                         %(start)s + random() * (%(end)s - %(start)s) as at
                  from generate_series(1, {CASES_PER_DAY} * %(days)s) n) c
            join assets a on a.code = {division("c.m")} || '0101' || lpad(c.m::text, 6, '0')
            on conflict do nothing;
        insert into case_events (case_id, at, actor, action, from_state, to_state, unit_id, data)
            select case_id, reported_at, 'system', 'open', null, 'reported', null, null from cases
            union all
            select case_id, dispatched_at, 'system', 'dispatch', 'reported', 'dispatched', unit_id,
                   '{{"deadline_h": 4}}'::jsonb from cases
            union all
            select case_id, disposed_at, unit_id, 'dispose', 'accepted', 'disposed', unit_id, null
            from cases where disposed_at is not null
            union all
            select case_id, closed_at, 'system', 'verify', 'disposed', 'closed', unit_id, null
            from cases where closed_at is not null;
        insert into detections (scene, kind, subject, district, severity, first_seen, last_seen,
                                evidence)
            select 'lighting', 'cabinet_outage', 'cab-' || k, 'd' || mod(k, {DISTRICTS}),
                   'critical', %(end)s - interval '2 hours', %(end)s, '{{}}'
            from generate_series(0, %(lamps)s / 30 / 100) k;
        insert into quarantine (received_at, topic, reason, detail, payload, payload_bytes)
            select %(start)s + random() * (%(end)s - %(start)s), 'cityops/v1/manhole/x/telemetry',
                   (array['invalid_json', 'unknown_device', 'out_of_range'])[1 + mod(n, 3)],
                   'generated', '\\x00', 1
            from generate_series(1, 300 * %(days)s) n;
        insert into scene_watermarks (scene, district, xact_horizon)
            select s, d, pg_current_xact_id()
            from unnest(array['covers', 'health', 'lighting', 'roads']) s,
                 (select region_id as d from regions where level = 'district'
                  union all select '') r;
        """,
        p,
    )
    conn.execute("analyze")
    return took


def refresh_rollups(conn: psycopg.Connection, path: db.StoragePath) -> float:
    began = time.perf_counter()
    if path is db.StoragePath.TIMESCALEDB:
        for rollup in rollups.ROLLUPS:
            conn.execute("call refresh_continuous_aggregate(%s, null, null)", (rollup,))
    else:
        rollups.refresh(conn)
    conn.execute("analyze")
    return time.perf_counter() - began


def quantiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=150_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    url = db.with_database(args.database_server, f"bench_dashboards_{uuid.uuid4().hex[:6]}")
    db.ensure_database(DatabaseSettings(url=url))
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=args.days)
    try:
        path = db.migrate(DatabaseSettings(url=url)).path
        print(f"storage path {path.value}; {args.devices} devices, {args.days} days", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            if path is db.StoragePath.TIMESCALEDB:  # the bench refreshes; no job under its feet
                conn.execute(
                    "select alter_job(job_id, scheduled => false) "
                    "from timescaledb_information.jobs where hypertable_name is not null"
                )
            took = fill(conn, args.devices, args.days, start)
            month = evaluation.months_to_store(datetime.now(UTC))[1]
            began = time.perf_counter()
            evaluation.store(conn, month)
            took["evaluation"] = time.perf_counter() - began
            took["rollups"] = refresh_rollups(conn, path)
            print(f"  rollups: {took['rollups']:.1f} s; evaluation: {took['evaluation']:.1f} s")
            readings = {
                t: conn.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
                for t in ("manhole_readings", "light_readings")
            }
            variables = {
                "district": "d1",
                "cover": "mh-11",
                "lamp": "lp-11",
                "night": (today - timedelta(days=1)).date().isoformat(),
                "month": month,
            }
            panels = []
            for board in grafana.DASHBOARDS:
                for title, query in grafana.sql_queries(board):
                    sql = grafana.render(
                        query.sql, start=start, end=datetime.now(UTC), variables=variables
                    )
                    row = measure(conn, sql, args.repeat)
                    rollup = next((r for r in RAW if f"from {r} " in sql), None)
                    if rollup is not None:
                        raw = measure(
                            conn,
                            sql.replace(f"from {rollup} ", f"from {RAW[rollup]} "),
                            args.repeat,
                        )
                        row["raw_p50_s"], row["raw_p99_s"] = raw["p50_s"], raw["p99_s"]
                        row["raw_rows"] = raw["rows"]
                        row["x_raw_p99"] = round(raw["p99_s"] / row["p99_s"], 1)
                    row = {"dashboard": board.uid, "query": title, **row}
                    print(
                        f"{board.uid:18} {title[:48]:48} p50 {row['p50_s'] * 1000:7.1f} ms  "
                        f"p99 {row['p99_s'] * 1000:7.1f} ms  rows {row['rows']}"
                        + (
                            f"  raw p99 {row['raw_p99_s'] * 1000:8.1f} ms ({row['x_raw_p99']}x)"
                            if "raw_p99_s" in row
                            else ""
                        ),
                        flush=True,
                    )
                    panels.append(row)
    finally:
        if not args.keep:
            with psycopg.connect(args.database_server, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{db.database_name(url)}" with (force)')
    slowest = max(panels, key=lambda r: r["p99_s"])
    report = {
        "bench": "dashboards",
        "path": path.value,
        "devices": args.devices,
        "days": args.days,
        "readings": readings,
        "fill_s": {k: round(v, 1) for k, v in took.items()},
        "queries": len(panels),
        "slowest": {
            "query": f"{slowest['dashboard']}: {slowest['query']}",
            "p99_s": slowest["p99_s"],
        },
        "all_p99_under_1s": all(r["p99_s"] < 1.0 for r in panels),
        "rollup_x_raw_p99": {
            f"{r['dashboard']}: {r['query']}": r["x_raw_p99"] for r in panels if "x_raw_p99" in r
        },
        "panels": panels,
    }
    print(json.dumps(report))


def measure(conn: psycopg.Connection, sql: str, repeat: int) -> dict:
    times = []
    rows = 0
    for _ in range(repeat):
        began = time.perf_counter()
        rows = len(conn.execute(sql).fetchall())
        times.append(time.perf_counter() - began)
    p50, p99 = quantiles(times)
    return {"p50_s": round(p50, 4), "p99_s": round(p99, 4), "rows": rows}


if __name__ == "__main__":
    main()
