"""The registry against a real local control plane: register, idempotency, rollback, revoke, transfer, budget.

Every test talks through boto3 to a moto server on 127.0.0.1 (no mocks). What the station did is checked with
an independent boto3 client and an independently computed certificate id (SHA-256 of the DER).
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.credentials import RefreshableCredentials
from cloud_fixtures import (
    BROAD_POLICY,
    FIXTURES,
    OTHER_ACCOUNT_ID,
    OTHER_REGION,
    OTHER_ROLE_ARN,
    REGION,
    der_sha256,
    lab_control_plane,
    make_target,
    moto_server,
    provision,
    unique,
)

from station.errors import CertificateRejected, StationFault, UnitFault
from station.identity import new_identity
from station.lab.control import ControlPlane
from station.model import Identity, Target
from station.ratelimit import RateBudget
from station.registry import Registration, Registry, session_for, shared_budget

pytestmark = pytest.mark.lab


# ---------------------------------------------------------------------------------------------- helpers


@functools.cache
def _observer_session() -> boto3.Session:
    # One session for every observer client: each new session would parse the IoT model again (~0.7 s).
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)


@functools.cache
def iot_client(url: str, region: str = REGION, account: str | None = None) -> Any:
    """An independent boto3 client to look at what the station left behind (any account, via STS)."""
    session = _observer_session()
    if account is None:
        return session.client("iot", region_name=region, endpoint_url=url)
    sts = session.client("sts", region_name=region, endpoint_url=url)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/observer", RoleSessionName="observer")[
        "Credentials"
    ]
    return session.client(
        "iot",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


# Every page: the lab is shared by the whole test session, so the registry may hold more than one page.
def certificate_ids(iot: Any) -> set[str]:
    pages = iot.get_paginator("list_certificates").paginate()
    return {c["certificateId"] for page in pages for c in page["certificates"]}


def thing_names(iot: Any) -> set[str]:
    pages = iot.get_paginator("list_things").paginate()
    return {t["thingName"] for page in pages for t in page["things"]}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with lab_control_plane() as plane:
        yield plane


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts connections (stands in for a reachable data endpoint in preflight)."""
    server = socket.create_server(("127.0.0.1", 0))
    yield int(server.getsockname()[1])
    server.close()


@pytest.fixture
def target(moto_url: str) -> Target:
    return make_target(moto_url)


@pytest.fixture
def registry(target: Target) -> Registry:
    # A private budget per test: its stats count every HTTP request this registry sent.
    return Registry(target, budget=RateBudget(), station_id="test")


# ---------------------------------------------------------------------------------------------- register


