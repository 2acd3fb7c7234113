"""Ingest under hostile input and database faults: nothing stops it, nothing is lost."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from ingest.decode import Decoded
from ingest.writer import BatchWriter, Message, is_record_error
from tests.plugin import Publisher, migrated_database, register, wait_for
from wire.contract import LIGHT, MANHOLE

T0_MS = 1_764_000_000_000

#: Payloads that once escaped the decoder (or the quarantine insert) and stopped ingest.
POISON = [
    ("malformed_json", b"[" * 60_000),
    ("malformed_json", b'{"values":' * 6_000),
    ("malformed_json", b"\xff\xfe\x00{"),
    ("unknown_field", b'{"\\u0000": 1, "tilt_deg": 1}'),
    ("wrong_type", b'[{"ts": 1764000000000, "values": [[[[1]]]]}]'),
]


def good(device: str, i: int) -> tuple[str, str]:
    return f"cityops/v1/manhole/{device}/telemetry", json.dumps({"ts": T0_MS + i, "tilt_deg": 2})


def stored_ts(conn: psycopg.Connection, device: str) -> list[int]:
    rows = conn.execute(
        "select (extract(epoch from ts) * 1000)::bigint from manhole_readings "
        "where device_id = %s order by ts",
        (device,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def quarantined(conn: psycopg.Connection, device: str) -> list[tuple[str, bytes]]:
    rows = conn.execute(
        "select reason, payload from quarantine where topic like %s order by id", (f"%/{device}/%",)
    ).fetchall()
    return [(reason, bytes(payload)) for reason, payload in rows]


def test_poison_messages_in_a_backlog_are_quarantined_and_every_good_reading_lands(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    settings = make_settings(batch_max_rows=20, buffer_max_messages=40)
    expected_ts: list[int] = []
    expected_poison: list[tuple[str, bytes]] = []
    for round_ in range(2):  # a backlog, then another one after a restart
        running = start_worker(settings)
        running.close()  # the persistent session now collects what follows
        backlog = []
        for i, (reason, payload) in enumerate(POISON):
            for j in range(10):
                n = round_ * 1000 + i * 10 + j
                backlog.append(good(device, n))
                expected_ts.append(T0_MS + n)
            backlog.append((f"cityops/v1/manhole/{device}/telemetry", payload))  # type: ignore[arg-type]
            expected_poison.append((reason, payload))
        publisher.publish_many(backlog)
        running = start_worker(settings)
        wait_for(
            lambda: len(quarantined(conn, device)) == len(expected_poison),
            what="every poison message quarantined",
        )
        wait_for(lambda: stored_ts(conn, device) == expected_ts, what="every good reading")
        assert running.thread.is_alive()
        running.close()  # before the next round's worker takes the same client id
    assert quarantined(conn, device) == expected_poison


def test_a_record_the_database_refuses_is_isolated_and_the_rest_of_its_batch_lands(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    constraint = f"no_tilt_77_{tag}"
    conn.execute(
        f"alter table manhole_readings add constraint {constraint} check (tilt_deg <> 77) not valid"
    )
    try:
        running = start_worker(make_settings(batch_max_rows=500, buffer_max_messages=1000))
        running.close()
        refused = {37, 201, 202, 499}
        messages = [
            (
                f"cityops/v1/manhole/{device}/telemetry",
                json.dumps({"ts": T0_MS + i, "tilt_deg": 77 if i in refused else 1}),
            )
            for i in range(500)
        ]
        publisher.publish_many(messages)
        running = start_worker(make_settings(batch_max_rows=500, buffer_max_messages=1000))
        wait_for(lambda: len(stored_ts(conn, device)) == 496, what="the 496 accepted readings")
        wait_for(lambda: len(quarantined(conn, device)) == 4, what="the 4 refused readings")
    finally:
        conn.execute(f"alter table manhole_readings drop constraint {constraint}")
    assert stored_ts(conn, device) == [T0_MS + i for i in range(500) if i not in refused]
    assert quarantined(conn, device) == [
        ("rejected_by_database", messages[i][1].encode()) for i in sorted(refused)
    ]
    detail = conn.execute(
        "select detail from quarantine where topic like %s limit 1", (f"%/{device}/%",)
    ).fetchone()
    assert detail is not None
    assert constraint in detail[0]
    assert running.metric("cityops_ingest_quarantined_total", reason="rejected_by_database") == 4


def test_an_error_that_refuses_every_record_is_an_outage_nothing_is_quarantined_or_acked(
    conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    function, trigger = f"refuse_{tag}", f"refuse_{tag}"
    conn.execute(
        f"create function {function}() returns trigger language plpgsql as "
        "$$ begin raise exception 'readings are frozen for maintenance'; end $$"
    )
    conn.execute(
        f"create trigger {trigger} before insert on manhole_readings "
        f"for each statement execute function {function}()"
    )
    try:
        running = start_worker(
            make_settings(batch_max_rows=50, buffer_max_messages=100, retry_max_s=0.2)
        )
        publisher.publish_many([good(device, i) for i in range(300)])
        wait_for(
            lambda: (
                running.metric("cityops_ingest_database_errors_total", kind="refused") >= 3
                and running.metric("cityops_ingest_buffered_messages") == 100
            ),
            what="repeated refusals with a full, unacknowledged buffer",
        )
        assert stored_ts(conn, device) == []
        assert quarantined(conn, device) == []
        assert (
            running.metric("cityops_ingest_messages_total", device_type="manhole", result="stored")
            == 0
        )
    finally:
        conn.execute(f"drop trigger {trigger} on manhole_readings")
        conn.execute(f"drop function {function}()")
    wait_for(
        lambda: stored_ts(conn, device) == [T0_MS + i for i in range(300)],
        what="all 300 readings once the trigger is gone",
    )
    assert quarantined(conn, device) == []


def test_a_record_the_client_cannot_encode_is_quarantined_alone(
    database_url: str, tag: str
) -> None:
    """A value that fails in the COPY encoder, before the database sees it, is a record fault."""
    device = f"{tag}-lt"
    with psycopg.connect(database_url) as conn:
        register(conn, {device: "light"})
        conn.commit()
        writer = BatchWriter(conn, raw_max_bytes=1024, last_seen_resolution_s=10)
        received_us = T0_MS * 1000

        def message(fault_code: int, i: int) -> Message:
            row = (device, received_us + i, True, *[None] * 6, fault_code)
            decoded = Decoded(rows=[(LIGHT, row)], device_type="light")
            return Message(
                i + 1, 0, f"cityops/v1/light/{device}/telemetry", b"{}", received_us, decoded
            )

        result = writer.write([message(7, 0), message(2**70, 1), message(8, 2)])
        assert result.inserted["light"] == 2
        assert list(result.quarantined.elements()) == ["decode_failed"]
        codes = conn.execute(
            "select fault_code from light_readings where device_id = %s order by ts", (device,)
        ).fetchall()
        assert codes == [(7,), (8,)]


def test_two_writers_on_the_same_devices_do_not_deadlock(database_url: str, tag: str) -> None:
    """Two workers see the same devices in different orders; last_seen must not deadlock them."""
    devices = [f"{tag}-d{i:04d}" for i in range(2000)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        register(conn, dict.fromkeys(devices, "manhole"))
    errors: list[BaseException] = []

    def write(order: list[str], ts_ms: int) -> None:
        try:
            with psycopg.connect(database_url) as conn:
                writer = BatchWriter(conn, raw_max_bytes=1024, last_seen_resolution_s=0)
                for round_ in range(10):
                    ts_us = (ts_ms + round_) * 1000
                    batch = [
                        Message(
                            i + 1,
                            0,
                            f"cityops/v1/manhole/{device}/telemetry",
                            b"{}",
                            ts_us,
                            Decoded(rows=[(MANHOLE, (device, ts_us, 1.0, False, *[None] * 5))]),
                        )
                        for i, device in enumerate(order)
                    ]
                    result = writer.write(batch)
                    assert result.inserted["manhole"] == len(order)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(devices, T0_MS)),
        threading.Thread(target=write, args=(devices[::-1], T0_MS + 100)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_column_added_changes_nothing_and_a_column_dropped_is_an_outage(
    server_url: str, tag: str
) -> None:
    """A migration under a running writer: no reading may be quarantined for the schema."""
    device = f"{tag}-mh"

    def message(i: int) -> Message:
        row = (device, (T0_MS + i) * 1000, 1.0, False, *[None] * 5)
        decoded = Decoded(rows=[(MANHOLE, row)], device_type="manhole")
        return Message(i + 1, 0, f"cityops/v1/manhole/{device}/telemetry", b"{}", 0, decoded)

    with migrated_database(server_url) as url, psycopg.connect(url) as conn:
        register(conn, {device: "manhole"})
        conn.commit()
        writer = BatchWriter(conn, raw_max_bytes=1024, last_seen_resolution_s=10)
        conn.execute("alter table manhole_readings add column note text")
        conn.commit()
        added = writer.write([message(0)])
        assert (added.inserted["manhole"], sum(added.quarantined.values())) == (1, 0)
        conn.execute("alter table manhole_readings drop column temp_c")
        conn.commit()
        with pytest.raises(psycopg.Error) as refused:
            writer.write([message(1)])
        assert not is_record_error(refused.value)
        conn.rollback()
        assert conn.execute("select count(*) from quarantine").fetchone() == (0,)
