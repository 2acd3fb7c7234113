"""Decoding without I/O: payload forms, timestamps, and the reason for each rejection."""

from __future__ import annotations

import json

import pytest

from devices.changes import Registration
from ingest.decode import DecodeLimits, Decoder, Reason, classify_validation_error
from tests.plugin import DECODER_REGISTRY
from wire.contract import LIGHT, MANHOLE, READING_KINDS, STATUS, SWEEPER, json_schema

NOW_US = 1_764_000_100_000_000
T0_MS = 1_764_000_000_000
DEVICES = DECODER_REGISTRY


def decoder(**limits: object) -> Decoder:
    options = {"max_payload_bytes": 4096, "max_future_us": 300_000_000, "auto_register": False}
    return Decoder(limits=DecodeLimits(**{**options, **limits}), registration_of=DEVICES.get)


def decode(topic: str, payload: object, **limits: object):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decoder(**limits).decode_message(topic, raw, NOW_US)


def test_flat_nested_and_array_forms_give_the_same_rows() -> None:
    flat = decode("cityops/v1/manhole/mh-1/telemetry", {"ts": T0_MS, "tilt_deg": 4})
    nested = decode("cityops/v1/manhole/mh-1/telemetry", {"ts": T0_MS, "values": {"tilt_deg": 4}})
    array = decode("cityops/v1/manhole/mh-1/telemetry", [{"ts": T0_MS, "tilt_deg": 4}])
    expected = [(MANHOLE, ("mh-1", T0_MS * 1000, 4.0, None, None, None, None, None, None))]
    assert flat.rows == nested.rows == array.rows == expected
    assert not flat.rejections
    assert not nested.rejections
    assert not array.rejections


def test_rfc3339_with_offset_and_missing_ts() -> None:
    with_offset = decode(
        "cityops/v1/light/lt-1/telemetry", {"ts": "2025-11-25T00:00:00.250+08:00", "lamp_on": True}
    )
    assert with_offset.rows[0][1][1] == T0_MS * 1000 + 250_000
    without = decode("cityops/v1/light/lt-1/telemetry", {"lamp_on": True})
    assert without.rows == [(LIGHT, ("lt-1", NOW_US, True, *[None] * 7))]


def test_status_channel_and_sweeper_kind() -> None:
    status = decode("cityops/v1/sweeper/sw-1/status", {"ts": T0_MS, "online": False})
    assert status.rows == [(STATUS, ("sw-1", T0_MS * 1000, False, None))]
    fix = decode("cityops/v1/sweeper/sw-1/telemetry", {"ts": T0_MS, "lat": 41.8, "lon": 123.4})
    assert fix.rows[0][0] is SWEEPER


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("cityops/v1/manhole/mh-1/telemetry", b"x" * 5000, Reason.OVERSIZED),
        ("cityops/v2/manhole/mh-1/telemetry", {"tilt_deg": 1}, Reason.BAD_TOPIC),
        ("cityops/v1/manhole/mh 1/telemetry", {"tilt_deg": 1}, Reason.BAD_TOPIC),
        ("cityops/v1/manhole/mh-1/debug", {"tilt_deg": 1}, Reason.BAD_TOPIC),
        ("cityops/v1/gateway/gw-1/telemetry", [], Reason.BAD_TOPIC),
        ("cityops/v1/manhole/mh-1/telemetry", b"{nope", Reason.MALFORMED_JSON),
        ("cityops/v1/manhole/mh-9/telemetry", {"tilt_deg": 1}, Reason.UNKNOWN_DEVICE),
        ("cityops/v1/light/mh-1/telemetry", {"lamp_on": True}, Reason.TYPE_MISMATCH),
        ("cityops/v1/manhole/mh-1/telemetry", {"cover_open": "yes"}, Reason.WRONG_TYPE),
        ("cityops/v1/manhole/mh-1/telemetry", {"battery_pct": 101}, Reason.OUT_OF_RANGE),
        ("cityops/v1/sweeper/sw-1/telemetry", {"lon": 123.4}, Reason.MISSING_FIELD),
        ("cityops/v1/manhole/mh-1/telemetry", {"tilt": 1}, Reason.UNKNOWN_FIELD),
        (
            "cityops/v1/manhole/mh-1/telemetry",
            {"ts": "2025-11-25 00:00", "tilt_deg": 1},
            Reason.BAD_TIMESTAMP,
        ),
        (
            "cityops/v1/manhole/mh-1/telemetry",
            {"ts": "2025-11-25T00:00:00", "tilt_deg": 1},
            Reason.BAD_TIMESTAMP,
        ),
        ("cityops/v1/manhole/mh-1/telemetry", {"ts": 12, "tilt_deg": 1}, Reason.OUT_OF_RANGE),
        (
            "cityops/v1/manhole/mh-1/telemetry",
            {"ts": T0_MS + 10**7, "tilt_deg": 1},
            Reason.FUTURE_TIMESTAMP,
        ),
        ("cityops/v1/manhole/mh-1/telemetry", {"ts": T0_MS}, Reason.EMPTY_READING),
        ("cityops/v1/manhole/mh-1/telemetry", [], Reason.EMPTY_READING),
        ("cityops/v1/manhole/mh-1/telemetry", {"event": "bad event!"}, Reason.OUT_OF_RANGE),
        ("cityops/v1/gateway/gw-1/batch", {"device_id": "mh-1"}, Reason.WRONG_TYPE),
    ],
)
def test_each_bad_input_gets_its_reason(topic: str, payload: object, reason: Reason) -> None:
    decoded = decode(topic, payload)
    assert decoded.rows == []
    assert [r.reason for r in decoded.rejections] == [reason]


