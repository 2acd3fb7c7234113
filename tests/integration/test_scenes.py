"""The manhole-cover scene end to end: readings through ingest, the change feed, detections and
the cases they open, against real PostgreSQL and MQTT."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime

import psycopg
from typer.testing import CliRunner

from cases.access import Caller
from cases.catalog import Catalog
from cases.lifecycle import Action, State
from cases.service import CaseService
from cityops.cli import app
from scenes.dictionary import cover_state, covers_summary
from scenes.engine import lock_key, run_once
from scenes.score import Interval, score, stored_detections
from scenes.settings import CoverThresholds, ScenesSettings
from simulator.fleet import RunOptions, simulate
from simulator.publish import PublishOptions, publish
from simulator.scenario import Scenario
from tests.plugin import (
    CATALOG,
    Publisher,
    register,
    running_scenes,
    scenes_listening,
    wait_for,
)

T0_S = 1_764_000_000  # 2025-11-24T16:00:00Z


MAINTAINER = "d0-telecom"  # the sensors' maintainer here: a unit other than the covers' owners


def covers_of(conn: psycopg.Connection, city, n: int) -> list[dict]:
    """n covers of the city with sensors, maintained by MAINTAINER, with their owner units."""
    owners = {a["code"]: a["owner_unit_id"] for a in city.assets}
    devices = [d for d in city.devices if d["type"] == "manhole"][:n]
    conn.execute(
        "update assets set maintainer_unit_id = %s where code = any(%s)",
        (MAINTAINER, [d["asset_code"] for d in devices]),
    )
    return [{**d, "owner": owners[d["asset_code"]]} for d in devices]


def send_tilts(publisher: Publisher, device_id: str, rows: list[tuple[float, float]]) -> None:
    """(seconds after T0, tilt) readings of one cover."""
    publisher.publish_many(
        [
            (
                f"cityops/v1/manhole/{device_id}/event",
                json.dumps({"ts": int((T0_S + t) * 1000), "tilt_deg": tilt, "cover_open": False}),
            )
            for t, tilt in rows
        ]
    )


def detections(conn: psycopg.Connection, device_ids: list[str]) -> list[tuple]:
    return conn.execute(
        "select device_id, kind, extract(epoch from first_seen)::bigint - %s, "
        "extract(epoch from cleared_at)::bigint - %s, count, case_id is not null "
        "from detections where device_id = any(%s) order by device_id, kind",
        (T0_S, T0_S, device_ids),
    ).fetchall()


def test_covers_and_silences_become_detections_and_cases_on_the_right_desks_once(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    displaced, loose, wheel = covers_of(conn, city, 3)
    assert MAINTAINER not in {displaced["owner"], loose["owner"]}
    start_worker(make_settings())
    send_tilts(publisher, displaced["device_id"], [(0, 2), (600, 27), (1800, 26), (3000, 2)])
    send_tilts(
        publisher,
        loose["device_id"],
        [(0, 2), (100, 16), (101, 2), (300, 16), (301, 2), (700, 16), (701, 2)],
    )
    send_tilts(publisher, wheel["device_id"], [(0, 2), (100, 16), (101, 2)])
    ids = [displaced["device_id"], loose["device_id"], wheel["device_id"]]
    wait_for(
        lambda: (
            conn.execute(
                "select count(*) from manhole_readings where device_id = any(%s)", (ids,)
            ).fetchone()
            == (14,)
        ),
        what="the readings stored",
    )
    fed = conn.execute(
        "select count(*) > 0 from reading_batches where readings = 'manhole_readings' "
        "and device_ids && %s",
        (ids,),
    ).fetchone()
    assert fed == (True,)  # ingest wrote the change feed with the rows
    settings = ScenesSettings()
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, settings, CATALOG, now=T0_S + 9000)
        first = detections(conn, ids)
        cases = conn.execute(
            "select c.category, c.state, c.unit_id, d.device_id from detections d "
            "join cases c using (case_id) where d.device_id = any(%s) order by d.device_id",
            (ids,),
        ).fetchall()
        # The loose cover's group clears loose_window_s (1,800 s) after its last spike. At
        # T0 + 9,000 s each cover has been silent longer than 1.5 x its hourly heartbeat
        # (5,400 s): offline since exactly its last message + 5,400 s, still going.
        assert first == sorted(
            [
                (displaced["device_id"], "cover_displaced", 600, 3000, 2, True),
                (displaced["device_id"], "sensor_offline", 3000 + 5400, None, 1, True),
                (loose["device_id"], "cover_loose", 100, 2500, 3, True),
                (loose["device_id"], "sensor_offline", 701 + 5400, None, 1, True),
                (wheel["device_id"], "sensor_offline", 101 + 5400, None, 1, True),
            ]
        )
        # cover faults go to the cover's owner, the sensor's own to its maintainer
        assert sorted(cases) == sorted(
            [
                ("cover_displaced", "dispatched", displaced["owner"], displaced["device_id"]),
                ("device_offline", "dispatched", MAINTAINER, displaced["device_id"]),
                ("cover_damaged", "dispatched", loose["owner"], loose["device_id"]),
                ("device_offline", "dispatched", MAINTAINER, loose["device_id"]),
                ("device_offline", "dispatched", MAINTAINER, wheel["device_id"]),
            ]
        )
        run_once(scenes_conn, settings, CATALOG, now=T0_S + 9000)  # nothing new: no change
        assert detections(conn, ids) == first
        again = conn.execute(
            "select count(*) from cases where subject = any(%s)",
            ([displaced["asset_code"], loose["asset_code"], wheel["asset_code"]],),
        ).fetchone()
        assert again == (5,)
    # the dictionary: the displaced cover is upright again but its sensor is silent
    state, history = cover_state(conn, displaced["asset_code"])
    assert state == "sensor_offline"
    assert sorted(c.category for c in history) == ["cover_displaced", "device_offline"]
    assert all(c.state == "dispatched" for c in history)
    summary = covers_summary(conn, "d0")
    mine = {(r["owner_unit_id"], r["state"]) for r in summary}
    assert (displaced["owner"], "sensor_offline") in mine
    assert {r["district"] for r in summary} == {"d0"}


# Midnight in the city (UTC+8), the sweepers' shift; a night no other test publishes in, as the
# score command reads every detection of the window from the session's database.
SIM_START = "2025-10-06T16:00:00+00:00"
SIM_END = "2025-10-06T20:00:00+00:00"
COVER_FAULTS = {
    "cover_displaced": 0.08,
    "cover_open": 0.08,
    "cover_loose": 0.08,
    "water_rising": 0.08,
    "sensor_offline": 0.15,
    "battery_drain": 0.08,
    "clock_skew": 0.04,
    "flooding": 0.04,
}


def test_a_simulated_night_scores_against_its_ground_truth_with_one_case_per_detection(
    conn, database_url, broker_url, city, make_settings, start_worker, tmp_path
) -> None:
    start = datetime.fromisoformat(SIM_START).timestamp()
    run = simulate(
        city,
        Scenario(rates=COVER_FAULTS),
        RunOptions(start=start, duration_s=4 * 3600, seed=7),
    )
    cover_ids = [d["device_id"] for d in city.devices if d["type"] == "manhole"]
    kinds = {f.kind for f in run.faults}
    assert set(COVER_FAULTS) <= kinds, kinds  # every kind is in the run to be scored
    covers_published = sum(p.topic.split("/")[2] == "manhole" for p in run.publications)
    start_worker(make_settings())
    publish(run.publications, PublishOptions(url=broker_url, speed=0), threading.Event())
    wait_for(
        lambda: (
            conn.execute(
                "select count(*) from manhole_readings where device_id = any(%s)", (cover_ids,)
            ).fetchone()
            == (covers_published,)
        ),
        timeout_s=60,
        what="every cover message stored",
    )
    with psycopg.connect(database_url) as scenes_conn:
        # judged as the run ends: the simulated devices all fall silent after it
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=start + 4 * 3600)
    faults = [
        Interval(f.kind, f.subject, f.start, f.end, f.detectable)
        for f in run.faults
        if f.subject in cover_ids
    ]
    found = [d for d in stored_detections(conn, None, None) if d.device_id in cover_ids]
    scores = {s.kind: s for s in score(faults, found, allowed_delay_s=7200)}
    # every detection matches a fault (no case where the ground truth has none), and every
    # fault is found
    assert {k: (s.precision, s.recall) for k, s in scores.items()} == dict.fromkeys(
        COVER_FAULTS, (1.0, 1.0)
    )
    unrouted = conn.execute(
        "select count(*) from detections where device_id = any(%s) and case_id is null",
        (cover_ids,),
    ).fetchone()
    assert unrouted == (0,)
    per_case = conn.execute(
        "select count(distinct case_id), count(*) from detections where device_id = any(%s)",
        (cover_ids,),
    ).fetchone()
    assert per_case == (len(found), len(found))  # one case each: no two episodes share one

    # the same through the command, from the ground truth as `cityops sim run` writes it
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(f.truth_line() + "\n" for f in run.faults if f.subject in cover_ids))
    result = CliRunner().invoke(
        app,
        [
            "scenes",
            "score",
            "--truth",
            str(truth),
            "--since",
            SIM_START,
            "--until",
            SIM_END,
            "--format",
            "json",
        ],
        env={"CITYOPS_DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    by_kind = {row["kind"]: row for row in json.loads(result.output)}
    again = CliRunner().invoke(
        app, ["scenes", "run", "--once"], env={"CITYOPS_DATABASE_URL": database_url}
    )
    assert again.exit_code == 0, again.output
    assert "covers d0: " in again.output  # one line per partition it ran
    assert {
        k: (r["precision"], r["recall"]) for k, r in by_kind.items() if k in COVER_FAULTS
    } == dict.fromkeys(COVER_FAULTS, (1.0, 1.0))


def test_a_partition_held_elsewhere_is_skipped_and_taken_once_its_holder_dies(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    (cover,) = covers_of(conn, city, 1)
    start_worker(make_settings())
    send_tilts(publisher, cover["device_id"], [(0, 2), (600, 27), (1200, 2)])
    wait_for(
        lambda: (
            conn.execute(
                "select count(*) from manhole_readings where device_id = %s", (cover["device_id"],)
            ).fetchone()
            == (3,)
        ),
        what="the readings stored",
    )
    district = conn.execute(
        "select district from device_districts where device_id = %s", (cover["device_id"],)
    ).fetchone()[0]
    # another scenes process, in a process of its own, holds the covers partition of the district
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, psycopg\n"
            "from scenes.engine import lock_key\n"
            "conn = psycopg.connect(sys.argv[1], autocommit=True)\n"
            "conn.execute('select pg_advisory_lock(%s)', (lock_key('covers', sys.argv[2]),))\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            database_url,
            district,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            with psycopg.connect(database_url) as scenes_conn:
                ran = run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 1800)
                assert ("covers", district) not in {(r.scene, r.district) for r in ran}
                assert detections(conn, [cover["device_id"]]) == []
                holder.kill()  # kill -9: its session ends, and its locks with it
                holder.wait()
                wait_for(lambda: lock_free(conn, district), what="the dead holder's lock released")
                ran = run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 1800)
            assert ("covers", district) in {(r.scene, r.district) for r in ran}
            assert detections(conn, [cover["device_id"]]) == [
                (cover["device_id"], "cover_displaced", 600, 1200, 1, True)
            ]
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()


def lock_free(conn: psycopg.Connection, district: str) -> bool:
    row = conn.execute(
        "select count(*) from pg_locks where locktype = 'advisory' and granted "
        "and ((classid::bigint << 32) | objid::bigint) = %s "
        "and database = (select oid from pg_database where datname = current_database())",
        (lock_key("covers", district),),
    ).fetchone()
    return row == (0,)


def test_a_disposed_cover_case_closes_itself_once_the_sensor_reads_normal_long_enough(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    (cover,) = covers_of(conn, city, 1)
    start_worker(make_settings())
    send_tilts(publisher, cover["device_id"], [(0, 2), (600, 27), (1200, 2)])
    device = cover["device_id"]
    wait_for(lambda: stored_count(conn, device) == 3, what="the readings stored")
    settings = ScenesSettings(verify_s=1)
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, settings, CATALOG, now=T0_S + 1800)
        (case_id,) = conn.execute(
            "select case_id from detections where device_id = %s and kind = 'cover_displaced'",
            (device,),
        ).fetchone()
        service = CaseService(conn, CATALOG)
        owner = Caller(cover["owner"], "unit")
        service.act(case_id, Action.ACCEPT, owner)
        service.act(case_id, Action.DISPOSE, owner, note="cover reseated")
        # disposed now; the sensor's newest reading is from before: it has not read normal since
        run_once(scenes_conn, settings, CATALOG, now=time.time())
        assert service.state_of(case_id).state == State.DISPOSED
        now_ms = int(time.time() * 1000) + 2000  # a reading a little after the disposal
        publisher.publish(
            f"cityops/v1/manhole/{device}/telemetry",
            json.dumps({"ts": now_ms, "tilt_deg": 2.0, "cover_open": False}),
        )
        wait_for(lambda: stored_count(conn, device) == 4, what="the reading after the disposal")
        run_once(scenes_conn, settings, CATALOG, now=time.time() + 5)
    assert service.state_of(case_id).state == State.CLOSED
    last = service.history(case_id)[-1]
    assert (last.action, last.actor) == ("verify", "scene:covers")


def test_a_detection_on_a_cover_whose_case_a_crew_is_working_joins_that_case(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device, code = cover["device_id"], cover["asset_code"]
    start_worker(make_settings())
    send_tilts(publisher, device, [(0, 2), (600, 27)])
    wait_for(lambda: stored_count(conn, device) == 2, what="the readings stored")
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 900)
        ((case_id,),) = conn.execute(
            "select case_id from detections where device_id = %s", (device,)
        ).fetchall()
        CaseService(conn, CATALOG).act(case_id, Action.ACCEPT, Caller(cover["owner"], "unit"))
        # the crew on site lifts the displaced cover: it reads open
        publisher.publish(
            f"cityops/v1/manhole/{device}/event",
            json.dumps({"ts": (T0_S + 1200) * 1000, "tilt_deg": 95.0, "cover_open": True}),
        )
        wait_for(lambda: stored_count(conn, device) == 3, what="the open reading stored")
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 1500)
    assert conn.execute(
        "select kind, case_id from detections where device_id = %s order by first_seen",
        (device,),
    ).fetchall() == [("cover_displaced", case_id), ("cover_open", case_id)]
    assert conn.execute("select count(*) from cases where subject = %s", (code,)).fetchone() == (1,)
    notes = conn.execute(
        "select note from case_events where case_id = %s and action = 'report'", (case_id,)
    ).fetchall()
    assert len(notes) == 1
    assert "cover_open detected" in notes[0][0]


def test_a_cover_whose_own_threshold_is_higher_is_judged_by_it(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    tolerant, strict = covers_of(conn, city, 2)
    start_worker(make_settings())
    for cover in (tolerant, strict):
        send_tilts(publisher, cover["device_id"], [(0, 2), (600, 27), (1200, 2)])
    devices = [tolerant["device_id"], strict["device_id"]]
    wait_for(lambda: all(stored_count(conn, d) == 3 for d in devices), what="the readings")
    # a cover on a slope, whose sensor reads 27 degrees when it sits well
    settings = ScenesSettings(
        covers=CoverThresholds(assets={tolerant["asset_code"]: {"tilt_deg": 30.0}})
    )
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, settings, CATALOG, now=T0_S + 1800)
    found = conn.execute(
        "select device_id, kind, evidence -> 'thresholds' ->> 'tilt_deg' from detections "
        "where device_id = any(%s)",
        (devices,),
    ).fetchall()
    assert found == [(strict["device_id"], "cover_displaced", "10.0")]


def stored_count(conn: psycopg.Connection, device_id: str) -> int:
    row = conn.execute(
        "select count(*) from manhole_readings where device_id = %s", (device_id,)
    ).fetchone()
    return int(row[0])


def test_an_alarm_wakes_the_running_scenes_and_its_case_opens_in_seconds(
    conn,
    database_url,
    broker_url,
    city,
    make_settings,
    start_worker,
    publisher: Publisher,
    tmp_path,
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device = cover["device_id"]
    start_worker(make_settings())
    with running_scenes(database_url, broker_url, tmp_path / "scenes.log"):
        # its first round, over everything pending, is over when it waits for work
        wait_for(lambda: scenes_listening(conn) >= 1, what="the scenes listening")
        published = time.time()
        publisher.publish(
            f"cityops/v1/manhole/{device}/event",
            json.dumps({"ts": int(published * 1000), "tilt_deg": 27.0, "event": "tilt_alarm"}),
        )
        wait_for(
            lambda: (
                conn.execute(
                    "select count(*) from detections where device_id = %s "
                    "and kind = 'cover_displaced' and case_id is not null",
                    (device,),
                ).fetchone()
                == (1,)
            ),
            timeout_s=30,
            what="the alarm's case",
        )
        # sustained for sustain_s (5 s) before it counts: the deadline, not the interval
        assert time.time() - published < 20


def test_a_failing_scene_is_logged_and_rolled_back_and_the_others_run(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher, caplog
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device = cover["device_id"]
    start_worker(make_settings())
    send_tilts(publisher, device, [(0, 2), (600, 27), (1200, 2)])
    wait_for(lambda: stored_count(conn, device) == 3, what="the readings stored")
    # a catalog edited without the device-health categories: the health scene cannot open cases
    partial = Catalog(
        category=tuple(c for c in CATALOG.category if not c.code.startswith("device"))
    )
    with psycopg.connect(database_url) as scenes_conn:
        ran = run_once(scenes_conn, ScenesSettings(), partial, now=T0_S + 9000)
        assert ("covers", "d0") in {(r.scene, r.district) for r in ran}
        assert ("health", "d0") not in {(r.scene, r.district) for r in ran}
        assert "scene health, district d0 failed" in caplog.text
        assert detections(conn, [device]) == [(device, "cover_displaced", 600, 1200, 1, True)]
        # fixed: the health partition's watermark did not move, so its readings are judged now
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 9000)
    assert detections(conn, [device]) == [
        (device, "cover_displaced", 600, 1200, 1, True),
        (device, "sensor_offline", 1200 + 5400, None, 1, True),
    ]


def test_late_readings_rewrite_an_offline_spell_without_a_second_active_detection(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device = cover["device_id"]
    start_worker(make_settings())
    send_tilts(publisher, device, [(0, 2)])
    wait_for(lambda: stored_count(conn, device) == 1, what="the first reading")
    offline = (
        "select extract(epoch from first_seen)::bigint - %s, "
        "extract(epoch from cleared_at)::bigint - %s from detections "
        "where device_id = %s and kind = 'sensor_offline' order by first_seen"
    )
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 9000)
        assert conn.execute(offline, (T0_S, T0_S, device)).fetchall() == [(5400, None)]
        # a gateway delivers what the sensor said at 600-1800 s late, then it speaks again
        send_tilts(publisher, device, [(600, 2), (1200, 2), (1800, 2)])
        wait_for(lambda: stored_count(conn, device) == 4, what="the late readings")
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 9000)
        # silent since 1,800 s: offline from 7,200 s, the same detection, still the one active
        assert conn.execute(offline, (T0_S, T0_S, device)).fetchall() == [(7200, None)]
        send_tilts(publisher, device, [(19000, 2)])
        wait_for(lambda: stored_count(conn, device) == 5, what="the device back")
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 20000)
        assert conn.execute(offline, (T0_S, T0_S, device)).fetchall() == [(7200, 19000)]


def test_a_gateway_backlog_across_two_partitions_is_judged_once_in_each(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher, tag
) -> None:
    (in_d0,) = covers_of(conn, city, 1)
    nowhere = f"{tag}-mh-nowhere"  # no component, no region: the partition of no district
    register(conn, {nowhere: "manhole", f"{tag}-gw": "gateway"})
    devices = [in_d0["device_id"], nowhere]
    conn.execute(  # both behind the gateway that will bring their backlog
        "update devices set gateway_id = %s where device_id = any(%s)", (f"{tag}-gw", devices)
    )
    start_worker(make_settings())
    for device in devices:
        send_tilts(publisher, device, [(0, 2)])
    wait_for(lambda: all(stored_count(conn, d) == 1 for d in devices), what="the first readings")
    offline = (
        "select device_id, extract(epoch from first_seen)::bigint - %s, cleared_at, "
        "detection_id, updated_at from detections "
        "where device_id = any(%s) and kind = 'sensor_offline' order by device_id, first_seen"
    )
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 9000)
        before = conn.execute(offline, (T0_S, devices)).fetchall()
        assert [row[:3] for row in before] == sorted((d, 5400, None) for d in devices)
        # the gateway comes back with its backlog: both covers at 600-1800 s, in one message
        backlog = [
            {"device_id": d, "ts": (T0_S + t) * 1000, "values": {"tilt_deg": 2.0}}
            for t in (600, 1200, 1800)
            for d in devices
        ]
        publisher.publish(f"cityops/v1/gateway/{tag}-gw/batch", json.dumps(backlog))
        wait_for(lambda: all(stored_count(conn, d) == 4 for d in devices), what="the backlog")
        ran = run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 9000)
        judged = {(r.scene, r.district): r.devices for r in ran if r.scene == "health"}
        assert judged["health", "d0"] >= 1
        assert judged["health", ""] >= 1
        after = conn.execute(offline, (T0_S, devices)).fetchall()
        # each spell starts later now, silent since 1,800 s: the same detection, still active
        assert [row[:3] for row in after] == sorted((d, 7200, None) for d in devices)
        assert [row[3] for row in after] == [row[3] for row in before]
        # judged once: another run finds nothing to change
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 9000)
        assert conn.execute(offline, (T0_S, devices)).fetchall() == after


def test_alarms_milliseconds_apart_and_redelivered_make_one_detection_and_one_case(
    conn, database_url, city, make_settings, start_worker, publisher: Publisher
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device = cover["device_id"]
    start_worker(make_settings())
    tilted = [(0, 2), (600, 27), (600.005, 27.5), (600.010, 27.2), (1500, 2)]
    send_tilts(publisher, device, tilted)
    send_tilts(publisher, device, tilted[1:3])  # a gateway sends two of them again
    wait_for(lambda: stored_count(conn, device) == 5, what="five distinct readings stored")
    with psycopg.connect(database_url) as scenes_conn:
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 1800)
        run_once(scenes_conn, ScenesSettings(), CATALOG, now=T0_S + 1800)
    assert detections(conn, [device]) == [(device, "cover_displaced", 600, 1500, 3, True)]
    cases = conn.execute(
        "select count(*) from cases where subject = %s", (cover["asset_code"],)
    ).fetchone()
    assert cases == (1,)
