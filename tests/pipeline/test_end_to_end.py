"""One unit end to end through real parts: a PROV/1 simulator on a real pty (pyserial opens it like hardware),
the real PROV/1 flasher, the lab control plane (moto + AWS behaviour) with the real `Registry`, the lab data
plane (TLS front + broker) with the real MQTT verify, the real identities and the real SQLite ledger.

Each case checks the outcome and the operator's words, that the registry itself (boto3 list calls) holds no
certificate or thing without a PASS record, and that the ledger holds exactly one record for the unit.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_rig import REGION, registry_truth, unique_digits, write_config

from flashers.simulators.prov1 import Faults, Prov1Device
from flashers.simulators.pty import PtyDevice
from station.cli import main as station_main
from station.config import load_config
from station.context import StationContext
from station.lab.control import DEFAULT_ACCOUNT_ID, ControlPlane, Throttle
from station.lab.dataplane import DataPlane
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.registry import Registry

pytestmark = [pytest.mark.lab, pytest.mark.slow]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
THING_POLICY = (FIXTURES / "policies" / "thing-policy.json").read_text()
# Connect only: the unit's certificate is accepted, but it may not subscribe or publish its verify topic.
CONNECT_ONLY_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", '
    '"Resource": "arn:aws:iot:REGION:ACCOUNT:client/${iot:Connection.Thing.ThingName}"}]}'
)


class Lab:
    def __init__(self, plane: ControlPlane, data: DataPlane) -> None:
        self.plane = plane
        self.data = data
        self.port = data.port_for(DEFAULT_ACCOUNT_ID, REGION)


@pytest.fixture(scope="module")
def lab_parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with ControlPlane(throttling=False) as plane:
        data = DataPlane({(DEFAULT_ACCOUNT_ID, REGION): 0}, tmp_path_factory.mktemp("lab"))
        data.start()
        try:
            yield Lab(plane, data)
        finally:
            data.stop()


@pytest.fixture
def lab(lab_parts: Lab) -> Iterator[Lab]:
    lab_parts.plane.faults.clear()
    lab_parts.plane.throttle = Throttle(enabled=False)
    yield lab_parts
    lab_parts.plane.faults.clear()
    lab_parts.plane.throttle = Throttle(enabled=False)


class Unit:
    """A simulated PROV/1 device on its own pty."""

    def __init__(self, state_dir: Path, serial: str, *, device_id: str | None = None, **faults: Any) -> None:
        self.serial = serial
        self.model = Prov1Device(state_dir, device_id=device_id or serial, faults=Faults(**faults))
        self.pty = PtyDevice(self.model).start()
        self.port = self.pty.port

    def flash(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.model.flash_path.read_text())
        return data

    def stop(self) -> None:
        self.pty.stop()


class Station:
    def __init__(self, tmp_path: Path, lab: Lab, *, slots: int = 1, **config: Any) -> None:
        self.tmp_path = tmp_path
        self.lab = lab
        config.setdefault("policy_document", THING_POLICY)
        self.config_path = write_config(
            tmp_path,
            lab.plane.endpoint_url,
            slots=slots,
            data_port=lab.port,
            ca_file=str(lab.data.ca_file),
            **config,
        )
        self.config = load_config(self.config_path)
        self.ledger = open_ledger(self.config.ledger_path)
        self.context = StationContext(
            self.config,
            ledger=self.ledger,
            registry_factory=lambda target: Registry(
                target, station_id="e2e", max_attempts=2, throttle_wait_s=30, delete_wait_s=5
            ),
        )
        self.units: list[Unit] = []

    def unit(self, serial: str | None = None, **kw: Any) -> Unit:
        unit = Unit(self.tmp_path / "devices", serial or f"SIM{unique_digits()}", **kw)
        self.units.append(unit)
        return unit

    def provision(self, unit: Unit) -> Any:
        return self.context.provision(unit.serial, unit.port, slot="s1")

    def close(self) -> None:
        for unit in self.units:
            unit.stop()
        self.ledger.close()


@pytest.fixture
def station(tmp_path: Path, lab: Lab) -> Iterator[Station]:
    s = Station(tmp_path, lab)
    yield s
    s.close()


def assert_clean(lab: Lab, station: Station, result: Any, outcome: str) -> None:
    """Exactly one record; and the registry holds the unit's certificate only if that record is a PASS."""
    records = station.ledger.find(result.serial)
    assert [r.outcome for r in records] == [outcome]
    assert station.ledger.journal_pending() == [], result.compensations
    truth = registry_truth(lab.plane)
    if outcome == "PASS":
        assert truth["certificates"].get(result.certificate_id) == "ACTIVE"
    else:
        if result.certificate_id:
            assert result.certificate_id not in truth["certificates"], "orphan certificate"
        if result.thing_name:
            assert result.thing_name not in truth["things"], "orphan thing"


