"""The manhole-cover scene's judgement, on hand-written readings (expectations from DOMAIN.md)."""

from __future__ import annotations

import numpy as np

from scenes.covers import CoverReadings, judge
from scenes.episodes import Episode
from scenes.settings import CoverThresholds

NAN = float("nan")
LIMITS = CoverThresholds(
    tilt_deg=10, open_tilt_deg=80, sustain_s=5, loose_spikes=3, loose_window_s=600, water_cm=100
)


def readings(*rows: tuple[float, float, float, float]) -> CoverReadings:
    """Rows of (ts, tilt, open, water)."""
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 4)
    return CoverReadings(table[:, 0], table[:, 1], table[:, 2], table[:, 3])


def test_a_sustained_tilt_is_a_displaced_cover_that_clears_at_the_first_normal_reading() -> None:
    got = judge(
        readings((0, 2, 0, 30), (100, 27, 0, 30), (3700, 26, 0, 30), (5000, 2, 0, 30)),
        LIMITS,
        now=9000,
    )
    assert got.episodes == [Episode("cover_displaced", 100, 3700, 5000, 2, 27)]
    assert got.due_at is None


def test_a_passing_wheel_is_no_detection_and_three_are_a_loose_cover() -> None:
    one = judge(readings((0, 2, 0, NAN), (100, 16, 0, NAN), (101, 2, 0, NAN)), LIMITS, now=9000)
    assert one.episodes == []
    three = judge(
        readings(
            (100, 16, 0, NAN),
            (101, 2, 0, NAN),
            (400, 16, 0, NAN),
            (401, 2, 0, NAN),
            (900, 16, 0, NAN),
            (901, 2, 0, NAN),
            (2000, 16, 0, NAN),
            (2001, 2, 0, NAN),  # 1,100 s after the last: a new group of one
        ),
        LIMITS,
        now=9000,
    )
    assert three.episodes == [Episode("cover_loose", 100, 900, 1500, 3, 3)]


def test_the_open_switch_or_a_tilt_past_the_open_limit_is_an_open_cover() -> None:
    got = judge(readings((0, 2, 0, NAN), (60, 95, 1, NAN), (400, 3, 0, NAN)), LIMITS, now=9000)
    assert got.episodes == [Episode("cover_open", 60, 60, 400, 1, 95)]
    switch_only = judge(readings((60, 4, 1, NAN)), LIMITS, now=9000)
    assert switch_only.episodes == [Episode("cover_open", 60, 60, None, 1, 4)]


def test_a_young_tilt_is_judged_again_when_it_has_lasted_long_enough() -> None:
    got = judge(readings((0, 2, 0, NAN), (1000, 30, 0, NAN)), LIMITS, now=1002)
    assert got.episodes == []
    assert got.due_at == 1005
    later = judge(readings((0, 2, 0, NAN), (1000, 30, 0, NAN)), LIMITS, now=1005)
    assert later.episodes == [Episode("cover_displaced", 1000, 1000, None, 1, 30)]


def test_water_above_the_limit_is_water_rising_and_readings_without_water_do_not_end_it() -> None:
    got = judge(
        readings(
            (0, 2, 0, 40), (300, 2, 0, 120), (400, NAN, NAN, NAN), (600, 2, 0, 160), (900, 2, 0, 50)
        ),
        LIMITS,
        now=9000,
    )
    assert got.episodes == [Episode("water_rising", 300, 600, 900, 2, 160)]
