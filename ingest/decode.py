"""Topic grammar and payload decoding: one MQTT message in, typed rows and quarantine entries out.

Nothing here does I/O. ``decode_message`` never raises: everything it cannot store comes back as
a ``Rejection`` with a reason from ``Reason`` and a detail naming the bad value, and an exception
nobody foresaw (a decoder bug, a hostile payload) becomes a ``decode_failed`` rejection of that
message alone, so one message can never stop ingest (tests/unit/test_decode_fuzz.py fuzzes it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import msgspec

from devices.changes import Registration
from wire.contract import (
    ID_PATTERN,
    READING_KINDS,
    STATUS,
    TELEMETRY_KINDS,
    GatewayEntry,
    ReadingKind,
)
from wire.topics import OUT_TREE, topic_root

if TYPE_CHECKING:
    from ingest.settings import IngestSettings

logger = logging.getLogger(__name__)

#: A message body as paho hands it over.
Payload = bytes | bytearray
_DEVICE_ID = re.compile(ID_PATTERN)
_CHANNELS: Final = frozenset({"telemetry", "event", "status"})
_US_PER_MS: Final = 1000
_ROUTES_MAX: Final = 200_000  # remembered topics; forgotten all at once beyond this
_RANGE_ERROR = re.compile(r"^Expected `[^`]+` (?:>=|<=|>|<|matching regex|of length) ")


class Reason(StrEnum):
    """Why a message (or one reading in it) went to the quarantine."""

    OVERSIZED = "oversized"
    BAD_TOPIC = "bad_topic"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_DEVICE = "unknown_device"
    TYPE_MISMATCH = "type_mismatch"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    EMPTY_READING = "empty_reading"
    NOT_GATEWAY_CHILD = "not_gateway_child"
    RETIRED_DEVICE = "retired_device"
    REJECTED_BY_DATABASE = "rejected_by_database"
    DECODE_FAILED = "decode_failed"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A part of a message that cannot be stored, and why."""

    reason: Reason
    detail: str


