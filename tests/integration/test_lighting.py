"""The street-lighting scene end to end: lamp readings through ingest, detections, cabinet
correlation, the cases they open and close, and the nightly indicators, against real PostgreSQL
and MQTT."""

from __future__ import annotations

import json
import random
import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta

import psycopg
import pytest
from astral import Observer
from astral.sun import sunrise, sunset
from typer.testing import CliRunner

from cases.access import Caller
from cases.lifecycle import Action
from cases.service import CaseService
from cityops.cli import app
from scenes.engine import LIGHTING, run_once
from scenes.score import Interval, score, stored_detections
from scenes.settings import ScenesSettings
from scenes.sky import Plan
from simulator.city import City, CitySpec
from simulator.fleet import RunOptions, simulate
from simulator.publish import PublishOptions, publish
from simulator.scenario import Scenario
from tests.plugin import CATALOG, import_city, store_readings, wait_for


def recent(month: int, day: int) -> date:
    """The latest ``month``-``day`` two days ago or more: inside the readings' retention (400
    days), with the sun of its season."""
    today = date.today()
    this_year = date(today.year, month, day)
    return this_year if this_year <= today - timedelta(days=2) else date(today.year - 1, month, day)


def midnight(day: date) -> float:
    return datetime.combine(day, time(0), tzinfo=UTC).timestamp()


EVENING = recent(10, 6)
CITY = Observer(latitude=41.8057, longitude=123.4315)  # the simulated city: Shenyang
# sunset about 17:19 and sunrise about 05:51 local (UTC+8), both in the UTC day of EVENING
# (whole seconds: readings carry milliseconds)
SUNSET = float(round(sunset(CITY, EVENING, tzinfo=UTC).timestamp()))
SUNRISE = float(round(sunrise(CITY, EVENING, tzinfo=UTC).timestamp()))
START = midnight(EVENING) + 8 * 3600  # 16:00 in the city, before sunset
TROMSO = (69.65, 18.96)  # polar night from late November to mid January; midnight sun in June
WINTER = recent(12, 21)
SUMMER = recent(6, 21)
GUANGZHOU = (23.13, 113.26)  # sunset at the winter solstice about 17:48 local


def lit(power_w: float = 100.0, dim: float = 100.0) -> dict:
    return {
        "lamp_on": True,
        "dim_pct": dim,
        "voltage_v": 221.0,
        "power_w": power_w,
        "power_factor": 0.95,
        "fault_code": 0,
    }


DARK = {
    "lamp_on": False,
    "dim_pct": 0.0,
    "voltage_v": 221.0,
    "power_w": 0.0,
    "power_factor": 0.0,
    "fault_code": 0,
}


def add_lamp(
    conn: psycopg.Connection,
    city: City,
    n: int,
    *,
    lat: float,
    lon: float,
    plan: str | None = None,
    cabinet: str | None = None,
    region: str = "d0",
) -> str:
    """A lamp of 100 W at (lat, lon) in ``region``; its controller's device id."""
    division = city.spec.division_base
    code = f"{division}0201{900_000 + n:06d}"
    properties = {
        "rated_power_w": 100.0,
        **({"plan": plan} if plan else {}),
        **({"cabinet_id": cabinet} if cabinet else {}),
    }
    conn.execute(
        "insert into assets (code, division, major, minor, serial, category, "
        "owner_unit_id, maintainer_unit_id, lat, lon, region_id, properties) values "
        "(%s, %s, '02', '01', %s, 'street_lamp', 'd0-lighting', 'd0-lighting', %s, %s, %s, %s)",
        (code, str(division), f"{900_000 + n:06d}", lat, lon, region, json.dumps(properties)),
    )
    conn.execute(
        "insert into devices (device_id, type, asset_code) values (%s, 'light', %s)",
        (f"lt-{code}", code),
    )
    return f"lt-{code}"


