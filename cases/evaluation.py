"""Monthly evaluation of units and districts from case histories.

For month M, the population of a unit (or district) is every case first dispatched in M that
the unit is responsible for at evaluation time (or that lies in the district):

- closure rate: closed by the month's end / population
- on-time closure rate: closed by the month's end no later than its deadline / cases due to
  close (deadline before the month's end, or closed by then)
- disposal rate: disposed at least once by the month's end / population
- on-time disposal rate: first disposed no later than the first dispatch's deadline / population
- accurate dispatch rate: dispatches in M to the unit that it did not return / dispatches in M
- rework rate: cases reopened after failed verification / cases closed
- mean disposal time: hours from first dispatch to first disposal, over disposed cases
Rankings order by on-time closure rate, then closure rate.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg


@dataclass(slots=True)
class _Tally:
    population: int = 0
    closed: int = 0
    closed_on_time: int = 0
    due: int = 0
    disposed: int = 0
    disposed_on_time: int = 0
    dispatches: int = 0
    dispatches_kept: int = 0
    reopened: int = 0
    disposal_hours: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Indicators:
    """One unit's or district's month."""

    scope: str  # "unit" or "district"
    name: str
    cases: int
    closure_rate: float | None
    on_time_closure_rate: float | None
    disposal_rate: float | None
    on_time_disposal_rate: float | None
    accurate_dispatch_rate: float | None
    rework_rate: float | None
    mean_disposal_hours: float | None
    rank: int = 0


#: Evaluation months are the city's (UTC+8).
_CITY_OFFSET: Final = timedelta(hours=8)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of ``YYYY-MM``, in UTC+8."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC) - _CITY_OFFSET
    except ValueError:
        msg = f"month {month!r} is not YYYY-MM"
        raise ValueError(msg) from None
    next_month = (start + _CITY_OFFSET + timedelta(days=32)).replace(day=1)
    return start, next_month.replace(tzinfo=UTC) - _CITY_OFFSET


def evaluate(conn: psycopg.Connection, month: str) -> list[Indicators]:
    """Every unit's and district's indicators for ``month`` (YYYY-MM, city time UTC+8)."""
    start, end = month_bounds(month)
    cases = conn.execute(
        "select c.case_id, c.unit_id, c.district_id, c.state, c.closed_at, c.deadline, "
        "e.at, e.action, e.unit_id, e.data from cases c join case_events e using (case_id) "
        "where c.case_id in (select case_id from case_events where action = 'dispatch' "
        "group by case_id having min(at) >= %s and min(at) < %s) order by e.event_id",
        (start, end),
    ).fetchall()
    histories: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in cases:
        histories[row[0]].append(row)
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    for rows in histories.values():
        _, unit, district, state, closed_at, deadline = rows[0][:6]
        events = [(at, action, target, data) for *_, at, action, target, data in rows]
        dispatches = [e for e in events if e[1] == "dispatch"]
        first_dispatch = dispatches[0][0]
        first_deadline = first_dispatch + timedelta(hours=(dispatches[0][3] or {})["deadline_h"])
        disposals = [e[0] for e in events if e[1] == "dispose" and e[0] < end]
        closed = state == "closed" and closed_at is not None and closed_at < end
        for key in (("unit", unit), ("district", district)):
            t = tallies[key]
            t.population += 1
            t.closed += closed
            t.due += closed or (deadline is not None and deadline < end)
            t.closed_on_time += closed and deadline is not None and closed_at <= deadline
            t.disposed += bool(disposals)
            t.disposed_on_time += bool(disposals) and disposals[0] <= first_deadline
            t.reopened += any(e[1] == "reopen" for e in events)
            if disposals:
                t.disposal_hours.append((disposals[0] - first_dispatch).total_seconds() / 3600)
        for i, (at, action, target, _) in enumerate(events):
            if action != "dispatch" or not start <= at < end:
                continue
            returned = any(
                e[1] == "return" for e in events[i + 1 :] if not _redispatched_before(events, i, e)
            )
            for key in (("unit", target), ("district", district)):
                tallies[key].dispatches += 1
                tallies[key].dispatches_kept += not returned
    results = [
        Indicators(
            scope=scope,
            name=name,
            cases=t.population,
            closure_rate=_ratio(t.closed, t.population),
            on_time_closure_rate=_ratio(t.closed_on_time, t.due),
            disposal_rate=_ratio(t.disposed, t.population),
            on_time_disposal_rate=_ratio(t.disposed_on_time, t.population),
            accurate_dispatch_rate=_ratio(t.dispatches_kept, t.dispatches),
            rework_rate=_ratio(t.reopened, t.closed),
            mean_disposal_hours=(
                round(sum(t.disposal_hours) / len(t.disposal_hours), 2)
                if t.disposal_hours
                else None
            ),
        )
        for (scope, name), t in tallies.items()
        if t.population or t.dispatches
    ]
    return _ranked(results)


def _redispatched_before(events: list[tuple[Any, ...]], i: int, later: tuple[Any, ...]) -> bool:
    """Whether another dispatch came between dispatch ``i`` and the ``later`` event."""
    return any(e[1] == "dispatch" and events[i][0] < e[0] < later[0] for e in events[i + 1 :])


def _ranked(results: list[Indicators]) -> list[Indicators]:
    def key(r: Indicators) -> tuple[float, float, str]:
        return (-(r.on_time_closure_rate or 0.0), -(r.closure_rate or 0.0), r.name)

    ranked = []
    for scope in ("district", "unit"):
        of_scope = sorted((r for r in results if r.scope == scope), key=key)
        ranked += [Indicators(**{**asdict(r), "rank": n}) for n, r in enumerate(of_scope, start=1)]
    return ranked


def store(conn: psycopg.Connection, month: str) -> list[Indicators]:
    """Evaluate ``month`` and replace its stored results (table ``evaluations``) in one go.

    Several processes may store the same month at once: the last to commit wins, each with a
    whole month.
    """
    results = evaluate(conn, month)
    with conn.transaction():
        conn.execute(
            "select pg_advisory_xact_lock(hashtext('evaluations'), hashtext(%s))", (month,)
        )
        conn.execute("delete from evaluations where month = %s", (month,))
        fields = list(Indicators.__dataclass_fields__)
        with conn.cursor().copy(
            f"copy evaluations (month, {', '.join(fields)}) from stdin"
        ) as copy:
            for r in results:
                copy.write_row((month, *(getattr(r, name) for name in fields)))
    return results


def months_to_store(now: datetime) -> tuple[str, str]:
    """The months a periodic refresh keeps current at ``now``: the last one and this one."""
    city_now = now.astimezone(UTC) + _CITY_OFFSET
    last = city_now.replace(day=1) - timedelta(days=1)
    return last.strftime("%Y-%m"), city_now.strftime("%Y-%m")


def as_csv(results: list[Indicators]) -> str:
    """The indicators as CSV, one row per unit or district."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(Indicators.__dataclass_fields__), lineterminator="\n"
    )
    writer.writeheader()
    for r in results:
        writer.writerow(asdict(r))
    return buffer.getvalue()


def as_json(results: list[Indicators]) -> str:
    """The indicators as a JSON array."""
    return json.dumps([asdict(r) for r in results], ensure_ascii=False, indent=2)
