"""Device identity against a real Mosquitto enforcing it (config/mosquitto/identity.conf).

The broker is started from cityops.conf's guarantees and identity.conf's three TLS listeners,
with the password, ACL and CRL files that `cityops broker sync --watch` keeps from this
session's registry; ingest connects with a service account, devices with their own passwords
or certificates of the test's CA.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from cases.access import create_token
from cases.api import create_app
from cityops.cli import app as cli_app
from cityops.services import IdentityBroker, IdentityFiles, start_identity_mosquitto
from cityops.settings import Settings
from devices import broker, credentials
from devices.credentials import IssuedCredential
from devices.pki import CertificateAuthority, write_certificate
from devices.settings import BrokerSettings
from ingest.settings import IngestSettings
from simulator.city import CitySpec
from store.settings import DatabaseSettings
from tests.plugin import CATALOG, MOSQUITTO_CONF, ROOT, RunningWorker, import_city, wait_for
from wire.mqtt import MqttSettings, TlsFiles

IDENTITY_CONF = ROOT / "config" / "mosquitto" / "identity.conf"
REVOKED_WITHIN_S = 10.0


@dataclass
class Identity:
    """The enforcing broker, its CA and files, and the sync keeping them."""

    broker: IdentityBroker
    ca: CertificateAuthority
    ca_file: Path
    settings: BrokerSettings
    workdir: Path
    syncs: list[broker.SyncReport] = field(default_factory=list)

    def tls(self, cert: Path | None = None, key: Path | None = None) -> TlsFiles:
        return TlsFiles(self.ca_file, cert, key)


@pytest.fixture(scope="module")
def identity(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    if shutil.which("mosquitto") is None:
        pytest.skip("the identity tests need Mosquitto itself (its password, ACL and CRL files)")
    workdir = tmp_path_factory.mktemp("identity")
    files = IdentityFiles.lay_out(workdir)
    with psycopg.connect(database_url, autocommit=True) as conn:
        control = credentials.issue_service(conn, f"control-{workdir.name[-8:]}", "control")
        settings = files.broker_settings(sync_interval_s=1.0)
        broker.sync(conn, settings, reload=False)  # the files Mosquitto starts on
    with start_identity_mosquitto(
        MOSQUITTO_CONF, IDENTITY_CONF, workdir / "mosquitto", files
    ) as running:
        settings = settings.model_copy(
            update={
                "pid_file": running.pid_file,
                "control_url": running.url(
                    running.service_port, control.username, control.password
                ),
            }
        )
        found = Identity(running, files.ca, files.ca_file, settings, workdir)
        stop = threading.Event()
        watcher = threading.Thread(
            target=broker.watch,
            args=(lambda: psycopg.connect(database_url), settings, stop),
            kwargs={"on_sync": found.syncs.append},
            name="broker-sync",
        )
        watcher.start()
        wait_for(lambda: found.syncs, what="the first sync")
        yield found
        stop.set()
        watcher.join(timeout=15)


def register(conn: psycopg.Connection, rows: list[tuple[str, str, str | None]]) -> None:
    conn.cursor().executemany(
        "insert into devices (device_id, type, gateway_id) values (%s, %s, %s)", rows
    )


class Device:
    """One MQTT client with its own login: what the broker answered, and what it was told."""

    def __init__(
        self,
        identity: Identity,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        client_id: str = "",
    ) -> None:
        self.connack: list[Any] = []
        self.pubacks: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or (username or ""),
            protocol=mqtt.MQTTProtocolVersion.MQTTv5,
        )
        self.client.tls_set_context((tls or identity.tls()).context())
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connack.append(rc)
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.__setitem__(
            mid, codes
        )
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def answer(self) -> Any:
        return wait_for(lambda: self.connack, timeout_s=10, what="a CONNACK")[0]

    def publish(self, topic: str, payload: Any) -> Any:
        """Publish at QoS 1 and return the broker's PUBACK reason."""
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        return wait_for(lambda: self.pubacks.get(info.mid), timeout_s=10, what="a PUBACK")

    def subscribe(self, topic_filter: str) -> Any:
        """Subscribe at QoS 1 and return the broker's SUBACK reason."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        return wait_for(lambda: self.subacks.get(mid), timeout_s=10, what="a SUBACK")[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    opened: list[Device] = []
    yield opened
    for device in opened:
        device.close()


@pytest.fixture
def start_ingest(identity: Identity, database_url: str, conn: psycopg.Connection, tag: str):
    """Start an ingest worker logged in with its own service account on the services' listener."""
    started: list[RunningWorker] = []

    def start() -> RunningWorker:
        mark = len(identity.syncs)
        account = credentials.issue_service(conn, f"ingest-{tag}", "ingest")
        synced_since(identity, mark)
        worker = RunningWorker(
            Settings(
                database=DatabaseSettings(url=database_url),
                mqtt=MqttSettings(
                    url=identity.broker.url(
                        identity.broker.service_port, account.username, account.password
                    ),
                    client_id=f"ingest-{tag}",
                    session_expiry_s=0,
                    ca_file=identity.ca_file,
                ),
                ingest=IngestSettings(flush_interval_s=0.05),
            )
        )
        worker.thread.start()
        started.append(worker)
        wait_for(lambda: worker.metric("cityops_ingest_mqtt_connected") == 1, what="connecting")
        return worker

    yield start
    for worker in started:
        worker.close()


