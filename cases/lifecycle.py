"""The case lifecycle as pure functions: states, legal actions, and the fold of events into a case.

The case row in the database is what ``apply`` makes of its events, one after another, so it can
always be rebuilt from the append-only log (``rebuild``).

    reported --register--> registered --dispatch--> dispatched --accept--> accepted
        |                                   ^   |                      |
        +--cancel--> cancelled              |   +--return--> returned <+ (not ours: the
                                            |                 |           coordinating office
                                            +----dispatch-----+           decides and dispatches)
    accepted --dispose--> disposed --verify--> closed
                              +--reopen--> dispatched (rework, same unit, new deadline)

``report`` (a repeat report), ``comment`` and ``escalate`` (deadline passed, once) never change
the state. ``merge`` (the platform: another case covers the finding, as a dark cabinet covers its
lamps) cancels a case from any open state but disposed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class State(StrEnum):
    """Where a case is."""

    REPORTED = "reported"
    REGISTERED = "registered"
    CANCELLED = "cancelled"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    RETURNED = "returned"
    DISPOSED = "disposed"
    CLOSED = "closed"


class Action(StrEnum):
    """What can happen to a case."""

    OPEN = "open"
    REGISTER = "register"
    CANCEL = "cancel"
    DISPATCH = "dispatch"
    ACCEPT = "accept"
    RETURN = "return"
    DISPOSE = "dispose"
    VERIFY = "verify"
    REOPEN = "reopen"
    REPORT = "report"
    COMMENT = "comment"
    ESCALATE = "escalate"
    MERGE = "merge"


FINAL = frozenset({State.CLOSED, State.CANCELLED})
_STAYS = frozenset({Action.REPORT, Action.COMMENT, Action.ESCALATE})
_MERGED = {Action.MERGE: State.CANCELLED}
TRANSITIONS: dict[State, dict[Action, State]] = {
    State.REPORTED: {Action.REGISTER: State.REGISTERED, Action.CANCEL: State.CANCELLED, **_MERGED},
    State.REGISTERED: {
        Action.DISPATCH: State.DISPATCHED,
        Action.CANCEL: State.CANCELLED,
        **_MERGED,
    },
    State.DISPATCHED: {Action.ACCEPT: State.ACCEPTED, Action.RETURN: State.RETURNED, **_MERGED},
    State.ACCEPTED: {Action.DISPOSE: State.DISPOSED, Action.RETURN: State.RETURNED, **_MERGED},
    State.RETURNED: {Action.DISPATCH: State.DISPATCHED, Action.CANCEL: State.CANCELLED, **_MERGED},
    State.DISPOSED: {Action.VERIFY: State.CLOSED, Action.REOPEN: State.DISPATCHED},
    State.CLOSED: {},
    State.CANCELLED: {},
}


class IllegalTransitionError(Exception):
    """An action that the case's state does not allow; names the state and what is allowed."""

    def __init__(self, state: State, action: Action) -> None:
        self.state = state
        self.action = action
        self.allowed = allowed_actions(state)
        allowed = ", ".join(self.allowed) or "nothing (the case is finished)"
        super().__init__(f"cannot {action.value} a case that is {state.value}; allowed: {allowed}")


def allowed_actions(state: State) -> list[str]:
    """The actions a case in ``state`` accepts, the state-keeping ones included."""
    if state in FINAL:
        return []
    return [a.value for a in TRANSITIONS[state]] + sorted(a.value for a in _STAYS)


def next_state(state: State, action: Action) -> State:
    """The state after ``action``, or IllegalTransitionError."""
    if action in _STAYS and state not in FINAL:
        return state
    try:
        return TRANSITIONS[state][action]
    except KeyError:
        raise IllegalTransitionError(state, action) from None


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a case's history."""

    at: datetime
    actor: str
    action: Action
    to_state: State
    unit_id: str | None = None  # for open/dispatch: the unit it goes to
    deadline_h: float | None = None  # for dispatch and reopen
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CaseState:
    """The lifecycle columns of a case row, as its events make them."""

    state: State
    unit_id: str | None
    reported_at: datetime
    dispatched_at: datetime | None = None
    deadline: datetime | None = None
    accepted_at: datetime | None = None
    disposed_at: datetime | None = None
    closed_at: datetime | None = None
    escalated_at: datetime | None = None
    returns: int = 0
    reworks: int = 0
    reports: int = 1
    updated_at: datetime | None = None


def apply(case: CaseState | None, event: Event) -> CaseState:
    """The case after ``event`` (``None`` before the first, which must be ``open``)."""
    if case is None:
        if event.action is not Action.OPEN:
            msg = f"a case history starts with open, not {event.action.value}"
            raise ValueError(msg)
        return CaseState(event.to_state, event.unit_id, event.at, updated_at=event.at)
    updated = replace(case, state=event.to_state, updated_at=event.at)
    match event.action:
        case Action.DISPATCH | Action.REOPEN:
            deadline = event.at + timedelta(hours=event.deadline_h or 0)
            updated = replace(
                updated,
                dispatched_at=event.at,
                deadline=deadline,
                accepted_at=None,
                disposed_at=None,
                unit_id=event.unit_id or case.unit_id,
                reworks=case.reworks + (event.action is Action.REOPEN),
            )
        case Action.ACCEPT:
            updated = replace(updated, accepted_at=event.at)
        case Action.RETURN:
            updated = replace(updated, returns=case.returns + 1, unit_id=event.unit_id)
        case Action.DISPOSE:
            updated = replace(updated, disposed_at=event.at)
        case Action.VERIFY | Action.CANCEL | Action.MERGE:
            updated = replace(updated, closed_at=event.at)
        case Action.ESCALATE:
            updated = replace(updated, escalated_at=event.at)
        case Action.REPORT:
            updated = replace(updated, reports=case.reports + 1)
    return updated


def rebuild(events: list[Event]) -> CaseState:
    """The case its whole history makes."""
    case: CaseState | None = None
    for event in events:
        case = apply(case, event)
    if case is None:
        msg = "a case without events"
        raise ValueError(msg)
    return case