def device_echo(flash: dict[str, Any], thing: str, port: int, ca: bytes) -> list[bytes]:
    """Act as the device with the awsiotsdk: its cert and key from its flash file; publish and get it back."""
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder

    got: list[bytes] = []
    done = threading.Event()
    topic = f"things/{thing}/echo"
    payload = json.dumps({"counter": 1, "message": "TEST", "nonce": secrets.token_hex(4)}).encode()

    def on_message(topic: str, payload: bytes, **kw: Any) -> None:
        got.append(payload)
        done.set()

    connection = mqtt_connection_builder.mtls_from_bytes(
        endpoint="localhost",
        port=port,
        cert_bytes=flash["cert"].encode(),
        pri_key_bytes=flash["key"].encode(),
        ca_bytes=ca,
        client_id=thing,
        clean_session=True,
        keep_alive_secs=30,
    )
    time.sleep(
        1.0
    )  # AWS allows one CONNECT per second per client id; the verify just connected as this thing
    connection.connect().result(10)
    try:
        sub, _ = connection.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, on_message)
        sub.result(10)
        pub, _ = connection.publish(topic, payload.decode(), mqtt.QoS.AT_LEAST_ONCE)
        pub.result(10)
        assert done.wait(10), "the echo never came back"
    finally:
        connection.disconnect().result(5)
    assert got == [payload]
    return got


# ------------------------------------------------------------------------------------------------- PASS


def test_pass_end_to_end_then_the_device_connects_and_echoes(station: Station, lab: Lab) -> None:
    unit = station.unit()
    code = station_main(
        [
            "provision",
            "--port",
            unit.port,
            "--serial",
            unit.serial,
            "--config",
            str(station.config_path),
            "--json",
        ]
    )
    assert code == 0
    (record,) = station.ledger.find(unit.serial)
    assert record.outcome == "PASS" and record.thing_name == f"sim-{unit.serial}"
    assert record.device_id == unit.serial and record.verify_mode == "host"
    assert station.ledger.journal_pending() == []
    assert registry_truth(lab.plane)["certificates"].get(record.certificate_id) == "ACTIVE"

    flash = unit.flash()
    assert "PRIVATE KEY" in flash["key"] and flash["cert"] == record.certificate_pem
    assert flash["ca"] == lab.data.ca_bytes.decode()
    device_echo(flash, record.thing_name, lab.port, lab.data.ca_bytes)


def test_corrupted_and_lost_frames_are_recovered(station: Station, lab: Lab) -> None:
    unit = station.unit(corrupt=0.05, lose=0.05, seed=7)
    result = station.provision(unit)
    assert result.outcome == Outcome.PASS, result.message
    assert unit.model.counters["corrupted"] + unit.model.counters["lost"] > 0  # the faults did happen
    assert_clean(lab, station, result, "PASS")


# ------------------------------------------------------------------------------------------------- FAIL


def test_wrong_unit_in_the_jig(station: Station, lab: Lab) -> None:
    before = registry_truth(lab.plane)
    unit = station.unit(device_id=f"SIM{unique_digits()}")
    result = station.provision(unit)

    assert result.outcome == Outcome.FAIL
    assert (
        result.message == f"wrong unit in the jig: scanned {unit.serial}, device says {unit.model.device_id}."
    )
    assert result.next_action == "Put the right unit in the jig and scan again."
    assert registry_truth(lab.plane) == before  # nothing was registered
    assert unit.flash()["cert"] is None
    assert_clean(lab, station, result, "FAIL")


def test_device_disconnects_mid_write(station: Station, lab: Lab) -> None:
    unit = station.unit(disconnect=5)
    result = station.provision(unit)

    assert result.outcome == Outcome.FAIL, result.message
    assert result.title == "Device disconnected"
    assert result.timings_ms.get("register", 0) > 0
    assert unit.flash()["cert"] is None  # nothing was committed
    assert_clean(lab, station, result, "FAIL")
    assert result.compensations[0].action == "rollback" and result.compensations[0].ok


def test_silent_device(station: Station, lab: Lab) -> None:
    before = registry_truth(lab.plane)
    unit = station.unit(silent=True)
    result = station.provision(unit)
    assert result.outcome == Outcome.FAIL
    assert result.title == "Device not answering"
    assert registry_truth(lab.plane) == before
    assert_clean(lab, station, result, "FAIL")


