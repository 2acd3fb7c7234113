"""Mosquitto's password, ACL and revocation files from the registry, and keeping them current.

``render`` turns the ``broker_logins`` and ``broker_acl`` views (migration 0015, the same views
EMQX reads) into Mosquitto's files, read in one snapshot: the devices' ``password_file`` and the
services' own (``user:$7$iterations$salt$hash``, Mosquitto's PBKDF2-SHA512 form; kept apart so
that a device's password opens no services' listener, ``per_listener_settings``), the
``acl_file`` (``user`` blocks of ``topic write|read`` lines: a device may publish only under its
own topic, a gateway only on its own tree, ingest read telemetry, the scenes publish on the out
tree, nobody else anything) and, with the CA, the certificate revocation list.

``sync`` writes the files that changed (atomically, keeping an existing file's owner and mode:
Mosquitto never reads half a file, nor loses the right to read it) and sends the broker SIGHUP,
on which Mosquitto 2 reloads them and disconnects every client whose password no longer checks.
A reload does not end a TLS session whose certificate was revoked, rotated, or expired, so
``sync`` then takes over each such device's client id from the control login (the MQTT session
takeover: the broker closes the older connection) and leaves; the CRL refuses it from then on.
``watch`` runs ``sync`` on every change notified by ``devices.credentials`` and every interval
(expiry), and outlasts a lost database or broker: it logs and tries again.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from cryptography import x509
from paho.mqtt.enums import MQTTProtocolVersion

from devices.credentials import CHANGES_CHANNEL
from devices.pki import CA_CERT, CertificateAuthority, PkiError
from devices.settings import BrokerSettings
from redaction import redact
from wire.mqtt import BrokerAddress, TlsFiles, TlsFilesError, make_client
from wire.topics import prefixed

logger = logging.getLogger(__name__)

#: Mosquitto's acl_file names read (subscribe and receive) and write (publish).
_ACL_ACCESS = {"publish": "write", "subscribe": "read"}
_SHARED = "$share/+/"
_KICK_TIMEOUT_S = 5.0
_CRL_DAYS = 30  # a CRL's validity; a sync signs a new one when half of it is left
_RETRY_S = 5.0  # a watch whose sync failed tries again after this long


class BrokerSyncError(Exception):
    """The broker's files cannot be written, or the broker cannot be told."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """A revoked certificate: its serial (hex), when, and whose it was."""

    serial: str
    revoked_at: datetime
    username: str


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The texts of the files, the revoked certificates, and who is admitted."""

    device_passwords: str
    service_passwords: str
    acl: str
    revoked: tuple[Revoked, ...]
    usernames: frozenset[str]  # every login admitted (the ACL's users)
    certificate_users: frozenset[str]  # those that ever had a certificate


def mosquitto_hash(password_hash: str, salt: str, iterations: int) -> str:
    """The stored PBKDF2 hash in Mosquitto's password-file form ``$7$iterations$salt$hash``."""
    salt_b64 = base64.b64encode(salt.encode()).decode()
    hash_b64 = base64.b64encode(bytes.fromhex(password_hash)).decode()
    return f"$7${iterations}${salt_b64}${hash_b64}"


def render(conn: psycopg.Connection, *, topic_prefix: str = "") -> BrokerFiles:
    """The files the registry asks for now, read in one snapshot (its own transaction)."""
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        logins = conn.execute(
            "select username, kind, password_hash, password_salt, iterations, "
            "device_id is not null from broker_logins order by username, kind"
        ).fetchall()
        rights = conn.execute(
            "select username, action, topic from broker_acl order by username, topic"
        ).fetchall()
        revoked = tuple(
            Revoked(*row)
            for row in conn.execute(
                "select cert_serial, revoked_at, username from broker_credentials "
                "where kind = 'certificate' and revoked_at is not null order by credential_id"
            )
        )
        certificate_users = frozenset(
            u
            for (u,) in conn.execute(
                "select distinct username from broker_credentials where kind = 'certificate'"
            )
        )

    def passwords(of_devices: bool) -> str:
        return "".join(
            f"{user}:{mosquitto_hash(digest, salt, iterations)}\n"
            for user, kind, digest, salt, iterations, is_device in logins
            if kind == "password" and is_device == of_devices
        )

    rules: dict[str, list[str]] = {user: [] for user, *_ in logins}
    for user, action, topic in rights:
        rules.setdefault(user, []).append(
            f"topic {_ACL_ACCESS[action]} {_under(topic_prefix, topic)}"
        )
    acl = "".join(
        f"user {user}\n" + "".join(f"{line}\n" for line in lines) + "\n"
        for user, lines in sorted(rules.items())
    )
    return BrokerFiles(
        passwords(of_devices=True),
        passwords(of_devices=False),
        acl,
        revoked,
        frozenset(rules),
        certificate_users,
    )


def _under(prefix: str, topic: str) -> str:
    """``topic`` under the prefix; a shared subscription's prefix goes after its group."""
    if topic.startswith(_SHARED):
        return _SHARED + prefixed(prefix, topic.removeprefix(_SHARED))
    return prefixed(prefix, topic)


def _read_crl(path: Path) -> x509.CertificateRevocationList | None:
    """The CRL in ``path``, None when there is none to read."""
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None


def _serials(crl: x509.CertificateRevocationList) -> set[str]:
    return {f"{entry.serial_number:x}" for entry in crl}


