"""Every device family through the real parts, and verify by observing.

Part 1 (fast, in-process fakes): the pipeline's third verify mode, "observe", for units whose key the station
never holds and that cannot check their own connection — planned from the `observable` capability, the
station's observer subscribed before the unit is told to go online, the hello's certificate id compared with the
registered one, faults sorted into FAIL/ERROR, rollback and wipe as for the other modes; and the wiring's
observer lifetime (one per target, shared, released on close / after a bare `provision`).

Part 2 (the lab, `station provision` called in-process through `station.cli.main`): one PASS per family and the
unit then working on its own identity, and failure cases that leave no orphan certificate, thing or observer
(the registry itself is read with boto3 list calls):

- ExpressLink — the product uses `thing_name_template = "{device_id}"` (the module connects with its ThingName
  as client id, and the thing policy ties client id to thing name) and `check_device_id = false`: the unit's
  label is the product's serial, not the module's random ThingName. (A label that does carry the ThingName
  keeps the check, with a serial pattern matching ThingNames: also tested, with the wrong unit in the jig.)
  After the PASS the module connects by itself and `AT+CONNECT?` says CUSTOMER.
- nRF91 with a station-made key — the scan is the IMEI (serial pattern of 15 digits), so the device-id check
  stays on; afterwards the credentials read back from the simulated modem's store connect and echo.
- nRF91 with a device-made key — the target has the factory CA as issuer; verify by observing. Afterwards the
  unit, told to go online again, announces itself again.
- ESP32 (the ROM-loader simulator on a pty, real esptool) — afterwards the credentials read back from its NVS partition connect
  and echo.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipeline_fakes import (
    TARGET,
    FakeFlasher,
    FakeLedger,
    FakeRegistry,
    FakeVerifier,
    Log,
    fake_certificate_id,
    fake_new_identity,
    fake_record,
    fake_sign_csr,
)

from flashers.base import Capabilities
from station.errors import StationFault, UnitFault
from station.model import Event, Outcome, Target
from station.pipeline import Pipeline, UnitRequest

# ---------------------------------------------------------------------------------------------------------
# Part 1: verify by observing, with fakes
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObsCaps(Capabilities):
    writes_key: bool = True
    device_keygen: bool = True
    observable: bool = True


class ObservableFlasher(FakeFlasher):
    """A fake modem: makes its own key, cannot check its connection, announces itself when online."""

    def __init__(self, log: Log, **kw: Any) -> None:
        kw.setdefault("caps", ObsCaps())
        super().__init__(log, **kw)
        self.online = False

    def go_online(self) -> None:
        self.log.add("flasher.go_online")
        self._maybe_fail("go_online")
        self.online = True


class FakeWatch:
    def __init__(self, observer: FakeObserver, thing_name: str) -> None:
        self.observer = observer
        self.topic = f"things/{thing_name}/hello"
        self.waited: float | None = None

    def wait(self, timeout_s: float) -> Mapping[str, str] | None:
        self.waited = timeout_s
        self.observer.log.add("observer.wait")
        if self.observer.wait_fault is not None:
            raise self.observer.wait_fault
        return self.observer.hello(self.observer.flasher)

    def close(self) -> None:
        self.observer.log.add("observer.unsubscribe")


class FakeObserver:
    """What the station's observer would see: by default the hello of the unit, if it went online."""

    where = "111122223333/eu-west-1"

    def __init__(self, log: Log, flasher: ObservableFlasher) -> None:
        self.log = log
        self.flasher = flasher
        self.watches: list[FakeWatch] = []
        self.wait_fault: BaseException | None = None
        self.released = 0

    @staticmethod
    def hello(flasher: ObservableFlasher) -> Mapping[str, str] | None:
        if not flasher.online or flasher.certificate is None:
            return None
        return {"certificate_id": fake_certificate_id(flasher.certificate), "imei": "1"}

    def watch(self, thing_name: str) -> FakeWatch:
        self.log.add("observer.subscribe")
        watch = FakeWatch(self, thing_name)
        self.watches.append(watch)
        return watch

    def release(self) -> None:
        self.released += 1


@dataclass
class ObsRig:
    log: Log
    flasher: ObservableFlasher
    registry: FakeRegistry
    ledger: FakeLedger
    observer: FakeObserver
    pipeline: Pipeline
    events: list[Event]

    def request(self, **kw: Any) -> UnitRequest:
        kw.setdefault("target", TARGET)
        kw.setdefault("slot", "s1")
        kw.setdefault("key_source", "device")
        kw.setdefault("issuer", object())
        kw.setdefault("hello_timeout_s", 7.5)
        return UnitRequest(serial="SN00000001", thing_name=lambda device_id: "widget-SN00000001", **kw)

    def run(self, **kw: Any) -> Any:
        return self.pipeline.run(self.request(**kw), self.flasher)


