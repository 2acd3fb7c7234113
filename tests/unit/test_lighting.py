"""The lighting scene's sky and judgement, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scenes import lighting, sky
from scenes.settings import LightingThresholds

LIMITS = LightingThresholds()


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_the_sky_of_shenyang_matches_the_almanac_within_two_minutes() -> None:
    # 2025-10-06: sunset 17:19, sunrise on the 7th 05:51 (UTC+8)
    nights = sky.lit_intervals(41.81, 123.43, sky.Plan(), at(2025, 10, 6), at(2025, 10, 7))
    night = nights[(nights[:, 0] > at(2025, 10, 6)) & (nights[:, 0] < at(2025, 10, 7))]
    assert abs(night[0, 0] - at(2025, 10, 6, 9, 19)) < 120
    assert abs(night[0, 1] - at(2025, 10, 6, 21, 51)) < 120


def test_plan_offsets_move_the_switching_times() -> None:
    plain = sky.lit_intervals(41.81, 123.43, sky.Plan(), at(2025, 10, 6), at(2025, 10, 7))
    shifted = sky.lit_intervals(
        41.81,
        123.43,
        sky.Plan(on_offset_min=15, off_offset_min=-10),
        at(2025, 10, 6),
        at(2025, 10, 7),
    )
    assert np.allclose(shifted[:, 0] - plain[:, 0], 900)
    assert np.allclose(shifted[:, 1] - plain[:, 1], -600)


def test_polar_night_is_lit_all_day_and_midnight_sun_never() -> None:
    tromso = (69.65, 18.96)
    winter = at(2025, 12, 21)
    ts = np.array([winter + h * 3600 for h in range(24)], dtype=np.float64)
    dark_day = sky.lit_intervals(*tromso, sky.Plan(), winter, winter + 86_400)
    assert (sky.expected(ts, dark_day, 900) == sky.LIT).all()
    summer = at(2025, 6, 21)
    ts = np.array([summer + h * 3600 for h in range(24)], dtype=np.float64)
    light_day = sky.lit_intervals(*tromso, sky.Plan(), summer, summer + 86_400)
    assert (sky.expected(ts, light_day, 900) == sky.DARK).all()


def test_near_a_switching_time_either_state_is_right() -> None:
    intervals = np.array([[1000.0, 5000.0]])
    ts = np.array([0.0, 500.0, 1400.0, 1600.0, 4700.0, 5400.0, 5600.0])
    assert sky.expected(ts, intervals, 500).tolist() == [
        sky.DARK,
        sky.EITHER,
        sky.EITHER,
        sky.LIT,
        sky.EITHER,
        sky.EITHER,
        sky.DARK,
    ]


def test_a_dimming_schedule_applies_in_local_time_across_midnight() -> None:
    from zoneinfo import ZoneInfo

    plan = sky.Plan.model_validate({"dim": [{"start": "23:00", "end": "05:00", "pct": 60}]})
    ts = np.array([at(2025, 10, 6, 14, 30), at(2025, 10, 6, 16, 30), at(2025, 10, 6, 21, 30)])
    # 22:30, 00:30 and 05:30 in Shanghai
    assert sky.dim_pct(ts, plan, ZoneInfo("Asia/Shanghai")).tolist() == [100.0, 60.0, 100.0]


def lamp(
    values: dict[str, list[float]], expected: list[int], rated: float = 100.0
) -> lighting.Lamp:
    n = len(expected)
    ts = np.arange(n, dtype=np.float64) * 300
    column = {
        name: np.asarray(values.get(name, [np.nan] * n), dtype=np.float64)
        for name in ("lamp_on", "dim_pct", "voltage_v", "power_w", "power_factor", "fault_code")
    }
    return lighting.Lamp(
        lighting.LampReadings(ts, **column),
        np.asarray(expected, dtype=np.int8),
        np.full(n, 100.0),
        rated,
        None,
        LIMITS,
    )


def kinds(judgement) -> list[tuple[str, float, float | None]]:
    return [(e.kind, e.first_seen, e.cleared_at) for e in judgement.episodes]


def test_voltage_and_controller_flags_become_their_own_findings() -> None:
    n = 6
    one = lamp(
        {
            "lamp_on": [1] * n,
            "power_w": [100] * n,
            "voltage_v": [221, 250, 251, 221, 180, 221],
            "fault_code": [0, 0, 128, 128, 4, 0],
        },
        [sky.LIT] * n,
    )
    found = kinds(lighting.judge_lamp(one, lighting.out(one), now=n * 300))
    assert ("over_voltage", 300.0, 900.0) in found
    assert ("leakage", 600.0, 1200.0) in found
    assert ("relay_failure", 1200.0, 1500.0) in found
    # 180 V for one report (< sustain_s) is no finding
    assert not any(k == "under_voltage" for k, *_ in found)


def test_degraded_is_judged_at_the_reported_dimming_level() -> None:
    n = 4
    dimmed = lamp({"lamp_on": [1] * n, "power_w": [50] * n, "dim_pct": [50] * n}, [sky.LIT] * n)
    assert kinds(lighting.judge_lamp(dimmed, lighting.out(dimmed), now=n * 300)) == []
    failing = lamp({"lamp_on": [1] * n, "power_w": [30] * n, "dim_pct": [50] * n}, [sky.LIT] * n)
    assert kinds(lighting.judge_lamp(failing, lighting.out(failing), now=n * 300)) == [
        ("lamp_degraded", 0.0, None)
    ]


def test_a_cabinet_dark_together_is_one_outage_and_no_lamp_findings() -> None:
    n = 6
    dark_after = 2
    lamps = [
        lamp(
            {
                "lamp_on": [1] * dark_after + [0] * (n - dark_after),
                "power_w": [100] * dark_after + [0] * (n - dark_after),
            },
            [sky.LIT] * n,
        )
        for _ in range(5)
    ]
    judgements, cabinet = lighting.judge_cabinet(lamps, LIMITS, now=n * 300)
    assert kinds(cabinet) == [("cabinet_outage", 600.0, None)]
    assert all(j.episodes == [] for j in judgements)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 30),
    data=st.data(),
)
def test_any_readings_judge_without_failing_and_episodes_lie_within_them(n, data) -> None:
    floats = arrays(np.float64, n, elements=st.floats(allow_nan=True, allow_infinity=True))
    lamps = []
    for _ in range(data.draw(st.integers(1, 4))):
        ts = np.sort(data.draw(arrays(np.float64, n, elements=st.floats(0, 1e6), unique=True)))
        readings = lighting.LampReadings(ts, *(data.draw(floats) for _ in range(6)))
        expected = data.draw(arrays(np.int8, n, elements=st.sampled_from([0, 1, 2])))
        circuit = data.draw(st.sampled_from([None, "1", "2"]))
        rated = data.draw(st.sampled_from([np.nan, 100.0, 0.0]))
        lamps.append(lighting.Lamp(readings, expected, np.full(n, 100.0), rated, circuit, LIMITS))
    judgements, cabinet = lighting.judge_cabinet(lamps, LIMITS, now=2e6)
    for one, judgement in zip(lamps, judgements, strict=True):
        for e in judgement.episodes:
            assert e.first_seen in one.readings.ts
            assert e.cleared_at is None or e.cleared_at > e.first_seen
    for e in cabinet.episodes:
        assert e.kind in (lighting.CABINET_OUTAGE, lighting.CIRCUIT_OUTAGE)


def test_every_lighting_kind_has_its_fiware_status_or_is_the_cabinet_s() -> None:
    from scenes.engine import LIGHTING
    from scenes.streetlights import CABINET_KINDS, STATUS_OF

    assert set(STATUS_OF) | set(CABINET_KINDS) == set(LIGHTING.category_of)
    assert not set(STATUS_OF) & set(CABINET_KINDS)