def readings(conn: psycopg.Connection, table: str, device_id: str) -> int:
    row = conn.execute(f"select count(*) from {table} where device_id = %s", (device_id,))
    return row.fetchone()[0]


def quarantined(conn: psycopg.Connection, tag: str) -> list[tuple[str, str]]:
    return conn.execute(
        "select reason, detail from quarantine where topic like %s order by id", (f"%{tag}%",)
    ).fetchall()


def synced_since(identity: Identity, mark: int) -> broker.SyncReport:
    """The first sync after the ``mark``-th that rewrote a file (a change made after the mark)."""

    def newer() -> broker.SyncReport | None:
        return next((r for r in identity.syncs[mark:] if r.changed), None)

    return wait_for(newer, timeout_s=REVOKED_WITHIN_S, what="a sync after the change")


def issued_and_synced(
    identity: Identity, conn: psycopg.Connection, device_id: str, device_type: str, **options: Any
) -> IssuedCredential:
    """Register a device, issue it a credential, and wait until the broker has it."""
    register(conn, [(device_id, device_type, None)])
    mark = len(identity.syncs)
    (issued,) = credentials.issue(conn, [device_id], **options)
    synced_since(identity, mark)
    return issued


def password_login(
    identity: Identity, devices: list[Device], device_id: str, password: str | None
) -> Device:
    """A device logging in with a password on the devices' listener (closed after the test)."""
    device = Device(identity, identity.broker.password_port, username=device_id, password=password)
    devices.append(device)
    return device


def test_an_unauthenticated_client_is_refused(identity: Identity, devices: list[Device]) -> None:
    anonymous = Device(identity, identity.broker.password_port, client_id="nobody")
    devices.append(anonymous)
    assert anonymous.answer().is_failure
    assert str(anonymous.answer()) == "Not authorized"
    guessing = Device(identity, identity.broker.service_port, username="ingest", password="x")
    devices.append(guessing)
    assert str(guessing.answer()) == "Not authorized"
    # the certificate listener wants a certificate of the CA before MQTT even starts
    assert handshake_refused(identity.tls(), identity.broker.certificate_port)


