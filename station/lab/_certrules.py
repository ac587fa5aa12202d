"""The lab's own copy of AWS IoT's certificate acceptance rules, as the control plane enforces them.

AWS IoT refuses, on every register call, certificates it cannot use: RSA keys under 2048 bits, signatures other
than RSA/RSASSA-PSS/ECDSA (or DSA) with SHA-256/384/512 (so no SHA-1, no Ed25519/Ed448), certificates outside
their validity dates, PEM text longer than 65536 characters, and anything that is not a certificate. moto
accepts all of those, so the lab checks them itself in front of moto.

This module deliberately does not import the station's `station.identity` (which implements the same rules on
the station side): the lab exists to check the station, not to echo it. It only reads certificates; it never
sees a private key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

MAX_PEM_CHARS = 65536  # AWS's modelled maximum length of certificatePem
MIN_RSA_BITS = 2048
_GOOD_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_GOOD_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class Rejected(ValueError):
    """A certificate or CSR AWS IoT would refuse; the text is what the lab answers in `message`."""


def check_certificate_pem(pem: object, *, now: datetime | None = None) -> None:
    """Raise `Rejected` unless AWS IoT would accept `pem` as a device certificate at `now`."""
    if not isinstance(pem, str) or not pem.strip():
        raise Rejected("The certificate is not valid: no PEM text was given.")
    if len(pem) > MAX_PEM_CHARS:
        raise Rejected(f"The certificate is not valid: the PEM is longer than {MAX_PEM_CHARS} characters.")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise Rejected(
            "The certificate is not valid: it could not be parsed as a PEM X.509 certificate."
        ) from None
    _check_key(cert.public_key(), what="certificate")
    _check_signature_hash(cert, what="certificate")
    moment = now or datetime.now(UTC)
    if moment < cert.not_valid_before_utc:
        raise Rejected("The certificate is not valid: it is not yet valid (notBefore is in the future).")
    if moment > cert.not_valid_after_utc:
        raise Rejected("The certificate is not valid: it has expired (notAfter is in the past).")


def check_csr_pem(pem: object) -> None:
    """Raise `Rejected` unless AWS IoT would accept `pem` as a certificate signing request."""
    if not isinstance(pem, str) or not pem.strip():
        raise Rejected("The certificate signing request is not valid: no PEM text was given.")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise Rejected("The certificate signing request could not be parsed.") from None
    _check_key(csr.public_key(), what="certificate signing request")
    _check_signature_hash(csr, what="certificate signing request")
    if not csr.is_signature_valid:
        raise Rejected("The certificate signing request's signature does not verify.")


def _check_key(key: object, *, what: str) -> None:
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise Rejected(
                f"The key in the {what} is not valid: {key.key_size}-bit keys are too short "
                f"(at least {MIN_RSA_BITS} bits)."
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _GOOD_CURVES):
            raise Rejected(f"The key in the {what} is not valid: curve {key.curve.name} is not supported.")
        return
    raise Rejected(f"The key in the {what} is not valid: {type(key).__name__} keys are not supported.")


def _check_signature_hash(obj: x509.Certificate | x509.CertificateSigningRequest, *, what: str) -> None:
    try:
        algorithm = obj.signature_hash_algorithm  # None for Ed25519/Ed448
    except UnsupportedAlgorithm:
        algorithm = None
    if not isinstance(algorithm, _GOOD_HASHES):
        name = (
            getattr(obj.signature_algorithm_oid, "_name", None) or obj.signature_algorithm_oid.dotted_string
        )
        raise Rejected(
            f"The {what} is not valid: signature algorithm {name} is not supported "
            "(use SHA-256, SHA-384 or SHA-512 with RSA or ECDSA)."
        )