def obs_rig(
    *, observer_fault: BaseException | None = None, observe: bool = True, **flasher_kw: Any
) -> ObsRig:
    log = Log()
    flasher = ObservableFlasher(log, device_id="SN00000001", **flasher_kw)
    registry = FakeRegistry(log)
    ledger = FakeLedger(log)
    observer = FakeObserver(log, flasher)
    events: list[Event] = []

    def observer_for(target: Target) -> FakeObserver:
        log.add("observer.get")
        if observer_fault is not None:
            raise observer_fault
        return observer

    pipeline = Pipeline(
        ledger=ledger,
        registry_for=lambda target: registry,
        verifier=FakeVerifier(log),
        new_identity=fake_new_identity,
        sign_csr=fake_sign_csr,
        certificate_id=fake_certificate_id,
        record_factory=fake_record,
        on_event=events.append,
        observer_for=observer_for if observe else None,
    )
    return ObsRig(log, flasher, registry, ledger, observer, pipeline, events)


def test_observe_passes_a_device_key_unit_subscribing_before_it_goes_online() -> None:
    rig = obs_rig()
    result = rig.run()
    assert result.outcome == Outcome.PASS, result.message
    assert (result.key_source, result.verify_mode) == ("device", "observe")
    names = rig.log.names()
    # Subscribed before the unit may say anything; unsubscribed after; the unit stays online and provisioned.
    assert names.index("observer.subscribe") < names.index("flasher.go_online") < names.index("observer.wait")
    assert names.index("observer.wait") < names.index("observer.unsubscribe")
    assert rig.observer.watches[0].topic == "things/widget-SN00000001/hello"
    assert rig.observer.watches[0].waited == 7.5  # the request's bound
    assert not rig.flasher.wiped and rig.flasher.certificate is not None
    assert result.certificate_id in rig.registry.certificates
    verify = [e for e in rig.events if e.kind == "step_finished" and e.step == "verify"]
    assert [e.outcome for e in verify] == ["ok"] and result.timings_ms["verify"] >= 0
    assert rig.ledger.open_journals() == []


def test_no_hello_is_a_unit_fault_and_everything_is_undone() -> None:
    rig = obs_rig()
    rig.observer.hello = lambda flasher: None  # type: ignore[method-assign]
    result = rig.run(hello_timeout_s=3)
    assert result.outcome == Outcome.FAIL
    assert result.title == "No hello from the unit"
    assert (
        "within 3 s of going online" in result.message and "things/widget-SN00000001/hello" in result.message
    )
    assert [c.action for c in result.compensations] == ["rollback", "wipe"]
    assert all(c.ok for c in result.compensations)
    assert rig.registry.certificates == {} and rig.registry.things == set()
    assert rig.flasher.wiped and rig.flasher.certificate is None
    assert "observer.unsubscribe" in rig.log.names()
    assert rig.ledger.open_journals() == []


def test_a_hello_with_another_certificate_is_a_unit_fault() -> None:
    rig = obs_rig()
    rig.observer.hello = lambda flasher: {"certificate_id": "ab" * 32}  # type: ignore[method-assign]
    result = rig.run()
    assert result.outcome == Outcome.FAIL
    assert result.title == "Unit announced another certificate"
    assert "abababababab" in result.message and result.certificate_id[:12] in result.message
    assert rig.registry.certificates == {} and rig.flasher.wiped


def test_an_observer_that_cannot_connect_is_a_station_error_before_the_unit_goes_online() -> None:
    fault = StationFault("Observer cannot connect", "no connection", "Check the network.")
    rig = obs_rig(observer_fault=fault)
    result = rig.run()
    assert result.outcome == Outcome.ERROR
    assert result.title == "Observer cannot connect"
    assert "flasher.go_online" not in rig.log.names()
    assert rig.registry.certificates == {} and rig.flasher.wiped  # what was written is wiped all the same
    assert rig.ledger.open_journals() == []


def test_an_observer_that_loses_its_connection_while_waiting_is_a_station_error() -> None:
    rig = obs_rig()
    rig.observer.wait_fault = StationFault("Observer lost its connection", "lost", "Check the network.")
    result = rig.run()
    assert result.outcome == Outcome.ERROR and result.title == "Observer lost its connection"
    assert rig.registry.certificates == {} and rig.flasher.wiped
    assert "observer.unsubscribe" in rig.log.names()


def test_a_unit_that_cannot_go_online_is_a_unit_fault() -> None:
    rig = obs_rig(faults={"go_online": UnitFault("Device refused the command", "no", "Rework.")})
    result = rig.run()
    assert result.outcome == Outcome.FAIL and result.title == "Device refused the command"
    assert rig.registry.certificates == {} and rig.flasher.wiped
    assert "observer.unsubscribe" in rig.log.names()


@pytest.mark.parametrize(
    ("observe", "caps"),
    [
        (False, ObsCaps()),  # the wiring gave no observer
        (True, ObsCaps(observable=False)),  # the family cannot be observed
    ],
)
def test_without_a_way_to_verify_nothing_is_done(observe: bool, caps: ObsCaps) -> None:
    rig = obs_rig(observe=observe, caps=caps)
    result = rig.run()
    assert result.outcome == Outcome.ERROR and result.title == "Cannot verify"
    assert "flasher.keygen" not in rig.log.names() and "registry.register" not in rig.log.names()