def test_policy_that_forbids_verify(tmp_path: Path, lab: Lab) -> None:
    station = Station(tmp_path, lab, policy_document=CONNECT_ONLY_POLICY)
    try:
        unit = station.unit()
        result = station.provision(unit)
        assert result.outcome == Outcome.FAIL, result.message
        assert "verify" in result.title.lower() or "policy" in result.message.lower()
        assert unit.flash()["cert"] is None  # the device's credentials were wiped with the rollback
        assert_clean(lab, station, result, "FAIL")
    finally:
        station.close()


# ------------------------------------------------------------------------------------------------ ERROR


def test_lab_control_plane_down(station: Station, lab: Lab) -> None:
    lab.plane.faults.set("down", service="iot")
    unit = station.unit()
    result = station.provision(unit)
    lab.plane.faults.clear()

    assert result.outcome == Outcome.ERROR
    assert result.next_action
    assert unit.flash()["cert"] is None
    # The station could not look at AWS after the failed register: reconcile does, once AWS is back.
    assert len(station.ledger.journal_pending()) == 1
    assert station_main(["reconcile", "--config", str(station.config_path)]) == 0
    assert_clean(lab, station, result, "ERROR")


def test_lab_throttling_on_a_line_of_four(tmp_path: Path, lab: Lab) -> None:
    lab.plane.throttle = Throttle(quotas={"RegisterCertificateWithoutCA": 4}, enabled=True)
    station = Station(tmp_path, lab, slots=4)
    line = Line.from_context(station.context)
    try:
        units = [station.unit() for _ in range(8)]
        queue = list(units)
        deadline = time.monotonic() + 90
        while queue and time.monotonic() < deadline:
            for slot in line.slots():
                if slot.state == "idle" and queue:
                    unit = queue.pop(0)
                    line.scan(unit.serial, slot=slot.name, port=unit.port)
            time.sleep(0.01)
        assert line.wait_idle(90)
        results = line.results()
        assert [r.outcome for r in results] == [Outcome.PASS] * 8, [r.message for r in results]
        for result in results:
            assert_clean(lab, station, result, "PASS")
    finally:
        line.stop(timeout=30)
        station.close()


# ----------------------------------------------------------------------------------- device-made keys


def test_device_made_key_signed_by_the_factory_ca_and_device_side_verify(
    tmp_path: Path, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATION_E2E_CA_PASSPHRASE", "factory-ca-passphrase")  # fixtures/make_fixtures.py
    station = Station(
        tmp_path,
        lab,
        key_source="device",
        issuer=(
            str(FIXTURES / "certs" / "factory-ca.pem"),
            str(FIXTURES / "certs" / "factory-ca.key"),
            "STATION_E2E_CA_PASSPHRASE",
        ),
    )
    try:
        unit = station.unit()
        result = station.provision(unit)
        assert result.outcome == Outcome.PASS, result.message
        assert result.key_source == "device" and result.verify_mode == "device"
        assert unit.flash()["cert"] == result.certificate_pem
        assert "PRIVATE KEY" in (unit.flash()["key"] or "")  # made on the device, never seen by the station
        assert_clean(lab, station, result, "PASS")
    finally:
        station.close()


def test_a_line_provisioned_unit_is_revoked_with_the_thing_the_station_made(
    station: Station, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = station.unit()
    result = station.provision(unit)
    assert result.outcome == Outcome.PASS
    (record,) = station.ledger.find(unit.serial)
    assert record.certificate_pem and record.extra.get("thing_created") is True
    assert result.thing_name in registry_truth(lab.plane)["things"]

    def listed() -> dict[str, Any]:
        capsys.readouterr()
        assert station_main(["units", "--config", str(station.config_path), "--json"]) == 0
        return {u["serial"]: u for u in json.loads(capsys.readouterr().out)}

    assert listed()[unit.serial]["revoked"] is False
    code = station_main(["revoke", unit.serial, "--config", str(station.config_path), "--yes", "--json"])
    assert code == 0
    # The revoke is the unit's latest attempt (DONE: it proved nothing about the identity); the listing
    # must not let QA believe the identity works.
    after = listed()[unit.serial]
    assert after["outcome"] == "DONE" and after["revoked"] is True
    truth = registry_truth(lab.plane)
    assert record.certificate_id not in truth["certificates"]
    assert result.thing_name not in truth["things"], "the station made this thing, so revoke removes it"
