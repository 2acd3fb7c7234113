"""The plain PostgreSQL path's weekly partitions on a real server: made by migrate and ahead,
expired ones dropped, no reading refused, an existing schema converted with every row.

Each test has a database of its own migrated with database.timescaledb = "off", so these run on
both of CI's passes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from store import db, partitions
from store.settings import DatabaseSettings
from tests.plugin import (
    Publisher,
    create_database,
    drop_database,
    migrate_until,
    register,
    wait_for,
)
from wire.contract import READING_KINDS

WEEK = timedelta(days=7)

# Each partition and its bounds, None for the default partition.
_BOUNDS = r"""
select c.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
  from pg_inherits i join pg_class c on c.oid = i.inhrelid
 where i.inhparent = %s::regclass
"""


def bounds(conn: psycopg.Connection, table: str) -> dict[str, tuple[datetime, datetime] | None]:
    found = conn.execute(_BOUNDS, (table,)).fetchall()
    return {name: (start, end) if start else None for name, start, end in found}


def monday_of(at: datetime) -> datetime:
    """00:00 UTC on the Monday of ``at``'s week: where its partition starts."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def this_monday() -> datetime:
    return monday_of(datetime.now(UTC))


def expected_weeks(table: str, first: datetime, weeks: int) -> dict[str, tuple[datetime, datetime]]:
    starts = [first + i * WEEK for i in range(weeks)]
    return {f"{table}_p{start:%Y%m%d}": (start, start + WEEK) for start in starts}


def test_migrate_partitions_each_readings_table_by_week_with_weeks_ahead(
    plain_database_url: str,
) -> None:
    with psycopg.connect(plain_database_url) as conn:
        for kind in READING_KINDS:
            assert bounds(conn, kind.table) == {
                f"{kind.table}_default": None,
                **expected_weeks(kind.table, this_monday(), 1 + partitions.WEEKS_AHEAD),
            }
            # The natural key is unique on the parent, so on every partition.
            key = conn.execute(
                "select indisunique, pg_get_indexdef(indexrelid) from pg_index "
                "where indexrelid = %s::regclass",
                (f"{kind.table}_key",),
            ).fetchone()
            assert key == (
                True,
                f"CREATE UNIQUE INDEX {kind.table}_key ON ONLY public.{kind.table} "
                "USING btree (device_id, ts)",
            )


def test_maintenance_creates_the_weeks_ahead_that_are_missing(plain_database_url: str) -> None:
    last = this_monday() + partitions.WEEKS_AHEAD * WEEK
    with psycopg.connect(plain_database_url, autocommit=True) as conn:
        # As if the last week ahead had not come due yet when the schema was made.
        for kind in READING_KINDS:
            conn.execute(f"drop table {kind.table}_p{last:%Y%m%d}")
        report = partitions.maintain(conn, retention_days=400)
        assert report is not None
        assert sorted(report.created) == sorted(f"{k.table}_p{last:%Y%m%d}" for k in READING_KINDS)
        assert report.dropped == ()
        for kind in READING_KINDS:
            assert bounds(conn, kind.table) == {
                f"{kind.table}_default": None,
                **expected_weeks(kind.table, this_monday(), 1 + partitions.WEEKS_AHEAD),
            }
        again = partitions.maintain(conn, retention_days=400)
        assert again == partitions.MaintenanceReport(created=(), dropped=(), expired_default_rows=0)


def test_maintenance_drops_the_partitions_past_retention_and_keeps_the_newer_ones(
    plain_database_url: str,
) -> None:
    ages = {"d420": 420, "d399": 399, "d30": 30, "d0": 0}  # days before now
    with psycopg.connect(plain_database_url, autocommit=True) as conn:
        for device, age in ages.items():
            conn.execute(
                "select cityops_create_partition("
                "'manhole_readings', now() - make_interval(days => %s))",
                (age,),
            )
            conn.execute(
                "insert into manhole_readings (device_id, ts) "
                "values (%s, now() - make_interval(days => %s))",
                (device, age),
            )
        where = dict(
            conn.execute("select device_id, tableoid::regclass::text from manhole_readings")
        )
        assert not any(name.endswith("_default") for name in where.values())
        before = bounds(conn, "manhole_readings")

        report = partitions.maintain(conn, retention_days=400)

        assert report is not None
        assert report.dropped == (where["d420"],)
        assert report.created == ()
        assert conn.execute(
            "select to_regclass(%s), to_regclass(%s)", (where["d420"], where["d420"] + "_expired")
        ).fetchone() == (None, None)
        assert [
            row[0] for row in conn.execute("select device_id from manhole_readings order by ts")
        ] == [
            "d399",
            "d30",
            "d0",
        ]
        left = bounds(conn, "manhole_readings")
        assert left == {name: b for name, b in before.items() if name != where["d420"]}
        now = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        assert all(b is None or b[1] > now - timedelta(days=400) for b in left.values())


