"""The MQTT side of ingest: a receiver process that holds the session.

The receiver runs paho's network loop in a process of its own, so that receiving and the writer's
decoding and COPY run on two cores instead of taking turns on one GIL (one process did 0.50-0.63 x
a bare paho client; docs/benchmarks.md). It only receives, ships and acknowledges, on one thread
that drives paho through its external-loop API (``socket``, ``loop_read``, ``loop_write``,
``loop_misc``, ``reconnect``) and waits on the broker's socket and the writer's pipe at once:

- each message is shipped to the writer as ``(mid, generation, topic, payload, received_us)``, in
  lists of up to ``_CHUNK`` messages, ``_CHUNK_BYTES`` of payload or ``_SHIP_AFTER_US`` old,
  over its end of a duplex pipe (a socket pair: room for several lists, where an OS pipe holds
  64 KiB);
- connection events are shipped as ``Connected``, ``Disconnected``, ``Refused`` and
  ``Unreachable`` (once, when connecting starts failing);
- from the same pipe it takes lists of committed ``(generation, mid)`` pairs and acknowledges
  them at once, ``STOP`` (stop taking messages, ship what it holds, answer ``Stopped``) and
  ``CLOSE`` (write what paho still holds, disconnect and exit).

It never waits on the writer: the broker's window (Receive Maximum under MQTT 5) bounds what can
be unacknowledged, so what the receiver ships is bounded too, and keep-alives go on through a
database outage of any length. Message ids belong to one connection (``generation``): an id
committed after a reconnect is not acknowledged on the new connection; the broker redelivers it
and the (device_id, ts) key makes that a no-op.

The receiver ignores SIGINT and SIGTERM (the writer stops it in order; it is started with both
blocked, so that a Ctrl-C during its start-up cannot reach it either) and ends when the writer's
end of the pipe closes, whatever ended the writer. It exits 0 when told to close or when the
writer is gone, 1 when it failed (after shipping ``Failed``).
"""

from __future__ import annotations

import logging
import select
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.decode import Payload
from redaction import error_line
from wire.mqtt import MqttSettings, make_client
from wire.topics import prefixed

logger = logging.getLogger(__name__)

#: What the receiver ships of a message: mid, connection generation, topic, payload, receive
#: time (epoch microseconds).
Received = tuple[int, int, str, Payload, int]

#: Messages shipped in one list at most, and how old the oldest may grow before a partial list
#: is shipped (microseconds).
_CHUNK: Final = 256
#: ... and of payload bytes: large payloads must not make a list (and its pickle) large.
_CHUNK_BYTES: Final = 1 << 20
_SHIP_AFTER_US: Final = 5_000
#: How long the loop waits at most with nothing to do: paho's keep-alive is checked this often.
_IDLE_S: Final = 1.0
#: How long closing may take to write the last acknowledgements and the DISCONNECT.
_FLUSH_S: Final = 5.0

STOP: Final = "stop"
CLOSE: Final = "close"


@dataclass(frozen=True)
class Connected:
    """Connected and subscribed to ``topics``."""

    session_present: bool
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Disconnected:
    """The connection ended; paho reconnects on its own."""

    reason: str | None  # None: a disconnect ingest asked for


@dataclass(frozen=True)
class Refused:
    """The broker refused the connection (bad credentials, say); paho tries again."""

    reason: str


@dataclass(frozen=True)
class Unreachable:
    """Connecting fails (reason: one redacted line); it is retried with backoff."""

    reason: str


@dataclass(frozen=True)
class Stopped:
    """After STOP: every message the receiver took has been shipped; no more will come."""


@dataclass(frozen=True)
class Failed:
    """The receiver failed and ends; ``error`` is one redacted line."""

    error: str


@dataclass(frozen=True)
class ReceiverConfig:
    """What the receiver process is started with."""

    mqtt: MqttSettings
    protocol: MQTTProtocolVersion
    receive_window: int
    max_packet_bytes: int
    retry_max_s: float


def now_us() -> int:
    """Wall-clock time in epoch microseconds."""
    return time.time_ns() // 1000


def subscriptions(settings: MqttSettings, *, is_shareable: bool) -> list[str]:
    """What ingest subscribes to: each of its topic filters under its prefix, shared if it can be.

    Unshared by default: Mosquitto restores a session's plain subscriptions from its store after a
    restart but not its shared ones (docs/operations.md, "Broker restarts").
    """
    share = f"$share/{settings.shared_group}/" if settings.shared_group and is_shareable else ""
    return [share + prefixed(settings.topic_prefix, topics) for topics in settings.topic_filters]


