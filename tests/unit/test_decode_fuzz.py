"""Fuzzing the whole per-message path: whatever arrives ends as rows or quarantine entries.

A message may hold anything: arbitrary bytes, JSON of any depth and width, odd number forms,
other encodings, duplicate keys, on any topic. ``Decoder.decode_message`` must return for every
one of them (never raise), and whatever it returns must be storable: rows of the contract's
shape, rejections with a known reason, and quarantine rows PostgreSQL accepts as text.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.changes import Registration
from ingest.decode import Decoded, DecodeLimits, Decoder, Reason
from ingest.writer import Message, quarantine_row
from tests.plugin import DECODER_REGISTRY
from wire.contract import READING_KINDS

NOW_US = 1_764_000_100_000_000
DEVICES = DECODER_REGISTRY
TOPICS = [
    "cityops/v1/manhole/mh-1/telemetry",
    "cityops/v1/manhole/mh-1/event",
    "cityops/v1/sweeper/sw-1/telemetry",
    "cityops/v1/light/lt-1/telemetry",
    "cityops/v1/light/lt-1/status",
    "cityops/v1/gateway/gw-1/batch",
    "cityops/v1/manhole/mh-new/telemetry",
]
FIELDS = [
    "ts", "values", "tilt_deg", "cover_open", "water_level_cm", "battery_pct", "event", "lat",
    "lon", "speed_kmh", "lamp_on", "power_w", "fault_code", "online", "firmware", "device_id",
    "device_type",
]  # fmt: skip
MAX_PAYLOAD = 64 * 1024

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 946_684_800_000, 32_503_680_000_000]),
)
timestamps = st.one_of(
    numbers,
    st.sampled_from(
        [
            "2026-11-26T01:00:00+08:00",
            "2026-11-26T01:00:00",
            "0001-01-01T00:00:00+00:00",
            "9999-12-31T23:59:59-23:59",
            "2026-02-30T00:00:00Z",
            "",
        ]
    ),
    st.text(max_size=40),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30), timestamps)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6)
    ),
    max_leaves=40,
)


def _decoder(*, auto_register: bool = False) -> Decoder:
    limits = DecodeLimits(
        max_payload_bytes=MAX_PAYLOAD, max_future_us=300_000_000, auto_register=auto_register
    )
    return Decoder(limits=limits, registration_of=DEVICES.get)


def _check(topic: str, payload: bytes, decoded: Decoded) -> None:
    """What a decoded message must look like for the writer to store it."""
    assert isinstance(decoded, Decoded)
    # stored, quarantined, or passed over as cityops' own (cityops/v1/out/...)
    assert decoded.rows or decoded.rejections or decoded.own, "a message must end somewhere"
    if decoded.own:
        assert topic.startswith("cityops/v1/out/")
        assert not decoded.rows
        assert not decoded.rejections
    for kind, row in decoded.rows:
        assert kind in READING_KINDS
        assert len(row) == len(kind.columns)
        assert isinstance(row[0], str)
        assert isinstance(row[1], int)
    for rejection in decoded.rejections:
        assert isinstance(rejection.reason, Reason)
        message = Message(0, 0, topic, payload, NOW_US, decoded)
        stored = quarantine_row(message, rejection, raw_max_bytes=MAX_PAYLOAD)
        for text in (stored[1], stored[3]):
            assert "\x00" not in text
            text.encode("utf-8")  # strict: PostgreSQL takes only valid UTF-8 without NUL
        assert stored[4] == payload[:MAX_PAYLOAD]


def _encode(document: Any, form: str) -> bytes:
    text = json.dumps(document, ensure_ascii=form == "ascii")
    if form == "utf-16":
        return text.encode("utf-16")
    if form == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    return text.encode()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    _check(topic, payload, _decoder().decode_message(topic, payload, NOW_US))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(TOPICS),
    document=json_values,
    form=st.sampled_from(["utf-8", "ascii", "utf-16", "bom"]),
    auto_register=st.booleans(),
)
def test_arbitrary_json_structures_never_raise(
    topic: str, document: Any, form: str, auto_register: bool
) -> None:
    payload = _encode(document, form)
    decoded = _decoder(auto_register=auto_register).decode_message(topic, payload, NOW_US)
    _check(topic, payload, decoded)


@settings(max_examples=200)
@given(
    topic=st.sampled_from(TOPICS),
    pairs=st.lists(st.tuples(st.sampled_from(FIELDS), scalars), min_size=1, max_size=8),
    as_gateway_entry=st.booleans(),
)
def test_duplicate_keys_never_raise(
    topic: str, pairs: list[tuple[str, Any]], as_gateway_entry: bool
) -> None:
    body = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    if as_gateway_entry:
        body = '[{"device_id":"mh-1","values":' + body + "}]"
    payload = body.encode()
    _check(topic, payload, _decoder().decode_message(topic, payload, NOW_US))


@settings(max_examples=60)
@given(
    topic=st.sampled_from(TOPICS),
    depth=st.integers(min_value=1, max_value=200_000),
    opener=st.sampled_from(["[", '{"values":', '{"a":', '[{"device_id":"mh-1","values":']),
)
def test_deep_nesting_never_raises(topic: str, depth: int, opener: str) -> None:
    payload = (opener * depth).encode()[: MAX_PAYLOAD + 10]
    _check(topic, payload, _decoder().decode_message(topic, payload, NOW_US))


@settings(max_examples=100)
@given(
    topic=st.sampled_from(TOPICS[:1]),
    width=st.integers(min_value=0, max_value=20_000),
    item=st.sampled_from(['{"tilt_deg":1}', "1", "[]", '{"ts":1764000000000,"tilt_deg":2}']),
)
def test_wide_arrays_never_raise(topic: str, width: int, item: str) -> None:
    payload = ("[" + ",".join([item] * width) + "]").encode()
    _check(topic, payload, _decoder().decode_message(topic, payload, NOW_US))


@settings(max_examples=300)
@given(
    topic=st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda a, b, c: f"cityops/v1/{a}/{b}/{c}",
            st.one_of(st.sampled_from(["manhole", "gateway", "light"]), st.text(max_size=8)),
            st.one_of(st.sampled_from(["mh-1", "gw-1", "old-1", "gw-2"]), st.text(max_size=70)),
            st.one_of(st.sampled_from(["telemetry", "batch", "status"]), st.text(max_size=8)),
        ),
    ),
    payload=st.sampled_from([b'{"tilt_deg": 1}', b'[{"device_id":"mh-1","values":{}}]', b""]),
)
def test_arbitrary_topics_never_raise(topic: str, payload: bytes) -> None:
    _check(topic, payload, _decoder().decode_message(topic, payload, NOW_US))


def test_an_unforeseen_failure_quarantines_that_message_only() -> None:
    def registry_that_breaks(device_id: str) -> Registration | None:
        if device_id == "mh-bad":
            msg = "registry bug"
            raise LookupError(msg)
        return DEVICES.get(device_id)

    limits = DecodeLimits(max_payload_bytes=MAX_PAYLOAD, max_future_us=0, auto_register=False)
    decoder = Decoder(limits=limits, registration_of=registry_that_breaks)
    bad = decoder.decode_message("cityops/v1/manhole/mh-bad/telemetry", b'{"tilt_deg":1}', NOW_US)
    assert [r.reason for r in bad.rejections] == [Reason.DECODE_FAILED]
    assert "LookupError: registry bug" in bad.rejections[0].detail
    good = decoder.decode_message("cityops/v1/manhole/mh-1/telemetry", b'{"tilt_deg":1}', NOW_US)
    assert len(good.rows) == 1
    assert not good.rejections