def test_a_station_made_key_is_still_verified_from_the_host_and_device_verify_still_wins() -> None:
    rig = obs_rig()
    assert rig.run(key_source="station").verify_mode == "host"
    rig = obs_rig(caps=ObsCaps(device_verify=True))
    assert rig.run().verify_mode == "device"


# ----------------------------------------------------------------------------------- the wiring's observers


class LifetimeObserver:
    def __init__(self, name: str, *, expiring: bool = False, fail_release: bool = False) -> None:
        self.name = name
        self.where = "111122223333/eu-west-1"
        self.certificate_id = "c" * 64
        self.expiring = expiring
        self.fail_release = fail_release
        self.released = 0
        self.active_watches = 0

    def expires_soon(self) -> bool:
        return self.expiring

    def watch(self, thing_name: str) -> Any:
        raise AssertionError("not used here")

    def release(self) -> None:
        self.released += 1
        if self.fail_release:
            raise StationFault("Observer not removed", "thing left", "Delete it.")


@pytest.fixture
def lifetime_context(tmp_path: Path) -> Iterator[tuple[Any, list[LifetimeObserver], Any]]:
    from cloud_rig import write_config

    from station.config import load_config
    from station.context import StationContext
    from station.ledger import open_ledger

    config = load_config(write_config(tmp_path, "http://127.0.0.1:9"))
    ledger = open_ledger(config.ledger_path)
    made: list[LifetimeObserver] = []

    def factory(target: Target) -> LifetimeObserver:
        observer = LifetimeObserver(f"station-observer-test-{len(made)}")
        made.append(observer)
        return observer

    context = StationContext(config, ledger=ledger, observer_factory=factory)
    try:
        yield context, made, ledger
    finally:
        ledger.close()


def test_one_observer_per_target_shared_until_the_station_stops(
    lifetime_context: tuple[Any, list[LifetimeObserver], Any],
) -> None:
    context, made, ledger = lifetime_context
    target = context.config.target("lab")
    with context:
        first = context.observer(target)
        assert context.observer(target) is first and len(made) == 1
        with context:  # nested holds: only the outermost exit stops the station
            pass
        assert first.released == 0
    assert first.released == 1
    assert context.close() == []  # idempotent: nothing left to release
    notes = [e.event for e in ledger.events(serial="") if e.event.kind == "note"]
    assert [(n.step, n.outcome) for n in notes] == [("observer_started", "ok"), ("observer_released", "ok")]
    assert notes[0].data["name"] == first.name and notes[0].data["certificate_id"] == "c" * 64


def test_an_observer_near_expiry_is_replaced_and_released_once_idle(
    lifetime_context: tuple[Any, list[LifetimeObserver], Any],
) -> None:
    context, _, _ = lifetime_context
    target = context.config.target("lab")
    with context:
        old = context.observer(target)
        old.expiring = True
        old.active_watches = 1  # a slot is still waiting for a hello with it
        new = context.observer(target)
        assert new is not old and old.released == 0
        old.active_watches = 0
        assert context.observer(target) is new and old.released == 1
    assert new.released == 1 and old.released == 1


def test_a_failed_release_is_reported_not_raised(
    lifetime_context: tuple[Any, list[LifetimeObserver], Any],
) -> None:
    context, _, ledger = lifetime_context
    observer = context.observer(context.config.target("lab"))
    observer.fail_release = True
    assert context.close() == ["thing left"]
    notes = [e.event for e in ledger.events(serial="") if e.event.step == "observer_released"]
    assert [n.outcome for n in notes] == ["failed"]


def test_hello_timeout_is_a_product_option_kept_from_the_flasher(tmp_path: Path) -> None:
    from cloud_rig import write_config

    from station.config import load_config
    from station.context import StationContext
    from station.errors import ConfigError

    path = write_config(tmp_path, "http://127.0.0.1:9")
    path.write_text(
        path.read_text().replace('key_source = "auto"\n', 'key_source = "auto"\nhello_timeout_s = 12\n')
    )
    seen: dict[str, Any] = {}

    def flasher_factory(port: str, *, family: str, baud: int, options: dict[str, Any]) -> Any:
        seen.update(options)
        return object()

    context = StationContext(load_config(path), ledger=None, flasher_factory=flasher_factory)
    request = context.prepare("SIM123456", slot="s1")
    assert request.hello_timeout_s == 12.0
    context.open_flasher("s1", "loop://", request)
    assert "hello_timeout_s" not in seen and "key_source" not in seen
    path.write_text(path.read_text().replace("hello_timeout_s = 12", 'hello_timeout_s = "soon"'))
    with pytest.raises(ConfigError):
        StationContext(load_config(path), ledger=None).prepare("SIM123456", slot="s1")


def test_the_hello_convention_is_the_one_the_nrf91_family_speaks() -> None:
    from flashers import nrf91
    from station import observe, registry

    assert observe.hello_topic("t-1") == nrf91.hello_topic("t-1")
    payload = json.dumps({"imei": "3", "certificate_id": "ab", "firmware": "f", "x": 1}).encode()
    assert observe.parse_hello(payload) == nrf91.parse_hello(payload)
    for bad in (b"", b"[]", b"{}", b"\xff", b'{"certificate_id": 3}'):
        assert observe.parse_hello(bad) is None and nrf91.parse_hello(bad) is None
    assert observe.OBSERVER_PREFIX == registry.OBSERVER_PREFIX
    name = observe.observer_name("line 3/α")
    assert name.startswith(observe.OBSERVER_PREFIX) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
    assert observe.observer_name("s") != observe.observer_name("s")  # one per run


