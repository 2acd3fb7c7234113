"""Publishing over MQTT, and abuse mode.

A run is published paced by the simulated clock, at a target rate, or flat out. Abuse mode
publishes bad input and says which quarantine reasons (and duplicates) it must produce.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from redaction import redact
from simulator.city import City
from simulator.connections import DeviceLinks, DeviceLogin, LinkError
from simulator.fleet import Publication
from wire.mqtt import BrokerAddress, TlsFiles, TlsFilesError, make_client
from wire.topics import TOPIC_ROOT, prefixed

_AHEAD_S = 0.005  # sleep only when this far ahead of schedule
_CONNECT_TIMEOUT_S = 10.0
_WINDOW = 1_000  # QoS 1 messages published and not yet confirmed by the broker


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """Where and how fast to publish."""

    url: str
    protocol: Literal["5", "3.1.1"] = "5"
    qos: Literal[0, 1] = 1
    speed: float = 60.0  # simulated seconds per wall second; 0 publishes flat out
    rate: float | None = None  # messages per second, ignoring simulated time
    topic_prefix: str = ""  # mqtt.topic_prefix: every topic is published under it
    tls: TlsFiles | None = None  # mqtts://: the broker's CA (mqtt.ca_file), a client certificate
    #: Each device on its own connection with its own login (by device id), or all on one
    logins: Mapping[str, DeviceLogin] | None = None

    def topic(self, publication: Publication) -> str:
        """Where ``publication`` goes on the broker: its contract topic under the prefix."""
        return prefixed(self.topic_prefix, publication.topic)


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What a publisher achieved."""

    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        """Messages per wall-clock second."""
        return self.messages / self.seconds if self.seconds else 0.0


class PublishError(Exception):
    """The broker could not be reached or did not take the messages."""


def _connect(options: PublishOptions) -> mqtt.Client:
    protocol = (
        MQTTProtocolVersion.MQTTv5 if options.protocol == "5" else MQTTProtocolVersion.MQTTv311
    )
    client = make_client(
        options.url,
        protocol,
        f"cityops-sim-{uuid.uuid4().hex[:8]}",
        tls=options.tls,
        connect_timeout_s=_CONNECT_TIMEOUT_S,
    )
    client.max_inflight_messages_set(400)
    client.max_queued_messages_set(0)
    answered = threading.Event()
    refusal: list[str] = []

    def on_connect(*args: object) -> None:
        reason = args[3]
        if getattr(reason, "is_failure", False):
            refusal.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    try:
        address = BrokerAddress.of(options.url)
        client.connect(address.host, address.port)
    except OSError as exc:
        msg = f"cannot reach the MQTT broker at {redact(options.url)}: {exc}"
        raise PublishError(msg) from exc
    client.loop_start()
    if not answered.wait(_CONNECT_TIMEOUT_S) or refusal:
        client.loop_stop()
        why = refusal[0] if refusal else f"no answer in {_CONNECT_TIMEOUT_S:.0f} s"
        msg = f"the MQTT broker at {redact(options.url)} refused MQTT {options.protocol}: {why}"
        raise PublishError(msg)
    return client


def publish(
    publications: Sequence[Publication], options: PublishOptions, stop: threading.Event
) -> PublishReport:
    """Publish in order until done or ``stop``; wait until the broker has every QoS 1 message.

    With ``options.logins`` every device publishes on its own connection, opened first.
    """
    sender = (
        _open_links(publications, options)
        if options.logins is not None
        else _SharedClient(_connect(options))
    )
    started = time.monotonic()
    first_t = publications[0].t if publications else 0.0
    sent = 0
    last: mqtt.MQTTMessageInfo | None = None
    window: deque[mqtt.MQTTMessageInfo] = deque()
    try:
        for i, pub in enumerate(publications):
            if options.rate:
                due = started + i / options.rate
            elif options.speed > 0:
                due = started + (pub.t - first_t) / options.speed
            else:
                due = 0.0
            ahead = due - time.monotonic()
            if ahead > _AHEAD_S and stop.wait(ahead):
                break
            if stop.is_set():
                break
            last = sender.publish(
                pub.publisher, options.topic(pub), pub.payload, qos=options.qos, retain=pub.retain
            )
            sent += 1
            if options.qos:
                # paho numbers messages in 16 bits and scans its queue per ack: keep it short
                window.append(last)
                if len(window) > _WINDOW:
                    _confirmed(window.popleft(), sender)
        if last is not None and options.qos:
            _confirmed(last, sender)
            if not last.is_published():
                msg = "the broker did not acknowledge the last message within 120 s"
                raise PublishError(msg)
    except LinkError as exc:  # a device's own connection ended (refused, or the broker went)
        raise PublishError(str(exc)) from None
    finally:
        sender.close()
    return PublishReport(sent, time.monotonic() - started)


_CONFIRM_TIMEOUT_S = 120.0


