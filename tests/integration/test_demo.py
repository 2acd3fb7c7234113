"""The demo beside a deployment on the same PostgreSQL and Mosquitto: it keeps to a database, a
client id, a shared group and a topic prefix of its own, and takes no database holding other data.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cityops.demo_database import (
    DEMO_DATABASE,
    DemoDatabaseError,
    choose,
    claim,
    empty,
    is_demo_database,
    tables_with_rows,
)
from cityops.settings import Settings
from ingest.settings import IngestSettings
from store import db
from store.settings import DatabaseSettings
from tests.plugin import (
    Publisher,
    Subscriber,
    create_database,
    drop_database,
    migrated_database,
    register,
    session_present,
    wait_for,
)
from wire.mqtt import MqttSettings

T0_MS = 1_764_000_000_000


@pytest.fixture
def production_url(server_url: str) -> Iterator[str]:
    """A deployment's database: migrated, with data of its own added by each test."""
    with migrated_database(server_url) as url:
        yield url


@pytest.fixture
def demo_url(server_url: str, tag: str) -> Iterator[str]:
    """A database name for the demo to make; dropped after the test."""
    url = db.with_database(server_url, f"cityops_demo_test_{tag}")
    yield url
    drop_database(server_url, url)


def demo(
    production_url: str, broker_url: str, mqtt: MqttSettings, *args: str, **popen: object
) -> subprocess.Popen[str]:
    """``cityops demo`` with a deployment's settings: its database URL, client id and group."""
    env = {
        **os.environ,
        "CITYOPS_DATABASE_URL": production_url,
        "CITYOPS_MQTT_URL": broker_url,
        "CITYOPS_MQTT_CLIENT_ID": mqtt.client_id,
        "CITYOPS_MQTT_SHARED_GROUP": mqtt.shared_group,
        "CITYOPS_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "cityops", "demo", *args]
    return subprocess.Popen(command, env=env, text=True, **popen)  # type: ignore[call-overload]


def readings(url: str, device_like: str = "%") -> int:
    """Readings stored in ``url`` of devices matching ``device_like``; 0 before the schema is."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(
                "select (select count(*) from manhole_readings where device_id like %(d)s)"
                " + (select count(*) from light_readings where device_id like %(d)s)"
                " + (select count(*) from sweeper_readings where device_id like %(d)s)",
                {"d": device_like},
            ).fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return 0
    return int(row[0]) if row else 0


def detections(url: str, kind: str, *, on_a_desk: bool = False) -> int:
    """Detections of ``kind`` in ``url`` (or those whose case a unit has); 0 before the schema."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(
                "select count(*) from detections d left join cases c on c.case_id = d.case_id "
                "where d.kind = %s and (c.unit_id is not null or not %s)",
                (kind, on_a_desk),
            ).fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return 0
    return int(row[0]) if row else 0


