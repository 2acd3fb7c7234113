"""How fast the scenes judge a stored day of a large city, and how well, against ground truth.

A city of --covers manhole covers (default 100,000; no lamps or sweepers) is generated, imported
into a fresh database, and a day of its fleet is simulated with faults of every cover and
device-health kind. The day's messages go through the real decoder and batch writer (binary COPY,
with the change feed the scenes read), as ingest would store them. Then each scene runs once over
everything pending (all partitions, as `cityops scenes run --once`), timed on its own.

Reported per scene: devices judged, readings it read, seconds, readings per second, and that rate
against what a 150,000-device city produces (150,000 x the readings per device per day of this
run / 86,400 s; the issue's target: >= 20 x); the detections and cases it wrote; precision,
recall and delay per kind against the run's ground truth. The load rate is reported beside it.
--live instead measures the alarm-to-case delay with everything running as shipped: a private
Mosquitto, `cityops ingest` and `cityops scenes run` (default settings: 5 s sustain, wake-ups on
alarms); --alarms covers of a small city each publish a tilt alarm (one every --spacing-s
seconds); the delay of each is from its publication to its case's row (both clocks are this
machine's). Reported: p50, p99 and max, against the 30 s budget (GB/T 41401).

The last line of output is JSON.

Usage: python bench/scenes.py [--covers 100000] [--hours 24]
       python bench/scenes.py --live [--alarms 60] [--spacing-s 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psycopg
from paho.mqtt.enums import MQTTProtocolVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cases.catalog import load_catalog  # noqa: E402
from cityops.services import start_mosquitto  # noqa: E402
from cityops.simulate import store_run  # noqa: E402
from devices.codes import CodeScheme  # noqa: E402
from devices.registry import import_bundle  # noqa: E402
from scenes.engine import COVERS, HEALTH, run_once  # noqa: E402
from scenes.score import Interval, KindScore, score, stored_detections  # noqa: E402
from scenes.settings import ScenesSettings  # noqa: E402
from simulator.city import CitySpec, generate, write_bundle  # noqa: E402
from simulator.fleet import RunOptions, simulate  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from store import db  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402
from wire.mqtt import BrokerAddress, make_client  # noqa: E402

START = 1_759_766_400.0  # 2025-10-06T16:00:00Z, midnight in the city
RATES = {
    "cover_displaced": 0.004,
    "cover_open": 0.004,
    "cover_loose": 0.004,
    "water_rising": 0.004,
    "sensor_offline": 0.01,
    "battery_drain": 0.004,
    "clock_skew": 0.002,
    "flooding": 0.002,
}
CITY_DEVICES = 150_000


def load(url: str, publications: list, devices: list[dict]) -> tuple[int, float]:
    """Store the run's messages as ingest would; return the readings stored and the seconds."""
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        stored = store_run(conn, publications, devices)
    return stored, time.perf_counter() - started


def live(args: argparse.Namespace) -> dict[str, object]:
    """The alarm-to-case delay with ingest and the scenes running as processes."""
    url = db.with_database(args.database_server, f"bench_live_{uuid.uuid4().hex[:6]}")
    db.ensure_database(DatabaseSettings(url=url))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db.migrate(DatabaseSettings(url=url))
        city = generate(CitySpec(seed=9, covers=max(args.alarms, 10), lamps=0))
        covers = [d["device_id"] for d in city.devices if d["type"] == "manhole"][: args.alarms]
        with tempfile.TemporaryDirectory() as tmp:
            with psycopg.connect(url, autocommit=True) as conn:
                write_bundle(city, Path(tmp) / "city")
                import_bundle(conn, Path(tmp) / "city", CodeScheme.parse("6+2+2+6"))
            with start_mosquitto(ROOT / "config/mosquitto/cityops.conf", Path(tmp)) as broker:
                env = {
                    **os.environ,
                    "PYTHONPATH": str(ROOT),
                    "CITYOPS_DATABASE_URL": url,
                    "CITYOPS_MQTT_URL": broker,
                    "CITYOPS_MQTT_CLIENT_ID": f"live-{uuid.uuid4().hex[:6]}",
                    "CITYOPS_METRICS_PORT": "0",
                }
                for command in ("ingest", "scenes"):
                    args_ = [sys.executable, "-m", "cityops", command]
                    if command == "scenes":
                        args_.append("run")
                    log = (Path(tmp) / f"{command}.log").open("wb")
                    procs.append(subprocess.Popen(args_, env=env, stdout=log, stderr=log, cwd=ROOT))
                ingest_log = Path(tmp) / "ingest.log"

                def ready(conn: psycopg.Connection) -> bool:
                    """Ingest has subscribed, and the scenes listen for alarms."""
                    listening = conn.execute(
                        "select count(*) from pg_stat_activity "
                        "where datname = current_database() and query ilike 'listen %%'"
                    ).fetchone()
                    subscribed = "subscribed to" in ingest_log.read_text(errors="replace")
                    return subscribed and listening is not None and listening[0] > 0

                delays = _alarm_delays(url, broker, covers, args.spacing_s, ready)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        drop(args.database_server, url)
    q = np.percentile(delays, [50, 99])
    report = {
        "bench": "scenes_live",
        "alarms": len(delays),
        "delay_p50_s": round(float(q[0]), 2),
        "delay_p99_s": round(float(q[1]), 2),
        "delay_max_s": round(max(delays), 2),
        "p99_vs_30s_budget": round(float(q[1]) / 30, 2),
    }
    print(
        f"{len(delays)} alarms: publication to case p50 {q[0]:.1f} s, p99 {q[1]:.1f} s, "
        f"max {max(delays):.1f} s (budget 30 s)",
        flush=True,
    )
    return report


