"""Cases in the database: reporting, routing, lifecycle actions, escalation.

Who may see and do what is ``cases.access``.

Every change goes through ``lifecycle.apply``: the row is updated to what the event makes of it
and the event is appended in the same transaction, so the row is always its history's fold.

Errors (all CaseError)::

    CaseError
    ├── CaseNotFoundError        no such case, or the caller may not see it (HTTP 404)
    ├── ForbiddenActionError     the caller sees the case but may not do this (HTTP 403)
    ├── IllegalActionError       the state does not allow it; names state and allowed (HTTP 409)
    └── BadReportError           unknown category, no subject, nothing to route to (HTTP 422)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from shapely.geometry import Point, shape

from cases.access import OPERATOR, SYSTEM, Caller, dispatch_district, may, sees, visibility
from cases.catalog import Catalog, Category
from cases.lifecycle import (
    Action,
    CaseState,
    Event,
    IllegalTransitionError,
    State,
    allowed_actions,
    apply,
    next_state,
)

Source = Literal["sensor", "inspector", "citizen"]
_CASE_COLUMNS = tuple(CaseState.__dataclass_fields__)
_ATTEMPTS = 3  # optimistic tries before an action locks the case
#: A new case and its 'open' event in one statement (nothing when one is already open).
_OPEN = (
    "with opened as (insert into cases (category, subject, source, state, unit_id, "
    "routed_unit_id, district_id, severity, description, photo_url, lat, lon, reported_at, "
    "updated_at) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "on conflict (subject, category) where state not in ('closed', 'cancelled') do nothing "
    "returning *), "
    "event as (insert into case_events (case_id, at, actor, action, to_state, unit_id, note) "
    "select case_id, %s, %s, 'open', 'reported', %s, %s from opened returning event_id) "
    "select opened.*, event.event_id as report_id from opened, event"
)
#: One lifecycle step: the new row (only if still at the version read) and its event.
_WRITE = (
    f"with moved as (update cases set {', '.join(f'{c} = %s' for c in _CASE_COLUMNS)}, "
    "version = version + 1 where case_id = %s and version = %s returning case_id) "
    "insert into case_events (case_id, at, actor, action, from_state, to_state, unit_id, note, "
    "photo_url, data) select case_id, %s, %s, %s, %s, %s, %s, %s, %s, %s from moved "
    "returning event_id"
)


class CaseError(Exception):
    """Base of the case errors."""


class CaseNotFoundError(CaseError):
    """No such case, or not one the caller may see."""


class ForbiddenActionError(CaseError):
    """The caller may see the case but not do this to it."""


class IllegalActionError(CaseError):
    """The case's state does not allow the action."""

    def __init__(self, error: IllegalTransitionError) -> None:
        super().__init__(str(error))
        self.state = error.state.value
        self.allowed = error.allowed


class _StaleCaseError(CaseError):
    """The case changed between reading and writing it (the caller decides again)."""


class BadReportError(CaseError):
    """A report the platform cannot turn into a case."""


def district_of_region(conn: psycopg.Connection, region_id: str | None) -> str | None:
    """The district a region (grid, street or district) lies in."""
    row = conn.execute(
        "with recursive up as (select region_id, parent_id, level from regions where region_id = %s"
        " union all select r.region_id, r.parent_id, r.level from regions r "
        "join up on r.region_id = up.parent_id) select region_id from up where level = 'district'",
        (region_id,),
    ).fetchone()
    return row[0] if row else None


def district_at(conn: psycopg.Connection, lat: float, lon: float) -> str | None:
    """The district whose boundary contains the point."""
    point = Point(lon, lat)
    for region_id, boundary in conn.execute(
        "select region_id, boundary from regions where level = 'district' and boundary is not null"
    ):
        if shape(boundary).covers(point):
            return str(region_id)
    return None


