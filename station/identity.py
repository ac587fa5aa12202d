"""Unit identities: key pairs, certificates, certificate ids, imports, and AWS IoT's acceptance rules.

What it does:
- makes key pairs (EC P-256 by default, EC P-384, RSA 2048/3072) and certificates for them, self-signed or
  signed by a factory CA (`LoadedIssuer`), with CN = thing name, a random serial and the clientAuth EKU;
- signs certificate requests (CSRs) from units that make their own key (a factory CA is required then);
- imports existing identities: PEM, DER (.cer/.der) and PKCS#12 (.p12/.pfx), with or without a password and
  with or without the private key (also as a separate key file); the format is detected by content;
- computes the certificate id AWS uses (lowercase hex SHA-256 of the DER) before any AWS call;
- checks a certificate against AWS IoT's acceptance rules (`check_aws_acceptance`) so a bad one is refused
  with a plain reason and the next action, and checks that a private key belongs to its certificate.

What it must not do: write anything (keys least of all), log, talk to AWS, or let key bytes escape. Keys are
held in `station.model.Secret` (PKCS#8 PEM, unencrypted, in memory only). Error texts are built from
certificate facts and file names only, and library exceptions are not chained into ours (`from None`), so a
traceback cannot carry key material either. Every failure is a `StationError`: malformed input of any kind
gives an `InputError` (or `CertificateRejected`), never a library exception.

Decision on EC P-521: rejected. AWS lists P-256 and P-384 as the safe curves for client certificates; P-521
is not something the lab can prove against AWS, and many device TLS stacks (mbedTLS builds, secure
elements) do not have it. Refusing before registration is cheaper than a unit that registers and then fails
verify on the line. Re-issue with P-256 or P-384.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from station.errors import CertificateRejected, InputError, StationError, UnitFault
from station.i18n import N_, _
from station.model import Identity, Issuer, Secret

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")
DEFAULT_KEY_TYPE = "ec-p256"
MAX_PEM_CHARS = 65536  # AWS IoT's limit for certificatePem
MAX_INPUT_BYTES = 1 << 20  # a certificate file is a few KB; anything near a megabyte is the wrong file
MAX_PEM_BLOCKS = 64  # a device certificate with its whole chain and key is a handful of blocks
MAX_PASSWORD_CHARS = 1024
MAX_RSA_KEY_BITS = 4096  # checking a larger RSA private key takes seconds (8192 bits: ~6 s)
# PKCS#12 and encrypted keys make the reader run a key-derivation function as often as the file says. A
# file saying "10 billion iterations" would stall the station, so the work a file may ask for is capped:
# OpenSSL writes 2,048 iterations, Windows and macOS exports 2,000 to 10,000, current guidance 600,000.
MAX_KDF_ITERATIONS = 1_000_000
MAX_KDF_COUNT = 8  # key-derivation runs per file (MAC, certificate bag, key bag: 3 in a normal file)
MAX_SCRYPT_COST = 1 << 20  # scrypt N*r for a scrypt-encrypted key (OpenSSL's default is N=16384, r=8)
MAX_DAYS = 100 * 366
COMMON_NAME_MAX = 64  # X.509 upper bound for a CN (ub-common-name)
# Certificates start an hour in the past: AWS (and a unit) may run a clock slightly behind the station's,
# and a certificate that is "not yet valid" for a few seconds fails registration for no good reason.
BACKDATE = timedelta(hours=1)

_SAFE_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_ACCEPTED_SIGNATURES = {
    SignatureAlgorithmOID.RSA_WITH_SHA256,
    SignatureAlgorithmOID.RSA_WITH_SHA384,
    SignatureAlgorithmOID.RSA_WITH_SHA512,
    SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512,
}
_SIGNATURE_NAMES = {
    SignatureAlgorithmOID.RSA_WITH_MD5: "MD5 with RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA1: "SHA-1 with RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA224: "SHA-224 with RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA256: "SHA-256 with RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA384: "SHA-384 with RSA",
    SignatureAlgorithmOID.RSA_WITH_SHA512: "SHA-512 with RSA",
    SignatureAlgorithmOID.RSASSA_PSS: "RSA-PSS",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "SHA-1 with ECDSA",
    SignatureAlgorithmOID.ECDSA_WITH_SHA224: "SHA-224 with ECDSA",
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "SHA-256 with ECDSA",
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: "SHA-384 with ECDSA",
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: "SHA-512 with ECDSA",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "SHA-1 with DSA",
    SignatureAlgorithmOID.DSA_WITH_SHA256: "SHA-256 with DSA",
    SignatureAlgorithmOID.ED25519: "Ed25519",
    SignatureAlgorithmOID.ED448: "Ed448",
}
_STRONG_HASHES = ("sha256", "sha384", "sha512")

_BEGIN, _END, _DASHES = b"-----BEGIN ", b"-----END ", b"-----"
_PEM_LABEL = re.compile(rb"[A-Z0-9 ]{1,40}")
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE"}
_KEY_LABELS = {
    b"PRIVATE KEY",
    b"ENCRYPTED PRIVATE KEY",
    b"RSA PRIVATE KEY",
    b"EC PRIVATE KEY",
    b"DSA PRIVATE KEY",
}
# DER of the PKCS#7 content types a PKCS#12 PFX's authSafe starts with (data, signedData).
_P7_DATA_OIDS = (bytes.fromhex("06092a864886f70d010701"), bytes.fromhex("06092a864886f70d010702"))

_FIX_FILE = N_("Export the certificate again as PEM, DER (.cer) or PKCS#12 (.p12) and retry.")
_REISSUE = N_("Issue a new certificate (EC P-256 or RSA 2048+, signed with SHA-256) and register that one.")


# --------------------------------------------------------------------------------------------------------
# Small helpers


@dataclass(frozen=True)
class LoadedIssuer:
    """A factory CA ready to sign: its certificate and its private key (in memory; never shown)."""

    certificate: x509.Certificate = field(repr=False)
    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    certificate_pem: str = field(repr=False)
    subject: str = ""

    def __repr__(self) -> str:
        return f"LoadedIssuer(subject={self.subject!r})"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _as_bytes(data: str | bytes, what: str) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        # PEM blocks are ASCII; text around them (openssl's "Bag Attributes", a dump) may not be.
        return data.encode("utf-8", "replace")
    raise InputError(
        _("Unreadable {what}").format(what=what),
        _("The {what} is neither text nor bytes.").format(what=what),
        _(_FIX_FILE),
    )


def _password_bytes(password: str | bytes | None) -> bytes | None:
    """The password as bytes; `InputError` for one no exporter writes (NUL inside, absurd length).

    A NUL makes cryptography's PKCS#12 reader panic (a `BaseException`), so it is refused before any call.
    """
    if password is None:
        return None
    raw = password if isinstance(password, bytes) else password.encode("utf-8", "surrogatepass")
    if b"\x00" in raw:
        raise InputError(
            _("Password not usable"),
            _("The password contains a NUL character (\\0), which no certificate export can have set."),
            _("Type the password again; if it comes from a file or pipe, check that file's content."),
        )
    if len(raw) > MAX_PASSWORD_CHARS:
        raise InputError(
            _("Password too long"),
            _("The password is {count} bytes; the station accepts at most {MAX_PASSWORD_CHARS}.").format(
                count=len(raw), MAX_PASSWORD_CHARS=MAX_PASSWORD_CHARS
            ),
            _("Check that the right password (not a file's content) was given."),
        )
    return raw


def _key_description(key: PublicKeyTypes | PrivateKeyTypes) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


def _key_problem(key: PublicKeyTypes) -> tuple[str, str] | None:
    """(title, message) if AWS IoT would refuse a certificate with this public key."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return (
                _("Certificate key too small"),
                _("RSA key is {key_size} bits; AWS IoT needs at least 2048.").format(key_size=key.key_size),
            )
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in _SAFE_CURVES:
            return None
        curve = _CURVE_NAMES.get(key.curve.name, key.curve.name)
        return (
            _("Certificate curve not accepted"),
            _("EC key is on curve {curve}; the station accepts only P-256 or P-384 for AWS IoT.").format(
                curve=curve
            ),
        )
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        name = _key_description(key)
        return (
            _("Certificate key type not accepted"),
            _(
                "Key is {name}; AWS IoT does not accept {name} certificates (RSA 2048+ or EC P-256/P-384 only)."
            ).format(name=name),
        )
    return (
        _("Certificate key type not accepted"),
        _("Key is {key}; AWS IoT accepts RSA (2048 bits or more) or EC P-256/P-384 keys.").format(
            key=_key_description(key)
        ),
    )


