"""Lab fault "lose": AWS processes the request, then the answer is lost (connection closed, or held past the
client's read timeout). For every AWS step the station uses, boto3 sees what it would see against AWS — a
closed connection or a read timeout — while the request's effect is there when looked at afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from station.lab.control import ControlPlane, RemoteControl, Throttle

pytestmark = pytest.mark.lab

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5)
SHORT_READ = Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=0.4
)
POLICY_DOCUMENT = '{"Version": "2012-10-17", "Statement": []}'


@pytest.fixture(scope="module")
def plane_server() -> Iterator[ControlPlane]:
    with ControlPlane(throttling=False) as plane:
        yield plane


@pytest.fixture
def plane(plane_server: ControlPlane) -> Iterator[ControlPlane]:
    plane_server.faults.reset()
    plane_server.throttle = Throttle(enabled=False)
    yield plane_server
    plane_server.faults.reset()


def make_cert() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lost-answer-unit")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


@dataclass
class World:
    """What one step needs in place before it runs (made with a clean client) and names to look up after."""

    iot: Any
    pem: str = ""
    cert_id: str = ""
    arn: str = ""
    thing: str = ""
    policy: str = ""

    def certificate(self, status: str = "ACTIVE") -> None:
        self.pem = make_cert()
        answer = self.iot.register_certificate_without_ca(certificatePem=self.pem, status=status)
        self.cert_id, self.arn = answer["certificateId"], answer["certificateArn"]

    def make_thing(self) -> None:
        self.iot.create_thing(thingName=self.thing)

    def make_policy(self) -> None:
        self.iot.create_policy(policyName=self.policy, policyDocument=POLICY_DOCUMENT)

    def status(self) -> str | None:
        try:
            return str(
                self.iot.describe_certificate(certificateId=self.cert_id)["certificateDescription"]["status"]
            )
        except ClientError as error:
            assert code(error) == "ResourceNotFoundException"
            return None

    def thing_exists(self) -> bool:
        try:
            self.iot.describe_thing(thingName=self.thing)
            return True
        except ClientError as error:
            assert code(error) == "ResourceNotFoundException"
            return False

    def policies(self) -> list[str]:
        return [p["policyName"] for p in self.iot.list_attached_policies(target=self.arn)["policies"]]

    def things(self) -> list[str]:
        return list(self.iot.list_principal_things(principal=self.arn)["things"])


@dataclass(frozen=True)
class Step:
    """One AWS step: its prerequisites, the call (on the faulty client) and the proof it took effect."""

    setup: Callable[[World], None]
    call: Callable[[Any, World], Any]
    took_effect: Callable[[World], bool]


def _register(w: World) -> None:
    w.pem = make_cert()


def _register_call(iot: Any, w: World) -> Any:
    return iot.register_certificate_without_ca(certificatePem=w.pem, status="ACTIVE")


def _registered(w: World) -> bool:
    from hashlib import sha256

    der = x509.load_pem_x509_certificate(w.pem.encode()).public_bytes(serialization.Encoding.DER)
    w.cert_id = sha256(der).hexdigest()
    return w.status() == "ACTIVE"


def _attached_setup(w: World) -> None:
    w.certificate()
    w.make_policy()
    w.make_thing()
    w.iot.attach_policy(policyName=w.policy, target=w.arn)
    w.iot.attach_thing_principal(thingName=w.thing, principal=w.arn)


STEPS: dict[str, Step] = {
    "RegisterCertificateWithoutCA": Step(_register, _register_call, _registered),
    "CreateThing": Step(
        lambda w: None, lambda iot, w: iot.create_thing(thingName=w.thing), World.thing_exists
    ),
    "CreatePolicy": Step(
        lambda w: None,
        lambda iot, w: iot.create_policy(policyName=w.policy, policyDocument=POLICY_DOCUMENT),
        lambda w: w.iot.get_policy(policyName=w.policy)["policyName"] == w.policy,
    ),
    "AttachPolicy": Step(
        lambda w: (w.certificate(), w.make_policy()),
        lambda iot, w: iot.attach_policy(policyName=w.policy, target=w.arn),
        lambda w: w.policies() == [w.policy],
    ),
    "AttachThingPrincipal": Step(
        lambda w: (w.certificate(), w.make_thing()),
        lambda iot, w: iot.attach_thing_principal(thingName=w.thing, principal=w.arn),
        lambda w: w.things() == [w.thing],
    ),
    "UpdateCertificate": Step(
        lambda w: w.certificate(),
        lambda iot, w: iot.update_certificate(certificateId=w.cert_id, newStatus="INACTIVE"),
        lambda w: w.status() == "INACTIVE",
    ),
    "DeleteCertificate": Step(
        lambda w: w.certificate(status="INACTIVE"),
        lambda iot, w: iot.delete_certificate(certificateId=w.cert_id),
        lambda w: w.status() is None,
    ),
    "DetachPolicy": Step(
        _attached_setup,
        lambda iot, w: iot.detach_policy(policyName=w.policy, target=w.arn),
        lambda w: w.policies() == [],
    ),
    "DetachThingPrincipal": Step(
        _attached_setup,
        lambda iot, w: iot.detach_thing_principal(thingName=w.thing, principal=w.arn),
        lambda w: w.things() == [],
    ),
    "DeleteThing": Step(
        lambda w: w.make_thing(),
        lambda iot, w: iot.delete_thing(thingName=w.thing),
        lambda w: not w.thing_exists(),
    ),
    # Read-only: nothing to take effect, the answer is still lost (the station must not read "not found").
    "DescribeCertificate": Step(
        lambda w: w.certificate(),
        lambda iot, w: iot.describe_certificate(certificateId=w.cert_id),
        lambda w: w.status() == "ACTIVE",
    ),
}


@pytest.mark.parametrize("how", ["closed", "timeout"])
@pytest.mark.parametrize("api", list(STEPS))
def test_each_step_takes_effect_and_its_answer_is_lost(plane: ControlPlane, api: str, how: str) -> None:
    tag = secrets.token_hex(4)
    clean = plane.client("iot", config=NO_RETRIES)
    world = World(clean, thing=f"lost-{tag}", policy=f"lost-policy-{tag}")
    step = STEPS[api]
    step.setup(world)
    if how == "closed":
        faulty, expected, delay = clean, ConnectionClosedError, 0.0
    else:
        faulty, expected, delay = plane.client("iot", config=SHORT_READ), ReadTimeoutError, 0.8
    plane.faults.set("lose", api=api, count=1, delay_s=delay)

    with pytest.raises(expected):
        step.call(faulty, world)

    assert plane.faults.fired["lose"] == 1
    assert plane.faults.list() == []  # count=1: spent
    assert step.took_effect(world), f"{api} did not take effect before its answer was lost"


def test_a_retry_after_a_lost_register_meets_already_exists(plane: ControlPlane) -> None:
    """What a station's retry sees against AWS: the certificate is there, registered by the lost call."""
    iot = plane.client("iot", config=NO_RETRIES)
    pem = make_cert()
    plane.faults.set("lose", api="RegisterCertificateWithoutCA", count=1)
    with pytest.raises(ConnectionClosedError):
        iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    with pytest.raises(ClientError) as caught:
        iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")
    assert code(caught.value) == "ResourceAlreadyExistsException"


