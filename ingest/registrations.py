"""The registrations the decoder looks up, kept current from the registry's changes."""

from __future__ import annotations

import threading

import psycopg
from prometheus_client import Counter

from devices.changes import Registration, read_device_changes


class Registrations:
    """Each registered device's registration (type, gateway, may it speak), kept current.

    ``get`` is the map's own ``dict.get``: the decoder calls it on the writer thread, without a
    lock, while ``refresh`` runs on another thread. ``refresh`` changes the map in place with
    single dict operations (one ``update`` with a dict, one ``pop`` per deletion), each atomic
    because str keys run no Python code inside them: a lookup sees a device as it was before
    or after its change. The map is never replaced, so a ``get`` taken once stays current.
    """

    def __init__(self, *, rows_read: Counter) -> None:
        self._types: dict[str, Registration] = {}
        self.get = self._types.get
        self._seen: str | None = None  # the snapshot of the last refresh
        self._rows_read = rows_read
        self._lock = threading.Lock()  # one refresh at a time: each starts where the last ended

    def __len__(self) -> int:
        return len(self._types)

    def load(self, conn: psycopg.Connection) -> None:
        """Read the whole registry unless it was read already; later changes come by ``refresh``.

        The writer calls this on every connect, before decoding anything: after the first time it
        returns at once, so it never waits for a refresh under way on the housekeeping thread.
        """
        if self._seen is None:
            self.refresh(conn)

    def refresh(self, conn: psycopg.Connection) -> int:
        """Apply the changes since the last refresh (the first reads all); return rows read."""
        with self._lock:
            changes = read_device_changes(conn, self._seen)
            found = changes.registrations
            self._types.update({d: r for d, r in found.items() if r is not None})
            for device_id, registration in found.items():
                if registration is None:
                    self._types.pop(device_id, None)
            self._seen = changes.seen
        self._rows_read.inc(len(found))
        return len(found)