def test_the_observer_policy_allows_watching_only() -> None:
    from station.registry import observer_policy_document

    document = json.loads(
        observer_policy_document("eu-west-1", "123456789012", "station-observer-a", ["things/*/hello"])
    )
    allowed = {s["Action"]: s["Resource"] for s in document["Statement"]}
    assert allowed == {
        "iot:Connect": "arn:aws:iot:eu-west-1:123456789012:client/station-observer-a",
        "iot:Subscribe": ["arn:aws:iot:eu-west-1:123456789012:topicfilter/things/*/hello"],
        "iot:Receive": ["arn:aws:iot:eu-west-1:123456789012:topic/things/*/hello"],
    }
    assert "arn:aws-cn:" in observer_policy_document("cn-north-1", "1", "station-observer-a", ["t"])


# ---------------------------------------------------------------------------------------------------------
# Part 2: every family through `station provision` and the lab
# ---------------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
THING_POLICY = (FIXTURES / "policies" / "thing-policy.json").read_text()
CONNECT_ONLY_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", '
    '"Resource": "arn:aws:iot:REGION:ACCOUNT:client/${iot:Connection.Thing.ThingName}"}]}'
)
CA_PASSPHRASE_ENV = "STATION_FAMILIES_CA_PASSPHRASE"


class Lab:
    def __init__(self, plane: Any, data: Any, port: int) -> None:
        self.plane = plane
        self.data = data
        self.port = port


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from cloud_rig import REGION

    from station.lab.control import DEFAULT_ACCOUNT_ID, ControlPlane
    from station.lab.dataplane import DataPlane

    with ControlPlane(throttling=False) as plane:
        data = DataPlane({(DEFAULT_ACCOUNT_ID, REGION): 0}, tmp_path_factory.mktemp("lab"))
        data.start()
        try:
            yield Lab(plane, data, data.port_for(DEFAULT_ACCOUNT_ID, REGION))
        finally:
            data.stop()


def truth(lab: Lab) -> dict[str, Any]:
    """The registry itself (boto3 list calls, every page): certificates with their status, things, and the
    station's observer things and policies."""
    from cloud_rig import REGION

    iot = lab.plane.client("iot", region=REGION)
    certificates: dict[str, str] = {}
    for page in iot.get_paginator("list_certificates").paginate(PaginationConfig={"PageSize": 250}):
        certificates.update({c["certificateId"]: c["status"] for c in page["certificates"]})
    things = {t["thingName"] for page in iot.get_paginator("list_things").paginate() for t in page["things"]}
    policies = {
        p["policyName"] for page in iot.get_paginator("list_policies").paginate() for p in page["policies"]
    }
    return {
        "certificates": certificates,
        "things": things,
        "observer_things": {t for t in things if t.startswith("station-observer-")},
        "observer_policies": {p for p in policies if p.startswith("station-observer-")},
    }


def assert_left_behind(
    lab: Lab, before: dict[str, Any], *, certificate: str | None, thing: str | None
) -> None:
    """Only the PASS unit's certificate and thing were added (none for a failure), and no observer remains."""
    after = truth(lab)
    added = {c: s for c, s in after["certificates"].items() if c not in before["certificates"]}
    assert added == ({certificate: "ACTIVE"} if certificate else {}), "orphan or missing certificate"
    assert after["things"] - before["things"] == ({thing} if thing else set()), "orphan or missing thing"
    assert after["observer_policies"] == set() and after["observer_things"] == set(), "observer left behind"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Station:
    """A station.toml for one family (from tests/pipeline/cloud_rig.py) and `station provision` on it."""

    def __init__(
        self,
        tmp_path: Path,
        lab: Lab,
        family: str,
        *,
        options: str = "",
        serial_pattern: str | None = None,
        thing_name_template: str | None = None,
        data_port: int | None = None,
        **config: Any,
    ) -> None:
        from cloud_rig import write_config

        config.setdefault("policy_document", THING_POLICY)
        path = write_config(
            tmp_path,
            lab.plane.endpoint_url,
            data_port=data_port or lab.port,
            ca_file=str(lab.data.ca_file),
            **config,
        )
        text = path.read_text().replace('flasher = "prov1"', f'flasher = "{family}"')
        text = re.sub(r"(key_source = \"[a-z]+\"\n)", lambda m: m.group(1) + options, text, count=1)
        if serial_pattern is not None:
            text = text.replace('serial_pattern = "SIM[0-9]{6}"', f'serial_pattern = "{serial_pattern}"')
        if thing_name_template is not None:
            text = re.sub(
                r"(policy_name = \"[^\"]+\"\n)",
                lambda m: m.group(1) + f'thing_name_template = "{thing_name_template}"\n',
                text,
                count=1,
            )
        path.write_text(text)
        self.config_path = path
        self.tmp_path = tmp_path

    def provision(
        self, port: str, serial: str, capsys: pytest.CaptureFixture[str]
    ) -> tuple[int, dict[str, Any]]:
        from station.cli import main

        capsys.readouterr()
        code = main(
            ["provision", "--port", port, "--serial", serial, "--config", str(self.config_path), "--json"]
        )
        out = capsys.readouterr().out.strip().splitlines()
        return code, json.loads(out[-1])

    def records(self, serial: str) -> list[Any]:
        from station.config import load_config
        from station.ledger import open_ledger

        with open_ledger(load_config(self.config_path).ledger_path) as ledger:
            assert ledger.journal_pending() == []
            return list(ledger.find(serial))

    def notes(self) -> list[Event]:
        from station.config import load_config
        from station.ledger import open_ledger

        with open_ledger(load_config(self.config_path).ledger_path) as ledger:
            return [e.event for e in ledger.events(serial="") if e.event.kind == "note"]


