"""``cityops scenes run`` as a service: outbound MQTT and two processes sharing the work, with
ingest, PostgreSQL and the broker real."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import psycopg
import pytest

from cases.access import Caller
from cases.lifecycle import Action
from cases.service import CaseService
from devices.codes import CodeScheme
from devices.registry import import_bundle
from scenes.outbound import PUBLISHER_LOCK
from simulator.city import CitySpec, generate, write_bundle
from store import db
from store.settings import DatabaseSettings
from tests.integration.test_scenes import covers_of
from tests.plugin import (
    CATALOG,
    Publisher,
    Subscriber,
    running_scenes,
    scenes_listening,
    stop_postgres,
    wait_for,
)

OUT = "cityops/v1/out"


@pytest.fixture
def subscriber(broker_url: str, publisher: Publisher) -> Iterator[Subscriber]:
    """A subscriber to the outbound tree; the retained states it saw are removed afterwards.

    The session's broker serves every test: retained states left behind would reach the next
    3.1.1 subscriber of cityops/v1/# (MQTT 5 ingest asks for none).
    """
    sub = Subscriber(broker_url)
    yield sub
    sub.close()
    publisher.publish_many([(topic, b"") for topic in {m.topic for m in sub.received}], retain=True)


def alarm(publisher: Publisher, device_id: str) -> None:
    """A displaced cover, now."""
    publisher.publish(
        f"cityops/v1/manhole/{device_id}/event",
        json.dumps({"ts": int(time.time() * 1000), "tilt_deg": 27.0, "event": "tilt_alarm"}),
    )


def body(message: mqtt.MQTTMessage) -> dict:
    return json.loads(message.payload) if message.payload else {}


def cases_of(conn: psycopg.Connection, device_id: str) -> list[tuple]:
    """(detection kind, case id) of the device's detections."""
    return conn.execute(
        "select kind, case_id from detections where device_id = %s order by first_seen",
        (device_id,),
    ).fetchall()


