"""The lab data plane, judged by the unmodified awsiotsdk client against moto as the control plane.

The seed report's scenarios (issue 2's acceptance 1-8) plus the AWS behaviours around them:
unauthorized SUBSCRIBE → SUBACK 0x80, unauthorized PUBLISH → hang-up, unauthorized Receive → not delivered,
policies read at CONNECT; the MQTT framing and CONNECT parser (fragmented input, garbage); start/stop and bad
input. Every server runs on 127.0.0.1 inside the test process and stops by itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import socket
import ssl
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from awscrt import mqtt
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt_connection_builder
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from station.errors import InputError
from station.lab import _mqtt as mq
from station.lab._mqtt import MalformedPacket, PacketReader
from station.lab.broker import LabBroker
from station.lab.dataplane import DataPlane, DataPlaneEvent
from station.lab.registry_view import RegistryView

pytestmark = pytest.mark.lab

ACCOUNT = "123456789012"  # moto's default account: what plain credentials reach
OTHER_ACCOUNT = "222222222222"  # reached through STS AssumeRole, as a station reaches another account
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
HANGUP = ("AWS_ERROR_MQTT_UNEXPECTED_HANGUP", 5134)
TIMEOUT_S = 10.0  # upper bound for any single client operation; the lab answers in milliseconds

ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}


# ------------------------------------------------------------------------------------------------ identities


@dataclass(frozen=True)
class Identity:
    cert_pem: bytes
    key_pem: bytes = b""  # test-only keys, in memory

    @property
    def certificate_id(self) -> str:
        der = x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()

    def __repr__(self) -> str:
        return f"Identity({self.certificate_id[:12]})"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_identity(
    cn: str, *, issuer: tuple[x509.Certificate, Any] | None = None, key: Any = None
) -> Identity:
    """A client certificate (EC P-256 unless `key` is given), self-signed or signed by `issuer`."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    return Identity(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_ca(cn: str) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------- the lab


class Lab:
    """moto server (control plane) + DataPlane, with boto3 clients and the plane's events."""

    def __init__(self, endpoint_url: str, plane: DataPlane) -> None:
        self.endpoint_url = endpoint_url
        self.plane = plane
        self.events: list[DataPlaneEvent] = []
        self._events_lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}

    def record(self, event: DataPlaneEvent) -> None:
        with self._events_lock:
            self.events.append(event)

    def events_for(self, client_id: str, kind: str | None = None) -> list[DataPlaneEvent]:
        with self._events_lock:
            return [e for e in self.events if e.client_id == client_id and kind in (None, e.kind)]

    def wait_event(self, client_id: str, kind: str) -> DataPlaneEvent:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            found = self.events_for(client_id, kind)
            if found:
                return found[-1]
            time.sleep(0.005)
        raise AssertionError(
            f"no {kind!r} event for client {client_id!r}; events: {self.events_for(client_id)}"
        )

    def iot(self, region: str = REGION, account: str = ACCOUNT) -> Any:
        key = (region, account)
        if key not in self._clients:
            self._clients[key] = self._new_iot(region, account)
        return self._clients[key]

    def _new_iot(self, region: str, account: str) -> Any:
        credentials: dict[str, str] = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        if account != ACCOUNT:
            sts = boto3.client("sts", region_name=region, endpoint_url=self.endpoint_url, **credentials)
            assumed = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/x", RoleSessionName="lab-test")
            c = assumed["Credentials"]
            credentials = {
                "aws_access_key_id": c["AccessKeyId"],
                "aws_secret_access_key": c["SecretAccessKey"],
                "aws_session_token": c["SessionToken"],
            }
        return boto3.client("iot", region_name=region, endpoint_url=self.endpoint_url, **credentials)

    def port(self, region: str = REGION, account: str = ACCOUNT) -> int:
        return self.plane.port_for(account, region)


