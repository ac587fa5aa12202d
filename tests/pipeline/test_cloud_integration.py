"""The pipeline through the real cloud side: lab control plane (moto + AWS behaviour), the real `Registry`,
the real SQLite ledger and the real identity functions. The device and the verify are fakes here (the PROV/1
simulator and the data plane are exercised in test_end_to_end.py). Every failure case checks the registry
itself (boto3 list calls) for orphans, and the ledger for exactly one record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_rig import KILL_SCRIPT, registry_truth, unique_digits, write_config
from pipeline_fakes import FakeFlasher, FakeVerifier, Log

from station.cli import main as station_main
from station.config import load_config
from station.context import StationContext
from station.errors import UnitFault
from station.lab.control import ControlPlane, Throttle
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.pipeline import RECONCILE_MESSAGE
from station.registry import Registry

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def plane_server() -> Iterator[ControlPlane]:
    with ControlPlane(throttling=False) as plane:
        yield plane


@pytest.fixture
def plane(plane_server: ControlPlane) -> Iterator[ControlPlane]:
    plane_server.faults.clear()
    plane_server.throttle = Throttle(enabled=False)
    yield plane_server
    plane_server.faults.clear()
    plane_server.throttle = Throttle(enabled=False)


class Station:
    """A StationContext on the lab with a fake device per unit and a fake verify."""

    def __init__(self, tmp_path: Path, plane: ControlPlane, *, slots: int = 1, max_attempts: int = 2) -> None:
        self.log = Log()
        self.verifier = FakeVerifier(self.log)
        self.config = load_config(write_config(tmp_path, plane.endpoint_url, slots=slots))
        self.ledger = open_ledger(self.config.ledger_path)
        self.flashers: list[FakeFlasher] = []
        self.flasher_faults: dict[str, BaseException] = {}
        self.context = StationContext(
            self.config,
            ledger=self.ledger,
            flasher_factory=self.open_flasher,
            registry_factory=lambda target: Registry(
                target, station_id="it", max_attempts=max_attempts, throttle_wait_s=30, delete_wait_s=5
            ),
            verifier=self.verifier,
        )

    def open_flasher(self, port: str, **kw: Any) -> FakeFlasher:
        flasher = FakeFlasher(self.log, device_id=None, faults=dict(self.flasher_faults))
        self.flashers.append(flasher)
        return flasher

    def provision(self, serial: str) -> Any:
        return self.context.provision(serial, "loop://unit", slot="s1")


@pytest.fixture
def station(tmp_path: Path, plane: ControlPlane) -> Iterator[Station]:
    s = Station(tmp_path, plane)
    yield s
    s.ledger.close()


def assert_no_orphan(plane: ControlPlane, result: Any) -> None:
    truth = registry_truth(plane)
    assert result.certificate_id, "the attempt never got a certificate"
    assert result.certificate_id not in truth["certificates"], "orphan certificate left in the registry"
    assert result.thing_name not in truth["things"], "orphan thing left in the registry"


def one_record(station: Station, serial: str, outcome: str) -> Any:
    records = station.ledger.find(serial)
    assert [r.outcome for r in records] == [outcome]
    assert station.ledger.journal_pending() == []
    return records[0]


def test_pass_registers_certificate_thing_and_policy(station: Station, plane: ControlPlane) -> None:
    serial = f"SIM{unique_digits()}"
    result = station.provision(serial)

    assert result.outcome == Outcome.PASS, result.message
    truth = registry_truth(plane)
    assert truth["certificates"].get(result.certificate_id) == "ACTIVE"
    assert result.thing_name in truth["things"]
    iot = plane.client("iot", region="eu-west-1")
    arn = iot.describe_certificate(certificateId=result.certificate_id)["certificateDescription"][
        "certificateArn"
    ]
    assert iot.list_principal_things(principal=arn)["things"] == [result.thing_name]
    assert [p["policyName"] for p in iot.list_principal_policies(principal=arn)["policies"]] == [
        station.config.targets["lab"].policy_name
    ]
    record = one_record(station, serial, "PASS")
    assert record.certificate_arn == arn
    assert station.verifier.calls[0]["host"] == "localhost"


def test_verify_failure_leaves_no_orphan(station: Station, plane: ControlPlane) -> None:
    station.verifier.fault = UnitFault("Verify failed", "certificate not accepted", "Rework bin.")
    serial = f"SIM{unique_digits()}"
    result = station.provision(serial)

    assert result.outcome == Outcome.FAIL
    assert_no_orphan(plane, result)
    assert station.flashers[0].wiped
    record = one_record(station, serial, "FAIL")
    assert [c["action"] for c in record.compensations] == ["rollback", "wipe"]


def test_write_failure_after_registration_leaves_no_orphan(station: Station, plane: ControlPlane) -> None:
    station.flasher_faults["write_identity"] = UnitFault("Device disconnected", "gone", "Reseat.")
    serial = f"SIM{unique_digits()}"
    result = station.provision(serial)
    assert result.outcome == Outcome.FAIL
    assert result.timings_ms.get("register", 0) > 0  # the cloud side did run
    assert_no_orphan(plane, result)
    one_record(station, serial, "FAIL")


def test_control_plane_down_is_an_error_with_no_orphan(station: Station, plane: ControlPlane) -> None:
    plane.faults.set("down", service="iot")
    serial = f"SIM{unique_digits()}"
    result = station.provision(serial)
    plane.faults.clear()

    assert result.outcome == Outcome.ERROR
    assert result.title and result.next_action
    assert_no_orphan(plane, result)
    # With AWS unreachable the station cannot prove nothing was registered: the journal stays open until
    # reconcile has looked (once AWS is back), and reconcile adds no second record.
    assert [e.serial for e in station.ledger.journal_pending()] == [serial]
    assert station_main(["reconcile", "--config", str(station.config.path)]) == 0
    one_record(station, serial, "ERROR")


def test_attach_refused_after_register_rolls_back(station: Station, plane: ControlPlane) -> None:
    plane.faults.set("error", api="AttachThingPrincipal", status=403, code="UnauthorizedException")
    serial = f"SIM{unique_digits()}"
    result = station.provision(serial)
    plane.faults.clear()

    assert result.outcome == Outcome.ERROR
    assert_no_orphan(plane, result)
    record = one_record(station, serial, "ERROR")
    assert [(c["action"], c["ok"]) for c in record.compensations] == [("rollback", True), ("wipe", True)]


def test_rollback_that_fails_is_finished_by_reconcile(
    station: Station, plane: ControlPlane, tmp_path: Path
) -> None:
    # Verify fails, then AWS goes down before the rollback: the journal must stay open …
    def verify_then_cloud_down(identity: Any, **kw: Any) -> Any:
        plane.faults.set("down", service="iot")
        raise UnitFault("Verify failed", "no echo", "Rework bin.")

    station.context.pipeline._verifier = verify_then_cloud_down  # type: ignore[assignment]
    serial = f"SIM{unique_digits()}"
    result = station.provision(serial)
    plane.faults.clear()
    # The unit's outcome says AWS still holds its certificate: an ERROR, not an ordinary FAIL.
    assert result.outcome == Outcome.ERROR and result.title == "Cleanup pending"
    assert result.certificate_id in registry_truth(plane)["certificates"]
    assert len(station.ledger.journal_pending()) == 1

    # … and `station reconcile` (the CLI) removes the certificate without writing a second record.
    code = station_main(["reconcile", "--config", str(station.config.path), "--json"])
    assert code == 0
    assert_no_orphan(plane, result)
    one_record(station, serial, "ERROR")


def test_line_with_throttling_on_all_pass(tmp_path: Path, plane: ControlPlane) -> None:
    plane.throttle = Throttle(enabled=True)  # AWS's default quotas: RegisterCertificateWithoutCA 10 TPS
    station = Station(tmp_path, plane, slots=4, max_attempts=5)
    try:
        line = Line.from_context(station.context)
        serials = [f"SIM{unique_digits()}" for _ in range(12)]
        pending = list(serials)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for slot in line.slots():
                if slot.state == "idle" and pending:
                    line.scan(pending.pop(), slot=slot.name)
            time.sleep(0.005)
        assert line.wait_idle(60)
        line.stop(timeout=10)
        results = line.results()
        assert sorted(r.serial for r in results) == sorted(serials)
        assert [r.outcome for r in results] == [Outcome.PASS] * len(serials), [r.message for r in results]
        truth = registry_truth(plane)
        assert all(truth["certificates"].get(r.certificate_id) == "ACTIVE" for r in results)
    finally:
        station.ledger.close()


def test_killed_between_register_and_verify_then_reconcile(tmp_path: Path, plane: ControlPlane) -> None:
    config_path = write_config(tmp_path, plane.endpoint_url)
    marker = tmp_path / "registered"
    serial = f"SIM{unique_digits()}"
    script = KILL_SCRIPT.format(here=str(HERE), config=str(config_path), marker=str(marker), serial=serial)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else "child died"
            assert time.monotonic() < deadline, "the child never reached verify"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)  # no except/finally runs: as a power cut or kill -9
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stderr:
            child.stderr.close()

    config = load_config(config_path)
    with open_ledger(config.ledger_path) as ledger:
        (entry,) = ledger.journal_pending()
        # Killed in verify: the last write is the one after the thing was made (attach has none).
        assert entry.serial == serial and entry.stage == "thing" and entry.thing_created is True
        assert ledger.find(serial) == []
    cert_id = entry.certificate_id
    assert registry_truth(plane)["certificates"].get(cert_id) == "ACTIVE"  # the orphan a kill leaves

    assert station_main(["reconcile", "--config", str(config_path)]) == 0

    truth = registry_truth(plane)
    assert cert_id not in truth["certificates"]
    assert entry.thing_name not in truth["things"]
    with open_ledger(config.ledger_path) as ledger:
        assert ledger.journal_pending() == []
        (record,) = ledger.find(serial)
        assert record.outcome == "ERROR" and record.message == RECONCILE_MESSAGE
        assert record.certificate_id == cert_id
        assert ledger.audit().ok
    # Running it again finds nothing to do.
    assert station_main(["reconcile", "--config", str(config_path), "--json"]) == 0