def test_a_reading_beyond_the_weeks_made_ahead_is_stored_then_moved_into_its_week(
    plain_database_url: str,
) -> None:
    with psycopg.connect(plain_database_url, autocommit=True) as conn:
        # A device whose clock runs two months fast (the decoder only accepts a few minutes
        # ahead, so this is a writer of its own).
        conn.execute(
            "insert into light_readings (device_id, ts, lamp_on) "
            "values ('skewed', now() + interval '60 days', true)"
        )
        row = conn.execute("select tableoid::regclass::text, ts from light_readings").fetchone()
        assert row is not None
        assert row[0] == "light_readings_default"
        week = monday_of(row[1])

        report = partitions.maintain(conn, retention_days=400)

        assert report is not None
        assert report.created == (f"light_readings_p{week:%Y%m%d}",)
        assert conn.execute(
            "select tableoid::regclass::text, ts from light_readings"
        ).fetchone() == (
            f"light_readings_p{week:%Y%m%d}",
            row[1],
        )
        assert conn.execute("select count(*) from light_readings_default").fetchone() == (0,)


def test_backfill_outside_the_partitions_is_stored_not_refused_and_expired_backfill_goes(
    plain_database_url: str, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    now = datetime.now(UTC).replace(microsecond=0)
    ages = {"recent": 0, "backfill": 100, "expired": 450}  # days before now
    readings = [
        {"ts": int((now - timedelta(days=days)).timestamp() * 1000), "tilt_deg": days / 10}
        for days in ages.values()
    ]
    with psycopg.connect(plain_database_url, autocommit=True) as conn:
        register(conn, {device: "manhole"})
        settings = make_settings()
        running = start_worker(
            settings.model_copy(
                update={"database": DatabaseSettings(url=plain_database_url, timescaledb="off")}
            )
        )
        # The round the worker runs at start is over: it does not move what is published next.
        wait_for(
            lambda: (
                running.metric(
                    "cityops_ingest_housekeeping_rounds_total", task="partitions", result="done"
                )
                == 1
            ),
            what="the first partition maintenance",
        )
        publisher.publish(f"cityops/v1/manhole/{device}/telemetry", json.dumps(readings))
        wait_for(
            lambda: (
                running.metric("cityops_ingest_rows_total", kind="manhole", result="inserted") == 3
            ),
            what="all three readings stored",
        )
        assert (
            running.metric("cityops_ingest_quarantined_total", reason="rejected_by_database") == 0
        )
        stored = "select tableoid::regclass::text, tilt_deg from manhole_readings order by ts"
        backfill_week = monday_of(now - timedelta(days=100))
        assert conn.execute(stored).fetchall() == [
            ("manhole_readings_default", pytest.approx(45.0)),
            ("manhole_readings_default", pytest.approx(10.0)),
            (f"manhole_readings_p{this_monday():%Y%m%d}", 0.0),
        ]

        report = partitions.maintain(conn, retention_days=400)

        assert report is not None
        assert report.expired_default_rows == 1
        assert report.created == (f"manhole_readings_p{backfill_week:%Y%m%d}",)
        assert conn.execute(stored).fetchall() == [
            (f"manhole_readings_p{backfill_week:%Y%m%d}", pytest.approx(10.0)),
            (f"manhole_readings_p{this_monday():%Y%m%d}", 0.0),
        ]


def _readings_sql(table: str) -> str:
    """Readings of three devices every five days over 500 days (past the 400 of retention)."""
    columns, values = "device_id, ts", "'dev-' || d, now() - make_interval(days => 5 * s)"
    if table == "sweeper_readings":
        columns, values = columns + ", lat, lon", values + ", 41.8 + d, 123.4 + s / 1000.0"
    elif table == "device_status":
        columns, values = columns + ", online, firmware", values + ", s % 2 = 0, 'fw' || s"
    else:
        value = "tilt_deg" if table == "manhole_readings" else "power_w"
        columns, values = columns + f", {value}", values + ", s + d / 10.0"
    return (
        f"insert into {table} ({columns}) select {values} "
        "from generate_series(0, 100) s, generate_series(1, 3) d"
    )


def test_migrate_moves_every_row_of_an_existing_schema_into_weekly_partitions(
    server_url: str,
) -> None:
    url = create_database(server_url)
    try:
        migrate_until(url, "0004_case_version")
        before = {}
        with psycopg.connect(url) as conn:
            for kind in READING_KINDS:
                conn.execute(_readings_sql(kind.table))
                before[kind.table] = conn.execute(
                    f"select * from {kind.table} order by device_id, ts"
                ).fetchall()
                assert len(before[kind.table]) == 303

        report = db.migrate(DatabaseSettings(url=url, timescaledb="off"))

        assert report.applied[0] == "0005_partitioned_readings.postgresql"
        with psycopg.connect(url) as conn:
            for kind in READING_KINDS:
                table = kind.table
                assert (
                    conn.execute(f"select * from {table} order by device_id, ts").fetchall()
                    == (before[table])
                )
                # Each row in its week's partition, none in the default one.
                misplaced = conn.execute(
                    f"select count(*) from {table} where tableoid::regclass::text <> "
                    f"'{table}_p' || to_char(cityops_partition_start(ts) at time zone 'UTC', "
                    "'YYYYMMDD')"
                ).fetchone()
                assert misplaced == (0,)
                weeks = bounds(conn, table)
                assert len(weeks) >= 500 // 7 + 1 + partitions.WEEKS_AHEAD
                assert expected_weeks(table, this_monday(), 1 + partitions.WEEKS_AHEAD).items() <= (
                    weeks.items()
                )
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("insert into manhole_readings select * from manhole_readings limit 1")
    finally:
        drop_database(server_url, url)