def every(start: float, end: float, step: float = 300.0) -> list[float]:
    return [start + i * step for i in range(int((end - start) // step))]


def lighting_detections(conn: psycopg.Connection, devices: list[str]) -> list[tuple]:
    return conn.execute(
        "select kind, device_id, first_seen, cleared_at from detections "
        "where scene = 'lighting' and device_id = any(%s) order by first_seen",
        (devices,),
    ).fetchall()


@pytest.fixture
def two_cabinets(conn: psycopg.Connection, tmp_path) -> City:
    """A city of 80 lamps in two cabinets of 40, with component codes of its own."""
    spec = CitySpec(seed=1, covers=0, lamps=80, division_base=random.randrange(300_000, 900_000))
    return import_city(conn, tmp_path, spec)


def test_a_simulated_night_finds_every_lighting_fault_once_with_one_case_on_the_lighting_desk(
    conn, database_url, broker_url, two_cabinets, make_settings, start_worker
) -> None:
    city = two_cabinets
    lamps = [d for d in city.devices if d["type"] == "light"]
    cabinets = sorted({d["gateway_id"] for d in lamps})
    first, second = ([d["device_id"] for d in lamps if d["gateway_id"] == c] for c in cabinets[:2])
    minutes = [  # kind, subject, start (minutes after 16:00 local), duration
        ("lamp_out", first[0], 180, 60),
        ("lamp_degraded", first[1], 200, 60),
        ("low_power_factor", first[2], 240, 60),
        ("cabinet_outage", cabinets[1], 420, 45),
        ("day_burner", first[3], 900, 60),  # 07:00-08:00 local: after sunrise
    ]
    scenario = Scenario.model_validate(
        {
            "fault": [
                {"kind": k, "subject": s, "start_min": m, "duration_min": d}
                for k, s, m, d in minutes
            ]
        }
    )
    run = simulate(city, scenario, RunOptions(start=START, duration_s=16 * 3600, seed=3))
    lighting = [f for f in run.faults if f.subject_type in ("light", "cabinet")]
    assert sorted(f.kind for f in lighting if f.detectable) == sorted(k for k, *_ in minutes)
    lamp_ids = [d["device_id"] for d in lamps]
    start_worker(make_settings())
    publish(run.publications, PublishOptions(url=broker_url, speed=0), threading.Event())
    expected_rows = sum(
        len(json.loads(p.payload)) for p in run.publications if "/gateway/" in p.topic
    )
    wait_for(
        lambda: (
            conn.execute(
                "select count(*) from light_readings where device_id = any(%s)", (lamp_ids,)
            ).fetchone()
            == (expected_rows,)
        ),
        timeout_s=60,
        what="every lamp reading stored",
    )
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=START + 16 * 3600, scenes=(LIGHTING,))
    subjects = [*lamp_ids, *cabinets]
    faults = [Interval(f.kind, f.subject, f.start, f.end) for f in lighting]
    found = stored_detections(conn, None, None, devices=subjects)
    scores = {s.kind: (s.precision, s.recall) for s in score(faults, found, allowed_delay_s=300)}
    assert scores == dict.fromkeys(
        ("lamp_out", "lamp_degraded", "low_power_factor", "cabinet_outage", "day_burner"),
        (1.0, 1.0),
    )
    cases = conn.execute(
        "select c.category, c.unit_id, count(*) over (partition by c.case_id) "
        "from detections x join cases c on c.case_id = x.case_id "
        "where x.device_id = any(%s) order by 1",
        (subjects,),
    ).fetchall()
    assert cases == [  # one case each, on the district's lighting office's desk
        ("cabinet_dark", "d0-lighting", 1),
        ("lamp_day_burner", "d0-lighting", 1),
        ("lamp_degraded", "d0-lighting", 1),
        ("lamp_out", "d0-lighting", 1),
        ("lamp_power_quality", "d0-lighting", 1),
    ]
    # the dark cabinet's forty lamps opened nothing of their own
    assert lighting_detections(conn, second) == []


def test_lamp_cases_a_dark_cabinet_explains_are_merged_into_its_case(
    conn, database_url, city
) -> None:
    lamps = [d for d in city.devices if d["type"] == "light"]
    cabinet = lamps[0]["gateway_id"]
    members = [d["device_id"] for d in lamps if d["gateway_id"] == cabinet]
    rated = {
        f"lt-{a['code']}": a["properties"]["rated_power_w"]
        for a in city.assets
        if "rated_power_w" in a["properties"]
    }
    t0 = SUNSET + 3600  # night: every lamp should be lit
    early = members[0]
    rows = [(d, t, lit(rated[d])) for d in members for t in every(t0 - 1800, t0)]
    # the first lamp goes dark five minutes before the rest of its cabinet
    rows += [(early, t, DARK) for t in every(t0, t0 + 1800)]
    rows += [(d, t0, lit(rated[d])) for d in members[1:]]
    rows += [(d, t, DARK) for d in members[1:] for t in every(t0 + 300, t0 + 1800)]
    # the others' controllers report late: the first run sees the first lamp dark alone
    first_seen = [r for r in rows if r[1] < t0 + 300 or r[0] == early]
    store_readings(database_url, "light", first_seen)
    settings = ScenesSettings()
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, settings, CATALOG, now=t0 + 660, scenes=(LIGHTING,))
        (lamp_case,) = conn.execute(
            "select case_id from detections where device_id = %s and kind = 'lamp_out'", (early,)
        ).fetchone()
        assert lamp_case is not None  # alone in the dark for ten minutes: a lamp case
        store_readings(database_url, "light", [r for r in rows if r not in first_seen])
        run_once(scenes_conn, settings, CATALOG, now=t0 + 1500, scenes=(LIGHTING,))
    (cabinet_case,) = conn.execute(
        "select case_id from detections where device_id = %s and kind = 'cabinet_outage'",
        (cabinet,),
    ).fetchone()
    state, last_action, note = conn.execute(
        "select c.state, e.action, e.note from cases c join case_events e using (case_id) "
        "where case_id = %s order by e.event_id desc limit 1",
        (lamp_case,),
    ).fetchone()
    assert (state, last_action) == ("cancelled", "merge")
    assert note == f"merged into case {cabinet_case}: cabinet_outage on {city_code(conn, cabinet)}"
    assert conn.execute(
        "select count(*) from case_events where case_id = %s and action = 'report' "
        "and note like %s",
        (cabinet_case, f"case {lamp_case} merged into it:%"),
    ).fetchone() == (1,)
    # the lamp's finding now belongs to the cabinet's case; no lamp of the cabinet has a case
    assert conn.execute(
        "select case_id from detections where device_id = %s", (early,)
    ).fetchall() == [(cabinet_case,)]
    assert conn.execute(
        "select count(*) from cases where state not in ('closed', 'cancelled') and subject = any("
        "select asset_code from devices where device_id = any(%s))",
        (members,),
    ).fetchone() == (0,)


def city_code(conn: psycopg.Connection, device_id: str) -> str:
    return conn.execute(
        "select asset_code from devices where device_id = %s", (device_id,)
    ).fetchone()[0]


def test_lamps_follow_their_own_plan_and_their_own_sunset(conn, database_url, city) -> None:
    lat, lon = city.spec.center_lat, city.spec.center_lon
    late = add_lamp(conn, city, 1, lat=lat, lon=lon, plan="late")  # on 30 min after sunset
    default = add_lamp(conn, city, 2, lat=lat, lon=lon)
    # a lamp that names no plan, in a cabinet that names "late"
    cabinet = next(d for d in city.devices if d["type"] == "light")["gateway_id"]
    conn.execute(
        'update assets set properties = properties || \'{"plan": "late"}\' '
        "where code = (select asset_code from devices where device_id = %s)",
        (cabinet,),
    )
    by_cabinet = add_lamp(conn, city, 6, lat=lat, lon=lon, cabinet=cabinet)
    # the same readings for both: dark until 30 minutes after sunset, then lit
    switch_on = SUNSET + 1800
    readings = [
        (d, t, DARK if t < switch_on else lit())
        for d in (late, default, by_cabinet)
        for t in every(SUNSET - 3600, SUNSET + 3 * 3600)
    ]
    # in Guangzhou, on the winter solstice, a lamp lit at its own sunset: an hour and a half
    # after the city's
    solstice_sunset = float(round(sunset(Observer(*GUANGZHOU), WINTER, tzinfo=UTC).timestamp()))
    south = add_lamp(conn, city, 3, lat=GUANGZHOU[0], lon=GUANGZHOU[1])
    readings += [
        (south, t, DARK if t < solstice_sunset else lit())
        for t in every(solstice_sunset - 3 * 3600, solstice_sunset + 3 * 3600)
    ]
    # in Tromso: lit all day in the polar night; at noon under the midnight sun, a day burner
    polar_night = midnight(WINTER)
    night_lamp = add_lamp(conn, city, 4, lat=TROMSO[0], lon=TROMSO[1])
    readings += [(night_lamp, t, lit()) for t in every(polar_night, polar_night + 86_400)]
    midsummer = midnight(SUMMER)
    summer_lamp = add_lamp(conn, city, 5, lat=TROMSO[0], lon=TROMSO[1])
    readings += [
        (summer_lamp, t, lit() if 10 * 3600 <= t - midsummer < 12 * 3600 else DARK)
        for t in every(midsummer, midsummer + 86_400)
    ]
    store_readings(database_url, "light", readings)
    settings = ScenesSettings(lighting_plans={"default": Plan(), "late": Plan(on_offset_min=30)})
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, settings, CATALOG, now=midnight(date.today()), scenes=(LIGHTING,))
    found = {
        (kind, device): (first, cleared)
        for kind, device, first, cleared in lighting_detections(
            conn, [late, default, by_cabinet, south, night_lamp, summer_lamp]
        )
    }
    assert set(found) == {("lamp_out", default), ("day_burner", summer_lamp)}
    # the default plan wanted it lit from sunset; judged after the 15-minute switching grace
    first, cleared = found["lamp_out", default]
    assert SUNSET + 900 <= first.timestamp() <= SUNSET + 900 + 300
    assert cleared.timestamp() == switch_on
    first, cleared = found["day_burner", summer_lamp]
    assert (first.timestamp(), cleared.timestamp()) == (midsummer + 36_000, midsummer + 43_200)


