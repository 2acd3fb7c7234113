"""Changes to the device registry since a reader last looked: registrations, retypes, deletions.

What ingest needs of a device is its ``Registration``: its type, its gateway, and whether it may
speak (not retired, its credentials not all revoked; migration 0015 tracks those as changes too).

Migration 0006 stamps each device row with the transaction that registered or retyped it
(``changed_xid``) and keeps a tombstone per deleted device (``devices_deleted``). A reader keeps
the snapshot it last read at; the next read returns the rows whose transaction that snapshot did
not see. So each change is read once, by the first read whose snapshot sees it, also when its
transaction was still running at the previous read, which a "changed after time T" or "sequence
number > N" mark misses (a transaction that took its time or number before the read commits after
it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg

# Rows of a transaction the snapshot did not see. The first condition is implied by the second
# (a snapshot sees everything before its xmin); it is there for the index.
_UNSEEN = (
    "{0} >= pg_snapshot_xmin(%(seen)s::pg_snapshot) "
    "and not pg_visible_in_snapshot({0}, %(seen)s::pg_snapshot)"
)
_COLUMNS = "device_id, type, gateway_id, retired_at is null and not is_revoked"
_CHANGED = (
    f"select {_COLUMNS} from devices where {_UNSEEN.format('changed_xid')} "
    "union all select device_id, null, null, null from devices_deleted "
    f"where {_UNSEEN.format('deleted_xid')}"
)


class Registration(NamedTuple):
    """What ingest checks a device's messages against."""

    type: str
    gateway_id: str | None = None  # the gateway whose batches may carry its readings
    may_speak: bool = True  # False: retired, or every credential of it revoked


def registrations(devices: Iterable[Mapping[str, Any]]) -> dict[str, Registration]:
    """Registrations of device records (``device_id``, ``type``, optional ``gateway_id``)."""
    return {d["device_id"]: Registration(d["type"], d.get("gateway_id") or None) for d in devices}


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """Devices registered, retyped or deleted since a snapshot, and the snapshot read at."""

    registrations: dict[str, Registration | None]  # by device id; None: it was deleted
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
            cur = conn.execute(f"select {_COLUMNS} from devices")
        else:
            cur = conn.execute(_CHANGED, {"seen": seen})
        found = {
            device_id: None if kind is None else Registration(kind, gateway_id, may_speak)
            for device_id, kind, gateway_id, may_speak in cur.fetchall()
        }
    assert snapshot is not None
    return DeviceChanges(registrations=found, seen=snapshot[0])
