"""Who may speak on the broker: ``cityops devices credentials|retire``, ``broker``, ``pki``.

Secrets are printed (or written) once, when issued; the registry keeps only their hashes
(docs/security.md).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from cityops.settings import Settings
from cityops.terminal import ConfigOption, fail, out, settings_from, stop_on_signals
from devices import broker, credentials
from devices.credentials import SERVICE_ROLES, CredentialError, CredentialKind, IssuedCredential
from devices.pki import CertificateAuthority, PkiError, write_certificate, write_private
from devices.registry import RegistryError, read_rows
from store import db

credentials_app = typer.Typer(
    help="Per-device broker credentials: passwords or client certificates, shown once.",
    no_args_is_help=True,
)
broker_app = typer.Typer(
    help="The broker's view of the registry: Mosquitto's files, service accounts.",
    no_args_is_help=True,
)
pki_app = typer.Typer(help="The deployment's own certificate authority.", no_args_is_help=True)

Devices = Annotated[
    list[str] | None, typer.Argument(help="Device ids (or --from FILE).", show_default=False)
]
FromFile = Annotated[
    Path | None,
    typer.Option(
        "--from", help="Every device of an import file (CSV or GeoJSON, as devices import reads)."
    ),
]
Kind = Annotated[str, typer.Option(help="password, or certificate (needs broker.ca_dir).")]
Days = Annotated[
    float | None, typer.Option(min=0.001, help="Valid this many days (default: no expiry).")
]
OutPath = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Passwords: a CSV file (readable by its owner only) instead of standard output; "
        "certificates: the directory for <id>.crt and <id>.key (required).",
    ),
]


def _device_ids(devices: list[str] | None, from_file: Path | None) -> list[str]:
    ids = list(devices or [])
    if from_file is not None:
        try:
            ids.extend(str(row["device_id"]) for _, row in read_rows(from_file))
        except (RegistryError, OSError, KeyError) as exc:
            fail(f"cannot read device ids from {from_file}: {exc}")
    if not ids:
        fail("name devices, or --from FILE")
    return list(dict.fromkeys(ids))


def _kind(kind: str) -> CredentialKind:
    if kind not in ("password", "certificate"):
        fail(f"--kind {kind!r}: password or certificate")
    return "certificate" if kind == "certificate" else "password"


def _ca(settings: Settings, kind: CredentialKind) -> CertificateAuthority | None:
    if kind != "certificate":
        return None
    if settings.broker.ca_dir is None:
        fail("certificates need broker.ca_dir (cityops pki init --dir DIR makes the CA)")
    try:
        return CertificateAuthority.load(settings.broker.ca_dir)
    except PkiError as exc:
        fail(str(exc))


def _deliver(out_path: Path | None) -> credentials.Deliver:
    """Print or write the secrets, once, before the credentials are committed."""

    def deliver(issued: Sequence[IssuedCredential]) -> None:
        certificates = [c for c in issued if c.certificate is not None]
        if certificates:
            assert out_path is not None  # checked before anything was issued
            for credential in certificates:
                assert credential.certificate is not None
                write_certificate(out_path, credential.username, credential.certificate)
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("username", "password", "not_after"))
        for credential in issued:
            expiry = credential.not_after.isoformat() if credential.not_after else ""
            writer.writerow((credential.username, credential.password, expiry))
        if out_path is None:
            out.print(buffer.getvalue(), end="", highlight=False, markup=False)
        else:
            write_private(out_path, buffer.getvalue().encode())

    return deliver


def _delivered(issued: Sequence[IssuedCredential], out_path: Path | None) -> None:
    """Say where the secrets went (when not on standard output)."""
    if out_path is None:
        return
    if any(c.certificate is not None for c in issued):
        out.print(
            f"{len(issued)} certificates (and keys, mode 0600) in {out_path}; "
            "each key is there only: hand it to its device and remove it"
        )
    else:
        out.print(f"{len(issued)} passwords in {out_path} (shown only there, stored hashed)")


def _issue(
    devices: list[str] | None,
    from_file: Path | None,
    kind: str,
    days: float | None,
    out_path: Path | None,
    config: Path | None,
    *,
    rotate: bool,
) -> None:
    settings = settings_from(config)
    ids = _device_ids(devices, from_file)
    credential_kind = _kind(kind)
    if credential_kind == "certificate" and out_path is None:
        fail("certificates are written to files: give --out DIR")
    ca = _ca(settings, credential_kind)
    with db.connect(settings.database) as conn:
        try:
            issued = credentials.issue(
                conn,
                ids,
                credential_kind,
                valid_days=days,
                ca=ca,
                iterations=settings.broker.password_iterations,
                rotate=rotate,
                deliver=_deliver(out_path),
            )
        except CredentialError as exc:
            fail(f"{exc}; nothing issued")
        except OSError as exc:
            fail(f"cannot write the secrets to {out_path}: {exc}; nothing issued")
    _delivered(issued, out_path)


@credentials_app.command("issue")
def credentials_issue(
    devices: Devices = None,
    from_file: FromFile = None,
    kind: Kind = "password",
    days: Days = None,
    out_path: OutPath = None,
    config: ConfigOption = None,
) -> None:
    """Issue a credential to each device (all or none); its secret is shown once."""
    _issue(devices, from_file, kind, days, out_path, config, rotate=False)


@credentials_app.command("rotate")
def credentials_rotate(
    devices: Devices = None,
    from_file: FromFile = None,
    kind: Kind = "password",
    days: Days = None,
    out_path: OutPath = None,
    config: ConfigOption = None,
) -> None:
    """Replace each device's live credential: the old one stops working at the next sync."""
    _issue(devices, from_file, kind, days, out_path, config, rotate=True)


