"""The device-health scene's judgement: one device's messages, in event time, into episodes.

- offline: no message for ``offline_factor`` times the device type's expected interval. The
  episode starts exactly when that became true (the last message plus the limit), not when a run
  noticed it, and ends at the next message; one still going has ``cleared_at`` None, and a
  device that has not yet been silent that long leaves a deadline (``Judgement.due_at``) at the
  moment it would be.
- battery low: battery below ``battery_pct``; it clears at the first reading above.
- clock skew: the device's clock off by more than ``clock_skew_s`` from the readings that
  arrived around its own (ingest's ``ClockSample``) in ``clock_skew_batches`` consecutive
  batches or more; it clears at the first batch within the limit.
- flooding: more messages within ``flood_window_s`` than ``flood_factor`` times the type's
  fastest normal rate (``flood_interval_s``) allows, and more than ``flood_min_messages``,
  duplicates included; it clears at the first batch under the limit, or ``flood_window_s``
  after the last batch over it.

Batches are placed at their newest reading's time; offline and battery use each message's own.

The engine reads a device's messages from the last one at or before its window, so a silence
that began before the window is judged from its start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

import numpy as np

from scenes.episodes import Episode, Floats, Judgement, runs
from scenes.settings import HealthThresholds

OFFLINE: Final = "sensor_offline"
BATTERY: Final = "battery_drain"
CLOCK: Final = "clock_skew"
FLOODING: Final = "flooding"


@dataclass(frozen=True, slots=True)
class DeviceMessages:
    """One device's messages in event order; NaN where a message carried no battery figure."""

    device_type: str
    ts: Floats  # epoch seconds
    battery_pct: Floats


@dataclass(frozen=True, slots=True)
class DeviceBatches:
    """The device's batches in ingest's change feed, in time order."""

    ts: Floats  # epoch seconds: the batch's newest reading
    skew_s: Floats  # NaN where the batch had no clock reference
    messages: Floats  # the messages the device sent in it (a backlog array is one)


def judge(
    messages: DeviceMessages, batches: DeviceBatches, limits: HealthThresholds, now: float
) -> Judgement:
    """The episodes in ``messages`` and ``batches``, judged at ``now`` (epoch seconds)."""
    judgement = Judgement()
    limit_s = limits.offline_factor * limits.interval_s_of(messages.device_type)
    ts = messages.ts
    if len(ts):
        ends = np.append(ts[1:], np.nan)  # the message after each one; NaN after the last
        gaps = np.flatnonzero(np.isnan(ends) | (ends - ts > limit_s))
        for i in gaps.tolist():
            starts_at = float(ts[i]) + limit_s
            cleared = None if np.isnan(ends[i]) else float(ends[i])
            if cleared is None and starts_at > now:
                judgement.due_at = starts_at  # the last message is not that old yet
                continue
            judgement.episodes.append(Episode(OFFLINE, starts_at, starts_at, cleared, 1, 0.0))
    low = messages.battery_pct < limits.battery_pct
    judgement.episodes.extend(runs(ts, messages.battery_pct, low, BATTERY, worst=np.min))
    skewed = np.abs(batches.skew_s) > limits.clock_skew_s
    judgement.episodes.extend(
        e
        for e in runs(batches.ts, batches.skew_s, skewed, CLOCK, worst=_farthest)
        if e.count >= limits.clock_skew_batches
    )
    _judge_flooding(messages.device_type, batches, limits, now, judgement)
    judgement.episodes.sort(key=lambda e: (e.first_seen, e.kind))
    return judgement


def _farthest(skews: Floats) -> float:
    return float(skews[np.argmax(np.abs(skews))])


def _judge_flooding(
    device_type: str,
    batches: DeviceBatches,
    limits: HealthThresholds,
    now: float,
    judgement: Judgement,
) -> None:
    """Flooding spells: batches whose window (``flood_window_s`` up to them) holds too many."""
    window_s = limits.flood_window_s
    allowed = max(
        limits.flood_min_messages,
        limits.flood_factor * window_s / limits.flood_interval_s.get(device_type, 1.0),
    )
    ts = batches.ts
    total = np.cumsum(batches.messages)
    before = np.searchsorted(ts, ts - window_s, side="right")  # first batch inside the window
    in_window = total - np.where(before > 0, total[before - 1], 0.0)
    for spell in runs(ts, in_window, in_window > allowed, FLOODING):
        cleared_at = spell.cleared_at
        if cleared_at is None:  # still going, or the device fell silent after it
            quiet_at = spell.last_seen + window_s
            if quiet_at <= now:
                cleared_at = quiet_at
            else:
                judgement.due_at = min(quiet_at, judgement.due_at or quiet_at)
        judgement.episodes.append(dataclasses.replace(spell, cleared_at=cleared_at))
