"""Device identity without services: password hashes, the CA, the CRL, and reading logins."""

from __future__ import annotations

import base64
import string
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.broker import mosquitto_hash
from devices.credentials import hash_password
from devices.pki import CertificateAuthority, PkiError, write_certificate
from simulator.connections import LinkError, read_logins

#: PBKDF2-HMAC-SHA512("password", "salt", 1 iteration, 64 bytes): the published test vector
PBKDF2_SHA512_VECTOR = (
    "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252"
    "c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
)


def test_a_stored_hash_is_pbkdf2_sha512_in_the_forms_mosquitto_and_emqx_read() -> None:
    stored = hash_password("password", "salt", 1)
    assert stored == PBKDF2_SHA512_VECTOR  # EMQX compares this lowercase hex
    line = mosquitto_hash(stored, "saltsaltsalt", 101)
    assert line.startswith("$7$101$")
    salt, digest = line.split("$")[3:]
    assert base64.b64decode(salt) == b"saltsaltsalt"  # 12 bytes, what Mosquitto 2.0 takes
    assert base64.b64decode(digest).hex() == stored


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    with tempfile.TemporaryDirectory() as directory:
        CertificateAuthority.init(Path(directory), days=30)
        return CertificateAuthority.load(Path(directory))


def test_a_device_certificate_names_the_device_and_is_for_clients(ca) -> None:
    issued = ca.issue("mh-1", not_after=datetime.now(UTC) + timedelta(days=2))
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mh-1"
    assert certificate.issuer == ca.certificate.subject
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert f"{certificate.serial_number:x}" == issued.serial
    ca.certificate.public_key().verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        *_ecdsa(certificate),
    )


def _ecdsa(certificate: x509.Certificate):
    from cryptography.hazmat.primitives.asymmetric import ec

    assert certificate.signature_hash_algorithm is not None
    return (ec.ECDSA(certificate.signature_hash_algorithm),)


def test_no_certificate_outlives_its_ca(ca) -> None:
    issued = ca.issue("mh-2", not_after=datetime.now(UTC) + timedelta(days=3650))
    assert issued.not_after == ca.certificate.not_valid_after_utc


def test_a_broker_certificate_carries_its_names_and_addresses(ca) -> None:
    issued = ca.issue("broker", server_names=["broker.city.example", "10.0.0.5"])
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["broker.city.example"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


def test_the_crl_lists_exactly_the_revoked_serials(ca) -> None:
    one, two = ca.issue("a"), ca.issue("b")
    revoked_at = datetime(2026, 12, 1, tzinfo=UTC)
    crl = x509.load_pem_x509_crl(ca.revocation_list([(one.serial, revoked_at)]))
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(int(one.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(two.serial, 16)) is None


def test_a_second_ca_in_the_same_place_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path)
    with pytest.raises(PkiError, match="a CA is there already"):
        CertificateAuthority.init(tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


def test_logins_come_from_a_passwords_file_or_a_certificate_directory(ca, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords.csv"
    passwords.write_text("username,password,not_after\nmh-1,s3cret,\nsw-1,other,2027-01-01\n")
    assert {u: login.password for u, login in read_logins(passwords).items()} == {
        "mh-1": "s3cret",
        "sw-1": "other",
    }
    write_certificate(tmp_path / "certs", "mh-1", ca.issue("mh-1"))
    logins = read_logins(tmp_path / "certs")
    assert list(logins) == ["mh-1"]
    assert logins["mh-1"].key_file == tmp_path / "certs" / "mh-1.key"
    (tmp_path / "certs" / "mh-1.key").unlink()
    with pytest.raises(LinkError, match="no key beside the certificates of mh-1"):
        read_logins(tmp_path / "certs")


CSV_TEXT = st.text(string.printable, max_size=200)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | CSV_TEXT.map(str.encode)
    | CSV_TEXT.map(lambda rest: f"username,password,not_after\n{rest}".encode())
)
def test_any_logins_file_gives_logins_or_one_clear_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "logins.csv"
        path.write_bytes(content)
        outcome: dict[str, object] = {}
        try:
            outcome["logins"] = read_logins(path)
        except LinkError as exc:
            outcome["error"] = str(exc)
        if "error" in outcome:
            assert str(path) in str(outcome["error"])
        else:
            logins = outcome["logins"]
            assert logins
            for username, login in logins.items():  # type: ignore[attr-defined]
                assert username
                assert username == login.username
                assert isinstance(login.password, str)
