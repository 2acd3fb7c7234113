"""Who acts on cases and what they may see and do: callers, their API tokens, visibility, rights.

A unit sees the cases it is responsible for, a coordinating office those of its district, an
operator all. Besides seeing a case, the responsible unit may accept, return and dispose of it,
the district's office may register, cancel, dispatch, verify and reopen it; anyone who sees it may
comment.
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
    """Who acts: a unit with a role; a coordinator acts for its district."""

    unit_id: str
    role: Role
    district_id: str | None = None


OPERATOR = Caller(SYSTEM, "operator")

#: Who may do what, besides seeing the case: the responsible unit, or the district's office.
_UNIT_ACTIONS = frozenset({Action.ACCEPT, Action.RETURN, Action.DISPOSE})
_OFFICE_ACTIONS = frozenset(
    {Action.REGISTER, Action.CANCEL, Action.DISPATCH, Action.VERIFY, Action.REOPEN}
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


def caller_for_token(conn: psycopg.Connection, token: str) -> Caller | None:
    """The unit a token belongs to, with its district."""
    row = conn.execute(
        "select t.unit_id, t.role, u.region_id from unit_tokens t join units u using (unit_id) "
        "where t.token_sha256 = %s",
        (hash_token(token),),
    ).fetchone()
    return Caller(row[0], row[1], row[2]) if row else None


def may(caller: Caller, action: Action, case: dict[str, Any]) -> bool:
    """Whether ``caller``, who sees ``case``, may do ``action`` to it."""
    if caller.role == "operator":
        return True
    if action in _UNIT_ACTIONS:
        return bool(case["unit_id"] == caller.unit_id)
    if action in _OFFICE_ACTIONS:
        return caller.role == "coordinator"
    return True  # comment, report


def _scope(caller: Caller) -> tuple[str, Any] | None:
    """The column of ``cases`` and the value it must have for ``caller`` to see a case."""
    if caller.role == "operator":
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
