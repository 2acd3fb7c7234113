"""Broker credentials from the registry: issued, rotated and revoked per device or service account.

A credential is a password or a client certificate of the deployment's own CA (``devices.pki``).
Its secret is returned once, to be handed to the device, and never stored: a password is kept as
PBKDF2-HMAC-SHA512 (hex) with its salt, the form that both Mosquitto's password file (``$7$``,
written by ``devices.broker``) and EMQX's PostgreSQL authentication (``pbkdf2``, sha512) check;
a certificate as its serial and fingerprint. Every change notifies ``cityops_broker`` in its
transaction, so a running ``cityops broker sync --watch`` applies it within a second.

A device whose credentials are all revoked is marked ``is_revoked``, which ingest reads with the
rest of its registration: anything still reaching it for that device is quarantined
(``retired_device``), as for a retired device.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import psycopg

from devices.pki import CertificateAuthority, IssuedCertificate

CredentialKind = Literal["password", "certificate"]
ServiceRole = Literal["ingest", "scenes", "reader", "control"]
SERVICE_ROLES: tuple[ServiceRole, ...] = ("ingest", "scenes", "reader", "control")

#: LISTEN channel told of every change to who may connect.
CHANGES_CHANNEL = "cityops_broker"

#: Passwords are 32 random bytes (256 bits): no guessing attack gets anywhere near them, so the
#: hash need not be slow; Mosquitto's own default count keeps a city reconnecting cheap for the
#: broker (bench/ingest.py --identity measures it).
DEFAULT_ITERATIONS = 101
# A salt is 12 characters (72 random bits, base64url): its 12 bytes are exactly what
# Mosquitto 2.0's password file takes (a longer salt is refused: "unable to decode password salt").
_SALT_RANDOM_BYTES = 9


class CredentialError(Exception):
    """A credential cannot be issued, rotated or revoked as asked."""


#: Hands issued secrets over inside the issuing transaction: if it fails, nothing is issued
#: (a secret written nowhere must not be the only one a device has).
Deliver = Callable[[Sequence["IssuedCredential"]], None]


def _keep(_: Sequence[IssuedCredential]) -> None:
    """Deliver nothing: the caller has the returned secrets."""


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """What the holder needs, shown once: its login and its secret."""

    username: str
    kind: CredentialKind
    not_after: datetime | None
    password: str | None = None
    certificate: IssuedCertificate | None = None


def hash_password(password: str, salt: str, iterations: int) -> str:
    """PBKDF2-HMAC-SHA512 of ``password`` with the bytes of ``salt``, hex (EMQX's ``pbkdf2``)."""
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt.encode(), iterations).hex()


def _notify(conn: psycopg.Connection) -> None:
    conn.execute("select pg_notify(%s, '')", (CHANGES_CHANNEL,))


def _registered(conn: psycopg.Connection, device_ids: Sequence[str]) -> None:
    rows = conn.execute(
        "select device_id, retired_at is not null from devices where device_id = any(%s)",
        (list(device_ids),),
    ).fetchall()
    found: dict[str, bool] = dict(rows)
    missing = [d for d in device_ids if d not in found]
    if missing:
        msg = f"not registered: {', '.join(missing[:10])} (cityops devices import FILE first)"
        raise CredentialError(msg)
    retired = [d for d in device_ids if found[d]]
    if retired:
        msg = f"retired, so they may not speak: {', '.join(retired[:10])}"
        raise CredentialError(msg)


def _issue_one(
    conn: psycopg.Connection,
    username: str,
    kind: CredentialKind,
    *,
    device_id: str | None,
    role: ServiceRole | None,
    not_after: datetime | None,
    ca: CertificateAuthority | None,
    iterations: int,
) -> IssuedCredential:
    if kind == "password":
        password = secrets.token_urlsafe(32)
        salt = secrets.token_urlsafe(_SALT_RANDOM_BYTES)
        conn.execute(
            "insert into broker_credentials (username, device_id, service_role, kind, "
            "password_hash, password_salt, iterations, not_after) "
            "values (%s, %s, %s, 'password', %s, %s, %s, %s)",
            (
                username,
                device_id,
                role,
                hash_password(password, salt, iterations),
                salt,
                iterations,
                not_after,
            ),
        )
        return IssuedCredential(username, kind, not_after, password=password)
    if ca is None:
        msg = "a certificate needs the deployment's CA (cityops pki init, broker.ca_dir)"
        raise CredentialError(msg)
    certificate = ca.issue(username, not_after=not_after)
    conn.execute(
        "insert into broker_credentials (username, device_id, service_role, kind, cert_serial, "
        "cert_sha256, not_after) values (%s, %s, %s, 'certificate', %s, %s, %s)",
        (username, device_id, role, certificate.serial, certificate.sha256, certificate.not_after),
    )
    return IssuedCredential(username, kind, certificate.not_after, certificate=certificate)


def _expiry(valid_days: float | None) -> datetime | None:
    return None if valid_days is None else datetime.now(UTC) + timedelta(days=valid_days)


