"""Scoring detections against the simulator's ground truth (SCENES.md, "Scoring").

A detection matches a fault when kind and device agree and the detection's episode (first seen
to cleared, or on) overlaps the fault's interval extended by ``allowed_delay_s`` (a scene judges
some kinds only after a while: offline after 1.5 heartbeats, water once it has risen past the
limit). Per kind: precision = matched detections / detections; recall = detected faults / faults;
delay = first seen - fault start, over the detected faults. Faults the ground truth marks
undetectable (an offline spell shorter than the offline limit) are scored apart: they count
neither for nor against recall, and a detection matching one is no false alarm.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import psycopg

#: How long after its fault ended a detection may begin and still match it, by default: offline
#: is judged only after 1.5 heartbeats.
ALLOWED_DELAY_S: Final = 7200.0


@dataclass(frozen=True, slots=True)
class Interval:
    """A fault or a detection: kind, device, and a span in epoch seconds (end None: going on)."""

    kind: str
    device_id: str
    start: float
    end: float | None
    detectable: bool = True


@dataclass(frozen=True, slots=True)
class KindScore:
    """How a scene did on one kind of fault."""

    kind: str
    faults: int  # detectable ones
    undetectable: int
    detections: int
    precision: float | None  # None: no detection of this kind
    recall: float | None  # None: no fault of this kind
    delay_p50_s: float | None
    delay_p99_s: float | None


class TruthError(ValueError):
    """A ground-truth file that cannot be read; the message names the line."""


def read_truth(path: Path) -> list[Interval]:
    """The faults of a ground-truth file (JSON Lines, as `cityops sim run` writes it)."""
    faults = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row: dict[str, Any] = json.loads(line)
            faults.append(
                Interval(
                    str(row["kind"]),
                    str(row["subject"]),
                    datetime.fromisoformat(row["start"]).timestamp(),
                    datetime.fromisoformat(row["end"]).timestamp(),
                    bool(row.get("detectable", True)),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"{path}:{number}: not a ground-truth line ({exc})"
            raise TruthError(msg) from None
    return faults


def stored_detections(
    conn: psycopg.Connection,
    since: datetime | None,
    until: datetime | None,
    *,
    devices: Collection[str] | None = None,
) -> list[Interval]:
    """The detections of ``devices`` (default all) whose episode began in [since, until).

    Either bound may be open (None).
    """
    rows = conn.execute(
        # a road segment's findings are the segment's (no device), as its faults are
        "select kind, coalesce(device_id, subject), extract(epoch from first_seen)::float8, "
        "extract(epoch from cleared_at)::float8 from detections "
        "where (%(since)s::timestamptz is null or first_seen >= %(since)s) "
        "and (%(until)s::timestamptz is null or first_seen < %(until)s) "
        "and (%(devices)s::text[] is null or coalesce(device_id, subject) = any(%(devices)s))",
        {
            "since": since,
            "until": until,
            "devices": None if devices is None else sorted(devices),
        },
    ).fetchall()
    return [Interval(kind, device, start, end) for kind, device, start, end in rows]


def score(
    faults: list[Interval], detections: list[Interval], *, allowed_delay_s: float
) -> list[KindScore]:
    """Precision, recall and delay per kind, over every kind in either list."""
    scores = []
    for kind in sorted({f.kind for f in faults} | {d.kind for d in detections}):
        all_of_kind = [f for f in faults if f.kind == kind]
        of_kind = [f for f in all_of_kind if f.detectable]
        found = [d for d in detections if d.kind == kind]
        by_device: dict[str, list[Interval]] = {}
        for d in found:
            by_device.setdefault(d.device_id, []).append(d)
        matched: set[Interval] = set()
        delays = []
        for f in all_of_kind:
            hits = [d for d in by_device.get(f.device_id, []) if _overlaps(d, f, allowed_delay_s)]
            matched.update(hits)
            if hits and f.detectable:
                delays.append(max(0.0, min(d.start for d in hits) - f.start))
        scores.append(
            KindScore(
                kind,
                len(of_kind),
                len(all_of_kind) - len(of_kind),
                len(found),
                len(matched) / len(found) if found else None,
                len(delays) / len(of_kind) if of_kind else None,
                float(np.percentile(delays, 50)) if delays else None,
                float(np.percentile(delays, 99)) if delays else None,
            )
        )
    return scores


def _overlaps(detection: Interval, fault: Interval, allowed_delay_s: float) -> bool:
    fault_end = (fault.end if fault.end is not None else float("inf")) + allowed_delay_s
    detection_end = detection.end if detection.end is not None else float("inf")
    return detection.start <= fault_end and fault.start <= detection_end
