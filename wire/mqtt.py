"""MQTT: the ``[mqtt]`` settings section, the client factory, and choosing the protocol.

Every MQTT client of cityops (ingest's receiver and its protocol probe, the simulator's publisher)
is made by ``make_client``, so a broker URL's credentials, TLS and timeouts mean the same
everywhere.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, field_validator

from redaction import redact
from sections import Section
from wire.topics import PREFIX_MAX_CHARS, TOPIC_ROOT, check_prefix

logger = logging.getLogger(__name__)


def check_mqtt_url(value: str) -> str:
    """``value`` if it is an mqtt:// or mqtts:// URL naming a host and a valid port."""
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        msg = f"expected an mqtt:// or mqtts:// URL, got scheme {parts.scheme!r}"
        raise ValueError(msg)
    if not parts.hostname:
        msg = "the URL names no host"
        raise ValueError(msg)
    parts.port  # noqa: B018  # raises ValueError for a port out of range or not a number
    return value


class MqttSettings(Section):
    """The broker ingest subscribes to."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL, mqtt://[user:password@]host:port, or mqtts:// for TLS.",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="MQTT version; auto tries 5 and falls back to 3.1.1."
    )
    client_id: str = Field(
        default="cityops-ingest-1",
        min_length=1,
        max_length=23,
        description="Stable per worker: the broker keeps this session's messages while it is down.",
    )
    shared_group: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_-]*$",
        description=(
            "MQTT 5 shared-subscription group; empty (the default) subscribes without sharing. "
            "Mosquitto does not keep shared subscriptions across its restarts: what arrives "
            "before the workers subscribe again is lost (docs/operations.md)."
        ),
    )
    topic_filters: tuple[str, ...] = Field(
        default=(f"{TOPIC_ROOT}/#",),
        min_length=1,
        description=(
            "What this worker subscribes to, each under topic_prefix. Several workers without a "
            "shared group each take their own part, together all of cityops/v1/#."
        ),
    )
    topic_prefix: str = Field(
        default="",
        max_length=PREFIX_MAX_CHARS,
        description=(
            "Topics live under {topic_prefix}/cityops/v1/... (empty: cityops/v1/...): ingest "
            "subscribes and decodes, and the simulator publishes, under it."
        ),
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description=(
            "How long the broker keeps this worker's queued messages while it is offline; 0: no "
            "persistent session (the demo's), so the broker forgets the worker when it leaves."
        ),
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    ca_file: Path | None = Field(
        default=None,
        description=(
            "mqtts://: the CA that signed the broker's certificate (PEM); empty: the system's "
            "trusted CAs. The broker's name is always verified."
        ),
    )
    cert_file: Path | None = Field(
        default=None, description="mqtts://: this client's certificate (PEM), if it has one."
    )
    key_file: Path | None = Field(
        default=None, description="mqtts://: the private key of cert_file (PEM)."
    )

    @field_validator("topic_filters")
    @classmethod
    def _are_contract_filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic_filter in value:
            levels = topic_filter.split("/")
            well_formed = "#" not in levels[:-1] and all(
                level in {"+", "#"} or (level and not {"+", "#"} & set(level)) for level in levels
            )
            if not (topic_filter.startswith(f"{TOPIC_ROOT}/") and well_formed):
                msg = f"{topic_filter!r} is not an MQTT topic filter under {TOPIC_ROOT}/"
                raise ValueError(msg)
        return value

    @field_validator("url")
    @classmethod
    def _is_mqtt_url(cls, value: str) -> str:
        return check_mqtt_url(value)

    @field_validator("session_expiry_s")
    @classmethod
    def _keeps_a_session_or_none(cls, value: int) -> int:
        if 0 < value < 60:
            msg = f"0 (no persistent session) or at least 60 s, got {value}"
            raise ValueError(msg)
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _is_topic_prefix(cls, value: str) -> str:
        return check_prefix(value)

    @property
    def tls(self) -> TlsFiles | None:
        """The TLS files to connect with, None for mqtt://."""
        if not self.is_tls:
            return None
        return TlsFiles(self.ca_file, self.cert_file, self.key_file)

    @property
    def address(self) -> BrokerAddress:
        """Host, port, credentials and TLS, from the URL."""
        return BrokerAddress.of(self.url)

    @property
    def host(self) -> str:
        """Broker host name."""
        return self.address.host

    @property
    def port(self) -> int:
        """Broker port, 1883 or 8883 when the URL names none."""
        return self.address.port

    @property
    def is_persistent_session(self) -> bool:
        """Whether the broker keeps this client's session (and its messages) while it is away."""
        return self.session_expiry_s > 0

    @property
    def is_tls(self) -> bool:
        """Whether the URL asks for TLS (mqtts://)."""
        return self.address.is_tls

    @property
    def username(self) -> str | None:
        """User name from the URL, if any."""
        return self.address.username

    @property
    def password(self) -> str | None:
        """Password from the URL, if any."""
        return self.address.password


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker URL points and how to log in: mqtt://[user:password@]host[:port], mqtts://."""

    host: str
    port: int
    username: str | None
    password: str | None
    is_tls: bool

    @classmethod
    def of(cls, url: str) -> BrokerAddress:
        """Parse ``url`` (1883, or 8883 for mqtts://, when it names no port)."""
        parts = urlsplit(url)
        is_tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname or "",
            port=parts.port or (8883 if is_tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            is_tls=is_tls,
        )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """How a client verifies the broker (``ca_file``, else the system's CAs) and proves itself."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate and name."""
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
            if self.cert_file is not None:
                context.load_cert_chain(
                    self.cert_file, self.key_file if self.key_file is not None else None
                )
        except (OSError, ssl.SSLError) as exc:
            ca = self.ca_file or "the system's"
            msg = (
                f"cannot load the TLS files (CA {ca}, certificate {self.cert_file or 'none'}, "
                f"key {self.key_file or 'none'}): {exc}; check mqtt.ca_file, cert_file and key_file"
            )
            raise TlsFilesError(msg) from None
        return context


class TlsFilesError(Exception):
    """A CA, certificate or key file named in the settings cannot be loaded."""


def make_client(
    url: str,
    protocol: MQTTProtocolVersion,
    client_id: str,
    *,
    tls: TlsFiles | None = None,
    clean_session: bool | None = None,
    manual_ack: bool = False,
    connect_timeout_s: float = 10.0,
) -> mqtt.Client:
    """A paho client for the broker at ``url``: its credentials, TLS and connect timeout.

    An mqtts:// URL connects over TLS with ``tls`` (default: the system's CAs, no client
    certificate), always verifying the broker's certificate and name. ``clean_session`` is MQTT
    3.1.1's (None under MQTT 5, whose clean start is a connect option); ``manual_ack`` leaves
    QoS 1 acknowledgements to the caller.
    """
    address = BrokerAddress.of(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=clean_session,
        manual_ack=manual_ack,
    )
    client.connect_timeout = connect_timeout_s
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.is_tls:
        client.tls_set_context((tls or TlsFiles()).context())
    return client


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

    probe = make_client(
        settings.url,
        MQTTProtocolVersion.MQTTv5,
        f"{settings.client_id}-probe",
        tls=settings.tls,
        connect_timeout_s=settings.connect_timeout_s,
    )
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
