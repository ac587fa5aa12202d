"""The lab control plane answers boto3 the way AWS IoT does where the station depends on it.

Every test talks to a real moto server on 127.0.0.1 through boto3 (no mocks): certificate ids, AWS's acceptance
rules, stable endpoints, throttling, accounts and regions, fault injection (Python and HTTP admin), bad input.
"""

from __future__ import annotations

import functools
import hashlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from station.errors import StationFault
from station.lab.control import (
    DEFAULT_ACCOUNT_ID,
    SECOND_ACCOUNT_ID,
    ControlPlane,
    LabError,
    RemoteControl,
    Throttle,
)

pytestmark = pytest.mark.lab

REGION = "ap-northeast-1"
OTHER_REGION = "eu-west-1"
UNKNOWN_ID = "0" * 64  # a certificate id no test registers
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def control_plane_server() -> Iterator[ControlPlane]:
    """One control plane for this module (moto's state is process-wide anyway)."""
    with ControlPlane(data_endpoints={(SECOND_ACCOUNT_ID, OTHER_REGION): "other.localhost"}) as plane:
        yield plane


@pytest.fixture
def control_plane(control_plane_server: ControlPlane) -> Iterator[ControlPlane]:
    """The module's control plane with fresh throttle buckets and no faults, restored after the test."""
    plane = control_plane_server
    plane.throttle = Throttle()
    plane.faults.reset()
    yield plane
    plane.faults.reset()
    plane.throttle = Throttle()


@pytest.fixture(scope="module")
def _iot_client(control_plane_server: ControlPlane) -> Any:
    return control_plane_server.client("iot", config=NO_RETRIES)


@pytest.fixture
def iot(control_plane: ControlPlane, _iot_client: Any) -> Any:
    """IoT client in the default account and region, retries off so every lab answer is visible."""
    return _iot_client


# ------------------------------------------------------------------------------------------- certificates