@dataclass(slots=True)
class Decoded:
    """What one message yields: rows per reading kind, rejections, devices to register."""

    rows: list[tuple[ReadingKind, tuple[Any, ...]]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    new_devices: dict[str, Registration] = field(default_factory=dict)
    device_type: str = "unknown"
    own: bool = False  # published by cityops itself (cityops/v1/out/...): neither data nor bad


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Limits the decoder enforces, taken from the ingest settings."""

    max_payload_bytes: int
    max_future_us: int
    auto_register: bool

    @classmethod
    def of(cls, ingest: IngestSettings) -> DecodeLimits:
        """The limits of these ingest settings."""
        return cls(
            max_payload_bytes=ingest.max_payload_bytes,
            max_future_us=int(ingest.max_future_s * 1e6),
            auto_register=ingest.auto_register,
        )


@dataclass(frozen=True, slots=True)
class _Route:
    """What a topic says: the device, its type, and the kind of reading (None: gateway)."""

    device_type: str
    device_id: str
    kind: ReadingKind | None


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail)


def classify_validation_error(message: str) -> Reason:
    """Map a msgspec validation message to a quarantine reason."""
    if message.startswith("Object missing required field"):
        return Reason.MISSING_FIELD
    if message.startswith("Object contains unknown field"):
        return Reason.UNKNOWN_FIELD
    if _RANGE_ERROR.match(message):
        return Reason.OUT_OF_RANGE
    if message.endswith("at `$.ts`"):
        return Reason.BAD_TIMESTAMP
    return Reason.WRONG_TYPE


def _to_epoch_us(ts: int | datetime | None, received_us: int) -> int:
    if ts is None:
        return received_us
    if isinstance(ts, int):
        return ts * _US_PER_MS
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH: Final = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def _convert(kind: ReadingKind, fields: Mapping[str, Any]) -> Any:
    try:
        return msgspec.convert(fields, kind.struct)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise _Reject(classify_validation_error(message), message) from None


def _row(
    kind: ReadingKind, device_id: str, reading: Any, received_us: int, limits: DecodeLimits
) -> tuple[Any, ...]:
    """The table row of a validated reading: (device_id, ts_us, *values)."""
    values = msgspec.structs.astuple(reading)[:-1]  # all fields but ts, in table order
    if values.count(None) == len(values):
        raise _Reject(Reason.EMPTY_READING, f"no {kind.name} value fields in the reading")
    ts_us = _to_epoch_us(reading.ts, received_us)
    if ts_us > received_us + limits.max_future_us:
        ahead_s = (ts_us - received_us) / 1e6
        raise _Reject(Reason.FUTURE_TIMESTAMP, f"ts is {ahead_s:.0f} s ahead of receive time")
    return (device_id, ts_us, *values)


def _flatten(item: Any) -> dict[str, Any]:
    """Accept both ``{"ts": .., "values": {..}}`` and the flat ``{"ts": .., "tilt_deg": ..}``."""
    if not isinstance(item, dict):
        raise _Reject(Reason.WRONG_TYPE, f"expected a JSON object, got {type(item).__name__}")
    values = item.get("values")
    if values is None:
        return item
    if not isinstance(values, dict) or len(item) > 2 or (len(item) == 2 and "ts" not in item):
        raise _Reject(Reason.WRONG_TYPE, "'values' must be an object beside at most 'ts'")
    return {**values, "ts": item.get("ts")}


def _items(document: Any) -> Iterator[tuple[int | None, Any]]:
    if isinstance(document, list):
        yield from enumerate(document)
    else:
        yield None, document


def _at(index: int | None, detail: str) -> str:
    return detail if index is None else f"item {index}: {detail}"


class Decoder:
    """Decodes messages against the contract and the device registry.

    The broker decides who may publish on which topic (docs/security.md); what it cannot see
    is checked here: a gateway's batch may carry only its registered children's readings
    (others are ``not_gateway_child``), and a retired device, or one whose credentials are all
    revoked, is ``retired_device`` whatever reaches ingest for it.
    """

    def __init__(
        self,
        *,
        limits: DecodeLimits,
        registration_of: Callable[[str], Registration | None],
        topic_prefix: str = "",
    ) -> None:
        self._limits = limits
        self._root = f"{topic_root(topic_prefix)}/"
        self._own_root = f"{self._root}{OUT_TREE}/"
        self._registration_of = registration_of
        self._json = msgspec.json.Decoder()
        self._typed = {kind: msgspec.json.Decoder(kind.struct) for kind in READING_KINDS}
        self._routes: dict[str, _Route] = {}

    def decode_message(self, topic: str, payload: Payload, received_us: int) -> Decoded:
        """Decode one message; a whole-message fault yields a single rejection."""
        if topic.startswith(self._own_root):
            return Decoded(device_type=OUT_TREE, own=True)
        out = Decoded()
        try:
            if len(payload) > self._limits.max_payload_bytes:
                raise _Reject(
                    Reason.OVERSIZED,
                    f"{len(payload)} bytes, limit {self._limits.max_payload_bytes}",
                )
            route = self._routes.get(topic) or self._route(topic)
            out.device_type = route.device_type
            if route.kind is None:
                self._check_device(route.device_id, "gateway", out)
                self._decode_gateway(route.device_id, self._parse(payload), received_us, out)
            else:
                self._check_device(route.device_id, route.device_type, out)
                self._decode_readings(route.kind, route.device_id, payload, received_us, out)
            if not out.rows and not out.rejections:
                raise _Reject(Reason.EMPTY_READING, "the message holds no readings")
        except _Reject as exc:
            out.rejections.append(exc.rejection)
        except Exception as exc:  # any other failure must end this message only, never ingest
            logger.warning("decoding a message on %r failed", topic, exc_info=True)
            return Decoded(
                rejections=[Rejection(Reason.DECODE_FAILED, f"{type(exc).__name__}: {exc}")],
                device_type=out.device_type,
            )
        return out

    def _route(self, topic: str) -> _Route:
        """Parse a topic (a valid one is remembered: devices publish on the same few)."""
        parts = topic[len(self._root) :].split("/") if topic.startswith(self._root) else []
        if len(parts) != 3:
            raise _Reject(Reason.BAD_TOPIC, f"not {self._root}<type>/<id>/<channel>: {topic}")
        device_type, device_id, channel = parts
        if not _DEVICE_ID.match(device_id):
            raise _Reject(Reason.BAD_TOPIC, f"invalid device id {device_id!r}")
        if device_type == "gateway":
            if channel != "batch":
                raise _Reject(Reason.BAD_TOPIC, f"gateways publish on .../batch, not {channel}")
            route = _Route(device_type, device_id, None)
        else:
            route = _Route(device_type, device_id, self._kind_for(device_type, channel))
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _decode_readings(
        self, kind: ReadingKind, device_id: str, payload: Payload, received_us: int, out: Decoded
    ) -> None:
        try:  # the common case: one flat reading, decoded straight into its type
            reading = self._typed[kind].decode(payload)
        except (msgspec.MsgspecError, RecursionError):  # anything else takes the general path
            for index, item in _items(self._parse(payload)):
                self._append(
                    out, index, kind=kind, device_id=device_id, item=item, received_us=received_us
                )
        else:
            out.rows.append((kind, _row(kind, device_id, reading, received_us, self._limits)))

    def _parse(self, payload: Payload) -> Any:
        try:
            return self._json.decode(payload)
        except msgspec.DecodeError as exc:
            raise _Reject(Reason.MALFORMED_JSON, str(exc)) from None
        except RecursionError:  # msgspec's own depth limit ("[[[[..." or '{"a":{"a":...')
            raise _Reject(Reason.MALFORMED_JSON, "JSON nested too deeply") from None

    @staticmethod
    def _kind_for(device_type: str, channel: str) -> ReadingKind:
        if device_type not in TELEMETRY_KINDS:
            raise _Reject(Reason.BAD_TOPIC, f"unknown device type {device_type!r}")
        if channel not in _CHANNELS:
            raise _Reject(Reason.BAD_TOPIC, f"unknown channel {channel!r}")
        return STATUS if channel == "status" else TELEMETRY_KINDS[device_type]

    def _check_device(
        self, device_id: str, device_type: str | None, out: Decoded, gateway_id: str | None = None
    ) -> str:
        """Return the device's registered type, registering it when allowed.

        ``gateway_id``: the gateway whose batch carries the reading, which must be the device's.
        """
        known = self._registration_of(device_id) or out.new_devices.get(device_id)
        if known is None:
            registrable = device_type in TELEMETRY_KINDS or (
                device_type == "gateway" and gateway_id is None
            )
            if not self._limits.auto_register or device_type is None or not registrable:
                raise _Reject(Reason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
            out.new_devices[device_id] = Registration(device_type, gateway_id)
            return device_type
        if not known.may_speak:
            raise _Reject(
                Reason.RETIRED_DEVICE,
                f"device {device_id!r} is retired or its credentials are revoked",
            )
        if device_type is not None and known.type != device_type:
            raise _Reject(
                Reason.TYPE_MISMATCH,
                f"device {device_id!r} is registered as {known.type}, not {device_type}",
            )
        if gateway_id is not None and known.gateway_id != gateway_id:
            raise _Reject(
                Reason.NOT_GATEWAY_CHILD,
                f"device {device_id!r} is not a child of gateway {gateway_id!r}"
                + (f" (its gateway is {known.gateway_id!r})" if known.gateway_id else ""),
            )
        return known.type

    def _append(
        self,
        out: Decoded,
        index: int | None,
        *,
        kind: ReadingKind,
        device_id: str,
        item: Any,
        received_us: int,
    ) -> None:
        try:
            reading = _convert(kind, _flatten(item))
            row = _row(kind, device_id, reading, received_us, self._limits)
        except _Reject as exc:
            out.rejections.append(Rejection(exc.rejection.reason, _at(index, str(exc))))
        else:
            out.rows.append((kind, row))

    def _decode_gateway(
        self, gateway_id: str, document: Any, received_us: int, out: Decoded
    ) -> None:
        if not isinstance(document, list):
            raise _Reject(Reason.WRONG_TYPE, "a gateway batch is a JSON array of entries")
        for index, item in enumerate(document):
            try:
                entry = msgspec.convert(item, GatewayEntry)
            except msgspec.ValidationError as exc:
                message = str(exc)
                reason = classify_validation_error(message)
                out.rejections.append(Rejection(reason, _at(index, message)))
                continue
            try:
                device_type = self._check_device(
                    entry.device_id, entry.device_type, out, gateway_id
                )
                kind = TELEMETRY_KINDS.get(device_type)
                if kind is None:
                    raise _Reject(
                        Reason.TYPE_MISMATCH,
                        f"device {entry.device_id!r} is a {device_type}, which sends no telemetry",
                    )
            except _Reject as exc:
                out.rejections.append(Rejection(exc.rejection.reason, _at(index, str(exc))))
                continue
            fields = {**entry.values, "ts": entry.ts}
            self._append(
                out,
                index,
                kind=kind,
                device_id=entry.device_id,
                item=fields,
                received_us=received_us,
            )
