"""The lab's stand-in for the CA behind AWS IoT's CreateCertificateFromCsr.

AWS signs the CSR's own public key (so the device's private key matches the certificate) with an Amazon CA,
valid until 2049-12-31T23:59:59Z. moto instead returns a certificate for a freshly generated key, which no device
can use; the control plane answers that call itself with this issuer.

The issuer key lives in memory only, made on first use, never written anywhere. This module must not touch any
private key other than its own.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOT_AFTER = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)  # AWS IoT-generated certificates expire then
_ISSUER = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon.com Inc. (lab)"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Amazon Web Services"),
    ]
)
_lock = threading.Lock()
_key: rsa.RSAPrivateKey | None = None


def _issuer_key() -> rsa.RSAPrivateKey:
    global _key
    with _lock:
        if _key is None:
            _key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _key


def sign_csr(csr_pem: str) -> str:
    """A certificate PEM for the CSR's subject and public key (the CSR must already have passed the rules)."""
    csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8"))
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(_ISSUER)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(_issuer_key(), hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()
