"""Ingest's clock reference: a device's skew is its newest reading's offset from the median of
the other devices in its block of readings in arrival order, each by its own median there
(hand-computed expectations)."""

from __future__ import annotations

from ingest.writer import ClockSample

S = 1_000_000  # microseconds
NOW = 1_700_000_000 * S


def sample(rows: list[tuple[str, float]]) -> ClockSample:
    """Readings of (device, reading time - receive time in seconds) in arrival order."""
    clock = ClockSample()
    for i, (device_id, offset_s) in enumerate(rows):
        received_us = NOW + i * S
        clock.add(device_id, received_us + round(offset_s * S), received_us)
    return clock


def test_a_replayed_stream_is_its_own_reference_and_a_device_behind_it_stands_out() -> None:
    # an hour-old replay: everyone 3600 s behind receive time, one device 20 min behind that
    rows = [(f"d{i}", -3600.0 + i % 3) for i in range(9)] + [("late", -3600.0 - 1200)]
    skews = sample(rows).skews_s()
    # the others of "late": -3600, -3599, -3598 three times each: median -3599
    assert skews["late"] == -1201.0
    # the others of d0: -3600 x2, -3599 x3, -3598 x3 and -4800: median -3599
    assert skews["d0"] == -1.0
    assert skews["d2"] == 1.0  # -3598 against the same median


def test_a_chatty_device_counts_once_and_sets_no_one_else_s_clock() -> None:
    # a sweeper 600 s behind sends 50 fixes; three honest devices among them
    rows = [("sweeper", -600.0)] * 50 + [("a", 0.0), ("b", 1.0), ("c", 2.0)]
    rows.append(("sweeper", -600.0))
    skews = sample(rows).skews_s()
    assert skews["sweeper"] == -601.0  # its others: 0, 1, 2: median 1
    assert skews["a"] == -1.0  # its others: the sweeper once (-600), 1, 2: median 1
    assert skews["b"] == 1.0  # its others: -600, 0, 2: median 0


def test_no_reference_without_two_other_devices_in_the_block() -> None:
    assert sample([("a", 0.0), ("b", -500.0)]).skews_s() == {}
    assert sample([("a", 0.0), ("a", 1.0), ("b", -500.0)]).skews_s() == {}
    # three: each has two others
    assert sample([("a", 0.0), ("b", -500.0), ("c", 2.0)]).skews_s()["b"] == -501.0


def test_a_gateway_backlog_is_its_own_reference() -> None:
    # 40 live devices, then a gateway's backlog: 40 lamps a minute, for an hour
    live = [(f"live{i}", 0.5) for i in range(40)]
    backlog = [(f"lamp{i}", -3600.0 + minute * 60) for minute in range(60) for i in range(40)]
    skews = sample(live + backlog).skews_s()
    assert len(skews) == 80
    # each lamp's newest reading is in the last minute's message, among the other lamps' of
    # that minute and the one before: off by half a minute at most, far from any clock limit
    assert max(abs(skews[f"lamp{i}"]) for i in range(40)) <= 30.0
    assert {skews[f"live{i}"] for i in range(40)} == {0.0}