@credentials_app.command("revoke")
def credentials_revoke(
    devices: Devices = None, from_file: FromFile = None, config: ConfigOption = None
) -> None:
    """Revoke every credential of these devices (or service accounts): refused from now on.

    A running `cityops broker sync --watch` applies it within a second; ingest quarantines
    whatever still reaches it for them as retired_device.
    """
    settings = settings_from(config)
    ids = _device_ids(devices, from_file)
    with db.connect(settings.database) as conn:
        try:
            count = credentials.revoke(conn, ids)
        except CredentialError as exc:
            fail(f"{exc}; nothing revoked")
    out.print(f"{count} credentials revoked for {len(ids)} names")


def retire(devices: Devices = None, config: ConfigOption = None) -> None:
    """Retire devices: their history stays; they may not connect, nor be stored, again."""
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        try:
            count = credentials.retire(conn, _device_ids(devices, None))
        except CredentialError as exc:
            fail(f"{exc}; nothing retired")
    out.print(f"{count} devices retired")


@broker_app.command("account")
def broker_account(
    name: Annotated[str, typer.Argument(help="The login, e.g. the ingest worker's client id.")],
    role: Annotated[
        str, typer.Option(help=f"One of {', '.join(SERVICE_ROLES)} (docs/security.md).")
    ],
    rotate: Annotated[bool, typer.Option(help="Replace its live password.")] = False,
    days: Days = None,
    config: ConfigOption = None,
) -> None:
    """A service account's password, shown once: ingest, scenes, reader, or the sync's control."""
    if role not in SERVICE_ROLES:
        fail(f"--role {role!r}: one of {', '.join(SERVICE_ROLES)}")
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        try:
            credentials.issue_service(
                conn,
                name,
                SERVICE_ROLES[SERVICE_ROLES.index(role)],
                valid_days=days,
                iterations=settings.broker.password_iterations,
                rotate=rotate,
                deliver=_deliver(None),
            )
        except CredentialError as exc:
            fail(str(exc))


@broker_app.command("sync")
def broker_sync(
    watch: Annotated[
        bool,
        typer.Option(
            help="Keep syncing: on every change at once, and every broker.sync_interval_s."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Write Mosquitto's password, ACL (and CRL) files from the registry; reload the broker."""
    settings = settings_from(config)
    prefix = settings.mqtt.topic_prefix
    try:
        if watch:
            out.print("syncing the broker's files until SIGTERM or Ctrl-C")
            broker.watch(
                lambda: db.connect(settings.database),
                settings.broker,
                stop_on_signals(),
                topic_prefix=prefix,
            )
            return
        with db.connect(settings.database) as conn:
            report = broker.sync(conn, settings.broker, topic_prefix=prefix)
    except (broker.BrokerSyncError, PkiError) as exc:
        fail(str(exc))
    out.print(
        f"changed: {', '.join(report.changed) or 'nothing'}; "
        f"broker reloaded: {'yes' if report.reloaded else 'no'}; "
        f"connections ended: {', '.join(report.ended) or 'none'}"
    )


@pki_app.command("init")
def pki_init(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where the CA lives (default broker.ca_dir).")
    ] = None,
    name: Annotated[str, typer.Option(help="The CA's common name.")] = "cityops device CA",
    days: Annotated[float, typer.Option(min=1, help="How long the CA is valid.")] = 3650,
    config: ConfigOption = None,
) -> None:
    """Create the deployment's CA: ca.key (owner only) and ca.crt (for every verifier)."""
    target = directory or settings_from(config).broker.ca_dir
    if target is None:
        fail("give --dir, or set broker.ca_dir")
    try:
        certificate = CertificateAuthority.init(target, name=name, days=days)
    except (PkiError, OSError) as exc:
        fail(str(exc))
    out.print(f"CA created: {certificate} (its key beside it, readable by its owner only)")


@pki_app.command("server")
def pki_server(
    names: Annotated[list[str], typer.Argument(help="Host names and addresses clients use.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for server.crt/.key.")],
    days: Annotated[float, typer.Option(min=1, help="How long it is valid.")] = 825,
    config: ConfigOption = None,
) -> None:
    """A certificate for the broker's TLS listener, signed by the deployment's CA."""
    settings = settings_from(config)
    if settings.broker.ca_dir is None:
        fail("set broker.ca_dir (cityops pki init --dir DIR makes the CA)")
    try:
        ca = CertificateAuthority.load(settings.broker.ca_dir)
    except PkiError as exc:
        fail(str(exc))
    issued = ca.issue(
        names[0], server_names=names, not_after=datetime.now(UTC) + timedelta(days=days)
    )
    certificate, key = write_certificate(out_dir, "server", issued)
    out.print(f"{certificate} and {key} for {', '.join(names)}")
