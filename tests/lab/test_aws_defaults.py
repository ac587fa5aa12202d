"""What the lab does with parameters a caller leaves out, checked against the AWS IoT API reference.

Each test calls the lab with the unmodified boto3 exactly as the station or the field report does, leaving a
defaulted parameter out, and asserts AWS's documented answer (API reference sections named per test). The
acceptance test of issue 11 runs the field report's step 3 through the whole lab with the unmodified awsiotsdk:
a deleted certificate registered again *without* `status` is INACTIVE and hangs up (awscrt 5134) until it is
activated and a policy is attached.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt_connection_builder
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from station.identity import new_identity
from station.lab import Lab
from station.model import Identity

pytestmark = pytest.mark.lab

HANGUP = ("AWS_ERROR_MQTT_UNEXPECTED_HANGUP", 5134)
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
)
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), accounts=1, regions=["us-east-1"], throttling=False) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def iot(lab: Lab) -> Any:
    return lab.control.client("iot", region="us-east-1", config=NO_RETRIES)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status_of(iot: Any, certificate_id: str) -> str:
    return str(iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]["status"])


def code_of(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


# ---------------------------------------------------------------------------------------- certificate status


def test_register_without_ca_and_no_status_is_inactive(iot: Any) -> None:
    """RegisterCertificateWithoutCA: `status` omitted → the certificate is registered, not active."""
    answer = iot.register_certificate_without_ca(certificatePem=new_identity("no-status").certificate_pem)
    description = iot.describe_certificate(certificateId=answer["certificateId"])["certificateDescription"]
    assert description["status"] == "INACTIVE"


@pytest.mark.parametrize("status", ["ACTIVE", "INACTIVE"])
def test_register_without_ca_keeps_an_explicit_status(iot: Any, status: str) -> None:
    answer = iot.register_certificate_without_ca(
        certificatePem=new_identity("explicit").certificate_pem, status=status
    )
    assert status_of(iot, answer["certificateId"]) == status


def test_every_listed_certificate_carries_a_status(iot: Any) -> None:
    iot.register_certificate_without_ca(certificatePem=new_identity("listed").certificate_pem)
    listed = iot.list_certificates()["certificates"]
    assert listed and all(entry.get("status") for entry in listed)


def _ca_and_leaf() -> tuple[str, str]:
    now = dt.datetime.now(dt.UTC)
    delta = dt.timedelta
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique("lab-defaults-ca"))])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - delta(minutes=5))
        .not_valid_after(now + delta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - delta(minutes=5))
        .not_valid_after(now + delta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem).decode(), leaf.public_bytes(pem).decode()


def test_register_with_ca_defaults_to_inactive_and_set_as_active_wins(iot: Any) -> None:
    """RegisterCertificate: neither `status` nor `setAsActive` → INACTIVE; `setAsActive=true` → ACTIVE."""
    ca_pem, leaf_pem = _ca_and_leaf()
    ca = iot.register_ca_certificate(caCertificate=ca_pem, certificateMode="SNI_ONLY")
    # RegisterCACertificate: setAsActive defaults to false, allowAutoRegistration to false.
    ca_description = iot.describe_ca_certificate(certificateId=ca["certificateId"])["certificateDescription"]
    assert ca_description["status"] == "INACTIVE"
    assert ca_description.get("autoRegistrationStatus", "DISABLE") == "DISABLE"
    plain = iot.register_certificate(certificatePem=leaf_pem, caCertificatePem=ca_pem)
    assert status_of(iot, plain["certificateId"]) == "INACTIVE"
    iot.update_certificate(certificateId=plain["certificateId"], newStatus="INACTIVE")
    iot.delete_certificate(certificateId=plain["certificateId"])
    active = iot.register_certificate(certificatePem=leaf_pem, caCertificatePem=ca_pem, setAsActive=True)
    assert status_of(iot, active["certificateId"]) == "ACTIVE"


def test_create_keys_and_certificate_without_set_as_active_is_inactive(iot: Any) -> None:
    """CreateKeysAndCertificate / CreateCertificateFromCsr: setAsActive defaults to false."""
    made = iot.create_keys_and_certificate()
    assert status_of(iot, made["certificateId"]) == "INACTIVE"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unique("csr-default"))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    signed = iot.create_certificate_from_csr(
        certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert status_of(iot, signed["certificateId"]) == "INACTIVE"


@pytest.mark.parametrize("status", ["PENDING_TRANSFER", "PENDING_ACTIVATION", "SOMETHING"])
def test_update_certificate_refuses_internal_and_unknown_statuses(iot: Any, status: str) -> None:
    """UpdateCertificate: PENDING_TRANSFER and PENDING_ACTIVATION are AWS-internal and throw."""
    answer = iot.register_certificate_without_ca(certificatePem=new_identity("upd").certificate_pem)
    with pytest.raises(ClientError) as error:
        iot.update_certificate(certificateId=answer["certificateId"], newStatus=status)
    assert code_of(error) == "InvalidRequestException"
    assert status_of(iot, answer["certificateId"]) == "INACTIVE"


# ------------------------------------------------------------------------------------------------ forceDelete


def _registered_with_policy(iot: Any) -> tuple[str, str, str]:
    answer = iot.register_certificate_without_ca(
        certificatePem=new_identity("force").certificate_pem, status="INACTIVE"
    )
    policy = unique("force-policy")
    iot.create_policy(policyName=policy, policyDocument=ALLOW_ALL)
    iot.attach_policy(policyName=policy, target=answer["certificateArn"])
    return answer["certificateId"], answer["certificateArn"], policy


def test_delete_without_force_delete_refuses_a_certificate_with_a_policy(iot: Any) -> None:
    """DeleteCertificate: forceDelete defaults to false → 409 while a policy is attached."""
    certificate_id, _arn, _policy = _registered_with_policy(iot)
    with pytest.raises(ClientError) as error:
        iot.delete_certificate(certificateId=certificate_id)
    assert code_of(error) == "DeleteConflictException"


def test_force_delete_takes_the_policy_attachments_with_it(iot: Any) -> None:
    """forceDelete=true deletes an inactive certificate with policies; later deletes in the registry still work
    (moto alone leaves a dangling attachment that makes them 404)."""
    certificate_id, arn, policy = _registered_with_policy(iot)
    iot.delete_certificate(certificateId=certificate_id, forceDelete=True)
    with pytest.raises(ClientError) as error:
        iot.describe_certificate(certificateId=certificate_id)
    assert code_of(error) == "ResourceNotFoundException"
    assert iot.list_targets_for_policy(policyName=policy)["targets"] == []
    other = iot.register_certificate_without_ca(
        certificatePem=new_identity("after-force").certificate_pem, status="INACTIVE"
    )
    iot.delete_certificate(certificateId=other["certificateId"])  # no 404 from the forced one
    assert arn not in {c["certificateArn"] for c in iot.list_certificates()["certificates"]}


def test_force_delete_still_refuses_an_active_certificate(iot: Any) -> None:
    certificate_id, _arn, _policy = _registered_with_policy(iot)
    iot.update_certificate(certificateId=certificate_id, newStatus="ACTIVE")
    with pytest.raises(ClientError) as error:
        iot.delete_certificate(certificateId=certificate_id, forceDelete=True)
    assert code_of(error) == "CertificateStateException"


# ------------------------------------------------------------------------------------------ things and groups


def test_create_thing_defaults_no_type_no_attributes(iot: Any) -> None:
    name = unique("thing")
    iot.create_thing(thingName=name)
    described = iot.describe_thing(thingName=name)
    assert "thingTypeName" not in described
    assert described["attributes"] == {}
    assert described["version"] == 1


def test_create_thing_again_is_idempotent_and_a_different_one_conflicts(iot: Any) -> None:
    """CreateThing: same name and configuration → the same thing; a different configuration → 409."""
    name = unique("thing")
    first = iot.create_thing(thingName=name)
    again = iot.create_thing(thingName=name)
    assert again["thingId"] == first["thingId"]
    with pytest.raises(ClientError) as error:
        iot.create_thing(thingName=name, attributePayload={"attributes": {"line": "2"}})
    assert code_of(error) == "ResourceAlreadyExistsException"
    assert iot.describe_thing(thingName=name)["attributes"] == {}


def test_create_thing_with_a_missing_type_is_not_found(iot: Any) -> None:
    with pytest.raises(ClientError) as error:
        iot.create_thing(thingName=unique("thing"), thingTypeName=unique("no-such-type"))
    assert code_of(error) == "ResourceNotFoundException"


def test_thing_type_and_group_defaults(iot: Any) -> None:
    """CreateThingType: not deprecated, no properties; CreateThingGroup: no parent, empty properties."""
    type_name, group = unique("type"), unique("group")
    iot.create_thing_type(thingTypeName=type_name)
    described_type = iot.describe_thing_type(thingTypeName=type_name)
    assert described_type["thingTypeMetadata"]["deprecated"] is False
    iot.create_thing_group(thingGroupName=group)
    described_group = iot.describe_thing_group(thingGroupName=group)
    assert "parentGroupName" not in described_group["thingGroupMetadata"]
    assert described_group["version"] == 1
    with pytest.raises(ClientError) as error:
        iot.add_thing_to_thing_group(thingGroupName=unique("no-such-group"), thingName=unique("t"))
    assert code_of(error) == "ResourceNotFoundException"


# -------------------------------------------------------------------------------- acceptance: field report 3


def _connect(lab: Lab, identity: Identity, client_id: str) -> None:
    assert identity.private_key is not None
    connection = mqtt_connection_builder.mtls_from_bytes(
        endpoint="localhost",
        port=lab.registry(region="us-east-1").data_port,
        cert_bytes=identity.certificate_pem.encode(),
        pri_key_bytes=identity.private_key.reveal(),
        ca_bytes=lab.ca_bytes,
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=30,
        tcp_connect_timeout_ms=3000,
        protocol_operation_timeout_ms=5000,
    )
    connection.connect().result(10)
    connection.disconnect().result(10)


def _assert_hangup(lab: Lab, identity: Identity) -> None:
    with pytest.raises(AwsCrtError) as error:
        _connect(lab, identity, unique("refused"))
    assert (error.value.name, error.value.code) == HANGUP


def test_deleted_and_reregistered_without_status_is_inactive_until_activated_with_a_policy(
    lab: Lab, iot: Any, tmp_path: Path
) -> None:
    identity = new_identity("reregistered")
    first = iot.register_certificate_without_ca(certificatePem=identity.certificate_pem, status="ACTIVE")
    policy = unique("allow")
    iot.create_policy(policyName=policy, policyDocument=ALLOW_ALL)
    iot.attach_policy(policyName=policy, target=first["certificateArn"])
    _connect(lab, identity, unique("before"))
    iot.detach_policy(policyName=policy, target=first["certificateArn"])
    iot.update_certificate(certificateId=first["certificateId"], newStatus="INACTIVE")
    iot.delete_certificate(certificateId=first["certificateId"])
    _assert_hangup(lab, identity)

    again = iot.register_certificate_without_ca(certificatePem=identity.certificate_pem)  # no status
    assert again["certificateId"] == first["certificateId"]
    assert status_of(iot, again["certificateId"]) == "INACTIVE"
    _assert_hangup(lab, identity)
    iot.update_certificate(certificateId=again["certificateId"], newStatus="ACTIVE")
    _assert_hangup(lab, identity)  # active, but no policy yet
    iot.attach_policy(policyName=policy, target=again["certificateArn"])
    _connect(lab, identity, unique("after"))