def test_a_detection_and_every_transition_of_its_case_are_published_and_retained_while_open(
    conn,
    database_url,
    broker_url,
    city,
    make_settings,
    start_worker,
    publisher,
    subscriber,
    tmp_path,
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device, code, owner = cover["device_id"], cover["asset_code"], cover["owner"]
    ingest = start_worker(make_settings())  # subscribed to all of cityops/v1/#
    subscriber.subscribe(f"{OUT}/#")
    # under no prefix: beside the readings, where ingest must pass over it
    with running_scenes(
        database_url, broker_url, tmp_path / "scenes.log", CITYOPS_MQTT_TOPIC_PREFIX=""
    ):
        wait_for(lambda: scenes_listening(conn) >= 1, what="the scenes listening")
        alarm(publisher, device)
        detection = body(
            subscriber.first(
                lambda m: (
                    m.topic == f"{OUT}/detections/cover_displaced/{code}"
                    and body(m).get("case_id") is not None
                ),
                "the detection with its case",
            )
        )
        assert (detection["state"], detection["device_id"], detection["severity"]) == (
            "active",
            device,
            "major",
        )
        case_id = detection["case_id"]
        case = body(
            subscriber.first(
                lambda m: (
                    m.topic == f"{OUT}/cases/{case_id}" and body(m).get("state") == "dispatched"
                ),
                "the case dispatched",
            )
        )
        assert (case["unit_id"], case["subject"], case["source"]) == (owner, code, "sensor")

        # the crew works it, and the office verifies: every transition goes out, in order
        service = CaseService(conn, CATALOG)
        service.act(case_id, Action.ACCEPT, Caller(owner, "unit"))
        service.act(case_id, Action.DISPOSE, Caller(owner, "unit"))
        service.act(case_id, Action.VERIFY, Caller("ops", "operator"))
        events = f"{OUT}/case-events/{case_id}"
        subscriber.first(
            lambda m: m.topic == events and body(m)["to_state"] == "closed", "the case closed"
        )
        moves = [body(m)["to_state"] for m in subscriber.received if m.topic == events]
        assert moves == ["reported", "registered", "dispatched", "accepted", "disposed", "closed"]
        final = subscriber.first(
            lambda m: m.topic == f"{OUT}/cases/{case_id}" and body(m).get("state") == "closed",
            "the case's final state",
        )
        assert not final.retain
        subscriber.first(
            lambda m: m.topic == f"{OUT}/cases/{case_id}" and m.payload == b"",
            "the case's retained state removed",
        )

    # ingest passed over what cityops published: counted, neither stored nor quarantined
    wait_for(
        lambda: (
            ingest.metric("cityops_ingest_messages_total", device_type="out", result="ignored")
            >= len([m for m in subscriber.received if m.topic.startswith(f"{OUT}/cases/{case_id}")])
        ),
        what="ingest passing over the outbound messages",
    )
    assert conn.execute(
        "select count(*) from quarantine where topic like 'cityops/v1/out/%%'"
    ).fetchone() == (0,)

    # a subscriber that comes later gets the current state of the cover, and no finished case
    late = Subscriber(broker_url)
    try:
        late.subscribe(f"{OUT}/cases/{case_id}")  # a retained case would come right after this
        late.subscribe(f"{OUT}/detections/+/{code}")
        retained = late.first(lambda m: True, "the retained detection")
        assert (retained.topic, retained.retain) == (
            f"{OUT}/detections/cover_displaced/{code}",
            True,
        )
        assert body(retained)["case_id"] == case_id
    finally:
        late.close()


def publisher_backend(conn: psycopg.Connection) -> int | None:
    """The backend pid holding the publisher lock, if any."""
    row = conn.execute(
        "select pid from pg_locks where locktype = 'advisory' and granted "
        "and ((classid::bigint << 32) | objid::bigint) = %s "
        "and database = (select oid from pg_database where datname = current_database())",
        (PUBLISHER_LOCK,),
    ).fetchone()
    return row[0] if row else None


def test_kill_9_of_a_running_scenes_process_leaves_all_its_work_to_the_other(
    conn,
    database_url,
    broker_url,
    city,
    make_settings,
    start_worker,
    publisher,
    subscriber,
    tmp_path,
) -> None:
    covers = covers_of(conn, city, 4)
    start_worker(make_settings())
    prefix = {"CITYOPS_MQTT_TOPIC_PREFIX": f"kill-{covers[0]['device_id']}"}
    out = f"{prefix['CITYOPS_MQTT_TOPIC_PREFIX']}/{OUT}"
    subscriber.subscribe(f"{out}/detections/cover_displaced/#")
    with running_scenes(database_url, broker_url, tmp_path / "first.log", **prefix) as first:
        # the first process publishes; the second starts once it does
        wait_for(lambda: publisher_backend(conn), what="the first process publishing")
        with running_scenes(database_url, broker_url, tmp_path / "second.log", **prefix):
            wait_for(lambda: scenes_listening(conn) >= 2, what="both processes listening")
            for cover in covers[:2]:
                alarm(publisher, cover["device_id"])
            for cover in covers[:2]:
                wait_for(lambda c=cover: cases_of(conn, c["device_id"]), what="a case each")
            held = publisher_backend(conn)
            first.kill()  # kill -9: its partitions and its publisher lock are free at once
            first.wait()
            for cover in covers[2:]:
                alarm(publisher, cover["device_id"])
            for cover in covers[2:]:
                wait_for(lambda c=cover: cases_of(conn, c["device_id"]), what="a case each")
            # the survivor took the publishing over, and missed nothing queued meanwhile
            for cover in covers:
                subscriber.first(
                    lambda m, c=cover: (
                        m.topic.endswith(f"/{c['asset_code']}")
                        and body(m).get("case_id") is not None
                    ),
                    f"{cover['asset_code']} published with its case",
                )
            assert publisher_backend(conn) not in (None, held)
    # one detection and one case per alarm: nothing missed, nothing done twice
    for cover in covers:
        ((kind, case_id),) = cases_of(conn, cover["device_id"])
        assert kind == "cover_displaced"
        assert case_id is not None
    assert len({cases_of(conn, c["device_id"])[0][1] for c in covers}) == 4


def test_the_service_rides_out_a_database_restart_and_opens_the_next_case_by_itself(
    own_postgres, broker_url, make_settings, start_worker, publisher, tmp_path
) -> None:
    url = own_postgres.get_uri()
    db.migrate(DatabaseSettings(url=url))
    city = generate(CitySpec(seed=1, covers=10, lamps=0))
    write_bundle(city, tmp_path / "city")
    with psycopg.connect(url, autocommit=True) as own:
        import_bundle(own, tmp_path / "city", CodeScheme.parse("6+2+2+6"))
    first, second = [d["device_id"] for d in city.devices if d["type"] == "manhole"][:2]
    ingest = make_settings(retry_max_s=0.5)
    start_worker(ingest.model_copy(update={"database": DatabaseSettings(url=url)}))
    log = tmp_path / "scenes.log"
    with running_scenes(url, broker_url, log):
        with psycopg.connect(url, autocommit=True) as own:
            wait_for(lambda: scenes_listening(own) >= 1, what="the scenes listening")
            alarm(publisher, first)
            wait_for(lambda: cases_of(own, first), what="the first alarm's case")
        stop_postgres(own_postgres)
        wait_for(
            lambda: "listening stopped: " in log.read_text(), what="the outage noticed in one line"
        )
        own_postgres.ensure_postgres_running()
        with psycopg.connect(url, autocommit=True) as own:
            wait_for(lambda: scenes_listening(own) >= 1, what="the scenes back, listening")
            alarm(publisher, second)
            wait_for(lambda: cases_of(own, second), what="the next alarm's case")
            ((kind, case_id),) = cases_of(own, second)
            assert kind == "cover_displaced"
            assert case_id is not None
    assert "Traceback" not in log.read_text()
