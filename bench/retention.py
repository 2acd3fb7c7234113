"""Ingest throughput while retention runs over a plain-path readings table of 50 million rows.

Two databases hold the same readings: 2,000 manhole covers, one reading every 24 minutes over 420
days (50.4 M rows; the 20 oldest days are past the 400-day retention):
  delete     the schema as it was before partitioning (migrations up to 0004): one table, and
             retention by the DELETE that ingest ran every hour on its writer's thread;
  partition  a copy of it after `cityops migrate` (migration 0005 moves every row into weekly
             partitions; its time is reported), retention by `cityops.partitions.maintain`.
On each, the real BatchWriter writes 5,000-reading batches of the same devices (payloads decoded
by the real Decoder) flat out on its own thread and connection, and each phase measures it for
BASELINE seconds without retention, then while retention runs:
  delete_writer_thread   the DELETE between two batches on the writer's thread, as ingest ran it
                         (rolled back, then the table vacuumed, so the next phase deletes the
                         same rows);
  delete_own_thread      the same DELETE on a connection of its own, committed;
  delete_again           the next hourly DELETE: nothing (much) expired, the table scanned anyway;
  drop                   partition maintenance on a connection of its own: expired weeks dropped;
  drop_again             the next round: nothing to drop.
Each phase reports how long retention took, readings/s committed from its start to its end (at
least WINDOW seconds) and over its baseline window, their ratio, and the longest gap between two
commits in each. Comparing a phase with the baseline just before it keeps the ratios meaningful
on a shared, noisy machine. The last line is JSON. Both databases are dropped at the end, also
on failure.

Usage: python bench/retention.py [--devices 2000] [--days 420] [--every-min 24]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.decode import DecodeLimits, Decoder  # noqa: E402
from ingest.writer import BatchWriter, Message  # noqa: E402
from store import db, partitions  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402
from tests.plugin import migrate_until  # noqa: E402
from wire.contract import READING_KINDS  # noqa: E402

RETENTION_DAYS = 400
BATCH = 5000


def old_retention(conn: psycopg.Connection, retention_days: int) -> int:
    """What ingest ran every hour before partitioning (the old db.delete_expired_readings)."""
    deleted = 0
    for kind in READING_KINDS:
        cur = conn.execute(
            sql.SQL("delete from {} where ts < now() - make_interval(days => %s)").format(
                sql.Identifier(kind.table)
            ),
            (retention_days,),
        )
        deleted += cur.rowcount
    return deleted


def log(message: str) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"[{time.strftime('%H:%M:%S')} load {load}] {message}", flush=True)


def fill(url: str, devices: int, days: int, every_min: int) -> int:
    """The pre-partitioning schema with the readings; return how many."""
    migrate_until(url, "0004_case_version")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany(
            "insert into devices (device_id, type) values (%s, 'manhole')",
            [(f"bench-mh-{d:05d}",) for d in range(devices)],
        )
        # Loading without the index and building it after is the only liberty taken: it changes
        # the time to fill, not the table measured. Rows in time order, as ingest writes them.
        conn.execute("drop index manhole_readings_key")
        conn.execute("set synchronous_commit = off")
        steps = days * 24 * 60 // every_min
        conn.execute(
            "insert into manhole_readings "
            "(device_id, ts, tilt_deg, cover_open, battery_pct, rssi_dbm, temp_c) "
            "select 'bench-mh-' || lpad(d::text, 5, '0'), "
            "now() - make_interval(mins => s * %s), (s %% 900) / 10.0, false, 87.5, -91, 12.5 "
            "from generate_series(%s, 0, -1) s, generate_series(0, %s) d",
            (every_min, steps - 1, devices - 1),
        )
        conn.execute("set maintenance_work_mem = '1GB'")
        conn.execute("create unique index manhole_readings_key on manhole_readings (device_id, ts)")
        # As a year of autovacuum would have left it (this server runs with autovacuum off).
        conn.execute("vacuum (analyze) manhole_readings")
        conn.execute("checkpoint")
        row = conn.execute("select count(*) from manhole_readings").fetchone()
    assert row is not None
    return int(row[0])


class Load:
    """The real writer, flat out on its own thread; records (monotonic time, rows) per commit."""

    def __init__(self, url: str, devices: int) -> None:
        self.conn = psycopg.connect(url)
        self.writer = BatchWriter(self.conn, raw_max_bytes=262_144, last_seen_resolution_s=10.0)
        types = {f"bench-mh-{d:05d}": "manhole" for d in range(devices)}
        self.decoder = Decoder(
            limits=DecodeLimits(
                max_payload_bytes=262_144, max_future_us=300_000_000, auto_register=False
            ),
            device_type_of=types.get,
        )
        self.topics = [f"cityops/v1/manhole/{device}/telemetry" for device in types]
        self.commits: list[tuple[float, int]] = []
        self.between: queue.Queue[Callable[[psycopg.Connection], None]] = queue.Queue()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="load")
        self.thread.start()

    def _run(self) -> None:
        try:
            n = 0
            # From now on, 1 ms apart per device: after every filled reading, never more than
            # the decoder's 300 s ahead, unique (device_id, ts).
            t0_ms = time.time_ns() // 1_000_000
            while not self.stop.is_set():
                while not self.between.empty():
                    self.between.get()(self.conn)  # between two batches, as _housekeep ran
                received_us = time.time_ns() // 1000
                batch = []
                for _ in range(BATCH):
                    topic = self.topics[n % len(self.topics)]
                    ts_ms = t0_ms + n // len(self.topics)
                    payload = b'{"ts":%d,"tilt_deg":%.1f,"cover_open":false,"battery_pct":87.5}' % (
                        ts_ms,
                        (n % 900) / 10,
                    )
                    batch.append(
                        Message(
                            0,
                            0,
                            topic,
                            payload,
                            received_us,
                            self.decoder.decode_message(topic, payload, received_us),
                        )
                    )
                    n += 1
                result = self.writer.write(batch)
                assert sum(result.inserted.values()) == BATCH, result
                self.commits.append((time.monotonic(), BATCH))
        except BaseException as exc:
            self.error = exc
            raise

    def rate(self, start: float, end: float) -> tuple[float, float]:
        """Readings/s committed in (start, end], and the longest gap between commits there."""
        times = [t for t, _ in self.commits]
        inside = [t for t in times if start < t <= end]
        rows = BATCH * len(inside)
        before = [t for t in times if t <= start][-1:]
        edges = [*(before or [start]), *inside, end]
        return rows / (end - start), max(b - a for a, b in itertools.pairwise(edges))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()
        if self.error is not None:
            raise self.error


def phase(
    name: str, load: Load, retention: Callable[[], int], window_s: float, baseline_s: float
) -> dict[str, float]:
    """Measure the load for ``baseline_s``, then while ``retention`` (rows removed) runs."""
    before = time.monotonic()
    time.sleep(baseline_s)  # a measuring window
    start = time.monotonic()
    base_rate, base_gap = load.rate(before, start)
    removed = retention()
    end = time.monotonic()
    until = max(end, start + window_s)
    while time.monotonic() < until:  # measuring a fixed window, not waiting for a state
        time.sleep(until - time.monotonic())
    rate, gap = load.rate(start, until)
    result = {
        "baseline_readings_per_s": round(base_rate),
        "baseline_longest_commit_gap_s": round(base_gap, 3),
        "retention_s": round(end - start, 3),
        "rows_removed": removed,
        "readings_per_s": round(rate),
        "vs_baseline": round(rate / base_rate, 3),
        "longest_commit_gap_s": round(gap, 3),
    }
    log(f"{name:22} {result}")
    return result


def on_writer_thread(load: Load, task: Callable[[psycopg.Connection], int]) -> Callable[[], int]:
    """Run ``task`` between two of the writer's batches, on its connection; wait for it."""

    def run() -> int:
        done = threading.Event()
        out: list[int] = []

        def between(conn: psycopg.Connection) -> None:
            out.append(task(conn))
            done.set()

        load.between.put(between)
        done.wait()
        return out[0]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--days", type=int, default=420)
    parser.add_argument("--every-min", type=int, default=24)
    parser.add_argument(
        "--baseline", type=float, default=10.0, help="seconds measured before each phase"
    )
    parser.add_argument("--window", type=float, default=10.0, help="shortest phase, seconds")
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    urls = {
        name: db.with_database(args.database_server, f"bench_retention_{name}_{tag}")
        for name in ("delete", "partition")
    }
    names = {name: psycopg.conninfo.conninfo_to_dict(url)["dbname"] for name, url in urls.items()}
    results: dict[str, object] = {"uptime_load_start": os.getloadavg()[:3]}
    server = psycopg.connect(args.database_server, autocommit=True)
    try:
        server.execute(f'create database "{names["delete"]}"')
        started = time.monotonic()
        rows = fill(urls["delete"], args.devices, args.days, args.every_min)
        results["rows"] = rows
        results["fill_s"] = round(time.monotonic() - started, 1)
        with psycopg.connect(urls["delete"]) as conn:
            size = conn.execute("select pg_total_relation_size('manhole_readings')").fetchone()
        results["table_gib"] = round(size[0] / 2**30, 2) if size else None
        log(
            f"filled {rows:,} readings over {args.days} days ({results['table_gib']} GiB with "
            f"the index) in {results['fill_s']} s"
        )
        started = time.monotonic()
        server.execute(f'create database "{names["partition"]}" template "{names["delete"]}"')
        log(f"copied the database in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        report = db.migrate(DatabaseSettings(url=urls["partition"], timescaledb="off"))
        results["migration_s"] = round(time.monotonic() - started, 1)
        log(f"migrated the copy ({', '.join(report.applied[:2])}) in {results['migration_s']} s")
        with psycopg.connect(urls["partition"], autocommit=True) as conn:
            conn.execute("checkpoint")
            weekly = conn.execute(
                "select count(*) from pg_inherits where inhparent = 'manhole_readings'::regclass"
            ).fetchone()
        results["partitions"] = weekly[0] if weekly else 0

        load = Load(urls["delete"], args.devices)
        try:
            time.sleep(3)  # warm-up, not measured

            def delete_rolled_back(conn: psycopg.Connection) -> int:
                with conn.transaction(force_rollback=True):
                    return old_retention(conn, RETENTION_DAYS)

            def delete_committed() -> int:
                with psycopg.connect(urls["delete"], autocommit=True) as conn:
                    return old_retention(conn, RETENTION_DAYS)

            old = {}
            old["delete_writer_thread"] = phase(
                "delete_writer_thread",
                load,
                on_writer_thread(load, delete_rolled_back),
                args.window,
                args.baseline,
            )
            with psycopg.connect(urls["delete"], autocommit=True) as conn:
                conn.execute("vacuum manhole_readings")
            for name in ("delete_own_thread", "delete_again"):
                old[name] = phase(name, load, delete_committed, args.window, args.baseline)
        finally:
            load.close()
        results["delete"] = old

        load = Load(urls["partition"], args.devices)
        try:
            time.sleep(3)

            def drop(expired: int) -> Callable[[], int]:
                def run() -> int:
                    with psycopg.connect(urls["partition"], autocommit=True) as conn:
                        report = partitions.maintain(conn, retention_days=RETENTION_DAYS)
                    assert report is not None
                    return expired

                return run

            new = {}
            for name in ("drop", "drop_again"):
                with psycopg.connect(urls["partition"]) as conn:
                    row = conn.execute(
                        "select count(*) from manhole_readings where ts < cityops_partition_start("
                        "now() - make_interval(days => %s))",
                        (RETENTION_DAYS,),
                    ).fetchone()
                expired = row[0] if row else 0
                new[name] = phase(name, load, drop(expired), args.window, args.baseline)
        finally:
            load.close()
        results["partition"] = new
    finally:
        for name in names.values():
            server.execute(f'drop database if exists "{name}" with (force)')
        server.close()
    results["uptime_load_end"] = os.getloadavg()[:3]
    phases = {**results["delete"], **results["partition"]}  # type: ignore[dict-item]
    baselines = {
        name: statistics.mean(p["baseline_readings_per_s"] for p in results[name].values())  # type: ignore[attr-defined]
        for name in ("delete", "partition")
    }
    results["ratios"] = {f"{name}_vs_baseline": p["vs_baseline"] for name, p in phases.items()} | {
        "partitioned_vs_plain_baseline": round(baselines["partition"] / baselines["delete"], 3)
    }
    print(
        "ingest while retention runs, x the baseline before it: "
        + ", ".join(f"{k.removesuffix('_vs_baseline')} {v}" for k, v in results["ratios"].items())
        + "; longest commit gap: "
        + ", ".join(f"{name} {p['longest_commit_gap_s']} s" for name, p in phases.items())
    )
    print(json.dumps({"bench": "retention", **results}))


if __name__ == "__main__":
    main()
