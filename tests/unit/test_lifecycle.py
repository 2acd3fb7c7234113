"""The case lifecycle and the problem catalog, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cases.catalog import CatalogError, load_catalog
from cases.lifecycle import (
    FINAL,
    TRANSITIONS,
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
_STAYING = {Action.REPORT, Action.COMMENT, Action.ESCALATE}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", [a for a in Action if a is not Action.OPEN])
def test_every_transition_not_in_the_table_is_refused_naming_state_and_allowed(
    state: State, action: Action
) -> None:
    legal = action in TRANSITIONS[state] or (action in _STAYING and state not in FINAL)
    if legal:
        expected = TRANSITIONS[state].get(action, state)
        assert next_state(state, action) is expected
        return
    with pytest.raises(IllegalTransitionError) as caught:
        next_state(state, action)
    assert caught.value.state is state
    assert f"cannot {action.value} a case that is {state.value}" in str(caught.value)
    assert caught.value.allowed == allowed_actions(state)


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