def _signature_problem(cert: x509.Certificate | x509.CertificateSigningRequest) -> tuple[str, str] | None:
    oid = cert.signature_algorithm_oid
    if oid in _ACCEPTED_SIGNATURES:
        return None
    name = _SIGNATURE_NAMES.get(oid, oid.dotted_string)
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        try:
            digest = cert.signature_hash_algorithm
        except Exception:  # unknown PSS parameters: cryptography raises UnsupportedAlgorithm
            digest = None
        if digest is not None and digest.name in _STRONG_HASHES:
            return None
        name = f"RSA-PSS with {digest.name.upper() if digest else 'an unknown hash'}"
    return (
        _("Weak certificate signature"),
        _(
            "The certificate is signed with {name}; AWS IoT needs a SHA-256, SHA-384 or SHA-512 signature "
            "with RSA or ECDSA."
        ).format(name=name),
    )


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    try:
        return _spki(cert.public_key()) == _spki(key.public_key())
    except Exception:  # a key type cryptography cannot serialize cannot be matched either
        return False


def _secret_of(key: PrivateKeyTypes) -> Secret:
    try:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    except Exception:
        raise InputError(
            _("Unusable private key"),
            _("The {key} private key cannot be converted to PKCS#8.").format(key=_key_description(key)),
            _("Supply an RSA or EC private key."),
        ) from None
    return Secret(pem)


def _identity(cert: x509.Certificate, key: PrivateKeyTypes | None) -> Identity:
    der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        certificate_id=hashlib.sha256(der).hexdigest(),
        private_key=_secret_of(key) if key is not None else None,
    )


def _common_name(cert: x509.Certificate) -> str:
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:
        return ""
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _check_common_name(common_name: str) -> str:
    if not isinstance(common_name, str) or not common_name.strip():
        raise InputError(
            _("No common name"),
            _("A certificate needs a common name (the thing name)."),
            _("Give the thing name."),
        )
    if len(common_name) > COMMON_NAME_MAX:
        raise InputError(
            _("Thing name too long for a certificate"),
            _(
                "The common name is {count} characters; a certificate's CN holds at most "
                "{COMMON_NAME_MAX} (thing names may be longer, certificates may not)."
            ).format(count=len(common_name), COMMON_NAME_MAX=COMMON_NAME_MAX),
            _("Shorten the target's thing_name_template so names stay within 64 characters."),
        )
    return common_name


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InputError(
            _("Invalid validity"),
            _("Certificate validity must be 1 to {MAX_DAYS} days, not {days!r}.").format(
                MAX_DAYS=MAX_DAYS, days=days
            ),
            _("Fix certificate_days in station.toml."),
        )
    return days


