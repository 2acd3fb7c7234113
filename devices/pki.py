"""The deployment's own small certificate authority: device and broker certificates, and the CRL.

``cityops pki init`` makes the CA in a directory (``ca.key`` readable by its owner only,
``ca.crt`` for everyone who verifies). Device certificates carry the device id as their common
name, which Mosquitto takes as the user name (``use_identity_as_username``); broker certificates
carry the names clients connect to. Keys are ECDSA P-256: small, and quick for a broker that a
whole city reconnects to at once. Built on ``cryptography`` (pyca), never on hand-made ASN.1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
_BACKDATE = timedelta(minutes=5)  # a device whose clock runs a little behind still accepts it


class PkiError(Exception):
    """The CA is missing, unreadable, or would be overwritten."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate and its private key (PEM), shown once; the CA keeps serial and fingerprint."""

    certificate_pem: bytes
    key_pem: bytes
    serial: str  # hex
    sha256: str  # hex fingerprint of the DER form
    not_after: datetime


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (also when the file was there, looser)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's key and certificate, loaded from its directory."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def init(cls, directory: Path, *, name: str = "cityops device CA", days: float = 3650) -> Path:
        """Create a CA in ``directory`` (refused if one is there); return its certificate file."""
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / CA_KEY).exists():
            msg = f"{directory / CA_KEY} exists: a CA is there already (remove it to start over)"
            raise PkiError(msg)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(directory / CA_KEY, _private_pem(key))
        (directory / CA_CERT).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return directory / CA_CERT

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA in ``directory`` (made by ``init``)."""
        try:
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
            certificate = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        except (OSError, ValueError) as exc:
            msg = f"cannot load the CA in {directory}: {exc} (cityops pki init makes one)"
            raise PkiError(msg) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            msg = f"{directory / CA_KEY} is not an EC key made by cityops pki init"
            raise PkiError(msg)
        return cls(key, certificate)

    def issue(
        self,
        common_name: str,
        *,
        not_after: datetime | None = None,
        server_names: Sequence[str] = (),
        not_before: datetime | None = None,
    ) -> IssuedCertificate:
        """A certificate for ``common_name``: a client's, or a server's if it has names.

        Without ``not_after`` it is valid as long as the CA. ``not_before`` is for tests of
        expiry (a certificate that was valid once).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start = not_before or now - _BACKDATE
        end = min(
            not_after or self.certificate.not_valid_after_utc, self.certificate.not_valid_after_utc
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if server_names:
            alternatives: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alternatives.append(x509.DNSName(name))
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternatives), critical=False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        der = certificate.public_bytes(serialization.Encoding.DER)
        return IssuedCertificate(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=_private_pem(key),
            serial=f"{certificate.serial_number:x}",
            sha256=hashlib.sha256(der).hexdigest(),
            not_after=end,
        )

    def revocation_list(
        self, revoked: Sequence[tuple[str, datetime]], *, days: float = 30
    ) -> bytes:
        """A CRL (PEM) naming the ``revoked`` serials (hex) with their revocation times."""
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + timedelta(days=days))
        )
        for serial, revoked_at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(revoked_at)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_certificate(directory: Path, stem: str, issued: IssuedCertificate) -> tuple[Path, Path]:
    """Write ``stem.crt`` and ``stem.key`` (the key readable by its owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    certificate.write_bytes(issued.certificate_pem)
    write_private(key, issued.key_pem)
    return certificate, key
