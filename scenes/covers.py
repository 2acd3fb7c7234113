"""The manhole-cover scene's judgement: one cover's readings, in event time, into episodes.

Pure functions over numpy arrays (no database): the engine reads a cover's readings from the last
reading at which it was entirely normal, so every episode found starts inside the arrays.

- displaced: tilt beyond ``tilt_deg`` for at least ``sustain_s``; open: the open switch, or tilt
  beyond ``open_tilt_deg``, as long. A tilt that ends sooner is a spike (a passing wheel).
- loose: ``loose_spikes`` spikes or more, each within ``loose_window_s`` of the one before; it
  clears ``loose_window_s`` after the last spike.
- water rising: water above ``water_cm``; it clears at the first reading below.

An episode ends at the first reading that is normal again (``cleared_at``); one still going has
``cleared_at`` None. A tilt still going that has not yet lasted ``sustain_s`` is no episode yet:
``Judgement.due_at`` says when to look again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from scenes.episodes import Episode, Floats, Judgement, runs, spans
from scenes.settings import CoverThresholds

DISPLACED: Final = "cover_displaced"
OPEN: Final = "cover_open"
LOOSE: Final = "cover_loose"
WATER: Final = "water_rising"

_NORMAL, _TILTED, _OPENED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class CoverReadings:
    """One cover's readings in event order; NaN where a reading did not carry the field."""

    ts: Floats  # epoch seconds
    tilt_deg: Floats
    cover_open: Floats  # 1.0, 0.0 or NaN
    water_cm: Floats


def judge(readings: CoverReadings, limits: CoverThresholds, now: float) -> Judgement:
    """The episodes in ``readings``, judged at ``now`` (epoch seconds)."""
    judgement = Judgement()
    _tilt_episodes(readings, limits, now, judgement)
    judgement.episodes.extend(
        runs(readings.ts, readings.water_cm, readings.water_cm > limits.water_cm, WATER)
    )
    judgement.episodes.sort(key=lambda e: (e.first_seen, e.kind))
    return judgement


def _tilt_episodes(r: CoverReadings, limits: CoverThresholds, now: float, out: Judgement) -> None:
    known = ~np.isnan(r.tilt_deg) | ~np.isnan(r.cover_open)
    ts, tilt, opened = r.ts[known], np.nan_to_num(r.tilt_deg[known]), r.cover_open[known] == 1.0
    state = np.where(
        opened | (tilt > limits.open_tilt_deg),
        _OPENED,
        np.where(tilt > limits.tilt_deg, _TILTED, _NORMAL),
    )
    spikes: list[float] = []
    for start, stop in spans(state):
        if state[start] == _NORMAL:
            continue
        cleared = float(ts[stop]) if stop < len(ts) else None
        lasted = (cleared if cleared is not None else now) - float(ts[start])
        if lasted < limits.sustain_s:
            if cleared is None:
                out.due_at = float(ts[start]) + limits.sustain_s
            else:
                spikes.append(float(ts[start]))
            continue
        out.episodes.append(
            Episode(
                OPEN if state[start] == _OPENED else DISPLACED,
                float(ts[start]),
                float(ts[stop - 1]),
                cleared,
                stop - start,
                float(tilt[start:stop].max()),
            )
        )
    out.episodes.extend(_loose(spikes, limits, now))


def _loose(spikes: list[float], limits: CoverThresholds, now: float) -> list[Episode]:
    """Groups of spikes, each within the window of the one before, long enough to count."""
    if len(spikes) < limits.loose_spikes:
        return []
    times = np.asarray(spikes)
    breaks = np.flatnonzero(np.diff(times) > limits.loose_window_s) + 1
    episodes = []
    for group in np.split(times, breaks):
        if len(group) >= limits.loose_spikes:
            clears = float(group[-1]) + limits.loose_window_s
            episodes.append(
                Episode(
                    LOOSE,
                    float(group[0]),
                    float(group[-1]),
                    clears if clears <= now else None,
                    len(group),
                    float(len(group)),
                )
            )
    return episodes
