"""The batch writer: decoded messages into the readings tables and the quarantine, in one commit.

Rows go through binary COPY into a per-connection staging table, then ``insert ... on conflict
do nothing`` into the real table, so a redelivered or replayed reading never makes a second row
(the natural key is (device_id, ts)). With the rows of each readings table goes one row of the
scenes' change feed (``reading_batches``: the devices touched, the event-time span), in the same
transaction.

Two kinds of database error, told apart by SQLSTATE class (``is_record_error``):
- the database refuses a record for its data (a check constraint, a value out of a column's
  range): the batch is bisected under savepoints until the refused messages are isolated, and only
  those go to the quarantine as ``rejected_by_database``, whole, with the database's reason;
- anything else (unreachable, privileges revoked, a column gone, a trigger failing, a read-only
  server) would refuse every record: ``write`` raises, nothing is committed, and the caller
  retries the same batch later and acknowledges nothing meanwhile.
"""

from __future__ import annotations

import bisect
import logging
import statistics
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
from psycopg import postgres, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from devices.changes import Registration
from ingest.decode import Decoded, Payload, Reason, Rejection
from redaction import error_line
from store.db import SCENES_CHANNEL
from wire.contract import READING_KINDS, ReadingKind

logger = logging.getLogger(__name__)

_QUARANTINE = ("received_at", "topic", "reason", "detail", "payload", "payload_bytes")
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, PostgreSQL's binary timestamp zero
_INT8 = struct.Struct(">q")


class EpochMicroseconds(int):
    """Marker type: an int that is epoch microseconds (never instantiated on the hot path)."""


class EpochMicrosecondsDumper(Dumper):
    """Binary COPY of epoch-microsecond ints into timestamptz columns.

    Registered per connection; psycopg looks dumpers up by column type for COPY with
    ``set_types``, so timestamps travel as the ints the decoder made, with no datetime objects.
    """

    format = Format.BINARY
    oid = postgres.types["timestamptz"].oid

    def dump(self, obj: int) -> bytes:
        """Encode as PostgreSQL's binary timestamp: microseconds since 2000-01-01 UTC."""
        return _INT8.pack(obj - _PG_EPOCH_US)


@dataclass(slots=True)
class Message:
    """One received MQTT message, decoded, waiting for its commit and acknowledgement."""

    mid: int
    generation: int
    topic: str
    payload: Payload
    received_us: int
    decoded: Decoded


@dataclass(slots=True)
class WriteResult:
    """What one committed batch did, for metrics and tests."""

    messages: Counter[tuple[str, str]] = field(default_factory=Counter)  # (device type, result)
    inserted: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    newest_us: int = 0
    seen_written: dict[str, int] = field(default_factory=dict)

    def add(self, other: WriteResult) -> None:
        """Fold another result into this one."""
        self.messages.update(other.messages)
        self.inserted.update(other.inserted)
        self.duplicates.update(other.duplicates)
        self.quarantined.update(other.quarantined)
        self.newest_us = max(self.newest_us, other.newest_us)
        self.seen_written.update(other.seen_written)


#: SQLSTATE classes of errors about the data of a record, which other records would not cause:
#: 22 data exception, 23 integrity constraint violation, 54 program limit exceeded (a row or
#: index entry too large). Every other class is about the server, the schema or the session.
_RECORD_ERROR_CLASSES = frozenset({"22", "23", "54"})


#: SQLSTATEs of class 22 that are about the COPY stream's shape, i.e. the table's columns
#: (bad_copy_file_format, invalid_binary_representation): every record would hit them.
_SCHEMA_ERROR_STATES = frozenset({"22P03", "22P04"})
#: What encoding one value for COPY raises on the client (a number out of its column's range).
_ENCODING_ERRORS = (ValueError, TypeError, OverflowError, struct.error, psycopg.DataError)


def is_record_error(exc: Exception) -> bool:
    """Whether a record failed for its data, not for a reason any record hits.

    Either the database refused it (by SQLSTATE class), or the client could not encode one of
    its values for COPY. Anything else (the connection, the schema, the server, a bug here) is
    not about one record.
    """
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        state = exc.sqlstate
        return state[:2] in _RECORD_ERROR_CLASSES and state not in _SCHEMA_ERROR_STATES
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False  # the connection or the server, whatever the record
    return isinstance(exc, _ENCODING_ERRORS)


