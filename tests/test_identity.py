"""Identities: generation, import of every format, AWS acceptance rules, CA signing, CSRs, and key hygiene."""

from __future__ import annotations

import base64
import hashlib
import pickle
import re
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station import identity
from station.errors import CertificateRejected, InputError, StationError, UnitFault
from station.model import Identity, Issuer, Secret

CERTS = Path(__file__).resolve().parent.parent / "fixtures" / "certs"
CA_ENV = "TEST_FACTORY_CA_PASSPHRASE"
CA_PASSPHRASE = "factory-ca-passphrase"


def fixture(name: str) -> bytes:
    return (CERTS / name).read_bytes()


def der_of_pem(pem: bytes | str) -> bytes:
    """An independent PEM → DER decode (not the module's), to check certificate ids against."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    body = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    assert body
    return base64.b64decode("".join(body.group(1).split()))


def parsed(ident: Identity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ident.certificate_pem.encode())


def key_lines(pem: bytes) -> list[str]:
    """The base64 lines of a private key PEM: what must never show up in an error."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def issuer(monkeypatch: pytest.MonkeyPatch) -> identity.LoadedIssuer:
    monkeypatch.setenv(CA_ENV, CA_PASSPHRASE)
    return identity.load_issuer(Issuer(str(CERTS / "factory-ca.pem"), str(CERTS / "factory-ca.key"), CA_ENV))


# ---- generation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "description"),
    [("ec-p256", "EC P-256"), ("ec-p384", "EC P-384"), ("rsa-2048", "RSA 2048"), ("rsa-3072", "RSA 3072")],
)
def test_new_identity_for_each_key_type(key_type: str, description: str) -> None:
    ident = identity.new_identity("sensor-a-SA12345678", key_type=key_type, days=30)
    cert = parsed(ident)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-a-SA12345678"
    assert cert.issuer == cert.subject  # self-signed
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert identity.describe(ident.certificate_pem)["key"] == description
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, hours=2)
    assert ident.certificate_id == hashlib.sha256(der_of_pem(ident.certificate_pem)).hexdigest()
    assert ident.private_key is not None and b"BEGIN PRIVATE KEY" in ident.private_key.reveal()
    identity.check_identity(ident)  # acceptable to AWS, key matches


def test_serials_are_random_and_ids_differ() -> None:
    a, b = identity.new_identity("t-1"), identity.new_identity("t-1")
    assert parsed(a).serial_number != parsed(b).serial_number
    assert a.certificate_id != b.certificate_id


def test_generation_refuses_bad_arguments() -> None:
    with pytest.raises(InputError, match="not one of"):
        identity.new_identity("t", key_type="ec-p521")
    with pytest.raises(InputError, match="1 to"):
        identity.new_identity("t", days=0)
    with pytest.raises(InputError, match="at most 64"):
        identity.new_identity("x" * 65)
    with pytest.raises(InputError, match="common name"):
        identity.new_identity("")


def test_generated_certificate_is_valid_now_despite_small_clock_skew() -> None:
    ident = identity.new_identity("t-skew", days=1)
    identity.check_aws_acceptance(ident.certificate_pem, now=datetime.now(UTC) - timedelta(minutes=30))


# ---- certificate id --------------------------------------------------------------------------------------


def test_certificate_id_is_sha256_of_der_for_pem_and_der() -> None:
    pem = fixture("ec-p256.pem")
    expected = hashlib.sha256(der_of_pem(pem)).hexdigest()
    assert identity.certificate_id(pem) == expected
    assert identity.certificate_id(pem.decode()) == expected
    assert identity.certificate_id(der_of_pem(pem)) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def test_certificate_id_of_garbage_is_an_input_error() -> None:
    with pytest.raises(InputError):
        identity.certificate_id(b"\x00\x01garbage")