# --------------------------------------------------------------------------------------------------------
# Certificate id and parsing


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for each complete PEM block, in order; work linear in the input's size.

    A block runs from `-----BEGIN L-----` to the first `-----END ` after it, which must be `-----END L-----`;
    a BEGIN without one is skipped. (A backtracking regex looked for each BEGIN's END through the whole rest
    of the file: a megabyte of unclosed BEGIN lines took minutes.) More than `MAX_PEM_BLOCKS` complete blocks
    is an `InputError`.
    """
    blocks: list[tuple[bytes, bytes]] = []
    pos, next_end = 0, -1
    while True:
        start = data.find(_BEGIN, pos)
        if start < 0:
            return blocks
        label_start = start + len(_BEGIN)
        label_end = data.find(_DASHES, label_start, label_start + 41)
        if label_end < 0 or not _PEM_LABEL.fullmatch(data, label_start, label_end):
            pos = label_start
            continue
        label = data[label_start:label_end]
        body = label_end + len(_DASHES)
        if next_end < body:  # the first END at or after `body`; searched again only past the last one
            next_end = data.find(_END, body)
            if next_end < 0:
                return blocks  # no END anywhere further on: no more complete blocks
        closing = _END + label + _DASHES
        if data.startswith(closing, next_end):
            stop = next_end + len(closing)
            blocks.append((label, data[start:stop]))
            if len(blocks) > MAX_PEM_BLOCKS:
                raise InputError(
                    _("Too many PEM blocks"),
                    _(
                        "The data holds more than {MAX_PEM_BLOCKS} PEM blocks; a certificate file holds a "
                        "certificate, perhaps its chain and its key."
                    ).format(MAX_PEM_BLOCKS=MAX_PEM_BLOCKS),
                    _(_FIX_FILE),
                )
            pos = stop
        else:
            pos = body  # closed by another label's END: not a block


def _looks_like_pem(data: bytes) -> bool:
    # Anywhere, not only at the start: `openssl x509 -text` and `openssl pkcs12 -nodes` put text first.
    return b"-----BEGIN " in data


def _der_header(data: bytes, pos: int) -> tuple[int, int] | None:
    """(tag, offset of the content) of the DER/BER element at `pos`; None when there is none."""
    if pos + 2 > len(data):
        return None
    first = data[pos + 1]
    if first < 0x80 or first == 0x80:  # short form, or BER indefinite length (some PKCS#12 writers)
        return data[pos], pos + 2
    n = first & 0x7F
    if n > 4 or pos + 2 + n > len(data):
        return None
    return data[pos], pos + 2 + n


def _looks_like_pkcs12(data: bytes) -> bool:
    """PFX ::= SEQUENCE { version INTEGER 3, authSafe ContentInfo { contentType data|signedData, … }, … }."""
    outer = _der_header(data, 0)
    if outer is None or outer[0] != 0x30:
        return False
    pos = outer[1]
    if data[pos : pos + 3] != b"\x02\x01\x03":
        return False
    inner = _der_header(data, pos + 3)
    if inner is None or inner[0] != 0x30:
        return False
    return data[inner[1] : inner[1] + 11] in _P7_DATA_OIDS


def _guarded(call: Any, *args: Any) -> Any:
    """`call(*args)` for a cryptography call on outside input; a Rust panic becomes a `ValueError`.

    cryptography's Rust code can panic on odd input, and pyo3 raises the panic as `PanicException`, a
    `BaseException` that `except Exception` does not catch.
    """
    try:
        return call(*args)
    except Exception:
        raise
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise ValueError(f"cryptography failed ({type(error).__name__})") from None


def _unparsable_field(cert: x509.Certificate) -> str | None:
    """The first field of `cert` that cannot be decoded, or None when every field reads.

    cryptography decodes a certificate's fields lazily, when first read; a damaged subject would otherwise
    surface later, outside any import's error handling. A public key of an algorithm cryptography does not
    know is not damage (AWS acceptance explains it); a malformed one is.
    """
    fields: tuple[tuple[str, Any], ...] = (
        ("subject", lambda: [a.value for a in cert.subject] and cert.subject.rfc4514_string()),
        ("issuer", lambda: [a.value for a in cert.issuer] and cert.issuer.rfc4514_string()),
        ("serial number", lambda: cert.serial_number),
        ("validity dates", lambda: (cert.not_valid_before_utc, cert.not_valid_after_utc)),
        ("signature algorithm", lambda: cert.signature_algorithm_oid),
        ("extensions", lambda: [e.value for e in cert.extensions]),
    )
    for name, read in fields:
        try:
            _guarded(read)
        except Exception:
            return name
    try:
        _guarded(cert.public_key)
    except Exception as error:
        if type(error).__name__ != "UnsupportedAlgorithm":
            return "public key"
    return None


def _checked(cert: x509.Certificate, what: str) -> x509.Certificate:
    """`cert`, every field decoded now; `InputError` naming the damaged field otherwise."""
    damaged = _unparsable_field(cert)
    if damaged is not None:
        raise InputError(
            _("Damaged certificate"),
            _("The {what} holds a certificate whose {damaged} cannot be decoded (damaged or edited).").format(
                what=what, damaged=damaged
            ),
            _(_FIX_FILE),
        )
    return cert


def _load_cert_pem_block(block: bytes) -> x509.Certificate | None:
    try:
        return _guarded(x509.load_pem_x509_certificate, block)
    except Exception:  # cryptography raises ValueError and friends for damaged blocks
        return None


def _load_cert_der(data: bytes) -> x509.Certificate | None:
    try:
        return _guarded(x509.load_der_x509_certificate, data)
    except Exception:
        return None


# Parsed certificates by the SHA-256 of the bytes they came from: a unit's certificate is parsed and checked
# once, not by each of the id, the AWS acceptance check, register and verify (≈ 0.15 ms each). The key is
# a digest, so the cache never holds the input (which may be a bundle with a private key in it); the values
# are public certificates. Only successful parses of inputs up to AWS's PEM limit are kept.
_PARSED_MAX = 64
_parsed: OrderedDict[bytes, tuple[x509.Certificate, ...]] = OrderedDict()
_parsed_lock = threading.Lock()


def _parse_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in PEM text, or the one DER certificate; `InputError` when there is none."""
    if len(data) > MAX_PEM_CHARS:
        return _parse_certificates_now(data, what)
    digest = hashlib.sha256(data).digest()
    with _parsed_lock:
        certs = _parsed.get(digest)
        if certs is not None:
            _parsed.move_to_end(digest)
            return list(certs)
    parsed = _parse_certificates_now(data, what)  # raises for bad input: nothing is cached then
    with _parsed_lock:
        _parsed[digest] = tuple(parsed)
        while len(_parsed) > _PARSED_MAX:
            _parsed.popitem(last=False)
    return parsed


def _parse_certificates_now(data: bytes, what: str) -> list[x509.Certificate]:
    if _looks_like_pem(data):
        blocks = _pem_blocks(data)
        certs = []
        for label, block in blocks:
            if label in _CERT_LABELS:
                cert = _load_cert_pem_block(block)
                if cert is None:
                    raise InputError(
                        _("Damaged certificate"),
                        _(
                            "The {what} has a CERTIFICATE block that cannot be decoded (damaged or edited)."
                        ).format(what=what),
                        _(_FIX_FILE),
                    )
                certs.append(_checked(cert, what))
        if certs:
            return certs
        _raise_no_certificate_in_pem(data, blocks, what)
    cert = _load_cert_der(data)
    if cert is None:
        raise InputError(
            _("Not a certificate"),
            _("The {what} is neither PEM text nor a DER certificate.").format(what=what),
            _(_FIX_FILE),
        )
    return [_checked(cert, what)]


def _raise_no_certificate_in_pem(data: bytes, blocks: list[tuple[bytes, bytes]], what: str) -> None:
    labels = {label for label, _ in blocks}
    if not blocks:
        message = f"The {what} starts a PEM block that never ends: the file is truncated or damaged."
    elif b"CERTIFICATE REQUEST" in labels or b"NEW CERTIFICATE REQUEST" in labels:
        message = f"The {what} is a certificate request (CSR), not a certificate."
    elif labels & _KEY_LABELS:
        message = f"The {what} holds a private key but no certificate."
    elif b"PKCS7" in labels:
        message = f"The {what} is a PKCS#7 bundle; the station needs the certificate itself."
    else:
        shown = ", ".join(sorted(label.decode("ascii") for label in labels))
        message = f"The {what} holds PEM blocks of type {shown}, but no CERTIFICATE."
    raise InputError(_("No certificate found"), message, _(_FIX_FILE))