def test_a_device_publishing_on_another_devices_topic_is_refused_and_nothing_lands(
    identity: Identity, start_ingest, conn, tag: str, devices: list[Device]
) -> None:
    mine, theirs = f"{tag}-mh-1", f"{tag}-mh-2"
    register(conn, [(mine, "manhole", None), (theirs, "manhole", None)])
    mark = len(identity.syncs)
    (issued, _) = credentials.issue(conn, [mine, theirs])
    synced_since(identity, mark)
    start_ingest()  # its registry holds the devices
    device = password_login(identity, devices, mine, issued.password)
    assert not device.answer().is_failure
    # Mosquitto grants any subscription and checks read access on delivery: the device, a
    # would-be eavesdropper, and a second ingest login both listen to all telemetry
    mark = len(identity.syncs)
    listener = credentials.issue_service(conn, f"listen-{tag}", "ingest")
    synced_since(identity, mark)
    control = Device(
        identity,
        identity.broker.service_port,
        username=listener.username,
        password=listener.password,
    )
    devices.append(control)
    assert not control.answer().is_failure
    for subscriber in (device, control):
        assert not subscriber.subscribe("cityops/v1/#").is_failure
    now_ms = int(time.time() * 1000)
    refused = device.publish(
        f"cityops/v1/manhole/{theirs}/telemetry", {"ts": now_ms, "tilt_deg": 80}
    )
    assert str(refused) == "Not authorized"
    accepted = device.publish(f"cityops/v1/manhole/{mine}/telemetry", {"ts": now_ms, "tilt_deg": 3})
    assert not accepted.is_failure
    # what the device may say lands; what it may not never reached ingest at all
    wait_for(lambda: readings(conn, "manhole_readings", mine) == 1, what="its own reading")
    assert readings(conn, "manhole_readings", theirs) == 0
    assert quarantined(conn, tag) == []
    # the city's telemetry reaches ingest's logins only, never a device
    wait_for(lambda: control.messages, what="the control login's copy")
    assert [m.topic for m in control.messages] == [f"cityops/v1/manhole/{mine}/telemetry"]
    assert device.messages == []


def test_a_devices_password_opens_no_services_listener(
    identity: Identity, conn, tag: str, devices: list[Device]
) -> None:
    device_id = f"{tag}-mh-1"
    issued = issued_and_synced(identity, conn, device_id, "manhole")
    # there client ids are free: a device logged in there could take over ingest's session
    where_services_are = Device(
        identity,
        identity.broker.service_port,
        username=device_id,
        password=issued.password,
        client_id="cityops-ingest-1",
    )
    devices.append(where_services_are)
    assert str(where_services_are.answer()) == "Not authorized"
    own = password_login(identity, devices, device_id, issued.password)
    assert not own.answer().is_failure


def test_a_gateways_reading_for_a_foreign_or_retired_device_is_quarantined(
    identity: Identity, start_ingest, conn, tag: str, devices: list[Device]
) -> None:
    gateway, other_gateway = f"{tag}-gw-1", f"{tag}-gw-2"
    lamp, foreign, retired = f"{tag}-lt-1", f"{tag}-lt-2", f"{tag}-lt-3"
    register(conn, [(gateway, "gateway", None), (other_gateway, "gateway", None)])
    register(
        conn,
        [(lamp, "light", gateway), (foreign, "light", other_gateway), (retired, "light", gateway)],
    )
    credentials.retire(conn, [retired])
    mark = len(identity.syncs)
    (issued,) = credentials.issue(conn, [gateway])
    synced_since(identity, mark)
    ingest = start_ingest()
    device = password_login(identity, devices, gateway, issued.password)
    now_ms = int(time.time() * 1000)
    batch = [
        {"device_id": d, "ts": now_ms, "values": {"lamp_on": True}}
        for d in (lamp, foreign, retired)
    ]
    assert not device.publish(f"cityops/v1/gateway/{gateway}/batch", batch).is_failure
    wait_for(lambda: len(quarantined(conn, tag)) == 2, what="two entries quarantined")
    assert readings(conn, "light_readings", lamp) == 1
    assert readings(conn, "light_readings", foreign) == 0
    assert readings(conn, "light_readings", retired) == 0
    reasons = [reason for reason, _ in quarantined(conn, tag)]
    assert sorted(reasons) == ["not_gateway_child", "retired_device"]
    assert ingest.metric("cityops_ingest_quarantined_total", reason="not_gateway_child") >= 1


def test_a_revoked_device_is_disconnected_and_refused_within_10_s(
    identity: Identity, conn, tag: str, devices: list[Device]
) -> None:
    device_id = f"{tag}-mh-1"
    issued = issued_and_synced(identity, conn, device_id, "manhole")
    device = password_login(identity, devices, device_id, issued.password)
    assert not device.answer().is_failure
    revoked_at = time.monotonic()
    assert credentials.revoke(conn, [device_id]) == 1
    assert device.disconnected.wait(REVOKED_WITHIN_S)
    assert time.monotonic() - revoked_at < REVOKED_WITHIN_S
    again = password_login(identity, devices, device_id, issued.password)
    assert str(again.answer()) == "Not authorized"


