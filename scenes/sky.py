"""When a street lamp should be lit: the astronomical clock at its place, with its plan's offsets.

A switching plan turns the lamp on ``on_offset_min`` after sunset and off ``off_offset_min``
after sunrise (negative: before), and may dim it at set local times. Sunrise and sunset come from
astral at the lamp's coordinates, rounded to a cluster of about a kilometre (sunset moves about
four seconds per kilometre east-west), once per cluster and day, never per reading. Where the sun
does not rise or set that day (polar night, midnight sun), the sun's elevation at solar noon says
whether the day is dark or light.

Around each switching time a lamp may be in either state for ``grace_s`` (light sensors, clocks
a minute or two off, times that move one to two minutes a day): ``expected`` says EITHER there.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from astral import Observer
from astral.sun import elevation, noon, sunrise, sunset
from pydantic import Field, model_validator

from scenes.episodes import Floats
from sections import Section

DARK: Final = 0  # daylight: the lamp should be off
LIT: Final = 1  # the plan wants it lit
EITHER: Final = 2  # close to a switching time: either is right

#: Coordinates are rounded to this many decimals per cluster (0.01 deg: about a kilometre).
_CLUSTER_DECIMALS: Final = 2


class DimStep(Section):
    """A dimming level between two local times (``end`` before ``start``: across midnight)."""

    start: time
    end: time
    pct: float = Field(gt=0, le=100)


class Plan(Section):
    """A switching plan: offsets from sunset and sunrise, and an optional dimming schedule."""

    on_offset_min: float = Field(
        default=0.0, ge=-180, le=180, description="On this long after sunset (negative: before)."
    )
    off_offset_min: float = Field(
        default=0.0, ge=-180, le=180, description="Off this long after sunrise (negative: before)."
    )
    dim: list[DimStep] = Field(
        default_factory=list, description="Dimmed levels by local time; 100% outside them."
    )

    @model_validator(mode="after")
    def _no_empty_night(self) -> Plan:
        if self.on_offset_min - self.off_offset_min >= 12 * 60:
            msg = "on_offset_min - off_offset_min leaves no lit night; check their signs"
            raise ValueError(msg)
        return self


@functools.lru_cache(maxsize=65_536)
def _sun_events(lat: float, lon: float, day: date) -> tuple[float | None, float | None, bool]:
    """Sunrise and sunset of ``day`` (UTC date) at a cluster, and whether the day is dark."""
    observer = Observer(latitude=lat, longitude=lon)
    events: list[float | None] = []
    for event in (sunrise, sunset):
        try:
            events.append(event(observer, day, tzinfo=UTC).timestamp())
        except ValueError:  # the sun does not cross the horizon that day
            events.append(None)
    dark = elevation(observer, noon(observer, day, tzinfo=UTC)) < 0
    return events[0], events[1], dark


def lit_intervals(lat: float, lon: float, plan: Plan, start: float, end: float) -> Floats:
    """[on, off) epoch-second intervals the plan wants the lamp lit, covering [start, end)."""
    lat, lon = round(lat, _CLUSTER_DECIMALS), round(lon, _CLUSTER_DECIMALS)
    first = datetime.fromtimestamp(start, tz=UTC).date() - timedelta(days=2)
    days = int((end - start) // 86_400) + 5
    events: list[tuple[float, bool]] = []
    for n in range(days):
        day = first + timedelta(days=n)
        rise, set_, dark = _sun_events(lat, lon, day)
        if rise is not None:
            events.append((rise + plan.off_offset_min * 60, False))
        if set_ is not None:
            events.append((set_ + plan.on_offset_min * 60, True))
        if rise is None or set_ is None:  # polar: the day's own state, from its solar noon
            midday = _sun_noon(lat, lon, day)
            events.append((midday, dark))
    events.sort()
    intervals: list[tuple[float, float]] = []
    lit_since: float | None = None
    for at, lit in events:
        if lit and lit_since is None:
            lit_since = at
        elif not lit and lit_since is not None:
            intervals.append((lit_since, at))
            lit_since = None
    if lit_since is not None:
        intervals.append((lit_since, float("inf")))
    return np.array(intervals, dtype=np.float64).reshape(-1, 2)


@functools.lru_cache(maxsize=65_536)
def _sun_noon(lat: float, lon: float, day: date) -> float:
    return noon(Observer(latitude=lat, longitude=lon), day, tzinfo=UTC).timestamp()


def expected(ts: Floats, intervals: Floats, grace_s: float) -> npt.NDArray[np.int8]:
    """DARK, LIT or EITHER at each time of ``ts`` (sorted or not)."""
    if not len(intervals):
        return np.full(len(ts), DARK, dtype=np.int8)
    starts, ends = intervals[:, 0], intervals[:, 1]
    at = np.searchsorted(starts, ts, side="right") - 1
    inside = (at >= 0) & (ts < ends[np.maximum(at, 0)])
    state = np.where(inside, LIT, DARK).astype(np.int8)
    if len(starts):
        edges = np.sort(intervals.ravel())
        edges = edges[np.isfinite(edges)]
        if len(edges):
            pos = np.searchsorted(edges, ts)
            before = np.abs(ts - edges[np.maximum(pos - 1, 0)])
            after = np.abs(edges[np.minimum(pos, len(edges) - 1)] - ts)
            state[np.minimum(before, after) <= grace_s] = EITHER
    return state


def dim_pct(ts: Floats, plan: Plan, zone: ZoneInfo) -> Floats:
    """The plan's dimming level at each time of ``ts`` (100 where it sets none)."""
    level = np.full(len(ts), 100.0)
    if not plan.dim or not len(ts):
        return level
    # the zone's offset once per hour of the readings (it moves only at a DST change)
    hours = np.floor(ts / 3600)
    unique, index = np.unique(hours, return_inverse=True)
    offsets = np.array([_utc_offset_s(zone, float(h) * 3600) for h in unique], dtype=np.float64)[
        index
    ]
    local_s = (ts + offsets) % 86_400
    for step in plan.dim:
        a, b = _seconds(step.start), _seconds(step.end)
        within = (local_s >= a) & (local_s < b) if a <= b else (local_s >= a) | (local_s < b)
        level[within] = step.pct
    return level


def _utc_offset_s(zone: ZoneInfo, epoch_s: float) -> float:
    offset = datetime.fromtimestamp(epoch_s, tz=UTC).astimezone(zone).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def _seconds(at: time) -> float:
    return at.hour * 3600 + at.minute * 60 + at.second
