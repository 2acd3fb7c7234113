"""Lamps and cabinets under FIWARE's names, against a real database: the entities, their API
routes, and the retained detection documents the scenes service publishes for street lighting.

The street-lighting scene is not here yet: its lamps, cabinet, readings and detections are
written in SQL as the registry, ingest and the scene would write them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from cases.access import create_token
from cityops.api import build_app
from scenes.streetlights import streetlight, streetlight_cabinet
from tests.plugin import CATALOG, Publisher, Subscriber, running_scenes

T0 = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)  # the readings' times, not the tests' clock
MINUTE = timedelta(minutes=1)
#: The lit lamp's reading: 240 V, 0.75 A at a power factor of 0.8125 is 146.25 W.
LIT = {"voltage_v": 240.0, "current_a": 0.75, "power_w": 146.25, "power_factor": 0.8125}
DIMMED = {**LIT, "current_a": 0.375, "power_w": 73.125}  # at 50 %
DARK = {"voltage_v": 240.0, "current_a": 0.0, "power_w": 0.0, "power_factor": 0.0}


@dataclass(frozen=True)
class Lamps:
    """A cabinet of district d0 (the d0-lighting unit's) and its three lamps, on circuits 1-3."""

    cabinet: str
    lit: str  # switched on at T0 + 5 min, at full power since
    dimmed: str  # on since T0, dimmed to 50 % at T0 + 10 min
    dark: str  # on at T0, switched off at T0 + 5 min


def insert_asset(conn: psycopg.Connection, code: str, category: str, **properties) -> None:
    conn.execute(
        "insert into assets (code, division, major, minor, serial, category, owner_unit_id, "
        "maintainer_unit_id, lat, lon, region_id, properties) "
        "values (%s, %s, %s, %s, %s, %s, 'd0-lighting', 'd0-lighting', 41.8, 123.4, 'd0', %s)",
        (code, code[:6], code[6:8], code[8:10], code[10:], category, Jsonb(properties)),
    )


def store(conn: psycopg.Connection, code: str, at: datetime, on: bool, dim: float, values) -> None:
    conn.execute(
        "insert into light_readings (device_id, ts, lamp_on, dim_pct, voltage_v, current_a, "
        "power_w, power_factor) values (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            f"lt-{code}",
            at,
            on,
            dim,
            values["voltage_v"],
            values["current_a"],
            values["power_w"],
            values["power_factor"],
        ),
    )


@pytest.fixture
def lamps(conn: psycopg.Connection, city) -> Lamps:
    """The lamps, their cabinet and readings, in the city's district d0 (their own division)."""
    division = random.randrange(100_000, 300_000)  # the city's are 300,000 and above
    cabinet = f"{division}0220000001"
    gateway = f"cab-{cabinet}"
    insert_asset(conn, cabinet, "lighting_cabinet")
    conn.execute(
        "insert into devices (device_id, type, asset_code) values (%s, 'gateway', %s)",
        (gateway, cabinet),
    )
    found = Lamps(cabinet, *(f"{division}0201{n:06d}" for n in (1, 2, 3)))
    for circuit, code in enumerate((found.lit, found.dimmed, found.dark), start=1):
        insert_asset(
            conn,
            code,
            "street_lamp",
            cabinet_id=gateway,
            circuit=circuit,
            rated_power_w=150.0,
        )
        conn.execute(
            "insert into devices (device_id, type, asset_code, gateway_id) "
            "values (%s, 'light', %s, %s)",
            (f"lt-{code}", code, gateway),
        )
    store(conn, found.lit, T0, False, 0.0, DARK)
    store(conn, found.lit, T0 + 5 * MINUTE, True, 100.0, LIT)
    store(conn, found.lit, T0 + 10 * MINUTE, True, 100.0, LIT)
    store(conn, found.dimmed, T0, True, 100.0, LIT)
    store(conn, found.dimmed, T0 + 10 * MINUTE, True, 50.0, DIMMED)
    store(conn, found.dark, T0, True, 100.0, LIT)
    store(conn, found.dark, T0 + 5 * MINUTE, False, 0.0, DARK)
    return found


def detect(conn: psycopg.Connection, kind: str, subject: str, device_id: str) -> int:
    """An active lighting detection, as the scene would write it."""
    row = conn.execute(
        "insert into detections (scene, kind, subject, device_id, district, severity, "
        "first_seen, last_seen, evidence) values ('lighting', %s, %s, %s, 'd0', 'major', %s, %s, "
        "'{}') returning detection_id",
        (kind, subject, device_id, T0 + 10 * MINUTE, T0 + 10 * MINUTE),
    ).fetchone()
    assert row is not None
    return int(row[0])


def clear(conn: psycopg.Connection, detection_id: int) -> None:
    conn.execute(
        "update detections set cleared_at = %s where detection_id = %s",
        (T0 + 15 * MINUTE, detection_id),
    )


# -- the entities ------------------------------------------------------------------------------


