"""Who acts on cases and what they may see and do: callers, their API tokens, visibility, rights.

A unit sees the cases it is responsible for, a coordinating office those of its district (the
city's office, a coordinator at city level, those of every district), an operator all. Besides
seeing a case, the responsible unit may accept, return and dispose of it, the office may register,
cancel, dispatch, verify and reopen it; anyone who sees it may comment. A district's office
dispatches to the routed unit or to a unit of its district; the city's office and operators to any.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from cases.lifecycle import Action

Role = Literal["unit", "coordinator", "operator"]
SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who acts: a unit with a role; a coordinator acts for its district, or for the city."""

    unit_id: str
    role: Role
    district_id: str | None = None  # the region of the unit: its district for a district office
    is_city_level: bool = False  # the unit works for the whole city (the city's office)


OPERATOR = Caller(SYSTEM, "operator")
_CALLER_COLUMNS = "u.unit_id, u.region_id, u.level = 'city'"

#: Who may do what, besides seeing the case: the responsible unit, or the district's office.
_UNIT_ACTIONS = frozenset({Action.ACCEPT, Action.RETURN, Action.DISPOSE})
_OFFICE_ACTIONS = frozenset(
    {Action.REGISTER, Action.CANCEL, Action.DISPATCH, Action.VERIFY, Action.REOPEN}
)
#: The actions a caller may take; the platform itself opens, reports into and escalates cases.
CALLER_ACTIONS = tuple(
    a for a in Action if a in _UNIT_ACTIONS | _OFFICE_ACTIONS or a is Action.COMMENT
)


def hash_token(token: str) -> str:
    """How a token is stored: its SHA-256 (tokens are 32 random bytes, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: psycopg.Connection, unit_id: str, role: Role) -> str:
    """A new token for ``unit_id``; only its hash is kept."""
    token = secrets.token_urlsafe(32)
    conn.execute(
        "insert into unit_tokens (token_sha256, unit_id, role) values (%s, %s, %s)",
        (hash_token(token), unit_id, role),
    )
    return token


def delete_tokens(conn: psycopg.Connection, unit_id: str) -> int:
    """Delete every token of ``unit_id`` (one was stolen, or the unit left); return how many."""
    return conn.execute("delete from unit_tokens where unit_id = %s", (unit_id,)).rowcount


def caller_for_token(conn: psycopg.Connection, token: str) -> Caller | None:
    """The unit a token belongs to, in the token's role."""
    row = conn.execute(
        f"select {_CALLER_COLUMNS}, t.role from unit_tokens t join units u using (unit_id) "
        "where t.token_sha256 = %s",
        (hash_token(token),),
    ).fetchone()
    return Caller(row[0], row[3], row[1], is_city_level=row[2]) if row else None


def caller_for_unit(conn: psycopg.Connection, unit_id: str) -> Caller | None:
    """The unit in the role its kind gives it: coordinating offices coordinate, others work."""
    row = conn.execute(
        f"select {_CALLER_COLUMNS}, u.kind = 'coordinating' from units u where unit_id = %s",
        (unit_id,),
    ).fetchone()
    if row is None:
        return None
    return Caller(row[0], "coordinator" if row[3] else "unit", row[1], is_city_level=row[2])


def may(caller: Caller, action: Action, case: dict[str, Any]) -> bool:
    """Whether ``caller``, who sees ``case``, may do ``action`` to it."""
    if action not in CALLER_ACTIONS:
        return False
    if caller.role == "operator":
        return True
    if action in _UNIT_ACTIONS:
        return bool(case["unit_id"] == caller.unit_id)
    if action in _OFFICE_ACTIONS:
        return caller.role == "coordinator"
    return True  # comment


def dispatch_district(caller: Caller) -> str | None:
    """The district to whose units ``caller`` may dispatch besides the routed one; None: any."""
    return None if is_city_wide(caller) else caller.district_id


def is_city_wide(caller: Caller) -> bool:
    """Whether ``caller`` sees the whole city: an operator, or the city's coordinating office."""
    return caller.role == "operator" or (caller.role == "coordinator" and caller.is_city_level)


def _scope(caller: Caller) -> tuple[str, Any] | None:
    """The column of ``cases`` and the value it must have for ``caller`` to see a case."""
    if is_city_wide(caller):
        return None
    if caller.role == "coordinator":
        return "district_id", caller.district_id
    return "unit_id", caller.unit_id


def visibility(caller: Caller) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) on ``cases`` rows that ``caller`` may see."""
    scope = _scope(caller)
    return ("true", []) if scope is None else (f"{scope[0]} = %s", [scope[1]])


def sees(caller: Caller, case: dict[str, Any]) -> bool:
    """Whether ``caller`` may see ``case`` (a row of ``cases``): ``visibility`` in Python."""
    scope = _scope(caller)
    return scope is None or bool(case[scope[0]] == scope[1])
