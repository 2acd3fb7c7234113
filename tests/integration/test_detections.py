"""Detections acknowledged and listed, in Python and from the CLI, against a real database:
detections made by the scene engine from stored readings."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from typer.testing import CliRunner

from cases.service import CaseService
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

    listed = cli("scenes", "detections", "--district", "d0", "--format", "json")
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
