"""Verify with the unmodified awsiotsdk against the lab: moto as the control plane, the lab's TLS front + broker
as the data plane (certificates judged live by the registry, per-topic policies, AWS's hang-ups).

The station's own Registry provisions, revokes and rolls back; verify must pass for a provisioned unit and
fail with the right family and reason otherwise. Every server runs on 127.0.0.1 in the test process.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cloud_fixtures import (
    FIXTURES,
    OTHER_ACCOUNT_ID,
    OTHER_REGION,
    OTHER_ROLE_ARN,
    REGION,
    make_target,
    moto_server,
    provision,
    unique,
)

from station.errors import StationError, StationFault, UnitFault
from station.identity import new_identity
from station.lab.dataplane import DataPlane
from station.model import Identity, Target
from station.ratelimit import RateBudget
from station.registry import Registry
from station.verify import VerifyResult, _ConnectPacer, verify

pytestmark = pytest.mark.lab

ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def data_plane(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    """One TLS front per (account, region) the tests use, judging by moto's live registries."""
    plane = DataPlane(
        {(ACCOUNT, REGION): 0, (ACCOUNT, OTHER_REGION): 0, (OTHER_ACCOUNT_ID, REGION): 0},
        tmp_path_factory.mktemp("lab-state"),
    )
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def lab_target(
    url: str, plane: DataPlane, *, account: str = ACCOUNT, region: str = REGION, **extra: Any
) -> Target:
    other = account != ACCOUNT
    return make_target(
        url,
        region=region,
        account_id=None if other else ACCOUNT,
        role_arn=OTHER_ROLE_ARN if other else None,
        endpoint="localhost",
        port=plane.port_for(account, region),
        **extra,
    )


def check(
    registry: Registry, identity: Identity, thing: str, plane: DataPlane, **options: Any
) -> VerifyResult:
    host, port = registry.data_endpoint()
    return verify(
        identity,
        thing_name=thing,
        host=host,
        port=port,
        ca_bytes=plane.ca_bytes,
        where=registry.where,
        **options,
    )


def assert_no_key(error: BaseException, identity: Identity) -> None:
    assert identity.private_key is not None
    key_text = identity.private_key.reveal().decode()
    body = "".join(key_text.strip().splitlines()[1:-1])
    for text in (str(error), repr(error), repr(error.args), json.dumps(getattr(error, "as_dict", dict)())):
        assert body[:40] not in text.replace("\n", "")
        assert "PRIVATE KEY" not in text


@pytest.fixture
def registry(moto_url: str, data_plane: DataPlane) -> Registry:
    return Registry(lab_target(moto_url, data_plane), budget=RateBudget(), station_id="verify-test")


# ---------------------------------------------------------------------------------------------- PASS


def test_a_provisioned_unit_verifies(registry: Registry, data_plane: DataPlane) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    provision(registry, identity, thing)
    timings = [check(registry, identity, thing, data_plane, messages=3) for _ in range(2)]
    for result in timings:
        assert result.messages == 3 and result.thing_name == thing and result.connect_attempts == 1
        assert 0 < result.connect_ms <= result.total_ms
        assert result.subscribe_ms > 0 and result.echo_ms > 0
        assert result.total_ms >= result.connect_ms + result.subscribe_ms + result.echo_ms
    # AWS allows one CONNECT per second per client id: back-to-back verifies are paced.
    totals = [r.total_ms for r in timings[1:]]
    assert all(total >= 500 for total in totals), totals
    print(f"\nverify timings (ms): {[r.as_dict() for r in timings]}")


def test_transfer_to_another_region_and_account_connects_at_each_endpoint(
    registry: Registry,
    data_plane: DataPlane,
    moto_url: str,
) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    provision(registry, identity, thing)
    for account, region in ((ACCOUNT, OTHER_REGION), (OTHER_ACCOUNT_ID, REGION)):
        dest = Registry(
            lab_target(moto_url, data_plane, account=account, region=region),
            budget=RateBudget(),
            station_id="t",
        )
        with pytest.raises(UnitFault):  # not registered there yet: that endpoint hangs up
            check(dest, identity, thing, data_plane, connect_attempts=1)
        provision(dest, Identity(identity.certificate_pem, identity.certificate_id), thing)  # a transfer
        assert check(dest, identity, thing, data_plane).messages == 3
    assert check(registry, identity, thing, data_plane).messages == 3


# ---------------------------------------------------------------------------------------------- FAIL: not accepted


def test_after_revoke_the_endpoint_hangs_up(registry: Registry, data_plane: DataPlane) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    provision(registry, identity, thing)
    check(registry, identity, thing, data_plane)
    registry.revoke(identity.certificate_id, delete_thing=thing)
    started = time.monotonic()
    with pytest.raises(UnitFault) as failed:
        check(registry, identity, thing, data_plane, connect_attempts=2)
    elapsed = time.monotonic() - started
    assert failed.value.message.startswith(f"certificate not accepted by {ACCOUNT}/{REGION}:")
    assert thing in failed.value.message
    assert_no_key(failed.value, identity)
    # The retry after a hang-up respects one CONNECT per second for the client id.
    assert elapsed >= 0.9


def test_an_unregistered_certificate_is_not_accepted(registry: Registry, data_plane: DataPlane) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    with pytest.raises(UnitFault, match="certificate not accepted"):
        check(registry, identity, thing, data_plane, connect_attempts=1)


# ---------------------------------------------------------------------------------------------- FAIL: policy


def policy(*statements: dict[str, Any]) -> str:
    connect = {
        "Effect": "Allow",
        "Action": "iot:Connect",
        "Resource": "arn:aws:iot:REGION:ACCOUNT:client/${iot:Connection.Thing.ThingName}",
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [connect, *statements]})