def certificate_der(cert: str | bytes) -> bytes:
    """The DER bytes of one certificate given as PEM (text or bytes) or DER."""
    data = _as_bytes(cert, "certificate")
    certs = _parse_certificates(data, "certificate data")
    return certs[0].public_bytes(serialization.Encoding.DER)


def certificate_id(cert: str | bytes) -> str:
    """AWS IoT's certificate id: lowercase hex SHA-256 of the certificate's DER (PEM or DER accepted)."""
    try:
        return hashlib.sha256(certificate_der(cert)).hexdigest()
    except StationError:
        raise
    except Exception as error:  # safety net: malformed input must end as a StationError
        raise InputError(
            _("Unreadable certificate"),
            _("The certificate cannot be read ({error_type}).").format(error_type=type(error).__name__),
            _(_FIX_FILE),
        ) from None


# --------------------------------------------------------------------------------------------------------
# AWS acceptance


def _validity_problems(cert: x509.Certificate, when: datetime) -> list[tuple[str, str, str]]:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    fmt = "%Y-%m-%d %H:%M UTC"
    if end < start:
        return [
            (
                _("Certificate validity empty"),
                _("The certificate's validity ends ({end}) before it starts ({start}).").format(
                    end=f"{end:{fmt}}", start=f"{start:{fmt}}"
                ),
                _(_REISSUE),
            )
        ]
    if when < start:
        return [
            (
                _("Certificate not yet valid"),
                _("The certificate is not valid until {start} (now {now}).").format(
                    start=f"{start:{fmt}}", now=f"{when:{fmt}}"
                ),
                _("Check the station's clock; if it is right, issue a certificate valid from today."),
            )
        ]
    if when > end:
        return [
            (
                _("Certificate expired"),
                _("The certificate expired on {end}.").format(end=f"{end:{fmt}}"),
                _("Issue a new certificate for this unit and register that one."),
            )
        ]
    return []


def acceptance_problems(cert: x509.Certificate, *, now: datetime | None = None) -> list[tuple[str, str, str]]:
    """Every reason AWS IoT would refuse this certificate, as (title, message, next action); [] if none."""
    problems: list[tuple[str, str, str]] = []
    try:
        public_key = cert.public_key()
    except Exception:
        problems.append(
            (
                _("Certificate key type not accepted"),
                _(
                    "The certificate's key type ({dotted_string}) is not supported; "
                    "AWS IoT accepts RSA (2048 bits or more) or EC P-256/P-384 keys."
                ).format(dotted_string=cert.public_key_algorithm_oid.dotted_string),
                _(_REISSUE),
            )
        )
    else:
        key_problem = _key_problem(public_key)
        if key_problem:
            problems.append((*key_problem, _(_REISSUE)))
    signature_problem = _signature_problem(cert)
    if signature_problem:
        problems.append((*signature_problem, _(_REISSUE)))
    problems.extend(_validity_problems(cert, _now(now)))
    pem_length = len(cert.public_bytes(serialization.Encoding.PEM))
    if pem_length > MAX_PEM_CHARS:
        problems.append(
            (
                _("Certificate too large"),
                _(
                    "The certificate is {pem_length} characters as PEM; AWS IoT accepts at most {MAX_PEM_CHARS}."
                ).format(pem_length=pem_length, MAX_PEM_CHARS=MAX_PEM_CHARS),
                _("Issue a certificate without the oversized extensions."),
            )
        )
    return problems


def check_aws_acceptance(cert_pem: str | bytes, *, now: datetime | None = None) -> None:
    """Raise `CertificateRejected` unless AWS IoT would accept this certificate for registration.

    Checks (AWS IoT's rules, see docs): exactly one X.509 certificate; RSA ≥ 2048 or EC P-256/P-384 key
    (Ed25519/Ed448/DSA/P-521 refused); SHA-256/384/512 signature with RSA (PKCS#1 v1.5 or PSS) or ECDSA;
    within its validity dates at `now`; at most 65536 characters as PEM (the normalized PEM the station
    sends). All problems found are reported in one message. The private key is not involved.
    """
    try:
        data = _as_bytes(cert_pem, "certificate")
        certs = _parse_certificates(data, "certificate data")
    except CertificateRejected:
        raise
    except InputError as error:
        raise CertificateRejected(error.title, error.message, error.next_action) from None
    except Exception as error:  # safety net: anything unparseable is "not a certificate"
        raise CertificateRejected(
            _("Not a certificate"),
            _("The data is not a certificate ({error_type}).").format(error_type=type(error).__name__),
            _(_FIX_FILE),
        ) from None
    if len(certs) != 1:
        raise CertificateRejected(
            _("More than one certificate"),
            _(
                "The PEM holds {count} certificates; AWS IoT registers one device certificate at a time."
            ).format(count=len(certs)),
            _("Keep only the device's own certificate (the first one, not the CA chain) and retry."),
        )
    try:
        problems = acceptance_problems(certs[0], now=now)
    except Exception as error:  # a certificate too odd to inspect is not one AWS would take
        raise CertificateRejected(
            _("Certificate cannot be checked"),
            _("The certificate could not be inspected ({error_type}).").format(
                error_type=type(error).__name__
            ),
            _(_REISSUE),
        ) from None
    if not problems:
        return
    if len(problems) == 1:
        title, message, next_action = problems[0]
    else:
        title = f"Certificate not accepted by AWS IoT ({len(problems)} problems)"
        message = " ".join(p[1] for p in problems)
        next_action = " ".join(dict.fromkeys(p[2] for p in problems))
    raise CertificateRejected(title, message, next_action)


def check_identity(identity: Identity, *, now: datetime | None = None) -> None:
    """`check_aws_acceptance`, plus: the private key (when held) belongs to the certificate."""
    check_aws_acceptance(identity.certificate_pem, now=now)
    if identity.private_key is not None:
        cert = _parse_certificates(_as_bytes(identity.certificate_pem, "certificate"), "identity")[0]
        key = _load_private_key(identity.private_key.reveal(), None, "private key")
        if not _key_matches(cert, key):
            raise _mismatch(cert, key, "the identity")


def _mismatch(cert: x509.Certificate, key: PrivateKeyTypes, what: str) -> InputError:
    try:
        cert_key = _key_description(cert.public_key())
    except Exception:  # an unsupported key type still deserves the mismatch message
        cert_key = cert.public_key_algorithm_oid.dotted_string
    return InputError(
        _("Key does not match certificate"),
        _(
            "The private key ({key}) does not belong to the certificate (CN {cert!r}, {cert_key}) in {what}."
        ).format(key=_key_description(key), cert=_common_name(cert), cert_key=cert_key, what=what),
        _("Supply the key file exported together with this certificate."),
    )


