"""The case API's OpenAPI document: what requests may carry, what answers hold, which errors.

Every constraint the API checks on a request is declared here, so the document states it: text
PostgreSQL can store (no NUL), identifiers as the registry takes them, actions and categories as
enums. The catalog's categories are known only when the app is built; ``cases.api`` narrows
the ``*Fields`` models to them.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, StringConstraints
from pydantic_core import core_schema

from cases.access import CALLER_ACTIONS
from cases.catalog import Severity
from cases.lifecycle import Action, State
from cases.service import Source
from devices.codes import CODE_PATTERN
from wire.contract import ID_PATTERN


@dataclass(frozen=True, slots=True)
class OneOf:
    """Metadata for a str that must be one of ``names``: checked, and an enum in the document.

    For names known only when the app is built (the catalog's categories), where a Literal
    cannot be written.
    """

    names: tuple[str, ...]

    def __get_pydantic_core_schema__(
        self, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.literal_schema(list(self.names))


#: Free text: PostgreSQL stores any character in text but NUL.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
#: The id of a unit, district, device or road segment, as the registry takes them.
RegistryId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: An action a caller names in ``POST /cases/{id}/{action}``.
CallerAction = Annotated[str, OneOf(tuple(a.value for a in CALLER_ACTIONS))]


class ReportFields(BaseModel):
    """A problem reported by an inspector or a citizen (``category``: narrowed by the app)."""

    model_config = ConfigDict(extra="forbid")

    category: str
    source: Literal["inspector", "citizen"] = "citizen"
    asset_code: str | None = Field(default=None, pattern=CODE_PATTERN)
    device_id: RegistryId | None = None
    segment_id: RegistryId | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    description: Text | None = Field(default=None, max_length=4000)
    photo_url: Text | None = Field(default=None, max_length=2000)


class CaseFilterFields(BaseModel):
    """Which cases to list, and the page (``category``: narrowed by the app)."""

    model_config = ConfigDict(extra="forbid")

    state: State | None = None
    unit: RegistryId | None = None
    district: RegistryId | None = None
    category: str | None = None
    overdue: bool | None = None
    after: int | None = Field(default=None, description="page: case ids below this")
    limit: int = Field(default=50, ge=1, le=500)


class ActionIn(BaseModel):
    """Details of a lifecycle action."""

    model_config = ConfigDict(extra="forbid")

    note: Text | None = Field(default=None, max_length=4000)
    unit_id: RegistryId | None = Field(default=None, description="dispatch: the unit to send it to")
    photo_url: Text | None = Field(default=None, max_length=2000)


class ReportOut(BaseModel):
    """A reference to the report; the case only if the caller may see it."""

    report_id: int = Field(description="This report's reference (its event in the case log).")
    case_id: int | None = Field(description="The case it opened or joined; null if not yours.")
    created: bool | None = Field(description="Whether it opened the case; null if not yours.")


class CaseOut(BaseModel):
    """A case in a list."""

    case_id: int
    category: str
    subject: str
    source: Source
    state: State
    unit_id: str | None
    district_id: str | None
    severity: Severity
    reported_at: datetime
    deadline: datetime | None
    escalated_at: datetime | None
    updated_at: datetime


class EventOut(BaseModel):
    """One event of a case's history."""

    at: datetime
    actor: str
    action: Action
    from_state: State | None
    to_state: State
    unit_id: str | None
    note: str | None
    photo_url: str | None


class CaseDetailOut(CaseOut):
    """A case with every column, its history and the actions its state allows."""

    routed_unit_id: str | None
    description: str | None
    photo_url: str | None
    lat: float | None
    lon: float | None
    dispatched_at: datetime | None
    accepted_at: datetime | None
    disposed_at: datetime | None
    closed_at: datetime | None
    returns: int
    reworks: int
    reports: int
    version: int
    events: list[EventOut]
    allowed_actions: list[Action]


class ErrorOut(BaseModel):
    """Why a request failed, and what to do where that helps."""

    error: str


class RefusedOut(ErrorOut):
    """An action the case's state does not allow."""

    state: State
    allowed: list[Action]


class ProblemOut(BaseModel):
    """One invalid part of a request."""

    field: str = Field(description="Where: body.note, query.limit, path.case_id, ...")
    message: str


class InvalidOut(ErrorOut):
    """A request the API cannot take."""

    problems: list[ProblemOut] = Field(
        default_factory=list,
        description="The invalid parts; absent when the request is valid but names what the "
        "city does not have (a component, device, road segment, position or unit).",
    )


#: Every error answer, with its body; an endpoint declares those it can give.
ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not text (UTF-8) at all."},
    401: {"model": ErrorOut, "description": "No bearer token, or not a valid one."},
    403: {"model": ErrorOut, "description": "The caller sees the case but may not do this."},
    404: {
        "model": ErrorOut,
        "description": "No such case, or none the caller may see: the same answer.",
    },
    409: {"model": RefusedOut, "description": "The case's state does not allow the action."},
    422: {
        "model": InvalidOut,
        "description": "Invalid parts, or what the city does not have (no problems listed).",
    },
    503: {"model": ErrorOut, "description": "The database is unavailable; try again."},
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers ``statuses`` as FastAPI's ``responses`` takes them."""
    return {status: ERRORS[status] for status in statuses}