def test_demo_beside_a_deployment_stores_nothing_there_and_takes_none_of_its_readings(
    production_url: str,
    demo_url: str,
    mosquitto_url: str,
    start_worker,
    publisher: Publisher,
    tag: str,
    tmp_path: Path,
) -> None:
    devices = {f"prod-{tag}-{i}": "manhole" for i in range(2)}
    with psycopg.connect(production_url, autocommit=True) as conn:
        register(conn, devices)
    mqtt = MqttSettings(
        url=mosquitto_url, client_id=f"cityops-ingest-{tag}", shared_group=f"cityops{tag}"
    )
    production = start_worker(
        Settings(
            database=DatabaseSettings(url=production_url),
            mqtt=mqtt,
            ingest=IngestSettings(flush_interval_s=0.05),
        )
    )
    messages = [
        (f"cityops/v1/manhole/{device}/telemetry", f'{{"ts": {T0_MS + i}, "tilt_deg": 2}}')
        for device in devices
        for i in range(50)
    ]
    half = len(messages) // 2
    output, errors = tmp_path / "demo.out", tmp_path / "demo.err"
    with output.open("w") as stdout, errors.open("w") as stderr:
        running = demo(
            production_url,
            mosquitto_url,
            mqtt,
            "--database",
            db.database_name(demo_url),
            "--duration",
            "120",  # a bound: the test stops it once the deployment's readings went through
            "--workdir",
            str(tmp_path / "demo"),
            stdout=stdout,
            stderr=stderr,
        )
        try:

            def demo_stores() -> bool:
                assert running.poll() is None, errors.read_text()
                return readings(demo_url) > 0

            wait_for(demo_stores, timeout_s=90, what="the demo storing its readings")
            publisher.publish_many(messages[:half])  # type: ignore[arg-type]
            wait_for(lambda: readings(production_url) == half, what="the deployment's readings")

            def demo_opens_a_case() -> bool:
                assert running.poll() is None, errors.read_text()
                return detections(demo_url, "cover_open", on_a_desk=True) > 0

            # the scenario's cover open in the hour's second minute: a case for its owner
            wait_for(demo_opens_a_case, timeout_s=60, what="the demo's first case")
            running.send_signal(signal.SIGTERM)
            assert running.wait(timeout=60) == 0, errors.read_text()
        finally:
            if running.poll() is None:
                running.kill()
                running.wait()
    # The demo's fleet had finished publishing: were it on the deployment's topics, the worker
    # would have had it before these.
    publisher.publish_many(messages[half:])  # type: ignore[arg-type]
    wait_for(lambda: readings(production_url) == len(messages), what="every deployment reading")

    with psycopg.connect(production_url) as conn:
        # the readings, and the change feed ingest writes with them for the scenes
        assert tables_with_rows(conn) == [
            "public.devices",
            "public.manhole_readings",
            "public.reading_batches",
        ]
        assert not is_demo_database(conn)
    handled = production.metric_total("cityops_ingest_messages_total")
    assert handled == len(messages)
    with psycopg.connect(demo_url) as conn:
        assert is_demo_database(conn)
        taken = conn.execute(
            "select count(*) from quarantine where topic like %s", (f"%/prod-{tag}-%",)
        ).fetchone()
        assert taken == (0,)
    assert readings(demo_url, f"prod-{tag}-%") == 0
    assert readings(demo_url) > 0

    shown = output.read_text()
    assert re.search(r"^database \S+/cityops_demo_test_\w+ \(\w+\), broker", shown, re.M), shown
    identity = re.search(r"topics (demo-(\w+)/cityops/v1/#), client id (cityops-demo-\w+)", shown)
    assert identity is not None, shown
    assert identity.group(3) == f"cityops-demo-{identity.group(2)}"
    assert not session_present(mosquitto_url, identity.group(3))
    # nor retained messages: the scenes' detections and cases are taken back at the end
    out_tree = f"demo-{identity.group(2)}/cityops/v1/out"
    subscriber = Subscriber(mosquitto_url)
    try:
        subscriber.subscribe(f"{out_tree}/#")  # retained messages come before the marker
        publisher.publish(f"{out_tree}/test-marker", b"marker")
        subscriber.first(lambda m: m.topic == f"{out_tree}/test-marker", "the marker")
        assert [m.topic for m in subscriber.received] == [f"{out_tree}/test-marker"]
    finally:
        subscriber.close()
    stored = re.search(r"([\d,]+) readings stored", shown)
    assert stored is not None, shown
    assert int(stored.group(1).replace(",", "")) > 0
    assert (tmp_path / "demo" / "city" / "ground_truth.jsonl").read_text().strip()
    # the live view's last frame: a detection, its case and the unit whose desk it is on
    detection = re.search(
        r"^\d\d:\d\d +cover_open +(\d{16}) +critical +(\d+) +dispatched +(\S+)", shown, re.M
    )
    assert detection is not None, shown
    with psycopg.connect(demo_url) as conn:
        case = conn.execute(
            "select subject, unit_id from cases where case_id = %s", (int(detection.group(2)),)
        ).fetchone()
    assert case == (detection.group(1), detection.group(3))
    # judged at the replay's clock, not at wall time: last night's devices are not all offline
    assert detections(demo_url, "sensor_offline") == 0
    assert re.search(r"^\s*scenes +\d+ detections active of \d+, \d+ cases open", shown, re.M)
    # the score, as `cityops scenes score` prints it: the cover open was found, no false alarm
    assert re.search(r"^kind +faults +undetectable +found +precision +recall", shown, re.M)
    assert re.search(r"^cover_open +[01] +[01] +1 +1\.000 ", shown, re.M), shown
    # every fault kind the demo injects has its scene now: lamps, sweepers too
    assert re.search(r"^cabinet_outage +\d+ +\d+ +\d+ ", shown, re.M), shown
    assert re.search(r"^gps_gap +\d+ +\d+ +\d+ ", shown, re.M), shown
    assert "no scene yet" not in shown