@dataclass(frozen=True, slots=True)
class _Details:
    """What an action carries besides its name."""

    note: str | None
    unit_id: str | None
    photo_url: str | None


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a report's subject is, and who answers for it."""

    subject: str
    district: str | None
    owner: str | None
    maintainer: str | None
    lat: Any
    lon: Any


@dataclass(frozen=True, slots=True)
class Report:
    """What a sensor scene, an inspector or a citizen reports."""

    category: str
    source: Source
    asset_code: str | None = None
    device_id: str | None = None
    segment_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    description: str | None = None
    photo_url: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a reporter learns: a reference to its report, and the case only if it may see it.

    A report joins the open case on its subject whoever is responsible for it; telling the
    reporter that case (or whether it was new) would reveal another unit's work.
    """

    report_id: int  # the id of the report's event ('open' or 'report') in case_events
    case_id: int | None = None
    created: bool | None = None


class CaseService:
    """Case operations over one connection (each call is one transaction)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        catalog: Catalog,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._conn = conn
        self._catalog = catalog
        self._clock = clock

    # -- reporting and routing --------------------------------------------------------------

    def report(self, report: Report, caller: Caller = OPERATOR) -> Receipt:
        """Open a case, or add the report to the open one; the caller learns what it may see.

        Sensor reports are registered and dispatched at once; inspectors' and citizens' wait at
        ``reported`` for the district's coordinating office.
        """
        try:
            category = self._catalog.get(report.category)
        except KeyError as exc:
            raise BadReportError(str(exc).strip("'\"")) from None
        if report.source != "sensor":
            # one statement makes the case and its first event: no transaction needed
            case, created, report_id = self._open(report, category, caller.unit_id)
        else:
            with self._conn.transaction():  # a sensor case is opened, registered, dispatched
                case, created, report_id = self._open(report, category, caller.unit_id)
                if created:
                    case_id = case["case_id"]
                    registered, _ = self._record(case_id, Action.REGISTER, SYSTEM, row=case)
                    routed = registered["routed_unit_id"]
                    case, _ = self._record(
                        case_id, Action.DISPATCH, SYSTEM, unit_id=routed, row=registered
                    )
        if not sees(caller, case):
            return Receipt(report_id)
        return Receipt(report_id, int(case["case_id"]), created)

    def join(self, case_id: int, report: Report, caller: Caller = OPERATOR) -> int:
        """Add ``report`` to an open case it was not filed under; return its event id.

        Another finding on a subject whose case a crew is working (a displaced cover now reads
        open) joins that case. IllegalActionError once the case is finished.
        """
        with self._conn.transaction():
            _, report_id = self._record(
                case_id, Action.REPORT, caller.unit_id, note=report.description
            )
        return report_id

    def _open(
        self, report: Report, category: Category, actor: str
    ) -> tuple[dict[str, Any], bool, int]:
        """Insert the case with its 'open' event, or add a 'report' event to the open one.

        Returns the case row, whether it is new, and the id of the report's event.
        """
        place = self._locate(report)
        subject, district, lat, lon = place.subject, place.district, place.lat, place.lon
        units = self._units_of(district)
        office = units.get("coordinating")
        # territory first, responsibility follows authority: the component's owner (or, for a
        # device's own faults, its maintainer), or the district's unit of the category's kind;
        # none: the coordinating office
        if category.responsible == "owner":
            responsible = place.owner
        elif category.responsible == "maintainer":
            responsible = place.maintainer
        else:
            responsible = units.get(category.responsible)
        routed = responsible or office
        if office is None or routed is None:
            msg = f"no coordinating office for district {district!r}; import the city's units"
            raise BadReportError(msg)
        now = self._clock()
        for _ in range(_ATTEMPTS):
            row = (
                self._conn.cursor(row_factory=dict_row)
                .execute(
                    _OPEN,
                    (
                        category.code,
                        subject,
                        report.source,
                        State.REPORTED,
                        office,
                        routed,
                        district,
                        category.severity,
                        report.description,
                        report.photo_url,
                        lat,
                        lon,
                        now,
                        now,
                        now,
                        actor,
                        office,
                        report.description,
                    ),
                )
                .fetchone()
            )
            if row is not None:
                return row, True, int(row.pop("report_id"))
            existing = self._conn.execute(
                "select case_id from cases where subject = %s and category = %s "
                "and state not in ('closed', 'cancelled')",
                (subject, category.code),
            ).fetchone()
            if existing is None:
                continue  # the open case was finished meanwhile: open a new one
            with self._conn.transaction():
                after, report_id = self._record(
                    int(existing[0]), Action.REPORT, actor, note=report.description
                )
            return after, False, report_id
        msg = f"could not open a case on {subject}; try again"
        raise CaseError(msg)

    def _locate(self, report: Report) -> _Place:
        """Subject, district, owner and maintainer units, and position of a report's subject."""
        if report.asset_code:
            row = self._conn.execute(
                "select region_id, owner_unit_id, maintainer_unit_id, lat, lon from assets "
                "where code = %s",
                (report.asset_code,),
            ).fetchone()
            if row is None:
                msg = f"no component with code {report.asset_code}"
                raise BadReportError(msg)
            district = district_of_region(self._conn, row[0])
            return _Place(report.asset_code, district, row[1], row[2], row[3], row[4])
        if report.device_id:
            row = self._conn.execute(
                "select d.asset_code, coalesce(a.region_id, d.region_id), a.owner_unit_id, "
                "a.maintainer_unit_id, a.lat, a.lon from devices d "
                "left join assets a on a.code = d.asset_code where d.device_id = %s",
                (report.device_id,),
            ).fetchone()
            if row is None:
                msg = f"no device {report.device_id}"
                raise BadReportError(msg)
            district = district_of_region(self._conn, row[1])
            return _Place(row[0] or report.device_id, district, row[2], row[3], row[4], row[5])
        if report.segment_id:
            row = self._conn.execute(
                "select region_id from road_segments where segment_id = %s", (report.segment_id,)
            ).fetchone()
            if row is None:
                msg = f"no road segment {report.segment_id}"
                raise BadReportError(msg)
            district = district_of_region(self._conn, row[0])
            return _Place(report.segment_id, district, None, None, None, None)
        if report.lat is not None and report.lon is not None:
            district = district_at(self._conn, report.lat, report.lon)
            if district is None:
                msg = f"({report.lat}, {report.lon}) lies in no district of the city"
                raise BadReportError(msg)
            subject = f"{report.lat:.5f},{report.lon:.5f}"
            return _Place(subject, district, None, None, report.lat, report.lon)
        msg = "a report needs an asset code, a device, a road segment or a position"
        raise BadReportError(msg)

    def _units_of(self, district: str | None) -> dict[str, str]:
        """The district's units by kind (the first by id where a kind has several)."""
        rows = self._conn.execute(
            "select kind, min(unit_id) from units where region_id = %s and level = 'district' "
            "group by kind",
            (district,),
        ).fetchall()
        return dict(rows)

    # -- lifecycle --------------------------------------------------------------------------

    def act(
        self,
        case_id: int,
        action: Action,
        caller: Caller,
        *,
        note: str | None = None,
        unit_id: str | None = None,
        photo_url: str | None = None,
    ) -> dict[str, Any]:
        """Do ``action`` to a case as ``caller``; return the case after it.

        Optimistic: read the case, decide, then write event and row in one statement that
        applies only to the version read; if the case moved meanwhile, decide again. After
        ``_ATTEMPTS`` such tries the case is locked for the last one, so an action always lands.
        """
        details = _Details(note, unit_id, photo_url)
        for _ in range(_ATTEMPTS):
            with contextlib.suppress(_StaleCaseError):
                return self._act_once(case_id, action, caller, details, lock=False)
        with self._conn.transaction():
            return self._act_once(case_id, action, caller, details, lock=True)

    def _act_once(
        self, case_id: int, action: Action, caller: Caller, details: _Details, *, lock: bool
    ) -> dict[str, Any]:
        note, unit_id, photo_url = details.note, details.unit_id, details.photo_url
        case = self._visible(case_id, caller, lock=lock)
        if not may(caller, action, case):
            msg = f"{caller.unit_id} ({caller.role}) may not {action.value} case {case_id}"
            raise ForbiddenActionError(msg)
        target = unit_id
        if action is Action.DISPATCH:
            target = unit_id or case["routed_unit_id"]  # an unknown unit fails its foreign key
            self._check_reach(caller, target, case)
        elif action is Action.RETURN:
            target = self._units_of(case["district_id"]).get("coordinating")
        after, _ = self._record(
            case_id,
            action,
            caller.unit_id,
            unit_id=target,
            note=note,
            photo_url=photo_url,
            row=case,
        )
        return after

    def _check_reach(self, caller: Caller, unit_id: str, case: dict[str, Any]) -> None:
        """Refuse a dispatch outside the caller's district exactly as one to no unit at all."""
        district = dispatch_district(caller)
        if district is None or unit_id == case["routed_unit_id"]:
            return
        row = self._conn.execute(
            "select region_id from units where unit_id = %s", (unit_id,)
        ).fetchone()
        if row is None or district_of_region(self._conn, row[0]) != district:
            msg = f"no unit {unit_id!r} in district {district} to dispatch to"
            raise BadReportError(msg)

    def _record(
        self,
        case_id: int,
        action: Action,
        actor: str,
        *,
        unit_id: str | None = None,
        note: str | None = None,
        photo_url: str | None = None,
        row: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], int]:
        """Apply one event to the case row and append it; return the row after it, the event's id.

        ``row`` is the case as read (by ``act``) or as locked in this transaction; the write
        applies only if the row still has that version, else _StaleCaseError.
        """
        if row is None:
            row = self._visible(case_id, OPERATOR, lock=True)
        current = _state_from(row)
        try:
            to_state = next_state(current.state, action)
        except IllegalTransitionError as exc:
            raise IllegalActionError(exc) from None
        deadline_h = None
        if action in (Action.DISPATCH, Action.REOPEN):
            deadline_h = self._catalog.get(row["category"]).deadline_h
        event = Event(
            self._clock(),
            actor,
            action,
            to_state,
            unit_id=unit_id,
            deadline_h=deadline_h,
            note=note,
        )
        after = apply(current, event)
        try:
            event_id = self._write(
                case_id,
                version=row["version"],
                after=after,
                event=event,
                from_state=current.state,
                photo_url=photo_url,
            )
        except psycopg.errors.ForeignKeyViolation:
            msg = f"no unit {event.unit_id!r} to dispatch to"
            raise BadReportError(msg) from None
        if event_id is None:
            raise _StaleCaseError
        after_row = {
            **row,
            **{c: getattr(after, c) for c in _CASE_COLUMNS},
            "state": after.state.value,
            "version": row["version"] + 1,
        }
        return after_row, event_id

    def _write(
        self,
        case_id: int,
        *,
        version: int,
        after: CaseState,
        event: Event,
        from_state: State,
        photo_url: str | None,
    ) -> int | None:
        """Event and new row in one statement, if the row is still at ``version``: the event id."""
        written = self._conn.execute(
            _WRITE,
            (
                *(getattr(after, c) for c in _CASE_COLUMNS),
                case_id,
                version,
                *self._event_values(event, from_state, photo_url),
            ),
        ).fetchone()
        return None if written is None else int(written[0])

    @staticmethod
    def _event_values(
        event: Event, from_state: State | None, photo_url: str | None
    ) -> tuple[Any, ...]:
        data = json.dumps({"deadline_h": event.deadline_h}) if event.deadline_h else None
        return (
            event.at,
            event.actor,
            event.action,
            from_state,
            event.to_state,
            event.unit_id,
            event.note,
            photo_url,
            data,
        )

    # -- reading ----------------------------------------------------------------------------

    def _visible(self, case_id: int, caller: Caller, *, lock: bool) -> dict[str, Any]:
        where, params = visibility(caller)
        cur = self._conn.cursor(row_factory=dict_row)
        row = cur.execute(
            f"select * from cases where case_id = %s and {where}{' for update' if lock else ''}",
            (case_id, *params),
        ).fetchone()
        if row is None:
            msg = f"no case {case_id}"
            raise CaseNotFoundError(msg)
        return row

    def history(self, case_id: int) -> list[Event]:
        """The case's events, oldest first, as ``lifecycle.rebuild`` takes them."""
        return [
            Event(
                at,
                actor,
                Action(action),
                State(to_state),
                unit_id=unit_id,
                deadline_h=(data or {}).get("deadline_h"),
                note=note,
            )
            for at, actor, action, to_state, unit_id, note, data in self._conn.execute(
                "select at, actor, action, to_state, unit_id, note, data from case_events "
                "where case_id = %s order by event_id",
                (case_id,),
            )
        ]

    def state_of(self, case_id: int) -> CaseState:
        """The lifecycle columns of the case row as stored."""
        return _state_from(self._visible(case_id, OPERATOR, lock=False))

    def show(self, case_id: int, caller: Caller) -> dict[str, Any]:
        """One case with its history and the actions its state allows."""
        case = self._visible(case_id, caller, lock=False)
        cur = self._conn.cursor(row_factory=dict_row)
        case["events"] = cur.execute(
            "select at, actor, action, from_state, to_state, unit_id, note, photo_url "
            "from case_events where case_id = %s order by event_id",
            (case_id,),
        ).fetchall()
        case["allowed_actions"] = allowed_actions(State(case["state"]))
        return case

    def find(
        self,
        caller: Caller,
        *,
        state: str | None = None,
        unit_id: str | None = None,
        district_id: str | None = None,
        category: str | None = None,
        overdue: bool | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Cases the caller may see, newest first, filtered; page with ``after_id``."""
        where, params = visibility(caller)
        clauses = [where]
        for column, value in (
            ("state", state),
            ("unit_id", unit_id),
            ("district_id", district_id),
            ("category", category),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        if overdue is not None:
            test = "deadline < now() and state not in ('closed', 'cancelled', 'disposed')"
            clauses.append(test if overdue else f"not coalesce({test}, false)")
        if after_id is not None:
            clauses.append("case_id < %s")
            params.append(after_id)
        cur = self._conn.cursor(row_factory=dict_row)
        return cur.execute(
            "select case_id, category, subject, source, state, unit_id, district_id, severity, "
            "reported_at, deadline, escalated_at, updated_at from cases where "
            f"{' and '.join(clauses)} order by case_id desc limit %s",
            (*params, limit),
        ).fetchall()

    def merge(self, case_id: int, into: int, actor: str, note: str) -> None:
        """Cancel ``case_id`` as covered by case ``into``, which gets a report naming it.

        IllegalActionError when either case is finished (or ``case_id`` is disposed: its crew
        has worked it, so an inspector decides).
        """
        with self._conn.transaction():
            self._record(case_id, Action.MERGE, actor, note=f"merged into case {into}: {note}")
            self._record(into, Action.REPORT, actor, note=f"case {case_id} merged into it: {note}")

    def escalate_overdue(self) -> list[int]:
        """Escalate, once, every unfinished case past its deadline; return their ids."""
        with self._conn.transaction():
            due = [
                r[0]
                for r in self._conn.execute(
                    "select case_id from cases where deadline < %s and escalated_at is null and "
                    "state in ('dispatched', 'accepted', 'returned') order by case_id "
                    "for update skip locked",
                    (self._clock(),),
                )
            ]
            for case_id in due:
                self._record(case_id, Action.ESCALATE, SYSTEM, note="past its deadline")
        return due


def _state_from(row: dict[str, Any]) -> CaseState:
    values = {c: row[c] for c in _CASE_COLUMNS}
    return CaseState(**{**values, "state": State(values["state"])})
