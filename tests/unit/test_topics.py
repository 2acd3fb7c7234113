"""The topic prefix: one rule places the contract's tree, and the subscriptions, the decoder and
the simulator's publisher all follow it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from devices.changes import Registration, registrations
from ingest.decode import DecodeLimits, Decoder, Reason
from ingest.receiver import subscriptions
from simulator.city import CitySpec, generate
from simulator.fleet import RunOptions, simulate
from simulator.publish import PublishOptions
from simulator.scenario import Scenario
from wire.mqtt import MqttSettings
from wire.topics import TOPIC_ROOT, check_prefix, prefixed, topic_filter, topic_root

START = datetime(2026, 11, 25, 15, 55, tzinfo=UTC).timestamp()
NOW_US = int((START + 3600) * 1e6)
LIMITS = DecodeLimits(max_payload_bytes=65536, max_future_us=300_000_000, auto_register=False)
DEVICES = {"mh-1": Registration("manhole")}
READING = b'{"ts": 1764000000000, "tilt_deg": 4}'


def test_a_prefix_stands_before_the_root_and_no_prefix_leaves_the_tree_as_it_is() -> None:
    topic = f"{TOPIC_ROOT}/manhole/mh-1/telemetry"
    assert prefixed("demo-1", topic) == "demo-1/cityops/v1/manhole/mh-1/telemetry"
    assert prefixed("", topic) == topic
    assert topic_root("site/a") == "site/a/cityops/v1"
    assert topic_filter("") == "cityops/v1/#"
    assert topic_filter("site/a") == "site/a/cityops/v1/#"


@pytest.mark.parametrize(
    "prefix", ["$SYS", "$share/g", "demo/+", "demo/#", "/demo", "demo/", "a//b", "a\x00b"]
)
def test_a_prefix_that_cannot_hold_the_tree_is_refused_by_name(prefix: str) -> None:
    with pytest.raises(ValueError, match="a topic prefix must not") as caught:
        check_prefix(prefix)
    assert repr(prefix) in str(caught.value)
    with pytest.raises(ValidationError, match="topic_prefix"):
        MqttSettings(topic_prefix=prefix)


def test_the_subscriptions_cover_the_filters_under_the_prefix_shared_or_not() -> None:
    demo = MqttSettings(topic_prefix="demo-1", shared_group="demo-1")
    assert subscriptions(demo, is_shareable=True) == ["$share/demo-1/demo-1/cityops/v1/#"]
    assert subscriptions(demo, is_shareable=False) == ["demo-1/cityops/v1/#"]
    assert subscriptions(MqttSettings(), is_shareable=True) == ["cityops/v1/#"]
    part = MqttSettings(
        topic_prefix="site/a", topic_filters=("cityops/v1/light/#", "cityops/v1/+/+/status")
    )
    assert subscriptions(part, is_shareable=True) == [
        "site/a/cityops/v1/light/#",
        "site/a/cityops/v1/+/+/status",
    ]


@pytest.mark.parametrize(
    ("prefix", "topic", "stored"),
    [
        ("demo-1", "demo-1/cityops/v1/manhole/mh-1/telemetry", True),
        ("demo-1", "cityops/v1/manhole/mh-1/telemetry", False),
        ("demo-1", "demo-2/cityops/v1/manhole/mh-1/telemetry", False),
        ("demo-1", "demo-1/cityops/v1/manhole/mh-1", False),
        ("demo-1", "demo-1/cityops/v2/manhole/mh-1/telemetry", False),
        ("site/a", "site/a/cityops/v1/manhole/mh-1/telemetry", True),
        ("", "cityops/v1/manhole/mh-1/telemetry", True),
        ("", "demo-1/cityops/v1/manhole/mh-1/telemetry", False),
    ],
)
def test_the_decoder_takes_the_tree_under_its_own_prefix_only(
    prefix: str, topic: str, stored: bool
) -> None:
    decoder = Decoder(limits=LIMITS, registration_of=DEVICES.get, topic_prefix=prefix)
    for _ in range(2):  # the second time from the route cache
        decoded = decoder.decode_message(topic, READING, NOW_US)
        if stored:
            assert (len(decoded.rows), decoded.rejections) == (1, [])
        else:
            assert [r.reason for r in decoded.rejections] == [Reason.BAD_TOPIC]


def test_what_the_simulator_publishes_under_a_prefix_decodes_under_that_prefix_only() -> None:
    city = generate(CitySpec(seed=3, districts=1, covers=20, lamps=40, sweepers_per_district=1))
    run = simulate(city, Scenario(), RunOptions(start=START, duration_s=900))
    known = registrations(city.devices)
    options = PublishOptions(url="mqtt://127.0.0.1", topic_prefix="demo-1")
    own = Decoder(limits=LIMITS, registration_of=known.get, topic_prefix="demo-1")
    unprefixed = Decoder(limits=LIMITS, registration_of=known.get)
    kinds = set()
    for publication in run.publications:
        topic = options.topic(publication)
        assert topic.startswith("demo-1/cityops/v1/")
        decoded = own.decode_message(topic, publication.payload, NOW_US)
        assert decoded.rows, topic
        assert decoded.rejections == [], topic
        kinds.add(decoded.device_type)
        refused = unprefixed.decode_message(topic, publication.payload, NOW_US)
        assert [r.reason for r in refused.rejections] == [Reason.BAD_TOPIC]
    assert kinds == {"manhole", "gateway", "sweeper"}
