"""Mosquitto's password, ACL and revocation files from the registry, and keeping them current.

``render`` turns the ``broker_logins`` and ``broker_acl`` views (migration 0015, the same views
EMQX reads) into Mosquitto's ``password_file`` (``user:$7$iterations$salt$hash``, its PBKDF2-SHA512
form), ``acl_file`` (``user`` blocks of ``topic write|read`` lines: a device may publish only under
its own topic, a gateway only on its own tree, ingest read telemetry, the scenes publish on the
out tree, nobody else anything) and, with the CA, the certificate revocation list.

``sync`` writes the files that changed (atomically: Mosquitto never reads half a file) and sends
the broker SIGHUP, on which Mosquitto 2 reloads them and disconnects every client whose password
no longer checks. A reload does not end a TLS session whose certificate was revoked, so ``sync``
then takes over each such device's client id from the control login (the MQTT session takeover:
the broker closes the older connection) and leaves; the CRL refuses it from then on. ``watch``
runs ``sync`` on every change notified by ``devices.credentials`` and every interval (expiry).
"""

from __future__ import annotations

import base64
import logging
import os
import select
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from cryptography import x509
from paho.mqtt.enums import MQTTProtocolVersion

from devices.credentials import CHANGES_CHANNEL
from devices.pki import CertificateAuthority
from devices.settings import BrokerSettings
from redaction import redact
from wire.mqtt import BrokerAddress, TlsFiles, make_client
from wire.topics import prefixed

logger = logging.getLogger(__name__)

#: Mosquitto's acl_file names read (subscribe and receive) and write (publish).
_ACL_ACCESS = {"publish": "write", "subscribe": "read"}
_SHARED = "$share/+/"
_KICK_TIMEOUT_S = 5.0
_CRL_DAYS = 30  # a CRL's validity; a sync signs a new one when half of it is left


class BrokerSyncError(Exception):
    """The broker's files cannot be written, or the broker cannot be told."""


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The texts of the files, the revoked certificates, and the users admitted."""

    passwords: str
    acl: str
    revoked: tuple[tuple[str, datetime], ...]  # certificate serials (hex) and when
    usernames: frozenset[str]


def mosquitto_hash(password_hash: str, salt: str, iterations: int) -> str:
    """The stored PBKDF2 hash in Mosquitto's password-file form ``$7$iterations$salt$hash``."""
    salt_b64 = base64.b64encode(salt.encode()).decode()
    hash_b64 = base64.b64encode(bytes.fromhex(password_hash)).decode()
    return f"$7${iterations}${salt_b64}${hash_b64}"


def render(conn: psycopg.Connection, *, topic_prefix: str = "") -> BrokerFiles:
    """The files the registry asks for now."""
    logins = conn.execute(
        "select username, kind, password_hash, password_salt, iterations from broker_logins "
        "order by username, kind"
    ).fetchall()
    passwords = "".join(
        f"{user}:{mosquitto_hash(digest, salt, iterations)}\n"
        for user, kind, digest, salt, iterations in logins
        if kind == "password"
    )
    rules: dict[str, list[str]] = {user: [] for user, *_ in logins}
    for user, action, topic in conn.execute(
        "select username, action, topic from broker_acl order by username, topic"
    ):
        rules[user].append(f"topic {_ACL_ACCESS[action]} {_under(topic_prefix, topic)}")
    acl = "".join(
        f"user {user}\n" + "".join(f"{line}\n" for line in lines) + "\n"
        for user, lines in sorted(rules.items())
    )
    revoked = conn.execute(
        "select cert_serial, revoked_at from broker_credentials "
        "where kind = 'certificate' and revoked_at is not null order by credential_id"
    ).fetchall()
    return BrokerFiles(passwords, acl, tuple(revoked), frozenset(rules))


def _under(prefix: str, topic: str) -> str:
    """``topic`` under the prefix; a shared subscription's prefix goes after its group."""
    if topic.startswith(_SHARED):
        return _SHARED + prefixed(prefix, topic.removeprefix(_SHARED))
    return prefixed(prefix, topic)


def _crl_if_changed(
    path: Path, ca: CertificateAuthority, revoked: tuple[tuple[str, datetime], ...]
) -> bytes | None:
    """A new CRL when the file's differs from ``revoked`` or nears its next update, else None.

    A CRL is signed (randomly, ECDSA) and dated, so it is compared by what it says.
    """
    try:
        current = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return ca.revocation_list(revoked, days=_CRL_DAYS)
    listed = {f"{entry.serial_number:x}" for entry in current}
    next_update = current.next_update_utc
    if (
        listed == {serial for serial, _ in revoked}
        and current.issuer == ca.certificate.subject
        and next_update is not None
        and next_update - datetime.now(UTC) > timedelta(days=_CRL_DAYS / 2)
    ):
        return None
    return ca.revocation_list(revoked, days=_CRL_DAYS)


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    return True


