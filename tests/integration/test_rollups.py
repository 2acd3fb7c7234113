"""The hourly rollups the dashboards read: the same relations and figures on both storage paths.

On the plain path the scenes service refreshes tables from ingest's change feed
(``store.rollups.refresh``); on TimescaleDB they are continuous aggregates, refreshed here by the
call their policy makes. Either way a late reading re-aggregates its hour. Expectations are
computed from the readings the test stores, not read back from the database.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from store import rollups
from store.db import StoragePath, storage_path
from tests.plugin import store_readings

HOUR = 3600.0


def refresh(url: str, since: float, until: float) -> None:
    """What keeps the rollups on this path: the scenes' refresh, or TimescaleDB's policy call."""
    with psycopg.connect(url) as conn:  # not autocommit, as the scenes service's
        rollups.refresh(conn)
        # committed, nothing left open: an open transaction would hold the feed's horizon back
        assert conn.info.transaction_status is TransactionStatus.IDLE
    with psycopg.connect(url, autocommit=True) as conn:
        if storage_path(conn) is StoragePath.POSTGRESQL:
            return
        for rollup in rollups.ROLLUPS:
            conn.execute(
                "call refresh_continuous_aggregate(%s, %s, %s)",
                (rollup, datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC)),
            )


def hourly(rows: list[tuple[str, float, dict[str, Any]]], figures: dict[str, Any]) -> dict:
    """Per (device, hour start): each figure's function over the values of its field."""
    grouped: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for device_id, t, values in rows:
        grouped[device_id, t - t % HOUR].append(values)
    return {
        key: tuple(round(float(f(values)), 3) for f in figures.values())
        for key, values in grouped.items()
    }


def stored(conn: psycopg.Connection, rollup: str, columns: list[str], devices: list[str]) -> dict:
    rows = conn.execute(
        f"select device_id, extract(epoch from bucket)::float8, {', '.join(columns)} "
        f"from {rollup} where device_id = any(%s)",
        (devices,),
    ).fetchall()
    return {(r[0], r[1]): tuple(round(float(v), 3) for v in r[2:]) for r in rows}


MANHOLE = {
    "readings": len,
    "tilt_max_deg": lambda vs: max(v["tilt_deg"] for v in vs),
    "water_max_cm": lambda vs: max(v["water_level_cm"] for v in vs),
    "battery_min_pct": lambda vs: min(v["battery_pct"] for v in vs),
    "open_readings": lambda vs: sum(v["cover_open"] for v in vs),
}
LIGHT = {
    "readings": len,
    "on_readings": lambda vs: sum(v["lamp_on"] for v in vs),
    "power_avg_w": lambda vs: sum(v["power_w"] for v in vs) / len(vs),
    "energy_max_kwh": lambda vs: max(v["energy_kwh"] for v in vs),
}


def covers(devices: list[str], start: float, hours: int, tilt: float) -> list:
    return [
        (
            device_id,
            start + h * HOUR + m * 600,
            {
                "tilt_deg": tilt + k + h + m / 10,
                "cover_open": m == 3 and k == 0,
                "water_level_cm": 10.0 * h + m,
                "battery_pct": 90.0 - h - m / 10,
            },
        )
        for k, device_id in enumerate(devices)
        for h in range(hours)
        for m in range(6)
    ]


def lamps(devices: list[str], start: float, hours: int) -> list:
    return [
        (
            device_id,
            start + h * HOUR + m * 900,
            {
                "lamp_on": m != 2,
                "power_w": 100.0 + 10 * m + k,
                "energy_kwh": 5.0 + h + m / 4,
            },
        )
        for k, device_id in enumerate(devices)
        for h in range(hours)
        for m in range(4)
    ]


def test_hourly_rollups_aggregate_each_device_hour_and_take_late_readings(
    database_url: str, tag: str
) -> None:
    start = (time.time() // HOUR - 30) * HOUR  # a day and some hours ago, on the hour
    manholes = [f"rollup-m-{tag}-{k}" for k in range(3)]
    lights = [f"rollup-l-{tag}-{k}" for k in range(2)]
    cover_rows = covers(manholes, start, 3, tilt=1.0)
    lamp_rows = lamps(lights, start, 2)
    store_readings(database_url, "manhole", cover_rows)
    store_readings(database_url, "light", lamp_rows)
    refresh(database_url, start, start + 4 * HOUR)
    with psycopg.connect(database_url) as conn:
        assert stored(conn, "manhole_hourly", list(MANHOLE), manholes) == hourly(
            cover_rows, MANHOLE
        )
        assert stored(conn, "light_hourly", list(LIGHT), lights) == hourly(lamp_rows, LIGHT)
        assert len(hourly(cover_rows, MANHOLE)) == 9

    # late: one more reading in the first hour, steeper than any before; and a new hour
    late = [
        (
            manholes[1],
            start + 1234,
            {"tilt_deg": 40.0, "cover_open": True, "water_level_cm": 1.0, "battery_pct": 50.0},
        ),
        *covers(manholes[:1], start + 3 * HOUR, 1, tilt=2.0),
    ]
    store_readings(database_url, "manhole", late)
    refresh(database_url, start, start + 4 * HOUR)
    with psycopg.connect(database_url) as conn:
        expected = hourly(cover_rows + late, MANHOLE)
        assert stored(conn, "manhole_hourly", list(MANHOLE), manholes) == expected
        assert expected[manholes[1], start][:2] == (7, 40.0)
        assert len(expected) == 10


def test_expired_rollup_hours_are_deleted_with_the_readings_retention(
    plain_database_url: str,
) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(plain_database_url, autocommit=True) as conn:
        for rollup, age_days in (
            ("manhole_hourly", 31),
            ("manhole_hourly", 29),
            ("light_hourly", 40),
        ):
            columns = (
                "readings, open_readings"
                if rollup == "manhole_hourly"
                else ("readings, on_readings")
            )
            conn.execute(
                f"insert into {rollup} (bucket, device_id, {columns}) values (%s, 'd', 1, 0)",
                (now - timedelta(days=age_days),),
            )
        assert rollups.expire(conn, retention_days=30) == 2
        assert conn.execute("select count(*) from manhole_hourly").fetchone() == (1,)
        assert conn.execute("select count(*) from light_hourly").fetchone() == (0,)
