"""Fault scenarios: which faults to inject, by rate or one by one, and their ground truth.

A scenario is a TOML file::

    [rates]                      # share of the candidate subjects that get the fault
    cover_displaced = 0.02
    lamp_out = 0.05

    [[fault]]                    # or one fault on one subject
    kind = "cabinet_outage"
    subject = "cab-2101020220000001"
    start_min = 10
    duration_min = 30

Every injected fault becomes one ground-truth line (JSON): kind, subject, subject type, start and
end (RFC 3339, UTC), so detection quality can be scored exactly.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SubjectType = Literal["manhole", "light", "cabinet", "sweeper", "segment"]


@dataclass(frozen=True, slots=True)
class FaultKind:
    """A kind of fault, what it applies to, and how long it lasts by default (seconds).

    ``subtle``: a slow or small change that stays inside every threshold of the rule scenes as
    configured by default (the models' to find).
    """

    subject_type: SubjectType
    min_s: float
    max_s: float
    subtle: bool = False


_DAY = 86_400.0

FAULT_KINDS: dict[str, FaultKind] = {
    "cover_displaced": FaultKind("manhole", 600, 3600),
    "cover_open": FaultKind("manhole", 300, 1800),
    "cover_loose": FaultKind("manhole", 600, 1800),
    "water_rising": FaultKind("manhole", 900, 2700),
    "sensor_offline": FaultKind("manhole", 1800, 7200),
    "battery_drain": FaultKind("manhole", 1800, 7200),
    "clock_skew": FaultKind("manhole", 10800, 21600),  # three heartbeats or more
    "flooding": FaultKind("manhole", 1800, 3600),
    "lamp_out": FaultKind("light", 1800, 7200),
    "day_burner": FaultKind("light", 1800, 7200),
    "lamp_degraded": FaultKind("light", 1800, 7200),
    "low_power_factor": FaultKind("light", 1800, 7200),
    "cabinet_outage": FaultKind("cabinet", 900, 3600),
    "segment_skipped": FaultKind("segment", 0, 0),
    "sweeping_too_fast": FaultKind("segment", 0, 0),
    "brushes_up": FaultKind("segment", 0, 0),
    "gps_gap": FaultKind("sweeper", 60, 300),
    # subtle: days long, every reading inside the rules' thresholds
    "tilt_drift": FaultKind("manhole", 2 * _DAY, 4 * _DAY, subtle=True),
    "cover_rocking": FaultKind("manhole", 1 * _DAY, 3 * _DAY, subtle=True),
    "water_slow_rise": FaultKind("manhole", 2 * _DAY, 4 * _DAY, subtle=True),
    "battery_fast_drain": FaultKind("manhole", 2 * _DAY, 5 * _DAY, subtle=True),
    "lamp_slow_degrade": FaultKind("light", 3 * _DAY, 6 * _DAY, subtle=True),
    "gps_intermittent": FaultKind("sweeper", 1 * _DAY, 3 * _DAY, subtle=True),
    "brushes_ineffective": FaultKind("sweeper", 1 * _DAY, 3 * _DAY, subtle=True),
}
#: The subtle kinds (``FaultKind.subtle``).
SUBTLE_KINDS = tuple(kind for kind, spec in FAULT_KINDS.items() if spec.subtle)


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names the key and the value."""


class _FaultEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    subject: str
    start_min: float = Field(ge=0)
    duration_min: float = Field(default=0, ge=0)


class Scenario(BaseModel):
    """Fault rates per kind and explicit faults."""

    model_config = ConfigDict(extra="forbid")

    rates: dict[str, float] = Field(default_factory=dict)
    fault: list[_FaultEntry] = Field(default_factory=list)

    def model_post_init(self, _context: object) -> None:
        """Refuse unknown kinds and rates outside [0, 1]."""
        for kind, rate in self.rates.items():
            if kind not in FAULT_KINDS:
                msg = f"rates.{kind}: unknown fault kind; known: {', '.join(FAULT_KINDS)}"
                raise ScenarioError(msg)
            if not 0 <= rate <= 1:
                msg = f"rates.{kind} = {rate}: a rate is a share between 0 and 1"
                raise ScenarioError(msg)
        for entry in self.fault:
            if entry.kind not in FAULT_KINDS:
                msg = f"fault kind {entry.kind!r} is unknown; known: {', '.join(FAULT_KINDS)}"
                raise ScenarioError(msg)


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        return Scenario.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        msg = f"{path}: {exc}"
        raise ScenarioError(msg) from None


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault (times in epoch seconds)."""

    kind: str
    subject: str
    start: float
    end: float
    detectable: bool = True  # False: it hid too little for a scene to tell (a short silence)

    @property
    def subject_type(self) -> SubjectType:
        """What the subject names."""
        return FAULT_KINDS[self.kind].subject_type

    def truth_line(self) -> str:
        """The ground-truth record of this fault, as one line of JSON."""
        return json.dumps(
            {
                "kind": self.kind,
                "subject": self.subject,
                "subject_type": self.subject_type,
                "start": _iso(self.start),
                "end": _iso(self.end),
                "detectable": self.detectable,
            }
        )


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")


def plan_faults(
    scenario: Scenario,
    subjects: dict[SubjectType, list[str]],
    start: float,
    end: float,
    seed: int,
) -> list[Fault]:
    """Choose the faults of a run: explicit ones, then ``rates`` over the candidates."""
    rng = np.random.default_rng(seed + 7919)
    faults = [
        Fault(
            e.kind, e.subject, start + e.start_min * 60, start + (e.start_min + e.duration_min) * 60
        )
        for e in scenario.fault
    ]
    taken = {(f.subject_type, f.subject) for f in faults}
    for kind, rate in sorted(scenario.rates.items()):
        spec = FAULT_KINDS[kind]
        pool = [
            s for s in subjects.get(spec.subject_type, []) if (spec.subject_type, s) not in taken
        ]
        count = min(len(pool), math.ceil(rate * len(subjects.get(spec.subject_type, []))))
        for index in sorted(rng.choice(len(pool), count, replace=False)) if count else []:
            subject = pool[int(index)]
            duration = float(rng.uniform(spec.min_s, spec.max_s))
            latest = max(start, end - duration)
            begin = float(rng.uniform(start, latest)) if latest > start else start
            faults.append(Fault(kind, subject, round(begin, 3), round(begin + duration, 3)))
            taken.add((spec.subject_type, subject))
    return faults