@pytest.mark.parametrize(
    "topic",
    ["cityops/v1/out/detections/cover_open/2101", "cityops/v1/out/cases/7", "cityops/v1/out/x"],
)
def test_what_cityops_publishes_itself_is_neither_data_nor_bad_input(topic: str) -> None:
    decoded = decode(topic, b"")  # an empty payload clears a retained case
    assert (decoded.own, decoded.rows, decoded.rejections) == (True, [], [])
    # only under its own root: a device type named out elsewhere is a bad topic
    foreign = decode("cityops/v1/outx/mh-1/telemetry", {"tilt_deg": 1})
    assert (foreign.own, [r.reason for r in foreign.rejections]) == (False, [Reason.BAD_TOPIC])


def test_one_bad_reading_in_an_array_does_not_reject_the_others() -> None:
    decoded = decode(
        "cityops/v1/manhole/mh-1/telemetry",
        [
            {"ts": T0_MS, "tilt_deg": 1},
            {"ts": T0_MS + 1, "tilt_deg": -5},
            {"ts": T0_MS + 2, "tilt_deg": 2},
        ],
    )
    assert [row[1][2] for row in decoded.rows] == [1.0, 2.0]
    assert [(r.reason, r.detail.split(":")[0]) for r in decoded.rejections] == [
        (Reason.OUT_OF_RANGE, "item 1")
    ]


def test_gateway_entries_are_checked_one_by_one() -> None:
    decoded = decode(
        "cityops/v1/gateway/gw-1/batch",
        [
            {"device_id": "mh-2", "ts": T0_MS, "values": {"tilt_deg": 3}},
            {"device_id": "gw-1", "values": {"tilt_deg": 3}},
            {"device_id": "lt-1", "values": {"lamp_on": "on"}},
            {"device_id": "new-1", "device_type": "light", "values": {"lamp_on": True}},
        ],
    )
    assert [(kind.name, row[0]) for kind, row in decoded.rows] == [("manhole", "mh-2")]
    assert [(r.reason, r.detail.split(":")[0]) for r in decoded.rejections] == [
        (Reason.NOT_GATEWAY_CHILD, "item 1"),  # a gateway is not its own child
        (Reason.WRONG_TYPE, "item 2"),
        (Reason.UNKNOWN_DEVICE, "item 3"),
    ]


def test_a_gateway_carries_only_its_own_children() -> None:
    decoded = decode(
        "cityops/v1/gateway/gw-2/batch",
        [
            {"device_id": "lt-1", "ts": T0_MS, "values": {"lamp_on": True}},  # gw-1's
            {"device_id": "mh-1", "ts": T0_MS, "values": {"tilt_deg": 3}},  # nobody's
        ],
    )
    assert decoded.rows == []
    assert [r.reason for r in decoded.rejections] == [Reason.NOT_GATEWAY_CHILD] * 2
    assert "its gateway is 'gw-1'" in decoded.rejections[0].detail
    own = decode(
        "cityops/v1/gateway/gw-1/batch",
        [{"device_id": "lt-1", "ts": T0_MS, "values": {"lamp_on": True}}],
    )
    assert [row[0] for _, row in own.rows] == ["lt-1"]


def test_a_retired_or_revoked_device_is_refused() -> None:
    direct = decode("cityops/v1/manhole/old-1/telemetry", {"ts": T0_MS, "tilt_deg": 4})
    assert [r.reason for r in direct.rejections] == [Reason.RETIRED_DEVICE]
    assert direct.rows == []


def test_an_unregistered_or_mistyped_gateway_carries_nothing() -> None:
    batch = [{"device_id": "lt-1", "ts": T0_MS, "values": {"lamp_on": True}}]
    assert [r.reason for r in decode("cityops/v1/gateway/gw-9/batch", batch).rejections] == [
        Reason.UNKNOWN_DEVICE
    ]
    assert [r.reason for r in decode("cityops/v1/gateway/mh-1/batch", batch).rejections] == [
        Reason.TYPE_MISMATCH
    ]


def test_auto_registration_records_new_devices_with_their_type_and_gateway() -> None:
    decoded = decode(
        "cityops/v1/gateway/gw-1/batch",
        [{"device_id": "new-1", "device_type": "light", "values": {"lamp_on": True}}],
        auto_register=True,
    )
    assert decoded.new_devices == {"new-1": Registration("light", gateway_id="gw-1")}
    assert decoded.rows[0][0] is LIGHT


def test_range_messages_are_classified_as_out_of_range() -> None:
    assert classify_validation_error("Expected `float` <= 180.0 - at `$.tilt_deg`") is (
        Reason.OUT_OF_RANGE
    )
    assert classify_validation_error("Expected `int` >= 0 - at `$.fault_code`") is (
        Reason.OUT_OF_RANGE
    )
    assert classify_validation_error("Expected `float | null`, got `str` - at `$.x`") is (
        Reason.WRONG_TYPE
    )


def test_contract_schema_covers_every_reading_type() -> None:
    schema = json_schema()
    for kind in READING_KINDS:
        definition = schema["$defs"][kind.struct.__name__]
        assert set(definition["properties"]) == {"ts", *kind.value_fields}
    assert schema["$defs"]["ManholeReading"]["properties"]["tilt_deg"]["anyOf"][0] == {
        "type": "number",
        "minimum": 0,
        "maximum": 180,
    }
