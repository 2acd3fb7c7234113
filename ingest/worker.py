"""The ingest worker: MQTT in, batched binary COPY out, acknowledgement only after commit.

Two threads. paho's network thread appends each message to the pending batch; the calling
thread decodes and flushes a batch when it is full or ``flush_interval_s`` old, commits it, then
queues its acknowledgements (``manual_ack``), which the network thread sends while messages
flow and the writer sends itself when they do not. Nothing is acknowledged before its rows or
quarantine entries are committed, so a crash loses nothing: the broker redelivers what was not
acknowledged, and the (device_id, ts) key turns redeliveries into no-ops.

Backpressure is the broker's: under MQTT 5 ingest announces a Receive Maximum
(``IngestSettings.receive_window``, from ``buffer_max_messages`` and ``buffer_max_bytes``) and a
Maximum Packet Size, so the broker never has more than that window of messages unacknowledged
with it, and stops sending when the database stalls; under MQTT 3.1.1 the broker's own window
(Mosquitto's ``max_inflight_messages`` and ``max_inflight_bytes``) does the same. The network thread
never waits: it keeps answering keep-alives through a database outage of any length, so the
connection, and every pending acknowledgement with it, survives. While the database is down the
writer retries the same batch with backoff and acknowledges nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cityops.db import connect
from cityops.redact import error_line, redact
from cityops.settings import DatabaseSettings, IngestSettings, MqttSettings
from ingest.decode import DecodeLimits, Decoder, Payload
from ingest.device_types import DeviceTypes
from ingest.housekeeping import Housekeeping
from ingest.metrics import IngestMetrics
from ingest.writer import BatchWriter, Message
from wire.topics import prefixed

logger = logging.getLogger(__name__)


#: What the network thread keeps of a message: mid, connection generation, topic, payload,
#: receive time (epoch microseconds).
_Received = tuple[int, int, str, Payload, int]


def now_us() -> int:
    """Wall-clock time in epoch microseconds."""
    return time.time_ns() // 1000


class BrokerUnavailableError(Exception):
    """The broker could not be reached within the connect timeout."""


#: CONNACK reason codes that mean "not this protocol version": 3.1.1's return code 1
#: (unacceptable protocol version) and MQTT 5's 0x84 (unsupported protocol version).
_PROTOCOL_REFUSED = frozenset({1, 0x84})


def choose_protocol(settings: MqttSettings) -> tuple[MQTTProtocolVersion, str]:
    """The MQTT version to use, and how it was chosen (configured, negotiated, fallback).

    Under "auto", MQTT 3.1.1 is taken only when the broker explicitly refuses MQTT 5 (a CONNACK
    saying so, or closing the connection in answer to the CONNECT). A broker that does not answer
    in time is unavailable, not old: falling back then would silently lose the receive window and
    the shared subscription.
    """
    if settings.protocol == "5":
        return MQTTProtocolVersion.MQTTv5, "configured"
    if settings.protocol == "3.1.1":
        return MQTTProtocolVersion.MQTTv311, "configured"
    answer: list[ReasonCode | None] = []  # None: the broker closed the connection
    answered = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        answer.append(rc)
        answered.set()

    def on_disconnect(*_: Any) -> None:
        if not answered.is_set():
            answer.append(None)
            answered.set()

    probe = _client(settings, MQTTProtocolVersion.MQTTv5, f"{settings.client_id}-probe")
    probe.on_connect = on_connect
    probe.on_disconnect = on_disconnect
    url = redact(settings.url)
    try:
        probe.connect(settings.host, settings.port, settings.keepalive_s, clean_start=True)
    except OSError as exc:
        msg = f"cannot reach the MQTT broker at {url}: {exc}"
        raise BrokerUnavailableError(msg) from exc
    probe.loop_start()
    try:
        if not answered.wait(settings.connect_timeout_s):
            msg = (
                f"the MQTT broker at {url} did not answer within {settings.connect_timeout_s:g} s "
                "(mqtt.connect_timeout_s); check the broker, or set mqtt.protocol"
            )
            raise BrokerUnavailableError(msg)
    finally:
        probe.disconnect()
        probe.loop_stop()
    rc = answer[0]
    if rc is not None and not rc.is_failure:
        logger.info("broker %s speaks MQTT 5", url)
        return MQTTProtocolVersion.MQTTv5, "negotiated"
    if rc is None or rc.value in _PROTOCOL_REFUSED:
        logger.warning(
            "the MQTT broker at %s refused MQTT 5 (%s): using MQTT 3.1.1, so ingest cannot "
            "announce its receive window (the broker's own window bounds its memory) and "
            "subscribes without a shared group (run one ingest process only)",
            url,
            "connection closed" if rc is None else rc,
        )
        return MQTTProtocolVersion.MQTTv311, "fallback"
    msg = f"the MQTT broker at {url} refused the connection: {rc}"
    raise BrokerUnavailableError(msg)


def subscriptions(settings: MqttSettings, *, is_shareable: bool) -> list[str]:
    """What ingest subscribes to: each of its topic filters under its prefix, shared if it can be.

    Unshared by default: Mosquitto restores a session's plain subscriptions from its store after a
    restart but not its shared ones (docs/operations.md, "Broker restarts").
    """
    share = f"$share/{settings.shared_group}/" if settings.shared_group and is_shareable else ""
    return [share + prefixed(settings.topic_prefix, topics) for topics in settings.topic_filters]


def _client(settings: MqttSettings, protocol: MQTTProtocolVersion, client_id: str) -> mqtt.Client:
    is_v5 = protocol == MQTTProtocolVersion.MQTTv5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if is_v5 else not settings.is_persistent_session,
        manual_ack=True,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.is_tls:
        client.tls_set()
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
        # The network thread only appends what it received to _pending, without a lock (deque
        # appends and pops are atomic); the writer decodes whole batches, which costs less CPU
        # than decoding between paho's per-packet work. _cond only signals "a batch is ready".
        self._cond = threading.Condition()
        self._pending: deque[_Received] = deque()
        self._pending_since = 0.0
        self._writing = 0
        # Committed (generation, mid) pairs waiting for their PUBACK. The network thread sends
        # them while messages flow (an ack from another thread costs a GIL hand-over each);
        # the writer sends them itself when the network is idle.
        self._acks: deque[tuple[int, int]] = deque()
        self._generation = 0
        self._accepting = True
        self._device_types = DeviceTypes(rows_read=metrics.registry_rows_read)
        self._housekeeping = Housekeeping(
            database=database, ingest=ingest, device_types=self._device_types, metrics=metrics
        )
        self._decoder = Decoder(
            limits=DecodeLimits.of(ingest),
            device_type_of=self._registered_type,
            topic_prefix=mqtt_settings.topic_prefix,
        )
        metrics.buffered.set_function(lambda: len(self._pending) + self._writing)
        self._conn: psycopg.Connection | None = None
        self._writer: BatchWriter | None = None
        self._client: mqtt.Client | None = None
        self._is_v5 = False
        self._outage_since: float | None = None  # monotonic start of a database outage

    def _registered_type(self, device_id: str) -> str | None:
        # Housekeeping updates the map on its own thread, in place (see DeviceTypes).
        return self._device_types.get(device_id)

    # -- network thread ---------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any
    ) -> None:
        if rc.is_failure:
            logger.error("broker refused the connection: %s", rc)
            return
        self._metrics.mqtt_connected.set(1)
        self._metrics.mqtt_connections.inc()
        # Shared subscriptions are MQTT 5, but Mosquitto and EMQX serve them to 3.1.1 clients
        # too; a broker that refused MQTT 5 under "auto" (amqtt) gets a plain subscription.
        shareable = self._is_v5 or self._mqtt.protocol == "3.1.1"
        topics = subscriptions(self._mqtt, is_shareable=shareable)
        if self._is_v5:
            client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in topics])
        else:
            client.subscribe([(topic, 1) for topic in topics])
        logger.info(
            "connected to %s (session present: %s), subscribed to %s",
            redact(self._mqtt.url),
            flags.session_present,
            ", ".join(topics),
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._metrics.mqtt_connected.set(0)
        # Message ids belong to a connection: never acknowledge an old one on a new one.
        self._generation += 1
        if rc.is_failure:
            logger.warning("disconnected from the broker (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Never waits (see the module docstring): the broker's window bounds what arrives.
        if self._acks:
            self._send_acks(client)
        if not self._accepting:
            return  # not acknowledged: the broker hands it to the next session
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a broker that does not validate topics; bad_topic later
            # paho keeps the topic bytes in _topic and offers no public accessor for them.
            topic = msg._topic.decode("utf-8", "backslashreplace")
        received = (msg.mid, self._generation, topic, msg.payload, now_us())
        was_empty = not self._pending
        if was_empty:
            self._pending_since = time.monotonic()
        self._pending.append(received)
        if was_empty or len(self._pending) == self._ingest.batch_max_rows:
            with self._cond:
                self._cond.notify_all()

    # -- writer thread ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Ingest until ``stop`` is set, then flush, commit, acknowledge and disconnect."""
        self._metrics.database_up.set(0)
        self._ensure_writer(stop)
        protocol, chosen = choose_protocol(self._mqtt)
        self._is_v5 = protocol == MQTTProtocolVersion.MQTTv5
        self._metrics.mqtt_protocol.labels("5" if self._is_v5 else "3.1.1", chosen).set(1)
        client = _client(self._mqtt, protocol, self._mqtt.client_id)
        self._client = client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=int(self._ingest.retry_max_s) + 1)
        properties = None
        if self._is_v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self._mqtt.session_expiry_s
            properties.ReceiveMaximum = self._ingest.receive_window
            properties.MaximumPacketSize = self._ingest.max_packet_bytes
        client.connect_async(
            self._mqtt.host,
            self._mqtt.port,
            self._mqtt.keepalive_s,
            clean_start=(
                not self._mqtt.is_persistent_session
                if self._is_v5
                else mqtt.MQTT_CLEAN_START_FIRST_ONLY
            ),
            properties=properties,
        )
        client.loop_start()
        self._housekeeping.start()
        try:
            while True:
                batch = self._next_batch(stop)
                committed = not batch or self._commit_and_ack(batch, stop)
                if stop.is_set() and (not self._pending or not committed):
                    break  # drained, or the database is down: the broker keeps the rest
        finally:
            self._housekeeping.close()
            self._send_acks(client)
            client.disconnect()
            client.loop_stop()
            if self._conn is not None:
                self._conn.close()
            logger.info("ingest stopped")

    def _next_batch(self, stop: threading.Event) -> list[Message]:
        interval = self._ingest.flush_interval_s
        batch_max = self._ingest.batch_max_rows
        window = self._ingest.receive_window
        with self._cond:
            while not stop.is_set():
                if len(self._pending) >= batch_max:
                    break
                if self._pending:
                    wait_s = self._pending_since + interval - time.monotonic()
                    if wait_s <= 0:
                        break
                else:
                    wait_s = interval
                # The network thread acks while messages flow. When nothing arrives, or the
                # broker has stopped sending because its window is all unacknowledged (then
                # nothing will arrive until these acks go), ack from here. Waiting for the
                # flush timer instead stalled a drain at every batch once the window was under
                # two batches (7,710 by default): 17.8k against 21.6k msgs/s with 20,000.
                if (
                    self._acks
                    and self._client is not None
                    and (not self._pending or len(self._pending) + len(self._acks) >= window)
                ):
                    self._send_acks(self._client)
                self._cond.wait(min(wait_s, interval))
            if stop.is_set():
                self._accepting = False
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

    def _commit_and_ack(self, batch: list[Message], stop: threading.Event) -> bool:
        """Write until committed (then queue the acks) or until stopped; return if committed.

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
                if stop.is_set():
                    logger.warning(
                        "database unavailable at shutdown; %d messages stay unacknowledged "
                        "and will be redelivered",
                        len(batch),
                    )
                    break
                stop.wait(delay_s)
                delay_s = min(delay_s * 2, self._ingest.retry_max_s)
                continue
            self._database_recovered()
            self._metrics.record_commit(len(batch), result, time.perf_counter() - started, now_us())
            self._acks.extend((m.generation, m.mid) for m in batch if m.mid)
            committed = True
            break
        self._writing = 0
        return committed

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

    def _send_acks(self, client: mqtt.Client) -> None:
        """Acknowledge committed messages; safe from both threads (each pop is atomic)."""
        while True:
            try:
                message_generation, mid = self._acks.popleft()
            except IndexError:
                return
            # Read per ack: a reconnect while this runs must not ack an old id on a new link.
            if message_generation == self._generation:
                client.ack(mid, 1)

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
                self._device_types.load(self._conn)
                self._conn.commit()
                self._metrics.database_up.set(1)
                logger.info("database connected, %d devices registered", len(self._device_types))
            except Exception as exc:  # any failure to write is retried, never fatal
                self._database_failed(exc)
                if stop.is_set():
                    return None
                stop.wait(delay_s)
                delay_s = min(delay_s * 2, self._ingest.retry_max_s)
        return self._writer

    def _drop_connection(self) -> None:
        self._metrics.database_up.set(0)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._writer = None
