"""What every scene's judgement is made of: episodes in event time, and spans of equal state."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Episode:
    """One spell of a condition, in epoch seconds (event time)."""

    kind: str
    first_seen: float
    last_seen: float
    cleared_at: float | None
    count: int  # readings in the spell (spikes, for a loose cover)
    peak: float  # the largest tilt or water level seen


@dataclass(slots=True)
class Judgement:
    """What one cover's readings show."""

    episodes: list[Episode] = field(default_factory=list)
    due_at: float | None = None  # when a tilt still too young to count should be judged again


def runs(
    ts: Floats,
    values: Floats,
    over: npt.NDArray[np.bool_],
    kind: str,
    worst: Callable[[Floats], Any] = np.max,
) -> list[Episode]:
    """Spells where ``over`` holds, among readings that carry ``values`` (peak: ``worst``)."""
    known = ~np.isnan(values)
    ts, values, over = ts[known], values[known], over[known]
    episodes = []
    for start, stop in spans(over.astype(np.int8)):
        if over[start]:
            episodes.append(
                Episode(
                    kind,
                    float(ts[start]),
                    float(ts[stop - 1]),
                    float(ts[stop]) if stop < len(ts) else None,
                    stop - start,
                    float(worst(values[start:stop])),
                )
            )
    return episodes


def spans(state: npt.NDArray[np.integer]) -> list[tuple[int, int]]:
    """[start, stop) index spans of equal consecutive values."""
    if len(state) == 0:
        return []
    edges = np.flatnonzero(np.diff(state)) + 1
    bounds = [0, *edges.tolist(), len(state)]
    return list(itertools.pairwise(bounds))