@functools.cache
def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make; certificates stay unique (random serial) when they share one."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_cert(
    key: Any = None,
    *,
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> str:
    """A self-signed certificate PEM; defaults: fresh EC P-256 key, SHA-256, valid from 5 min ago for a day."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab-test-unit")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=1))
    )
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        cert = builder.sign(key, None)
    else:
        cert = builder.sign(key, algorithm or hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")  # DER of OID 1.2.840.113549.1.1.11
_SHA1_WITH_RSA = bytes.fromhex("06092a864886f70d010105")  # DER of OID 1.2.840.113549.1.1.5, same length


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = (
        bytes([size])
        if size < 0x80
        else bytes([0x80 | ((size.bit_length() + 7) // 8)])
        + size.to_bytes((size.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def make_sha1_cert() -> str:
    """An RSA-2048 certificate signed with SHA-1 (cryptography refuses to build one, so re-sign its TBS)."""
    key = rsa_key(2048)
    template = x509.load_pem_x509_certificate(make_cert(key).encode())
    tbs = template.tbs_certificate_bytes
    assert tbs.count(_SHA256_WITH_RSA) == 1
    tbs = tbs.replace(_SHA256_WITH_RSA, _SHA1_WITH_RSA)
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    algorithm = _der(0x30, _SHA1_WITH_RSA + b"\x05\x00")
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    cert = x509.load_der_x509_certificate(der)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def der_sha256(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def _now() -> datetime:
    return datetime.now(UTC)


BAD_CERTIFICATES: dict[str, Callable[[], str]] = {
    "rsa-1024": lambda: make_cert(rsa_key(1024)),
    "sha1-signed": make_sha1_cert,
    "ed25519": lambda: make_cert(ed25519.Ed25519PrivateKey.generate()),
    "ed448": lambda: make_cert(ed448.Ed448PrivateKey.generate()),
    "secp256k1": lambda: make_cert(ec.generate_private_key(ec.SECP256K1())),
    "expired": lambda: make_cert(
        not_before=_now() - timedelta(days=10), not_after=_now() - timedelta(days=1)
    ),
    "not-yet-valid": lambda: make_cert(
        not_before=_now() + timedelta(days=1), not_after=_now() + timedelta(days=9)
    ),
    "garbage": lambda: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    "not-pem": lambda: "hello, I am not a certificate",
    "too-long": lambda: make_cert() + "\n" * 65536,
}


# ---------------------------------------------------------------------------------------------- lifecycle


def test_starts_fast_on_a_free_port_and_releases_it_on_stop(control_plane_server: ControlPlane) -> None:
    # moto is already imported by the module fixture: this measures the lab's own start.
    plane = ControlPlane()
    started = time.perf_counter()
    plane.start()
    try:
        assert plane.start_seconds is not None and plane.start_seconds < 0.5
        assert plane.port > 0 and plane.port != control_plane_server.port
        assert plane.endpoint_url == f"http://127.0.0.1:{plane.port}"
        iot = plane.client("iot", config=NO_RETRIES)
        assert iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == "localhost"
        assert time.perf_counter() - started < 5.0  # ready to answer, client creation included (loaded box)
    finally:
        port = plane.port
        stopped = time.perf_counter()
        plane.stop()
    assert time.perf_counter() - stopped < 1.0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_port_in_use_is_a_clear_lab_error(control_plane: ControlPlane) -> None:
    with pytest.raises(LabError) as caught:
        ControlPlane(port=control_plane.port).start()
    error = caught.value
    assert isinstance(error, StationFault)
    assert str(control_plane.port) in error.message
    assert "port 0" in error.next_action


def test_requests_leave_no_log_lines_on_stderr(
    control_plane: ControlPlane, iot: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    iot.list_policies()
    with pytest.raises(ClientError):
        iot.register_certificate_without_ca(certificatePem="garbage", status="ACTIVE")
    for kind in ("drop", "down"):  # a closed or reset socket must not print a traceback either
        control_plane.faults.set(kind, count=1)
        with pytest.raises(ConnectionClosedError):
            iot.list_policies()
    assert _raw_http(control_plane.port, b"GET / HTTP/1.1 junk\r\n\r\n").startswith(b"HTTP/1.1 400")
    iot.list_policies()
    out, err = capfd.readouterr()
    assert err == "" and out == ""


# ------------------------------------------------------------------------------------------- certificates


def test_certificate_id_is_sha256_of_the_der(iot: Any) -> None:
    pem = make_cert()
    answer = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    assert answer["certificateId"] == der_sha256(pem)
    assert answer["certificateArn"] == f"arn:aws:iot:{REGION}:{DEFAULT_ACCOUNT_ID}:cert/{der_sha256(pem)}"
    described = iot.describe_certificate(certificateId=der_sha256(pem))["certificateDescription"]
    assert described["status"] == "ACTIVE"


@pytest.mark.parametrize("kind", sorted(BAD_CERTIFICATES))
def test_register_without_ca_refuses_what_aws_refuses(iot: Any, kind: str) -> None:
    pem = BAD_CERTIFICATES[kind]()
    with pytest.raises(ClientError) as caught:
        iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    assert error_code(caught.value) == "CertificateValidationException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert caught.value.response["Error"]["Message"].startswith("The ")


@pytest.mark.parametrize("kind", ["rsa-1024", "sha1-signed", "expired", "garbage"])
def test_register_with_ca_call_applies_the_same_rules(iot: Any, kind: str) -> None:
    with pytest.raises(ClientError) as caught:
        iot.register_certificate(certificatePem=BAD_CERTIFICATES[kind](), status="ACTIVE")
    assert error_code(caught.value) == "CertificateValidationException"


def test_a_refused_certificate_is_not_registered(iot: Any) -> None:
    pem = BAD_CERTIFICATES["sha1-signed"]()
    with pytest.raises(ClientError):
        iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    with pytest.raises(ClientError) as caught:
        iot.describe_certificate(certificateId=der_sha256(pem))
    assert error_code(caught.value) == "ResourceNotFoundException"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="ec-p256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ec-p384"),
        pytest.param(lambda: rsa_key(2048), id="rsa-2048"),
    ],
)
def test_good_certificates_are_accepted(iot: Any, key: Callable[[], Any]) -> None:
    pem = make_cert(key(), algorithm=hashes.SHA384())
    answer = iot.register_certificate_without_ca(certificatePem=pem, status="INACTIVE")
    assert answer["certificateId"] == der_sha256(pem)


def test_duplicate_registration_is_409_with_the_existing_arn(iot: Any) -> None:
    pem = make_cert()
    first = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    with pytest.raises(ClientError) as caught:
        iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    assert error_code(caught.value) == "ResourceAlreadyExistsException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert caught.value.response.get("resourceArn") == first["certificateArn"]


def test_certificate_from_csr_certifies_the_csrs_own_key(iot: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-made-key")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    answer = iot.create_certificate_from_csr(
        certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode(), setAsActive=True
    )
    cert = x509.load_pem_x509_certificate(answer["certificatePem"].encode())
    assert cert.public_key() == key.public_key()  # the device's key works with it
    assert cert.subject == name
    assert answer["certificateId"] == der_sha256(answer["certificatePem"])
    described = iot.describe_certificate(certificateId=answer["certificateId"])["certificateDescription"]
    assert described["status"] == "ACTIVE"


def test_provision_and_the_aws_delete_order_pass_through(iot: Any) -> None:
    """Every call the station's registry makes, including those with an ARN in the path, reaches moto."""
    pem = make_cert()
    arn = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")["certificateArn"]
    thing, policy = f"lab-thing-{der_sha256(pem)[:8]}", f"lab-policy-{der_sha256(pem)[:8]}"
    iot.create_thing(thingName=thing)
    iot.create_policy(policyName=policy, policyDocument='{"Version": "2012-10-17", "Statement": []}')
    iot.attach_policy(policyName=policy, target=arn)
    iot.attach_thing_principal(thingName=thing, principal=arn)
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == [policy]
    assert iot.list_principal_things(principal=arn)["things"] == [thing]
    assert iot.list_thing_principals(thingName=thing)["principals"] == [arn]

    with pytest.raises(ClientError) as caught:  # AWS refuses to delete an ACTIVE certificate
        iot.delete_certificate(certificateId=der_sha256(pem))
    assert error_code(caught.value) == "CertificateStateException"
    iot.detach_policy(policyName=policy, target=arn)
    iot.detach_thing_principal(thingName=thing, principal=arn)
    iot.update_certificate(certificateId=der_sha256(pem), newStatus="INACTIVE")
    iot.delete_certificate(certificateId=der_sha256(pem))
    iot.delete_thing(thingName=thing)
    iot.delete_policy(policyName=policy)
    with pytest.raises(ClientError) as caught:
        iot.describe_certificate(certificateId=der_sha256(pem))
    assert error_code(caught.value) == "ResourceNotFoundException"


