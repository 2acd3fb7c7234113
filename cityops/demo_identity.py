"""``cityops demo --identity``: the demo on a private Mosquitto that enforces device identity.

Everything a deployment sets up by hand (docs/security.md) is done for the demo's city in its own
work directory: a CA and the broker's certificate, a password per device of the fleet, accounts
for ingest and the scenes and the sync's control login, the broker's files, Mosquitto from
cityops.conf and identity.conf, and ``broker sync --watch`` beside it. The fleet then publishes a
connection per device over TLS, ingest and the scenes log in with their own accounts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cityops.services import IdentityFiles, ServiceStartError, start_identity_mosquitto
from cityops.settings import Settings
from devices import broker, credentials
from simulator.connections import DeviceLogin
from store import db
from wire.mqtt import MqttSettings

#: The project's Mosquitto configuration, beside the package (the demo runs from a clone).
_MOSQUITTO_CONF = Path(__file__).resolve().parent.parent / "config" / "mosquitto"


@dataclass(frozen=True)
class SecuredBroker:
    """How each part of the demo connects to the enforcing broker."""

    ingest: MqttSettings  # the services' listener, with ingest's account
    scenes: MqttSettings  # the same, with the scenes' account
    devices_url: str  # the listener of devices with passwords
    logins: dict[str, DeviceLogin]
    ca_file: Path


@contextlib.contextmanager
def enforcing_broker(
    settings: Settings, device_ids: list[str], workdir: Path
) -> Iterator[SecuredBroker]:
    """Run a private Mosquitto admitting only these devices and the demo's services."""
    guarantees, identity = _MOSQUITTO_CONF / "cityops.conf", _MOSQUITTO_CONF / "identity.conf"
    if not identity.exists():
        msg = f"{identity} is missing: run the demo from a clone of cityops"
        raise ServiceStartError(msg)
    workdir.mkdir(parents=True, exist_ok=True)
    files = IdentityFiles.lay_out(workdir, ca_name="cityops demo CA")
    prefix = settings.mqtt.topic_prefix
    ingest_name = settings.mqtt.client_id
    with db.connect(settings.database, autocommit=True) as conn:  # emptied at each demo's start
        issued = credentials.issue(conn, device_ids)
        ingest = credentials.issue_service(conn, ingest_name, "ingest")
        scenes = credentials.issue_service(conn, f"{ingest_name}-scenes", "scenes")
        control = credentials.issue_service(conn, f"{ingest_name}-control", "control")
        first = files.broker_settings()
        broker.sync(conn, first, topic_prefix=prefix, reload=False)
    with start_identity_mosquitto(guarantees, identity, workdir / "mosquitto", files) as running:
        service = running.service_port
        watching = first.model_copy(
            update={
                "pid_file": running.pid_file,
                "control_url": running.url(service, control.username, control.password),
            }
        )
        stop = threading.Event()
        watcher = threading.Thread(
            target=broker.watch,
            args=(lambda: db.connect(settings.database), watching, stop),
            kwargs={"topic_prefix": prefix},
            name="broker-sync",
            daemon=True,
        )
        watcher.start()

        def mqtt_as(username: str, password: str | None) -> MqttSettings:
            return settings.mqtt.model_copy(
                update={
                    "url": running.url(service, username, password),
                    "ca_file": files.ca_file,
                    "protocol": "5",
                }
            )

        try:
            yield SecuredBroker(
                ingest=mqtt_as(ingest.username, ingest.password),
                scenes=mqtt_as(scenes.username, scenes.password),
                devices_url=running.url(running.password_port),
                logins={c.username: DeviceLogin(c.username, c.password) for c in issued},
                ca_file=files.ca_file,
            )
        finally:
            stop.set()
            watcher.join(timeout=15)
