"""Crash and outage: kill -9 of ingest or of its MQTT receiver mid-stream, and a database restart
while ingest runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from cityops.services import free_port
from store import db
from store.settings import DatabaseSettings
from tests.integration.test_ingest import T0_MS, count
from tests.plugin import Publisher, refusing_inserts, register, stop_postgres, wait_for

N = 20_000


def start_ingest(
    database_url: str, broker_url: str, tag: str, log: Path, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CITYOPS_DATABASE_URL": database_url,
        "CITYOPS_MQTT_URL": broker_url,
        "CITYOPS_MQTT_CLIENT_ID": f"ingest-{tag}",
        "CITYOPS_METRICS_PORT": str(metrics_port),
        "CITYOPS_INGEST_BATCH_MAX_ROWS": "1000",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cityops", "ingest"], env=env, stdout=out, stderr=out
        )


def readings(n: int, device: str) -> list[tuple[str, str]]:
    topic = f"cityops/v1/manhole/{device}/telemetry"
    return [
        (topic, json.dumps({"ts": T0_MS + i * 1000, "tilt_deg": (i % 900) / 10})) for i in range(n)
    ]


def stored(conn: psycopg.Connection, device: str) -> list[tuple[object, ...]]:
    return conn.execute(
        "select (extract(epoch from ts) * 1000)::bigint, tilt_deg from manhole_readings "
        "where device_id = %s order by ts",
        (device,),
    ).fetchall()


def expected(n: int) -> list[tuple[object, ...]]:
    return [(T0_MS + i * 1000, pytest.approx((i % 900) / 10, abs=1e-4)) for i in range(n)]


def receiver_of(ingest: subprocess.Popen[bytes]) -> psutil.Process:
    """The MQTT receiver process of a running `cityops ingest`."""

    def receivers() -> list[psutil.Process]:
        children = psutil.Process(ingest.pid).children()
        return [child for child in children if "spawn_main" in " ".join(child.cmdline())]

    wait_for(lambda: len(receivers()) == 1, what="the receiver process")
    return receivers()[0]


def start_stream(
    conn: psycopg.Connection, publisher: Publisher, device: str
) -> tuple[threading.Thread, int]:
    """Publish N readings from a thread once ingest takes them; return when >2,000 are stored."""
    messages = readings(N, device)
    # Until ingest has subscribed, nobody gets the first reading: repeat it until it lands.
    wait_for(
        lambda: (
            publisher.publish_many(messages[:1]) or count(conn, "manhole_readings", device) == 1
        ),
        what="first reading",
    )
    sender = threading.Thread(target=publisher.publish_many, args=(messages[1:],))
    sender.start()
    wait_for(lambda: count(conn, "manhole_readings", device) > 2_000, what="ingest under way")
    return sender, N


def all_stored_after_restart(conn: psycopg.Connection, device: str, before: int) -> None:
    """All N readings land after the restart, each once, ``before`` of them before it."""
    wait_for(
        lambda: count(conn, "manhole_readings", device) == N,
        timeout_s=120,
        what=f"all {N} readings after restart",
    )
    assert before < N, "the kill came too late to test anything"
    assert stored(conn, device) == expected(N)


@pytest.fixture
def ingest_process(
    database_url, broker_url, tag, tmp_path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_kill_9_mid_stream_then_restart_stores_exactly_the_published_readings(
    conn, database_url, mosquitto_url, tag, tmp_path, ingest_process, publisher: Publisher
) -> None:
    broker_url = mosquitto_url
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    log = tmp_path / "ingest.log"
    ingest_process.append(start_ingest(database_url, broker_url, tag, log))
    receiver = receiver_of(ingest_process[0])
    sender, _ = start_stream(conn, publisher, device)
    ingest_process[0].kill()
    ingest_process[0].wait()
    at_kill = count(conn, "manhole_readings", device)
    # Its receiver sees the writer's end of the pipe close, disconnects and ends.
    _, alive = psutil.wait_procs([receiver], timeout=30)
    assert not alive, "the receiver outlived its writer"
    sender.join()
    port = free_port()
    ingest_process.append(start_ingest(database_url, broker_url, tag, log, port))
    all_stored_after_restart(conn, device, at_kill)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        exposition = response.read().decode()
    inserted = re.search(
        r'^cityops_ingest_rows_total\{kind="manhole",result="inserted"\} (\S+)$', exposition, re.M
    )
    assert inserted is not None
    assert float(inserted.group(1)) == N - at_kill
    ingest_process[1].send_signal(signal.SIGTERM)
    assert ingest_process[1].wait(timeout=30) == 0


def test_kill_9_of_the_receiver_stops_ingest_in_one_line_and_a_restart_loses_nothing(
    conn, database_url, mosquitto_url, tag, tmp_path, ingest_process, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    log = tmp_path / "ingest.log"
    ingest_process.append(start_ingest(database_url, mosquitto_url, tag, log))
    receiver = receiver_of(ingest_process[0])
    sender, _ = start_stream(conn, publisher, device)
    receiver.kill()
    assert ingest_process[0].wait(timeout=30) == 2
    at_stop = count(conn, "manhole_readings", device)
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the MQTT receiver process ended unexpectedly; ingest stopped: start it again (a "
        "service manager does), the broker redelivers what was not acknowledged"
    ]
    assert "Traceback" not in log.read_text()
    sender.join()
    ingest_process.append(start_ingest(database_url, mosquitto_url, tag, log))
    all_stored_after_restart(conn, device, at_stop)


def test_a_receiver_that_dies_during_a_database_outage_stops_ingest_at_once(
    conn, database_url, mosquitto_url, tag, tmp_path, ingest_process, publisher: Publisher
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    with refusing_inserts(conn, tag):
        log = tmp_path / "ingest.log"
        ingest_process.append(start_ingest(database_url, mosquitto_url, tag, log))
        receiver = receiver_of(ingest_process[0])
        wait_for(lambda: "subscribed to" in log.read_text(), what="ingest subscribed")
        publisher.publish_many(readings(10, device))
        wait_for(lambda: "database outage (refused)" in log.read_text(), what="the outage")
        receiver.kill()
        # Not after the outage: ingest retries the database with backoff meanwhile, and without
        # its receiver nothing it commits could be acknowledged.
        assert ingest_process[0].wait(timeout=30) == 2
        assert "error: the MQTT receiver process ended unexpectedly" in log.read_text()
        assert count(conn, "manhole_readings", device) == 0


def test_database_restart_while_ingest_runs_loses_nothing_and_recovers_by_itself(
    tag, own_postgres, make_settings, start_worker, publisher: Publisher
) -> None:
    url = own_postgres.get_uri()
    db.migrate(DatabaseSettings(url=url))
    device = f"{tag}-mh"
    messages = readings(3_000, device)
    with psycopg.connect(url, autocommit=True) as conn:
        register(conn, {device: "manhole"})
    settings = make_settings(retry_max_s=0.5, batch_max_rows=100, buffer_max_messages=300)
    running = start_worker(settings.model_copy(update={"database": DatabaseSettings(url=url)}))
    publisher.publish_many(messages[:1_000])
    with psycopg.connect(url, autocommit=True) as conn:
        wait_for(lambda: count(conn, "manhole_readings", device) == 1_000, what="first 1,000")
    stop_postgres(own_postgres)
    publisher.publish_many(messages[1_000:2_000])
    # 1,000 published, but the buffer (and the MQTT 5 receive window) holds 300: the broker
    # keeps the rest until ingest acknowledges again.
    wait_for(
        lambda: (
            running.metric("cityops_ingest_database_errors_total", kind="unreachable") >= 1
            and running.metric("cityops_ingest_buffered_messages") == 300
        ),
        what="a full, bounded buffer while the database is down",
    )
    assert running.metric("cityops_ingest_database_up") == 0
    own_postgres.ensure_postgres_running()
    publisher.publish_many(messages[2_000:])
    with psycopg.connect(url, autocommit=True) as conn:
        wait_for(
            lambda: count(conn, "manhole_readings", device) == 3_000,
            timeout_s=60,
            what="all 3,000 readings after the restart",
        )
        assert stored(conn, device) == expected(3_000)
    assert running.metric("cityops_ingest_database_up") == 1
