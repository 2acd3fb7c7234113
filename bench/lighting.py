"""How fast the lighting scene judges a stored night of a large city's lamps, and how well.

A city of --lamps street lamps (default 50,000, in cabinets of 40 over 8 districts; no covers or
sweepers) is generated, imported into a fresh database, and --hours of its lamps (default 16:
from 16:00 local the night before last, before sunset, to 08:00, after sunrise) are simulated
with faults of every lighting kind. The messages go through the real decoder and batch writer
(binary COPY, with the change feed the scenes read), as ingest would store them. Then the
lighting scene runs once over everything pending (all partitions, as `cityops scenes run
--once`), timed; and the night's indicators are computed and stored (`cityops lighting report`),
timed.

Reported: lamps and readings judged, seconds, readings per second, and that rate against what a
50,000-lamp city produces (a reading per lamp every 300 s: 167/s; the issue's target >= 20 x);
the detections and cases written; precision, recall and delay per kind against the run's ground
truth (`cityops scenes score`); the night's lighting rate. The load rate is reported beside it.

The last line of output is JSON.

Usage: python bench/lighting.py [--lamps 50000] [--hours 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scenes import drop, load, print_scores  # noqa: E402
from cases.catalog import load_catalog  # noqa: E402
from devices.codes import CodeScheme  # noqa: E402
from devices.registry import import_bundle  # noqa: E402
from scenes import nights  # noqa: E402
from scenes.engine import LIGHTING, run_once  # noqa: E402
from scenes.score import Interval, score, stored_detections  # noqa: E402
from scenes.settings import ScenesSettings  # noqa: E402
from simulator.city import CitySpec, generate, write_bundle  # noqa: E402
from simulator.fleet import RunOptions, simulate  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from store import db  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402

#: The night before last, from 16:00 in the city (UTC+8), before sunset: inside the readings'
#: retention, so TimescaleDB's retention job drops nothing while the bench runs.
NIGHT = date.today() - timedelta(days=2)
START = datetime.combine(NIGHT, clock(8), tzinfo=UTC).timestamp()
RATES = {
    "lamp_out": 0.004,
    "day_burner": 0.03,  # most fall at night, when a lamp should be lit anyway
    "lamp_degraded": 0.004,
    "low_power_factor": 0.004,
    "cabinet_outage": 0.01,
}
REPORT_S = 300.0
CITY_LAMPS = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=CITY_LAMPS)
    parser.add_argument("--hours", type=float, default=16.0)
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    duration_s = args.hours * 3600
    url = db.with_database(args.database_server, f"bench_lighting_{uuid.uuid4().hex[:6]}")
    db.ensure_database(DatabaseSettings(url=url))
    try:
        db.migrate(DatabaseSettings(url=url))
        spec = CitySpec(seed=5, districts=8, covers=0, lamps=args.lamps, sweepers_per_district=0)
        city = generate(spec)
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
            write_bundle(city, Path(tmp))
            import_bundle(conn, Path(tmp), CodeScheme.parse("6+2+2+6"))
        t = time.perf_counter()
        options = RunOptions(start=START, duration_s=duration_s, lamp_report_s=REPORT_S)
        run = simulate(city, Scenario(rates=RATES), options)
        simulate_s = time.perf_counter() - t
        devices = {d["device_id"]: d["type"] for d in city.devices}
        stored, load_s = load(url, run.publications, devices)
        print(
            f"city of {args.lamps} lamps, {len(run.faults)} faults; simulated "
            f"{len(run.publications)} messages in {simulate_s:.1f} s; stored {stored} readings "
            f"in {load_s:.1f} s ({stored / load_s:.0f}/s)",
            flush=True,
        )
        produced_per_s = CITY_LAMPS / REPORT_S
        catalog = load_catalog(ROOT / "config" / "categories.toml")
        settings = ScenesSettings()
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            results = run_once(conn, settings, catalog, now=START + duration_s, scenes=(LIGHTING,))
            seconds = time.perf_counter() - t
            rate = stored / seconds
            t = time.perf_counter()
            lamps_stored = nights.store(conn, settings, NIGHT)
            nights_s = time.perf_counter() - t
            totals = nights.report(conn, NIGHT, None)
            faults = [Interval(f.kind, f.subject, f.start, f.end, f.detectable) for f in run.faults]
            scores = score(faults, stored_detections(conn, None, None), allowed_delay_s=REPORT_S)
        city_row = next(row for row in totals if row.district is None)
        report: dict[str, object] = {
            "bench": "lighting",
            "lamps": args.lamps,
            "hours": args.hours,
            "readings": stored,
            "load_readings_per_s": round(stored / load_s),
            "city_50k_readings_per_s": round(produced_per_s, 1),
            "lighting": {
                "devices": sum(r.devices for r in results),
                "detections": sum(r.detections for r in results),
                "cases_opened": sum(r.cases_opened for r in results),
                "seconds": round(seconds, 2),
                "readings_per_s": round(rate),
                "x_city_50k": round(rate / produced_per_s, 1),
            },
            "nights": {
                "lamps": lamps_stored,
                "seconds": round(nights_s, 2),
                "readings_per_s": round(stored / nights_s),
                "lighting_rate": city_row.lighting_rate,
            },
        }
        print("lighting", report["lighting"], flush=True)
        print("nights  ", report["nights"], flush=True)
        report["scores"] = print_scores(scores)
    finally:
        drop(args.database_server, url)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