def test_a_certificate_is_parsed_once_and_the_cache_keeps_no_input(monkeypatch: pytest.MonkeyPatch) -> None:
    ident = identity.new_identity("cache-thing", key_type="ec-p256", days=30)
    loads: list[bytes] = []
    real = x509.load_pem_x509_certificate
    monkeypatch.setattr(x509, "load_pem_x509_certificate", lambda data: loads.append(data) or real(data))
    combined = ident.certificate_pem.encode() + ident.private_key.reveal()  # a bundle with its key in it

    identity.check_identity(ident)  # acceptance check + key match: parsed once, then from the cache
    identity.check_identity(ident)
    assert identity.certificate_id(ident.certificate_pem) == ident.certificate_id
    assert len(loads) == 1
    assert identity.certificate_id(combined) == ident.certificate_id
    assert len(loads) == 2  # other bytes, parsed on their own
    # The cache is keyed by digests and holds certificates only: no input, and never the key's bytes.
    assert all(len(k) == 32 for k in identity._parsed)
    key_der = serialization.load_pem_private_key(ident.private_key.reveal(), None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    held = b"".join(c.public_bytes(serialization.Encoding.DER) for v in identity._parsed.values() for c in v)
    assert key_der not in held and ident.private_key.reveal() not in pickle.dumps(list(identity._parsed))
    # A damaged certificate is refused every time (a failure is not cached).
    damaged = ident.certificate_pem.replace(ident.certificate_pem.splitlines()[3], "A" * 64)
    for _ in range(2):
        with pytest.raises(StationError):
            identity.certificate_id(damaged)


# ---- import ----------------------------------------------------------------------------------------------


def test_pem_without_key() -> None:
    ident = identity.load_identity_file(CERTS / "ec-p256.pem")
    assert ident.private_key is None
    assert ident.certificate_id == hashlib.sha256(der_of_pem(fixture("ec-p256.pem"))).hexdigest()


@pytest.mark.parametrize("name", ["ec-p256", "ec-p384", "rsa-2048", "factory-leaf"])
def test_pem_with_separate_key_file(name: str) -> None:
    ident = identity.load_identity_file(CERTS / f"{name}.pem", key_path=CERTS / f"{name}.key")
    assert ident.private_key is not None
    # Normalized to unencrypted PKCS#8 whatever the input format (rsa-2048.key is "RSA PRIVATE KEY").
    key = serialization.load_pem_private_key(ident.private_key.reveal(), None)
    assert ident.private_key.reveal().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == parsed(ident).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_combined_pem_with_text_around_it() -> None:
    # What `openssl pkcs12 -nodes` writes: "Bag Attributes" text, the key, then the certificate.
    data = (
        b"Bag Attributes\n    friendlyName: seed-device\nKey Attributes: <No Attributes>\n"
        + fixture("ec-p256.key")
        + b"subject=CN = fixture-ec-p256\n"
        + fixture("ec-p256.pem")
    )
    ident = identity.load_identity_bytes(data)
    assert ident.private_key is not None
    assert ident.certificate_id == identity.certificate_id(fixture("ec-p256.pem"))


def test_chain_pem_picks_the_certificate_matching_the_key() -> None:
    data = fixture("factory-ca.pem") + fixture("factory-leaf.pem")  # CA first, leaf second
    ident = identity.load_identity_bytes(data, key_data=fixture("factory-leaf.key"))
    assert ident.certificate_id == identity.certificate_id(fixture("factory-leaf.pem"))


def test_der_cer_without_key() -> None:
    ident = identity.load_identity_file(CERTS / "keychain-client.cer")
    assert ident.private_key is None
    assert ident.certificate_id == hashlib.sha256(fixture("keychain-client.cer")).hexdigest()
    identity.check_aws_acceptance(ident.certificate_pem)


@pytest.mark.parametrize("password", [None, b"", ""])
def test_keychain_p12_with_empty_password(password: bytes | str | None) -> None:
    ident = identity.load_identity_file(CERTS / "keychain-client.p12", password=password)
    assert ident.private_key is not None
    # The .p12 and the .cer exported with it are the same certificate: same id.
    assert ident.certificate_id == hashlib.sha256(fixture("keychain-client.cer")).hexdigest()
    identity.check_identity(ident)


def test_keychain_pair_cer_with_key_from_p12() -> None:
    """The field report's §6 pair: the certificate from the .cer, the key from the .p12."""
    ident = identity.load_identity_file(CERTS / "keychain-client.cer", key_path=CERTS / "keychain-client.p12")
    assert ident.private_key is not None
    assert ident.certificate_id == hashlib.sha256(fixture("keychain-client.cer")).hexdigest()


@pytest.mark.parametrize("password", [b"secret", "secret"])
def test_p12_with_password(password: bytes | str) -> None:
    ident = identity.load_identity_file(CERTS / "ec-p256-secret.p12", password=password)
    assert ident.private_key is not None
    assert ident.certificate_id == identity.certificate_id(fixture("ec-p256.pem"))


def test_p12_wrong_password_is_a_clear_input_error() -> None:
    with pytest.raises(InputError) as caught:
        identity.load_identity_file(CERTS / "ec-p256-secret.p12", password=b"wrong")
    assert "password" in caught.value.message and "ec-p256-secret.p12" in caught.value.message
    assert "password" in caught.value.next_action


def test_p12_password_missing_says_so() -> None:
    with pytest.raises(InputError) as caught:
        identity.load_identity_file(CERTS / "ec-p256-secret.p12")
    assert caught.value.title.startswith("Password needed")


def test_p12_without_key() -> None:
    ident = identity.load_identity_file(CERTS / "cert-only.p12")
    assert ident.private_key is None
    assert ident.certificate_id == identity.certificate_id(fixture("ec-p256.pem"))


def test_format_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    (tmp_path / "really-a-p12.pem").write_bytes(fixture("keychain-client.p12"))
    (tmp_path / "really-pem.cer").write_bytes(fixture("ec-p256.pem"))
    (tmp_path / "really-der.p12").write_bytes(fixture("keychain-client.cer"))
    assert identity.load_identity_file(tmp_path / "really-a-p12.pem").private_key is not None
    assert identity.load_identity_file(tmp_path / "really-pem.cer").certificate_id == identity.certificate_id(
        fixture("ec-p256.pem")
    )
    assert identity.load_identity_file(tmp_path / "really-der.p12").private_key is None


def test_der_and_encrypted_key_files() -> None:
    key = serialization.load_pem_private_key(fixture("ec-p256.key"), None)
    der_key = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    encrypted_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    cert = fixture("ec-p256.pem")
    assert identity.load_identity_bytes(cert, key_data=der_key).private_key is not None
    assert identity.load_identity_bytes(cert, key_data=encrypted, password=b"pw").private_key is not None
    assert identity.load_identity_bytes(cert, key_data=encrypted_der, password="pw").private_key is not None
    with pytest.raises(InputError, match="encrypted"):
        identity.load_identity_bytes(cert, key_data=encrypted)
    with pytest.raises(InputError, match="does not open"):
        identity.load_identity_bytes(cert, key_data=encrypted, password=b"nope")


def test_unencrypted_key_with_a_password_given_still_loads() -> None:
    # The same --password serves the .p12 and the key; an unencrypted key just ignores it.
    ident = identity.load_identity_bytes(
        fixture("ec-p256.pem"), key_data=fixture("ec-p256.key"), password=b"x"
    )
    assert ident.private_key is not None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("garbage.pem", "neither PEM text nor a DER certificate"),
        ("truncated.pem", "never ends"),
        ("ec-p256.key", "private key but no certificate"),
    ],
)
def test_unreadable_files_give_input_errors(name: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        identity.load_identity_file(CERTS / name)
    assert words in caught.value.message and name in caught.value.message


def test_file_problems_give_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no file"):
        identity.load_identity_file(tmp_path / "missing.pem")
    with pytest.raises(InputError, match="folder"):
        identity.load_identity_file(tmp_path)
    (tmp_path / "empty.pem").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        identity.load_identity_file(tmp_path / "empty.pem")
    (tmp_path / "csr.pem").write_bytes(_csr(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(InputError, match="certificate request"):
        identity.load_identity_file(tmp_path / "csr.pem")


def test_damaged_certificate_block() -> None:
    pem = fixture("ec-p256.pem").decode().splitlines()
    pem[3] = pem[3][:10] + "!!!!" + pem[3][14:]
    with pytest.raises(InputError, match="cannot be decoded"):
        identity.load_identity_bytes("\n".join(pem).encode())


# ---- key and certificate must match ------------------------------------------------------------------------


def test_key_certificate_mismatch_is_refused() -> None:
    with pytest.raises(InputError) as caught:
        identity.load_identity_file(CERTS / "rsa-2048.pem", key_path=CERTS / "ec-p256.key")
    assert caught.value.title == "Key does not match certificate"
    assert "fixture-rsa-2048" in caught.value.message


def test_check_identity_detects_a_swapped_key() -> None:
    good = identity.load_identity_file(CERTS / "ec-p256.pem", key_path=CERTS / "ec-p256.key")
    other = identity.load_identity_file(CERTS / "factory-leaf.pem", key_path=CERTS / "factory-leaf.key")
    swapped = Identity(good.certificate_pem, good.certificate_id, other.private_key)
    identity.check_identity(good)
    with pytest.raises(InputError, match="does not belong"):
        identity.check_identity(swapped)


# ---- AWS acceptance rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["ec-p256.pem", "ec-p384.pem", "rsa-2048.pem", "factory-leaf.pem", "keychain-client.cer"]
)
def test_good_certificates_are_accepted(name: str) -> None:
    identity.check_aws_acceptance(fixture(name))


@pytest.mark.parametrize(
    ("name", "title", "words"),
    [
        (
            "bad-rsa-1024.pem",
            "Certificate key too small",
            "RSA key is 1024 bits; AWS IoT needs at least 2048",
        ),
        ("bad-sha1.pem", "Weak certificate signature", "signed with SHA-1 with RSA"),
        ("bad-ed25519.pem", "(2 problems)", "Key is Ed25519"),
        ("bad-ec-p521.pem", "Certificate curve not accepted", "curve P-521"),
        ("bad-expired.pem", "Certificate expired", "expired on 2021-01-01"),
        ("bad-not-yet-valid.pem", "Certificate not yet valid", "not valid until 2090-01-01"),
        ("garbage.pem", "Not a certificate", "neither PEM text nor a DER certificate"),
        ("truncated.pem", "No certificate found", "never ends"),
        ("ec-p256.key", "No certificate found", "private key but no certificate"),
    ],
)
def test_rejection_rules(name: str, title: str, words: str) -> None:
    with pytest.raises(CertificateRejected) as caught:
        identity.check_aws_acceptance(fixture(name))
    error = caught.value
    assert title in error.title
    assert words in error.message
    assert error.next_action  # always says what to do


def test_dates_are_judged_at_the_given_time() -> None:
    pem = fixture("ec-p256.pem")  # valid 2025-01-01 … 2075-01-01
    identity.check_aws_acceptance(pem, now=datetime(2030, 6, 1, tzinfo=UTC))
    with pytest.raises(CertificateRejected, match="expired"):
        identity.check_aws_acceptance(pem, now=datetime(2080, 1, 1, tzinfo=UTC))
    with pytest.raises(CertificateRejected, match="not valid until"):
        identity.check_aws_acceptance(pem, now=datetime(2024, 1, 1))  # naive = UTC
    identity.check_aws_acceptance(fixture("bad-expired.pem"), now=datetime(2020, 6, 1, tzinfo=UTC))


def _self_signed(key, *, digest=None, rsa_padding=None, extra_names: int = 0) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if extra_names:
        dns = [x509.DNSName(f"host-{i:05d}.example.com") for i in range(extra_names)]
        builder = builder.add_extension(x509.SubjectAlternativeName(dns), critical=False)
    kwargs = {"rsa_padding": rsa_padding} if rsa_padding is not None else {}
    cert = builder.sign(key, digest or hashes.SHA256(), **kwargs)
    return cert.public_bytes(serialization.Encoding.PEM)


def test_pem_longer_than_65536_characters_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertificateRejected) as caught:
        identity.check_aws_acceptance(_self_signed(key, extra_names=2500))
    assert "at most 65536" in caught.value.message
    identity.check_aws_acceptance(_self_signed(key, extra_names=10))


def test_rsa_pss_and_sha384_sha512_signatures_are_accepted_sha224_is_not() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    identity.check_aws_acceptance(_self_signed(rsa_key, rsa_padding=pss))
    ec_key = ec.generate_private_key(ec.SECP384R1())
    identity.check_aws_acceptance(_self_signed(ec_key, digest=hashes.SHA384()))
    identity.check_aws_acceptance(_self_signed(ec_key, digest=hashes.SHA512()))
    with pytest.raises(CertificateRejected, match="SHA-224"):
        identity.check_aws_acceptance(_self_signed(ec_key, digest=hashes.SHA224()))


def test_more_than_one_certificate_is_refused() -> None:
    with pytest.raises(CertificateRejected, match="2 certificates"):
        identity.check_aws_acceptance(fixture("factory-leaf.pem") + fixture("factory-ca.pem"))


def test_all_problems_are_reported_together() -> None:
    # RSA-1024 and expired at once: both named in one message.
    with pytest.raises(CertificateRejected) as caught:
        identity.check_aws_acceptance(fixture("bad-rsa-1024.pem"), now=datetime(2099, 1, 1, tzinfo=UTC))
    assert "(2 problems)" in caught.value.title
    assert "1024 bits" in caught.value.message and "expired" in caught.value.message


# ---- factory CA and CSRs -----------------------------------------------------------------------------------------


def test_ca_signed_identity_chains_to_the_factory_ca(issuer: identity.LoadedIssuer) -> None:
    ident = identity.new_identity("sensor-a-SA00000001", issuer=issuer, days=365)
    cert = parsed(ident)
    ca = x509.load_pem_x509_certificate(fixture("factory-ca.pem"))
    cert.verify_directly_issued_by(ca)  # raises if the signature or names do not chain
    assert cert.issuer == ca.subject
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    identity.check_identity(ident)
    assert "CN=Fixture Factory CA" in repr(issuer)


def test_ca_signed_leaf_never_outlives_its_ca(issuer: identity.LoadedIssuer) -> None:
    ident = identity.new_identity("t-long", issuer=issuer, days=36500)
    assert parsed(ident).not_valid_after_utc <= issuer.certificate.not_valid_after_utc


def test_factory_ca_passphrase_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = Issuer(str(CERTS / "factory-ca.pem"), str(CERTS / "factory-ca.key"), CA_ENV)
    monkeypatch.delenv(CA_ENV, raising=False)
    with pytest.raises(InputError, match=CA_ENV):
        identity.load_issuer(ca)
    monkeypatch.setenv(CA_ENV, "wrong")
    with pytest.raises(InputError, match="does not open"):
        identity.load_issuer(ca)
    with pytest.raises(InputError, match="passphrase_env"):
        identity.load_issuer(Issuer(ca.certificate_file, ca.key_file))


def test_a_leaf_is_not_a_factory_ca() -> None:
    with pytest.raises(InputError, match="not a CA certificate"):
        identity.load_issuer(Issuer(str(CERTS / "factory-leaf.pem"), str(CERTS / "factory-leaf.key")))


def _csr(key, *, subject: str = "device-chosen", ask_for_ca: bool = False, der: bool = False) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    )
    if ask_for_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