def test_csr_with_a_weak_key_is_refused(iot: Any) -> None:
    weak = rsa_key(1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(weak, hashes.SHA256())
    with pytest.raises(ClientError) as caught:
        iot.create_certificate_from_csr(
            certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode(), setAsActive=True
        )
    assert error_code(caught.value) == "InvalidRequestException"


# ----------------------------------------------------------------------------------------------- endpoints


def test_describe_endpoint_is_stable_per_account_region(control_plane: ControlPlane, iot: Any) -> None:
    first = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert first == "localhost"
    assert iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == first
    assert iot.describe_endpoint(endpointType="iot:CredentialProvider")["endpointAddress"] == first
    other = control_plane.client("iot", account_id=SECOND_ACCOUNT_ID, region=OTHER_REGION, config=NO_RETRIES)
    assert other.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == "other.localhost"
    with pytest.raises(ClientError) as caught:
        iot.describe_endpoint(endpointType="iot:Nonsense")
    assert error_code(caught.value) == "InvalidRequestException"


# ---------------------------------------------------------------------------------------------- throttling


def burst(count: int, call: Callable[[], Any], *, workers: int = 5) -> list[str]:
    """Run `call` `count` times from a few threads (as a station's slots do); outcome per call: ok or code."""

    def one(_: int) -> str:
        try:
            call()
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            assert exc.response["Error"]["Message"] == "Rate exceeded"
            return error_code(exc)
        return "ok"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(count)))


def test_a_burst_of_50_registrations_is_throttled_without_retries(control_plane: ControlPlane) -> None:
    iot = control_plane.client("iot", region=OTHER_REGION, config=NO_RETRIES)
    started = time.perf_counter()
    outcomes = burst(
        50, lambda: iot.register_certificate_without_ca(certificatePem=make_cert(), status="ACTIVE")
    )
    elapsed = time.perf_counter() - started
    assert set(outcomes) == {"ok", "ThrottlingException"}
    # a burst of 10, then 10 per second: never more successes than the bucket allows
    assert 10 <= outcomes.count("ok") <= 10 + int(elapsed * 10) + 1
    assert control_plane.throttle.throttled == outcomes.count("ThrottlingException")