def provision(
    iot: Any,
    identity: Identity,
    *,
    status: str = "ACTIVE",
    document: dict | None = None,
    thing: str | None = None,
) -> dict[str, str]:
    """Register `identity` without a CA, attach a fresh policy (iot:* by default) and optionally a thing."""
    registered = iot.register_certificate_without_ca(certificatePem=identity.cert_pem.decode(), status=status)
    policy_name = unique("policy")
    iot.create_policy(policyName=policy_name, policyDocument=json.dumps(document or ALLOW_ALL))
    iot.attach_policy(policyName=policy_name, target=registered["certificateArn"])
    if thing is not None:
        iot.create_thing(thingName=thing)
        iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])
    return {**registered, "policyName": policy_name}


def revoke(iot: Any, registered: dict[str, str]) -> None:
    """AWS's delete order: detach policies and things, deactivate, delete."""
    arn = registered["certificateArn"]
    for policy in iot.list_attached_policies(target=arn)["policies"]:
        iot.detach_policy(policyName=policy["policyName"], target=arn)
    for thing in iot.list_principal_things(principal=arn)["things"]:
        iot.detach_thing_principal(thingName=thing, principal=arn)
    iot.update_certificate(certificateId=registered["certificateId"], newStatus="INACTIVE")
    iot.delete_certificate(certificateId=registered["certificateId"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    import moto.core.config
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    iot_config = moto.core.config.default_user_config["iot"]
    previous = iot_config.get("use_valid_cert", False)
    iot_config["use_valid_cert"] = True  # certificate id = SHA-256 of the DER, as on AWS
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    plane: DataPlane | None = None
    try:
        holder: list[Lab] = []
        plane = DataPlane(
            {(ACCOUNT, REGION): 0, (ACCOUNT, OTHER_REGION): 0, (OTHER_ACCOUNT, REGION): 0},
            tmp_path_factory.mktemp("lab-state"),
            on_event=lambda event: holder[0].record(event),
        )
        the_lab = Lab(f"http://{host}:{port}", plane)
        holder.append(the_lab)
        plane.start()
        yield the_lab
    finally:
        if plane is not None:
            plane.stop()
        server.stop()
        iot_config["use_valid_cert"] = previous


# ------------------------------------------------------------------------------------------- MQTT client


class Device:
    """The unmodified awsiotsdk MQTT 3.1.1 client, as the field report's program uses it."""

    def __init__(self, lab: Lab, identity: Identity, client_id: str, port: int) -> None:
        self.interrupted: list[AwsCrtError | Exception] = []
        self.received: list[tuple[str, bytes]] = []
        self._got = threading.Condition()
        self.connection = mqtt_connection_builder.mtls_from_bytes(
            endpoint="localhost",
            port=port,
            cert_bytes=identity.cert_pem,
            pri_key_bytes=identity.key_pem,
            ca_bytes=lab.plane.ca_bytes,
            client_id=client_id,
            clean_session=False,
            keep_alive_secs=6,
            tcp_connect_timeout_ms=3000,
            ping_timeout_ms=3000,
            protocol_operation_timeout_ms=5000,
            reconnect_min_timeout_secs=1,  # after a hang-up awscrt retries; disconnect() waits for that
            reconnect_max_timeout_secs=1,
            on_connection_interrupted=lambda connection, error, **kw: self.interrupted.append(error),
        )

    def connect(self) -> None:
        self.connection.connect().result(TIMEOUT_S)

    def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.disconnect().result(TIMEOUT_S)

    def _on_message(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        with self._got:
            self.received.append((topic, payload))
            self._got.notify_all()

    def subscribe(self, topic_filter: str) -> dict[str, Any]:
        future, _packet_id = self.connection.subscribe(topic_filter, mqtt.QoS.AT_LEAST_ONCE, self._on_message)
        return future.result(TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: mqtt.QoS = mqtt.QoS.AT_LEAST_ONCE) -> None:
        future, _packet_id = self.connection.publish(topic, payload, qos)
        future.result(TIMEOUT_S)

    def wait_received(self, count: int) -> list[tuple[str, bytes]]:
        with self._got:
            if not self._got.wait_for(lambda: len(self.received) >= count, TIMEOUT_S):
                raise AssertionError(f"received {len(self.received)} of {count} messages: {self.received}")
            return list(self.received)


@contextlib.contextmanager
def connected(lab: Lab, identity: Identity, client_id: str, port: int | None = None) -> Iterator[Device]:
    device = Device(lab, identity, client_id, port or lab.port())
    device.connect()
    try:
        yield device
    finally:
        device.disconnect()


def field_report_run(lab: Lab, identity: Identity, client_id: str, port: int | None = None) -> None:
    """Connect, QoS 1 subscribe, three JSON publishes echoed back in order, disconnect."""
    topic = f"sdk/test/{client_id}"
    with connected(lab, identity, client_id, port) as device:
        granted = device.subscribe(topic)
        assert granted["qos"] == mqtt.QoS.AT_LEAST_ONCE
        sent = [json.dumps({"counter": i, "message": "TEST"}).encode() for i in range(1, 4)]
        for payload in sent:
            device.publish(topic, payload)
        assert device.wait_received(3) == [(topic, p) for p in sent]


def assert_hangup(lab: Lab, identity: Identity, client_id: str, port: int | None = None) -> DataPlaneEvent:
    """connect() fails the way AWS makes it fail; returns the plane's reason for refusing."""
    device = Device(lab, identity, client_id, port or lab.port())
    with pytest.raises(AwsCrtError) as failure:
        device.connect()
    assert (failure.value.name, failure.value.code) == HANGUP
    return lab.wait_event(client_id, "refused")


# ======================================================================== acceptance: seed scenarios 1-8


def test_1_active_certificate_with_policy_connects_and_echoes(lab: Lab):
    identity = make_identity("unit-1")
    provision(lab.iot(), identity)
    client_id = unique("basic")
    field_report_run(lab, identity, client_id)
    connected_event = lab.wait_event(client_id, "connected")
    assert connected_event.certificate_id == identity.certificate_id
    assert lab.wait_event(client_id, "closed").account_id == ACCOUNT


def test_2_deleted_certificate_hangs_up(lab: Lab):
    iot = lab.iot()
    identity = make_identity("unit-2")
    registered = provision(iot, identity)
    field_report_run(lab, identity, unique("before-delete"))
    revoke(iot, registered)
    refused = assert_hangup(lab, identity, client_id := unique("after-delete"))
    assert "not registered" in refused.detail
    assert refused.certificate_id == identity.certificate_id
    assert not lab.events_for(client_id, "connected")


def test_3_reregistered_certificate_needs_activation_and_a_policy(lab: Lab):
    iot = lab.iot()
    identity = make_identity("unit-3")
    registered = provision(iot, identity)
    revoke(iot, registered)
    again = iot.register_certificate_without_ca(certificatePem=identity.cert_pem.decode(), status="INACTIVE")
    assert again["certificateId"] == identity.certificate_id  # same DER, same id

    assert "INACTIVE" in assert_hangup(lab, identity, unique("inactive")).detail
    iot.update_certificate(certificateId=again["certificateId"], newStatus="ACTIVE")
    assert "no policy is attached" in assert_hangup(lab, identity, unique("no-policy")).detail
    iot.attach_policy(policyName=registered["policyName"], target=again["certificateArn"])
    field_report_run(lab, identity, unique("reactivated"))


def test_4_other_region_hangs_up_until_registered_there(lab: Lab):
    identity = make_identity("unit-4")
    provision(lab.iot(REGION), identity)
    field_report_run(lab, identity, unique("home-region"))
    other_port = lab.port(OTHER_REGION)
    refused = assert_hangup(lab, identity, unique("other-region"), other_port)
    assert OTHER_REGION in refused.detail and refused.region == OTHER_REGION
    provision(lab.iot(OTHER_REGION), identity)
    field_report_run(lab, identity, unique("other-region-ok"), other_port)


def test_5_other_account_works_once_registered_there(lab: Lab):
    identity = make_identity("unit-5")
    provision(lab.iot(), identity)
    other_port = lab.port(REGION, OTHER_ACCOUNT)
    assert_hangup(lab, identity, unique("other-account"), other_port)
    registered = provision(lab.iot(REGION, OTHER_ACCOUNT), identity)
    assert f":{OTHER_ACCOUNT}:cert/{identity.certificate_id}" in registered["certificateArn"]
    field_report_run(lab, identity, client_id := unique("other-account-ok"), other_port)
    assert lab.wait_event(client_id, "connected").account_id == OTHER_ACCOUNT


def test_6_desktop_keychain_der_and_p12_pair_converted_to_pem(lab: Lab, tmp_path: Path):
    # What a desktop keychain exports for a self-signed "SSL client" certificate: DER .cer + PKCS#12 .p12.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    exported = make_identity("Keychain SSL client", key=key)
    cert = x509.load_pem_x509_certificate(exported.cert_pem)
    (tmp_path / "device.cer").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "device.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(b"device", key, cert, None, serialization.NoEncryption())
    )

    # The conversion of the field report (openssl x509 -inform DER / pkcs12 -nodes), done in Python.
    der = (tmp_path / "device.cer").read_bytes()
    p12_key, p12_cert, _extra = pkcs12.load_key_and_certificates((tmp_path / "device.p12").read_bytes(), None)
    assert p12_key is not None and p12_cert is not None
    identity = Identity(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM), _key_pem(p12_key)
    )
    expected_id = hashlib.sha256(der).hexdigest()  # computable before registering

    registered = provision(lab.iot(), identity)
    assert registered["certificateId"] == expected_id
    field_report_run(lab, identity, unique("keychain"))


def test_7_certificate_from_an_unknown_ca_is_accepted_at_tls_and_judged_by_the_registry(lab: Lab):
    factory_ca = make_ca("Factory CA the lab never saw")
    identity = make_identity("unit-7", issuer=factory_ca)
    # TLS completes (the plane read the CONNECT and saw the certificate), the registry says no.
    refused = assert_hangup(lab, identity, unique("unknown-ca"))
    assert refused.certificate_id == identity.certificate_id and "not registered" in refused.detail
    provision(lab.iot(), identity)
    field_report_run(lab, identity, unique("unknown-ca-ok"))


def least_privilege_policy(region: str = REGION, account: str = ACCOUNT) -> dict:
    arn = f"arn:aws:iot:{region}:{account}"
    thing = "${iot:Connection.Thing.ThingName}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{thing}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": f"{arn}:topic/things/{thing}/*",
            },
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{arn}:topicfilter/things/{thing}/*"},
        ],
    }


def test_8_least_privilege_thing_policy(lab: Lab):
    iot = lab.iot()
    thing = unique("unit-8")
    other_thing = unique("unit-8-other")
    identity = make_identity(thing)
    provision(iot, identity, document=least_privilege_policy(), thing=thing)

    # The right client id (= the attached thing's name) uses its own topics.
    own = f"things/{thing}/echo"
    with connected(lab, identity, thing) as device:
        device.subscribe(own)
        device.publish(own, b'{"counter": 1, "message": "TEST"}')
        assert device.wait_received(1) == [(own, b'{"counter": 1, "message": "TEST"}')]

        # Another thing's topic filter: SUBACK 0x80, the connection stays up.
        with pytest.raises(mqtt.SubscribeError):
            device.subscribe(f"things/{other_thing}/echo")
        assert other_thing in lab.wait_event(thing, "subscribe_denied").detail
        device.publish(own, b"still connected")
        assert device.wait_received(2)[-1] == (own, b"still connected")
        assert not device.interrupted

        # Publishing to another thing's topic: AWS hangs up on the client.
        device.publish(f"things/{other_thing}/echo", b"not mine", mqtt.QoS.AT_MOST_ONCE)
        assert "iot:Publish" in lab.wait_event(thing, "publish_denied").detail
        deadline = time.monotonic() + TIMEOUT_S
        while not device.interrupted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert device.interrupted and device.interrupted[0].name == HANGUP[0]

    # A client id that is not the attached thing's name is refused at CONNECT.
    assert "no attached policy allows iot:Connect" in assert_hangup(lab, identity, other_thing).detail


def test_8b_thing_must_be_attached_for_the_thing_policy(lab: Lab):
    iot = lab.iot()
    thing = unique("unit-8b")
    identity = make_identity(thing)
    registered = provision(iot, identity, document=least_privilege_policy(), thing=thing)
    iot.detach_thing_principal(thingName=thing, principal=registered["certificateArn"])
    assert_hangup(lab, identity, thing)  # IsAttached is false now, on the very next connection
    iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])
    with connected(lab, identity, thing) as device:
        device.subscribe(f"things/{thing}/#")


# ================================================================================ more AWS behaviours


def test_receive_is_checked_on_every_delivery(lab: Lab):
    arn = f"arn:aws:iot:{REGION}:{ACCOUNT}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect", "iot:Publish", "iot:Subscribe"], "Resource": "*"},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": f"{arn}:topic/rx/allowed"},
        ],
    }
    identity = make_identity("receiver")
    provision(lab.iot(), identity, document=document)
    with connected(lab, identity, client_id := unique("receiver")) as device:
        device.subscribe("rx/#")
        device.publish("rx/denied", b"must not arrive")  # published first: would arrive first if delivered
        device.publish("rx/allowed", b"arrives")
        assert device.wait_received(1) == [("rx/allowed", b"arrives")]
        assert "iot:Receive" in lab.wait_event(client_id, "receive_dropped").detail
        assert not device.interrupted


def test_policy_change_applies_to_new_connections(lab: Lab):
    iot = lab.iot()
    identity = make_identity("policy-change")
    registered = provision(iot, identity)
    deny_publish = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": "*"},
        ],
    }
    with connected(lab, identity, live := unique("live")) as device:
        device.subscribe("pc/topic")
        iot.create_policy_version(
            policyName=registered["policyName"], policyDocument=json.dumps(deny_publish), setAsDefault=True
        )
        device.publish("pc/topic", b"policies were read at CONNECT")  # this connection keeps its policies
        assert device.wait_received(1) == [("pc/topic", b"policies were read at CONNECT")]
    assert not lab.events_for(live, "publish_denied")
    with connected(lab, identity, fresh := unique("fresh")) as device:
        device.publish("pc/topic", b"denied now", mqtt.QoS.AT_MOST_ONCE)
        lab.wait_event(fresh, "publish_denied")


def test_accounts_and_regions_do_not_share_topics(lab: Lab):
    identity = make_identity("namespaces")
    provision(lab.iot(REGION), identity)
    provision(lab.iot(OTHER_REGION), identity)
    topic = "shared/topic"
    with connected(lab, identity, unique("listener")) as listener:
        listener.subscribe(topic)
        with connected(lab, identity, unique("elsewhere"), lab.port(OTHER_REGION)) as other:
            other.publish(topic, b"other region")  # a different registry: must not reach the listener
        with connected(lab, identity, unique("same")) as same:
            same.publish(topic, b"same region")
        assert listener.wait_received(1) == [(topic, b"same region")]


# ===================================================================== raw TLS clients: parser at the edge


def raw_tls(lab: Lab, identity: Identity | None, tmp_path: Path, port: int | None = None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(lab.plane.ca_file))
    if identity is not None:
        (tmp_path / "c.pem").write_bytes(identity.cert_pem)
        (tmp_path / "k.pem").write_bytes(identity.key_pem)
        context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    sock = socket.create_connection(("127.0.0.1", port or lab.port()), timeout=TIMEOUT_S)
    return context.wrap_socket(sock, server_hostname="localhost")


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ssl.SSLError, OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_connect_split_over_many_tls_records_is_parsed(lab: Lab, tmp_path: Path):
    identity = make_identity("fragmented")
    provision(lab.iot(), identity)
    client_id = unique("fragmented")
    connect = mq.encode_connect(mq.Connect("MQTT", 4, True, 30, client_id))
    with raw_tls(lab, identity, tmp_path) as sock:
        for i in range(len(connect)):  # one TLS record per byte
            sock.sendall(connect[i : i + 1])
        assert read_exactly(sock, 4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        lab.wait_event(client_id, "connected")
        sock.sendall(mq.encode_packet(0xE0, b""))  # DISCONNECT
    assert lab.wait_event(client_id, "closed")


def test_partial_subscribe_gets_merged_suback(lab: Lab, tmp_path: Path):
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["iot:Connect", "iot:Receive", "iot:Publish"], "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter/ok/*",
            },
        ],
    }
    identity = make_identity("partial")
    provision(lab.iot(), identity, document=document)
    client_id = unique("partial")
    with raw_tls(lab, identity, tmp_path) as sock:
        sock.sendall(mq.encode_connect(mq.Connect("MQTT", 4, True, 30, client_id)))
        assert read_exactly(sock, 4) == b"\x20\x02\x00\x00"
        sock.sendall(mq.encode_subscribe(7, [("ok/a", 1), ("no/b", 1), ("ok/+", 0)]))
        assert read_exactly(sock, 7) == mq.encode_suback(7, [1, 0x80, 0])
        sock.sendall(mq.encode_subscribe(8, [("no/c", 1)]))  # all denied: answered by the front itself
        assert read_exactly(sock, 5) == mq.encode_suback(8, [0x80])
        sock.sendall(mq.encode_packet(0xE0, b""))
    assert len(lab.events_for(client_id, "subscribe_denied")) == 2


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n" * 2,  # not MQTT
        b"\x10\xff\xff\xff\xff\x7f",  # remaining length longer than 4 bytes
        mq.encode_packet(0x30, b"\x00\x01a"),  # a PUBLISH before CONNECT
        mq.encode_packet(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01x"),  # MQTT 5
        mq.encode_packet(0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01x"),  # reserved flag set
    ],
    ids=["http", "varint", "publish-first", "mqtt5", "reserved-flag"],
)
def test_garbage_after_tls_closes_that_connection_only(lab: Lab, tmp_path: Path, first_bytes: bytes):
    identity = make_identity("garbage")
    with raw_tls(lab, identity, tmp_path) as sock:
        sock.sendall(first_bytes)
        assert read_until_closed(sock) == b""  # no CONNACK, just closed
    # The front keeps serving.
    good = make_identity("after-garbage")
    provision(lab.iot(), good)
    field_report_run(lab, good, unique("after-garbage"))


def test_plain_tcp_and_certificateless_clients_are_dropped(lab: Lab, tmp_path: Path):
    with socket.create_connection(("127.0.0.1", lab.port()), timeout=TIMEOUT_S) as plain:
        plain.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # MQTT without TLS
        assert read_until_closed(plain) == b""
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)), raw_tls(lab, None, tmp_path) as sock:
        sock.sendall(mq.encode_connect(mq.Connect("MQTT", 4, True, 30, "no-cert")))
        read_exactly(sock, 4)  # TLS 1.3 reports the missing certificate on the first read
    good = make_identity("after-plain")
    provision(lab.iot(), good)
    field_report_run(lab, good, unique("after-plain"))


# ======================================================================== MQTT framing and CONNECT parser


def test_packet_reader_reassembles_byte_by_byte_and_splits_batches():
    connect = mq.encode_connect(mq.Connect("MQTT", 4, False, 6, "unit-1", username="u", password=b"p"))
    ping = mq.encode_packet(0xC0, b"")
    stream = connect + ping + connect
    reader = PacketReader()
    packets = []
    for i in range(len(stream)):
        packets += reader.feed(stream[i : i + 1])
    assert [p.raw for p in packets] == [connect, ping, connect]
    assert reader.buffered == 0
    assert [p.raw for p in PacketReader().feed(stream)] == [connect, ping, connect]


@pytest.mark.parametrize("size", [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_remaining_length_varint_boundaries(size: int):
    packet = mq.encode_packet(0x30, b"\x00\x01t" + b"x" * max(0, size - 3)) if size >= 3 else None
    encoded = mq.encode_remaining_length(size)
    assert len(encoded) == 1 + (size > 127) + (size > 16_383) + (size > 2_097_151)
    if packet is not None:
        assert PacketReader().feed(packet)[0].raw == packet


def test_packet_reader_rejects_overlong_varint_and_oversized_packets():
    with pytest.raises(MalformedPacket):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MalformedPacket, match="exceeds"):
        PacketReader(max_remaining_length=100).feed(b"\x30" + mq.encode_remaining_length(101))
    # An incomplete varint is not an error yet: wait for more bytes.
    assert PacketReader().feed(b"\x30\xff") == []


def test_parse_connect_fields():
    connect = mq.Connect(
        "MQTT", 4, False, 6, "unit-1", will_topic="things/unit-1/lwt", will_message=b"gone", will_qos=1,
        will_retain=True, username="user", password=b"secret",
    )  # fmt: skip
    parsed = mq.parse_connect(PacketReader().feed(mq.encode_connect(connect))[0])
    assert parsed == connect
    assert "secret" not in repr(parsed)  # credentials stay out of logs


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x00\x04MQTT\x04\x02\x00\x3c", "ends early"),  # no client id
        (b"\x00\x04MQTT\x04\x42\x00\x3c\x00\x01x\x00\x01p", "password without user name"),
        (b"\x00\x04MQTT\x04\x1e\x00\x3c\x00\x01x", "Will QoS 3"),
        (b"\x00\x04MQTT\x04\x22\x00\x3c\x00\x01x", "without the Will flag"),
        (b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x\x00", "bytes after"),
        (b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x02\xff\xfe", "UTF-8"),
        (b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01\x00", "U\\+0000"),
        (b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01x", "MQTT 3.1.1 only"),
        (b"\x00\x04XXXX\x04\x02\x00\x3c\x00\x01x", "unknown protocol"),
    ],
)
def test_parse_connect_rejects_invalid(body: bytes, error: str):
    with pytest.raises(MalformedPacket, match=error):
        mq.parse_connect(PacketReader().feed(mq.encode_packet(0x10, body))[0])


def test_publish_and_subscribe_roundtrip_and_validation():
    publish = mq.Publish("a/b", 1, retain=True, dup=False, packet_id=9, payload=b"x" * 300)
    assert mq.parse_publish(PacketReader().feed(mq.encode_publish(publish))[0]) == publish
    with pytest.raises(MalformedPacket):
        mq.parse_publish(PacketReader().feed(mq.encode_packet(0x30, b"\x00\x03a/#"))[0])
    with pytest.raises(MalformedPacket):
        mq.parse_publish(PacketReader().feed(mq.encode_packet(0x36, b"\x00\x01a\x00\x01"))[0])  # QoS 3
    subscribe = mq.encode_subscribe(5, [("a/+", 1), ("#", 0)])
    assert mq.parse_subscribe(PacketReader().feed(subscribe)[0]) == (5, [("a/+", 1), ("#", 0)])
    with pytest.raises(MalformedPacket):
        mq.parse_subscribe(PacketReader().feed(mq.encode_packet(0x80, b"\x00\x05\x00\x01a\x01"))[0])
    with pytest.raises(MalformedPacket):
        mq.parse_subscribe(PacketReader().feed(mq.encode_packet(0x82, b"\x00\x05"))[0])


# ========================================================================= lifecycle, bad input, figures


def test_start_stop_closes_live_connections_and_reports_figures(lab: Lab, tmp_path: Path, record_property):
    started = time.monotonic()
    # Same state dir as the module's plane: the CA there is reused, so clients keep trusting the lab.
    plane = DataPlane({(ACCOUNT, REGION): 0}, lab.plane.state_dir)
    plane.start()
    start_s = time.monotonic() - started
    assert plane.ca_bytes == lab.plane.ca_bytes
    try:
        identity = make_identity("lifecycle")
        provision(lab.iot(), identity)
        cycle_s = []
        for _ in range(10):
            t0 = time.monotonic()
            field_report_run(lab, identity, unique("timed"), plane.port_for(ACCOUNT, REGION))
            cycle_s.append(time.monotonic() - t0)
        live = raw_tls(lab, identity, tmp_path, plane.port_for(ACCOUNT, REGION))
        live.sendall(mq.encode_connect(mq.Connect("MQTT", 4, True, 30, unique("live"))))
        assert read_exactly(live, 4) == b"\x20\x02\x00\x00"
    finally:
        stopping = time.monotonic()
        plane.stop(timeout=5.0)
        stop_s = time.monotonic() - stopping
    assert read_until_closed(live) == b""
    live.close()
    median_ms = statistics.median(cycle_s) * 1000
    record_property("plane_start_s", round(start_s, 3))
    record_property("median_cycle_ms", round(median_ms, 1))
    print(f"\nplane start {start_s * 1000:.0f} ms; connect+subscribe+3 echoes+disconnect median {median_ms:.0f} ms "
          f"(min {min(cycle_s) * 1000:.0f}, max {max(cycle_s) * 1000:.0f}); stop {stop_s * 1000:.0f} ms")  # fmt: skip
    assert start_s < 3.0
    assert stop_s < 5.5
    assert median_ms < 1000
    with pytest.raises(RuntimeError):
        plane.port_for(ACCOUNT, REGION)


def test_broker_answers_mqtt_and_restarts():
    broker = LabBroker()
    for _ in range(2):  # a stopped broker starts again
        with broker:
            with socket.create_connection(broker.address, timeout=TIMEOUT_S) as sock:
                sock.sendall(mq.encode_connect(mq.Connect("MQTT", 4, True, 30, "probe")))
                assert read_exactly(sock, 4) == b"\x20\x02\x00\x00"
            port = broker.port
        with pytest.raises(RuntimeError):
            _ = broker.port
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
            pass  # nothing listens there any more


def test_ca_file_is_reused_across_restarts_and_has_lab_sans(tmp_path: Path):
    from station.lab.tls import ensure_lab_tls

    first = ensure_lab_tls(tmp_path)
    ca_before = first.ca_file.read_bytes()
    second = ensure_lab_tls(tmp_path)
    assert second.ca_file.read_bytes() == ca_before
    server = x509.load_pem_x509_certificate(second.server_cert_file.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))
    assert second.ca_key_file.stat().st_mode & 0o077 == 0


def test_port_in_use_and_unwritable_state_dir_give_clear_errors(lab: Lab, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        plane = DataPlane({(ACCOUNT, REGION): taken.getsockname()[1]}, tmp_path / "state")
        with pytest.raises(InputError, match="port in use") as error:
            plane.start()
        assert str(taken.getsockname()[1]) in error.value.message
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(InputError, match="not writable"):
        DataPlane({(ACCOUNT, REGION): 0}, tmp_path / "a-file" / "state").start()
    with pytest.raises(InputError, match="Unknown lab region"):
        DataPlane({(ACCOUNT, "mars-north-1"): 0}, tmp_path / "state").start()


def test_registry_view_reads_live_moto_state(lab: Lab):
    iot = lab.iot()
    identity = make_identity("view")
    view = RegistryView(ACCOUNT, REGION)
    assert view.certificate(identity.certificate_id) is None
    thing = unique("view-thing")
    registered = provision(iot, identity, thing=thing)
    record = view.certificate(identity.certificate_id)
    assert record is not None and (record.status, record.arn) == ("ACTIVE", registered["certificateArn"])
    [policy] = view.attached_policies(record.arn)
    assert policy.name == registered["policyName"] and json.loads(policy.document) == ALLOW_ALL
    assert view.attached_things(record.arn) == [thing]
    iot.update_certificate(certificateId=identity.certificate_id, newStatus="INACTIVE")
    assert view.certificate(identity.certificate_id).status == "INACTIVE"  # type: ignore[union-attr]
    assert RegistryView(OTHER_ACCOUNT, REGION).certificate(identity.certificate_id) is None