def test_a_lit_lamp_is_a_streetlight_with_its_latest_reading_and_its_cabinet(
    conn, lamps: Lamps
) -> None:
    assert streetlight(conn, lamps.lit) == {
        "id": f"urn:ngsi-ld:Streetlight:{lamps.lit}",
        "type": "Streetlight",
        "location": {"type": "Point", "coordinates": [123.4, 41.8]},
        "status": "ok",
        "powerState": "on",
        "refStreetlightControlCabinet": f"urn:ngsi-ld:StreetlightControlCabinet:{lamps.cabinet}",
        "circuit": "1",
        "powerRating": 150.0,
        "powerConsumption": 146.25,
        "current": 0.75,
        "voltage": 240.0,
        "powerFactor": 0.8125,
        "illuminanceLevel": 1.0,
        "dateLastSwitchingOn": T0 + 5 * MINUTE,
        "dateModified": T0 + 10 * MINUTE,
    }
    # by its controller's id too
    assert streetlight(conn, f"lt-{lamps.lit}") == streetlight(conn, lamps.lit)


def test_power_state_is_low_when_dimmed_and_off_when_unlit(conn, lamps: Lamps) -> None:
    dimmed = streetlight(conn, lamps.dimmed)
    assert dimmed is not None
    assert (
        dimmed["powerState"],
        dimmed["illuminanceLevel"],
        dimmed["powerConsumption"],
        dimmed["dateLastSwitchingOn"],  # lit since its first reading
        dimmed["circuit"],
    ) == ("low", 0.5, 73.125, T0, "2")
    dark = streetlight(conn, lamps.dark)
    assert dark is not None
    assert (
        dark["powerState"],
        dark["powerConsumption"],
        dark["dateLastSwitchingOn"],
        dark["dateModified"],
    ) == ("off", 0.0, T0, T0 + 5 * MINUTE)


def test_status_follows_the_active_lighting_detections_on_the_lamp(conn, lamps: Lamps) -> None:
    def status() -> str:
        entity = streetlight(conn, lamps.lit)
        assert entity is not None
        return entity["status"]

    out = detect(conn, "lamp_out", lamps.lit, f"lt-{lamps.lit}")
    assert status() == "defectiveLamp"
    leakage = detect(conn, "leakage", lamps.lit, f"lt-{lamps.lit}")
    assert status() == "columnIssue"  # the fault further up the supply
    clear(conn, leakage)
    assert status() == "defectiveLamp"
    clear(conn, out)
    assert status() == "ok"
    # the cabinet's outage is the cabinet's: its lamps are not defective
    detect(conn, "cabinet_outage", lamps.cabinet, f"cab-{lamps.cabinet}")
    assert status() == "ok"


def test_a_cabinet_sums_its_lamps_latest_power_and_names_its_outages(conn, lamps: Lamps) -> None:
    entity = {
        "id": f"urn:ngsi-ld:StreetlightControlCabinet:{lamps.cabinet}",
        "type": "StreetlightControlCabinet",
        "location": {"type": "Point", "coordinates": [123.4, 41.8]},
        "totalActivePower": 219.375,  # 146.25 + 73.125 + 0
        "dateModified": T0 + 10 * MINUTE,
    }
    assert streetlight_cabinet(conn, lamps.cabinet) == entity
    detect(conn, "cabinet_outage", lamps.cabinet, f"cab-{lamps.cabinet}")
    assert streetlight_cabinet(conn, lamps.cabinet) == {**entity, "annotations": ["cabinet_outage"]}


def test_a_component_that_is_no_lamp_or_cabinet_is_none(conn, lamps: Lamps, city) -> None:
    cover = next(a["code"] for a in city.assets if a["category"] == "sewage")
    assert streetlight(conn, cover) is None
    assert streetlight(conn, lamps.cabinet) is None
    assert streetlight_cabinet(conn, lamps.lit) is None
    assert streetlight_cabinet(conn, cover) is None


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture
def api(database_url: str, conn: psycopg.Connection, lamps: Lamps, tag: str):
    """Call the API as a unit (by name) or as an operator; "elsewhere" is another district's
    office (a district of this test alone)."""
    district = f"x{tag}"
    conn.execute(
        "insert into regions (region_id, name, level) values (%s, 'another district', 'district')",
        (district,),
    )
    conn.execute(
        "insert into units (unit_id, name, level, kind, region_id) "
        "values (%s, 'its office', 'district', 'coordinating', %s)",
        (f"{district}-coordinating", district),
    )
    callers = {
        "operator": ("city-office", "operator"),
        "d0-coordinating": ("d0-coordinating", "coordinator"),
        "elsewhere": (f"{district}-coordinating", "coordinator"),
        "d0-lighting": ("d0-lighting", "unit"),
        "d0-drainage": ("d0-drainage", "unit"),
    }
    tokens = {name: create_token(conn, unit, role) for name, (unit, role) in callers.items()}
    with TestClient(build_app(database_url, CATALOG)) as client:

        def get(path: str, caller: str):
            return client.get(path, headers={"Authorization": f"Bearer {tokens[caller]}"})

        yield get


