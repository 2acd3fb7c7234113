"""The case lifecycle and the problem catalog, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cases.catalog import CatalogError, load_catalog
from cases.lifecycle import (
    Action,
    CaseState,
    Event,
    IllegalTransitionError,
    State,
    allowed_actions,
    apply,
    next_state,
    rebuild,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)

#: docs/cases.md, "Lifecycle", written out by hand: state -> {action: next state}. Kept apart
#: from cases/lifecycle.py on purpose, so a change to its tables cannot agree with itself.
DOCUMENTED: dict[str, dict[str, str]] = {
    "reported": {"register": "registered", "cancel": "cancelled", "merge": "cancelled"},
    "registered": {"dispatch": "dispatched", "cancel": "cancelled", "merge": "cancelled"},
    "dispatched": {"accept": "accepted", "return": "returned", "merge": "cancelled"},
    "accepted": {"dispose": "disposed", "return": "returned", "merge": "cancelled"},
    "returned": {"dispatch": "dispatched", "cancel": "cancelled", "merge": "cancelled"},
    "disposed": {"verify": "closed", "reopen": "dispatched"},
}
#: "any open state | comment, report, escalate | unchanged"; the open states are the rows above.
STAYING = ("comment", "report", "escalate")
#: Where the table leads but no row starts: a finished case takes no action at all.
FINISHED = ("closed", "cancelled")


def documented_next(state: str, action: str) -> str | None:
    """The state docs/cases.md gives after ``action``, or None where it allows no such action."""
    if state in FINISHED:
        return None
    if action in STAYING:
        return state
    return DOCUMENTED[state].get(action)


def documented_allowed(state: str) -> list[str]:
    """Every action docs/cases.md allows in ``state``, sorted."""
    if state in FINISHED:
        return []
    return sorted([*DOCUMENTED[state], *STAYING])


def test_the_lifecycle_has_exactly_the_documented_states_and_actions() -> None:
    assert {s.value for s in State} == {*DOCUMENTED, *FINISHED}
    named = {a for row in DOCUMENTED.values() for a in row} | set(STAYING)
    # "open" is the first event of every history, not an action anyone takes on a case
    assert {a.value for a in Action} == named | {"open"}


@pytest.mark.parametrize("state", [*DOCUMENTED, *FINISHED])
@pytest.mark.parametrize("action", [a.value for a in Action])
def test_every_state_and_action_moves_as_documented_or_is_refused_naming_what_is_allowed(
    state: str, action: str
) -> None:
    expected = documented_next(state, action)
    if expected is not None:
        assert next_state(State(state), Action(action)) is State(expected)
        return
    with pytest.raises(IllegalTransitionError) as caught:
        next_state(State(state), Action(action))
    assert caught.value.state is State(state)
    assert caught.value.action is Action(action)
    assert sorted(caught.value.allowed) == documented_allowed(state)
    allowed = ", ".join(caught.value.allowed) or "nothing (the case is finished)"
    assert str(caught.value) == f"cannot {action} a case that is {state}; allowed: {allowed}"


@pytest.mark.parametrize("state", [*DOCUMENTED, *FINISHED])
def test_allowed_actions_are_the_documented_ones(state: str) -> None:
    assert sorted(allowed_actions(State(state))) == documented_allowed(state)


def test_history_folds_into_the_case_row() -> None:
    def event(hours: float, action: Action, to: State, **kw: object) -> Event:
        return Event(T0 + timedelta(hours=hours), "x", action, to, **kw)  # type: ignore[arg-type]

    case = rebuild(
        [
            event(0, Action.OPEN, State.REPORTED, unit_id="office"),
            event(0.5, Action.REGISTER, State.REGISTERED),
            event(1, Action.DISPATCH, State.DISPATCHED, unit_id="water", deadline_h=4),
            event(2, Action.RETURN, State.RETURNED, unit_id="office"),
            event(3, Action.DISPATCH, State.DISPATCHED, unit_id="drainage", deadline_h=4),
            event(4, Action.REPORT, State.DISPATCHED),
            event(5, Action.ACCEPT, State.ACCEPTED),
            event(6, Action.DISPOSE, State.DISPOSED),
            event(7, Action.REOPEN, State.DISPATCHED, deadline_h=4),
            event(8, Action.ESCALATE, State.DISPATCHED),
        ]
    )
    assert case.state is State.DISPATCHED
    assert case.unit_id == "drainage"
    assert case.deadline == T0 + timedelta(hours=11)
    assert (case.returns, case.reworks, case.reports) == (1, 1, 2)
    assert case.disposed_at is None  # a rework starts the disposal over
    assert case.escalated_at == T0 + timedelta(hours=8)
    with pytest.raises(ValueError, match="starts with open"):
        rebuild([event(0, Action.REGISTER, State.REGISTERED)])


def test_shipped_catalog_loads_and_bad_catalogs_name_each_problem(tmp_path: Path) -> None:
    catalog = load_catalog(ROOT / "config/categories.toml")
    assert catalog.get("cover_missing").deadline_h == 2
    with pytest.raises(KeyError, match="unknown category 'nope'"):
        catalog.get("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[category]]\ncode = "a_b"\nname = "x"\nresponsible = "mayor"\ndeadline_h = 1\n'
        'severity = "major"\n'
        '[[category]]\ncode = "c_d"\nname = "y"\nresponsible = "owner"\ndeadline_h = -2\n'
        'severity = "huge"\n'
    )
    with pytest.raises(CatalogError) as caught:
        load_catalog(bad)
    text = str(caught.value)
    assert "category 0 (a_b)" in text
    assert "responsible 'mayor'" in text
    assert "category 1 (c_d): deadline_h" in text
    assert "category 1 (c_d): severity" in text


# -- random histories -------------------------------------------------------------------------

OFFICE = "d0-coordinating"
UNITS = ("d0-drainage", "d0-water", "d0-lighting")
DEADLINES_H = (0.5, 2.0, 4.0, 24.0, 72.0)
_SENDS = (Action.DISPATCH, Action.REOPEN)  # the actions that start a deadline


def documented_row(events: list[Event]) -> CaseState:
    """The case row docs/cases.md describes after ``events``, worked out without ``apply``."""
    opened, *later = events
    state, unit = "reported", opened.unit_id
    for event in later:
        after = documented_next(state, event.action.value)
        assert after is not None, f"the history holds a refused {event.action.value} ({state})"
        state = after
        if event.action is Action.DISPATCH:
            unit = event.unit_id or unit  # "dispatch [unit]"
        elif event.action is Action.RETURN:
            unit = event.unit_id  # back to the coordinating office; a reopen keeps the unit

    def last(*actions: Action, since: int = 0) -> datetime | None:
        return next((e.at for e in reversed(events[since:]) if e.action in actions), None)

    # "A dispatch starts the deadline of the category; a reopen gives a new one", and a new
    # dispatch starts acceptance and disposal over.
    sent = max((i for i, e in enumerate(events) if e.action in _SENDS), default=None)
    deadline = None
    if sent is not None:
        deadline = events[sent].at + timedelta(hours=events[sent].deadline_h or 0)
    return CaseState(
        state=State(state),
        unit_id=unit,
        reported_at=opened.at,
        dispatched_at=None if sent is None else events[sent].at,
        deadline=deadline,
        accepted_at=None if sent is None else last(Action.ACCEPT, since=sent),
        disposed_at=None if sent is None else last(Action.DISPOSE, since=sent),
        closed_at=last(Action.VERIFY, Action.CANCEL, Action.MERGE) if state in FINISHED else None,
        escalated_at=last(Action.ESCALATE),
        returns=sum(e.action is Action.RETURN for e in events),
        reworks=sum(e.action is Action.REOPEN for e in events),
        reports=1 + sum(e.action is Action.REPORT for e in events),
        updated_at=events[-1].at,
    )


class CaseHistory(RuleBasedStateMachine):
    """One case driven the way the case service drives it: next_state decides, apply folds.

    Each step either moves the case along the documented table, leaves it where it is (comment,
    report), tries an action the docs do not allow in its state, or escalates it the way the
    system does (once, past the deadline). After every step the row must be what docs/cases.md
    says its history makes, and what rebuilding that history gives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        opened = Event(T0, "citizen", Action.OPEN, State.REPORTED, unit_id=OFFICE)
        self.events = [opened]
        self.case = apply(None, opened)

    def take(self, action: Action, *, unit_id: str | None, deadline_h: float | None) -> None:
        """Do ``action`` now as the service does: refused, or one more event folded in."""
        state = self.case.state.value
        expected = documented_next(state, action.value)
        if expected is None:
            with pytest.raises(IllegalTransitionError) as caught:
                next_state(self.case.state, action)
            assert sorted(caught.value.allowed) == documented_allowed(state)
            return
        to_state = next_state(self.case.state, action)
        assert to_state.value == expected
        event = Event(self.now, "someone", action, to_state, unit_id=unit_id, deadline_h=deadline_h)
        self.case = apply(self.case, event)
        self.events.append(event)

    @precondition(lambda self: self.case.state.value in DOCUMENTED)
    @rule(
        data=st.data(),
        unit_id=st.sampled_from(UNITS),
        deadline_h=st.sampled_from(DEADLINES_H),
        wait_min=st.integers(0, 48 * 60),
    )
    def move(self, data: st.DataObject, unit_id: str, deadline_h: float, wait_min: int) -> None:
        # three to one for moves that keep the case open, so histories get past the first cancel
        row = DOCUMENTED[self.case.state.value]
        weighted = [a for a, to in row.items() for _ in range(1 if to in FINISHED else 3)]
        action = Action(data.draw(st.sampled_from(weighted)))
        self.now += timedelta(minutes=wait_min)
        # what the service passes along: a dispatch names its unit (given or routed), a return
        # goes to the coordinating office, a dispatch or reopen carries the category's deadline
        sends = action in _SENDS
        self.take(
            action,
            unit_id={Action.DISPATCH: unit_id, Action.RETURN: OFFICE}.get(action),
            deadline_h=deadline_h if sends else None,
        )

    @rule(action=st.sampled_from([Action.COMMENT, Action.REPORT]), wait_min=st.integers(0, 600))
    def stay(self, action: Action, wait_min: int) -> None:
        self.now += timedelta(minutes=wait_min)
        self.take(action, unit_id=None, deadline_h=None)

    @rule(data=st.data())
    def try_what_the_docs_refuse(self, data: st.DataObject) -> None:
        state = self.case.state.value
        refused = [a for a in Action if documented_next(state, a.value) is None]
        self.take(data.draw(st.sampled_from(refused)), unit_id=None, deadline_h=None)

    @precondition(
        lambda self: (
            self.case.escalated_at is None
            and self.case.deadline is not None
            and self.case.state.value not in FINISHED
        )
    )
    @rule(past_deadline_min=st.integers(1, 24 * 60))
    def escalate(self, past_deadline_min: int) -> None:
        assert self.case.deadline is not None
        self.now = max(self.now, self.case.deadline + timedelta(minutes=past_deadline_min))
        self.take(Action.ESCALATE, unit_id=None, deadline_h=None)

    @invariant()
    def row_is_what_the_docs_say_its_history_makes(self) -> None:
        assert self.case == documented_row(self.events)

    @invariant()
    def row_is_its_history_rebuilt(self) -> None:
        assert rebuild(list(self.events)) == self.case


TestCaseHistory = CaseHistory.TestCase
TestCaseHistory.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