def test_register_makes_an_active_certificate_named_by_its_der_hash(
    registry: Registry, moto_url: str
) -> None:
    identity = new_identity(unique("unit"))
    registration = registry.register(identity)
    expected_id = der_sha256(identity.certificate_pem)
    assert registration.certificate_id == expected_id
    assert registration.created is True
    assert registration.certificate_arn.endswith(f":cert/{expected_id}")
    assert registration.account_id == "123456789012" and registration.region == REGION
    described = iot_client(moto_url).describe_certificate(certificateId=expected_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"
    assert registry.describe(expected_id)["status"] == "ACTIVE"  # type: ignore[index]


def test_registering_twice_is_harmless(registry: Registry, moto_url: str) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    first = provision(registry, identity, thing)
    second = provision(registry, identity, thing)
    assert first.created and first.thing_created and first.policy_attached and first.thing_attached
    assert second.certificate_id == first.certificate_id
    assert second.certificate_arn == first.certificate_arn
    # The second attempt made nothing, so it claims nothing: its rollback must not undo the first's work.
    assert not (second.created or second.thing_created or second.policy_attached or second.thing_attached)
    registry.rollback(second)
    iot = iot_client(moto_url)
    assert sorted(c for c in certificate_ids(iot) if c == first.certificate_id) == [first.certificate_id]
    assert iot.describe_certificate(certificateId=first.certificate_id)["certificateDescription"][
        "status"
    ] == ("ACTIVE")
    assert iot.list_principal_things(principal=first.certificate_arn)["things"] == [thing]
    assert iot.list_targets_for_policy(policyName=registry.target.policy_name)["targets"] == [
        first.certificate_arn
    ]


def test_register_reactivates_an_inactive_certificate_and_rollback_restores_it(
    registry: Registry,
    moto_url: str,
) -> None:
    identity = new_identity(unique("unit"))
    iot = iot_client(moto_url)
    iot.register_certificate_without_ca(certificatePem=identity.certificate_pem, status="INACTIVE")
    registration = registry.register(identity)
    assert registration.created is False and registration.activated is True
    assert registry.describe(identity.certificate_id)["status"] == "ACTIVE"  # type: ignore[index]
    registry.rollback(registration)
    # It was not ours to delete: it goes back to how we found it.
    assert iot.describe_certificate(certificateId=identity.certificate_id)["certificateDescription"][
        "status"
    ] == ("INACTIVE")


@pytest.mark.parametrize(
    "name",
    [
        "bad-rsa-1024.pem",
        "bad-sha1.pem",
        "bad-expired.pem",
        "bad-not-yet-valid.pem",
        "bad-ed25519.pem",
        "bad-ec-p521.pem",
        "garbage.pem",
        "truncated.pem",
    ],
)
def test_a_bad_certificate_fails_before_any_aws_call(name: str, target: Target, moto_url: str) -> None:
    pem = (FIXTURES / "certs" / name).read_text(errors="replace")
    before = certificate_ids(iot_client(moto_url))
    budget = RateBudget()
    registry = Registry(target, budget=budget)
    with pytest.raises(CertificateRejected) as rejected:
        registry.register(Identity(certificate_pem=pem, certificate_id=""), origin="file")
    assert rejected.value.message and rejected.value.next_action
    # From a unit (its own certificate) the same problem is the unit's fault: FAIL, not an input error.
    with pytest.raises(UnitFault):
        registry.register(Identity(certificate_pem=pem, certificate_id=""), origin="unit")
    assert budget.stats() == {}, "no request may reach AWS for a certificate AWS would refuse"
    assert certificate_ids(iot_client(moto_url)) == before


def test_an_identity_whose_id_does_not_match_its_certificate_is_refused(registry: Registry) -> None:
    identity = new_identity(unique("unit"))
    wrong = Identity(certificate_pem=identity.certificate_pem, certificate_id="0" * 64)
    with pytest.raises(StationFault, match="Certificate id mismatch"):
        registry.register(wrong)
    assert registry.budget.stats() == {}


# ---------------------------------------------------------------------------------------------- rollback


def test_rollback_leaves_nothing(registry: Registry, moto_url: str) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    registration = provision(registry, identity, thing)
    iot = iot_client(moto_url)
    assert identity.certificate_id in certificate_ids(iot)
    assert thing in thing_names(iot)
    assert iot.list_targets_for_policy(policyName=registry.target.policy_name)["targets"] == [
        registration.certificate_arn
    ]
    registry.rollback(registration)
    assert identity.certificate_id not in certificate_ids(iot)
    assert thing not in thing_names(iot)
    assert iot.list_targets_for_policy(policyName=registry.target.policy_name)["targets"] == []
    assert registry.describe(identity.certificate_id) is None


def test_rollback_keeps_a_thing_this_attempt_did_not_make(registry: Registry, moto_url: str) -> None:
    thing = unique("unit")
    iot = iot_client(moto_url)
    iot.create_thing(thingName=thing)
    identity = new_identity(thing)
    registration = provision(registry, identity, thing)
    assert registration.thing_created is False and registration.created is True
    registry.rollback(registration)
    assert thing in thing_names(iot)
    assert identity.certificate_id not in certificate_ids(iot)
    assert iot.list_thing_principals(thingName=thing)["principals"] == []


def test_a_failed_provision_rolls_back_what_it_made(target: Target, moto_url: str) -> None:
    registry = Registry(make_target(moto_url, thing_type=unique("no-such-type")), budget=RateBudget())
    thing = unique("unit")
    identity = new_identity(thing)
    with pytest.raises(StationFault, match="thing type"):
        provision(registry, identity, thing)
    iot = iot_client(moto_url)
    assert identity.certificate_id not in certificate_ids(iot)
    assert thing not in thing_names(iot)


def test_a_rollback_that_cannot_reach_aws_says_what_is_left_and_what_to_do(target: Target) -> None:
    dead = Target(**{**target.__dict__, "endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    registry = Registry(dead, budget=RateBudget(), max_attempts=1, connect_timeout_s=1)
    registration = Registration(
        certificate_id="ab" * 32,
        certificate_arn=f"arn:aws:iot:{REGION}:123456789012:cert/{'ab' * 32}",
        created=True,
        thing_name="unit-left",
        thing_created=True,
    )
    with pytest.raises(StationFault) as failed:
        registry.rollback(registration)
    assert failed.value.title == "Rollback incomplete"
    assert "certificate abababababab" in failed.value.message and "unit-left" in failed.value.message
    assert "station reconcile" in failed.value.next_action
    with pytest.raises(StationFault) as failed:
        registry.revoke("cd" * 32, delete_thing="unit-gone")
    assert failed.value.title == "Revoke incomplete"
    assert failed.value.message.startswith(
        f"Could not revoke everything in {registry.where}: certificate cdcdcdcdcdcd…"
    )
    assert "thing 'unit-gone' remain (" in failed.value.message


# ---------------------------------------------------------------------------------------------- revoke


def test_revoke_leaves_nothing(registry: Registry, moto_url: str) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    provision(registry, identity, thing)
    assert registry.revoke(identity.certificate_id, delete_thing=thing) is True
    iot = iot_client(moto_url)
    assert identity.certificate_id not in certificate_ids(iot)
    assert thing not in thing_names(iot)
    assert iot.list_targets_for_policy(policyName=registry.target.policy_name)["targets"] == []
    # Revoking what is not there is not an error: it reports that nothing was there.
    assert registry.revoke(identity.certificate_id, delete_thing=thing) is False


def test_revoke_keeps_the_thing_unless_asked(registry: Registry, moto_url: str) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    provision(registry, identity, thing)
    registry.revoke(identity.certificate_id)
    iot = iot_client(moto_url)
    assert thing in thing_names(iot)
    assert identity.certificate_id not in certificate_ids(iot)


# ---------------------------------------------------------------------------------------------- things, policy


def test_thing_group_is_joined(moto_url: str) -> None:
    group = unique("group")
    iot = iot_client(moto_url)
    iot.create_thing_group(thingGroupName=group)
    registry = Registry(make_target(moto_url, thing_group=group), budget=RateBudget())
    thing = unique("unit")
    assert registry.create_thing(thing) is True
    assert registry.create_thing(thing) is False
    assert iot.list_things_in_thing_group(thingGroupName=group)["things"] == [thing]


def test_missing_policy_is_created_from_the_rendered_document(registry: Registry, moto_url: str) -> None:
    assert registry.ensure_policy() is True
    assert registry.ensure_policy() is False
    document = iot_client(moto_url).get_policy(policyName=registry.target.policy_name)["policyDocument"]
    assert f"arn:aws:iot:{REGION}:123456789012:client/" in document
    assert "REGION" not in document and "ACCOUNT" not in document


def test_an_over_broad_policy_is_not_created_for_a_production_target(moto_url: str) -> None:
    target = make_target(moto_url, lab=False, policy_document=BROAD_POLICY)
    with pytest.raises(StationFault, match="too broad"):
        Registry(target, budget=RateBudget()).ensure_policy()
    iot = iot_client(moto_url)
    assert target.policy_name not in {p["policyName"] for p in iot.list_policies()["policies"]}
    # The same document is fine for a lab target.
    lab = make_target(moto_url, lab=True, policy_document=BROAD_POLICY)
    assert Registry(lab, budget=RateBudget()).ensure_policy() is True


def test_a_missing_policy_without_a_document_is_a_station_fault(moto_url: str) -> None:
    registry = Registry(make_target(moto_url, policy_document=""), budget=RateBudget())
    thing = unique("unit")
    identity = new_identity(thing)
    with pytest.raises(StationFault, match="policy"):
        provision(registry, identity, thing)
    assert identity.certificate_id not in certificate_ids(iot_client(moto_url))


# ---------------------------------------------------------------------------------------------- preflight


def checks_by_name(registry: Registry) -> dict[str, Any]:
    return {check.name: check for check in registry.preflight()}


def test_preflight_passes_for_a_good_lab_target(moto_url: str, listener: int) -> None:
    registry = Registry(make_target(moto_url, endpoint="127.0.0.1", port=listener), budget=RateBudget())
    checks = checks_by_name(registry)
    assert [name for name, check in checks.items() if not check.ok] == []
    assert set(checks) == {"credentials", "endpoint", "policy", "policy scope"}
    assert "123456789012" in checks["credentials"].message


def test_preflight_refuses_a_broad_existing_policy_on_a_production_target(
    moto_url: str, listener: int
) -> None:
    name = unique("broad")
    iot_client(moto_url).create_policy(policyName=name, policyDocument=BROAD_POLICY)
    production = make_target(moto_url, lab=False, policy_name=name, endpoint="127.0.0.1", port=listener)
    checks = checks_by_name(Registry(production, budget=RateBudget()))
    assert checks["policy"].ok is True
    assert checks["policy scope"].ok is False and "iot:*" in checks["policy scope"].message
    lab = make_target(moto_url, lab=True, policy_name=name, endpoint="127.0.0.1", port=listener)
    assert checks_by_name(Registry(lab, budget=RateBudget()))["policy scope"].ok is True


def test_preflight_reports_an_unreachable_endpoint_and_wrong_account(moto_url: str) -> None:
    target = make_target(moto_url, endpoint="127.0.0.1", port=closed_port(), account_id="999999999999")
    checks = checks_by_name(Registry(target, budget=RateBudget()))
    assert checks["endpoint"].ok is False and "does not accept connections" in checks["endpoint"].message
    assert checks["credentials"].ok is False and "999999999999" in checks["credentials"].message


def test_preflight_without_a_control_plane_fails_every_check_with_a_reason() -> None:
    target = make_target(f"http://127.0.0.1:{closed_port()}")
    registry = Registry(target, budget=RateBudget(), max_attempts=1, connect_timeout_s=1)
    checks = registry.preflight()
    assert checks and all(not check.ok and check.next_action for check in checks)


def test_the_data_endpoint_is_discovered_once_and_cached(moto_url: str) -> None:
    registry = Registry(make_target(moto_url, endpoint=None, port=8883), budget=RateBudget())
    first = registry.data_endpoint()
    # moto answers a different random host on every DescribeEndpoint: the same answer means it was cached.
    assert registry.data_endpoint() == first
    assert first[1] == 8883 and first[0]
    assert registry.budget.stats()["DescribeEndpoint"].calls == 1


# ---------------------------------------------------------------------------------------------- accounts, transfer


def test_assume_role_lands_in_the_other_account_with_a_named_refreshing_session(moto_url: str) -> None:
    target = make_target(moto_url, role_arn=OTHER_ROLE_ARN, account_id=None)
    registry = Registry(target, station_id="line 1", budget=RateBudget())
    assert registry.account_id == OTHER_ACCOUNT_ID
    session = session_for(target, station_id="line 1", duration_s=900)
    arn = session.client("sts", endpoint_url=moto_url).get_caller_identity()["Arn"]
    assert arn.endswith(":assumed-role/station/station-line-1")
    credentials = session.get_credentials()
    assert isinstance(credentials, RefreshableCredentials)
    # 900 s is inside botocore's 15-minute advisory window: every use refreshes ahead of expiry.
    first = credentials.get_frozen_credentials().access_key
    assert credentials.get_frozen_credentials().access_key != first


@pytest.mark.parametrize(
    ("region", "account"),
    [(OTHER_REGION, None), (REGION, OTHER_ACCOUNT_ID)],
    ids=["another-region", "another-account"],
)
def test_transfer_registers_the_same_certificate_in_another_registry(
    region: str,
    account: str | None,
    moto_url: str,
) -> None:
    source = Registry(make_target(moto_url), budget=RateBudget())
    dest_target = make_target(
        moto_url,
        region=region,
        account_id=None if account else "123456789012",
        role_arn=OTHER_ROLE_ARN if account else None,
    )
    dest = Registry(dest_target, budget=RateBudget(), station_id="test")
    thing = unique("unit")
    identity = new_identity(thing)
    provision(source, identity, thing)

    # QA's transfer: the same certificate (no key) registered at the destination with thing and policy.
    public = Identity(identity.certificate_pem, identity.certificate_id)
    registration = provision(dest, public, thing)
    assert registration.certificate_id == der_sha256(identity.certificate_pem)
    src_iot = iot_client(moto_url)
    dst_iot = iot_client(moto_url, region=region, account=account)
    assert identity.certificate_id in certificate_ids(src_iot)
    assert identity.certificate_id in certificate_ids(dst_iot)
    assert dst_iot.list_principal_things(principal=registration.certificate_arn)["things"] == [thing]
    assert registration.certificate_arn.split(":")[3:5] == [region, account or "123456789012"]

    # Again with the source revoked: idempotent at the destination, gone at the source.
    again = provision(dest, public, thing)
    assert source.revoke(identity.certificate_id, delete_thing=thing)
    assert again.created is False
    assert identity.certificate_id not in certificate_ids(src_iot)
    assert thing not in thing_names(src_iot)
    assert identity.certificate_id in certificate_ids(dst_iot)


# ---------------------------------------------------------------------------------------------- errors, throttling


def plane_target(plane: ControlPlane, **overrides: Any) -> Target:
    return make_target(plane.endpoint_url, **overrides)


def test_aws_errors_become_operator_faults_by_code(control_plane: ControlPlane) -> None:
    registry = Registry(plane_target(control_plane), budget=RateBudget(), max_attempts=2)
    cases = [
        ("UnauthorizedException", 401, StationFault, "AWS credentials refused"),
        ("AccessDeniedException", 403, StationFault, "AWS credentials refused"),
        ("ServiceUnavailableException", 503, StationFault, "AWS IoT unavailable"),
        ("InternalFailureException", 500, StationFault, "AWS IoT unavailable"),
        ("CertificateValidationException", 400, UnitFault, "Certificate not accepted by AWS IoT"),
    ]
    try:
        for code, status, family, title in cases:
            control_plane.faults.clear()
            control_plane.faults.set("error", api="RegisterCertificateWithoutCA", status=status, code=code)
            with pytest.raises(family) as raised:
                registry.register(new_identity(unique("unit")))
            assert raised.value.title == title, code
            assert raised.value.next_action
        # The same AWS refusal of a certificate a person imported is an input error, not a bad unit.
        with pytest.raises(CertificateRejected):
            registry.register(new_identity(unique("unit")), origin="file")
        control_plane.faults.clear()
        control_plane.faults.set("down")
        with pytest.raises(StationFault) as down:
            Registry(plane_target(control_plane), budget=RateBudget(), max_attempts=1).register(
                new_identity(unique("unit"))
            )
        assert down.value.title in ("AWS IoT unreachable", "AWS IoT unavailable")
    finally:
        control_plane.faults.clear()


def test_throttling_is_waited_out_and_bounded(control_plane: ControlPlane) -> None:
    try:
        # Throttled on both of botocore's attempts, then fine: the registry waits and carries on.
        control_plane.faults.set(
            "error", api="RegisterCertificateWithoutCA", status=400, code="ThrottlingException", count=2
        )
        registry = Registry(plane_target(control_plane), budget=RateBudget(), max_attempts=2)
        assert registry.register(new_identity(unique("unit"))).created is True
        control_plane.faults.clear()
        # Throttled for good: past the bound it is a station fault that says so, not a hang.
        control_plane.faults.set(
            "error", api="RegisterCertificateWithoutCA", status=400, code="ThrottlingException"
        )
        impatient = Registry(
            plane_target(control_plane), budget=RateBudget(), max_attempts=1, throttle_wait_s=0.5
        )
        started = time.monotonic()
        with pytest.raises(StationFault) as throttled:
            impatient.register(new_identity(unique("unit")))
        assert throttled.value.title == "AWS is throttling"
        assert time.monotonic() - started < 10
    finally:
        control_plane.faults.clear()


def provision_many(registries: list[Registry], count: int, threads: int = 8) -> list[BaseException]:
    """Provision `count` units from `threads` threads, round-robin over the registries; returns the errors."""
    errors: list[BaseException] = []
    lock = threading.Lock()
    numbers = iter(range(count))

    def work(worker: int) -> None:
        registry = registries[worker % len(registries)]
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            thing = unique(f"bulk{n}")
            try:
                provision(registry, new_identity(thing), thing)
            except BaseException as error:
                with lock:
                    errors.append(error)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    return errors


@pytest.mark.slow
def test_fifty_units_under_lab_quotas_never_show_throttling(control_plane: ControlPlane) -> None:
    """8 slots, 2 Registry objects, one shared budget: AWS's default quotas are never exceeded."""
    region = "ca-central-1"
    targets = [plane_target(control_plane, region=region) for _ in range(2)]
    budget = shared_budget(targets[0])
    assert shared_budget(targets[1]) is budget
    before = budget.stats().get("RegisterCertificateWithoutCA")
    control_plane.throttle.reset()
    control_plane.throttling = True
    try:
        started = time.monotonic()
        errors = provision_many([Registry(t) for t in targets], 50)
        elapsed = time.monotonic() - started
    finally:
        control_plane.throttling = False
    assert errors == []
    assert control_plane.throttle.throttled == 0, "the shared budget must keep the station under the quota"
    calls = budget.stats()["RegisterCertificateWithoutCA"].calls - (before.calls if before else 0)
    assert calls == 50
    print(
        f"\n50 units from 8 threads: {elapsed:.2f} s, RegisterCertificateWithoutCA at {49 / elapsed:.2f} TPS (quota 10)"
    )
    # 50 registrations at 10 TPS, evenly spaced: at least 4.9 s.
    assert elapsed >= 49 / 10


@pytest.mark.slow
def test_lab_throttling_beyond_the_budget_is_waited_out(control_plane: ControlPlane) -> None:
    """A budget set above the real quota (mis-configured) still ends with every unit provisioned."""
    target = plane_target(control_plane, region="sa-east-1")
    budget = RateBudget({"RegisterCertificateWithoutCA": 100.0})
    control_plane.throttle.reset()
    control_plane.throttle.set_quotas({"RegisterCertificateWithoutCA": 4})
    control_plane.throttling = True
    try:
        errors = provision_many([Registry(target, budget=budget)], 8, threads=4)
    finally:
        control_plane.throttling = False
        control_plane.throttle.set_quotas({"RegisterCertificateWithoutCA": 10})
    assert errors == []
    assert control_plane.throttle.throttled > 0, (
        "the lab must actually have throttled for this test to mean much"
    )


# ---------------------------------------------------------------------------------------------- the rate budget


def test_the_rate_budget_holds_eight_threads_to_the_quota() -> None:
    tps = 25.0
    budget = RateBudget({"RegisterCertificateWithoutCA": tps})
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(6):
            budget.acquire("RegisterCertificateWithoutCA")
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stamps.sort()
    assert len(stamps) == 48
    achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    # Any one-second window holds at most tps calls at grant time; the stamps are taken after the grant, so
    # a loaded scheduler can pack a few late-recorded grants into one window: allow 15 %.
    busiest = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    print(
        f"\nRateBudget: quota {tps:.0f} TPS, achieved {achieved:.2f} TPS, busiest 1 s window {busiest} calls"
    )
    assert busiest <= tps * 1.15
    assert achieved <= tps * 1.02
    assert achieved >= tps * 0.8, "the budget must not throttle far below the quota either"


def test_the_rate_budget_refuses_a_wait_past_its_bound() -> None:
    budget = RateBudget({"AttachPolicy": 1.0}, max_wait_s=0.2)
    assert budget.acquire("AttachPolicy") == 0.0
    with pytest.raises(StationFault) as throttled:
        budget.acquire("AttachPolicy")
    assert throttled.value.title == "AWS is throttling"
    # The refused reservation was not taken: the next caller's wait is not pushed further out.
    assert budget.stats()["AttachPolicy"].calls == 1


def test_one_budget_per_account_and_region(moto_url: str) -> None:
    a = make_target(moto_url, account_id="123456789012", region="eu-west-3")
    b = make_target(moto_url, account_id="123456789012", region="eu-west-3")
    c = make_target(moto_url, account_id="123456789012", region="eu-central-1")
    assert shared_budget(a) is shared_budget(b)
    assert shared_budget(a) is not shared_budget(c)
    assert Registry(a).budget is Registry(b).budget


def test_rollback_through_the_lab_control_plane(control_plane: ControlPlane) -> None:
    """The same AWS delete order through the lab's control plane (ARNs in URL paths included)."""
    registry = Registry(plane_target(control_plane), budget=RateBudget())
    thing = unique("unit")
    identity = new_identity(thing)
    registration = provision(registry, identity, thing)
    registry.rollback(registration)
    assert registry.describe(identity.certificate_id) is None


def test_a_thing_whose_create_answer_was_lost_is_reported_as_maybe_made(control_plane: ControlPlane) -> None:
    """CreateThing processed, every answer lost: the registry cannot say "created", but it says the thing
    was absent a moment ago and may exist now, so the caller (the unit's attempt) can own it."""
    registry = Registry(plane_target(control_plane), budget=RateBudget(), max_attempts=1)
    name = unique("thing")
    try:
        control_plane.faults.set("lose", api="CreateThing", count=2)
        with pytest.raises(StationFault) as lost:
            registry.create_thing(name)
        assert getattr(lost.value, "thing_maybe_created", None) == name
        iot = control_plane.client("iot", region=plane_target(control_plane).region)
        assert iot.describe_thing(thingName=name)["thingName"] == name  # AWS made it
    finally:
        control_plane.faults.clear()
    assert registry.create_thing(name) is False  # there now: a second attempt would not claim it