@pytest.mark.parametrize("der", [False, True])
def test_sign_csr_uses_our_name_and_extensions(issuer: identity.LoadedIssuer, der: bool) -> None:
    device_key = ec.generate_private_key(ec.SECP256R1())
    pem = identity.sign_csr(
        _csr(device_key, ask_for_ca=True, der=der), issuer, common_name="tracker_T1", days=90
    )
    cert = x509.load_pem_x509_certificate(pem.encode())
    cert.verify_directly_issued_by(issuer.certificate)
    assert cert.subject.rfc4514_string() == "CN=tracker_T1"  # not the CSR's subject
    assert (
        cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    )  # not what it asked
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == device_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    identity.check_aws_acceptance(pem)


def test_sign_csr_without_issuer_is_an_input_error() -> None:
    with pytest.raises(InputError, match="factory CA"):
        identity.sign_csr(_csr(ec.generate_private_key(ec.SECP256R1())), None, common_name="t", days=1)


def test_sign_csr_refuses_a_forged_request(issuer: identity.LoadedIssuer) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    der = _csr(signer, der=True)
    spki = [
        k.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for k in (signer, other)
    ]
    # Same request, someone else's public key: parses fine, but the signature is not by that key.
    forged = der.replace(spki[0], spki[1])
    assert forged != der and x509.load_der_x509_csr(forged).is_signature_valid is False
    with pytest.raises(UnitFault, match="does not verify"):
        identity.sign_csr(forged, issuer, common_name="t", days=1)
    with pytest.raises(UnitFault, match="cannot be decoded"):
        identity.sign_csr(b"garbage", issuer, common_name="t", days=1)


