"""How well the anomaly models find the simulator's subtle faults, against the rules alone.

Quality: a city of --covers covers, --lamps lamps and --sweepers sweepers a district
(--districts) lives --days days (default 30) with the subtle faults (simulator.scenario's
SUBTLE_KINDS, each on --rate of its candidates); the messages are stored as ingest would store
them (GPS fixes every --gps-s seconds). The rule scenes run over everything; then, for each
detector, a model per device type is trained on the whole stretch (unsupervised: the faults are
in it, unlabelled), activated, and the anomalies scene scores every hourly window. Reported per
subtle kind: faults, recall and time to detect of the models, recall of the rules on the same
faulty devices (any rule detection overlapping the fault); the models' precision over all kinds
(detections that overlap a subtle fault on their device / detections); training seconds.

Scale (--scale-devices N, default 150,000; 0 skips it): a city of N devices (two thirds covers,
the rest lamps; bench/dashboards.py's generator) with two days of readings, its rollups brought
up to date; a robust model per type trained; then one hourly window of every device is scored
through the anomalies scene, as the scenes service does each hour (one Python process, one
core: the database works in its own). Target: under 60 s for 150,000 devices. The baseline of
the same run: the rule scene `covers` judging the same covers over the same hour (devices per
second, both).

The last line of output is JSON.

Usage: python bench/models.py [--days 30 (0: no quality run)] [--scale-devices 150000 (0: none)]
       [--database-server postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dashboards  # noqa: E402

from cases.catalog import load_catalog  # noqa: E402
from cityops.simulate import store_run  # noqa: E402
from devices.codes import CodeScheme  # noqa: E402
from devices.registry import import_bundle  # noqa: E402
from models import TrainingPlan, registry  # noqa: E402
from models.detectors import DETECTORS  # noqa: E402
from scenes.anomalies import ANOMALOUS  # noqa: E402
from scenes.engine import ANOMALIES, COVERS, SCENES, run_once  # noqa: E402
from scenes.score import Interval, score, stored_detections  # noqa: E402
from scenes.settings import ScenesSettings  # noqa: E402
from simulator.city import CitySpec, generate, write_bundle  # noqa: E402
from simulator.fleet import RunOptions, simulate  # noqa: E402
from simulator.scenario import SUBTLE_KINDS, Scenario  # noqa: E402
from store import db, rollups  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402

START = datetime(2026, 9, 30, 16, tzinfo=UTC).timestamp()  # local midnight, 1 October
CATALOG = load_catalog(ROOT / "config" / "categories.toml")
#: A detection may begin this long after its fault ended and still be its (a 24 h window).
ALLOWED_DELAY_S = 86_400.0


def fresh_database(server: str, name: str) -> str:
    url = db.with_database(server, f"bench_models_{name}_{uuid.uuid4().hex[:6]}")
    db.ensure_database(DatabaseSettings(url=url))
    db.migrate(DatabaseSettings(url=url))
    return url


def drop(server: str, url: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        conn.execute(f'drop database if exists "{name}" with (force)')


def relabel(intervals: list[Interval], kind: str) -> list[Interval]:
    return [dataclasses.replace(i, kind=kind) for i in intervals]


def kind_figures(
    faults: list[Interval], anomalies: list[Interval], rules: list[Interval]
) -> dict[str, dict]:
    """Per subtle kind: the models' recall and delay, the rules' recall on the same faults."""
    figures = {}
    for kind in SUBTLE_KINDS:
        of_kind = [f for f in faults if f.kind == kind]
        if not of_kind:
            continue
        (models,) = score(relabel(of_kind, ANOMALOUS), anomalies, allowed_delay_s=ALLOWED_DELAY_S)
        (by_rules,) = score(
            relabel(of_kind, "rule"), relabel(rules, "rule"), allowed_delay_s=0.0
        ) or (None,)
        figures[kind] = {
            "faults": len(of_kind),
            "recall": models.recall,
            "detect_p50_h": None
            if models.delay_p50_s is None
            else round(models.delay_p50_s / 3600, 1),
            "detect_max_h": None
            if models.delay_p99_s is None
            else round(models.delay_p99_s / 3600, 1),
            "rules_recall": by_rules.recall if by_rules else 0.0,
        }
    return figures


def quality(args: argparse.Namespace) -> dict:
    url = fresh_database(args.database_server, "quality")
    try:
        spec = CitySpec(
            seed=args.seed,
            districts=args.districts,
            covers=args.covers,
            lamps=args.lamps,
            sweepers_per_district=args.sweepers,
        )
        city = generate(spec)
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
            write_bundle(city, Path(tmp))
            import_bundle(conn, Path(tmp), CodeScheme.parse("6+2+2+6"))
        duration_s = args.days * 86_400
        end = START + duration_s
        began = time.perf_counter()
        run = simulate(
            city,
            Scenario(rates=dict.fromkeys(SUBTLE_KINDS, args.rate)),
            RunOptions(
                start=START, duration_s=duration_s, seed=args.seed, gps_interval_s=args.gps_s
            ),
        )
        simulate_s = time.perf_counter() - began
        devices = city.devices
        began = time.perf_counter()
        with psycopg.connect(url) as conn:
            stored = store_run(conn, run.publications, devices)
            rollups.refresh(conn)
        print(
            f"{len(devices)} devices, {args.days} days: {len(run.faults)} subtle faults; "
            f"simulated in {simulate_s:.0f} s, {stored} readings stored in "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
        settings = ScenesSettings(anomaly_backfill_h=args.days * 24)
        faults = [Interval(f.kind, f.subject, f.start, f.end, f.detectable) for f in run.faults]
        report: dict = {"devices": len(devices), "days": args.days, "faults": len(faults)}
        with psycopg.connect(url) as conn:
            began = time.perf_counter()
            run_once(conn, settings, CATALOG, now=end, scenes=SCENES)
            report["rules_s"] = round(time.perf_counter() - began, 1)
            rules = stored_detections(conn, None, None)
            for detector in args.detectors.split(","):
                conn.execute("delete from detections where scene = 'anomalies'")
                conn.execute("delete from scene_watermarks where scene = 'anomalies'")
                conn.execute("update models set state = 'retired' where state = 'active'")
                conn.commit()
                training = {}
                for device_type in ("manhole", "light", "sweeper"):
                    began = time.perf_counter()
                    info = registry.train(
                        conn, TrainingPlan(device_type, START, end, detector=detector, seed=1)
                    )
                    training[device_type] = round(time.perf_counter() - began, 2)
                    registry.activate(conn, info.model_id)
                    conn.commit()
                began = time.perf_counter()
                results = run_once(conn, settings, CATALOG, now=end, scenes=(ANOMALIES,))
                scoring_s = time.perf_counter() - began
                anomalies = [d for d in stored_detections(conn, None, None) if d.kind == ANOMALOUS]
                (overall,) = score(
                    relabel(faults, ANOMALOUS), anomalies, allowed_delay_s=ALLOWED_DELAY_S
                )
                figures = {
                    "precision": overall.precision,
                    "recall": overall.recall,
                    "detections": overall.detections,
                    "training_s": training,
                    "scoring_s": round(scoring_s, 1),
                    "windows_scored": sum(r.devices for r in results) * args.days * 24,
                    "kinds": kind_figures(faults, anomalies, rules),
                }
                report[detector] = figures
                print(
                    f"{detector}: precision {overall.precision} recall {overall.recall} "
                    f"({overall.detections} detections); training {training} s; "
                    f"scoring {scoring_s:.1f} s",
                    flush=True,
                )
                for kind, row in figures["kinds"].items():
                    print(f"  {kind:20} {row}", flush=True)
    finally:
        drop(args.database_server, url)
    return report


def scale(args: argparse.Namespace) -> dict:
    """Score one hourly window of a large city through the anomalies scene."""
    url = fresh_database(args.database_server, "scale")
    try:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=2)
        with psycopg.connect(url, autocommit=True) as conn:
            began = time.perf_counter()
            dashboards.fill(conn, args.scale_devices, 2, start)
            fill_s = time.perf_counter() - began
            refresh_s = dashboards.refresh_rollups(conn, db.storage_path(conn))
        with psycopg.connect(url) as conn:
            print(
                f"{args.scale_devices} devices, 2 days: filled in {fill_s:.0f} s, rollups in "
                f"{refresh_s:.0f} s",
                flush=True,
            )
            for device_type in ("manhole", "light"):
                began = time.perf_counter()
                info = registry.train(
                    conn, TrainingPlan(device_type, start.timestamp(), end.timestamp(), stride_h=3)
                )
                registry.activate(conn, info.model_id)
                conn.commit()
                print(f"trained {info.name} in {time.perf_counter() - began:.1f} s", flush=True)
            # what was filled is judged; then the last hour's batch touches every device, as an
            # hour of a live city does (a later transaction: the only one the scenes read)
            for scene in (COVERS, ANOMALIES):
                conn.execute(
                    "insert into scene_watermarks (scene, district, xact_horizon) "
                    "select %s, d, pg_current_xact_id() from (select region_id from regions "
                    "where level = 'district' union all select '') r(d) "
                    "on conflict (scene, district) do update "
                    "set xact_horizon = excluded.xact_horizon",
                    (scene.name,),
                )
            conn.commit()
            conn.execute(
                "insert into reading_batches (readings, device_ids, min_ts, max_ts) "
                "select r, array_agg(device_id), %s, %s from devices, "
                "unnest(array['manhole_readings', 'light_readings']) r "
                "where type in ('manhole', 'light') group by r",
                (end - timedelta(minutes=59), end - timedelta(minutes=1)),
            )
            conn.commit()
            figures: dict = {"devices": args.scale_devices}
            settings = ScenesSettings(anomaly_backfill_h=1)
            for scene in (COVERS, ANOMALIES):
                began = time.perf_counter()
                results = run_once(
                    conn, settings, CATALOG, now=end.timestamp() + 60, scenes=(scene,)
                )
                seconds = time.perf_counter() - began
                figures[scene.name] = {
                    "devices_judged": sum(r.devices for r in results),
                    "seconds": round(seconds, 1),
                    "devices_per_s": round(sum(r.devices for r in results) / seconds),
                }
                print(scene.name, figures[scene.name], flush=True)
        # per device: the models' scoring against the cover scene's judging of the same hour
        figures["devices_per_s_ratio_to_covers"] = round(
            figures["anomalies"]["devices_per_s"] / figures["covers"]["devices_per_s"], 2
        )
        figures["city_150k_s"] = round(150_000 / figures["anomalies"]["devices_per_s"], 1)
    finally:
        drop(args.database_server, url)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--covers", type=int, default=200)
    parser.add_argument("--lamps", type=int, default=160)
    parser.add_argument("--districts", type=int, default=2)
    parser.add_argument("--sweepers", type=int, default=4, help="sweepers a district")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=float, default=0.03)
    parser.add_argument("--gps-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--scale-devices", type=int, default=150_000)
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    report: dict = {"bench": "models"}
    if args.days:
        report["quality"] = quality(args)
    if args.scale_devices:
        report["scale"] = scale(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
