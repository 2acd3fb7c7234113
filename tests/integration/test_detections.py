"""Detections acknowledged and listed, the cover dictionary and the detections over the API and
the CLI, against a real database: detections made by the scene engine from stored readings."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cases.access import create_token
from cases.service import CaseService
from cityops.api import build_app
from cityops.cli import app as cli_app
from scenes.detections import (
    AlreadyAcknowledgedError,
    DetectionNotFoundError,
    acknowledge,
    get_detection,
    list_detections,
)
from scenes.engine import run_once
from scenes.settings import ScenesSettings
from tests.plugin import CATALOG, store_tilts

T0_S = 1_767_000_000  # 2025-12-29T09:20:00Z; the readings' times, not the tests' clock
#: When the scenes judge them: 30 min on, short of the offline limit (1.5 hourly heartbeats).
JUDGED_S = T0_S + 1800


@dataclass(frozen=True)
class Cover:
    code: str
    device_id: str
    owner: str
    detection_id: int = 0
    case_id: int | None = None


@dataclass(frozen=True)
class Scene:
    """Three covers of district d0 the scenes judged: two still displaced, one upright again."""

    drainage: Cover  # a sewage cover (the drainage company's), displaced since T0 + 600 s
    water: Cover  # a water-supply cover (the water company's), displaced since T0 + 600 s
    cleared: Cover  # a gas cover displaced from T0 + 600 s to T0 + 1,200 s
    maintainer: str  # the drainage cover's sensor is maintained by this unit, not its owner


def first_cover(city, category: str) -> Cover:
    asset = next(a for a in city.assets if a["category"] == category)
    return Cover(asset["code"], f"mh-{asset['code']}", asset["owner_unit_id"])


@pytest.fixture
def scene(conn: psycopg.Connection, database_url: str, city) -> Scene:
    drainage, water, cleared = (first_cover(city, c) for c in ("sewage", "water_supply", "gas"))
    maintainer = "d0-telecom"
    conn.execute(
        "update assets set maintainer_unit_id = %s where code = %s", (maintainer, drainage.code)
    )
    upright, tilted = 2.0, 27.0
    for cover in (drainage, water):
        store_tilts(database_url, cover.device_id, [(T0_S, upright), (T0_S + 600, tilted)])
    store_tilts(
        database_url,
        cleared.device_id,
        [(T0_S, upright), (T0_S + 600, tilted), (T0_S + 1200, upright)],
    )
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=JUDGED_S)

    def judged(cover: Cover) -> Cover:
        row = conn.execute(
            "select detection_id, case_id from detections "
            "where device_id = %s and kind = 'cover_displaced'",
            (cover.device_id,),
        ).fetchone()
        assert row is not None, f"no detection for {cover.device_id}"
        return Cover(cover.code, cover.device_id, cover.owner, row[0], row[1])

    return Scene(judged(drainage), judged(water), judged(cleared), maintainer)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def database_now(conn: psycopg.Connection) -> datetime:
    return conn.execute("select clock_timestamp()").fetchone()[0]


def missing_detection(conn: psycopg.Connection) -> int:
    return conn.execute("select coalesce(max(detection_id), 0) + 1000 from detections").fetchone()[
        0
    ]


# -- the domain --------------------------------------------------------------------------------


def test_acknowledging_records_who_when_and_why_and_leaves_the_detection_and_its_case(
    conn, database_url, scene: Scene
) -> None:
    cover = scene.drainage
    assert cover.case_id is not None
    cases = CaseService(conn, CATALOG)
    case_before, history_before = cases.state_of(cover.case_id), cases.history(cover.case_id)
    before = database_now(conn)
    done = acknowledge(conn, cover.detection_id, "alice", "crew on the way")
    after = database_now(conn)
    assert (done.acknowledged_by, done.acknowledged_note) == ("alice", "crew on the way")
    assert done.acknowledged_at is not None
    assert before <= done.acknowledged_at <= after
    # what the scene found is as it was: still active, from the tilt at T0 + 600 s, same case
    assert (done.kind, done.subject, done.device_id, done.district) == (
        "cover_displaced",
        cover.code,
        cover.device_id,
        "d0",
    )
    assert (done.first_seen, done.cleared_at, done.case_id) == (
        at(T0_S + 600),
        None,
        cover.case_id,
    )
    assert cases.state_of(cover.case_id) == case_before
    assert cases.history(cover.case_id) == history_before
    listed = list_detections(conn, kind="cover_displaced", district="d0", limit=500)
    assert done in listed
    # the scene keeps judging it (the cover still tilted later) and the acknowledgement stays
    store_tilts(database_url, cover.device_id, [(T0_S + 1500, 28.0)])
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=JUDGED_S)
    again = get_detection(conn, cover.detection_id)
    assert (again.count, again.cleared_at) == (2, None)  # the tilts at 600 s and 1,500 s
    assert (again.acknowledged_by, again.acknowledged_at, again.acknowledged_note) == (
        "alice",
        done.acknowledged_at,
        "crew on the way",
    )


def test_an_unknown_detection_cannot_be_acknowledged(conn, scene: Scene) -> None:
    missing = missing_detection(conn)
    with pytest.raises(DetectionNotFoundError, match=f"^no detection {missing}$"):
        acknowledge(conn, missing, "alice")


def test_a_detection_acknowledged_by_someone_else_is_refused_naming_who_and_when(
    conn, scene: Scene
) -> None:
    first = acknowledge(conn, scene.water.detection_id, "alice", "seen on the camera")
    assert first.acknowledged_at is not None
    with pytest.raises(AlreadyAcknowledgedError) as refused:
        acknowledge(conn, scene.water.detection_id, "bob", "mine")
    assert str(refused.value) == (
        f"detection {scene.water.detection_id} is already acknowledged by alice at "
        f"{first.acknowledged_at.isoformat(timespec='seconds')}"
    )
    assert refused.value.detection == first  # bob's is not recorded


def test_acknowledging_again_by_the_same_person_changes_nothing(conn, scene: Scene) -> None:
    first = acknowledge(conn, scene.water.detection_id, "alice", "seen on the camera")
    again = acknowledge(conn, scene.water.detection_id, "alice", "a second look")
    assert again == first


def test_of_two_acknowledging_at_once_one_wins_and_the_other_is_told_who(
    database_url, conn, scene: Scene
) -> None:
    start = threading.Barrier(2)
    won: list[str] = []
    refused: list[AlreadyAcknowledgedError] = []
    errors: list[BaseException] = []

    def ack(person: str) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                start.wait(timeout=10)
                acknowledge(own, scene.drainage.detection_id, person)
            won.append(person)
        except AlreadyAcknowledgedError as exc:
            refused.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ack, args=(p,)) for p in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(won) == len(refused) == 1
    assert refused[0].detection.acknowledged_by == won[0]


def test_detections_are_listed_active_or_all_by_district_and_kind(conn, scene: Scene) -> None:
    mine = {scene.drainage.detection_id, scene.water.detection_id, scene.cleared.detection_id}

    def listed(**filters) -> set[int]:
        return {d.detection_id for d in list_detections(conn, limit=500, **filters)} & mine

    active = {scene.drainage.detection_id, scene.water.detection_id}
    assert listed() == active
    assert listed(active_only=False) == mine
    assert listed(active_only=False, district="d0", kind="cover_displaced") == mine
    assert listed(district="elsewhere") == set()
    assert listed(kind="water_rising") == set()
    (cleared,) = [
        d
        for d in list_detections(conn, active_only=False, kind="cover_displaced", limit=500)
        if d.detection_id == scene.cleared.detection_id
    ]
    assert (cleared.first_seen, cleared.cleared_at, cleared.severity) == (
        at(T0_S + 600),
        at(T0_S + 1200),
        CATALOG.get("cover_displaced").severity,
    )


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli(database_url: str):
    runner = CliRunner()
    env = {"CITYOPS_DATABASE_URL": database_url, "COLUMNS": "200"}

    def run(*args: str):
        return runner.invoke(cli_app, list(args), env=env)

    return run


def test_cli_lists_and_acknowledges_detections(cli, scene: Scene) -> None:
    import json

    # other tests' detections share district d0: all of them, not the newest page
    listed = cli(
        "scenes", "detections", "--district", "d0", "--limit", "100000", "--format", "json"
    )
    assert listed.exit_code == 0, listed.output
    ids = {d["detection_id"] for d in json.loads(listed.stdout)}
    assert {scene.drainage.detection_id, scene.water.detection_id} <= ids
    assert scene.cleared.detection_id not in ids
    everything = cli(
        "scenes", "detections", "--all", "--kind", "cover_displaced", "--format", "json"
    )
    shown = {d["detection_id"]: d for d in json.loads(everything.stdout)}
    assert shown[scene.cleared.detection_id]["cleared_at"] == at(T0_S + 1200).isoformat()
    assert shown[scene.drainage.detection_id]["subject"] == scene.drainage.code

    detection = str(scene.drainage.detection_id)
    done = cli("scenes", "ack", detection, "--by", "alice", "--note", "crew on the way")
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(
        f"detection {detection} (cover_displaced on {scene.drainage.code}): acknowledged by alice"
    )
    assert cli("scenes", "ack", detection, "--by", "alice").exit_code == 0  # the same again
    table = cli("scenes", "detections", "--kind", "cover_displaced")
    (row,) = [line for line in table.stdout.splitlines() if line.split()[0] == detection]
    assert scene.drainage.code in row
    assert "active" in row
    assert "alice" in row
    assert "crew on the way" in row


def test_cli_failures_are_one_line_with_the_cause_and_the_fix_and_exit_2(
    cli, conn, scene: Scene
) -> None:
    detection = str(scene.water.detection_id)
    assert cli("scenes", "ack", detection, "--by", "alice").exit_code == 0
    missing = missing_detection(conn)
    failures = {
        ("scenes", "ack", detection, "--by", "bob"): (
            f"error: detection {detection} is already acknowledged by alice at ",
            f"comment on its case: `cityops cases comment {scene.water.case_id} --note TEXT`",
        ),
        ("scenes", "ack", str(missing), "--by", "bob"): (
            f"error: no detection {missing}: ",
            "`cityops scenes detections --all` lists the detections and their ids",
        ),
        ("scenes", "ack", detection, "--by", " "): ("error: --by is empty", "name who"),
        ("scenes", "detections", "--kind", "tilt"): (
            "error: no detection kind 'tilt': use one of cover_displaced, ",
            "flooding",
        ),
    }
    for args, (cause, fix) in failures.items():
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(cause), (args, line)
        assert fix in line, (args, line)
    # bob's attempt changed nothing
    assert get_detection(conn, scene.water.detection_id).acknowledged_by == "alice"


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture
def api(database_url: str, conn: psycopg.Connection, scene: Scene, tag: str):
    """Call the API as a unit (by name) or as an operator ("operator"); a second district's
    office is "elsewhere" (a district of this test alone)."""
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
        "city-office": ("city-office", "coordinator"),
        "d0-coordinating": ("d0-coordinating", "coordinator"),
        "elsewhere": (f"{district}-coordinating", "coordinator"),
        "d0-drainage": ("d0-drainage", "unit"),
        "d0-water": ("d0-water", "unit"),
        "d0-telecom": ("d0-telecom", "unit"),
    }
    tokens = {name: create_token(conn, unit, role) for name, (unit, role) in callers.items()}
    with TestClient(build_app(database_url, CATALOG)) as client:

        def call(method: str, path: str, caller: str | None, headers=None, **kwargs):
            if caller is not None:
                headers = {"Authorization": f"Bearer {tokens[caller]}"}
            return client.request(method, path, headers=headers, **kwargs)

        yield call


def ack_path(detection_id: int) -> str:
    return f"/detections/{detection_id}/acknowledge"


def test_every_new_endpoint_wants_a_valid_token(api, scene: Scene) -> None:
    requests = [
        ("GET", f"/assets/{scene.drainage.code}"),
        ("GET", "/covers/summary"),
        ("GET", "/detections"),
        ("POST", ack_path(scene.drainage.detection_id)),
    ]
    for method, path in requests:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            response = api(method, path, None, headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert response.json() == {
                "error": "a valid bearer token is required (cityops units token UNIT)"
            }


def test_a_cover_shows_its_units_sensor_state_and_the_cases_the_caller_may_see(
    api, scene: Scene
) -> None:
    cover = scene.drainage
    path = f"/assets/{cover.code}"
    expected = {
        "code": cover.code,
        "category": "sewage",
        "district": "d0",
        "competent_unit_id": "d0-coordinating",
        "owner_unit_id": "d0-drainage",
        "maintainer_unit_id": scene.maintainer,
        "devices": [cover.device_id],
        "state": "cover_displaced",
    }
    its_case = {
        "case_id": cover.case_id,
        "category": "cover_displaced",
        "state": "dispatched",
        "unit_id": "d0-drainage",
        "closed_at": None,
    }
    for caller in ("operator", "city-office", "d0-coordinating", "d0-drainage"):
        shown = api("GET", path, caller)
        assert shown.status_code == 200, (caller, shown.text)
        body = shown.json()
        assert {k: body[k] for k in expected} == expected, caller
        assert [{k: c[k] for k in its_case} for c in body["cases"]] == [its_case], caller
    # the sensor's maintainer sees the cover, but not the owner's case
    maintained = api("GET", path, scene.maintainer)
    assert maintained.status_code == 200, maintained.text
    assert (maintained.json()["state"], maintained.json()["cases"]) == ("cover_displaced", [])
    # another unit, and another district's office: as if there were no such cover
    unknown = "9999999999999999"
    nothing = api("GET", f"/assets/{unknown}", "operator")
    assert (nothing.status_code, nothing.json()) == (404, {"error": f"no component {unknown}"})
    for caller in ("d0-water", "elsewhere"):
        hidden = api("GET", path, caller)
        assert hidden.status_code == 404, caller
        assert hidden.json() == {"error": f"no component {cover.code}"}
    malformed = api("GET", "/assets/12345", "operator")
    assert malformed.status_code == 422
    assert [p["field"] for p in malformed.json()["problems"]] == ["path.code"]


def test_the_covers_summary_counts_what_the_caller_sees(api, scene: Scene) -> None:
    def rows(caller: str, query: str = "") -> list[dict]:
        response = api("GET", f"/covers/summary{query}", caller)
        assert response.status_code == 200, response.text
        return response.json()

    everything = rows("operator", "?district=d0")
    assert {r["district"] for r in everything} == {"d0"}
    displaced_by_owner = {r["owner_unit_id"] for r in everything if r["state"] == "cover_displaced"}
    assert {"d0-drainage", "d0-water"} <= displaced_by_owner
    water = rows("d0-water")
    assert {r["owner_unit_id"] for r in water} == {"d0-water"}  # its own covers only
    assert ("d0", "d0-water", "cover_displaced") in {
        (r["district"], r["owner_unit_id"], r["state"]) for r in water
    }
    assert {r["district"] for r in rows("d0-coordinating")} == {"d0"}
    assert rows("d0-coordinating", "?district=d0") == rows("d0-coordinating")
    assert rows("elsewhere") == []
    assert rows("elsewhere", "?district=d0") == []  # another district's: none of its business
    assert rows("d0-coordinating", "?district=elsewhere") == []


def test_detections_are_listed_to_whoever_may_see_them(api, scene: Scene) -> None:
    mine = {
        scene.drainage.detection_id: "drainage",
        scene.water.detection_id: "water",
        scene.cleared.detection_id: "cleared",
    }

    def seen(caller: str, query: str = "") -> set[str]:
        response = api("GET", f"/detections?limit=500{query}", caller)
        assert response.status_code == 200, response.text
        return {mine[d["detection_id"]] for d in response.json() if d["detection_id"] in mine}

    assert seen("operator") == {"drainage", "water"}
    assert seen("operator", "&active=false") == {"drainage", "water", "cleared"}
    assert seen("operator", "&kind=cover_displaced&district=d0") == {"drainage", "water"}
    assert seen("operator", "&kind=sensor_offline") == set()
    assert seen("city-office") == {"drainage", "water"}
    assert seen("d0-coordinating", "&active=false") == {"drainage", "water", "cleared"}
    assert seen("elsewhere", "&active=false") == set()
    assert seen("d0-drainage") == {"drainage"}  # the case on its desk
    assert seen("d0-water") == {"water"}
    assert seen("d0-telecom") == set()  # it maintains the drainage cover's sensor, not the case
    (drainage,) = [
        d
        for d in api("GET", "/detections?limit=500", "d0-drainage").json()
        if d["detection_id"] == scene.drainage.detection_id
    ]
    assert drainage == {
        "detection_id": scene.drainage.detection_id,
        "scene": "covers",
        "kind": "cover_displaced",
        "subject": scene.drainage.code,
        "device_id": scene.drainage.device_id,
        "district": "d0",
        "severity": CATALOG.get("cover_displaced").severity,
        "first_seen": drainage["first_seen"],
        "last_seen": drainage["last_seen"],
        "cleared_at": None,
        "count": 1,
        "case_id": scene.drainage.case_id,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "acknowledged_note": None,
    }
    assert datetime.fromisoformat(drainage["first_seen"]) == at(T0_S + 600)
    bad = api("GET", "/detections?kind=tilt&limt=5", "operator")
    assert bad.status_code == 422
    assert sorted(p["field"] for p in bad.json()["problems"]) == ["query.kind", "query.limt"]


def test_offices_and_operators_acknowledge_once_and_units_may_not(api, conn, scene: Scene) -> None:
    cover = scene.drainage
    path = ack_path(cover.detection_id)
    missing = missing_detection(conn)
    # who may not see it gets what an unknown detection gets
    unknown = api("POST", ack_path(missing), "operator", json={})
    assert (unknown.status_code, unknown.json()) == (404, {"error": f"no detection {missing}"})
    for caller in ("d0-water", "elsewhere"):
        hidden = api("POST", path, caller, json={})
        assert hidden.status_code == 404, caller
        assert hidden.json() == {"error": f"no detection {cover.detection_id}"}
    owner = api("POST", path, "d0-drainage", json={"note": "ours"})
    assert owner.status_code == 403
    assert owner.json() == {
        "error": "d0-drainage may not acknowledge detections (operators and offices may)"
    }
    case = api("GET", f"/cases/{cover.case_id}", "operator").json()

    done = api("POST", path, "d0-coordinating", json={"note": "crew on the way"})
    assert done.status_code == 200, done.text
    acknowledged = done.json()
    assert (
        acknowledged["detection_id"],
        acknowledged["acknowledged_by"],
        acknowledged["acknowledged_note"],
        acknowledged["cleared_at"],
    ) == (cover.detection_id, "d0-coordinating", "crew on the way", None)
    again = api("POST", path, "d0-coordinating")  # no body: the same again, unchanged
    assert (again.status_code, again.json()) == (200, acknowledged)
    first_at = datetime.fromisoformat(acknowledged["acknowledged_at"])
    late = api("POST", path, "operator", json={"note": "me too"})
    assert late.status_code == 409
    assert late.json() == {
        "error": f"detection {cover.detection_id} is already acknowledged by d0-coordinating "
        f"at {first_at.isoformat(timespec='seconds')}",
        "acknowledged_by": "d0-coordinating",
        "acknowledged_at": late.json()["acknowledged_at"],
    }
    assert datetime.fromisoformat(late.json()["acknowledged_at"]) == first_at
    assert api("GET", f"/cases/{cover.case_id}", "operator").json() == case  # case untouched
    # the other active one, acknowledged by an operator (the token's unit)
    water = api("POST", ack_path(scene.water.detection_id), "operator")
    assert water.json()["acknowledged_by"] == "city-office"
    invalid = api("POST", path, "d0-coordinating", json={"note": "a\x00", "by": "someone"})
    assert invalid.status_code == 422
    assert sorted(p["field"] for p in invalid.json()["problems"]) == ["body.by", "body.note"]
