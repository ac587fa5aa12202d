"""The lab's TLS identity: a lab CA and a server certificate for the data plane, kept in the lab's state dir.

awscrt checks the server's host name, so the server certificate carries SANs ``DNS:localhost`` and
``IP:127.0.0.1``; clients trust the lab by being given the CA file (``ca_filepath`` / ``ca_bytes``) — the only
thing besides endpoint and port that differs from AWS.

Files written to the state dir: ``lab-ca.pem`` (the CA certificate, what clients load), ``lab-ca.key``,
``lab-server.pem`` and ``lab-server.key``. The two keys are lab-only secrets (mode 0600): they protect nothing
but the local lab. A unit's private key never passes through this module. Existing files are reused while
they are valid, so a client configured with ``lab-ca.pem`` keeps working across lab restarts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from station.errors import InputError

CA_FILE = "lab-ca.pem"
CA_KEY_FILE = "lab-ca.key"
SERVER_CERT_FILE = "lab-server.pem"
SERVER_KEY_FILE = "lab-server.key"

DEFAULT_DNS_NAMES = ("localhost",)
DEFAULT_IP_ADDRESSES = ("127.0.0.1",)

_CA_DAYS = 3650
_SERVER_DAYS = 825
# Reissue before expiry so a long-lived state dir never hands out a certificate about to lapse.
_RENEW_MARGIN = dt.timedelta(days=30)


@dataclass(frozen=True)
class LabTls:
    """Paths of the lab's CA and server credentials (all absolute)."""

    ca_file: Path
    ca_key_file: Path
    server_cert_file: Path
    server_key_file: Path

    @property
    def ca_bytes(self) -> bytes:
        return self.ca_file.read_bytes()


def ensure_lab_tls(
    state_dir: str | os.PathLike[str],
    *,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
    now: dt.datetime | None = None,
) -> LabTls:
    """Return the lab CA and server certificate in `state_dir`, creating or renewing them as needed.

    Raises `InputError` when the state dir cannot be created or written.
    """
    now = now or dt.datetime.now(dt.UTC)
    directory = Path(state_dir).expanduser().resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(directory, exc) from exc
    paths = LabTls(
        ca_file=directory / CA_FILE,
        ca_key_file=directory / CA_KEY_FILE,
        server_cert_file=directory / SERVER_CERT_FILE,
        server_key_file=directory / SERVER_KEY_FILE,
    )
    try:
        ca = _load_ca(paths, now)
        if ca is None:
            ca = _new_ca(now)
            _write(paths.ca_key_file, _key_pem(ca[1]), secret=True)
            _write(paths.ca_file, ca[0].public_bytes(serialization.Encoding.PEM), secret=False)
        if not _server_usable(paths, ca[0], dns_names, ip_addresses, now):
            cert, key = _new_server(ca, dns_names, ip_addresses, now)
            _write(paths.server_key_file, _key_pem(key), secret=True)
            _write(paths.server_cert_file, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    except PermissionError as exc:
        raise _unwritable(directory, exc) from exc
    return paths


def _unwritable(directory: Path, exc: OSError) -> InputError:
    return InputError(
        "Lab state dir not writable",
        f"The lab cannot write its CA and server certificate to {directory} ({exc.strerror or exc}).",
        "Choose a directory you can write to with --state-dir, or fix its permissions.",
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    # Write-then-rename so a lab killed mid-write never leaves a half file that a later start trusts.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid_until(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - _RENEW_MARGIN > now


def _load_ca(paths: LabTls, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_file.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _valid_until(cert, now):
        return None
    if not _same_key(cert, key):
        return None
    return cert, key


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _server_usable(
    paths: LabTls,
    ca_cert: x509.Certificate,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: dt.datetime,
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(paths.server_cert_file.read_bytes())
        key = serialization.load_pem_private_key(paths.server_key_file.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _valid_until(cert, now):
        return False
    if not _same_key(cert, key):
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(dns_names) <= have_dns and {str(ipaddress.ip_address(i)) for i in ip_addresses} <= have_ips


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Station lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Station lab CA (local testing only)"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names else "lab")])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key
