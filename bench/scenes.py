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
The last line of output is JSON.

Usage: python bench/scenes.py [--covers 100000] [--hours 24]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cases.catalog import load_catalog  # noqa: E402
from devices.codes import CodeScheme  # noqa: E402
from devices.registry import import_bundle  # noqa: E402
from ingest.decode import DecodeLimits, Decoder  # noqa: E402
from ingest.settings import IngestSettings  # noqa: E402
from ingest.writer import BatchWriter, Message  # noqa: E402
from scenes.engine import COVERS, HEALTH, run_once  # noqa: E402
from scenes.score import Interval, score, stored_detections  # noqa: E402
from scenes.settings import ScenesSettings  # noqa: E402
from simulator.city import CitySpec, generate, write_bundle  # noqa: E402
from simulator.fleet import RunOptions, simulate  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from store import db  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402

START = 1_759_766_400.0  # 2025-10-06T16:00:00Z, midnight in the city
RATES = {
    "cover_displaced": 0.004,
    "cover_open": 0.004,
    "cover_loose": 0.004,
    "water_rising": 0.004,
    "sensor_offline": 0.01,
    "battery_drain": 0.004,
}
CITY_DEVICES = 150_000
BATCH = 5000


def load(url: str, publications: list, devices: dict[str, str]) -> tuple[int, float]:
    """Store the run's messages as ingest would; return the readings stored and the seconds."""
    limits = DecodeLimits.of(IngestSettings())
    decoder = Decoder(limits=limits, device_type_of=devices.get)
    stored = 0
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        writer = BatchWriter(
            conn, raw_max_bytes=limits.max_payload_bytes, last_seen_resolution_s=10.0
        )
        for i in range(0, len(publications), BATCH):
            batch = []
            for n, pub in enumerate(publications[i : i + BATCH]):
                received_us = int(pub.t * 1e6)
                decoded = decoder.decode_message(pub.topic, pub.payload, received_us)
                batch.append(Message(n + 1, 0, pub.topic, pub.payload, received_us, decoded))
            result = writer.write(batch)
            conn.commit()
            stored += sum(result.inserted.values())
    return stored, time.perf_counter() - started


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
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
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
        devices = {d["device_id"]: d["type"] for d in city.devices}
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
        report["scores"] = {
            s.kind: {
                "faults": s.faults,
                "undetectable": s.undetectable,
                "detections": s.detections,
                "precision": s.precision,
                "recall": s.recall,
                "delay_p50_s": s.delay_p50_s,
                "delay_p99_s": s.delay_p99_s,
            }
            for s in scores
        }
        for s in scores:
            print(
                f"  {s.kind:16} faults {s.faults:5} (+{s.undetectable} undetectable) found "
                f"{s.detections:5} precision {s.precision} recall {s.recall} "
                f"delay p50 {s.delay_p50_s} p99 {s.delay_p99_s}",
                flush=True,
            )
    finally:
        with psycopg.connect(args.database_server, autocommit=True) as conn:
            name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
            conn.execute(f'drop database if exists "{name}" with (force)')
    print(json.dumps(report))


if __name__ == "__main__":
    main()