def run_receiver(config: ReceiverConfig, pipe: Connection) -> None:
    """The receiver process's entry point (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        _Receiver(config, pipe).serve()
    except (EOFError, ConnectionError):
        pass  # the writer is gone: what was not acknowledged is redelivered to the next session
    except Exception as exc:  # reported by the writer, in one line
        try:
            pipe.send(Failed(error_line(exc)))
        finally:
            raise SystemExit(1) from None


class _Receiver:
    def __init__(self, config: ReceiverConfig, pipe: Connection) -> None:
        self._config = config
        self._pipe = pipe
        self._is_v5 = config.protocol == MQTTProtocolVersion.MQTTv5
        self._chunk: list[Received] = []
        self._chunk_bytes = 0
        self._generation = 0
        self._accepting = True
        # Reconnecting backs off from 1 s to retry_max_s + 1, doubling; 0 once connected.
        self._reconnect_delay_s = 0.0
        self._retry_at = 0.0  # monotonic time of the next connection attempt
        self._unreachable = False  # reported, until a connection succeeds
        settings = config.mqtt
        self._client = make_client(
            settings.url,
            config.protocol,
            settings.client_id,
            tls=settings.tls,
            clean_session=None if self._is_v5 else not settings.is_persistent_session,
            manual_ack=True,
            connect_timeout_s=settings.connect_timeout_s,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def serve(self) -> None:
        settings, client = self._config.mqtt, self._client
        properties = None
        if self._is_v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry_s
            properties.ReceiveMaximum = self._config.receive_window
            properties.MaximumPacketSize = self._config.max_packet_bytes
        client.connect_async(
            settings.host,
            settings.port,
            settings.keepalive_s,
            clean_start=(
                not settings.is_persistent_session
                if self._is_v5
                else mqtt.MQTT_CLEAN_START_FIRST_ONLY
            ),
            properties=properties,
        )
        try:
            self._loop()
        finally:
            client.disconnect()
            self._flush(time.monotonic() + _FLUSH_S)

    def _flush(self, deadline: float) -> None:
        """Write what paho still holds (acknowledgements, the DISCONNECT) while the socket takes it.

        paho writes at once only what the socket buffer takes; the rest waits for loop_write.
        """
        client = self._client
        while client.want_write() and (sock := client.socket()) is not None:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return
            select.select([], [sock], [], left_s)
            client.loop_write()

    def _loop(self) -> None:
        client, pipe = self._client, self._pipe
        while True:
            sock: Any = client.socket()
            if sock is None and time.monotonic() >= self._retry_at:
                sock = self._connect()
            # TLS may hold decrypted bytes that select() cannot see.
            pending = sock is not None and hasattr(sock, "pending") and sock.pending() > 0
            readable, writable, _ = select.select(
                [pipe] if sock is None else [pipe, sock],
                [sock] if sock is not None and client.want_write() else [],
                [],
                0.0 if pending else self._wait_s(sock),
            )
            if pipe in readable and not self._command(pipe.recv()):
                return
            if sock is not None:
                if pending or sock in readable:
                    client.loop_read()  # a lost connection ends in _on_disconnect
                if sock in writable:
                    client.loop_write()
                client.loop_misc()  # keep-alive
            if self._chunk and now_us() - self._chunk[0][4] >= _SHIP_AFTER_US:
                self._ship()

    def _wait_s(self, sock: object) -> float:
        if self._chunk:
            return max(0.0, (self._chunk[0][4] + _SHIP_AFTER_US - now_us()) / 1e6)
        if sock is None:
            return max(0.0, self._retry_at - time.monotonic())
        return _IDLE_S

    def _connect(self) -> Any:
        """Start a connection (CONNACK comes to _on_connect); back off while that fails."""
        try:
            self._client.reconnect()
        except OSError as exc:
            if not self._unreachable:
                self._unreachable = True
                self._pipe.send(Unreachable(error_line(exc)))
            self._back_off()
            return None
        return self._client.socket()

    def _back_off(self) -> None:
        max_delay_s = self._config.retry_max_s + 1
        self._reconnect_delay_s = min(max(2 * self._reconnect_delay_s, 1.0), max_delay_s)
        self._retry_at = time.monotonic() + self._reconnect_delay_s

    def _command(self, command: object) -> bool:
        """Carry out one command from the writer; return False on CLOSE."""
        if isinstance(command, list):
            ack, generation = self._client.ack, self._generation
            for message_generation, mid in command:
                if message_generation == generation:
                    ack(mid, 1)
        elif command == STOP:
            self._accepting = False
            self._ship()
            self._pipe.send(Stopped())
        elif command == CLOSE:
            return False
        return True

    def _ship(self) -> None:
        if self._chunk:
            chunk, self._chunk, self._chunk_bytes = self._chunk, [], 0
            self._pipe.send(chunk)

    # -- paho callbacks, on the same thread -------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any
    ) -> None:
        if rc.is_failure:
            self._pipe.send(Refused(str(rc)))
            return
        self._reconnect_delay_s = 0.0
        self._unreachable = False
        # Shared subscriptions are MQTT 5, but Mosquitto and EMQX serve them to 3.1.1 clients
        # too; a broker that refused MQTT 5 under "auto" (amqtt) gets a plain subscription.
        shareable = self._is_v5 or self._config.mqtt.protocol == "3.1.1"
        topics = subscriptions(self._config.mqtt, is_shareable=shareable)
        if self._is_v5:
            # retained messages only at a new subscription: once it exists, its session had
            # each one live already (cityops' own, on cityops/v1/out/..., are passed over)
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            client.subscribe([(topic, options) for topic in topics])
        else:
            client.subscribe([(topic, 1) for topic in topics])
        self._pipe.send(Connected(bool(flags.session_present), tuple(topics)))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        # Message ids belong to a connection: never acknowledge an old one on a new one.
        self._generation += 1
        self._back_off()
        self._pipe.send(Disconnected(str(rc) if rc.is_failure else None))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # not acknowledged: the broker hands it to the next session
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a broker that does not validate topics; bad_topic later
            # paho keeps the topic bytes in _topic and offers no public accessor for them.
            topic = msg._topic.decode("utf-8", "backslashreplace")
        payload = msg.payload
        self._chunk.append((msg.mid, self._generation, topic, payload, now_us()))
        self._chunk_bytes += len(payload)
        if len(self._chunk) >= _CHUNK or self._chunk_bytes >= _CHUNK_BYTES:
            self._ship()