def _confirmed(info: mqtt.MQTTMessageInfo, sender: DeviceLinks | _SharedClient) -> None:
    """Wait until the broker has ``info``'s message; stop at once if its connection is gone."""
    deadline = time.monotonic() + _CONFIRM_TIMEOUT_S
    while not info.is_published() and time.monotonic() < deadline:
        lost = sender.lost()
        if lost is not None:
            raise PublishError(lost)
        try:
            info.wait_for_publish(timeout=1.0)
        except (RuntimeError, ValueError) as exc:  # paho gave the message up
            msg = f"the broker did not take a message: {exc}"
            raise PublishError(msg) from None


class _SharedClient:
    """One connection for the whole fleet: what DeviceLinks does per device, on one login."""

    def __init__(self, client: mqtt.Client) -> None:
        self._client = client

    def publish(
        self, _device_id: str, topic: str, payload: bytes, *, qos: int, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def lost(self) -> str | None:
        """Nothing is lost for good: paho's own loop reconnects the one connection."""
        return None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _open_links(publications: Sequence[Publication], options: PublishOptions) -> DeviceLinks:
    assert options.logins is not None
    protocol = (
        MQTTProtocolVersion.MQTTv5 if options.protocol == "5" else MQTTProtocolVersion.MQTTv311
    )
    links = DeviceLinks(
        options.url,
        options.logins,
        ca_file=options.tls.ca_file if options.tls else None,
        protocol=protocol,
    )
    try:
        links.open({pub.publisher for pub in publications}, timeout_s=_CONNECT_TIMEOUT_S * 6)
    except (LinkError, TlsFilesError) as exc:
        links.close()
        msg = f"at {redact(options.url)}: {exc}"
        raise PublishError(msg) from None
    return links


#: Abuse kinds and the quarantine reason each produces (None: stored once, counted duplicate).
ABUSE_KINDS: dict[str, str | None] = {
    "malformed_json": "malformed_json",
    "wrong_type": "wrong_type",
    "out_of_range": "out_of_range",
    "missing_field": "missing_field",
    "unknown_field": "unknown_field",
    "unknown_device": "unknown_device",
    "future_timestamp": "future_timestamp",
    "oversized": "oversized",
    "bad_topic": "bad_topic",
    "duplicate": None,
    "replayed": None,
}


@dataclass(frozen=True, slots=True)
class AbuseBatch:
    """Bad messages to publish and what ingest should make of them."""

    messages: list[tuple[str, bytes]]
    quarantine: Counter[str]
    duplicates: int


def abuse_messages(
    city: City, kinds: Sequence[str], count: int, now_ms: int, *, max_payload_bytes: int
) -> AbuseBatch:
    """``count`` messages of each kind, aimed at the city's first cover and sweeper.

    An oversized payload is 1 KiB over ingest's ``max_payload_bytes``: brokers refuse much
    larger ones themselves (Mosquitto's ``message_size_limit``), so ingest never sees those.
    """
    cover = next(d["device_id"] for d in city.devices if d["type"] == "manhole")
    sweeper = next(d["device_id"] for d in city.devices if d["type"] == "sweeper")
    cover_topic = f"{TOPIC_ROOT}/manhole/{cover}/telemetry"

    def body(ts: int, **changes: object) -> bytes:
        return json.dumps({"ts": ts, "tilt_deg": 1.5, **changes}).encode()

    makers: dict[str, Callable[[int, int], tuple[str, bytes]]] = {
        "malformed_json": lambda ts, _: (cover_topic, body(ts)[:-8]),
        "wrong_type": lambda ts, _: (cover_topic, body(ts, tilt_deg="steep")),
        "out_of_range": lambda ts, _: (cover_topic, body(ts, battery_pct=140)),
        "missing_field": lambda ts, _: (
            f"{TOPIC_ROOT}/sweeper/{sweeper}/telemetry",
            json.dumps({"ts": ts, "lat": 41.8}).encode(),
        ),
        "unknown_field": lambda ts, _: (cover_topic, body(ts, tilt=3)),
        "unknown_device": lambda ts, n: (f"{TOPIC_ROOT}/manhole/nobody-{n}/telemetry", body(ts)),
        "future_timestamp": lambda _, n: (cover_topic, body(now_ms + 86_400_000 + n)),
        "oversized": lambda ts, _: (cover_topic, body(ts, pad="x" * (max_payload_bytes + 1024))),
        "bad_topic": lambda ts, _: (f"{TOPIC_ROOT}/manhole/{cover}", body(ts)),
        "duplicate": lambda ts, _: (cover_topic, body(ts)),
        "replayed": lambda ts, _: (cover_topic, body(ts - 86_400_000)),
    }
    messages: list[tuple[str, bytes]] = []
    quarantine: Counter[str] = Counter()
    duplicates = 0
    for kind in kinds:
        if kind not in makers:
            msg = f"unknown abuse kind {kind!r}; known: {', '.join(ABUSE_KINDS)}"
            raise ValueError(msg)
        for n in range(count):
            message = makers[kind](now_ms - 3_600_000 + n, n)  # distinct, an hour old
            messages.append(message)
            reason = ABUSE_KINDS[kind]
            if reason is None:  # sent again: the second copy must count as a duplicate
                messages.append(message)
                duplicates += 1
            else:
                quarantine[reason] += 1
    return AbuseBatch(messages, quarantine, duplicates)
