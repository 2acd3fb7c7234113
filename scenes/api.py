"""The scenes' endpoints on the case API: the cover dictionary, detections, acknowledgements.

``install_routes`` adds them to the app ``cases.api.create_app`` builds (the shell passes it in
``routes``): the same bearer tokens, errors and OpenAPI document. Who sees what follows the case
API (``scenes.dictionary`` and ``scenes.detections`` state the rules): a component or detection
the caller may not see is 404, like one that does not exist.

Annotations here are evaluated at definition (no ``from __future__ import annotations``):
FastAPI reads the dependencies of the endpoints, which are closures, from them.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from cases.access import Caller
from cases.api import ApiError, RouteContext
from cases.api_document import ErrorOut, OneOf, RegistryId, Text, answers
from cases.catalog import Severity
from cases.lifecycle import State
from devices.codes import CODE_PATTERN
from scenes.detections import (
    KINDS,
    AcknowledgeForbiddenError,
    AlreadyAcknowledgedError,
    Detection,
    DetectionNotFoundError,
    acknowledge,
    list_detections,
)
from scenes.dictionary import CoverEntry, cover_entry, covers_summary

Kind = Annotated[str, OneOf(KINDS)]


class SummaryFilters(BaseModel):
    """Which covers to count."""

    model_config = ConfigDict(extra="forbid")

    district: RegistryId | None = None


class DetectionFilters(BaseModel):
    """Which detections to list."""

    model_config = ConfigDict(extra="forbid")

    active: bool = Field(default=True, description="Only those not cleared yet.")
    district: RegistryId | None = None
    kind: Kind | None = None
    limit: int = Field(default=50, ge=1, le=500)


class AcknowledgeIn(BaseModel):
    """What an acknowledgement may say."""

    model_config = ConfigDict(extra="forbid")

    note: Text | None = Field(default=None, max_length=4000)


class AssetCaseOut(BaseModel):
    """A case in a component's history."""

    case_id: int
    category: str
    state: State
    unit_id: str | None = Field(description="The unit responsible now.")
    reported_at: datetime
    closed_at: datetime | None


class AssetOut(BaseModel):
    """A component's entry in the dictionary."""

    code: str
    category: str
    name: str | None
    district: str | None
    competent_unit_id: str | None
    owner_unit_id: str | None
    maintainer_unit_id: str | None
    devices: list[str] = Field(description="The sensors bound to it.")
    state: str = Field(
        description="The kinds of the active detections on it or its sensors, joined with '+' "
        "(cover_displaced, sensor_offline+water_rising, ...), or 'normal'."
    )
    cases: list[AssetCaseOut] = Field(
        description="Its cases the caller may see (as the case API shows them), newest first."
    )


class CoverCountOut(BaseModel):
    """Covers of one district and owner unit in one state."""

    district: str
    owner_unit_id: str = Field(description="'' for ownerless covers.")
    state: str
    covers: int


class DetectionOut(BaseModel):
    """A detection: an episode a scene found, its case, and its acknowledgement."""

    detection_id: int
    scene: str
    kind: str
    subject: str = Field(description="The component's code, or the device's id for its faults.")
    device_id: str | None
    district: str | None
    severity: Severity
    first_seen: datetime
    last_seen: datetime
    cleared_at: datetime | None = Field(description="null while it is active.")
    count: int
    case_id: int | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None = Field(description="The unit (or person) who acknowledged it.")
    acknowledged_note: str | None


class AcknowledgedOut(ErrorOut):
    """A detection someone else has acknowledged already."""

    acknowledged_by: str
    acknowledged_at: datetime


def _answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


_UNSEEN_DETECTION = _answer(
    ErrorOut, "No such detection, or none the caller may see: the same answer."
)


def install_routes(app: FastAPI, context: RouteContext) -> None:
    """Add the dictionary and detection endpoints; each on a pooled connection of its own."""
    caller = context.caller

    @app.get(
        "/assets/{code}",
        response_model=AssetOut,
        responses={
            **answers(401, 422, 503),
            404: _answer(
                ErrorOut, "No such component, or none the caller may see: the same answer."
            ),
        },
    )
    def component(
        code: Annotated[str, Path(pattern=CODE_PATTERN, description="The 16-digit code.")],
        who: Annotated[Caller, Depends(caller)],
    ) -> CoverEntry:
        """A component with its units, sensors, state and case history.

        Operators and the city's office see every component, a district's office those of its
        district, a unit those it owns or maintains; the history holds the cases the caller
        may see.
        """
        with context.connection() as conn:
            entry = cover_entry(conn, code, who)
        if entry is None:
            raise ApiError(404, f"no component {code}")
        return entry

    @app.get(
        "/covers/summary",
        response_model=list[CoverCountOut],
        responses=answers(401, 422, 503),
    )
    def summary(
        who: Annotated[Caller, Depends(caller)],
        filters: Annotated[SummaryFilters, Query()],
    ) -> list[dict[str, Any]]:
        """Monitored covers the caller sees, counted by district, owner unit and state."""
        with context.connection() as conn:
            return covers_summary(conn, filters.district, caller=who)

    @app.get("/detections", response_model=list[DetectionOut], responses=answers(401, 422, 503))
    def detections(
        who: Annotated[Caller, Depends(caller)],
        filters: Annotated[DetectionFilters, Query()],
    ) -> list[Detection]:
        """Detections the caller sees, the most recently begun first.

        Operators and the city's office see all, a district's office those of its district, a
        unit those whose case is on its desk.
        """
        with context.connection() as conn:
            return list_detections(
                conn,
                active_only=filters.active,
                district=filters.district,
                kind=filters.kind,
                limit=filters.limit,
                caller=who,
            )

    @app.post(
        "/detections/{detection_id}/acknowledge",
        response_model=DetectionOut,
        responses={
            **answers(400, 401, 422, 503),
            403: _answer(ErrorOut, "The caller sees the detection but may not acknowledge it."),
            404: _UNSEEN_DETECTION,
            409: _answer(AcknowledgedOut, "Someone else has acknowledged it already."),
        },
    )
    def acknowledge_detection(
        detection_id: int,
        who: Annotated[Caller, Depends(caller)],
        body: AcknowledgeIn | None = None,
    ) -> Detection:
        """Acknowledge a detection as the caller's unit (operators and coordinating offices).

        Again by the same unit: the detection as it was acknowledged (200). It stays active
        until its scene clears it, and its case is left as it is.
        """
        note = body.note if body else None
        try:
            with context.connection() as conn:
                return acknowledge(conn, detection_id, who.unit_id, note, caller=who)
        except DetectionNotFoundError as exc:
            raise ApiError(404, str(exc)) from None
        except AcknowledgeForbiddenError as exc:
            raise ApiError(403, str(exc)) from None
        except AlreadyAcknowledgedError as exc:
            earlier = exc.detection
            assert earlier.acknowledged_at is not None
            raise ApiError(
                409,
                str(exc),
                acknowledged_by=earlier.acknowledged_by,
                acknowledged_at=earlier.acknowledged_at.isoformat(),
            ) from None