TOPIC = "arn:aws:iot:REGION:ACCOUNT:topic/things/${iot:Connection.Thing.ThingName}/verify"
FILTER = "arn:aws:iot:REGION:ACCOUNT:topicfilter/things/${iot:Connection.Thing.ThingName}/verify"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        # No subscribe on the verify topic: SUBACK 0x80.
        (policy({"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": TOPIC}), "subscri"),
        # Subscribe but no publish: the endpoint hangs up on the PUBLISH (MQTT 3.1.1 has no negative PUBACK).
        (
            policy(
                {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": FILTER},
                {"Effect": "Allow", "Action": "iot:Receive", "Resource": TOPIC},
            ),
            "publishing",
        ),
        # Publish and subscribe but no receive: the messages never come back.
        (
            policy(
                {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": FILTER},
                {"Effect": "Allow", "Action": "iot:Publish", "Resource": TOPIC},
            ),
            "did not come back",
        ),
    ],
    ids=["no-subscribe", "no-publish", "no-receive"],
)
def test_a_policy_that_forbids_the_verify_topic_fails_with_the_reason_and_rolls_back(
    document: str,
    reason: str,
    moto_url: str,
    data_plane: DataPlane,
) -> None:
    registry = Registry(
        lab_target(moto_url, data_plane, policy_document=document, policy_name=unique("narrow")),
        budget=RateBudget(),
    )
    thing = unique("unit")
    identity = new_identity(thing)
    registration = provision(registry, identity, thing)
    with pytest.raises(UnitFault) as failed:
        check(registry, identity, thing, data_plane, timeout_s=2.0)
    assert reason in failed.value.message
    assert f"things/{thing}/verify" in failed.value.message
    assert failed.value.next_action
    assert_no_key(failed.value, identity)
    # Part of a provisioning attempt: the rollback leaves nothing registered.
    registry.rollback(registration)
    assert registry.describe(identity.certificate_id) is None


# ---------------------------------------------------------------------------------------------- ERROR: the station


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_listening_is_a_station_fault() -> None:
    identity = new_identity(unique("unit"))
    with pytest.raises(StationFault) as failed:
        verify(
            identity, thing_name="unit-x", host="127.0.0.1", port=closed_port(), ca_bytes=None, timeout_s=5
        )
    assert failed.value.title == "Endpoint unreachable"
    assert "AWS_IO_SOCKET_CONNECTION_REFUSED" in failed.value.message
    assert_no_key(failed.value, identity)


def test_an_unknown_host_is_a_station_fault() -> None:
    identity = new_identity(unique("unit"))
    with pytest.raises(StationFault) as failed:
        verify(
            identity,
            thing_name="unit-x",
            host="no-such-endpoint.invalid",
            port=8883,
            ca_bytes=None,
            timeout_s=5,
        )
    assert failed.value.title in ("Endpoint not found", "Verify timed out")
    assert_no_key(failed.value, identity)


def test_a_server_the_station_does_not_trust_is_a_station_fault(
    registry: Registry, data_plane: DataPlane
) -> None:
    thing = unique("unit")
    identity = new_identity(thing)
    provision(registry, identity, thing)
    wrong_ca = (FIXTURES / "certs" / "factory-ca.pem").read_bytes()
    host, port = registry.data_endpoint()
    with pytest.raises(StationFault) as failed:
        verify(identity, thing_name=thing, host=host, port=port, ca_bytes=wrong_ca, timeout_s=2.0)
    # awscrt reports a distrusted server only after s2n's blinding delay; within 2 s it is a timeout.
    assert failed.value.title in ("TLS with the endpoint failed", "Verify timed out")
    assert_no_key(failed.value, identity)


def test_no_private_key_means_no_host_verify() -> None:
    identity = new_identity(unique("unit"))
    public_only = Identity(certificate_pem=identity.certificate_pem, certificate_id=identity.certificate_id)
    with pytest.raises(StationFault, match="private key"):
        verify(public_only, thing_name="x", host="127.0.0.1", port=closed_port(), ca_bytes=None)


def test_a_key_that_does_not_belong_to_the_certificate_is_the_units_fault() -> None:
    first, second = new_identity(unique("unit")), new_identity(unique("unit"))
    mixed = Identity(first.certificate_pem, first.certificate_id, second.private_key)
    with pytest.raises(UnitFault) as failed:
        verify(mixed, thing_name="x", host="127.0.0.1", port=closed_port(), ca_bytes=None)
    assert_no_key(failed.value, second)


def test_verify_logs_no_key_material(
    registry: Registry, data_plane: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    thing = unique("unit")
    identity = new_identity(thing)
    with pytest.raises(StationError):
        check(registry, identity, thing, data_plane, connect_attempts=2)
    assert identity.private_key is not None
    assert "PRIVATE KEY" not in caplog.text


# ---------------------------------------------------------------------------------------------- pacing


def test_the_connect_pacer_spaces_one_client_id_and_refuses_past_the_deadline() -> None:
    pacer = _ConnectPacer(interval_s=0.2)
    start = time.monotonic()
    assert pacer.reserve("a", start + 5)
    assert pacer.reserve("b", start + 5)  # another client id is not held back
    assert time.monotonic() - start < 0.15
    assert pacer.reserve("a", start + 5)
    assert time.monotonic() - start >= 0.19
    # The next slot for "a" is 0.2 s away: a deadline before it is refused at once, without waiting.
    before = time.monotonic()
    assert pacer.reserve("a", before + 0.05) is False
    assert time.monotonic() - before < 0.05
    # A connect that finished late moves the next slot: spacing counts from the end of the last connect.
    pacer.mark("b")
    marked = time.monotonic()
    assert pacer.reserve("b", marked + 5)
    assert time.monotonic() - marked >= 0.19
