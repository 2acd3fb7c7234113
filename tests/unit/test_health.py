"""The device-health scene's judgement, on hand-written message times (expectations from the
rule: offline from exactly the last message plus offline_factor x the type's interval)."""

from __future__ import annotations

import numpy as np

from scenes.episodes import Episode
from scenes.health import DeviceMessages, judge
from scenes.settings import HealthThresholds

NAN = float("nan")
LIMITS = HealthThresholds(interval_s={"manhole": 100.0}, offline_factor=1.5, battery_pct=15)


def messages(*rows: tuple[float, float]) -> DeviceMessages:
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 2)
    return DeviceMessages("manhole", table[:, 0], table[:, 1])


def test_a_silence_longer_than_the_limit_is_offline_from_the_moment_it_became_true() -> None:
    got = judge(messages((0, NAN), (100, NAN), (500, NAN), (600, NAN)), LIMITS, now=700)
    assert got.episodes == [Episode("sensor_offline", 250, 250, 500, 1, 0.0)]
    assert got.due_at == 750  # the last message is 100 s old: offline at 600 + 150


def test_a_device_silent_since_its_last_message_is_offline_until_it_speaks_again() -> None:
    got = judge(messages((0, NAN), (100, NAN)), LIMITS, now=1000)
    assert got.episodes == [Episode("sensor_offline", 250, 250, None, 1, 0.0)]
    assert got.due_at is None
    back = judge(messages((0, NAN), (100, NAN), (900, NAN)), LIMITS, now=1000)
    assert back.episodes == [Episode("sensor_offline", 250, 250, 900, 1, 0.0)]


def test_a_battery_below_the_limit_is_low_until_a_reading_above_it() -> None:
    got = judge(messages((0, 40), (60, 14), (120, 9), (180, NAN), (200, 80)), LIMITS, now=250)
    assert got.episodes == [Episode("battery_drain", 60, 120, 200, 2, 9)]
