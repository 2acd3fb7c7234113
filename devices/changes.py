"""Changes to the device registry since a reader last looked: registrations, retypes, deletions.

Migration 0006 stamps each device row with the transaction that registered or retyped it
(``changed_xid``) and keeps a tombstone per deleted device (``devices_deleted``). A reader keeps
the snapshot it last read at; the next read returns the rows whose transaction that snapshot did
not see. So each change is read once, by the first read whose snapshot sees it, also when its
transaction was still running at the previous read, which a "changed after time T" or "sequence
number > N" mark misses (a transaction that took its time or number before the read commits after
it).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# Rows of a transaction the snapshot did not see. The first condition is implied by the second
# (a snapshot sees everything before its xmin); it is there for the index.
_UNSEEN = (
    "{0} >= pg_snapshot_xmin(%(seen)s::pg_snapshot) "
    "and not pg_visible_in_snapshot({0}, %(seen)s::pg_snapshot)"
)
_CHANGED = (
    f"select device_id, type from devices where {_UNSEEN.format('changed_xid')} "
    f"union all select device_id, null from devices_deleted where {_UNSEEN.format('deleted_xid')}"
)


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """Devices registered, retyped or deleted since a snapshot, and the snapshot read at."""

    types: dict[str, str | None]  # device id to its type, None when it was deleted
    seen: str  # the snapshot this read saw (pg_snapshot as text): the next read's ``seen``


def read_device_changes(conn: psycopg.Connection, seen: str | None) -> DeviceChanges:
    """Every device when ``seen`` is None, else those changed since the snapshot ``seen``.

    Runs a transaction of its own: ``conn`` must not be in one.
    """
    with conn.transaction():
        # One snapshot for the read and for the mark the next read starts from.
        conn.execute("set transaction isolation level repeatable read, read only")
        snapshot = conn.execute("select pg_current_snapshot()::text").fetchone()
        if seen is None:
            cur = conn.execute("select device_id, type from devices")
        else:
            cur = conn.execute(_CHANGED, {"seen": seen})
        types: dict[str, str | None] = dict(cur.fetchall())
    assert snapshot is not None
    return DeviceChanges(types=types, seen=snapshot[0])
