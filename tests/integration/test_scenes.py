"""The manhole-cover scene end to end: readings through ingest, the change feed, detections and
the cases they open, against real PostgreSQL and MQTT."""

from __future__ import annotations

import json

import psycopg

from scenes.engine import run_once
from scenes.settings import ScenesSettings
from tests.plugin import CATALOG, Publisher, wait_for

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


def publish(publisher: Publisher, device_id: str, rows: list[tuple[float, float]]) -> None:
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
    publish(publisher, displaced["device_id"], [(0, 2), (600, 27), (1800, 26), (3000, 2)])
    publish(
        publisher,
        loose["device_id"],
        [(0, 2), (100, 16), (101, 2), (300, 16), (301, 2), (700, 16), (701, 2)],
    )
    publish(publisher, wheel["device_id"], [(0, 2), (100, 16), (101, 2)])
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