def serial_no() -> str:
    return f"SIM{secrets.randbelow(10**6):06d}"


def mqtt_echo(cert: str, key: str, ca: bytes, thing: str, port: int) -> None:
    """Act as the unit with the awsiotsdk (credentials read back from the simulator): connect, echo."""
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder

    topic = f"things/{thing}/echo"
    payload = json.dumps({"nonce": secrets.token_hex(8)})
    got: list[bytes] = []
    done = threading.Event()

    def on_message(topic: str, payload: bytes, **_: Any) -> None:
        got.append(payload)
        done.set()

    connection = mqtt_connection_builder.mtls_from_bytes(
        endpoint="localhost",
        port=port,
        cert_bytes=cert.encode(),
        pri_key_bytes=key.encode(),
        ca_bytes=ca,
        client_id=thing,
        clean_session=True,
    )
    # AWS allows one CONNECT per second per client id; the station's verify connected as this thing just now.
    deadline = time.monotonic() + 10
    while True:
        try:
            connection.connect().result(10)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        connection.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, on_message)[0].result(10)
        connection.publish(topic, payload, mqtt.QoS.AT_LEAST_ONCE)[0].result(10)
        assert done.wait(10), "the echo never came back"
    finally:
        connection.disconnect().result(5)
    assert got == [payload.encode()]


# ---------------------------------------------------------------------------------------------- ExpressLink


def expresslink_at(port: str, command: str, timeout: float = 15.0) -> str:
    """Send one AT command as the unit's host application would and return the reply line (OK…/ERR…)."""
    import serial

    link = serial.serial_for_url(port, baudrate=115200, timeout=0.05)
    try:
        link.write(command.encode() + b"\r\n")
        buffer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            buffer += link.read(256)
            for line in buffer.split(b"\r\n")[:-1]:
                text = line.decode("ascii", "replace")
                if text.startswith(("OK", "ERR")):
                    return text
        raise AssertionError(f"no reply to {command}")
    finally:
        link.close()