@dataclass(slots=True)
class ClockSample:
    """A flush's readings in arrival order, for each device's clock skew.

    A device's clock is judged against the other devices' readings that arrived around its
    newest one: its offset (reading time - receive time) minus the median offset of the other
    devices in its block of ``BLOCK_ROWS`` readings in arrival order (each other device once, by
    its median there; its own excluded). A replay, a gateway's backlog or a stream sent flat out
    moves its neighbours with it; a device whose clock is off stands out. Blocks are short, so
    that even a stream replayed flat out spans seconds in each. A block with fewer than
    ``PEERS`` other devices is no reference: the device gets no skew.
    """

    ids: list[str] = field(default_factory=list)
    offsets_us: list[int] = field(default_factory=list)
    newest: dict[str, tuple[int, int]] = field(default_factory=dict)  # device: (index, time)

    BLOCK_ROWS: ClassVar[int] = 64
    PEERS: ClassVar[int] = 2

    def add(self, device_id: str, ts_us: int, received_us: int) -> None:
        """Note a reading, the next to arrive."""
        seen = self.newest.get(device_id)
        if seen is None or ts_us > seen[1]:
            self.newest[device_id] = (len(self.ids), ts_us)
        self.ids.append(device_id)
        self.offsets_us.append(ts_us - received_us)

    def newest_us(self) -> dict[str, int]:
        """Each device's newest reading time."""
        return {device_id: ts_us for device_id, (_, ts_us) in self.newest.items()}

    def skews_s(self) -> dict[str, float]:
        """Each device's newest reading's offset from its block's others (seconds), if any."""
        if len(self.newest) <= self.PEERS:
            return {}
        blocks = -(-len(self.ids) // self.BLOCK_ROWS)
        bounds = [len(self.ids) * i // blocks for i in range(blocks + 1)]
        judged: dict[int, list[str]] = {}  # block: the devices whose newest reading is in it
        for device_id, (i, _) in self.newest.items():
            judged.setdefault(bisect.bisect_right(bounds, i) - 1, []).append(device_id)
        skews = {}
        for block, devices in judged.items():
            start, stop = bounds[block], bounds[block + 1]
            per_device: dict[str, list[int]] = {}
            for device_id, offset in zip(
                self.ids[start:stop], self.offsets_us[start:stop], strict=True
            ):
                per_device.setdefault(device_id, []).append(offset)
            # each other device once, however much it sent: a chatty one cannot set the clock
            medians = {d: statistics.median(offsets) for d, offsets in per_device.items()}
            for device_id in devices:
                others = [m for d, m in medians.items() if d != device_id]
                if len(others) >= self.PEERS:
                    own = self.offsets_us[self.newest[device_id][0]]
                    skews[device_id] = (own - statistics.median(others)) / 1e6
        return skews


class BatchWriter:
    """Writes batches over one connection it owns; the caller handles reconnects."""

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        raw_max_bytes: int,
        last_seen_resolution_s: float,
    ) -> None:
        self._conn = conn
        self._raw_max_bytes = raw_max_bytes
        self._seen_resolution_us = int(last_seen_resolution_s * 1e6)
        self._seen_written: dict[str, int] = {}  # committed devices.last_seen, epoch us
        conn.adapters.register_dumper(EpochMicroseconds, EpochMicrosecondsDumper)
        self._types: dict[str, list[int]] = {}
        for kind in READING_KINDS:
            table = sql.Identifier(kind.table)
            stage = sql.Identifier(f"stage_{kind.table}")
            conn.execute(
                sql.SQL("create temp table if not exists {} (like {})").format(stage, table)
            )
            self._types[kind.table] = self._column_types(table, kind.columns)
        self._quarantine_types = self._column_types(sql.Identifier("quarantine"), _QUARANTINE)
        conn.commit()

    def _column_types(self, table: sql.Identifier, columns: tuple[str, ...]) -> list[int]:
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        cur = self._conn.execute(sql.SQL("select {} from {} limit 0").format(names, table))
        return [column.type_code for column in cur.description or ()]

    def write(self, messages: list[Message]) -> WriteResult:
        """Store every row and rejection of ``messages`` in one transaction and commit it.

        Raises whatever made the batch fail for any reason but the data of some of its messages
        (``is_record_error``): an outage. Nothing is committed then, and the same messages can
        be written again.
        """
        try:
            with self._conn.transaction():
                result = self._write(messages)
        except Exception as exc:
            if not is_record_error(exc):
                raise
            logger.warning(
                "batch of %d messages refused (%s); isolating the refused ones",
                len(messages),
                error_line(exc),
            )
            with self._conn.transaction():
                result = self._isolate(messages, exc)
        self._seen_written.update(result.seen_written)
        return result

    def _isolate(self, messages: list[Message], refusal: Exception) -> WriteResult:
        """Write ``messages`` that the database refused with ``refusal``, bisecting them.

        Each half is tried under a savepoint; a message refused on its own goes to the
        quarantine with the database's reason.
        """
        if len(messages) == 1:
            message = messages[0]
            decoded = message.decoded
            message.decoded = Decoded(
                rejections=[
                    *decoded.rejections,
                    Rejection(Reason.REJECTED_BY_DATABASE, str(refusal).strip())
                    if isinstance(refusal, psycopg.Error)
                    else Rejection(Reason.DECODE_FAILED, f"{type(refusal).__name__}: {refusal}"),
                ],
                device_type=decoded.device_type,
            )
            return self._write([message])
        result = WriteResult()
        middle = len(messages) // 2
        for half in (messages[:middle], messages[middle:]):
            try:
                with self._conn.transaction():
                    result.add(self._write(half))
            except Exception as exc:
                if not is_record_error(exc):
                    raise
                result.add(self._isolate(half, exc))
        return result

    def _write(self, messages: list[Message]) -> WriteResult:
        result = WriteResult()
        rows: dict[ReadingKind, list[tuple[Any, ...]]] = {}
        quarantine: list[tuple[Any, ...]] = []
        new_devices: dict[str, Registration] = {}
        clock = ClockSample()
        sent: dict[ReadingKind, Counter[str]] = {}  # messages per device, duplicates included
        outcomes = result.messages
        for message in messages:
            decoded = message.decoded
            if decoded.new_devices:
                new_devices.update(decoded.new_devices)
            for kind, row in decoded.rows:
                rows.setdefault(kind, []).append(row)
                clock.add(row[0], row[1], message.received_us)
            for kind, device_id in {(kind, row[0]) for kind, row in decoded.rows}:
                sent.setdefault(kind, Counter())[device_id] += 1
            if decoded.own:  # what cityops publishes itself: acknowledged, counted, not stored
                outcomes[decoded.device_type, "ignored"] += 1
                continue
            if not decoded.rejections:
                outcomes[decoded.device_type, "stored"] += 1
                continue
            outcomes[decoded.device_type, "partial" if decoded.rows else "quarantined"] += 1
            for rejection in decoded.rejections:
                quarantine.append(quarantine_row(message, rejection, self._raw_max_bytes))
                result.quarantined[rejection.reason] += 1
        if new_devices:
            self._conn.cursor().executemany(
                "insert into devices (device_id, type, gateway_id, auto_registered) "
                "values (%s, %s, %s, true) on conflict (device_id) do nothing",
                [(d, r.type, r.gateway_id) for d, r in new_devices.items()],
            )
        skews = clock.skews_s()
        for kind, kind_rows in rows.items():
            inserted = self._copy_rows(kind, kind_rows)
            result.inserted[kind.name] += inserted
            result.duplicates[kind.name] += len(kind_rows) - inserted
            self._record_batch(kind, kind_rows, skews, sent[kind], alarm=inserted > 0)
        if quarantine:
            target = sql.SQL("quarantine ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, _QUARANTINE))
            )
            self._copy(target, self._quarantine_types, quarantine)
        last_seen = clock.newest_us()
        if last_seen:
            result.newest_us = max(last_seen.values())
        # last_seen moves in steps of the resolution: one UPDATE per device and batch would
        # cost the database as much as the readings themselves.
        # In device-id order, so that workers updating the same devices lock them in the same
        # order: in batch order two workers deadlocked in 6 of 14 drains (bench/ingest.py
        # --workers 2), and in 104 of 300 transactions of a two-connection check; sorted, none.
        due = {
            device_id: last_seen[device_id]
            for device_id in sorted(last_seen)
            if last_seen[device_id] - self._seen_written.get(device_id, 0)
            >= self._seen_resolution_us
        }
        if due:
            self._conn.execute(
                "update devices d set last_seen = greatest(d.last_seen, v.seen) "
                "from (select unnest(%s::text[]) as device_id, "
                "timestamptz 'epoch' + unnest(%s::bigint[]) * interval '1 microsecond' as seen) v "
                "where d.device_id = v.device_id",
                (list(due), list(due.values())),
            )
            result.seen_written = due
        return result

    def _record_batch(
        self,
        kind: ReadingKind,
        rows: list[tuple[Any, ...]],
        skews: dict[str, float],
        sent: Counter[str],
        *,
        alarm: bool,
    ) -> None:
        """Tell the scenes which devices this batch touched, when, and how (the change feed).

        Per device: its clock skew (``ClockSample``) and the messages it sent, duplicates
        included (device health judges clock skew and flooding from them, so a batch of
        duplicates only is recorded too; a backlog sent as one array is one message). When
        ``alarm`` and the batch stored a reading with an ``event``, it also wakes them: a NOTIFY
        on ``SCENES_CHANNEL``, which PostgreSQL delivers at the commit.
        """
        stamps = [row[1] for row in rows]
        devices = sorted(sent)
        self._conn.execute(
            "insert into reading_batches (readings, device_ids, min_ts, max_ts, skews_s, counts) "
            "values (%s, %s, timestamptz 'epoch' + %s * interval '1 microsecond', "
            "timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s)",
            (
                kind.table,
                devices,
                min(stamps),
                max(stamps),
                [skews.get(d) for d in devices],
                [sent[d] for d in devices],
            ),
        )
        if alarm and "event" in kind.columns:
            event = kind.columns.index("event")
            if any(row[event] is not None for row in rows):
                self._conn.execute("select pg_notify(%s, %s)", (SCENES_CHANNEL, kind.table))

    def _copy_rows(self, kind: ReadingKind, rows: list[tuple[Any, ...]]) -> int:
        """COPY straight into the table; if a row is already there, go through the stage.

        Columns are always named: a column added to a table later does not change what is
        written, and a column gone is an error about the schema (an outage), not about a row.
        """
        columns = sql.SQL(", ").join(map(sql.Identifier, kind.columns))
        table = sql.Identifier(kind.table)
        stage = sql.Identifier(f"stage_{kind.table}")
        try:
            with self._conn.transaction():
                self._copy(sql.SQL("{} ({})").format(table, columns), self._types[kind.table], rows)
        except psycopg.errors.UniqueViolation:
            pass  # a redelivery or replay: skip what is stored, keep the rest
        else:
            return len(rows)
        self._copy(sql.SQL("{} ({})").format(stage, columns), self._types[kind.table], rows)
        cur = self._conn.execute(
            sql.SQL("insert into {} ({}) select {} from {} on conflict do nothing").format(
                table, columns, columns, stage
            )
        )
        inserted = cur.rowcount
        self._conn.execute(sql.SQL("truncate {}").format(stage))
        return inserted

    def _copy(self, target: sql.Composable, types: list[int], rows: list[tuple[Any, ...]]) -> None:
        with self._conn.cursor().copy(
            sql.SQL("copy {} from stdin (format binary)").format(target)
        ) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL stores it: valid UTF-8 without NUL (both escaped, not dropped)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def quarantine_row(message: Message, rejection: Rejection, raw_max_bytes: int) -> tuple[Any, ...]:
    """The quarantine table row of one rejection: topic and detail made storable, raw bytes."""
    return (
        message.received_us,
        storable_text(message.topic),
        rejection.reason.value,
        storable_text(rejection.detail),
        bytes(message.payload[:raw_max_bytes]),
        len(message.payload),
    )
