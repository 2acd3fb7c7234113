"""The ingest worker: MQTT in, batched binary COPY out, acknowledgement only after commit.

Two processes. The receiver (``ingest.receiver``) holds the MQTT session and ships what arrives
over a pipe; here a reader thread appends it to the pending batch, and the calling thread decodes
and flushes a batch when it is full or ``flush_interval_s`` old, commits it, then sends the
batch's message ids back to the receiver to acknowledge. Nothing is acknowledged before its rows
or quarantine entries are committed, so a crash loses nothing: the broker redelivers what was not
acknowledged, and the (device_id, ts) key turns redeliveries into no-ops.

Backpressure is the broker's: under MQTT 5 ingest announces a Receive Maximum
(``IngestSettings.receive_window``, from ``buffer_max_messages`` and ``buffer_max_bytes``) and a
Maximum Packet Size, so the broker never has more than that window of messages unacknowledged
with it, and stops sending when the database stalls; under MQTT 3.1.1 the broker's own window
(Mosquitto's ``max_inflight_messages`` and ``max_inflight_bytes``) does the same. The receiver
never waits on the writer: it keeps answering keep-alives through a database outage of any
length, so the connection, and every pending acknowledgement with it, survives. While the
database is down the writer retries the same batch with backoff and acknowledges nothing.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import psycopg
from paho.mqtt.enums import MQTTProtocolVersion

from devices.changes import Registration
from ingest.decode import DecodeLimits, Decoder
from ingest.housekeeping import Housekeeping
from ingest.metrics import IngestMetrics
from ingest.receiver import (
    CLOSE,
    STOP,
    Connected,
    Disconnected,
    Failed,
    Received,
    ReceiverConfig,
    Refused,
    Stopped,
    Unreachable,
    now_us,
    run_receiver,
)
from ingest.registrations import Registrations
from ingest.settings import IngestSettings
from ingest.writer import BatchWriter, Message
from redaction import error_line, redact
from store.db import connect
from store.settings import DatabaseSettings
from wire.mqtt import MqttSettings, choose_protocol

logger = logging.getLogger(__name__)

#: How long the receiver gets to acknowledge what is left and disconnect at shutdown.
_RECEIVER_CLOSE_S = 10.0


class ReceiverFailedError(Exception):
    """The receiver process failed or ended on its own; ingest stops (and is restarted)."""


class IngestWorker:
    """Moves telemetry from the broker into the database until told to stop."""

    def __init__(
        self,
        *,
        database: DatabaseSettings,
        mqtt_settings: MqttSettings,
        ingest: IngestSettings,
        metrics: IngestMetrics,
    ) -> None:
        self._database = database
        self._mqtt = mqtt_settings
        self._ingest = ingest
        self._metrics = metrics
        # The reader thread appends what the receiver ships to _pending (deque appends and pops
        # are atomic); _cond signals "a batch is ready", "the receiver stopped" or "it failed".
        self._cond = threading.Condition()
        self._pending: deque[Received] = deque()
        self._pending_since = 0.0
        self._writing = 0
        self._receiver_stopped = False
        # Why the receiver ended, once it has (set by the reader thread).
        self._receiver_failure: str | None = None
        self._registrations = Registrations(rows_read=metrics.registry_rows_read)
        self._housekeeping = Housekeeping(
            database=database, ingest=ingest, registrations=self._registrations, metrics=metrics
        )
        self._decoder = Decoder(
            limits=DecodeLimits.of(ingest),
            registration_of=self._registration,
            topic_prefix=mqtt_settings.topic_prefix,
        )
        metrics.buffered.set_function(lambda: len(self._pending) + self._writing)
        self._conn: psycopg.Connection | None = None
        self._writer: BatchWriter | None = None
        self._outage_since: float | None = None  # monotonic start of a database outage
        #: Set once the receiver has connected and subscribed (the demo's fleet waits for it:
        #: without a persistent session, what is published before is not ingest's).
        self.subscribed = threading.Event()

    def _registration(self, device_id: str) -> Registration | None:
        # Housekeeping updates the map on its own thread, in place (see Registrations).
        return self._registrations.get(device_id)

    def run(self, stop: threading.Event) -> None:
        """Ingest until ``stop`` is set, then flush, commit, acknowledge and disconnect.

        Raises ``BrokerUnavailableError`` when the broker cannot be reached to choose the
        protocol, and ``ReceiverFailedError`` when the receiver process fails.
        """
        self._metrics.database_up.set(0)
        self._ensure_writer(stop)
        protocol, chosen = choose_protocol(self._mqtt)
        is_v5 = protocol == MQTTProtocolVersion.MQTTv5
        self._metrics.mqtt_protocol.labels("5" if is_v5 else "3.1.1", chosen).set(1)
        config = ReceiverConfig(
            mqtt=self._mqtt,
            protocol=protocol,
            receive_window=self._ingest.receive_window,
            max_packet_bytes=self._ingest.max_packet_bytes,
            retry_max_s=self._ingest.retry_max_s,
        )
        # spawn, not fork: this process has threads (housekeeping, the metrics server).
        context = multiprocessing.get_context("spawn")
        pipe, receiver_end = context.Pipe(duplex=True)
        receiver = context.Process(
            target=run_receiver, args=(config, receiver_end), name="ingest-receiver", daemon=True
        )
        # The child inherits the blocked signals (a Ctrl-C during its start-up must not reach
        # it) until it ignores them itself.
        signals = {signal.SIGINT, signal.SIGTERM}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            receiver.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        receiver_end.close()
        reader = threading.Thread(
            target=self._read, args=(pipe,), name="ingest-receiver-reader", daemon=True
        )
        failure = None
        try:
            reader.start()
            self._housekeeping.start()
            self._write_until_stopped(pipe, stop)
        finally:
            self._housekeeping.close()
            failure = self._close_receiver(pipe, receiver)
            reader.join(_RECEIVER_CLOSE_S)
            if self._conn is not None:
                self._conn.close()
            logger.info("ingest stopped")
        if failure is not None:
            msg = (
                f"{failure}; ingest stopped: start it again (a service manager does), the "
                "broker redelivers what was not acknowledged"
            )
            raise ReceiverFailedError(msg)

    def _write_until_stopped(self, pipe: Connection, stop: threading.Event) -> None:
        stopping = False
        while True:
            if stop.is_set() and not stopping:
                stopping = True
                self._tell_receiver(pipe, STOP)
            batch = self._next_batch(stop, stopping=stopping)
            if self._receiver_failure is not None:
                return
            committed = not batch or self._commit_and_ack(batch, pipe, stop)
            if stopping and (not committed or (self._receiver_stopped and not self._pending)):
                return  # drained, or the database is down: the broker keeps the rest

    @staticmethod
    def _tell_receiver(pipe: Connection, command: object) -> None:
        with contextlib.suppress(OSError):  # it has ended: the reader thread reports why
            pipe.send(command)

    def _close_receiver(self, pipe: Connection, receiver: BaseProcess) -> str | None:
        """Have the receiver disconnect (ending it if it hangs); return why it failed, if it did.

        It failed if it ended before it was told to close, or ended badly after.
        """
        failure = self._receiver_failure
        with contextlib.suppress(OSError):  # it has already ended
            pipe.send(CLOSE)
        receiver.join(_RECEIVER_CLOSE_S)
        if receiver.exitcode is None:
            logger.warning("the MQTT receiver did not stop within %.0f s", _RECEIVER_CLOSE_S)
            receiver.kill()
            receiver.join()
        elif failure is None and receiver.exitcode != 0:
            failure = f"the MQTT receiver process ended with exit code {receiver.exitcode}"
        pipe.close()
        return failure

    # -- reader thread ----------------------------------------------------------------------

    def _read(self, pipe: Connection) -> None:
        """Take what the receiver ships until it ends."""
        pending = self._pending
        batch_max = self._ingest.batch_max_rows
        while True:
            try:
                item = pipe.recv()
            except (EOFError, OSError):
                item = Failed("the MQTT receiver process ended unexpectedly")
            except Exception as exc:  # what it ships cannot be read: nothing more can be
                item = Failed(f"cannot read what the MQTT receiver sends: {error_line(exc)}")
            if not isinstance(item, list):
                if self._on_event(item):
                    return
                continue
            was_empty = not pending
            if was_empty:
                self._pending_since = time.monotonic()
            pending.extend(item)
            if was_empty or len(pending) >= batch_max:
                with self._cond:
                    self._cond.notify_all()

    def _on_event(self, event: object) -> bool:
        """Count and log what the receiver reports; return whether it has ended."""
        if isinstance(event, Connected):
            self.subscribed.set()
            self._metrics.mqtt_connected.set(1)
            self._metrics.mqtt_connections.inc()
            logger.info(
                "connected to %s (session present: %s), subscribed to %s",
                redact(self._mqtt.url),
                event.session_present,
                ", ".join(event.topics),
            )
        elif isinstance(event, Disconnected):
            self._metrics.mqtt_connected.set(0)
            if event.reason is not None:
                logger.warning("disconnected from the broker (%s); reconnecting", event.reason)
        elif isinstance(event, Refused):
            logger.error("broker refused the connection: %s", event.reason)
        elif isinstance(event, Stopped):
            with self._cond:
                self._receiver_stopped = True
                self._cond.notify_all()
        elif isinstance(event, Unreachable):
            logger.warning(
                "cannot reach the MQTT broker at %s (%s); retrying with backoff",
                redact(self._mqtt.url),
                event.reason,
            )
        elif isinstance(event, Failed):
            self._metrics.mqtt_connected.set(0)
            with self._cond:
                self._receiver_failure = event.error
                self._cond.notify_all()
            return True
        return False

    # -- writer thread ----------------------------------------------------------------------

    def _next_batch(self, stop: threading.Event, *, stopping: bool) -> list[Message]:
        """The next batch, decoded: full, due, or what is left once stopping (may be empty)."""
        interval = self._ingest.flush_interval_s
        batch_max = self._ingest.batch_max_rows
        with self._cond:
            while self._receiver_failure is None:
                if stop.is_set():
                    if not stopping or self._receiver_stopped:
                        break  # to tell the receiver to stop; or all it took is here
                elif len(self._pending) >= batch_max:
                    break
                if self._pending:
                    wait_s = self._pending_since + interval - time.monotonic()
                    if wait_s <= 0:
                        break
                else:
                    wait_s = interval
                self._cond.wait(min(wait_s, interval))
        if self._receiver_failure is not None:
            return []  # nothing could be acknowledged: the broker redelivers it all
        decode = self._decoder.decode_message
        batch = [
            Message(
                mid, generation, topic, payload, received_us, decode(topic, payload, received_us)
            )
            for mid, generation, topic, payload, received_us in (
                self._pending.popleft() for _ in range(min(len(self._pending), batch_max))
            )
        ]
        if self._pending:
            self._pending_since = time.monotonic()
        self._writing = len(batch)
        return batch

    def _commit_and_ack(
        self, batch: list[Message], pipe: Connection, stop: threading.Event
    ) -> bool:
        """Write until committed (then acknowledge) or until stopped; return if committed.

        Any error the writer raises is an outage (it has already isolated refused records): the
        same batch is retried with backoff and nothing is acknowledged meanwhile.
        """
        delay_s = 0.5
        committed = False
        while True:
            started = time.perf_counter()
            try:
                writer = self._ensure_writer(stop)
                if writer is None:
                    break
                result = writer.write(batch)
            except Exception as exc:  # any failure to write is retried, never fatal
                self._database_failed(exc)
                if stop.is_set() or self._receiver_failure is not None:
                    logger.warning(
                        "database unavailable as ingest stops; %d messages stay unacknowledged "
                        "and will be redelivered",
                        len(batch),
                    )
                    break
                self._back_off(stop, delay_s)
                delay_s = min(delay_s * 2, self._ingest.retry_max_s)
                continue
            self._database_recovered()
            self._metrics.record_commit(len(batch), result, time.perf_counter() - started, now_us())
            self._tell_receiver(pipe, [(m.generation, m.mid) for m in batch if m.mid])
            committed = True
            break
        self._writing = 0
        return committed

    def _back_off(self, stop: threading.Event, delay_s: float) -> None:
        """Wait before the next attempt; stop, or the receiver ending, cuts it short (0.1 s)."""
        deadline = time.monotonic() + delay_s
        while not stop.is_set() and self._receiver_failure is None:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return
            stop.wait(min(left_s, 0.1))

    def _database_failed(self, exc: Exception) -> None:
        """Count a failed attempt, drop the connection, log once when an outage starts."""
        self._drop_connection()
        if isinstance(exc, psycopg.OperationalError):
            kind = "unreachable"
        elif isinstance(exc, psycopg.Error):
            kind = "refused"
        else:  # not the database's: a fault in ingest itself, retried all the same
            kind = "failed"
        self._metrics.database_errors.labels(kind).inc()
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "database outage (%s): %s; retrying with backoff up to %.1f s, acknowledging "
                "nothing until it ends",
                kind,
                error_line(exc),
                self._ingest.retry_max_s,
            )

    def _database_recovered(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "database outage over after %.1f s", time.monotonic() - self._outage_since
            )
            self._outage_since = None

    def _ensure_writer(self, stop: threading.Event) -> BatchWriter | None:
        """Connect (retrying with backoff until ``stop``) and return the batch writer."""
        delay_s = 0.5
        while self._writer is None:
            try:
                self._conn = connect(self._database)
                self._writer = BatchWriter(
                    self._conn,
                    raw_max_bytes=self._ingest.max_payload_bytes,
                    last_seen_resolution_s=self._ingest.last_seen_resolution_s,
                )
                self._registrations.load(self._conn)
                self._conn.commit()
                self._metrics.database_up.set(1)
                logger.info("database connected, %d devices registered", len(self._registrations))
            except Exception as exc:  # any failure to write is retried, never fatal
                self._database_failed(exc)
                if stop.is_set() or self._receiver_failure is not None:
                    return None
                self._back_off(stop, delay_s)
                delay_s = min(delay_s * 2, self._ingest.retry_max_s)
        return self._writer

    def _drop_connection(self) -> None:
        self._metrics.database_up.set(0)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._writer = None