def describe(cert: str | bytes) -> dict[str, str]:
    """Plain facts about a certificate for screens and `station show` (never anything secret)."""
    der = certificate_der(cert)
    parsed = x509.load_der_x509_certificate(der)
    try:
        key = _key_description(parsed.public_key())
    except Exception:
        key = parsed.public_key_algorithm_oid.dotted_string
    oid = parsed.signature_algorithm_oid
    return {
        "certificate_id": hashlib.sha256(der).hexdigest(),
        "common_name": _common_name(parsed),
        "subject": parsed.subject.rfc4514_string(),
        "issuer": parsed.issuer.rfc4514_string(),
        "serial": format(parsed.serial_number, "x"),
        "not_before": parsed.not_valid_before_utc.isoformat(),
        "not_after": parsed.not_valid_after_utc.isoformat(),
        "key": key,
        "signature": _SIGNATURE_NAMES.get(oid, oid.dotted_string),
    }


# --------------------------------------------------------------------------------------------------------
# Keys


def _pem_der(block: bytes) -> bytes:
    """The DER inside one PEM block (headers such as Proc-Type skipped); b"" when it is not base64."""
    lines = block.splitlines()[1:-1]
    body = b"".join(line.strip() for line in lines if b":" not in line)
    try:
        return base64.b64decode(body, validate=False)
    except ValueError:
        return b""


def _load_unchecked(loader: Any, data: bytes, password: bytes | None) -> Any:
    return loader(data, password, unsafe_skip_rsa_key_validation=True)


def _load_private_key(data: bytes, password: bytes | None, what: str) -> PrivateKeyTypes:
    """A private key from PEM (PKCS#8, traditional, encrypted) or DER; `InputError` with a plain reason."""
    encrypted = False
    if _looks_like_pem(data):
        blocks = [(label, block) for label, block in _pem_blocks(data) if label in _KEY_LABELS]
        if not blocks:
            raise InputError(
                _("No private key in {what}").format(what=what),
                _("The {what} holds no PRIVATE KEY block (or it is truncated).").format(what=what),
                _("Supply the private key file exported with the certificate."),
            )
        label, block = blocks[0]
        encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block
        loader: Any = serialization.load_pem_private_key
        data = block
    else:
        loader = serialization.load_der_private_key
        if data.startswith(b"\x30"):
            # DER PKCS#8 EncryptedPrivateKeyInfo starts with SEQUENCE { SEQUENCE { OID pbes2/pbe… } }.
            header = _der_header(data, 0)
            encrypted = header is not None and data[header[1] : header[1] + 1] == b"\x30"
    if encrypted and not password:
        raise InputError(
            _("Password needed for {what}").format(what=what),
            _("The {what} is encrypted and no password was given.").format(what=what),
            _("Give the key's password (for example with --password-stdin)."),
        )
    if encrypted:
        _refuse_costly_kdf(_pem_der(data) if _looks_like_pem(data) else data, what)
    secret = password if encrypted else None
    try:
        # Read first without RSA's consistency check: its cost grows steeply with the key's size (an 8192-bit
        # key takes seconds), so the size is checked before that check runs.
        key = _guarded(_load_unchecked, loader, data, secret)
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size <= MAX_RSA_KEY_BITS:
            key = _guarded(loader, data, secret)
    except Exception as error:  # cryptography raises ValueError, TypeError, UnsupportedAlgorithm …
        if encrypted:
            # A wrong password and a damaged encrypted key cannot be told apart; the password is likelier.
            raise InputError(
                _("Wrong password for {what}").format(what=what),
                _(
                    "The password given does not open the {what} (wrong password, or the key is damaged)."
                ).format(what=what),
                _("Type the password again; it is the one set when the key was exported."),
            ) from None
        unsupported = type(error).__name__ == "UnsupportedAlgorithm"
        reason = "of an unsupported kind" if unsupported else "damaged, truncated or not a private key"
    else:
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size > MAX_RSA_KEY_BITS:
            raise InputError(
                _("Private key too large in {what}").format(what=what),
                _(
                    "The {what} is an RSA key of {key_size} bits; the station reads RSA keys of at most "
                    "{MAX_RSA_KEY_BITS} bits."
                ).format(what=what, key_size=key.key_size, MAX_RSA_KEY_BITS=MAX_RSA_KEY_BITS),
                _("Use an RSA 2048, 3072 or 4096 key, or an EC P-256/P-384 key."),
            )
        return key
    raise InputError(
        _("Unreadable {what}").format(what=what),
        _("The {what} cannot be read: it is {reason}.").format(what=what, reason=reason),
        _("Supply the private key as PEM (PKCS#8 or traditional) or DER."),
    )


