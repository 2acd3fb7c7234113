"""The hourly rollups the dashboards read, kept on the plain PostgreSQL path.

On the TimescaleDB path ``manhole_hourly`` and ``light_hourly`` are continuous aggregates that
TimescaleDB refreshes itself (migration 0012). On the plain path they are tables with the same
columns; ``refresh`` re-aggregates the hours of the batches ingest committed since the last
refresh, read from the change feed below the horizon of running transactions, as the scenes read
it (a batch that commits late is not skipped). The scenes service calls it after each run.
"""

from __future__ import annotations

import zlib
from typing import Final

import psycopg
from psycopg import sql

from store.db import StoragePath, storage_path

#: Each rollup and the readings table it aggregates.
ROLLUPS: Final = {"manhole_hourly": "manhole_readings", "light_hourly": "light_readings"}
#: Advisory lock keys of refreshes: this in the high 32 bits, the rollup's crc32 below.
_LOCK_SPACE: Final = 0x2011


def refresh(conn: psycopg.Connection) -> dict[str, int]:
    """Bring the plain path's rollups up to the feed's horizon; the rows each one wrote.

    One transaction per rollup, committed before the next: nothing is left open (an open
    transaction that wrote would hold back every reader of the change feed). A rollup another
    process is refreshing is left to it; on the TimescaleDB path there is nothing to do (an
    empty result).
    """
    path = storage_path(conn)
    conn.commit()  # the read's transaction ends: each refresh below is a transaction of its own
    if path is StoragePath.TIMESCALEDB:
        return {}
    written = {}
    for rollup in ROLLUPS:
        with conn.transaction():
            key = _LOCK_SPACE << 32 | zlib.crc32(rollup.encode())
            row = conn.execute("select pg_try_advisory_xact_lock(%s::bigint)", (key,)).fetchone()
            if not (row and row[0]):
                continue
            row = conn.execute(
                "select pg_snapshot_xmin(pg_current_snapshot()), coalesce((select xact_horizon "
                "from rollup_watermarks where rollup = %s), '0'::xid8)",
                (rollup,),
            ).fetchone()
            assert row is not None
            horizon, watermark = row
            row = conn.execute(
                sql.SQL("select {}(%s, %s)").format(sql.Identifier(f"cityops_refresh_{rollup}")),
                (watermark, horizon),
            ).fetchone()
            written[rollup] = int(row[0]) if row else 0
            conn.execute(
                "insert into rollup_watermarks (rollup, xact_horizon) values (%s, %s) "
                "on conflict (rollup) do update set xact_horizon = excluded.xact_horizon, "
                "updated_at = now()",
                (rollup, horizon),
            )
    return written


def expire(conn: psycopg.Connection, *, retention_days: int) -> int:
    """Delete the plain path's rollup rows of hours older than the readings' retention."""
    deleted = 0
    for rollup in ROLLUPS:
        cur = conn.execute(
            sql.SQL("delete from {} where bucket < now() - make_interval(days => %s)").format(
                sql.Identifier(rollup)
            ),
            (retention_days,),
        )
        deleted += cur.rowcount
    return deleted
