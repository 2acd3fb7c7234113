"""The manhole-cover dictionary: every monitored cover's state, and counts by owner and district.

A cover here is a component with a manhole sensor bound to it. Its state is what the active
detections on it and on its sensors say (``cover_displaced``, ``sensor_offline``, ..., joined
with ``+`` when several hold), or ``normal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

#: A cover's state: the kinds of the active detections on it or on its sensors.
_STATE = (
    "coalesce((select string_agg(distinct x.kind, '+' order by x.kind) from detections x "
    "where x.cleared_at is null and (x.subject = a.code or x.device_id in "
    "(select dv.device_id from devices dv where dv.asset_code = a.code))), 'normal')"
)


@dataclass(frozen=True, slots=True)
class CoverCase:
    """A case on a cover, newest first in a history."""

    case_id: int
    category: str
    state: str
    reported_at: datetime
    closed_at: datetime | None


def cover_state(conn: psycopg.Connection, code: str) -> tuple[str, list[CoverCase]]:
    """A cover's state and its case history (newest first)."""
    row = conn.execute(f"select {_STATE} from assets a where a.code = %s", (code,)).fetchone()
    state = row[0] if row else "normal"
    cases = conn.execute(
        "select case_id, category, state, reported_at, closed_at from cases where subject = %s "
        "order by reported_at desc, case_id desc",
        (code,),
    ).fetchall()
    return state, [CoverCase(*c) for c in cases]


def covers_summary(conn: psycopg.Connection, district: str | None = None) -> list[dict[str, Any]]:
    """Covers counted by district, owner unit and state (one row each), in that order."""
    rows = conn.execute(
        "select dd.district, coalesce(a.owner_unit_id, '') as owner, "
        f"{_STATE} as state, count(*) "
        "from assets a join devices d on d.asset_code = a.code and d.type = 'manhole' "
        "join device_districts dd on dd.device_id = d.device_id "
        "where %(district)s::text is null or dd.district = %(district)s "
        "group by 1, 2, 3 order by 1, 2, 3",
        {"district": district},
    ).fetchall()
    return [
        {"district": d, "owner_unit_id": o, "state": s, "covers": int(n)} for d, o, s, n in rows
    ]
