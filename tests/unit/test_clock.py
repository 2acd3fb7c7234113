"""Ingest's clock reference: a device's skew is its newest reading's offset from the median of
the block of readings that arrived around it (hand-computed expectations)."""

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
    assert skews["late"] == -1201.0  # median of -3600, -3599, -3598 x3 each and -4800: -3599
    assert skews["d0"] == -1.0
    assert skews["d2"] == 1.0


def test_a_device_is_judged_by_its_newest_reading_and_never_by_itself_alone() -> None:
    # a chatty sweeper, then three readings of others, then the sweeper's newest
    rows = [("sweeper", 5.0)] * 4 + [("a", 0.0), ("b", -500.0), ("c", 2.0), ("sweeper", 10.0)]
    # median of 5, 5, 5, 5, 0, -500, 2, 10: 5
    assert sample(rows).skews_s() == {"a": -5.0, "b": -505.0, "c": -3.0, "sweeper": 5.0}
    assert sample([("alone", -900.0), ("alone", -899.0)]).skews_s() == {}


def test_each_block_of_arrival_order_has_its_own_reference() -> None:
    # 64 readings live, then a gateway's backlog of 64 lamps an hour old: no one is skewed
    live = [(f"live{i}", 0.5) for i in range(64)]
    backlog = [(f"lamp{i}", -3600.0) for i in range(64)]
    skews = sample(live + backlog).skews_s()
    assert set(skews.values()) == {0.0}
    assert len(skews) == 128
