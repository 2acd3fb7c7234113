"""What only the TimescaleDB path does, on a real TimescaleDB: hypertables with compression and
retention policies, hourly rollups as continuous aggregates, a backfill into a compressed chunk,
retention by the policy's job.

These tests get their server from ``timescaledb_server_url`` (tests/plugin.py), so they run on
both of .ci/run's passes and wherever TimescaleDB can be had, not only when the suite runs on it.
The tests that need a policy to act run its job themselves with ``call run_job(...)``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from cityops.cli import app
from cityops.services import free_port
from store import db
from store.rollups import ROLLUPS
from store.settings import DatabaseSettings
from tests.plugin import Publisher, create_database, drop_database, register, wait_for
from wire.contract import READING_KINDS

TABLES = {kind.table for kind in READING_KINDS}


@pytest.fixture
def timescaledb_url(timescaledb_server_url: str) -> Iterator[str]:
    """A fresh, empty database on a server with TimescaleDB."""
    url = create_database(timescaledb_server_url)
    yield url
    drop_database(timescaledb_server_url, url)


def migrate(url: str, **settings: int) -> None:
    """Migrate on the TimescaleDB path and take the policies off the background scheduler.

    The scheduler runs a new policy at once and later again: paused, the jobs run only when a
    test runs them, so a chunk cannot be compressed or dropped under a test's feet.
    """
    report = db.migrate(DatabaseSettings(url=url, **settings))
    assert report.path is db.StoragePath.TIMESCALEDB
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "select alter_job(job_id, scheduled => false) "
            "from timescaledb_information.jobs where hypertable_name is not null"
        )


def policies(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    """The readings tables' policies, and the continuous aggregates' (by the aggregate's name)."""
    return conn.execute(
        "select coalesce(c.view_name, j.hypertable_name), j.proc_name, "
        "j.config - 'hypertable_id' - 'mat_hypertable_id', j.scheduled "
        "from timescaledb_information.jobs j "
        "left join timescaledb_information.continuous_aggregates c "
        "on c.materialization_hypertable_name = j.hypertable_name "
        "where j.hypertable_name is not null order by 1, 2"
    ).fetchall()


def chunks(conn: psycopg.Connection, table: str) -> list[tuple[datetime, bool]]:
    return conn.execute(
        "select range_end, is_compressed from timescaledb_information.chunks "
        "where hypertable_name = %s order by range_start",
        (table,),
    ).fetchall()


def test_migrate_makes_each_readings_table_a_compressed_hypertable_with_policies(
    timescaledb_url: str,
) -> None:
    env = {
        "CITYOPS_DATABASE_URL": timescaledb_url,
        "CITYOPS_CONFIG": "",
        "CITYOPS_DATABASE_COMPRESS_AFTER_DAYS": "3",
        "CITYOPS_DATABASE_RETENTION_DAYS": "30",
    }
    first = CliRunner().invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "storage path: timescaledb" in first.output
    assert "storage:timescaledb" in first.output
    assert "not available" not in first.output
    with psycopg.connect(timescaledb_url) as conn:
        assert set(
            conn.execute(
                "select hypertable_name, compression_enabled "
                "from timescaledb_information.hypertables"
            ).fetchall()
        ) == {(t, True) for t in TABLES}
        assert set(
            conn.execute(
                "select hypertable_name, column_name, time_interval "
                "from timescaledb_information.dimensions where hypertable_name = any(%s)",
                (sorted(TABLES),),
            ).fetchall()
        ) == {(t, "ts", timedelta(days=1)) for t in TABLES}
        assert set(
            conn.execute(
                "select hypertable::text, segmentby, orderby "
                "from timescaledb_information.hypertable_compression_settings "
                "where hypertable::text = any(%s)",
                (sorted(TABLES),),
            ).fetchall()
        ) == {(t, "device_id", "ts DESC") for t in TABLES}
        refresh = {"start_offset": "3 days", "end_offset": "01:00:00"}
        expected = sorted(
            [(t, "policy_compression", {"compress_after": "3 days"}, True) for t in TABLES]
            + [(t, "policy_retention", {"drop_after": "30 days"}, True) for t in TABLES]
            + [(rollup, "policy_refresh_continuous_aggregate", refresh, True) for rollup in ROLLUPS]
        )
        assert policies(conn) == expected
        # The hourly rollups are real-time continuous aggregates of the readings tables.
        assert set(
            conn.execute(
                "select view_name, hypertable_name, materialized_only "
                "from timescaledb_information.continuous_aggregates"
            ).fetchall()
        ) == {(rollup, readings, False) for rollup, readings in ROLLUPS.items()}
        # The plain path's partitioning migration did not run: its readings tables are hypertables.
        assert conn.execute(
            "select count(*) from cityops_migrations where name like '%.postgresql'"
        ).fetchone() == (0,)
        assert conn.execute("select count(*) from pg_partitioned_table").fetchone() == (0,)
        assert conn.execute(
            "select to_regproc('cityops_create_partition'), to_regclass('manhole_readings_default')"
        ).fetchone() == (None, None)
    assert "partition" not in first.output
    second = CliRunner().invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0, second.output
    assert "storage path: timescaledb" in second.output
    assert "applied: nothing (schema is current)" in second.output
    with psycopg.connect(timescaledb_url) as conn:
        assert policies(conn) == expected  # no second set of policies


def test_backfill_into_a_compressed_chunk_lands_new_readings_and_skips_duplicates(
    timescaledb_url: str, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    migrate(timescaledb_url)
    device = f"{tag}-mh"
    topic = f"cityops/v1/manhole/{device}/telemetry"
    day = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0) - timedelta(days=10)
    base_ms = int(day.timestamp() * 1000)
    minute = 60_000
    with psycopg.connect(timescaledb_url, autocommit=True) as conn:
        register(conn, {device: "manhole"})
        settings = make_settings()
        running = start_worker(
            settings.model_copy(update={"database": DatabaseSettings(url=timescaledb_url)})
        )

        def rows_total(result: str) -> float:
            return running.metric("cityops_ingest_rows_total", kind="manhole", result=result)

        def stored() -> dict[int, float]:
            got = conn.execute(
                "select (extract(epoch from ts) * 1000)::bigint, tilt_deg from manhole_readings "
                "where device_id = %s",
                (device,),
            ).fetchall()
            return dict(got)

        first = [{"ts": base_ms + i * minute, "tilt_deg": i / 10} for i in range(100)]
        publisher.publish(topic, json.dumps(first))
        wait_for(lambda: rows_total("inserted") == 100, what="100 readings stored")
        conn.execute("select compress_chunk(c) from show_chunks('manhole_readings') c")
        assert [compressed for _, compressed in chunks(conn, "manhole_readings")] == [True]

        # A reading inside the compressed range, alone: the direct COPY takes it.
        publisher.publish(topic, json.dumps([{"ts": base_ms + 30_000, "tilt_deg": 45.0}]))
        wait_for(lambda: rows_total("inserted") == 101, what="a reading into the compressed chunk")
        # A new one with a duplicate of a compressed row: the COPY meets the unique index, the
        # batch goes through the stage, the new one lands and the duplicate is counted.
        both = [
            {"ts": base_ms + 90_000, "tilt_deg": 46.0},
            {"ts": base_ms + 10 * minute, "tilt_deg": 89.0},
        ]
        publisher.publish(topic, json.dumps(both))
        wait_for(lambda: rows_total("duplicate") == 1, what="the duplicate counted")
        assert rows_total("inserted") == 102
        assert (
            running.metric("cityops_ingest_messages_total", device_type="manhole", result="stored")
            == 3
        )

        got = stored()
        assert got[base_ms + 10 * minute] == pytest.approx(1.0)  # the compressed row, unchanged
        assert got == {r["ts"]: pytest.approx(r["tilt_deg"]) for r in first} | {
            base_ms + 30_000: 45.0,
            base_ms + 90_000: 46.0,
        }
        # Still the one chunk: the backfill went into the compressed chunk's range.
        assert len(chunks(conn, "manhole_readings")) == 1


def test_retention_policy_job_drops_readings_older_than_retention_days(
    timescaledb_url: str,
) -> None:
    migrate(timescaledb_url, retention_days=30)
    ages = {"d45": 45, "d32": 32, "d28": 28, "d1": 1}  # days before now
    with psycopg.connect(timescaledb_url, autocommit=True) as conn:
        conn.cursor().executemany(
            "insert into manhole_readings (device_id, ts, tilt_deg) "
            "values (%s, now() - make_interval(days => %s), 1)",
            list(ages.items()),
        )
        # As the compression policy would have left them: everything past a week compressed.
        conn.execute(
            "select compress_chunk(c) "
            "from show_chunks('manhole_readings', older_than => interval '7 days') c"
        )
        assert [compressed for _, compressed in chunks(conn, "manhole_readings")] == [
            True,
            True,
            True,
            False,
        ]
        row = conn.execute(
            "select job_id from timescaledb_information.jobs "
            "where proc_name = 'policy_retention' and hypertable_name = 'manhole_readings'"
        ).fetchone()
        assert row is not None
        conn.execute("call run_job(%s)", (row[0],))
        assert [
            r[0] for r in conn.execute("select device_id from manhole_readings order by ts")
        ] == ["d28", "d1"]
        left = chunks(conn, "manhole_readings")
        assert len(left) == 2
        now = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        assert all(end > now - timedelta(days=30) for end, _ in left)


@pytest.fixture(scope="module")
def not_preloaded_url(timescaledb_server_url: str) -> Iterator[str]:
    """A server with TimescaleDB installed but not in shared_preload_libraries.

    The state right after installing the package: started from the same binaries as the
    TimescaleDB server, in a data directory of its own, without the preload setting.
    """
    with psycopg.connect(timescaledb_server_url) as conn:
        row = conn.execute("select setting from pg_config where name = 'BINDIR'").fetchone()
    assert row is not None
    bindir = Path(row[0])
    data = Path(tempfile.mkdtemp(prefix="cityops-not-preloaded-", dir="/var/tmp"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data / "db")]

    def run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    run(*as_postgres, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust",
        "-U", "postgres", "--no-sync")  # fmt: skip
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    # -l: the server must not inherit the captured output, or run() waits for it to exit.
    run(*pg_ctl, "-w", "-l", str(data / "server.log"), "-o", options, "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/cityops"
    finally:
        run(*pg_ctl, "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


def test_migrate_on_timescaledb_installed_but_not_preloaded_says_what_to_add(
    not_preloaded_url: str,
) -> None:
    runner = CliRunner()
    env = {"CITYOPS_DATABASE_URL": not_preloaded_url}
    refused = runner.invoke(app, ["migrate"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "installed on the database server but not preloaded" in refused.output
    assert "shared_preload_libraries = 'timescaledb'" in refused.output
    assert "Traceback" not in refused.output
    with psycopg.connect(not_preloaded_url) as conn:  # nothing was applied
        assert conn.execute("select to_regclass('manhole_readings')").fetchone() == (None,)
    plain = runner.invoke(app, ["migrate"], env={**env, "CITYOPS_DATABASE_TIMESCALEDB": "off"})
    assert plain.exit_code == 0, plain.output
    assert "storage path: postgresql" in plain.output
