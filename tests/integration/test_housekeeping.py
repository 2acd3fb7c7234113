"""Housekeeping runs beside the writer: a refresh or a maintenance round that waits or fails
holds up no reading, is counted, and is tried again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg

from cityops.settings import Settings
from store.settings import DatabaseSettings
from tests.plugin import Publisher, RunningWorker, register, wait_for


def stored(conn: psycopg.Connection, device: str) -> int:
    row = conn.execute("select count(*) from manhole_readings where device_id = %s", (device,))
    return int(row.fetchone()[0])  # type: ignore[index]


def waiting_for_a_lock(conn: psycopg.Connection, query_part: str) -> bool:
    row = conn.execute(
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
        "and datname = current_database() and query like %s",
        (f"%{query_part}%",),
    ).fetchone()
    return row == (1,)


def reading(ts_ms: int) -> bytes:
    return json.dumps({"ts": ts_ms, "tilt_deg": 1.5}).encode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def assert_a_new_device_is_picked_up(
    conn: psycopg.Connection, publisher: Publisher, device: str
) -> None:
    """Register ``device`` now; its readings must land once a refresh has read it."""
    register(conn, {device: "manhole"})
    wait_for(
        lambda: (
            publisher.publish(f"cityops/v1/manhole/{device}/telemetry", reading(now_ms()))
            or stored(conn, device) >= 1
        ),
        what=f"a reading of {device}, registered while ingest runs",
    )
    assert stored(conn, device) >= 1


def test_a_registry_refresh_waiting_on_a_lock_does_not_hold_up_the_writer(
    conn, database_url: str, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    running = start_worker(make_settings(registry_refresh_s=0.1))
    topic = f"cityops/v1/manhole/{device}/telemetry"
    with psycopg.connect(database_url) as blocker:
        blocker.execute("lock table devices_deleted in access exclusive mode")
        wait_for(
            lambda: waiting_for_a_lock(conn, "devices_deleted"),
            what="the housekeeping refresh waiting for the lock",
        )
        # One batch after another: a refresh between two batches on the writer's thread would
        # hold up the second.
        for n in (1, 2, 3):
            publisher.publish(topic, reading(now_ms()))
            wait_for(lambda n=n: stored(conn, device) == n, what=f"reading {n} stored meanwhile")
        assert (
            running.metric(
                "cityops_ingest_housekeeping_rounds_total", task="registry", result="failed"
            )
            == 0
        )
    # The lock is gone: the refresh that waited ends, and a device registered now is read.
    assert_a_new_device_is_picked_up(conn, publisher, f"{tag}-late")


def test_stopping_ingest_cancels_a_refresh_waiting_on_a_lock(
    conn, database_url: str, make_settings, start_worker
) -> None:
    running = start_worker(make_settings(registry_refresh_s=0.1))
    with psycopg.connect(database_url) as blocker:
        blocker.execute("lock table devices_deleted in access exclusive mode")
        wait_for(
            lambda: waiting_for_a_lock(conn, "devices_deleted"),
            what="the housekeeping refresh waiting for the lock",
        )
        started = time.monotonic()
        running.close()
        assert time.monotonic() - started < 5
        assert not waiting_for_a_lock(conn, "devices_deleted")
    assert (
        running.metric("cityops_ingest_housekeeping_rounds_total", task="registry", result="failed")
        == 0
    )


def test_failed_rounds_are_counted_retried_and_ingest_goes_on(
    plain_database_url: str,
    tag,
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
    publisher: Publisher,
) -> None:
    device = f"{tag}-mh"
    settings = make_settings(registry_refresh_s=0.1).model_copy(
        update={"database": DatabaseSettings(url=plain_database_url, timescaledb="off")}
    )
    with (
        psycopg.connect(plain_database_url, autocommit=True) as conn,
        psycopg.connect(plain_database_url) as blocker,
    ):
        register(conn, {device: "manhole"})
        # Partition maintenance waits for this lock (inserts do not) until its timeout; the
        # registry refresh finds no table of tombstones.
        blocker.execute("lock table manhole_readings in share update exclusive mode")
        conn.execute("alter table devices_deleted rename to devices_deleted_away")
        running = start_worker(settings)

        def rounds(task: str, result: str) -> float:
            return running.metric(
                "cityops_ingest_housekeeping_rounds_total", task=task, result=result
            )

        publisher.publish(f"cityops/v1/manhole/{device}/telemetry", reading(now_ms()))
        wait_for(lambda: stored(conn, device) == 1, what="a reading stored")
        wait_for(lambda: rounds("registry", "failed") >= 2, what="failed refreshes counted")
        wait_for(
            lambda: rounds("partitions", "failed") == 1,
            timeout_s=10,
            what="maintenance giving up on the lock after its timeout",
        )
        assert rounds("partitions", "done") == 0
        publisher.publish(f"cityops/v1/manhole/{device}/telemetry", reading(now_ms() + 1))
        wait_for(lambda: stored(conn, device) == 2, what="another reading stored")

        blocker.rollback()
        conn.execute("alter table devices_deleted_away rename to devices_deleted")
        wait_for(lambda: rounds("registry", "done") >= 1, what="a refresh done again")
        assert_a_new_device_is_picked_up(conn, publisher, f"{tag}-late")


def test_the_worker_drops_expired_partitions_beside_ingest(
    plain_database_url: str,
    tag,
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], RunningWorker],
    publisher: Publisher,
) -> None:
    device = f"{tag}-mh"
    with psycopg.connect(plain_database_url, autocommit=True) as conn:
        register(conn, {device: "manhole"})
        expired = conn.execute(
            "select cityops_create_partition('manhole_readings', now() - interval '500 days')"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "insert into manhole_readings (device_id, ts) values (%s, now() - interval '500 days')",
            (device,),
        )
        start_worker(
            make_settings().model_copy(
                update={"database": DatabaseSettings(url=plain_database_url, timescaledb="off")}
            )
        )
        publisher.publish(f"cityops/v1/manhole/{device}/telemetry", reading(now_ms()))
        wait_for(
            lambda: conn.execute("select to_regclass(%s)", (expired,)).fetchone() == (None,),
            what="the expired partition dropped",
        )
        wait_for(lambda: stored(conn, device) == 1, what="the reading stored, the old one gone")
        assert conn.execute("select to_regclass(%s)", (expired,)).fetchone() == (None,)