def test_adaptive_retry_mode_gets_all_50_through(control_plane: ControlPlane) -> None:
    iot = control_plane.client("iot", config=Config(retries={"mode": "adaptive", "max_attempts": 10}))
    registered: list[str] = []

    def register() -> None:
        pem = make_cert()
        answer = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
        assert answer["certificateId"] == der_sha256(pem)
        registered.append(answer["certificateId"])

    started = time.perf_counter()
    assert burst(50, register) == ["ok"] * 50
    assert len(set(registered)) == 50
    assert control_plane.throttle.throttled >= 1  # botocore met throttles and retried them away
    assert time.perf_counter() - started >= (50 - 10) / 10 * 0.9  # and the quota held


def test_token_bucket_burst_equals_rate_and_refills_per_account_region() -> None:
    now = [0.0]
    throttle = Throttle({"AttachPolicy": 2}, clock=lambda: now[0])
    assert [throttle.admit("A", "r1", "AttachPolicy") for _ in range(3)] == [True, True, False]
    assert throttle.admit("A", "r2", "AttachPolicy") and throttle.admit("B", "r1", "AttachPolicy")
    now[0] = 0.5  # half a second at 2 TPS: one token back
    assert [throttle.admit("A", "r1", "AttachPolicy") for _ in range(2)] == [True, False]
    assert all(throttle.admit("A", "r1", "DescribeEndpoint") for _ in range(100))  # no quota: unlimited
    assert throttle.quotas["RegisterCertificateWithoutCA"] == 10  # AWS's default
    throttle.enabled = False
    assert all(throttle.admit("A", "r1", "AttachPolicy") for _ in range(10))
    assert throttle.throttled == 2
    with pytest.raises(ValueError):
        throttle.set_quotas({"AttachPolicy": -1})


def _describe_unknown(iot: Any) -> str:
    try:
        iot.describe_certificate(certificateId=UNKNOWN_ID)
    except ClientError as exc:
        return error_code(exc)
    return "found"


def test_throttling_switched_off_at_run_time(control_plane: ControlPlane, iot: Any) -> None:
    control_plane.throttle.set_quotas({"DescribeCertificate": 0.05})  # one call, then one per 20 s
    control_plane.throttling = False
    assert [_describe_unknown(iot) for _ in range(5)] == ["ResourceNotFoundException"] * 5
    control_plane.throttling = True
    assert [_describe_unknown(iot) for _ in range(2)] == ["ResourceNotFoundException", "ThrottlingException"]


def test_throttling_off_from_the_constructor() -> None:
    with ControlPlane(throttling=False, quotas={"RegisterCertificateWithoutCA": 0.05}) as plane:
        iot = plane.client("iot", config=NO_RETRIES)
        for _ in range(3):
            iot.register_certificate_without_ca(certificatePem=make_cert(), status="ACTIVE")
        assert plane.throttle.throttled == 0


def test_quotas_are_per_account_region_and_overridable() -> None:
    with ControlPlane(quotas={"DescribeEndpoint": 0.05, "DescribeCertificate": None}) as plane:
        home = plane.client("iot", config=NO_RETRIES)
        # quota removed: more calls in a row than the default 10 pass
        assert {_describe_unknown(home) for _ in range(12)} == {"ResourceNotFoundException"}
        home.describe_endpoint(endpointType="iot:Data-ATS")
        with pytest.raises(ClientError) as caught:
            home.describe_endpoint(endpointType="iot:Data-ATS")
        assert error_code(caught.value) == "ThrottlingException"
        # another region and another account have their own buckets
        plane.client("iot", region=OTHER_REGION, config=NO_RETRIES).describe_endpoint(
            endpointType="iot:Data-ATS"
        )
        plane.client("iot", account_id=SECOND_ACCOUNT_ID, config=NO_RETRIES).describe_endpoint(
            endpointType="iot:Data-ATS"
        )


# ------------------------------------------------------------------------------------ accounts and regions


def test_assume_role_lands_in_the_other_accounts_registry(control_plane: ControlPlane, iot: Any) -> None:
    other = control_plane.client("iot", account_id=SECOND_ACCOUNT_ID, config=NO_RETRIES)
    caller = control_plane.client("sts", account_id=SECOND_ACCOUNT_ID).get_caller_identity()
    assert caller["Account"] == SECOND_ACCOUNT_ID
    pem = make_cert()
    answer = other.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    assert answer["certificateArn"] == f"arn:aws:iot:{REGION}:{SECOND_ACCOUNT_ID}:cert/{der_sha256(pem)}"
    with pytest.raises(ClientError) as caught:
        iot.describe_certificate(certificateId=der_sha256(pem))
    assert error_code(caught.value) == "ResourceNotFoundException"
    # the same certificate may be registered in both accounts at once (multi-account registration)
    assert iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")[
        "certificateId"
    ] == der_sha256(pem)