def generate_private_key(key_type: str = DEFAULT_KEY_TYPE) -> CertificateIssuerPrivateKeyTypes:
    """A new private key of one of `KEY_TYPES`."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise InputError(
        _("Unknown key type"),
        _("Key type {key_type!r} is not one of {KEY_TYPES}.").format(
            key_type=key_type, KEY_TYPES=", ".join(KEY_TYPES)
        ),
        _("Fix key_type in station.toml."),
    )


# --------------------------------------------------------------------------------------------------------
# Making certificates


def _sign(builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    if isinstance(key, rsa.RSAPrivateKey):
        return builder.sign(key, hashes.SHA256(), rsa_padding=padding.PKCS1v15())
    return builder.sign(key, hashes.SHA256())


def _unit_certificate(
    public_key: PublicKeyTypes,
    common_name: str,
    days: int,
    issuer: LoadedIssuer | None,
    self_key: CertificateIssuerPrivateKeyTypes | None,
    now: datetime | None,
) -> x509.Certificate:
    """A unit certificate: CN = thing name, random serial, clientAuth EKU, SHA-256, `days` of validity."""
    _check_common_name(common_name)
    _check_days(days)
    start = _now(now) - BACKDATE
    end = start + BACKDATE + timedelta(days=days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    if issuer is not None:
        signer = issuer.private_key
        issuer_name = issuer.certificate.subject
        # A leaf that outlives its CA is pointless and trips strict validators; stay inside the CA's dates.
        start = max(start, issuer.certificate.not_valid_before_utc)
        end = min(end, issuer.certificate.not_valid_after_utc)
        try:
            ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key())
    else:
        assert self_key is not None
        signer = self_key
        issuer_name = subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self_key.public_key())
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(aki, critical=False)
    )
    return _sign(builder, signer)


def new_identity(
    common_name: str,
    *,
    key_type: str = DEFAULT_KEY_TYPE,
    days: int = 3650,
    issuer: LoadedIssuer | None = None,
    now: datetime | None = None,
) -> Identity:
    """A fresh key pair and certificate for one unit (self-signed unless a factory CA is given)."""
    _check_common_name(common_name)
    _check_days(days)
    key = generate_private_key(key_type)
    cert = _unit_certificate(key.public_key(), common_name, days, issuer, key, now)
    return _identity(cert, key)


def _load_csr(csr: bytes | str) -> x509.CertificateSigningRequest:
    data = csr.encode("utf-8", "replace") if isinstance(csr, str) else bytes(csr)
    try:
        if _looks_like_pem(data):
            blocks = [b for label, b in _pem_blocks(data) if label.endswith(b"CERTIFICATE REQUEST")]
            if not blocks:
                raise ValueError("no CERTIFICATE REQUEST block")
            return x509.load_pem_x509_csr(blocks[0])
        return x509.load_der_x509_csr(data)
    except Exception:
        raise UnitFault(
            _("Unit sent a bad certificate request"),
            _("The certificate request (CSR) from the unit cannot be decoded."),
            _("Retry once; if it happens again, put the unit in the rework bin."),
        ) from None


def sign_csr(
    csr: bytes | str,
    issuer: LoadedIssuer | None,
    *,
    common_name: str,
    days: int = 3650,
    now: datetime | None = None,
) -> str:
    """Sign a unit-made key's CSR with the factory CA; returns the certificate PEM.

    The CSR's signature must verify (the unit holds the key) and its key must be one AWS accepts. Only the
    public key is taken from the CSR: the subject is CN = `common_name` and the extensions are the station's
    own, so a unit cannot ask for CA rights. A bad CSR is the unit's fault (`UnitFault` → FAIL); no issuer
    is a configuration problem (`InputError`).
    """
    if issuer is None:
        raise InputError(
            _("No factory CA for a unit-made key"),
            _(
                "This unit makes its own key, and a key the station does not hold can only be certified by a "
                "factory CA; the target has no issuer."
            ),
            _(
                "Add an issuer (factory CA) to the target in station.toml, or use a flasher that takes a "
                "station-made key."
            ),
        )
    _check_common_name(common_name)
    _check_days(days)
    request = _load_csr(csr)
    try:
        valid = request.is_signature_valid
        public_key: PublicKeyTypes | None = request.public_key()
    except Exception:  # an unknown key algorithm in the CSR: cryptography raises UnsupportedAlgorithm
        valid, public_key = False, None
    if not valid or public_key is None:
        raise UnitFault(
            _("Unit's certificate request is not signed by its key"),
            _("The signature on the unit's certificate request (CSR) does not verify."),
            _("Retry once; if it happens again, put the unit in the rework bin."),
        )
    problem = _key_problem(public_key)
    if problem:
        raise UnitFault(
            _("Unit made a key AWS IoT refuses"),
            _("The unit's certificate request carries a key AWS IoT would refuse: {problem}").format(
                problem=problem[1]
            ),
            _("Check the unit's firmware key settings; put the unit in the rework bin."),
        )
    cert = _unit_certificate(public_key, common_name, days, issuer, None, now)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --------------------------------------------------------------------------------------------------------
# Factory CA


def _read_file(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    try:
        # Read at most one byte past the limit: a device or pipe (/dev/zero) has no size to check first.
        with p.open("rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise InputError(
                _("{what} too large").format(what=what.capitalize()),
                _(
                    "{p} is larger than {MAX_INPUT_BYTES:,} bytes, the most the station reads (a {what} is a "
                    "few kilobytes)."
                ).format(p=p, MAX_INPUT_BYTES=MAX_INPUT_BYTES, what=what),
                _("Check that {p} is the right file.").format(p=p),
            )
        return data
    except ValueError:  # a NUL byte in the path
        raise InputError(
            _("{what} path not usable").format(what=what.capitalize()),
            _("The path {path!r} contains a NUL character.").format(path=str(path)),
            _("Give the file's path again."),
        ) from None
    except FileNotFoundError:
        raise InputError(
            _("{what} not found").format(what=what.capitalize()),
            _("There is no file {p}.").format(p=p),
            _("Check the path."),
        ) from None
    except IsADirectoryError:
        raise InputError(
            _("{what} is a folder").format(what=what.capitalize()),
            _("{p} is a folder, not a file.").format(p=p),
            _("Give the file's path."),
        ) from None
    except PermissionError:
        raise InputError(
            _("{what} not readable").format(what=what.capitalize()),
            _("The station may not read {p}.").format(p=p),
            _("Fix the file's permissions for the station's user."),
        ) from None
    except OSError as error:
        raise InputError(
            _("{what} not readable").format(what=what.capitalize()),
            _("{p} cannot be read ({strerror}).").format(p=p, strerror=error.strerror),
            _("Check the file."),
        ) from None


def load_issuer(issuer: Issuer, *, now: datetime | None = None) -> LoadedIssuer:
    """Read a factory CA: its certificate and (possibly passphrase-protected) key, and check both.

    The passphrase comes from the environment variable named by `issuer.passphrase_env`, never from the
    config file itself.
    """
    cert_data = _read_file(issuer.certificate_file, "factory CA certificate")
    key_data = _read_file(issuer.key_file, "factory CA key")
    certs = _parse_certificates(cert_data, f"factory CA certificate {issuer.certificate_file}")
    cert = certs[0]
    password: bytes | None = None
    if issuer.passphrase_env:
        value = os.environ.get(issuer.passphrase_env)
        if value is None:
            raise InputError(
                _("Factory CA passphrase missing"),
                _(
                    "The factory CA key's passphrase is expected in the environment variable "
                    "{passphrase_env}, which is not set."
                ).format(passphrase_env=issuer.passphrase_env),
                _("Set {passphrase_env} for the station's session and start again.").format(
                    passphrase_env=issuer.passphrase_env
                ),
            )
        password = value.encode("utf-8")
    what = _("factory CA key {key_file}").format(key_file=issuer.key_file)
    try:
        key = _load_private_key(key_data, password, what)
    except InputError as error:
        # The title is in the operator's language: compare with the same sentence, not an English prefix.
        if issuer.passphrase_env or error.title != _("Password needed for {what}").format(what=what):
            raise
        raise InputError(
            _("Factory CA passphrase not configured"),
            _(
                "The factory CA key {key_file} is passphrase-protected, and the target's issuer names no "
                "passphrase_env."
            ).format(key_file=issuer.key_file),
            _(
                'Add passphrase_env = "NAME" to the target\'s [issuer] table and set that environment variable.'
            ),
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InputError(
            _("Factory CA key not usable"),
            _(
                "The factory CA key is {key}; unit certificates signed by it would be refused by AWS IoT."
            ).format(key=_key_description(key)),
            _("Use a factory CA with an RSA (2048+) or EC P-256/P-384 key."),
        )
    problem = _key_problem(key.public_key())
    if problem:
        raise InputError(
            _("Factory CA key not usable"),
            _("Unit certificates signed by this CA would be refused: {problem}").format(problem=problem[1]),
            _("Use a factory CA with an RSA (2048+) or EC P-256/P-384 key."),
        )
    if not _key_matches(cert, key):
        raise _mismatch(cert, key, f"the factory CA ({issuer.certificate_file}, {issuer.key_file})")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InputError(
            _("Not a CA certificate"),
            _("{certificate_file} is not a CA certificate (no basicConstraints CA:TRUE).").format(
                certificate_file=issuer.certificate_file
            ),
            _("Point the target's issuer at the factory CA's certificate."),
        )
    validity = _validity_problems(cert, _now(now))
    if validity:
        raise InputError(
            _("Factory CA: {problem}").format(problem=validity[0][0].lower()),
            validity[0][1],
            _("Renew the factory CA."),
        )
    return LoadedIssuer(
        certificate=cert,
        private_key=key,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        subject=cert.subject.rfc4514_string(),
    )


# --------------------------------------------------------------------------------------------------------
# Import


def _pick_certificate(
    certs: list[x509.Certificate], key: PrivateKeyTypes | None, what: str
) -> x509.Certificate:
    if key is None:
        return certs[0]
    for cert in certs:
        if _key_matches(cert, key):
            return cert
    raise _mismatch(certs[0], key, what)


# DER of the key-derivation OIDs whose parameters say how much work reading a file takes.
_PBKDF2_OID = bytes.fromhex("06092a864886f70d01050c")  # 1.2.840.113549.1.5.12 (PBES2's PBKDF2)
_PKCS12_PBE_PREFIX = bytes.fromhex("060a2a864886f70d010c01")  # 1.2.840.113549.1.12.1.{1..6} (legacy PBE)
_SCRYPT_OID = bytes.fromhex("06092b06010401da47040b")  # 1.3.6.1.4.1.11591.4.11


def _der_element(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, start, end) of the content of the definite-length DER element at `pos`; None if there is none."""
    header = _der_header(data, pos)
    if header is None or data[pos + 1] == 0x80:
        return None
    tag, start = header
    first = data[pos + 1]
    length = first if first < 0x80 else int.from_bytes(data[pos + 2 : start], "big")
    end = start + length
    return (tag, start, end) if end <= len(data) else None


