"""The manhole-cover dictionary: every monitored cover's state, and counts by owner and district.

A cover here is a component with a manhole sensor bound to it. Its state is what the active
detections on it and on its sensors say (``cover_displaced``, ``sensor_offline``, ..., joined
with ``+`` when several hold), or ``normal``.

Who sees which components (``caller``): operators and the city's coordinating office all; a
district's coordinating office those of its district; a unit those it owns or maintains. A case
in a component's history is shown to those who may see the case (``cases.access``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from cases.access import OPERATOR, Caller, is_city_wide, sees
from cases.service import district_of_region
from devices.registry import show_asset

#: A cover's state: the kinds of the active detections on it or on its sensors.
_STATE = (
    "coalesce((select string_agg(distinct x.kind, '+' order by x.kind) from detections x "
    "where x.cleared_at is null and (x.subject = a.code or x.device_id in "
    "(select dv.device_id from devices dv where dv.asset_code = a.code))), 'normal')"
)


def _scope(caller: Caller) -> tuple[str | None, str | None] | None:
    """Which components ``caller`` sees, as (district, unit); None: none at all.

    The components in ``district`` that ``unit`` owns or maintains, each where not None; an
    office without a district sees none.
    """
    if is_city_wide(caller):
        return None, None
    if caller.role == "coordinator":
        return None if caller.district_id is None else (caller.district_id, None)
    return None, caller.unit_id


@dataclass(frozen=True, slots=True)
class CoverCase:
    """A case on a cover, newest first in a history."""

    case_id: int
    category: str
    state: str
    reported_at: datetime
    closed_at: datetime | None
    unit_id: str | None  # responsible now
    district_id: str | None


def cover_state(conn: psycopg.Connection, code: str) -> tuple[str, list[CoverCase]]:
    """A cover's state and its case history (newest first)."""
    row = conn.execute(f"select {_STATE} from assets a where a.code = %s", (code,)).fetchone()
    state = row[0] if row else "normal"
    cases = conn.execute(
        "select case_id, category, state, reported_at, closed_at, unit_id, district_id "
        "from cases where subject = %s order by reported_at desc, case_id desc",
        (code,),
    ).fetchall()
    return state, [CoverCase(*c) for c in cases]


@dataclass(frozen=True, slots=True)
class CoverEntry:
    """A component's entry in the dictionary as a caller sees it."""

    code: str
    category: str
    name: str | None
    district: str | None
    competent_unit_id: str | None
    owner_unit_id: str | None
    maintainer_unit_id: str | None
    devices: list[str]  # the sensors bound to it
    state: str
    cases: list[CoverCase]  # those the caller may see, newest first


def visible_component(
    conn: psycopg.Connection, code: str, caller: Caller = OPERATOR
) -> dict[str, Any] | None:
    """The component ``code`` as ``show_asset`` gives it, with its ``district``; None if unseen.

    None as well for a component that does not exist: the caller cannot tell the two apart.
    """
    asset = show_asset(conn, code)
    if asset is None:
        return None
    scope = _scope(caller)
    if scope is None:
        return None
    district = district_of_region(conn, asset["region_id"])
    only_district, only_unit = scope
    units = (None, asset["owner_unit_id"], asset["maintainer_unit_id"])
    if only_district not in (None, district) or only_unit not in units:
        return None
    return {**asset, "district": district}


def cover_entry(
    conn: psycopg.Connection, code: str, caller: Caller = OPERATOR
) -> CoverEntry | None:
    """The component ``code`` with its sensors, state and case history; None if unseen."""
    asset = visible_component(conn, code, caller)
    if asset is None:
        return None
    state, cases = cover_state(conn, code)
    return CoverEntry(
        code=code,
        category=asset["category"],
        name=asset["name"],
        district=asset["district"],
        competent_unit_id=asset["competent_unit_id"],
        owner_unit_id=asset["owner_unit_id"],
        maintainer_unit_id=asset["maintainer_unit_id"],
        devices=asset["devices"],
        state=state,
        cases=[
            c for c in cases if sees(caller, {"unit_id": c.unit_id, "district_id": c.district_id})
        ],
    )


def covers_summary(
    conn: psycopg.Connection, district: str | None = None, *, caller: Caller = OPERATOR
) -> list[dict[str, Any]]:
    """Covers ``caller`` sees, counted by district, owner unit and state (one row each)."""
    scope = _scope(caller)
    if scope is None:
        return []
    only_district, unit = scope
    if only_district is not None:
        if district not in (None, only_district):
            return []
        district = only_district
    rows = conn.execute(
        "select dd.district, coalesce(a.owner_unit_id, '') as owner, "
        f"{_STATE} as state, count(*) "
        "from assets a join devices d on d.asset_code = a.code and d.type = 'manhole' "
        "join device_districts dd on dd.device_id = d.device_id "
        "where (%(district)s::text is null or dd.district = %(district)s) "
        "and (%(unit)s::text is null or %(unit)s in (a.owner_unit_id, a.maintainer_unit_id)) "
        "group by 1, 2, 3 order by 1, 2, 3",
        {"district": district, "unit": unit},
    ).fetchall()
    return [
        {"district": d, "owner_unit_id": o, "state": s, "covers": int(n)} for d, o, s, n in rows
    ]