def test_a_rotated_password_replaces_the_old_one_within_10_s(
    identity: Identity, conn, tag: str, devices: list[Device]
) -> None:
    device_id = f"{tag}-sw-1"
    old = issued_and_synced(identity, conn, device_id, "sweeper")
    before = password_login(identity, devices, device_id, old.password)
    assert not before.answer().is_failure
    (new,) = credentials.issue(conn, [device_id], rotate=True)
    assert new.password != old.password
    assert before.disconnected.wait(REVOKED_WITHIN_S)
    stale = password_login(identity, devices, device_id, old.password)
    assert str(stale.answer()) == "Not authorized"
    fresh = password_login(identity, devices, device_id, new.password)
    assert not fresh.answer().is_failure


def handshake_refused(tls: TlsFiles, port: int) -> bool:
    """Whether the broker ends a TLS session from ``tls`` at once (a bad client certificate).

    Under TLS 1.3 the server judges the client's certificate after the client's side of the
    handshake is done: its verdict is an alert (or a close) on the first read. A session the
    broker accepts waits for an MQTT CONNECT instead, so the read times out.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with tls.context().wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.settimeout(2.0)
                return conn.recv(1) == b""
        except TimeoutError:
            return False
        except (ssl.SSLError, ConnectionError):
            return True


def test_an_expired_password_is_refused_at_the_next_periodic_sync(
    identity: Identity, conn, tag: str, devices: list[Device]
) -> None:
    device_id = f"{tag}-mh-1"
    issued = issued_and_synced(identity, conn, device_id, "manhole", valid_days=30)
    device = password_login(identity, devices, device_id, issued.password)
    assert not device.answer().is_failure
    # time passes: nothing is notified, the periodic sync (broker.sync_interval_s) sees it
    conn.execute(
        "update broker_credentials set not_after = now() - interval '1 s' where username = %s",
        (device_id,),
    )
    assert device.disconnected.wait(REVOKED_WITHIN_S)
    again = password_login(identity, devices, device_id, issued.password)
    assert str(again.answer()) == "Not authorized"


def certificate(identity: Identity, device_id: str, **options: Any) -> TlsFiles:
    issued = identity.ca.issue(device_id, **options)
    crt, key = write_certificate(identity.workdir / "devices", device_id, issued)
    return identity.tls(crt, key)


def test_tls_with_the_right_ca_connects_and_a_wrong_ca_or_an_expired_certificate_is_refused(
    identity: Identity, conn, tag: str, devices: list[Device], tmp_path: Path
) -> None:
    device_id = f"{tag}-mh-1"
    issued = issued_and_synced(
        identity, conn, device_id, "manhole", kind="certificate", ca=identity.ca, valid_days=30
    )
    crt, key = write_certificate(tmp_path, device_id, issued.certificate)
    device = Device(identity, identity.broker.certificate_port, tls=identity.tls(crt, key))
    devices.append(device)
    assert not device.answer().is_failure
    now_ms = int(time.time() * 1000)
    own = device.publish(f"cityops/v1/manhole/{device_id}/telemetry", {"ts": now_ms, "tilt_deg": 1})
    assert not own.is_failure  # the certificate's CN is its user name: its own topic is open

    # a client that trusts another CA refuses the broker's certificate
    other_ca = CertificateAuthority.load(CertificateAuthority.init(tmp_path / "other").parent)
    with (
        socket.create_connection(("127.0.0.1", identity.broker.password_port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        TlsFiles(tmp_path / "other/ca.crt").context().wrap_socket(raw, server_hostname="127.0.0.1")
    # a device certificate of another CA, and an expired one of ours, are refused by the broker
    stranger = other_ca.issue(device_id)
    s_crt, s_key = write_certificate(tmp_path / "stranger", device_id, stranger)
    expired = certificate(
        identity,
        f"{tag}-mh-2",
        not_before=datetime.now(UTC) - timedelta(days=2),
        not_after=datetime.now(UTC) - timedelta(days=1),
    )
    assert handshake_refused(identity.tls(s_crt, s_key), identity.broker.certificate_port)
    assert handshake_refused(expired, identity.broker.certificate_port)
    # and ours, unexpired, passes the same handshake
    assert not handshake_refused(identity.tls(crt, key), identity.broker.certificate_port)


def test_a_revoked_certificate_is_disconnected_and_refused_within_10_s(
    identity: Identity, conn, tag: str, devices: list[Device], tmp_path: Path
) -> None:
    device_id = f"{tag}-mh-1"
    issued = issued_and_synced(
        identity, conn, device_id, "manhole", kind="certificate", ca=identity.ca
    )
    crt, key = write_certificate(tmp_path, device_id, issued.certificate)
    device = Device(identity, identity.broker.certificate_port, tls=identity.tls(crt, key))
    devices.append(device)
    assert not device.answer().is_failure
    revoked_at = time.monotonic()
    credentials.revoke(conn, [device_id])
    assert device.disconnected.wait(REVOKED_WITHIN_S)
    assert time.monotonic() - revoked_at < REVOKED_WITHIN_S
    # the sync that ended it (reported once its work is done) rewrote the CRL
    report = wait_for(
        lambda: next((r for r in identity.syncs if device_id in r.ended), None),
        what="the sync's report",
    )
    assert "crl_file" in report.changed
    assert handshake_refused(identity.tls(crt, key), identity.broker.certificate_port)


def test_a_rotated_certificate_ends_the_old_ones_session_and_the_new_one_connects(
    identity: Identity, conn, tag: str, devices: list[Device], tmp_path: Path
) -> None:
    device_id = f"{tag}-lt-1"
    old = issued_and_synced(identity, conn, device_id, "light", kind="certificate", ca=identity.ca)
    old_crt, old_key = write_certificate(tmp_path / "old", device_id, old.certificate)
    stolen = Device(identity, identity.broker.certificate_port, tls=identity.tls(old_crt, old_key))
    devices.append(stolen)
    assert not stolen.answer().is_failure
    (new,) = credentials.issue(conn, [device_id], "certificate", ca=identity.ca, rotate=True)
    new_crt, new_key = write_certificate(tmp_path / "new", device_id, new.certificate)
    # the device is still admitted (its new certificate): its old session is ended all the same
    assert stolen.disconnected.wait(REVOKED_WITHIN_S)
    assert handshake_refused(identity.tls(old_crt, old_key), identity.broker.certificate_port)
    fresh = Device(identity, identity.broker.certificate_port, tls=identity.tls(new_crt, new_key))
    devices.append(fresh)
    assert not fresh.answer().is_failure


def test_a_deleted_api_token_is_refused_within_5_s(database_url: str, conn, city) -> None:
    with TestClient(create_app(database_url, CATALOG)) as client:
        token = create_token(conn, "d0-drainage", "unit")
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/cases", headers=headers).status_code == 200
        result = CliRunner().invoke(
            cli_app, ["units", "revoke", "d0-drainage"], env={"CITYOPS_DATABASE_URL": database_url}
        )
        assert result.exit_code == 0, result.output
        deleted_at = time.monotonic()
        wait_for(
            lambda: client.get("/cases", headers=headers).status_code == 401,
            timeout_s=5,
            what="the deleted token refused",
        )
        assert time.monotonic() - deleted_at < 5


def test_the_simulated_fleet_publishes_with_a_login_per_device(
    identity: Identity, start_ingest, conn, database_url: str, tmp_path: Path
) -> None:
    city = import_city(
        conn,
        tmp_path,
        # no sweepers: their ids repeat from city to city, and other tests count theirs
        CitySpec(seed=4, covers=20, lamps=40, sweepers_per_district=0, division_base=880_000),
    )
    env = {
        "CITYOPS_DATABASE_URL": database_url,
        "CITYOPS_MQTT_URL": identity.broker.url(identity.broker.password_port),
        "CITYOPS_MQTT_CA_FILE": str(identity.ca_file),
    }
    runner = CliRunner()
    logins = tmp_path / "logins.csv"
    mark = len(identity.syncs)
    issued = runner.invoke(
        cli_app,
        [
            "devices",
            "credentials",
            "issue",
            "--from",
            str(tmp_path / "city/devices.csv"),
            "--out",
            str(logins),
        ],
        env=env,
    )
    assert issued.exit_code == 0, issued.output
    assert logins.stat().st_mode & 0o077 == 0  # the secrets are its owner's only
    assert len(logins.read_text().splitlines()) == len(city.devices) + 1
    synced_since(identity, mark)
    ingest = start_ingest()
    # last night at 00:30 local time: the lamps lit, their cabinets reporting
    local = datetime.now(timezone(timedelta(hours=8))) - timedelta(days=1)
    night = local.replace(hour=0, minute=30, second=0, microsecond=0).isoformat()

    def fleet() -> Any:
        """Five minutes of the night's fleet, a connection and a login per device."""
        where = ["--city", str(tmp_path / "city"), "--credentials", str(logins)]
        when = ["--start", night, "--duration", "5", "--speed", "0"]
        return runner.invoke(cli_app, ["sim", "run", *where, *when], env=env)

    run = fleet()
    assert run.exit_code == 0, run.output
    published = json.loads(run.output.strip().splitlines()[-1])["messages"]
    assert published > 0
    # every message was the publishing device's own: all stored, none refused or quarantined
    wait_for(
        lambda: ingest.metric_total("cityops_ingest_messages_total") >= published,
        what="every message ingested",
    )
    assert ingest.metric_total("cityops_ingest_quarantined_total") == 0
    stored = {
        t: ingest.metric("cityops_ingest_messages_total", device_type=t, result="stored")
        for t in ("manhole", "light", "sweeper", "gateway")
    }
    assert sum(stored.values()) == published
    assert stored["gateway"] > 0  # cabinets, each its lamps' batches on its own login
    assert stored["manhole"] > 0
    # a device whose login the broker refuses stops the run before anything is published
    gateway = next(d["device_id"] for d in city.devices if d["type"] == "gateway")
    lines = logins.read_text().splitlines()
    logins.write_text(
        "\n".join(f"{gateway},wrong," if line.startswith(f"{gateway},") else line for line in lines)
    )
    refused = fleet()
    assert refused.exit_code == 2, refused.output
    assert f"refused or did not answer 1 devices, e.g. {gateway} (Not authorized)" in " ".join(
        refused.output.split()
    )