def _der_integer(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it) of the INTEGER at `pos`, None if that is not a small INTEGER."""
    element = _der_element(data, pos)
    if element is None or element[0] != 0x02 or element[2] > end or not 1 <= element[2] - element[1] <= 8:
        return None
    return int.from_bytes(data[element[1] : element[2]], "big", signed=True), element[2]


def _kdf_params(data: bytes, oid_end: int) -> tuple[int, ...] | None:
    """The INTEGERs after the salt in the parameters SEQUENCE that follows an OID; None if unreadable."""
    params = _der_element(data, oid_end)
    if params is None or params[0] != 0x30:
        return None
    salt = _der_element(data, params[1])
    if salt is None:
        return None
    values: list[int] = []
    pos = salt[2]
    while pos < params[2] and len(values) < 3:
        integer = _der_integer(data, pos, params[2])
        if integer is None:
            break
        values.append(integer[0])
        pos = integer[1]
    return tuple(values)


def _ber_children(data: bytes, pos: int, depth: int = 0) -> list[tuple[int, int, int]] | None:
    """(tag, start, end) of each child of the constructed BER element at `pos`, definite or indefinite length.

    PKCS#12 writers may use BER's indefinite lengths (content ended by 00 00); DER is the definite case. None
    when the layout cannot be walked. Linear: each child is skipped by its length or walked once.
    """
    if depth > 32 or pos + 2 > len(data) or not data[pos] & 0x20:
        return None
    if data[pos + 1] != 0x80:
        element = _der_element(data, pos)
        if element is None:
            return None
        cur, stop = element[1], element[2]
    else:
        cur, stop = pos + 2, -1
    children: list[tuple[int, int, int]] = []
    while True:
        if stop >= 0 and cur >= stop:
            return children if cur == stop else None
        if stop < 0 and data[cur : cur + 2] == b"\x00\x00":
            return children
        end = _ber_end(data, cur, depth + 1)
        if end is None:
            return None
        header = _der_header(data, cur)
        assert header is not None  # _ber_end read it
        children.append((data[cur], header[1], end))
        cur = end


def _ber_end(data: bytes, pos: int, depth: int) -> int | None:
    """Where the BER element at `pos` ends (after its 00 00 when of indefinite length); None if unreadable."""
    if pos + 2 > len(data):
        return None
    if data[pos + 1] != 0x80:
        element = _der_element(data, pos)
        return element[2] if element else None
    children = _ber_children(data, pos, depth)
    if children is None:
        return None
    last = children[-1][2] if children else pos + 2
    return last + 2  # the end-of-contents octets


def _mac_iterations(data: bytes) -> int | None:
    """A PFX's MacData iteration count (default 1; -1 if unreadable); None when the PFX cannot be walked."""
    items = _ber_children(data, 0)
    if items is None or len(items) < 2:
        return None
    if len(items) == 2:
        return 1  # no MacData (a PFX protected by a signature, or not at all)
    if items[2][0] != 0x30:
        return None
    mac_start = _ber_children(data, items[1][2])  # the MacData element starts where the authSafe ends
    if mac_start is None or len(mac_start) < 2:
        return -1
    if len(mac_start) == 2:
        return 1
    tag, start, end = mac_start[2]
    if tag != 0x02 or not 1 <= end - start <= 8:
        return -1
    return int.from_bytes(data[start:end], "big", signed=True)


