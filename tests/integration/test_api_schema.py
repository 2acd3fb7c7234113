"""The API (cases, the cover dictionary, streetlights, detections) against its own OpenAPI
document, fuzzed by schemathesis as each of three roles.

Every answer must be one the document declares (status, content type, body), none may be a
server error, and what the document admits must not be refused by the API's request validation.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cases.access import Role, create_token
from cases.service import CaseService, Report
from cityops.api import build_app
from scenes.detections import acknowledge
from scenes.engine import run_once
from scenes.settings import ScenesSettings
from simulator.city import City
from tests.plugin import CATALOG, store_tilts

#: A caller of each role, by role.
CALLERS: dict[Role, str] = {
    "unit": "d0-drainage",
    "coordinator": "d0-coordinating",
    "operator": "city-office",
}


def validation_accepts_what_the_document_admits(
    _ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """A request generated from the document is not refused by the API's request validation.

    The API may still refuse it for what the document cannot know (no such component, a case
    of another unit): such refusals name no invalid fields.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code == 422 and "problems" in response.json():
        msg = f"the document admits what validation refuses: {response.json()['problems']}"
        raise AssertionError(msg)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    validation_accepts_what_the_document_admits,
]


@pytest.fixture
def app(database_url: str, city: City) -> Iterator[FastAPI]:
    """The API as served, with its pool open (a test client runs its lifespan), in a city."""
    app = build_app(database_url, CATALOG)
    with TestClient(app):
        yield app


T0_S = 1_767_100_000  # when the displaced cover's readings are from


def displaced(database_url: str, code: str) -> int:
    """The detection of a cover displaced since T0 + 600 s (its case on its owner's desk)."""
    device = f"mh-{code}"
    store_tilts(database_url, device, [(T0_S, 2.0), (T0_S + 600, 27.0)])
    with psycopg.connect(database_url) as conn:
        run_once(conn, ScenesSettings(), CATALOG, now=T0_S + 1800)
        row = conn.execute(
            "select detection_id from detections where device_id = %s", (device,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def fuzzed_requests(
    schema: schemathesis.BaseSchema,
    mode: GenerationMode,
    conn: psycopg.Connection,
    database_url: str,
    city: City,
) -> SearchStrategy[schemathesis.Case]:
    """Requests from the document, and as many on a real case, component and detection.

    Ids and component codes drawn at random name nothing, so without these the answers of a
    case, component, lamp, cabinet or detection that exists (and a report that is taken) would
    go unchecked.
    """
    sewers = [a["code"] for a in city.assets if a["category"] == "sewage"]
    sensed = Report("cover_damaged", "sensor", asset_code=sewers[0])
    real = {"case_id": CaseService(conn, CATALOG).report(sensed).case_id}  # d0-drainage's
    strategy = schema.as_strategy(generation_mode=mode)
    strategy |= schema["/cases/{case_id}"]["GET"].as_strategy(mode, path_parameters=real)
    strategy |= schema["/cases/{case_id}/{action}"]["POST"].as_strategy(mode, path_parameters=real)
    cover = {"code": sewers[2]}  # d0-drainage's, displaced: its case is d0-drainage's too
    strategy |= schema["/assets/{code}"]["GET"].as_strategy(mode, path_parameters=cover)
    lamp = next(a for a in city.assets if a["category"] == "street_lamp")  # d0-lighting's
    conn.execute(  # a lit and dimmed lamp: every attribute of a Streetlight has a value
        "insert into light_readings (device_id, ts, lamp_on, dim_pct, voltage_v, current_a, "
        "power_w, power_factor) values (%s, to_timestamp(%s), true, 50, 230, 0.35, 75, 0.93)",
        (f"lt-{lamp['code']}", T0_S),
    )
    strategy |= schema["/streetlights/{code}"]["GET"].as_strategy(
        mode, path_parameters={"code": lamp["code"]}
    )
    cabinet = {"code": lamp["properties"]["cabinet_id"].removeprefix("cab-")}
    strategy |= schema["/streetlight-cabinets/{code}"]["GET"].as_strategy(
        mode, path_parameters=cabinet
    )
    taken = displaced(database_url, sewers[3])
    acknowledge(conn, taken, "night-shift")  # every caller's acknowledgement of it is refused
    for detection_id in (displaced(database_url, sewers[2]), taken):
        strategy |= schema["/detections/{detection_id}/acknowledge"]["POST"].as_strategy(
            mode, path_parameters={"detection_id": detection_id}
        )
    if mode is GenerationMode.POSITIVE:  # a fixed body leaves nothing to make invalid
        report = {"category": "litter", "asset_code": sewers[1], "source": "inspector"}
        strategy |= schema["/cases"]["POST"].as_strategy(mode, body=report)
    return strategy


@pytest.mark.parametrize("mode", list(GenerationMode))
@pytest.mark.parametrize("role", CALLERS)
def test_every_answer_is_documented_and_none_is_a_server_error(
    app: FastAPI,
    conn: psycopg.Connection,
    database_url: str,
    city: City,
    role: Role,
    mode: GenerationMode,
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    bearer = {"Authorization": f"Bearer {create_token(conn, CALLERS[role], role)}"}

    @given(case=fuzzed_requests(schema, mode, conn, database_url, city))
    @settings(max_examples=50, deadline=None, derandomize=True)
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=bearer, checks=CHECKS)

    call()