def emqx_queries() -> list[str]:
    """The SQL of config/emqx/cityops.hocon, ${username} bound as a parameter."""
    text = (ROOT / "config" / "emqx" / "cityops.hocon").read_text(encoding="utf-8")
    queries = re.findall(r'(?m)^\s*query = "(.*)"$', text)
    return [q.replace("${username}", "%(username)s") for q in queries]


def test_emqx_checks_passwords_and_rights_from_the_registry_as_its_config_says(
    conn, tag: str
) -> None:
    login, rights = emqx_queries()
    device, gateway, retired = f"{tag}-mh-1", f"{tag}-gw-1", f"{tag}-mh-2"
    register(conn, [(device, "manhole", None), (gateway, "gateway", None)])
    register(conn, [(retired, "manhole", None)])
    issued = {c.username: c for c in credentials.issue(conn, [device, gateway, retired])}
    credentials.retire(conn, [retired])
    ingest = credentials.issue_service(conn, f"ingest-{tag}", "ingest")
    scenes = credentials.issue_service(conn, f"scenes-{tag}", "scenes")

    def emqx_accepts(username: str, password: str) -> bool:
        # EMQX's pbkdf2 check: lowercase hex of PBKDF2-HMAC(sha512, password, salt, 101, 64)
        row = conn.execute(login, {"username": username}).fetchone()
        if row is None:
            return False
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), row[1].encode(), 101, 64)
        return digest.hex() == row[0]

    assert emqx_accepts(device, issued[device].password)
    assert not emqx_accepts(device, issued[gateway].password)
    assert emqx_accepts(ingest.username, ingest.password)
    assert not emqx_accepts(retired, issued[retired].password)
    credentials.revoke(conn, [gateway])
    assert not emqx_accepts(gateway, issued[gateway].password)

    def allowed(username: str) -> set[tuple[str, str, str]]:
        return set(conn.execute(rights, {"username": username}).fetchall())

    assert allowed(device) == {("allow", "publish", f"cityops/v1/manhole/{device}/#")}
    assert allowed(ingest.username) == {
        ("allow", "subscribe", "cityops/v1/#"),
        ("allow", "subscribe", "$share/+/cityops/v1/#"),
    }
    assert allowed(scenes.username) == {("allow", "publish", "cityops/v1/out/#")}
    assert allowed(gateway) == set()  # revoked: no_match = deny
    assert allowed(retired) == set()