def test_demo_refuses_a_database_with_other_data_in_one_line_and_changes_nothing(
    production_url: str, broker_url: str, tmp_path: Path, tag: str
) -> None:
    with psycopg.connect(production_url, autocommit=True) as conn:
        register(conn, {f"prod-{tag}": "manhole"})
    done = demo(
        production_url,
        broker_url,
        MqttSettings(),
        "--database",
        db.database_name(production_url),
        "--duration",
        "5",
        "--workdir",
        str(tmp_path / "demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = done.communicate(timeout=60)
    assert done.returncode == 2, stderr
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: the database postgresql://")
    assert "holds data that is not the demo's (rows in public.devices)" in stderr
    assert "give --database a new name" in stderr
    with psycopg.connect(production_url) as conn:
        assert tables_with_rows(conn) == ["public.devices"]
        assert not is_demo_database(conn)


def test_the_demo_database_is_its_own_unless_the_configured_one_is_a_demo_database(
    production_url: str, demo_url: str
) -> None:
    production = DatabaseSettings(url=production_url, retention_days=30)
    chosen = choose(production, None)
    assert chosen.url == db.with_database(production_url, DEMO_DATABASE)
    assert chosen.retention_days == 30
    assert choose(production, "elsewhere").url == db.with_database(production_url, "elsewhere")
    absent = DatabaseSettings(url=demo_url)
    assert choose(absent, None).url == db.with_database(demo_url, DEMO_DATABASE)
    with pytest.raises(DemoDatabaseError, match="is not a database name"):
        choose(production, "x/../postgres")

    claim(absent)  # creates and marks it
    db.migrate(absent)
    assert choose(absent, None) == absent
    with psycopg.connect(demo_url, autocommit=True) as conn:
        register(conn, {"demo-mh": "manhole"})
    claim(absent)  # its own data is no reason to refuse it


def test_an_unmarked_database_is_taken_only_while_no_table_holds_a_row(
    production_url: str, server_url: str
) -> None:
    production = DatabaseSettings(url=production_url)
    claim(production)  # migrated, but nothing in it yet
    with psycopg.connect(production_url) as conn:
        assert is_demo_database(conn)
    other = create_database(server_url)
    try:
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute("create schema billing")
            conn.execute("create table billing.invoices (n int)")
            conn.execute("insert into billing.invoices values (1)")
        with pytest.raises(DemoDatabaseError, match=r"rows in billing\.invoices\)"):
            claim(DatabaseSettings(url=other))
        with psycopg.connect(other) as conn:
            assert not is_demo_database(conn)
    finally:
        drop_database(server_url, other)


def test_each_demo_empties_its_own_database_first_and_no_other(
    production_url: str, demo_url: str, tag: str
) -> None:
    demo_db = DatabaseSettings(url=demo_url)
    claim(demo_db)
    db.migrate(demo_db)
    with psycopg.connect(demo_url, autocommit=True) as conn:
        register(conn, {"demo-mh": "manhole"})
        conn.execute("insert into manhole_readings (device_id, ts) values ('demo-mh', now())")
    empty(demo_db)
    with psycopg.connect(demo_url) as conn:
        assert tables_with_rows(conn) == []
        assert is_demo_database(conn)
    with psycopg.connect(production_url, autocommit=True) as conn:
        register(conn, {f"prod-{tag}": "manhole"})
    with pytest.raises(DemoDatabaseError, match="is not a demo database: not emptied"):
        empty(DatabaseSettings(url=production_url))
    with psycopg.connect(production_url) as conn:
        assert tables_with_rows(conn) == ["public.devices"]


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto itself")
def test_the_demo_runs_with_a_login_per_device_on_a_broker_enforcing_identity(
    production_url: str, demo_url: str, broker_url: str, tag: str, tmp_path: Path
) -> None:
    result = demo(
        production_url,
        broker_url,
        MqttSettings(url=broker_url, client_id=f"cityops-ingest-{tag}"),
        "--identity",
        "--database",
        db.database_name(demo_url),
        "--duration",
        "30",
        "--workdir",
        str(tmp_path / "demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        shown, errors = result.communicate(timeout=180)
    finally:
        if result.poll() is None:  # hung: end it, and its pipes with it
            result.kill()
            result.communicate()
    assert result.returncode == 0, errors
    assert f"broker Mosquitto enforcing identity ({tmp_path / 'demo' / 'identity'})" in shown
    stored = re.search(r"([\d,]+) readings stored, (\d+) quarantined", shown)
    assert stored is not None, shown
    assert int(stored.group(1).replace(",", "")) > 0
    assert stored.group(2) == "0"  # every device spoke for itself, under its own topic
    # the cover opened in the hour's second minute reached a unit's desk through it all
    assert re.search(r"^cover_open +[01] +[01] +1 +1\.000 ", shown, re.M), shown
    # each device of the city had its own password, and may publish only under its own topic
    with psycopg.connect(demo_url) as conn:
        devices = dict(conn.execute("select device_id, type from devices").fetchall())
    passwords = (tmp_path / "demo" / "identity" / "cityops.passwd").read_text().splitlines()
    assert {line.split(":")[0] for line in passwords} >= set(devices)
    acl = (tmp_path / "demo" / "identity" / "cityops.acl").read_text()
    prefix = re.search(r"topics (demo-\w+)/cityops/v1/#", shown).group(1)  # type: ignore[union-attr]
    device, kind = next(iter(devices.items()))
    assert f"user {device}\ntopic write {prefix}/cityops/v1/{kind}/{device}/#\n" in acl