def _alarm_delays(
    url: str,
    broker: str,
    covers: list[str],
    spacing_s: float,
    ready: Callable[[psycopg.Connection], bool],
) -> list[float]:
    address = BrokerAddress.of(broker)
    client = make_client(broker, MQTTProtocolVersion.MQTTv5, f"alarms-{uuid.uuid4().hex[:6]}")
    client.connect(address.host, address.port)
    client.loop_start()
    published: dict[str, float] = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while not ready(conn):
                if time.monotonic() > deadline:
                    msg = "ingest or the scenes did not start within 60 s"
                    raise RuntimeError(msg)
                time.sleep(0.2)
            for device in covers:
                now = time.time()
                body = {"ts": int(now * 1000), "tilt_deg": 27.0, "event": "tilt_alarm"}
                client.publish(f"cityops/v1/manhole/{device}/event", json.dumps(body), qos=1)
                published[device] = now
                time.sleep(spacing_s)
            deadline = time.monotonic() + 120
            while True:
                rows = conn.execute(
                    "select d.device_id, extract(epoch from c.reported_at)::float8 "
                    "from detections d join cases c using (case_id) where d.device_id = any(%s)",
                    (covers,),
                ).fetchall()
                if len(rows) == len(covers) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        client.disconnect()
        client.loop_stop()
    if len(rows) < len(covers):
        msg = f"only {len(rows)} of {len(covers)} alarms became cases within 120 s"
        raise RuntimeError(msg)
    return [reported - published[device] for device, reported in rows]


def print_scores(scores: list[KindScore]) -> dict[str, dict[str, object]]:
    """Print a line per kind; return the figures per kind for the bench's JSON line."""
    for s in scores:
        print(
            f"  {s.kind:16} faults {s.faults:5} (+{s.undetectable} undetectable) found "
            f"{s.detections:5} precision {s.precision} recall {s.recall} "
            f"delay p50 {s.delay_p50_s} p99 {s.delay_p99_s}",
            flush=True,
        )
    return {s.kind: {k: v for k, v in asdict(s).items() if k != "kind"} for s in scores}


def drop(server: str, url: str) -> None:
    """Drop the bench's database."""
    with psycopg.connect(server, autocommit=True) as conn:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        conn.execute(f'drop database if exists "{name}" with (force)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--covers", type=int, default=100_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--live", action="store_true", help="measure the alarm-to-case delay")
    parser.add_argument("--alarms", type=int, default=60)
    parser.add_argument("--spacing-s", type=float, default=0.5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    if args.live:
        print(json.dumps(live(args)))
        return
    duration_s = args.hours * 3600
    url = db.with_database(args.database_server, f"bench_scenes_{uuid.uuid4().hex[:6]}")
    db.ensure_database(DatabaseSettings(url=url))
    try:
        db.migrate(DatabaseSettings(url=url))
        spec = CitySpec(seed=5, districts=8, covers=args.covers, lamps=0, sweepers_per_district=0)
        city = generate(spec)
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
            write_bundle(city, Path(tmp))
            import_bundle(conn, Path(tmp), CodeScheme.parse("6+2+2+6"))
        t = time.perf_counter()
        run = simulate(city, Scenario(rates=RATES), RunOptions(start=START, duration_s=duration_s))
        simulate_s = time.perf_counter() - t
        devices = city.devices
        stored, load_s = load(url, run.publications, devices)
        print(
            f"city of {args.covers} covers, {len(run.faults)} faults; simulated "
            f"{len(run.publications)} messages in {simulate_s:.1f} s; stored {stored} readings "
            f"in {load_s:.1f} s ({stored / load_s:.0f}/s)",
            flush=True,
        )
        per_device_day = stored / len(devices) / (duration_s / 86_400)
        produced_per_s = CITY_DEVICES * per_device_day / 86_400
        catalog = load_catalog(ROOT / "config" / "categories.toml")
        report: dict[str, object] = {
            "bench": "scenes",
            "covers": args.covers,
            "hours": args.hours,
            "readings": stored,
            "load_readings_per_s": round(stored / load_s),
            "city_150k_readings_per_s": round(produced_per_s, 1),
        }
        with psycopg.connect(url) as conn:
            for scene in (COVERS, HEALTH):
                t = time.perf_counter()
                results = run_once(
                    conn, ScenesSettings(), catalog, now=START + duration_s, scenes=(scene,)
                )
                seconds = time.perf_counter() - t
                rate = stored / seconds
                figures = {
                    "devices": sum(r.devices for r in results),
                    "detections": sum(r.detections for r in results),
                    "cases_opened": sum(r.cases_opened for r in results),
                    "cases_verified": sum(r.cases_verified for r in results),
                    "seconds": round(seconds, 2),
                    "readings_per_s": round(rate),
                    "x_city_150k": round(rate / produced_per_s, 1),
                }
                report[scene.name] = figures
                print(f"{scene.name:8}", figures, flush=True)
            faults = [Interval(f.kind, f.subject, f.start, f.end, f.detectable) for f in run.faults]
            scores = score(faults, stored_detections(conn, None, None), allowed_delay_s=7200)
        report["scores"] = print_scores(scores)
    finally:
        drop(args.database_server, url)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