def _kdf_problem(der: bytes) -> str | None:
    """Why reading this PKCS#12 file or encrypted key would take too much work, or None.

    Every key derivation the file asks for (its MAC, each PBES2/PBKDF2 or legacy PKCS#12 PBE, scrypt) is
    found by its OID and its iteration count checked against `MAX_KDF_ITERATIONS`; at most `MAX_KDF_COUNT`
    of them. Linear in the file's size; reads nothing secret.
    """
    counts: list[int] = []
    mac = _mac_iterations(der) if _looks_like_pkcs12(der) else None
    if mac is not None:
        counts.append(mac)
    for oid in (_PBKDF2_OID, _PKCS12_PBE_PREFIX):
        pos = der.find(oid)
        while pos >= 0:
            oid_end = pos + len(oid) + (1 if oid is _PKCS12_PBE_PREFIX else 0)
            values = _kdf_params(der, oid_end)
            counts.append(values[0] if values else -1)
            if len(counts) > MAX_KDF_COUNT:
                return f"it asks for more than {MAX_KDF_COUNT} key derivations"
            pos = der.find(oid, pos + 1)
    pos = der.find(_SCRYPT_OID)
    while pos >= 0:
        values = _kdf_params(der, pos + len(_SCRYPT_OID))
        if not values or len(values) < 2 or values[0] < 1 or values[1] < 1:
            return "its scrypt parameters cannot be read"
        if values[0] * values[1] > MAX_SCRYPT_COST:
            return f"its scrypt cost (N×r = {values[0] * values[1]}) is above the station's {MAX_SCRYPT_COST}"
        pos = der.find(_SCRYPT_OID, pos + 1)
    for count in counts:
        if count < 1:
            return "a key-derivation iteration count cannot be read"
        if count > MAX_KDF_ITERATIONS:
            return f"it asks for {count:,} key-derivation iterations; the station accepts at most {MAX_KDF_ITERATIONS:,}"
    return None


def _refuse_costly_kdf(der: bytes, what: str) -> None:
    problem = _kdf_problem(der)
    if problem:
        raise InputError(
            _("{what} asks for too much work").format(what=what.capitalize()),
            _("The {what} cannot be opened at the station: {problem}.").format(what=what, problem=problem),
            _(
                "Export it again with standard settings (for example openssl pkcs12 -export defaults) and retry."
            ),
        )


def _load_pkcs12(data: bytes, password: bytes | None, what: str) -> tuple[list[x509.Certificate], Any]:
    _refuse_costly_kdf(data, what)
    attempts = [password] if password else [None, b""]
    for attempt in attempts:
        try:
            bundle = _guarded(pkcs12.load_pkcs12, data, attempt)
            break
        except Exception:  # wrong password and damaged data look the same from here
            continue
    else:
        if password:
            raise InputError(
                _("Cannot open {what}").format(what=what),
                _(
                    "The password given does not open the PKCS#12 {what} (wrong password or damaged file)."
                ).format(what=what),
                _("Type the password again; it is the one set when the file was exported."),
            )
        raise InputError(
            _("Password needed for {what}").format(what=what),
            _("The PKCS#12 {what} is password-protected (or damaged).").format(what=what),
            _("Give the password set when it was exported (for example with --password-stdin)."),
        )
    certs = []
    if bundle.cert is not None:
        certs.append(_checked(bundle.cert.certificate, what))
    certs.extend(_checked(c.certificate, what) for c in bundle.additional_certs)
    if not certs:
        raise InputError(
            _("No certificate found"),
            _("The PKCS#12 {what} holds no certificate.").format(what=what),
            _("Export the certificate together with its key as PKCS#12 again."),
        )
    return certs, bundle.key


def _load(data: bytes, password: bytes | None, key_data: bytes | None, what: str) -> Identity:
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(
            _("{what} too large").format(what=what.capitalize()),
            _(
                "The {what} is {count:,} bytes; the station reads at most {MAX_INPUT_BYTES:,} bytes (a "
                "certificate file is a few kilobytes)."
            ).format(what=what, count=len(data), MAX_INPUT_BYTES=MAX_INPUT_BYTES),
            _("Check that this is the right file."),
        )
    if not data.strip():
        raise InputError(
            _("Empty {what}").format(what=what), _("The {what} is empty.").format(what=what), _(_FIX_FILE)
        )
    key: PrivateKeyTypes | None = None
    if _looks_like_pem(data):
        certs = _parse_certificates(data, what)
        if any(label in _KEY_LABELS for label, _ in _pem_blocks(data)):
            key = _load_private_key(data, password, what)
    elif _looks_like_pkcs12(data):
        certs, key = _load_pkcs12(data, password, what)
    else:
        der_cert = _load_cert_der(data)
        if der_cert is None and data.startswith(b"\x30"):
            # A PKCS#12 file our sniffing missed (odd BER from some exporters): give it one chance.
            try:
                certs, key = _load_pkcs12(data, password, what)
            except InputError:
                certs = _parse_certificates(data, what)  # raises "not a certificate"
        else:
            certs = _parse_certificates(data, what)
    if key_data is not None:
        # A separate key file wins over a key found in the bundle; it must still match a certificate.
        if not _looks_like_pem(key_data) and _looks_like_pkcs12(key_data):
            # The keychain pair: certificate as .cer, key inside the .p12 exported with it.
            _unused, key = _load_pkcs12(key_data, password, "key file (PKCS#12)")
            if key is None:
                raise InputError(
                    _("No private key found"),
                    _("The PKCS#12 key file holds no private key."),
                    _("Export the PKCS#12 again with its private key."),
                )
        else:
            key = _load_private_key(key_data, password, "key file")
    cert = _pick_certificate(certs, key, what)
    return _identity(cert, key)


def _safe_load(data: bytes, password: bytes | None, key_data: bytes | None, what: str) -> Identity:
    try:
        return _load(data, password, key_data, what)
    except StationError:
        raise
    except Exception as error:  # safety net: the contract is "an Identity or a StationError"
        raise InputError(
            _("Unreadable {what}").format(what=what),
            _("The {what} cannot be read ({error_type}).").format(what=what, error_type=type(error).__name__),
            _(_FIX_FILE),
        ) from None


def load_identity_bytes(
    data: bytes, *, password: bytes | str | None = None, key_data: bytes | str | None = None
) -> Identity:
    """An identity from PEM (certificate, optionally with its key), DER or PKCS#12 bytes; format by content.

    `password` opens a PKCS#12 file or an encrypted key; `key_data` is a separate key (PEM or DER). When a
    key is present it must belong to the certificate. Acceptance by AWS is a separate check
    (`check_aws_acceptance`), so an unacceptable certificate can still be shown and explained.
    """
    raw = _as_bytes(data, "certificate data")
    key_raw = _as_bytes(key_data, "key data") if key_data is not None else None
    return _safe_load(raw, _password_bytes(password), key_raw, "certificate data")


def load_identity_file(
    path: str | os.PathLike[str],
    *,
    key_path: str | os.PathLike[str] | None = None,
    password: bytes | str | None = None,
) -> Identity:
    """`load_identity_bytes` on a file (.pem/.crt/.cer/.der/.p12/.pfx; the content decides, not the name)."""
    data = _read_file(path, "certificate file")
    key_data = _read_file(key_path, "key file") if key_path is not None else None
    return _safe_load(data, _password_bytes(password), key_data, f"file {Path(path).name}")
