"""Detections as people see them: listed, and acknowledged by whoever has looked at one.

An acknowledgement says that someone (a person at the terminal, a unit over the API) has seen a
detection: it records who, when and an optional note, once. It does not clear the detection (the
scene does that when the readings say so) and does not touch its case. A second acknowledgement
by the same person returns the detection unchanged; one by anyone else is refused, naming who
acknowledged it and when.

Who sees which detections (``caller``): operators and the city's coordinating office all; a
district's coordinating office those of its district; a unit those whose case is on its desk
(the case API's rule for the case). Operators and coordinating offices may acknowledge what they
see; a detection a caller may not see is answered as one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import class_row

from cases.access import OPERATOR, Caller, is_city_wide, visibility
from scenes.engine import SCENES

#: Every kind of detection the scenes make.
KINDS: Final = tuple(kind for scene in SCENES for kind in scene.category_of)


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection: an episode a scene found, its case, and its acknowledgement."""

    detection_id: int
    scene: str
    kind: str
    subject: str  # the component's code, or the device's id for its own faults
    device_id: str | None
    district: str | None
    severity: str
    first_seen: datetime
    last_seen: datetime
    cleared_at: datetime | None  # None: still active
    count: int
    case_id: int | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledged_note: str | None


class DetectionError(Exception):
    """A detection that cannot be acknowledged as asked."""


class DetectionNotFoundError(DetectionError):
    """No such detection, or none the caller may see."""


class AcknowledgeForbiddenError(DetectionError):
    """The caller sees the detection but may not acknowledge it (a unit)."""


class AlreadyAcknowledgedError(DetectionError):
    """Someone else acknowledged the detection already."""

    def __init__(self, detection: Detection) -> None:
        self.detection = detection
        at = detection.acknowledged_at
        super().__init__(
            f"detection {detection.detection_id} is already acknowledged by "
            f"{detection.acknowledged_by} at {at.isoformat(timespec='seconds') if at else '?'}"
        )


_COLUMNS = (
    "d.detection_id, d.scene, d.kind, d.subject, d.device_id, d.district, d.severity, "
    "d.first_seen, d.last_seen, d.cleared_at, d.count, d.case_id, d.acknowledged_at, "
    "d.acknowledged_by, d.acknowledged_note"
)


def _visibility(caller: Caller) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) on ``detections d`` rows ``caller`` may see."""
    if is_city_wide(caller):
        return "true", []
    if caller.role == "coordinator":
        return "d.district = %s", [caller.district_id]  # null for an office without a district
    where, params = visibility(caller)  # on the columns of cases: a unit's own cases
    return f"exists (select 1 from cases c where c.case_id = d.case_id and {where})", params


def may_acknowledge(caller: Caller) -> bool:
    """Whether ``caller`` may acknowledge the detections it sees: operators and offices."""
    return caller.role in ("operator", "coordinator")


def list_detections(
    conn: psycopg.Connection,
    *,
    active_only: bool = True,
    district: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    caller: Caller = OPERATOR,
) -> list[Detection]:
    """Detections ``caller`` may see, the most recently begun first.

    ``active_only``: those not cleared yet; ``district`` ('' for devices outside any) and ``kind``
    narrow them further.
    """
    where, params = _visibility(caller)
    clauses = [where]
    if active_only:
        clauses.append("d.cleared_at is null")
    if district is not None:
        clauses.append("coalesce(d.district, '') = %s")
        params.append(district)
    if kind is not None:
        clauses.append("d.kind = %s")
        params.append(kind)
    cur = conn.cursor(row_factory=class_row(Detection))
    return cur.execute(
        f"select {_COLUMNS} from detections d where {' and '.join(clauses)} "
        "order by d.first_seen desc, d.detection_id desc limit %s",
        (*params, limit),
    ).fetchall()


def get_detection(
    conn: psycopg.Connection, detection_id: int, caller: Caller = OPERATOR
) -> Detection:
    """One detection ``caller`` may see; ``DetectionNotFoundError`` otherwise."""
    where, params = _visibility(caller)
    cur = conn.cursor(row_factory=class_row(Detection))
    found = cur.execute(
        f"select {_COLUMNS} from detections d where d.detection_id = %s and {where}",
        (detection_id, *params),
    ).fetchone()
    if found is None:
        msg = f"no detection {detection_id}"
        raise DetectionNotFoundError(msg)
    return found


def acknowledge(
    conn: psycopg.Connection,
    detection_id: int,
    by: str,
    note: str | None = None,
    *,
    caller: Caller = OPERATOR,
) -> Detection:
    """Record that ``by`` has seen the detection (now, with ``note``); return the detection.

    Idempotent for the same ``by`` (the first acknowledgement stands, note included); refused
    for anyone else (``AlreadyAcknowledgedError``). ``caller`` decides what may be seen and
    acknowledged (the API's caller; the terminal is the operator).
    """
    if not by.strip():
        msg = "an acknowledgement names who acknowledges"
        raise ValueError(msg)
    get_detection(conn, detection_id, caller)
    if not may_acknowledge(caller):
        msg = f"{caller.unit_id} may not acknowledge detections (operators and offices may)"
        raise AcknowledgeForbiddenError(msg)
    cur = conn.cursor(row_factory=class_row(Detection))
    # one statement: of two acknowledging at once, the second finds the first's and is refused
    done = cur.execute(
        "update detections d set acknowledged_at = now(), acknowledged_by = %s, "
        "acknowledged_note = %s, updated_at = now() "
        f"where d.detection_id = %s and d.acknowledged_at is null returning {_COLUMNS}",
        (by, note, detection_id),
    ).fetchone()
    if done is not None:
        return done
    earlier = get_detection(conn, detection_id)
    if earlier.acknowledged_by == by:
        return earlier
    raise AlreadyAcknowledgedError(earlier)