def test_other_apis_answer_while_one_loses_its_answers(plane: ControlPlane) -> None:
    iot = plane.client("iot", config=NO_RETRIES)
    plane.faults.set("lose", api="CreateThing")
    thing = f"lost-{secrets.token_hex(4)}"
    for _ in range(2):
        with pytest.raises(ConnectionClosedError):
            iot.create_thing(thingName=f"{thing}-{secrets.token_hex(2)}")
    iot.list_things(maxResults=1)  # another API answers
    assert plane.faults.fired["lose"] == 2 and len(plane.faults.list()) == 1  # until cleared


def test_a_fraction_loses_a_deterministic_share(plane: ControlPlane) -> None:
    iot = plane.client("iot", config=NO_RETRIES)
    plane.faults.set("lose", api="CreateThing", fraction=0.5, seed=7)
    lost = 0
    names = [f"lost-{secrets.token_hex(4)}" for _ in range(12)]
    for name in names:
        try:
            iot.create_thing(thingName=name)
        except ConnectionClosedError:
            lost += 1
    assert 2 <= lost <= 10 and plane.faults.fired["lose"] == lost
    assert all(iot.describe_thing(thingName=name)["thingName"] == name for name in names)  # all made


def test_lose_over_the_http_admin_path(plane: ControlPlane) -> None:
    remote = RemoteControl(plane.endpoint_url)
    fault_id = remote.faults.set("lose", api="CreateThing", count=2)
    assert remote.faults.list()[0]["kind"] == "lose"
    iot = plane.client("iot", config=NO_RETRIES)
    thing = f"lost-{secrets.token_hex(4)}"
    with pytest.raises(ConnectionClosedError):
        iot.create_thing(thingName=thing)
    assert iot.describe_thing(thingName=thing)["thingName"] == thing
    assert remote.faults.clear(fault_id) is True
    iot.create_thing(thingName=thing + "-b")  # answered again
    assert remote.status()["faults_fired"]["lose"] == 1


def test_a_shared_ledger_write_whose_answer_is_lost_is_not_taken_for_a_refusal(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DynamoDB ledger on the lab: the transaction that opens a journal entry commits, its answer is lost,
    botocore sends it again and the retry is refused by its own conditions. The ledger must see its own write
    (the head holds the hash it computed), not 'the item already exists'."""
    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY
    from station.ledger import open_ledger

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAB_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LAB_SECRET_ACCESS_KEY)
    url = f"dynamodb://lost-{secrets.token_hex(3)}?region=eu-west-1&endpoint_url={plane.endpoint_url}"
    with open_ledger(url, station_id="st-lost") as ledger:
        ledger.journal_open(attempt_id="a0", serial="SIM000100")  # the station's first append
        plane.faults.set("lose", api="TransactWriteItems", count=1)
        journal_id = ledger.journal_open(attempt_id="a1", serial="SIM000101")
        assert plane.faults.fired["lose"] >= 1
        assert [e.serial for e in ledger.journal_pending()] == ["SIM000100", "SIM000101"]
        assert [e.id for e in ledger.journal_pending()][-1] == journal_id
        assert ledger.audit().ok
