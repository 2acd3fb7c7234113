"""The batch writer: decoded messages into the readings tables and the quarantine, in one commit.

Rows go through binary COPY into a per-connection staging table, then ``insert ... on conflict
do nothing`` into the real table, so a redelivered or replayed reading never makes a second row
(the natural key is (device_id, ts)). If the database refuses a batch for its data (not for being
unreachable), the batch is written again message by message under savepoints and each refused
message goes to the quarantine with the database's reason, so one bad row cannot jam ingest.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from ingest.contract import READING_KINDS, ReadingKind
from ingest.decode import Decoded, Reason, Rejection

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Message:
    """One received MQTT message, decoded, waiting for its commit and acknowledgement."""

    mid: int
    generation: int
    topic: str
    payload: bytes
    received_us: int
    decoded: Decoded


@dataclass(slots=True)
class WriteResult:
    """What one committed batch did, for metrics and tests."""

    inserted: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    newest_us: int = 0

    def add(self, other: WriteResult) -> None:
        """Fold another result into this one."""
        self.inserted.update(other.inserted)
        self.duplicates.update(other.duplicates)
        self.quarantined.update(other.quarantined)
        self.newest_us = max(self.newest_us, other.newest_us)


def from_epoch_us(us: int) -> datetime:
    """An aware UTC datetime from epoch microseconds."""
    return _EPOCH + timedelta(microseconds=us)


def load_device_types(conn: psycopg.Connection) -> dict[str, str]:
    """Every registered device and its type."""
    return dict(conn.execute("select device_id, type from devices").fetchall())


class BatchWriter:
    """Writes batches over one connection it owns; the caller handles reconnects."""

    def __init__(self, conn: psycopg.Connection, *, raw_max_bytes: int) -> None:
        self._conn = conn
        self._raw_max_bytes = raw_max_bytes
        self._stage_types: dict[str, list[int]] = {}
        for kind in READING_KINDS:
            stage = sql.Identifier(f"stage_{kind.table}")
            values = sql.SQL(", ").join(map(sql.Identifier, kind.value_fields))
            conn.execute(
                sql.SQL(
                    "create temp table if not exists {} as "
                    "select device_id, 0::bigint as ts_us, {} from {} with no data"
                ).format(stage, values, sql.Identifier(kind.table))
            )
            cur = conn.execute(sql.SQL("select * from {} limit 0").format(stage))
            self._stage_types[kind.table] = [col.type_code for col in cur.description or ()]
        cur = conn.execute("select received_at, topic, reason, detail, payload, payload_bytes "
                           "from quarantine limit 0")
        self._quarantine_types = [col.type_code for col in cur.description or ()]
        conn.commit()

    def write(self, messages: list[Message]) -> WriteResult:
        """Store every row and rejection of ``messages`` in one transaction and commit it.

        Raises psycopg.OperationalError when the database is unreachable; nothing is committed
        then and the same messages can be written again.
        """
        try:
            with self._conn.transaction():
                return self._write(messages)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            logger.warning("batch of %d messages refused (%s); writing one by one",
                           len(messages), exc)
        result = WriteResult()
        with self._conn.transaction():
            for message in messages:
                try:
                    with self._conn.transaction():
                        result.add(self._write([message]))
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    message.decoded = Decoded(
                        rejections=[Rejection(Reason.REJECTED_BY_DATABASE, str(exc).strip())],
                        device_type=message.decoded.device_type,
                    )
                    result.add(self._write([message]))
        return result

    def _write(self, messages: list[Message]) -> WriteResult:
        result = WriteResult()
        rows: dict[ReadingKind, list[tuple[Any, ...]]] = {}
        quarantine: list[tuple[Any, ...]] = []
        new_devices: dict[str, str] = {}
        last_seen: dict[str, int] = {}
        for message in messages:
            decoded = message.decoded
            new_devices.update(decoded.new_devices)
            for kind, row in decoded.rows:
                rows.setdefault(kind, []).append(row)
                device_id, ts_us = row[0], row[1]
                if ts_us > last_seen.get(device_id, 0):
                    last_seen[device_id] = ts_us
            for rejection in decoded.rejections:
                quarantine.append(self._quarantine_row(message, rejection))
                result.quarantined[rejection.reason] += 1
        if new_devices:
            self._conn.cursor().executemany(
                "insert into devices (device_id, type, auto_registered) values (%s, %s, true) "
                "on conflict (device_id) do nothing",
                list(new_devices.items()),
            )
        for kind, kind_rows in rows.items():
            inserted = self._copy_rows(kind, kind_rows)
            result.inserted[kind.name] += inserted
            result.duplicates[kind.name] += len(kind_rows) - inserted
        if quarantine:
            with self._conn.cursor().copy(
                "copy quarantine (received_at, topic, reason, detail, payload, payload_bytes) "
                "from stdin (format binary)"
            ) as copy:
                copy.set_types(self._quarantine_types)
                for record in quarantine:
                    copy.write_row(record)
        if last_seen:
            self._conn.execute(
                "update devices d set last_seen = greatest(d.last_seen, v.seen) "
                "from (select unnest(%s::text[]) as device_id, "
                "timestamptz 'epoch' + unnest(%s::bigint[]) * interval '1 microsecond' as seen) v "
                "where d.device_id = v.device_id",
                (list(last_seen), list(last_seen.values())),
            )
            result.newest_us = max(last_seen.values())
        return result

    def _copy_rows(self, kind: ReadingKind, rows: list[tuple[Any, ...]]) -> int:
        stage = sql.Identifier(f"stage_{kind.table}")
        columns = sql.SQL(", ").join(map(sql.Identifier, kind.value_fields))
        cur = self._conn.cursor()
        with cur.copy(
            sql.SQL("copy {} from stdin (format binary)").format(stage)
        ) as copy:
            copy.set_types(self._stage_types[kind.table])
            for row in rows:
                copy.write_row(row)
        cur.execute(
            sql.SQL(
                "insert into {table} (device_id, ts, {columns}) "
                "select device_id, timestamptz 'epoch' + ts_us * interval '1 microsecond', "
                "{columns} from {stage} on conflict do nothing"
            ).format(table=sql.Identifier(kind.table), columns=columns, stage=stage)
        )
        inserted = cur.rowcount
        cur.execute(sql.SQL("truncate {}").format(stage))
        return inserted

    def _quarantine_row(self, message: Message, rejection: Rejection) -> tuple[Any, ...]:
        return (
            from_epoch_us(message.received_us),
            message.topic,
            rejection.reason.value,
            rejection.detail,
            message.payload[: self._raw_max_bytes],
            len(message.payload),
        )
