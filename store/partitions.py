"""Plain PostgreSQL path: the readings tables' weekly partitions, made ahead, dropped when expired.

Migration 0005 made each readings table range-partitioned on ``ts``: a partition a week
(``manhole_readings_p20261123`` holds Monday 2026-11-23 00:00 UTC up to the next Monday) and a
default partition for any reading no weekly partition covers, so that none is refused. The SQL
function ``cityops_create_partition`` (same migration) is the one definition of a partition's
bounds and name; this module decides which partitions to create and which to drop.

Why a week and not a day (TimescaleDB's chunk): PostgreSQL 15 cannot prune partitions at plan
time for ``ts > now() - ...`` (``now()`` is only stable), so such a query plans and locks every
partition. Measured on PostgreSQL 15.20 (2 vCPU) with 400 days of empty partitions: daily (407)
planned in 7-28 ms and held 817 locks, weekly (60) in 0.5-0.6 ms with 123 locks; about eight
such queries at once on daily partitions would fill the default lock table (64 x 100 entries).
The cost of a week: readings are kept up to 7 days past ``database.retention_days``.

Why detach, then drop, with a lock timeout: both DETACH and DROP of a partition take an ACCESS
EXCLUSIVE lock on the parent table, which waits for every running query on it while every insert
queues behind the waiting lock. ``lock_timeout`` bounds that stall; the next round tries again.
The detach commits at once (catalog changes only) and the drop, which unlinks the files, runs
after the parent's lock is released. A detached partition is renamed ``..._expired`` first, so a
round interrupted between the two steps leaves a table the next round recognises and drops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from wire.contract import READING_KINDS

#: Weeks created after the current one. Maintenance runs hourly; should it stop for this long,
#: readings go to the default partition and the next round moves them into their own.
WEEKS_AHEAD = 2

# How long a step waits for a lock before this round gives up (see the module docstring): the
# longest an insert can be held up by partition maintenance.
_SET_LOCK_TIMEOUT = "set local lock_timeout = '2s'"

# Any constant; it only has to be the same for every ingest worker. Several workers share one
# database: one maintains the partitions at a time, the others skip their round.
_MAINTENANCE_LOCK_KEY = 0x0C17_0976

_EXPIRED_SUFFIX = "_expired"

_CREATE_AHEAD = sql.SQL(
    "select name from generate_series(0, %s) week, "
    "cityops_create_partition({table}, now() + week * interval '7 days') name "
    "where name is not null"
)
# The default partition keeps no expired readings (a backfill older than the retention window):
# they are exactly those of weeks whose partitions are dropped.
_DELETE_EXPIRED_DEFAULT = sql.SQL(
    "delete from {default} where ts < cityops_partition_start(now() - make_interval(days => %s))"
)
_ADOPT_DEFAULT = sql.SQL(
    "select cityops_create_partition({table}, week) from "
    "(select distinct cityops_partition_start(ts) week from {default}) weeks"
)
# A weekly partition is expired when it ends before the retention window starts; its upper
# bound is read from the catalog's partition bound text: FOR VALUES FROM ('...') TO ('...').
_EXPIRED_PARTITIONS = r"""
select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
 where i.inhparent = %s::regclass
   and (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
       <= now() - make_interval(days => %s)
 order by 1
"""
_DETACHED_EXPIRED = """
select relname from pg_class
 where relname ~ %s and relkind = 'r' and not relispartition
   and relnamespace = 'public'::regnamespace
 order by 1
"""


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one round of partition maintenance did."""

    created: tuple[str, ...]
    dropped: tuple[str, ...]
    expired_default_rows: int  # expired readings deleted from the default partitions


def create_ahead(conn: psycopg.Connection) -> list[str]:
    """Create this week's partition and the next WEEKS_AHEAD of each readings table; their names.

    Runs in the caller's transaction.
    """
    return [name for kind in READING_KINDS for name in _create_ahead(conn, kind.table)]


def _create_ahead(conn: psycopg.Connection, table: str) -> list[str]:
    statement = _CREATE_AHEAD.format(table=sql.Literal(table))
    return [row[0] for row in conn.execute(statement, (WEEKS_AHEAD,))]


@contextlib.contextmanager
def _step(conn: psycopg.Connection) -> Iterator[None]:
    """One transaction that waits for a lock no longer than the timeout."""
    with conn.transaction():
        conn.execute(_SET_LOCK_TIMEOUT)
        yield


def maintain(conn: psycopg.Connection, *, retention_days: int) -> MaintenanceReport | None:
    """Create partitions ahead, drop the expired ones, leave the default partitions empty.

    ``conn`` is in autocommit mode; each step is a transaction of its own, and a step that waits
    for a lock longer than the timeout raises ``psycopg.errors.LockNotAvailable`` (the steps
    before it stay done). Returns None when another process is maintaining the partitions.
    """
    row = conn.execute("select pg_try_advisory_lock(%s)", (_MAINTENANCE_LOCK_KEY,)).fetchone()
    if not (row and row[0]):
        return None
    try:
        created: list[str] = []
        dropped: list[str] = []
        expired_rows = 0
        for kind in READING_KINDS:
            table = sql.Identifier(kind.table)
            default = sql.Identifier(f"{kind.table}_default")
            with _step(conn):
                created += _create_ahead(conn, kind.table)
                cur = conn.execute(
                    _DELETE_EXPIRED_DEFAULT.format(default=default), (retention_days,)
                )
                expired_rows += cur.rowcount
                adopted = conn.execute(
                    _ADOPT_DEFAULT.format(table=sql.Literal(kind.table), default=default)
                )
                created += [name for (name,) in adopted if name is not None]
            expired = conn.execute(_EXPIRED_PARTITIONS, (kind.table, retention_days)).fetchall()
            for (name,) in expired:
                with _step(conn):
                    conn.execute(
                        sql.SQL("alter table {} detach partition {}").format(
                            table, sql.Identifier(name)
                        )
                    )
                    conn.execute(
                        sql.SQL("alter table {} rename to {}").format(
                            sql.Identifier(name), sql.Identifier(name + _EXPIRED_SUFFIX)
                        )
                    )
            pattern = f"^{kind.table}_p[0-9]{{8}}{_EXPIRED_SUFFIX}$"
            for (name,) in conn.execute(_DETACHED_EXPIRED, (pattern,)).fetchall():
                with _step(conn):
                    conn.execute(sql.SQL("drop table {}").format(sql.Identifier(name)))
                dropped.append(name.removesuffix(_EXPIRED_SUFFIX))
        return MaintenanceReport(
            created=tuple(created), dropped=tuple(dropped), expired_default_rows=expired_rows
        )
    finally:
        if not conn.closed:
            conn.execute("select pg_advisory_unlock(%s)", (_MAINTENANCE_LOCK_KEY,))