def _crl_is_current(
    crl: x509.CertificateRevocationList, ca: CertificateAuthority, revoked: tuple[Revoked, ...]
) -> bool:
    """Whether ``crl`` lists ``revoked``, is the CA's, and is far from its next update.

    A CRL is signed (randomly, ECDSA) and dated, so it is compared by what it says.
    """
    next_update = crl.next_update_utc
    return (
        _serials(crl) == {r.serial for r in revoked}
        and crl.issuer == ca.certificate.subject
        and next_update is not None
        and next_update - datetime.now(UTC) > timedelta(days=_CRL_DAYS / 2)
    )


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Replace ``path`` with ``data`` unless it holds it already, keeping its owner and mode."""
    try:
        if path.read_bytes() == data:
            return False
        kept: os.stat_result | None = path.stat()
    except FileNotFoundError:
        kept = None
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            if kept is not None:  # the broker's user must keep reading it
                os.fchmod(file.fileno(), kept.st_mode & 0o777)
                with contextlib.suppress(PermissionError):  # only root may give files away
                    os.fchown(file.fileno(), kept.st_uid, kept.st_gid)
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return True


def _admitted(acl_file: Path) -> set[str]:
    """The users an ACL file written earlier admits (those to end once they are left out)."""
    try:
        text = acl_file.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
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
    before = _admitted(settings.acl_file)
    if settings.service_password_file is not None:
        targets = [
            ("password_file", settings.password_file, files.device_passwords),
            ("service_password_file", settings.service_password_file, files.service_passwords),
        ]
    else:  # one file for every listener: the devices' logins and the services' together
        passwords = files.device_passwords + files.service_passwords
        targets = [("password_file", settings.password_file, passwords)]
    writes = [(name, path, text.encode()) for name, path, text in targets]
    writes.append(("acl_file", settings.acl_file, files.acl.encode()))
    newly_revoked: set[str] = set()
    if settings.crl_file is not None and settings.ca_dir is not None:
        ca = CertificateAuthority.load(settings.ca_dir)
        current = _read_crl(settings.crl_file)
        if current is None or not _crl_is_current(current, ca, files.revoked):
            listed = _serials(current) if current is not None else None
            newly_revoked = {
                r.username for r in files.revoked if listed is not None and r.serial not in listed
            }
            crl = ca.revocation_list(
                [(r.serial, r.revoked_at) for r in files.revoked], days=_CRL_DAYS
            )
            writes.append(("crl_file", settings.crl_file, crl))
    try:
        changed = tuple(name for name, path, data in writes if _write_if_changed(path, data))
    except OSError as exc:
        msg = f"cannot write the broker's files: {exc}"
        raise BrokerSyncError(msg) from None
    reloaded = bool(changed) and reload and _reload(settings.pid_file)
    # a reload ends password sessions; certificate sessions must be taken over
    to_end = sorted(((before - files.usernames) & files.certificate_users) | newly_revoked)
    ended: tuple[str, ...] = ()
    if to_end and reload:
        if settings.control_url:
            ended = _end_connections(settings.control_url, to_end, _control_tls(settings))
        else:
            logger.warning(
                "broker.control_url is not set: %d revoked certificates stay connected until "
                "they reconnect (the CRL refuses them then)",
                len(to_end),
            )
    return SyncReport(changed, reloaded, ended)


def _control_tls(settings: BrokerSettings) -> TlsFiles | None:
    """The control login verifies the broker against the deployment's CA (else the system's)."""
    if not BrokerAddress.of(settings.control_url or "").is_tls:
        return None
    return TlsFiles(settings.ca_dir / CA_CERT if settings.ca_dir else None)


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
        answers: list[Any] = []
        answered = threading.Event()

        def on_connect(
            *args: Any, answers: list[Any] = answers, done: threading.Event = answered
        ) -> None:
            answers.append(args[3])
            done.set()

        client = make_client(url, MQTTProtocolVersion.MQTTv5, client_id, tls=tls)
        client.on_connect = on_connect
        try:
            client.connect(address.host, address.port, clean_start=True)
            client.loop_start()
            if not answered.wait(_KICK_TIMEOUT_S):
                logger.warning("the broker at %s did not answer the control login", redact(url))
            elif answers[0].is_failure:
                logger.warning(
                    "the broker at %s refused the control login: %s", redact(url), answers[0]
                )
            else:
                ended.append(client_id)
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
    on_sync: Callable[[SyncReport], None] = lambda _: None,
) -> None:
    """Sync now, then on every notified change and every ``sync_interval_s``, until ``stop``.

    A lost database, a broker that cannot be signalled or files that cannot be written are
    logged and tried again: the watch keeps applying revocations once the cause is gone.
    """
    while not stop.is_set():
        try:
            with connect() as conn:
                conn.autocommit = True
                conn.execute(f"listen {CHANGES_CHANNEL}")
                while not stop.is_set():
                    report = sync(conn, settings, topic_prefix=topic_prefix)
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
            logger.warning("lost the database (%s): syncing again in %.0f s", exc, _RETRY_S)
            stop.wait(_RETRY_S)
        except (BrokerSyncError, PkiError, TlsFilesError) as exc:
            logger.warning(
                "the broker's files are not current (%s): again in %.0f s", exc, _RETRY_S
            )
            stop.wait(_RETRY_S)


def _wait_for_change(conn: psycopg.Connection, timeout_s: float) -> None:
    """Return on a notification (all pending ones taken) or after ``timeout_s``.

    psycopg keeps notifications that arrived during a query in a backlog of its own, which
    ``notifies`` hands out first: a change committed during a sync is not missed.
    """
    for _ in conn.notifies(timeout=timeout_s, stop_after=1):
        pass
    for _ in conn.notifies(timeout=0):
        pass
