"""The ingest worker: MQTT in, batched binary COPY out, acknowledgement only after commit.

Two threads. paho's network thread decodes each message and appends it to the current batch;
the calling thread flushes a batch when it is full or ``flush_interval_s`` old, commits it, then
acknowledges its messages (``manual_ack``). Nothing is acknowledged before its rows or quarantine
entries are committed, so a crash loses nothing: the broker redelivers what was not acknowledged,
and the (device_id, ts) key turns redeliveries into no-ops.

Backpressure: messages received and not yet acknowledged are bounded by ``buffer_max_messages``.
Under MQTT 5 that is also the Receive Maximum announced to the broker, which stops sending when the
window is full; under MQTT 3.1.1 the network thread stops reading once the buffer is full. While
the database is down the writer retries the same batch with backoff and acknowledges nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cityops.db import StoragePath, connect, delete_expired_readings, storage_path
from cityops.settings import DatabaseSettings, IngestSettings, MqttSettings
from ingest.decode import TOPIC_FILTER, DecodeLimits, Decoder
from ingest.metrics import IngestMetrics
from ingest.writer import BatchWriter, Message, WriteResult, load_device_types

logger = logging.getLogger(__name__)

_RETENTION_EVERY_S = 3600.0


def now_us() -> int:
    """Wall-clock time in epoch microseconds."""
    return time.time_ns() // 1000


class BrokerUnavailableError(Exception):
    """The broker could not be reached within the connect timeout."""


def choose_protocol(settings: MqttSettings) -> mqtt.MQTTProtocolVersion:
    """MQTT 5 unless configured otherwise or the broker refuses it (then 3.1.1)."""
    if settings.protocol == "5":
        return mqtt.MQTTProtocolVersion.MQTTv5
    if settings.protocol == "3.1.1":
        return mqtt.MQTTProtocolVersion.MQTTv311
    outcome: list[bool] = []
    answered = threading.Event()

    def on_connect(*args: Any) -> None:
        outcome.append(not args[3].is_failure)
        answered.set()

    probe = _client(settings, mqtt.MQTTProtocolVersion.MQTTv5, f"{settings.client_id}-probe")
    probe.on_connect = on_connect
    probe.on_disconnect = lambda *_: answered.set()
    try:
        probe.connect(settings.host, settings.port, settings.keepalive_s, clean_start=True)
    except OSError as exc:
        msg = f"cannot reach the MQTT broker at {settings.url}: {exc}"
        raise BrokerUnavailableError(msg) from exc
    probe.loop_start()
    answered.wait(settings.connect_timeout_s)
    probe.disconnect()
    probe.loop_stop()
    speaks_5 = bool(outcome) and outcome[0]
    logger.info("broker %s speaks MQTT %s", settings.url, "5" if speaks_5 else "3.1.1")
    return mqtt.MQTTProtocolVersion.MQTTv5 if speaks_5 else mqtt.MQTTProtocolVersion.MQTTv311


def _client(settings: MqttSettings, protocol: mqtt.MQTTProtocolVersion, client_id: str) -> mqtt.Client:
    is_v5 = protocol == mqtt.MQTTProtocolVersion.MQTTv5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if is_v5 else False,
        manual_ack=True,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.is_tls:
        client.tls_set()
    # A bug in a callback must not kill the network thread: paho logs it and carries on, and the
    # message it was handling stays unacknowledged, so the broker delivers it again.
    client.suppress_exceptions = True
    client.enable_logger(logging.getLogger("paho"))
    return client


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
        self._cond = threading.Condition()
        self._current: list[Message] = []
        self._current_since = 0.0
        self._writing = 0
        self._generation = 0
        self._accepting = True
        self._device_types: dict[str, str] = {}
        self._decoder = Decoder(
            limits=DecodeLimits(
                max_payload_bytes=ingest.max_payload_bytes,
                max_future_us=int(ingest.max_future_s * 1e6),
                auto_register=ingest.auto_register,
            ),
            device_type_of=lambda device_id: self._device_types.get(device_id),
        )
        self._conn: psycopg.Connection | None = None
        self._writer: BatchWriter | None = None
        self._client: mqtt.Client | None = None
        self._is_v5 = False
        self.totals = WriteResult()

    # -- network thread ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            logger.error("broker refused the connection: %s", rc)
            return
        self._metrics.mqtt_connected.set(1)
        if self._is_v5 and self._mqtt.shared_group:
            topic = f"$share/{self._mqtt.shared_group}/{TOPIC_FILTER}"
        else:
            topic = TOPIC_FILTER
        if self._is_v5:
            client.subscribe(topic, options=SubscribeOptions(qos=1))
        else:
            client.subscribe(topic, qos=1)
        logger.info("connected to %s (session present: %s), subscribed to %s",
                    self._mqtt.url, flags.session_present, topic)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._metrics.mqtt_connected.set(0)
        with self._cond:
            # Message ids belong to a connection: never acknowledge an old one on a new one.
            self._generation += 1
        if rc.is_failure:
            logger.warning("disconnected from the broker (%s); reconnecting", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received_us = now_us()
        decoded = self._decoder.decode_message(msg.topic, msg.payload, received_us)
        with self._cond:
            limit = self._ingest.buffer_max_messages
            while self._accepting and len(self._current) + self._writing >= limit:
                self._cond.wait()
            if not self._accepting:
                return  # not acknowledged: the broker hands it to the next session
            if not self._current:
                self._current_since = time.monotonic()
            self._current.append(
                Message(msg.mid, self._generation, msg.topic, msg.payload, received_us, decoded)
            )
            if len(self._current) == self._ingest.batch_max_rows:
                self._cond.notify_all()

    # -- writer thread ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Ingest until ``stop`` is set, then flush, commit, acknowledge and disconnect."""
        self._metrics.database_up.set(0)
        self._ensure_writer(stop)
        protocol = choose_protocol(self._mqtt)
        self._is_v5 = protocol == mqtt.MQTTProtocolVersion.MQTTv5
        client = _client(self._mqtt, protocol, self._mqtt.client_id)
        self._client = client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=int(self._ingest.retry_max_s) + 1)
        properties = None
        if self._is_v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._mqtt.session_expiry_s
            properties.ReceiveMaximum = self._ingest.buffer_max_messages
        client.connect_async(
            self._mqtt.host,
            self._mqtt.port,
            self._mqtt.keepalive_s,
            clean_start=False if self._is_v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        client.loop_start()
        next_housekeeping = 0.0
        last_retention = time.monotonic()
        try:
            while True:
                batch = self._next_batch(stop)
                if batch:
                    self._commit_and_ack(batch, stop)
                if stop.is_set() and not self._current:
                    break
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + self._ingest.registry_refresh_s
                    if time.monotonic() - last_retention >= _RETENTION_EVERY_S:
                        last_retention = time.monotonic()
                        self._housekeep(retention=True)
                    else:
                        self._housekeep(retention=False)
        finally:
            client.disconnect()
            client.loop_stop()
            if self._conn is not None:
                self._conn.close()
            logger.info("ingest stopped")

    def _next_batch(self, stop: threading.Event) -> list[Message]:
        interval = self._ingest.flush_interval_s
        with self._cond:
            while not stop.is_set():
                if len(self._current) >= self._ingest.batch_max_rows:
                    break
                if self._current:
                    wait_s = self._current_since + interval - time.monotonic()
                    if wait_s <= 0:
                        break
                else:
                    wait_s = interval
                self._cond.wait(min(wait_s, interval))
            if stop.is_set():
                self._accepting = False
                self._cond.notify_all()
            batch = self._current[: self._ingest.batch_max_rows]
            del self._current[: len(batch)]
            if self._current:
                self._current_since = time.monotonic()
            self._writing = len(batch)
            self._metrics.buffered.set(len(self._current) + self._writing)
            return batch

    def _commit_and_ack(self, batch: list[Message], stop: threading.Event) -> None:
        delay_s = 0.5
        while True:
            started = time.perf_counter()
            try:
                writer = self._ensure_writer(stop)
                if writer is None:
                    break
                result = writer.write(batch)
            except psycopg.OperationalError as exc:
                self._drop_connection()
                self._metrics.database_errors.inc()
                if stop.is_set():
                    logger.warning("database down at shutdown; %d messages stay unacknowledged "
                                   "and will be redelivered: %s", len(batch), exc)
                    break
                logger.warning("database write failed, retrying in %.1f s: %s", delay_s, exc)
                stop.wait(delay_s)
                delay_s = min(delay_s * 2, self._ingest.retry_max_s)
                continue
            self._metrics.record_commit(batch, result, time.perf_counter() - started, now_us())
            self.totals.add(result)
            self._acknowledge(batch)
            break
        with self._cond:
            self._writing = 0
            self._cond.notify_all()

    def _acknowledge(self, batch: list[Message]) -> None:
        client = self._client
        assert client is not None
        with self._cond:
            generation = self._generation
        for message in batch:
            if message.mid and message.generation == generation:
                client.ack(message.mid, 1)

    def _ensure_writer(self, stop: threading.Event) -> BatchWriter | None:
        """Connect (retrying with backoff until ``stop``) and return the batch writer."""
        delay_s = 0.5
        while self._writer is None:
            try:
                self._conn = connect(self._database)
                self._writer = BatchWriter(
                    self._conn, raw_max_bytes=self._ingest.quarantine_raw_max_bytes
                )
                self._device_types = load_device_types(self._conn)
                self._conn.commit()
                self._metrics.database_up.set(1)
                logger.info("database connected, %d devices registered", len(self._device_types))
            except psycopg.OperationalError as exc:
                self._drop_connection()
                if stop.is_set():
                    return None
                logger.warning("database unavailable, retrying in %.1f s: %s", delay_s, exc)
                stop.wait(delay_s)
                delay_s = min(delay_s * 2, self._ingest.retry_max_s)
        return self._writer

    def _drop_connection(self) -> None:
        self._metrics.database_up.set(0)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._writer = None

    def _housekeep(self, *, retention: bool) -> None:
        """Re-read the device registry; on the plain path, delete expired readings."""
        conn = self._conn
        if conn is None:
            return
        try:
            self._device_types = load_device_types(conn)
            if retention and storage_path(conn) is StoragePath.POSTGRESQL:
                deleted = delete_expired_readings(conn, self._database.retention_days)
                logger.info("retention: deleted %d readings older than %d days",
                            deleted, self._database.retention_days)
            conn.commit()
        except psycopg.OperationalError as exc:
            logger.warning("housekeeping skipped, database unavailable: %s", exc)
            self._drop_connection()