def test_regions_are_separate_registries(control_plane: ControlPlane, iot: Any) -> None:
    pem = make_cert()
    iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    elsewhere = control_plane.client("iot", region=OTHER_REGION, config=NO_RETRIES)
    with pytest.raises(ClientError) as caught:
        elsewhere.describe_certificate(certificateId=der_sha256(pem))
    assert error_code(caught.value) == "ResourceNotFoundException"
    arn = elsewhere.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")["certificateArn"]
    assert f":{OTHER_REGION}:{DEFAULT_ACCOUNT_ID}:" in arn


# -------------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "code"), [(503, "ServiceUnavailableException"), (500, "InternalFailureException")]
)
def test_server_error_fault_for_the_next_n_calls_of_one_api(
    control_plane: ControlPlane, iot: Any, status: int, code: str
) -> None:
    control_plane.faults.set("error", status=status, count=2, api="ListPolicies")
    iot.describe_endpoint(endpointType="iot:Data-ATS")  # another API is untouched
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            iot.list_policies()
        assert error_code(caught.value) == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    iot.list_policies()  # the count is spent
    assert control_plane.faults.list() == []


def test_default_retries_ride_out_a_single_server_error(control_plane: ControlPlane) -> None:
    iot = control_plane.client("iot", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    control_plane.faults.set("error", count=1)
    assert iot.list_policies()["ResponseMetadata"]["RetryAttempts"] == 1


def test_fraction_faults_are_deterministic_for_a_seed(control_plane: ControlPlane, iot: Any) -> None:
    def pattern() -> list[bool]:
        fault_id = control_plane.faults.set("error", fraction=0.5, seed=42, api="DescribeEndpoint")
        seen = []
        for _ in range(16):
            try:
                iot.describe_endpoint(endpointType="iot:Data-ATS")
                seen.append(True)
            except ClientError:
                seen.append(False)
        control_plane.faults.clear(fault_id)
        return seen

    first = pattern()
    assert pattern() == first
    assert 0 < first.count(False) < 16


def test_sts_errors_come_in_the_query_protocol_shape(control_plane: ControlPlane) -> None:
    control_plane.faults.set("error", status=503, count=1, api="AssumeRole")
    sts = control_plane.client("sts", config=NO_RETRIES)
    with pytest.raises(ClientError) as caught:
        sts.assume_role(RoleArn=control_plane.role_arn(SECOND_ACCOUNT_ID), RoleSessionName="lab")
    assert error_code(caught.value) == "ServiceUnavailableException"


def test_latency_fault_delays_only_its_api(control_plane: ControlPlane, iot: Any) -> None:
    control_plane.faults.set("latency", delay_s=0.3, api="DescribeEndpoint", count=1)
    started = time.perf_counter()
    iot.list_policies()
    assert time.perf_counter() - started < 0.25
    started = time.perf_counter()
    iot.describe_endpoint(endpointType="iot:Data-ATS")
    assert time.perf_counter() - started >= 0.3


def test_dropped_connection_gets_no_answer(control_plane: ControlPlane, iot: Any) -> None:
    control_plane.faults.set("drop", count=1)
    with pytest.raises(ConnectionClosedError):
        iot.list_policies()
    iot.list_policies()
    assert control_plane.faults.fired["drop"] == 1


def test_down_fails_everything_until_cleared(control_plane: ControlPlane, iot: Any) -> None:
    control_plane.faults.set("down")
    for _ in range(3):
        with pytest.raises(ConnectionClosedError):
            iot.list_policies()
    with pytest.raises(ConnectionClosedError):
        control_plane.client("sts", config=NO_RETRIES).get_caller_identity()
    control_plane.faults.clear()
    iot.list_policies()


def test_faults_over_the_http_admin_path(control_plane: ControlPlane, iot: Any) -> None:
    remote = RemoteControl(control_plane.endpoint_url)
    fault_id = remote.faults.set("error", status=503, api="ListPolicies")
    assert [fault["id"] for fault in remote.faults.list()] == [fault_id]
    with pytest.raises(ClientError) as caught:
        iot.list_policies()
    assert error_code(caught.value) == "ServiceUnavailableException"
    assert remote.faults.clear(fault_id) is True
    assert remote.faults.clear(fault_id) is False
    iot.list_policies()

    remote.faults.set("down")
    with pytest.raises(ConnectionClosedError):
        iot.list_policies()
    assert remote.status()["faults"][0]["kind"] == "down"  # the admin path still answers while "down"
    remote.faults.clear()
    iot.list_policies()

    remote.faults.set("drop", count=1)
    with pytest.raises(ConnectionClosedError):
        iot.list_policies()

    remote.faults.set("latency", delay_s=0.2, count=1)
    started = time.perf_counter()
    iot.list_policies()
    assert time.perf_counter() - started >= 0.2


def test_throttling_over_the_http_admin_path(control_plane: ControlPlane, iot: Any) -> None:
    remote = RemoteControl(control_plane.endpoint_url)
    state = remote.set_throttling(False)
    assert state["enabled"] is False and control_plane.throttling is False
    remote.set_throttling(True, quotas={"ListPolicies": 0.05}, reset=True)
    iot.list_policies()
    with pytest.raises(ClientError) as caught:
        iot.list_policies()
    assert error_code(caught.value) == "ThrottlingException"


def test_bad_admin_requests_are_refused_clearly(control_plane: ControlPlane) -> None:
    remote = RemoteControl(control_plane.endpoint_url)
    with pytest.raises(LabError, match="kind"):
        remote.faults.set("meteor")
    with pytest.raises(LabError, match="fraction"):
        remote.faults.set("error", fraction=3)
    with pytest.raises(LabError, match="unknown fault option"):
        remote.faults.set("error", colour="red")
    with pytest.raises(LabError, match="No lab admin route"):
        remote.call("GET", "/nothing-here")
    with pytest.raises(LabError, match="Lab unreachable"):
        RemoteControl("http://127.0.0.1:9", timeout_s=1).status()
    assert remote.faults.list() == []


# ---------------------------------------------------------------------------------------------- bad input


def test_every_iot_operation_routes_back_to_itself() -> None:
    """The lab names each request's API from botocore's model; no two IoT operations may be confused."""
    import botocore.session

    from station.lab import _wire

    model = botocore.session.get_session().get_service_model("iot")
    wrong = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        path, _, fixed_query = http["requestUri"].partition("?")
        sample = re.sub(r"\{[^}]+\}", "arn%3Aaws%3Aiot%3Aeu-west-1%3A1%3Acert%2Fab", path)
        query = {part.split("=")[0]: ["v"] for part in fixed_query.split("&") if part}
        if _wire.resolve_rest_operation("iot", http["method"], sample, query) != name:
            wrong.append(name)
    assert wrong == []
    assert len(model.operation_names) > 200


def _raw_http(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(
    control_plane: ControlPlane, iot: Any
) -> None:
    port = control_plane.port
    assert _raw_http(port, b"\x16\x03\x01garbage that is not http\r\n\r\n").split(b" ")[1].startswith(b"4")
    auth = (
        "AWS4-HMAC-SHA256 Credential=AKIALABSTATION000000/20250101/ap-northeast-1/iot/aws4_request, "
        "SignedHeaders=host, Signature=00"
    )
    body = b"{not json"
    bad_json = (
        f"POST /certificate/register-no-ca HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    answer = _raw_http(port, bad_json)
    assert answer.startswith(b"HTTP/1.1 400") and b"InvalidRequestException" in answer
    unknown = f"GET /no/such/iot/operation HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode()
    assert _raw_http(port, unknown).startswith(b"HTTP/1.1 404")
    iot.list_policies()


def test_an_oversized_admin_body_is_refused_with_its_size_not_ignored(control_plane: ControlPlane) -> None:
    import json
    import urllib.error
    import urllib.request

    from station.lab.control import MAX_ADMIN_BODY

    body = json.dumps({"kind": "down", "pad": "x" * (MAX_ADMIN_BODY + 10)}).encode()
    request = urllib.request.Request(
        control_plane.endpoint_url + "/lab-api/faults",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 413
    assert str(len(body)) in caught.value.read().decode()
    assert RemoteControl(control_plane.endpoint_url).faults.list() == []  # nothing was set