def test_the_lighting_rate_of_a_constructed_night_is_the_hand_computed_one(
    conn, database_url, city
) -> None:
    # the whole lighting day of the winter solstice (noon to noon in the city) lies in Tromso's
    # polar night: both lamps should be lit for all of its 86,400 s
    noon = midnight(WINTER) + 4 * 3600  # 12:00 in the city
    district = f"dl-{uuid.uuid4().hex[:6]}"  # a district of these lamps alone
    conn.execute(
        "insert into regions (region_id, name, level) values (%s, 'north', 'district')",
        (district,),
    )
    steady = add_lamp(conn, city, 11, lat=TROMSO[0], lon=TROMSO[1], region=district)
    flaky = add_lamp(conn, city, 12, lat=TROMSO[0], lon=TROMSO[1], region=district)
    dark_from, dark_until = noon + 8 * 3600, noon + 10 * 3600  # two hours dark
    readings = [(steady, t, lit()) for t in every(noon, noon + 86_400)]
    readings += [
        (flaky, t, DARK if dark_from <= t < dark_until else lit(power_w=50.0, dim=50.0))
        for t in every(noon, noon + 86_400)
    ]
    # under the midnight sun a third lamp burns for three hours at 80 W: all daylight
    summer_noon = midnight(SUMMER) + 4 * 3600
    burner = add_lamp(conn, city, 13, lat=TROMSO[0], lon=TROMSO[1], region=district)
    readings += [
        (burner, t, lit(power_w=80.0) if t < summer_noon + 3 * 3600 else DARK)
        for t in every(summer_noon, summer_noon + 86_400)
    ]
    store_readings(database_url, "light", readings)
    env = {"CITYOPS_DATABASE_URL": database_url}

    def report(night: str) -> list[dict]:
        result = CliRunner().invoke(
            app,
            ["lighting", "report", "--night", night, "--district", district, "--format", "json"],
            env=env,
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    rows = report(WINTER.isoformat())
    mine = conn.execute(
        "select device_id, expected_s, lit_s, unknown_s, energy_kwh, day_burn_s, day_burn_kwh "
        "from lighting_nights where night = %s and district = %s order by 1",
        (WINTER, district),
    ).fetchall()
    assert sorted(mine) == sorted(
        [
            (steady, 86_400.0, 86_400.0, 0.0, pytest.approx(2.4), 0.0, 0.0),  # 100 W x 24 h
            (flaky, 86_400.0, 79_200.0, 0.0, pytest.approx(1.1), 0.0, 0.0),  # 50 W x 22 h
            (burner, 0.0, 0.0, 86_400.0, 0.0, 0.0, 0.0),  # no readings that night
        ]
    )
    total = rows[-1]
    assert total["lamps"] == 3
    assert total["lighting_rate"] == pytest.approx((86_400 + 79_200) / (2 * 86_400))
    assert total["observed"] == pytest.approx(2 / 3)
    assert total["energy_kwh"] == pytest.approx(3.5)
    summer = report(SUMMER.isoformat())[-1]
    assert (summer["day_burn_h"], summer["day_burn_kwh"]) == (
        pytest.approx(3.0),
        pytest.approx(0.24),
    )
    assert summer["lighting_rate"] is None  # nothing should have been lit: no rate to give


def test_a_disposed_lamp_case_closes_itself_once_the_lamp_behaved_through_the_next_night(
    conn, database_url, city
) -> None:
    lamp = add_lamp(conn, city, 21, lat=city.spec.center_lat, lon=city.spec.center_lon)
    night = SUNSET + 3600
    store_readings(database_url, "light", [(lamp, t, DARK) for t in every(night, night + 1800)])
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=night + 1800, scenes=(LIGHTING,))
        (case_id,) = conn.execute(
            "select case_id from detections where device_id = %s", (lamp,)
        ).fetchone()
        fixed = night + 1800
        crew = CaseService(conn, CATALOG, clock=lambda: datetime.fromtimestamp(fixed, tz=UTC))
        unit = Caller("d0-lighting", "unit")
        crew.act(case_id, Action.ACCEPT, unit)
        crew.act(case_id, Action.DISPOSE, unit, note="lamp replaced")
        # fixed at once: lit through the rest of the night, off by day, lit the next evening
        next_sunrise = SUNRISE + 86_400  # the morning after the next night
        behaving = [
            (lamp, t, lit() if t < SUNRISE or SUNSET + 86_400 <= t < next_sunrise else DARK)
            for t in every(fixed, next_sunrise + 3600)
        ]
        store_readings(
            database_url, "light", [r for r in behaving if r[1] < SUNSET + 86_400 + 7200]
        )
        run_once(
            scenes_conn, ScenesSettings(), CATALOG, now=SUNSET + 86_400 + 7200, scenes=(LIGHTING,)
        )
        assert state_of(conn, case_id) == "disposed"  # the next night is not over yet
        store_readings(
            database_url, "light", [r for r in behaving if r[1] >= SUNSET + 86_400 + 7200]
        )
        run_once(
            scenes_conn, ScenesSettings(), CATALOG, now=next_sunrise + 3600, scenes=(LIGHTING,)
        )
    assert state_of(conn, case_id) == "closed"
    assert conn.execute(
        "select actor from case_events where case_id = %s and action = 'verify'", (case_id,)
    ).fetchone() == ("scene:lighting",)


def state_of(conn: psycopg.Connection, case_id: int) -> str:
    return conn.execute("select state from cases where case_id = %s", (case_id,)).fetchone()[0]


def test_a_night_not_over_yet_is_refused_with_when_to_ask(database_url) -> None:
    result = CliRunner().invoke(
        app,
        ["lighting", "report", "--night", date.today().isoformat()],
        env={"CITYOPS_DATABASE_URL": database_url},
    )
    assert result.exit_code == 2
    assert f"night {date.today()} is not over until" in result.output
    assert "Traceback" not in result.output