def _admitted(acl_file: Path) -> set[str]:
    """The users an ACL file written earlier admits (those to end once they are left out)."""
    try:
        text = acl_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return set()
    return {line[5:].strip() for line in text.splitlines() if line.startswith("user ")}


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What a sync changed."""

    changed: tuple[str, ...]  # the files rewritten
    reloaded: bool
    ended: tuple[str, ...]  # devices whose connection the sync took over


def sync(
    conn: psycopg.Connection,
    settings: BrokerSettings,
    *,
    topic_prefix: str = "",
    tls: TlsFiles | None = None,
    reload: bool = True,
) -> SyncReport:
    """Write the files that changed, reload the broker, and end connections no longer admitted.

    ``reload=False`` only writes the files: for a broker about to start on them.
    """
    if settings.password_file is None or settings.acl_file is None:
        msg = "set broker.password_file and broker.acl_file (the files Mosquitto reads)"
        raise BrokerSyncError(msg)
    if settings.crl_file is not None and settings.ca_dir is None:
        msg = "broker.crl_file needs broker.ca_dir: the CRL is signed by the CA"
        raise BrokerSyncError(msg)
    files = render(conn, topic_prefix=topic_prefix)
    conn.rollback()  # end the read: a watching connection must not sit in a transaction
    before = _admitted(settings.acl_file)
    targets: list[tuple[str, Path, bytes]] = [
        ("password_file", settings.password_file, files.passwords.encode()),
        ("acl_file", settings.acl_file, files.acl.encode()),
    ]
    if settings.crl_file is not None and settings.ca_dir is not None:
        ca = CertificateAuthority.load(settings.ca_dir)
        crl = _crl_if_changed(settings.crl_file, ca, files.revoked)
        if crl is not None:
            targets.append(("crl_file", settings.crl_file, crl))
    try:
        changed = tuple(name for name, path, data in targets if _write_if_changed(path, data))
    except OSError as exc:
        msg = f"cannot write the broker's files: {exc}"
        raise BrokerSyncError(msg) from None
    reloaded = bool(changed) and reload and _reload(settings.pid_file)
    left_out = sorted(before - files.usernames)
    ended: tuple[str, ...] = ()
    if left_out and reload and settings.control_url:
        ended = _end_connections(settings.control_url, left_out, tls)
    return SyncReport(changed, reloaded, ended)


def _reload(pid_file: Path | None) -> bool:
    if pid_file is None:
        logger.warning("broker.pid_file is not set: reload the broker (SIGHUP) to apply the files")
        return False
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, IndexError) as exc:
        msg = f"cannot signal the broker named in {pid_file}: {exc}"
        raise BrokerSyncError(msg) from None
    return True


def _end_connections(url: str, client_ids: list[str], tls: TlsFiles | None) -> tuple[str, ...]:
    """Take over each client id from the control login, so the broker closes the device's."""
    address = BrokerAddress.of(url)
    ended: list[str] = []
    for client_id in client_ids:
        answered = threading.Event()
        client = make_client(url, MQTTProtocolVersion.MQTTv5, client_id, tls=tls)
        client.on_connect = lambda *_, answered=answered: answered.set()
        try:
            client.connect(address.host, address.port, clean_start=True)
            client.loop_start()
            if answered.wait(_KICK_TIMEOUT_S):
                ended.append(client_id)
            else:
                logger.warning("the broker at %s did not answer the control login", redact(url))
        except OSError as exc:
            logger.warning(
                "cannot reach the broker at %s to end %s: %s", redact(url), client_id, exc
            )
        finally:
            client.disconnect()
            client.loop_stop()
    return tuple(ended)


def watch(
    connect: Callable[[], psycopg.Connection],
    settings: BrokerSettings,
    stop: threading.Event,
    *,
    topic_prefix: str = "",
    tls: TlsFiles | None = None,
    on_sync: Callable[[SyncReport], None] = lambda _: None,
) -> None:
    """Sync now, then on every notified change and every ``sync_interval_s``, until ``stop``."""
    while not stop.is_set():
        try:
            with connect() as conn:
                conn.autocommit = True
                conn.execute(f"listen {CHANGES_CHANNEL}")
                while not stop.is_set():
                    report = sync(conn, settings, topic_prefix=topic_prefix, tls=tls)
                    if report.changed or report.ended:
                        logger.info(
                            "broker files: %s changed, reloaded %s, ended %s",
                            ", ".join(report.changed) or "none",
                            report.reloaded,
                            ", ".join(report.ended) or "none",
                        )
                    on_sync(report)
                    _wait_for_change(conn, settings.sync_interval_s)
        except psycopg.OperationalError as exc:
            logger.warning("lost the database (%s): syncing again in 5 s", exc)
            stop.wait(5.0)


def _wait_for_change(conn: psycopg.Connection, timeout_s: float) -> None:
    """Return on a notification (all pending ones taken) or after ``timeout_s``."""
    readable, _, _ = select.select([conn.fileno()], [], [], timeout_s)
    if readable:
        for _ in conn.notifies(timeout=0):
            pass