def test_the_api_answers_a_lamp_and_its_cabinet_to_whoever_sees_them(api, lamps: Lamps) -> None:
    for caller in ("operator", "d0-coordinating", "d0-lighting"):
        lamp = api(f"/streetlights/{lamps.lit}", caller)
        assert lamp.status_code == 200, (caller, lamp.text)
        body = lamp.json()
        assert datetime.fromisoformat(body.pop("dateLastSwitchingOn")) == T0 + 5 * MINUTE
        assert datetime.fromisoformat(body.pop("dateModified")) == T0 + 10 * MINUTE
        assert body == {
            "id": f"urn:ngsi-ld:Streetlight:{lamps.lit}",
            "type": "Streetlight",
            "location": {"type": "Point", "coordinates": [123.4, 41.8]},
            "status": "ok",
            "powerState": "on",
            "refStreetlightControlCabinet": (
                f"urn:ngsi-ld:StreetlightControlCabinet:{lamps.cabinet}"
            ),
            "circuit": "1",
            "powerRating": 150.0,
            "powerConsumption": 146.25,
            "current": 0.75,
            "voltage": 240.0,
            "powerFactor": 0.8125,
            "illuminanceLevel": 1.0,
        }
        cabinet = api(f"/streetlight-cabinets/{lamps.cabinet}", caller)
        assert cabinet.status_code == 200, (caller, cabinet.text)
        assert cabinet.json()["totalActivePower"] == 219.375
        assert "annotations" not in cabinet.json()  # no value: left out, not null


def test_the_api_answers_404_for_an_unknown_code_and_for_what_the_caller_may_not_see(
    api, lamps: Lamps
) -> None:
    unknown = "9999999999999999"
    for path, what in (
        ("/streetlights", "streetlight"),
        ("/streetlight-cabinets", "streetlight cabinet"),
    ):
        nothing = api(f"{path}/{unknown}", "operator")
        assert (nothing.status_code, nothing.json()) == (404, {"error": f"no {what} {unknown}"})
    for caller in ("d0-drainage", "elsewhere"):
        hidden = api(f"/streetlights/{lamps.lit}", caller)
        assert (hidden.status_code, hidden.json()) == (
            404,
            {"error": f"no streetlight {lamps.lit}"},
        ), caller
        hidden = api(f"/streetlight-cabinets/{lamps.cabinet}", caller)
        assert (hidden.status_code, hidden.json()) == (
            404,
            {"error": f"no streetlight cabinet {lamps.cabinet}"},
        ), caller
    malformed = api(f"/streetlights/lt-{lamps.lit}", "operator")
    assert malformed.status_code == 422
    assert [p["field"] for p in malformed.json()["problems"]] == ["path.code"]


# -- outbound ----------------------------------------------------------------------------------


def test_lighting_detections_are_published_with_their_fiware_names(
    conn, database_url, broker_url, lamps: Lamps, publisher: Publisher, tag: str, tmp_path
) -> None:
    out = detect(conn, "lamp_out", lamps.lit, f"lt-{lamps.lit}")
    outage = detect(conn, "cabinet_outage", lamps.cabinet, f"cab-{lamps.cabinet}")
    prefix = f"fiware-{tag}"
    detections = f"{prefix}/cityops/v1/out/detections"
    subscriber = Subscriber(broker_url)
    try:
        subscriber.subscribe(f"{detections}/#")
        with running_scenes(
            database_url, broker_url, tmp_path / "scenes.log", CITYOPS_MQTT_TOPIC_PREFIX=prefix
        ):
            lamp = subscriber.first(
                lambda m: m.topic == f"{detections}/lamp_out/{lamps.lit}", "the lamp's detection"
            )
            cabinet = subscriber.first(
                lambda m: m.topic == f"{detections}/cabinet_outage/{lamps.cabinet}",
                "the cabinet's detection",
            )
    finally:
        subscriber.close()
        publisher.publish_many(
            [(topic, b"") for topic in {m.topic for m in subscriber.received}], retain=True
        )
    lamp_document = json.loads(lamp.payload)
    assert (lamp_document["detection_id"], lamp_document["state"]) == (out, "active")
    assert {k: lamp_document[k] for k in ("refStreetlight", "refStreetlightControlCabinet")} == {
        "refStreetlight": f"urn:ngsi-ld:Streetlight:{lamps.lit}",
        "refStreetlightControlCabinet": f"urn:ngsi-ld:StreetlightControlCabinet:{lamps.cabinet}",
    }
    assert lamp_document["status"] == "defectiveLamp"
    cabinet_document = json.loads(cabinet.payload)
    assert cabinet_document["detection_id"] == outage
    assert cabinet_document["refStreetlightControlCabinet"] == (
        f"urn:ngsi-ld:StreetlightControlCabinet:{lamps.cabinet}"
    )
    assert "refStreetlight" not in cabinet_document
    assert "status" not in cabinet_document
