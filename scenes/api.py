"""The scenes' endpoints on the case API: the cover dictionary, detections, acknowledgements.

Also lamps and cabinets as FIWARE entities (``scenes.streetlights``). ``install_routes`` adds
them to the app ``cases.api.create_app`` builds (the shell passes it in ``routes``): the same
bearer tokens, errors and OpenAPI document. Who sees what follows the case API
(``scenes.dictionary`` and ``scenes.detections`` state the rules): a component or detection the
caller may not see is 404, like one that does not exist.

Annotations here are evaluated at definition (no ``from __future__ import annotations``):
FastAPI reads the dependencies of the endpoints, which are closures, from them.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

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
from scenes.streetlights import PowerState, Status, streetlight, streetlight_cabinet

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


class PointOut(BaseModel):
    """A GeoJSON Point (WGS-84)."""

    type: Literal["Point"]
    coordinates: list[float] = Field(description="[longitude, latitude]")


class FiwareOut(BaseModel):
    """A FIWARE entity in key-values form: attributes without a value are left out."""

    model_config = ConfigDict(alias_generator=to_camel)

    location: PointOut | None = None
    date_modified: datetime | None = Field(default=None, description="The latest reading's time.")


class StreetlightOut(FiwareOut):
    """A street lamp as a FIWARE Streetlight (Smart Data Models, dataModel.Streetlighting)."""

    id: str = Field(description="urn:ngsi-ld:Streetlight:<the lamp's code>")
    type: Literal["Streetlight"]
    status: Status = Field(
        description="From its active lighting detections (docs/scenes.md); ok when none."
    )
    power_state: PowerState | None = Field(
        default=None,
        description="The latest reading's: off when unlit, low when lit and dimmed, else on.",
    )
    ref_streetlight_control_cabinet: str | None = Field(
        default=None, description="urn:ngsi-ld:StreetlightControlCabinet:<the cabinet's code>"
    )
    circuit: str | None = Field(default=None, description="The cabinet's circuit it is on.")
    power_rating: float | None = Field(default=None, description="Rated power, W.")
    power_consumption: float | None = Field(default=None, description="Power, W.")
    current: float | None = Field(default=None, description="Current, A.")
    voltage: float | None = Field(default=None, description="Supply voltage, V.")
    power_factor: float | None = Field(default=None, ge=0, le=1)
    illuminance_level: float | None = Field(
        default=None, ge=0, le=1, description="The dimming level, 1 undimmed."
    )
    date_last_switching_on: datetime | None = Field(
        default=None, description="The first reading of its latest lit stretch."
    )


class StreetlightCabinetOut(FiwareOut):
    """A lighting cabinet as a FIWARE StreetlightControlCabinet."""

    id: str = Field(description="urn:ngsi-ld:StreetlightControlCabinet:<the cabinet's code>")
    type: Literal["StreetlightControlCabinet"]
    total_active_power: float | None = Field(
        default=None, description="The sum of its lamps' latest readings, W."
    )
    annotations: list[str] | None = Field(
        default=None, description="The kinds of its active detections (cabinet_outage, ...)."
    )


class AcknowledgedOut(ErrorOut):
    """A detection someone else has acknowledged already."""

    acknowledged_by: str
    acknowledged_at: datetime


def _answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


_UNSEEN_DETECTION = _answer(
    ErrorOut, "No such detection, or none the caller may see: the same answer."
)
#: A 16-digit component code in a path.
Code = Annotated[str, Path(pattern=CODE_PATTERN, description="The 16-digit code.")]


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
    def component(code: Code, who: Annotated[Caller, Depends(caller)]) -> CoverEntry:
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
        "/streetlights/{code}",
        response_model=StreetlightOut,
        response_model_exclude_none=True,
        responses={
            **answers(401, 422, 503),
            404: _answer(ErrorOut, "No such lamp, or none the caller may see: the same answer."),
        },
    )
    def streetlight_entity(code: Code, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        """A street lamp as a FIWARE Streetlight: its state, latest reading and cabinet.

        Seen by whoever sees the lamp as a component (``GET /assets/{code}``).
        """
        with context.connection() as conn:
            entity = streetlight(conn, code, who)
        if entity is None:
            raise ApiError(404, f"no streetlight {code}")
        return entity

    @app.get(
        "/streetlight-cabinets/{code}",
        response_model=StreetlightCabinetOut,
        response_model_exclude_none=True,
        responses={
            **answers(401, 422, 503),
            404: _answer(ErrorOut, "No such cabinet, or none the caller may see: the same answer."),
        },
    )
    def cabinet_entity(code: Code, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
        """A lighting cabinet as a FIWARE StreetlightControlCabinet: its lamps' power, outages.

        Seen by whoever sees the cabinet as a component (``GET /assets/{code}``).
        """
        with context.connection() as conn:
            entity = streetlight_cabinet(conn, code, who)
        if entity is None:
            raise ApiError(404, f"no streetlight cabinet {code}")
        return entity

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
