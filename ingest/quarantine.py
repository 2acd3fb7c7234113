"""The quarantine, for operators: list and show entries, replay them once the cause is fixed, purge.

A typical fix: readings from a device that was registered late sit in the quarantine as
``unknown_device``; once it is registered, ``replay`` runs those messages again through today's
registry and contract. A message is replayed whole (all the entries it left, whatever their
reasons) with its original receive time, through the same writer ingest uses, so its readings
land once (what is stored already counts as duplicate) and what still cannot be stored goes
back to the quarantine with today's reason, in the same transaction that removes the old
entries. An entry whose payload was cut (``oversized``) cannot be replayed and stays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from devices.changes import read_device_changes
from ingest.decode import DecodeLimits, Decoder
from ingest.settings import IngestSettings
from ingest.writer import BatchWriter, Message
from wire.topics import topic_root

#: Columns of an entry as ``list_entries`` and ``show_entry`` return them.
COLUMNS = ("id", "received_at", "reason", "topic", "detail", "payload_bytes")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which entries an operation takes: by ids, or by reason and receive time."""

    ids: Sequence[int] = ()
    reason: str | None = None
    since: datetime | None = None
    before: datetime | None = None

    def where(self) -> sql.Composed:
        """The SQL condition on the quarantine table."""
        conditions: list[sql.Composable] = [sql.SQL("true")]
        if self.ids:
            conditions.append(sql.SQL("id = any({})").format(sql.Literal(list(self.ids))))
        if self.reason is not None:
            conditions.append(sql.SQL("reason = {}").format(sql.Literal(self.reason)))
        if self.since is not None:
            conditions.append(sql.SQL("received_at >= {}").format(sql.Literal(self.since)))
        if self.before is not None:
            conditions.append(sql.SQL("received_at < {}").format(sql.Literal(self.before)))
        return sql.SQL(" and ").join(conditions)


@dataclass(slots=True)
class ReplayReport:
    """What a replay did."""

    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    requarantined: Counter[str] = field(default_factory=Counter)
    not_replayable: int = 0  # entries whose payload was cut, left as they were


def list_entries(
    conn: psycopg.Connection, selection: Selection, limit: int
) -> list[tuple[Any, ...]]:
    """The newest ``limit`` entries of the selection, newest first."""
    query = sql.SQL(
        "select id, received_at, reason, topic, detail, payload_bytes from quarantine "
        "where {} order by id desc limit {}"
    ).format(selection.where(), sql.Literal(limit))
    return conn.execute(query).fetchall()


def show_entry(conn: psycopg.Connection, entry_id: int) -> tuple[tuple[Any, ...], bytes] | None:
    """One entry and its stored payload, or None."""
    row = conn.execute(
        "select id, received_at, reason, topic, detail, payload_bytes, payload "
        "from quarantine where id = %s",
        (entry_id,),
    ).fetchone()
    return None if row is None else (row[:-1], bytes(row[-1]))


def purge(conn: psycopg.Connection, before: datetime) -> int:
    """Delete the entries received before ``before``; return how many."""
    with conn.transaction():
        cur = conn.execute("delete from quarantine where received_at < %s", (before,))
    return cur.rowcount


def replay(
    conn: psycopg.Connection, selection: Selection, ingest: IngestSettings, *, topic_prefix: str
) -> ReplayReport:
    """Run the selected entries' messages through today's registry and contract, once.

    Only entries under ``topic_prefix``'s tree are taken: those of another prefix (the demo's,
    another site's on a shared database) are left as they are, with their reasons.
    """
    report = ReplayReport()
    writer = BatchWriter(
        conn,
        raw_max_bytes=ingest.max_payload_bytes,
        last_seen_resolution_s=ingest.last_seen_resolution_s,
    )
    known = read_device_changes(conn, None).registrations  # the whole registry, as it is now
    with conn.transaction():
        # Every entry of each selected message (a message leaves one entry per rejection).
        rows = conn.execute(
            sql.SQL(
                "select id, extract(epoch from received_at)::numeric * 1000000, topic, payload, "
                "payload_bytes from quarantine where (received_at, topic, payload) in "
                "(select received_at, topic, payload from quarantine where {} "
                "and starts_with(topic, {})) order by id for update"
            ).format(selection.where(), sql.Literal(topic_root(topic_prefix) + "/"))
        ).fetchall()
        messages: dict[tuple[int, str, bytes], list[int]] = {}
        for entry_id, received_us, topic, payload, size in rows:
            if size > len(payload):
                report.not_replayable += 1
                continue
            messages.setdefault((int(received_us), topic, bytes(payload)), []).append(entry_id)
        if not messages:
            return report
        decoder = Decoder(
            limits=DecodeLimits.of(ingest), registration_of=known.get, topic_prefix=topic_prefix
        )
        batch = [
            Message(
                0,
                0,
                topic,
                payload,
                received_us,
                decoder.decode_message(topic, payload, received_us),
            )
            for received_us, topic, payload in messages
        ]
        result = writer.write(batch)
        old = [entry_id for ids in messages.values() for entry_id in ids]
        conn.execute("delete from quarantine where id = any(%s)", (old,))
    report.messages = len(batch)
    report.inserted = sum(result.inserted.values())
    report.duplicates = sum(result.duplicates.values())
    report.requarantined = result.quarantined
    return report
