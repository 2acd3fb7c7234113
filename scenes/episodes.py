"""What every scene's judgement is made of: devices, episodes in event time, spans of states."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


class Device(NamedTuple):
    """What a run knows of a device it judges."""

    type: str
    asset_code: str | None
    limits: Any  # the scene's thresholds in force for its component (a ``Tunable``)


@dataclass(frozen=True, slots=True)
class Episode:
    """One spell of a condition, in epoch seconds (event time)."""

    kind: str
    first_seen: float
    last_seen: float
    cleared_at: float | None
    count: int  # readings in the spell (spikes, for a loose cover)
    peak: float  # the largest tilt or water level seen
    segment_id: str | None = None  # a road segment's finding: its subject, whoever drove it
    #: More evidence for the detection (a model's score and the features that drove it).
    detail: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(slots=True)
class Judgement:
    """What one device's readings show."""

    episodes: list[Episode] = field(default_factory=list)
    due_at: float | None = None  # when a spell still too young to count is judged again


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


def blocks(rows: list[Any]) -> Iterator[tuple[str, Any]]:
    """Rows ordered by device id (first column) as (device id, float array of the others)."""
    if not rows:
        return
    table = np.array(
        [[np.nan if v is None else v for v in row[1:]] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(rows[0]) - 1)
    ids = [r[0] for r in rows]
    bounds = [0, *(i for i in range(1, len(ids)) if ids[i] != ids[i - 1]), len(ids)]
    for start, stop in itertools.pairwise(bounds):
        yield ids[start], table[start:stop]
