"""Ingest against a real broker and a real PostgreSQL: typed rows, dedupe, quarantine."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest

from tests.plugin import Publisher, register, wait_for

T0_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z
T0 = datetime.fromtimestamp(T0_MS / 1000, tz=UTC)


def rows(conn: psycopg.Connection, sql: str, *params: object) -> list[tuple[object, ...]]:
    return conn.execute(sql, params).fetchall()


def count(conn: psycopg.Connection, table: str, prefix: str) -> int:
    row = conn.execute(f"select count(*) from {table} where device_id like %s", (f"{prefix}%",))
    return int(row.fetchone()[0])  # type: ignore[index]


def test_each_device_type_and_payload_form_lands_as_typed_rows(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    mh, sw, lt = f"{tag}-mh", f"{tag}-sw", f"{tag}-lt"
    register(conn, {mh: "manhole", sw: "sweeper", lt: "light"})
    start_worker(make_settings())
    publisher.publish_many(
        [
            (
                f"cityops/v1/manhole/{mh}/telemetry",
                json.dumps({"ts": T0_MS, "tilt_deg": 2.5, "cover_open": False, "battery_pct": 87}),
            ),
            (
                f"cityops/v1/manhole/{mh}/event",
                json.dumps(
                    {
                        "ts": "2025-11-25T00:00:01+08:00",
                        "values": {"tilt_deg": 35, "event": "tilt_alarm"},
                    }
                ),
            ),
            (
                f"cityops/v1/sweeper/{sw}/telemetry",
                json.dumps(
                    {
                        "ts": T0_MS,
                        "lat": 41.8,
                        "lon": 123.43,
                        "speed_kmh": 6.5,
                        "heading_deg": 90,
                        "brush_on": True,
                        "spray_on": False,
                    }
                ),
            ),
            (
                f"cityops/v1/light/{lt}/telemetry",
                json.dumps(
                    {
                        "ts": T0_MS,
                        "values": {
                            "lamp_on": True,
                            "dim_pct": 70,
                            "voltage_v": 229.5,
                            "current_a": 0.4,
                            "power_w": 88,
                            "power_factor": 0.95,
                            "energy_kwh": 1234.5,
                            "fault_code": 0,
                        },
                    }
                ),
            ),
            (
                f"cityops/v1/light/{lt}/status",
                json.dumps({"ts": T0_MS, "online": True, "firmware": "2.1.0"}),
            ),
        ]
    )
    wait_for(
        lambda: (
            count(conn, "manhole_readings", tag) == 2
            and count(conn, "light_readings", tag)
            and count(conn, "device_status", tag)
        ),
        what="rows",
    )
    assert rows(
        conn,
        "select ts, tilt_deg, cover_open, battery_pct, event from manhole_readings "
        "where device_id = %s order by ts",
        mh,
    ) == [
        (T0, 2.5, False, 87.0, None),
        (T0.replace(second=1), 35.0, None, None, "tilt_alarm"),
    ]
    assert rows(
        conn,
        "select ts, lat, lon, speed_kmh, heading_deg, brush_on, spray_on "
        "from sweeper_readings where device_id = %s",
        sw,
    ) == [(T0, 41.8, 123.43, 6.5, 90.0, True, False)]
    assert rows(
        conn,
        "select lamp_on, dim_pct, voltage_v, power_w, energy_kwh, fault_code "
        "from light_readings where device_id = %s",
        lt,
    ) == [(True, 70.0, 229.5, 88.0, 1234.5, 0)]
    assert rows(conn, "select online, firmware from device_status where device_id = %s", lt) == [
        (True, "2.1.0")
    ]
    assert rows(conn, "select last_seen from devices where device_id = %s", mh) == [
        (T0.replace(second=1),)
    ]


def test_gateway_batch_lands_a_row_per_device_and_quarantines_only_bad_entries(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    mh, lt, gateway = f"{tag}-mh", f"{tag}-lt", f"{tag}-gw"
    register(conn, {gateway: "gateway"})
    conn.cursor().executemany(
        "insert into devices (device_id, type, gateway_id) values (%s, %s, %s)",
        [(mh, "manhole", gateway), (lt, "light", gateway), (f"{tag}-other", "light", None)],
    )
    running = start_worker(make_settings())
    batch = [
        {"device_id": mh, "ts": T0_MS, "values": {"tilt_deg": 1.0}},
        {"device_id": lt, "ts": T0_MS, "values": {"lamp_on": False}},
        {"device_id": f"{tag}-ghost", "ts": T0_MS, "values": {"tilt_deg": 1.0}},
        {"device_id": f"{tag}-other", "ts": T0_MS, "values": {"lamp_on": True}},
    ]
    publisher.publish(f"cityops/v1/gateway/{tag}-gw/batch", json.dumps(batch))
    wait_for(
        lambda: (
            running.metric("cityops_ingest_messages_total", device_type="gateway", result="partial")
            == 1
        ),
        what="gateway batch committed",
    )
    assert count(conn, "manhole_readings", tag) == 1
    assert count(conn, "light_readings", tag) == 1
    assert rows(
        conn,
        "select reason, detail from quarantine where topic = %s",
        f"cityops/v1/gateway/{tag}-gw/batch",
    ) == [
        ("unknown_device", f"item 2: device '{tag}-ghost' is not registered"),
        (
            "not_gateway_child",
            f"item 3: device '{tag}-other' is not a child of gateway '{gateway}'",
        ),
    ]
    assert count(conn, "light_readings", f"{tag}-other") == 0


def test_backfill_array_lands_every_reading(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    mh = f"{tag}-mh"
    register(conn, {mh: "manhole"})
    start_worker(make_settings())
    backfill = [{"ts": T0_MS + i * 60_000, "tilt_deg": i / 10} for i in range(500)]
    publisher.publish(f"cityops/v1/manhole/{mh}/telemetry", json.dumps(backfill))
    wait_for(lambda: count(conn, "manhole_readings", tag) == 500, what="500 backfilled rows")
    got = rows(
        conn,
        "select min(ts), max(ts), sum(tilt_deg)::numeric(10,1) from manhole_readings "
        "where device_id = %s",
        mh,
    )
    assert got[0][0] == T0
    assert (got[0][1] - T0).total_seconds() == 499 * 60
    assert float(got[0][2]) == pytest.approx(sum(i / 10 for i in range(500)), abs=0.5)


def test_over_mqtt_5_a_retained_message_is_taken_at_the_first_subscription_only(
    conn, tag, mosquitto_url, make_settings, start_worker, publisher: Publisher
) -> None:
    mh = f"{tag}-mh"
    register(conn, {mh: "manhole"})
    topic = f"cityops/v1/manhole/{mh}/telemetry"
    # a device's last state, retained on the broker before this worker ever subscribed
    publisher.publish_many([(topic, json.dumps({"ts": T0_MS, "tilt_deg": 1.0}))], retain=True)
    settings = make_settings()
    try:
        first = start_worker(settings)
        wait_for(lambda: count(conn, "manhole_readings", tag) == 1, what="the retained reading")
        first.close()
        # the same worker again: its session and subscription are still there
        again = start_worker(settings)
        publisher.publish(topic, json.dumps({"ts": T0_MS + 60_000, "tilt_deg": 2.0}))
        wait_for(lambda: count(conn, "manhole_readings", tag) == 2, what="the live reading")
        wait_for(
            lambda: again.metric_total("cityops_ingest_messages_total") >= 1,
            what="the live reading's batch counted",
        )
        # a retained message would have come right after the SUBACK, before the live one
        assert again.metric_total("cityops_ingest_messages_total") == 1
    finally:
        publisher.publish_many([(topic, b"")], retain=True)


def test_redelivered_messages_create_no_second_row(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    mh = f"{tag}-mh"
    register(conn, {mh: "manhole"})
    running = start_worker(make_settings())
    messages = [
        (
            f"cityops/v1/manhole/{mh}/telemetry",
            json.dumps({"ts": T0_MS + i * 1000, "tilt_deg": 1.0}),
        )
        for i in range(200)
    ]
    publisher.publish_many(messages)
    publisher.publish_many(messages)
    wait_for(
        lambda: (
            running.metric("cityops_ingest_rows_total", kind="manhole", result="duplicate") == 200
        ),
        what="200 duplicates seen",
    )
    assert running.metric("cityops_ingest_rows_total", kind="manhole", result="inserted") == 200
    assert count(conn, "manhole_readings", tag) == 200


BAD_INPUTS = [
    ("oversized", "manhole/{mh}/telemetry", b'{"tilt_deg": 1, "pad": "' + b"x" * 300 + b'"}'),
    ("bad_topic", "manhole/{mh}", b'{"tilt_deg": 1}'),
    ("bad_topic", "toaster/{mh}/telemetry", b'{"tilt_deg": 1}'),
    ("malformed_json", "manhole/{mh}/telemetry", b'{"tilt_deg": '),
    ("unknown_device", "manhole/{tag}-nobody/telemetry", b'{"tilt_deg": 1}'),
    ("type_mismatch", "light/{mh}/telemetry", b'{"lamp_on": true}'),
    ("wrong_type", "manhole/{mh}/telemetry", b'{"tilt_deg": "steep"}'),
    ("out_of_range", "manhole/{mh}/telemetry", b'{"tilt_deg": 300}'),
    ("missing_field", "sweeper/{sw}/telemetry", b'{"lat": 41.8}'),
    ("unknown_field", "manhole/{mh}/telemetry", b'{"tilt": 1}'),
    ("bad_timestamp", "manhole/{mh}/telemetry", b'{"ts": "yesterday", "tilt_deg": 1}'),
    ("future_timestamp", "manhole/{mh}/telemetry", b'{"ts": 4102444800000, "tilt_deg": 1}'),
    ("empty_reading", "manhole/{mh}/telemetry", b'{"ts": 1764000000000}'),
]


def test_every_bad_input_kind_is_quarantined_with_its_reason_and_ingest_goes_on(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    mh, sw = f"{tag}-mh", f"{tag}-sw"
    register(conn, {mh: "manhole", sw: "sweeper"})
    running = start_worker(make_settings(max_payload_bytes=256))
    topics = []
    for _, topic, payload in BAD_INPUTS:
        topics.append("cityops/v1/" + topic.format(mh=mh, sw=sw, tag=tag))
        publisher.publish(topics[-1], payload)
    publisher.publish(f"cityops/v1/manhole/{mh}/telemetry", b'{"ts": 1764000000000, "tilt_deg": 4}')
    wait_for(lambda: count(conn, "manhole_readings", tag) == 1, what="the good reading")
    got = wait_for(
        lambda: (
            (
                r := rows(
                    conn,
                    "select topic, reason, payload, payload_bytes from quarantine "
                    "where topic = any(%s) order by id",
                    topics,
                )
            )
            and len(r) == len(BAD_INPUTS)
            and r
        ),
        what="quarantine entries",
    )
    assert [(t, reason) for t, reason, _, _ in got] == [
        (t, reason) for t, (reason, _, _) in zip(topics, BAD_INPUTS, strict=True)
    ]
    # Kept whole for replay, up to the accepted maximum: the oversized one is cut at 256 bytes.
    oversized_payload = BAD_INPUTS[0][2]
    assert len(oversized_payload) > 256
    assert (bytes(got[0][2]), got[0][3]) == (oversized_payload[:256], len(oversized_payload))
    for (_, _, payload, size), (_, _, published) in zip(got[1:], BAD_INPUTS[1:], strict=True):
        assert (bytes(payload), size) == (published, len(published))
    for reason in {r for r, _, _ in BAD_INPUTS}:
        expected = sum(1 for r, _, _ in BAD_INPUTS if r == reason)
        assert running.metric("cityops_ingest_quarantined_total", reason=reason) == expected


def test_unknown_devices_are_registered_when_auto_registration_is_on(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    start_worker(make_settings(auto_register=True))
    publisher.publish(f"cityops/v1/light/{tag}-new/telemetry", b'{"lamp_on": true}')
    wait_for(lambda: count(conn, "light_readings", tag) == 1, what="reading of a new device")
    assert rows(
        conn, "select type, auto_registered from devices where device_id = %s", f"{tag}-new"
    ) == [("light", True)]


def test_registry_changes_while_ingest_runs_reach_the_decoder_and_alone_are_read(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    register(conn, {f"{tag}-k{i}": "manhole" for i in range(3)})
    registered = conn.execute("select count(*) from devices").fetchone()[0]  # type: ignore[index]
    device = f"{tag}-late"
    running = start_worker(make_settings(registry_refresh_s=0.1))

    def rows_read() -> float:
        return running.metric("cityops_ingest_registry_rows_read_total")

    def quarantined(reason: str) -> float:
        return running.metric("cityops_ingest_quarantined_total", reason=reason)

    assert rows_read() == registered  # the whole registry, once, when the writer connected
    manhole, light = (f"cityops/v1/{kind}/{device}/telemetry" for kind in ("manhole", "light"))
    publisher.publish(manhole, b'{"ts": 1764000000000, "tilt_deg": 1}')
    wait_for(lambda: quarantined("unknown_device") == 1, what="the unregistered device refused")

    register(conn, {device: "manhole"})
    wait_for(
        lambda: (
            publisher.publish(manhole, b'{"ts": 1764000001000, "tilt_deg": 2}')
            or count(conn, "manhole_readings", device) == 1
        ),
        what="the reading accepted after the registry refresh",
    )
    assert rows(conn, "select tilt_deg from manhole_readings where device_id = %s", device) == [
        (2.0,)
    ]
    assert rows_read() == registered + 1  # that device alone

    conn.execute("update devices set type = 'light' where device_id = %s", (device,))
    # Exactly one more: the devices.last_seen the reading moved is not a change to read.
    wait_for(lambda: rows_read() == registered + 2, what="the retyped device read")
    publisher.publish(manhole, b'{"ts": 1764000002000, "tilt_deg": 3}')
    wait_for(lambda: quarantined("type_mismatch") == 1, what="a manhole reading of a lamp refused")
    publisher.publish(light, b'{"ts": 1764000003000, "lamp_on": true}')
    wait_for(lambda: count(conn, "light_readings", device) == 1, what="its lamp reading stored")

    conn.execute("delete from devices where device_id = %s", (device,))
    wait_for(lambda: rows_read() == registered + 3, what="the deleted device read")
    publisher.publish(light, b'{"ts": 1764000004000, "lamp_on": false}')
    wait_for(lambda: quarantined("unknown_device") == 2, what="the deleted device refused")
    assert count(conn, "light_readings", device) == 1
    assert rows_read() == registered + 3
