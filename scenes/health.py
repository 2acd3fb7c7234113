"""The device-health scene's judgement: one device's messages, in event time, into episodes.

- offline: no message for ``offline_factor`` times the device type's expected interval. The
  episode starts exactly when that became true (the last message plus the limit), not when a run
  noticed it, and ends at the next message; one still going has ``cleared_at`` None, and a
  device that has not yet been silent that long leaves a deadline (``Judgement.due_at``) at the
  moment it would be.
- battery low: battery below ``battery_pct``; it clears at the first reading above.

The engine reads a device's messages from the last one at or before its window, so a silence
that began before the window is judged from its start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from scenes.episodes import Episode, Floats, Judgement, runs
from scenes.settings import HealthThresholds

OFFLINE: Final = "sensor_offline"
BATTERY: Final = "battery_drain"


@dataclass(frozen=True, slots=True)
class DeviceMessages:
    """One device's messages in event order; NaN where a message carried no battery figure."""

    device_type: str
    ts: Floats  # epoch seconds
    battery_pct: Floats


def judge(messages: DeviceMessages, limits: HealthThresholds, now: float) -> Judgement:
    """The episodes in ``messages``, judged at ``now`` (epoch seconds)."""
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
    judgement.episodes.sort(key=lambda e: (e.first_seen, e.kind))
    return judgement