def test_sign_csr_refuses_a_weak_device_key(issuer: identity.LoadedIssuer) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(UnitFault, match="1024 bits"):
        identity.sign_csr(_csr(weak), issuer, common_name="t", days=1)


# ---- keys never leak -------------------------------------------------------------------------------------------


def test_identity_repr_and_pickle_never_show_the_key() -> None:
    ident = identity.load_identity_file(CERTS / "ec-p256.pem", key_path=CERTS / "ec-p256.key")
    assert ident.private_key is not None
    for line in key_lines(fixture("ec-p256.key")):
        assert line not in repr(ident) and line not in str(ident)
    assert "PRIVATE KEY" not in repr(ident)
    with pytest.raises(TypeError):
        pickle.dumps(ident)


def _everything_said(error: BaseException) -> str:
    """All text an error can show: str, repr, as_dict, the whole formatted traceback and its chain."""
    parts = ["".join(traceback.format_exception(error))]
    seen: BaseException | None = error
    while seen is not None:
        parts += [str(seen), repr(seen)]
        if isinstance(seen, StationError):
            parts.append(str(seen.as_dict()))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _provocations() -> list[tuple[str, object]]:
    key = fixture("ec-p256.key")
    encrypted = fixture("factory-ca.key")
    damaged_key = key[: len(key) // 2] + b"\n-----END PRIVATE KEY-----\n"
    return [
        ("mismatch", lambda: identity.load_identity_bytes(fixture("rsa-2048.pem"), key_data=key)),
        ("garbage cert with key", lambda: identity.load_identity_bytes(b"junk" + key, key_data=key)),
        ("damaged key", lambda: identity.load_identity_bytes(fixture("ec-p256.pem"), key_data=damaged_key)),
        ("wrong key password", lambda: identity.load_identity_bytes(fixture("factory-ca.pem"), key_data=encrypted,
                                                                     password=b"no")),
        ("key only", lambda: identity.load_identity_bytes(key)),
        ("p12 wrong password", lambda: identity.load_identity_bytes(fixture("ec-p256-secret.p12"), password=b"x")),
        ("check key-only", lambda: identity.check_aws_acceptance(key.decode())),
        ("swapped", lambda: identity.check_identity(Identity(
            fixture("rsa-2048.pem").decode(), "x", Secret(key)))),
    ]  # fmt: skip


@pytest.mark.parametrize(("label", "provoke"), _provocations(), ids=[p[0] for p in _provocations()])
def test_errors_never_carry_key_bytes(label: str, provoke) -> None:
    with pytest.raises(StationError) as caught:
        provoke()
    said = _everything_said(caught.value)
    for secret in ("ec-p256.key", "factory-ca.key"):
        for line in key_lines(fixture(secret)):
            assert line[:24] not in said, f"{label}: key material in the error"


# ---- property tests: malformed input → a StationError, never a traceback ----------------------------------------

SAMPLES = [
    fixture(name)
    for name in (
        "ec-p256.pem",
        "rsa-2048.pem",
        "keychain-client.cer",
        "keychain-client.p12",
        "ec-p256-secret.p12",
        "cert-only.p12",
        "ec-p256.key",
        "bad-ed25519.pem",
    )
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


inputs = st.one_of(st.binary(max_size=600), mutated(), st.text(max_size=300).map(str.encode))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=inputs, password=st.sampled_from([None, b"", b"secret"]), with_key=st.booleans())
def test_any_bytes_load_or_give_a_station_error(data: bytes, password: bytes | None, with_key: bool) -> None:
    key_data = fixture("ec-p256.key") if with_key else None
    try:
        ident = identity.load_identity_bytes(data, password=password, key_data=key_data)
    except StationError as error:
        assert error.title and error.message and error.next_action
        return
    assert re.fullmatch(r"[0-9a-f]{64}", ident.certificate_id)
    assert ident.certificate_id == identity.certificate_id(ident.certificate_pem)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=inputs)
