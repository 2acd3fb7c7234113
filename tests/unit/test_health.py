"""The device-health scene's judgement, on hand-written message times (expectations from the
rule: offline from exactly the last message plus offline_factor x the type's interval; skewed
in clock_skew_batches batches in a row; flooding beyond max(flood_min_messages, flood_factor x
flood_window_s / flood_interval_s))."""

from __future__ import annotations

import numpy as np

from scenes.episodes import Episode, Judgement
from scenes.health import DeviceBatches, DeviceMessages, judge
from scenes.settings import HealthThresholds

NAN = float("nan")
LIMITS = HealthThresholds(
    interval_s={"manhole": 100.0},
    offline_factor=1.5,
    battery_pct=15,
    clock_skew_s=60,
    clock_skew_batches=2,
    flood_window_s=100,
    flood_interval_s={"manhole": 100.0},
    flood_factor=5,  # 5 readings per 100 s window ...
    flood_min_messages=8,  # ... but at least 8: more than 8 in 100 s is a flood
)
NO_BATCHES = DeviceBatches(np.empty(0), np.empty(0), np.empty(0))


def messages(*rows: tuple[float, float]) -> DeviceMessages:
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 2)
    return DeviceMessages("manhole", table[:, 0], table[:, 1])


def batches(*rows: tuple[float, float, float]) -> DeviceBatches:
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 3)
    return DeviceBatches(table[:, 0], table[:, 1], table[:, 2])


def kind(name: str, judgement: Judgement) -> list[Episode]:
    return [e for e in judgement.episodes if e.kind == name]


def test_a_silence_longer_than_the_limit_is_offline_from_the_moment_it_became_true() -> None:
    got = judge(messages((0, NAN), (100, NAN), (500, NAN), (600, NAN)), NO_BATCHES, LIMITS, now=700)
    assert got.episodes == [Episode("sensor_offline", 250, 250, 500, 1, 0.0)]
    assert got.due_at == 750  # the last message is 100 s old: offline at 600 + 150


def test_a_device_silent_since_its_last_message_is_offline_until_it_speaks_again() -> None:
    got = judge(messages((0, NAN), (100, NAN)), NO_BATCHES, LIMITS, now=1000)
    assert got.episodes == [Episode("sensor_offline", 250, 250, None, 1, 0.0)]
    assert got.due_at is None
    back = judge(messages((0, NAN), (100, NAN), (900, NAN)), NO_BATCHES, LIMITS, now=1000)
    assert back.episodes == [Episode("sensor_offline", 250, 250, 900, 1, 0.0)]


def test_a_battery_below_the_limit_is_low_until_a_reading_above_it() -> None:
    got = judge(
        messages((0, 40), (60, 14), (120, 9), (180, NAN), (200, 80)), NO_BATCHES, LIMITS, now=250
    )
    assert got.episodes == [Episode("battery_drain", 60, 120, 200, 2, 9)]


def test_a_clock_off_in_enough_batches_in_a_row_is_skewed_until_a_batch_within_the_limit() -> None:
    feed = batches(
        (0, 1, 1), (100, -1200, 1), (200, 5, 1),  # one batch off: a backlog, no episode
        (300, -1200, 1), (400, NAN, 1), (500, -1190, 1), (600, -1210, 1), (700, 2, 1),
    )  # fmt: skip
    got = judge(messages((0, NAN), (700, NAN)), feed, LIMITS, now=700)
    # the batch without a reference neither breaks nor extends the spell
    assert kind("clock_skew", got) == [Episode("clock_skew", 300, 600, 700, 3, -1210)]
    going = judge(
        messages((0, NAN), (500, NAN)), batches((300, 200, 1), (500, 190, 1)), LIMITS, 500
    )
    assert kind("clock_skew", going) == [Episode("clock_skew", 300, 500, None, 2, 200)]


def test_more_readings_in_the_window_than_allowed_is_flooding_until_under_or_quiet() -> None:
    # 3 readings a batch every 20 s: windows (t - 100, t] hold 3, 6, 9, 12, 15, 15, ...
    times = [float(t) for t in range(0, 200, 20)]
    feed = batches(*((t, 0, 3) for t in times), (400, 0, 1))
    got = judge(messages(*((t, NAN) for t in [*times, 400])), feed, LIMITS, now=400)
    assert kind("flooding", got) == [Episode("flooding", 40, 180, 400, 8, 15)]
    # the device fell silent while flooding: it clears a window after its last batch
    quiet = judge(messages(*((t, NAN) for t in times)), batches(*((t, 0, 3) for t in times)),
                  LIMITS, now=1000)  # fmt: skip
    assert kind("flooding", quiet) == [Episode("flooding", 40, 180, 280, 8, 15)]
    soon = judge(messages(*((t, NAN) for t in times)), batches(*((t, 0, 3) for t in times)),
                 LIMITS, now=200)  # fmt: skip
    assert kind("flooding", soon) == [Episode("flooding", 40, 180, None, 8, 15)]
    assert soon.due_at == 280