@pytest.fixture
def expresslink(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    from flashers.simulators.expresslink import ExpressLinkDevice
    from flashers.simulators.pty import PtyDevice

    model = ExpressLinkDevice(tmp_path / "units", ca_file=lab.data.ca_file, port=lab.port, backoff_s=0.1)
    with PtyDevice(model) as device:
        device.model = model
        yield device
    model.close()


@pytest.mark.lab
def test_expresslink_passes_and_then_connects_as_a_customer_device(
    lab: Lab, tmp_path: Path, expresslink: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    station = Station(
        tmp_path, lab, "expresslink", options="check_device_id = false\n", thing_name_template="{device_id}"
    )
    before = truth(lab)
    serial = serial_no()
    code, summary = station.provision(expresslink.port, serial, capsys)
    assert code == 0, summary
    (record,) = station.records(serial)
    model = expresslink.model
    assert record.thing_name == model.thing_name == record.device_id
    assert (record.family, record.key_source, record.verify_mode) == ("expresslink", "read", "device")
    assert record.certificate_pem == model.live()["cert"]
    assert_left_behind(lab, before, certificate=record.certificate_id, thing=model.thing_name)
    # On its own identity: the module connects to the customer endpoint it was given, and says so.
    from flashers.expresslink import parse_connect_state

    deadline = time.monotonic() + 10
    reply = expresslink_at(expresslink.port, "AT+CONNECT")
    while reply.startswith("ERR14 1") and time.monotonic() < deadline:  # back-off: try again shortly
        time.sleep(0.2)
        reply = expresslink_at(expresslink.port, "AT+CONNECT")
    assert reply.startswith("OK 1 CONNECTED"), reply
    state = parse_connect_state(expresslink_at(expresslink.port, "AT+CONNECT?")[3:])
    assert state is not None and state.connected and state.customer
    expresslink_at(expresslink.port, "AT+DISCONNECT")


@pytest.mark.lab
def test_expresslink_refused_by_the_policy_leaves_nothing_and_goes_back_to_staging(
    lab: Lab, tmp_path: Path, expresslink: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    station = Station(
        tmp_path,
        lab,
        "expresslink",
        options="check_device_id = false\n",
        thing_name_template="{device_id}",
        policy_document=CONNECT_ONLY_POLICY,
    )
    before = truth(lab)
    code, summary = station.provision(expresslink.port, serial_no(), capsys)
    assert code == 3 and summary["outcome"] == "ERROR", summary  # the target's policy: the station's fault
    assert summary["title"] == "Device check not allowed"
    assert_left_behind(lab, before, certificate=None, thing=None)
    assert expresslink.model.endpoint == expresslink.model.staging_endpoint


@pytest.mark.lab
def test_expresslink_label_with_the_thingname_keeps_the_check_and_catches_the_wrong_unit(
    lab: Lab, tmp_path: Path, expresslink: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    station = Station(
        tmp_path, lab, "expresslink", serial_pattern="[0-9a-f]{32}", thing_name_template="{device_id}"
    )
    before = truth(lab)
    other = secrets.token_hex(16)
    code, summary = station.provision(expresslink.port, other, capsys)
    assert code == 1 and summary["title"] == "Wrong unit in the jig", summary
    assert expresslink.model.thing_name in summary["message"]
    assert_left_behind(lab, before, certificate=None, thing=None)


# -------------------------------------------------------------------------------------------------- nRF91


@pytest.fixture
def nrf91_unit(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    """Makes simulated nRF91 modems on ptys (`make(endpoint=..., **model)`), stopped at the end."""
    from flashers.simulators.nrf91 import Nrf91Modem, new_imei
    from flashers.simulators.pty import PtyDevice

    started: list[Any] = []

    def make(**model: Any) -> Any:
        modem = Nrf91Modem(tmp_path / "units", imei=new_imei(), **model)
        device = PtyDevice(modem).start()
        device.model = modem
        started.append(device)
        return device

    yield make
    for device in started:
        device.stop()


@pytest.fixture
def issuer_env(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    monkeypatch.setenv(CA_PASSPHRASE_ENV, "factory-ca-passphrase")  # fixtures/make_fixtures.py
    return (
        str(FIXTURES / "certs" / "factory-ca.pem"),
        str(FIXTURES / "certs" / "factory-ca.key"),
        CA_PASSPHRASE_ENV,
    )


@pytest.mark.lab
def test_nrf91_with_a_station_made_key_passes_and_its_stored_credentials_connect(
    lab: Lab, tmp_path: Path, nrf91_unit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # The label is the IMEI: the device-id check stays on.
    station = Station(tmp_path, lab, "nrf91", key_source="station", serial_pattern="[0-9]{15}")
    unit = nrf91_unit()
    before = truth(lab)
    code, summary = station.provision(unit.port, unit.model.imei, capsys)
    assert code == 0, summary
    (record,) = station.records(unit.model.imei)
    assert (record.family, record.key_source, record.verify_mode) == ("nrf91", "station", "host")
    assert record.device_id == unit.model.imei
    assert_left_behind(lab, before, certificate=record.certificate_id, thing=record.thing_name)
    live = unit.model.live()
    assert live["cert"] == record.certificate_pem and live["key"] and live["ca"] == lab.data.ca_bytes.decode()
    mqtt_echo(live["cert"], live["key"], (live["ca"] or "").encode(), record.thing_name, lab.port)


@pytest.mark.lab
def test_nrf91_that_drops_off_mid_write_leaves_no_orphan(
    lab: Lab, tmp_path: Path, nrf91_unit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from flashers.simulators.nrf91 import Faults

    station = Station(tmp_path, lab, "nrf91", key_source="station", serial_pattern="[0-9]{15}")
    unit = nrf91_unit(faults=Faults(disconnect=2))
    before = truth(lab)
    code, summary = station.provision(unit.port, unit.model.imei, capsys)
    assert code == 1 and summary["title"] == "Device disconnected", summary
    assert_left_behind(lab, before, certificate=None, thing=None)


def device_key_station(tmp_path: Path, lab: Lab, issuer: tuple[str, str, str], **kw: Any) -> Station:
    timeout = kw.pop("hello_timeout_s", 20)
    return Station(
        tmp_path,
        lab,
        "nrf91",
        key_source="device",
        issuer=issuer,
        options=f"check_device_id = false\nhello_timeout_s = {timeout}\n",
        **kw,
    )


@pytest.mark.lab
def test_nrf91_with_a_device_made_key_passes_by_observing_its_hello(
    lab: Lab,
    tmp_path: Path,
    nrf91_unit: Any,
    issuer_env: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    station = device_key_station(tmp_path, lab, issuer_env)
    unit = nrf91_unit(endpoint=("localhost", lab.port))
    before = truth(lab)
    serial = serial_no()
    code, summary = station.provision(unit.port, serial, capsys)
    assert code == 0, summary
    (record,) = station.records(serial)
    assert (record.key_source, record.verify_mode) == ("device", "observe")
    assert unit.model.hellos == ["sent"]  # the hello the station saw
    live = unit.model.live()
    assert live["cert"] == record.certificate_pem and live["key"]  # the key was made in the modem
    # The observer lived for this one `station provision` run: made, then removed (certificate, thing, policy).
    assert_left_behind(lab, before, certificate=record.certificate_id, thing=record.thing_name)
    notes = station.notes()
    assert [(n.step, n.outcome) for n in notes] == [("observer_started", "ok"), ("observer_released", "ok")]
    assert notes[0].data["certificate_id"] not in truth(lab)["certificates"]

    # On its own identity: power-cycled and told to go online again, the unit connects and announces itself.
    from flashers.nrf91 import Nrf91Flasher

    with Nrf91Flasher(unit.port) as flasher:
        flasher.identify()
        flasher.go_online()
    deadline = time.monotonic() + 15
    while len(unit.model.hellos) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert unit.model.hellos == ["sent", "sent"]


@pytest.mark.lab
def test_nrf91_that_never_says_hello_fails_and_leaves_nothing(
    lab: Lab,
    tmp_path: Path,
    nrf91_unit: Any,
    issuer_env: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    station = device_key_station(tmp_path, lab, issuer_env, hello_timeout_s=2)
    unit = nrf91_unit(endpoint=("localhost", closed_port()))  # the unit cannot reach the endpoint
    before = truth(lab)
    code, summary = station.provision(unit.port, serial_no(), capsys)
    assert code == 1 and summary["title"] == "No hello from the unit", summary
    assert "within 2 s" in summary["message"]
    assert_left_behind(lab, before, certificate=None, thing=None)
    assert unit.model.live() == {"ca": None, "cert": None, "key": None}  # wiped: no live credentials


@pytest.mark.lab
def test_nrf91_hello_with_another_certificate_fails(
    lab: Lab,
    tmp_path: Path,
    nrf91_unit: Any,
    issuer_env: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone else (allowed to publish there) announces the thing with a wrong certificate id while the
    station watches: the unit FAILs at once, and nothing is left."""
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder
    from cloud_rig import REGION

    from station.identity import new_identity

    station = device_key_station(tmp_path, lab, issuer_env)
    unit = nrf91_unit(initial_cfun=4)  # no endpoint: the unit itself stays quiet
    serial = serial_no()
    thing = f"sim-{serial}"
    impostor = new_identity(f"impostor-{secrets.token_hex(4)}")
    iot = lab.plane.client("iot", region=REGION)
    arn = iot.register_certificate_without_ca(certificatePem=impostor.certificate_pem, status="ACTIVE")[
        "certificateArn"
    ]
    policy = f"impostor-{secrets.token_hex(4)}"
    iot.create_policy(
        policyName=policy,
        policyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}',
    )
    iot.attach_policy(policyName=policy, target=arn)
    assert impostor.private_key is not None
    connection = mqtt_connection_builder.mtls_from_bytes(
        endpoint="localhost",
        port=lab.port,
        cert_bytes=impostor.certificate_pem.encode(),
        pri_key_bytes=impostor.private_key.reveal(),
        ca_bytes=lab.data.ca_bytes,
        client_id=policy,
        clean_session=True,
    )
    connection.connect().result(10)
    forged = json.dumps({"imei": unit.model.imei, "certificate_id": "0" * 64, "firmware": "x"})

    def forge() -> None:
        # The station subscribes before it tells the unit to go online: publish once the unit is online.
        deadline = time.monotonic() + 30
        while unit.model.cfun != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        connection.publish(f"things/{thing}/hello", forged, mqtt.QoS.AT_LEAST_ONCE)[0].result(10)

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    before = truth(lab)
    try:
        code, summary = station.provision(unit.port, serial, capsys)
    finally:
        forger.join(30)
        connection.disconnect().result(5)
    assert code == 1 and summary["title"] == "Unit announced another certificate", summary
    assert "000000000000" in summary["message"]
    assert_left_behind(lab, before, certificate=None, thing=None)
    iot.detach_policy(policyName=policy, target=arn)
    iot.update_certificate(certificateId=impostor.certificate_id, newStatus="INACTIVE")
    iot.delete_certificate(certificateId=impostor.certificate_id)
    iot.delete_policy(policyName=policy)


@pytest.mark.lab
def test_nrf91_observer_that_cannot_connect_is_an_error_and_leaves_nothing(
    lab: Lab,
    tmp_path: Path,
    nrf91_unit: Any,
    issuer_env: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    station = device_key_station(tmp_path, lab, issuer_env, data_port=closed_port())
    unit = nrf91_unit(endpoint=("localhost", lab.port))
    before = truth(lab)
    code, summary = station.provision(unit.port, serial_no(), capsys)
    assert code == 3 and summary["title"] == "Observer cannot connect", summary
    assert_left_behind(lab, before, certificate=None, thing=None)
    assert unit.model.hellos == []  # never told to go online
    assert unit.model.live()["cert"] is None


@pytest.mark.lab
def test_a_held_station_shares_one_observer_and_reconcile_and_preflight_ignore_it(
    lab: Lab, tmp_path: Path, nrf91_unit: Any, issuer_env: tuple[str, str, str]
) -> None:
    from station.config import load_config
    from station.context import StationContext
    from station.ledger import open_ledger
    from station.registry import Registry

    station = device_key_station(tmp_path, lab, issuer_env)
    config = load_config(station.config_path)
    before = truth(lab)
    with open_ledger(config.ledger_path) as ledger:
        context = StationContext(config, ledger=ledger)
        with context:
            results = []
            for _ in range(2):
                unit = nrf91_unit(endpoint=("localhost", lab.port))
                results.append(context.provision(serial_no(), unit.port, slot="s1"))
            assert [r.outcome for r in results] == [Outcome.PASS] * 2, [r.message for r in results]
            during = truth(lab)
            assert len(during["observer_policies"]) == 1 and len(during["observer_things"]) == 1
            # Not a unit: reconcile has nothing to resolve, and preflight's checks all pass.
            assert context.reconcile() == []
            checks = Registry(config.target("lab"), station_id="preflight").preflight()
            assert all(c.ok for c in checks), [c.message for c in checks if not c.ok]
            observer_cert = next(
                c
                for c in during["certificates"]
                if c not in before["certificates"] and c not in {r.certificate_id for r in results}
            )
            assert truth(lab)["certificates"][observer_cert] == "ACTIVE"
        notes = [e.event for e in ledger.events(serial="") if e.event.kind == "note"]
    assert [n.step for n in notes] == ["observer_started", "observer_released"]
    after = truth(lab)
    assert observer_cert not in after["certificates"]
    assert after["observer_policies"] == set() and after["observer_things"] == set()
    for result in results:
        assert after["certificates"].get(result.certificate_id) == "ACTIVE"


# -------------------------------------------------------------------------------------------------- ESP32

# The ROM-loader simulator on a pty, through the unmodified esptool: a pty has no DTR/RTS to reset the chip.
ESP32_PTY_OPTIONS = 'check_device_id = false\nconnect_mode = "no-reset"\nreset_after = false\n'


@pytest.mark.lab
def test_esp32_passes_and_its_nvs_credentials_connect(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flashers.simulators.esp32 import read_nvs
    from flashers.simulators.esp32rom import Esp32RomDevice
    from flashers.simulators.pty import PtyDevice

    station = Station(tmp_path, lab, "esp32", key_source="station", options=ESP32_PTY_OPTIONS)
    model = Esp32RomDevice(tmp_path / "unit")
    with PtyDevice(model) as unit:  # the real esptool path, over a pty (no DTR/RTS: no-reset)
        before = truth(lab)
        serial = serial_no()
        code, summary = station.provision(unit.port, serial, capsys)
        assert code == 0, summary
        (record,) = station.records(serial)
        assert (record.family, record.device_id, record.verify_mode) == ("esp32", model.device_id, "host")
        assert_left_behind(lab, before, certificate=record.certificate_id, thing=record.thing_name)
        entries = read_nvs(model.flash.read(0x9000, 0x6000))  # what the firmware will read
        cert, key, ca = (
            entries[("aws_iot", name)].rstrip(b"\x00").decode()  # type: ignore[union-attr]
            for name in ("certificate", "private_key", "root_ca")
        )
        assert cert == record.certificate_pem and key
        mqtt_echo(cert, key, ca.encode(), record.thing_name, lab.port)


@pytest.mark.lab
def test_esp32_that_drops_off_mid_write_leaves_no_orphan(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flashers.simulators.esp32rom import Esp32RomDevice, Faults
    from flashers.simulators.pty import PtyDevice

    station = Station(tmp_path, lab, "esp32", key_source="station", options=ESP32_PTY_OPTIONS)
    model = Esp32RomDevice(tmp_path / "unit", faults=Faults(disconnect_on_write=1))
    with PtyDevice(model) as unit:
        before = truth(lab)
        code, summary = station.provision(unit.port, serial_no(), capsys)
        # The port vanishing is seen either as the disconnect itself or, when esptool's read times out first
        # (a busy machine), as silence: both are the unit's fault with the same next action (reseat it).
        assert code == 1 and summary["title"] in ("Device disconnected", "Device not answering"), summary
        assert summary["next_action"].startswith("Reseat the unit"), summary
        assert_left_behind(lab, before, certificate=None, thing=None)


@pytest.mark.lab
def test_nrf91_attestation_token_is_kept_in_the_record_when_the_product_asks(
    lab: Lab, tmp_path: Path, nrf91_unit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from flashers.nrf91 import Nrf91Flasher

    station = Station(
        tmp_path,
        lab,
        "nrf91",
        key_source="station",
        serial_pattern="[0-9]{15}",
        options="read_attestation = true\n",
    )
    unit = nrf91_unit()
    code, summary = station.provision(unit.port, unit.model.imei, capsys)
    assert code == 0, summary
    (record,) = station.records(unit.model.imei)
    evidence = record.extra["device_evidence"]
    # The same token the modem gives anyone who asks (read again here, independently of the station).
    with Nrf91Flasher(unit.port) as flasher:
        flasher.identify()
        token = flasher.attestation_token()
    # The identity message is the same; its COSE signature is made anew for each request.
    assert evidence["attestation"].split(".")[0] == token.text.split(".")[0]
    assert evidence["device_uuid"] == token.device_uuid == unit.model.flash.uuid