def test_any_bytes_are_accepted_or_rejected_never_crash(data: bytes) -> None:
    try:
        identity.check_aws_acceptance(data)
    except CertificateRejected as error:
        assert error.message and error.next_action
        accepted = False
    else:
        accepted = True
    try:
        cert_id = identity.certificate_id(data)
    except StationError:
        assert not accepted, "an accepted certificate must have an id"
        return
    assert re.fullmatch(r"[0-9a-f]{64}", cert_id)


def _fixture_issuer() -> identity.LoadedIssuer:
    cert = x509.load_pem_x509_certificate(fixture("factory-ca.pem"))
    key = serialization.load_pem_private_key(fixture("factory-ca.key"), CA_PASSPHRASE.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return identity.LoadedIssuer(cert, key, fixture("factory-ca.pem").decode(), "CN=Fixture Factory CA")


CSR_SAMPLES = [_csr(ec.generate_private_key(ec.SECP256R1()), der=der) for der in (False, True)]


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.sampled_from(CSR_SAMPLES).flatmap(
            lambda csr: st.tuples(st.integers(0, len(csr) - 1), st.integers(1, 255)).map(
                lambda edit: csr[: edit[0]] + bytes([csr[edit[0]] ^ edit[1]]) + csr[edit[0] + 1 :]
            )
        ),
    )
)
def test_any_csr_bytes_sign_or_give_a_station_error(data: bytes) -> None:
    try:
        pem = identity.sign_csr(data, ISSUER, common_name="t", days=1)
    except StationError:
        return
    identity.check_aws_acceptance(pem)


ISSUER = _fixture_issuer()


# ---- fixtures are what the generator makes -------------------------------------------------------------------


@pytest.mark.slow
def test_committed_fixtures_match_the_generator() -> None:
    import importlib.util

    path = CERTS.parent / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