def issue(
    conn: psycopg.Connection,
    device_ids: Sequence[str],
    kind: CredentialKind = "password",
    *,
    valid_days: float | None = None,
    ca: CertificateAuthority | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    rotate: bool = False,
    deliver: Deliver = _keep,
) -> list[IssuedCredential]:
    """A new credential of ``kind`` for each device, in one transaction (all or none).

    A device that has a live credential of that kind is refused unless ``rotate``, which
    revokes the old one in the same transaction: the new one works from the next sync on, the
    old one no longer. ``deliver`` gets the secrets before the transaction commits.
    """
    if not device_ids:
        msg = "no devices named"
        raise CredentialError(msg)
    with conn.transaction():
        _registered(conn, device_ids)
        _not_services(conn, device_ids)
        if kind == "password":
            _no_colon(device_ids)
        live = {
            u
            for (u,) in conn.execute(
                "select username from broker_credentials where username = any(%s) and kind = %s "
                "and revoked_at is null",
                (list(device_ids), kind),
            )
        }
        if live and not rotate:
            names = ", ".join(sorted(live)[:10])
            msg = f"already have a {kind} credential: {names} (rotate or revoke it instead)"
            raise CredentialError(msg)
        if not live and rotate:
            msg = f"no live {kind} credential to rotate for {', '.join(device_ids[:10])}"
            raise CredentialError(msg)
        if live:
            conn.execute(
                "update broker_credentials set revoked_at = now() where username = any(%s) "
                "and kind = %s and revoked_at is null",
                (list(live), kind),
            )
        not_after = _expiry(valid_days)
        issued = [
            _issue_one(
                conn,
                device_id,
                kind,
                device_id=device_id,
                role=None,
                not_after=not_after,
                ca=ca,
                iterations=iterations,
            )
            for device_id in device_ids
        ]
        conn.execute(
            "update devices set is_revoked = false where device_id = any(%s) and is_revoked",
            (list(device_ids),),
        )
        _notify(conn)
        deliver(issued)
    return issued


def _not_services(conn: psycopg.Connection, device_ids: Sequence[str]) -> None:
    """A device may not share its name with a service account: their rights would add up."""
    clash = [
        u
        for (u,) in conn.execute(
            "select distinct username from broker_credentials where username = any(%s) "
            "and service_role is not null",
            (list(device_ids),),
        )
    ]
    if clash:
        msg = f"named like service accounts: {', '.join(sorted(clash)[:10])} (rename the devices)"
        raise CredentialError(msg)


def _no_colon(usernames: Sequence[str]) -> None:
    """Mosquitto's password file ends a user name at its first ':'."""
    bad = [u for u in usernames if ":" in u]
    if bad:
        names = ", ".join(bad[:10])
        msg = f"a ':' in {names}: Mosquitto cannot check their passwords (use certificates)"
        raise CredentialError(msg)


def revoke(conn: psycopg.Connection, usernames: Sequence[str]) -> int:
    """Revoke every live credential of these devices or service accounts; return how many.

    A device is then refused by the broker from the next sync on (within ``broker
    .sync_interval_s`` of a running ``broker sync --watch``, at once on its notification) and by
    ingest for anything that still reaches it.
    """
    with conn.transaction():
        cur = conn.execute(
            "update broker_credentials set revoked_at = now() where username = any(%s) "
            "and revoked_at is null returning username",
            (list(usernames),),
        )
        revoked = {u for (u,) in cur.fetchall()}
        unknown = set(usernames) - revoked
        if unknown:
            known = {
                u
                for (u,) in conn.execute(
                    "select distinct username from broker_credentials where username = any(%s)",
                    (list(unknown),),
                )
            }
            never = sorted(unknown - known)
            if never:
                msg = f"no credential was ever issued to: {', '.join(never[:10])}"
                raise CredentialError(msg)
        conn.execute(
            "update devices set is_revoked = true where device_id = any(%s) and not is_revoked",
            (list(usernames),),
        )
        _notify(conn)
    return cur.rowcount


def issue_service(
    conn: psycopg.Connection,
    name: str,
    role: ServiceRole,
    *,
    valid_days: float | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    rotate: bool = False,
    deliver: Deliver = _keep,
) -> IssuedCredential:
    """A password for a service account (an ingest worker, the scenes, a reader, the sync)."""
    _no_colon([name])
    with conn.transaction():
        row = conn.execute(
            "select service_role from broker_credentials where username = %s "
            "and revoked_at is null",
            (name,),
        ).fetchone()
        device = conn.execute("select 1 from devices where device_id = %s", (name,)).fetchone()
        if device is not None:
            msg = f"{name!r} is a device; a service account needs a name of its own"
            raise CredentialError(msg)
        if row is not None and not rotate:
            msg = f"{name!r} already has a credential ({row[0]}): rotate or revoke it"
            raise CredentialError(msg)
        if row is not None:
            conn.execute(
                "update broker_credentials set revoked_at = now() where username = %s "
                "and revoked_at is null",
                (name,),
            )
        issued = _issue_one(
            conn,
            name,
            "password",
            device_id=None,
            role=role,
            not_after=_expiry(valid_days),
            ca=None,
            iterations=iterations,
        )
        _notify(conn)
        deliver([issued])
    return issued


def retire(conn: psycopg.Connection, device_ids: Sequence[str]) -> int:
    """Retire devices: their history stays, they may no longer connect or be stored.

    Their credentials are revoked with them (a certificate goes to the CRL: it would otherwise
    still pass the TLS handshake).
    """
    with conn.transaction():
        conn.execute(
            "update broker_credentials set revoked_at = now() where device_id = any(%s) "
            "and revoked_at is null",
            (list(device_ids),),
        )
        cur = conn.execute(
            "update devices set retired_at = now() where device_id = any(%s) "
            "and retired_at is null returning device_id",
            (list(device_ids),),
        )
        retired = {d for (d,) in cur.fetchall()}
        missing = [
            d
            for d in device_ids
            if d not in retired
            and conn.execute("select 1 from devices where device_id = %s", (d,)).fetchone() is None
        ]
        if missing:
            msg = f"not registered: {', '.join(missing[:10])}"
            raise CredentialError(msg)
        _notify(conn)
    return len(retired)
