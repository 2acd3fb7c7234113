"""The case lifecycle and the problem catalog, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cases.catalog import CatalogError, load_catalog
from cases.lifecycle import (
    Action,
    Event,
    IllegalTransitionError,
    State,
    allowed_actions,
    next_state,
    rebuild,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)

#: docs/cases.md, "Lifecycle", written out by hand: state -> {action: next state}. Kept apart
#: from cases/lifecycle.py on purpose, so a change to its tables cannot agree with itself.
DOCUMENTED: dict[str, dict[str, str]] = {
    "reported": {"register": "registered", "cancel": "cancelled"},
    "registered": {"dispatch": "dispatched", "cancel": "cancelled"},
    "dispatched": {"accept": "accepted", "return": "returned"},
    "accepted": {"dispose": "disposed", "return": "returned"},
    "returned": {"dispatch": "dispatched", "cancel": "cancelled"},
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
