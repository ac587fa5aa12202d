"""The QA desk's services without a screen: every action goes through `station.qa`, and the ledger and the
(in-memory) registry then hold what the CLI's commands would have left — records, `qa:<action>` notes with
the operator, certificates, things. Re-verify holds the slot on the real line while it works."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qa_fixtures import (
    CERT_ID,
    CERTS,
    REAL_ID,
    FakeCloud,
    FakeRegistry,
    Jig,
    make_config,
    make_ledger,
    record_unit,
)

from station import qa
from station.desk import QaServices
from station.errors import CertificateRejected, InputError, StationFault, UnitFault
from station.ledger.base import Ledger
from station.line import RESERVED, Line
from station.model import Target

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Rig:
    qa: QaServices
    ledger: Ledger
    cloud: FakeCloud
    calls: list[tuple[str, str, Any]]
    failing: dict[str, str]

    def notes(self, serial: str, action: str) -> list[Any]:
        return [e.event for e in self.ledger.events(serial) if e.event.step == f"qa:{action}"]

    def ops(self) -> list[tuple[str, str]]:
        return [(op, target) for op, target, _ in self.calls]


def make_rig(tmp_path: Path, *, line: Any = None, jig: Jig | None = None) -> Rig:
    calls: list[tuple[str, str, Any]] = []
    failing: dict[str, str] = {}
    cloud = FakeCloud()
    ledger = make_ledger(tmp_path)

    def factory(target: Target) -> FakeRegistry:
        return FakeRegistry(target, calls, fail=failing.get(target.name, ""), cloud=cloud)

    services = QaServices(
        make_config(tmp_path),
        ledger,
        operator="qa-anna",
        line=line,
        registry_factory=factory,
        flasher_factory=jig.factory if jig is not None else None,
    )
    return Rig(services, ledger, cloud, calls, failing)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(tmp_path)
    made.cloud.seed("lab-eu", CERT_ID, "widget-SN00000001")
    yield made
    made.ledger.close()


# ---------------------------------------------------------------------------------------------- revoke


def test_revoke_plans_from_the_ledger_then_revokes_and_records_as_the_cli_does(rig: Rig) -> None:
    record = record_unit(rig.ledger, "SN00000002")
    rig.cloud.seed("lab-eu", REAL_ID, "widget-SN00000002")
    prepared = rig.qa.prepare_revoke(record)
    assert rig.calls == []  # planning reads the ledger only
    assert prepared.title == "Revoke SN00000002?"
    assert "widget-SN00000002 deleted (the station made it)" in prepared.body
    assert "Recorded as qa-anna" in prepared.body

    result = rig.qa.revoke(record, plan=prepared.plan)
    assert result.title == "Certificate revoked" and "thing widget-SN00000002 deleted" in result.message
    assert rig.calls == [("revoke", "lab-eu", (REAL_ID, "widget-SN00000002"))]
    assert (
        rig.cloud.status("lab-eu", REAL_ID) is None and "widget-SN00000002" not in rig.cloud.things["lab-eu"]
    )
    (note,) = rig.notes("SN00000002", "revoke")
    assert note.outcome == "ok" and note.data["operator"] == "qa-anna"
    assert note.data["certificate_id"] == REAL_ID and note.data["thing_deleted"] == "widget-SN00000002"

    again = rig.qa.revoke(record)  # harmless the second time, and said so
    assert again.title == "Already revoked"


def test_revoke_keeps_a_thing_the_ledger_does_not_say_the_station_made(rig: Rig) -> None:
    record = rig.qa.find("SN00000001")[0]
    assert "widget-SN00000001 is kept (the ledger does not say the station made it)" in (
        rig.qa.prepare_revoke(record).body
    )
    rig.qa.revoke(record)
    assert rig.calls == [("revoke", "lab-eu", (CERT_ID, None))]
    assert "widget-SN00000001" in rig.cloud.things["lab-eu"]


def test_a_failed_revoke_is_raised_and_still_recorded(rig: Rig) -> None:
    rig.failing["lab-eu"] = "revoke"
    record = rig.qa.find("SN00000001")[0]
    with pytest.raises(StationFault) as error:
        rig.qa.revoke(record)
    assert error.value.title == "AWS IoT unreachable"
    assert [(n.outcome, n.data["operator"]) for n in rig.notes("SN00000001", "revoke")] == [
        ("failed", "qa-anna")
    ]
    assert rig.cloud.status("lab-eu", CERT_ID) == "ACTIVE"


# ---------------------------------------------------------------------------------------------- transfer


def test_transfer_registers_at_the_destination_first_then_revokes_the_source(rig: Rig) -> None:
    record = record_unit(rig.ledger, "SN00000002")
    rig.cloud.seed("lab-eu", REAL_ID, "widget-SN00000002")
    prepared = rig.qa.prepare_transfer(record, "lab-us", revoke_source=True)
    assert rig.calls == []
    assert "registered in lab-us (210987654321/us-east-1) as thing widget-SN00000002" in prepared.body
    assert "then it is revoked in lab-eu" in prepared.body

    result = rig.qa.transfer(record, "lab-us", revoke_source=True, plan=prepared.plan)
    assert result.title == "Certificate transferred"
    assert "now works in lab-us (210987654321/us-east-1) as widget-SN00000002; revoked in lab-eu" in (
        result.message
    )
    assert rig.ops() == [
        ("register", "lab-us"),
        ("create_thing", "lab-us"),
        ("attach", "lab-us"),
        ("revoke", "lab-eu"),
    ]
    assert rig.cloud.status("lab-us", REAL_ID) == "ACTIVE"
    assert rig.cloud.attached("lab-us", "widget-SN00000002") == {REAL_ID}
    assert rig.cloud.status("lab-eu", REAL_ID) is None
    # The same record and notes `station transfer` writes: a PASS attempt in the destination, with the operator.
    moved = [r for r in rig.ledger.find("SN00000002") if r.extra.get("qa_action") == "transfer"]
    assert [(r.outcome, r.target, r.operator, r.certificate_id) for r in moved] == [
        ("DONE", "lab-us", "qa-anna", REAL_ID)  # a transfer proves nothing about the unit
    ]
    assert moved[0].extra["source_attempt_id"] == record.attempt_id and moved[0].extra["thing_created"]
    transfer_note = rig.notes("SN00000002", "transfer")[0]
    assert transfer_note.data["destination"] == "lab-us" and transfer_note.data["operator"] == "qa-anna"
    revoke_note = rig.notes("SN00000002", "revoke")[0]
    assert revoke_note.data["transfer_attempt_id"] == moved[0].attempt_id


def test_transfer_to_the_same_registry_is_refused_before_any_aws_call(rig: Rig) -> None:
    record = record_unit(rig.ledger, "SN00000002")
    with pytest.raises(qa.NotFound):
        rig.qa.prepare_transfer(record, "nowhere", revoke_source=False)
    with pytest.raises(InputError) as error:
        rig.qa.prepare_transfer(record, "lab-eu", revoke_source=False)  # where it is registered already
    assert (error.value.title, error.value.outcome) == ("Already at target", "DONE")
    assert rig.calls == [] and rig.notes("SN00000002", "transfer") == []


# ---------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize(
    ("name", "password"),
    [("ec-p256.pem", None), ("keychain-client.cer", None), ("ec-p256-secret.p12", "secret")],
)
def test_import_registers_the_certificate_without_its_key_and_records_it(
    rig: Rig, name: str, password: str | None
) -> None:
    result = rig.qa.import_certificate(
        str(CERTS / name), password=password, serial="SN00000077", target="lab-us"
    )
    assert result.title == "Certificate registered (not verified)" and "widget-SN00000077" in result.message
    (record,) = rig.ledger.find("SN00000077")
    assert (record.outcome, record.target, record.operator, record.key_source) == (
        "DONE",  # registered, not verified: never PASS
        "lab-us",
        "qa-anna",
        "file",
    )
    assert record.extra["qa_action"] == "register" and record.extra["source"] == name
    assert rig.cloud.status("lab-us", record.certificate_id) == "ACTIVE"
    assert rig.cloud.attached("lab-us", "widget-SN00000077") == {record.certificate_id}
    assert [args[1] for op, _, args in rig.calls if op == "register"] == ["file"]
    (note,) = rig.notes("SN00000077", "register")
    assert note.outcome == "ok" and note.data["operator"] == "qa-anna" and note.data["file"] == name
    assert "PRIVATE KEY" not in repr(note) and "PRIVATE KEY" not in repr(record)

    again = rig.qa.import_certificate(
        str(CERTS / name), password=password, serial="SN00000077", target="lab-us"
    )
    assert again.title == "Already registered (not verified)"


@pytest.mark.parametrize(
    ("name", "password", "serial", "error_type"),
    [
        ("ec-p256.pem", None, "bogus", InputError),  # not the product's serial pattern
        ("ec-p256-secret.p12", "wrong", "SN00000077", InputError),  # wrong PKCS#12 password
        ("bad-sha1.pem", None, "SN00000077", CertificateRejected),  # AWS would refuse it
        ("garbage.pem", None, "SN00000077", InputError),
    ],
)
def test_import_refuses_bad_input_before_any_aws_call(
    rig: Rig, name: str, password: str | None, serial: str, error_type: type[Exception]
) -> None:
    with pytest.raises(error_type):
        rig.qa.import_certificate(str(CERTS / name), password=password, serial=serial, target="lab-us")
    assert rig.calls == [] and rig.ledger.find("SN00000077") == []


# ---------------------------------------------------------------------------------------------- re-verify


def test_reverify_holds_the_slot_on_the_line_checks_the_unit_and_records_it(tmp_path: Path) -> None:
    gate = threading.Event()
    jig = Jig("SN00000001", gate=gate)
    made = make_rig(tmp_path, jig=jig)
    made.cloud.seed("lab-eu", CERT_ID, "widget-SN00000001")
    line = Line(
        made.qa.config,
        ledger=made.ledger,
        flasher_factory=jig.factory,
        registry_factory=lambda t: FakeRegistry(t, made.calls, cloud=made.cloud),
    )
    made.qa.line = line
    try:
        record = made.qa.find("SN00000001")[0]
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(made.qa.reverify(record, "s2")))
        worker.start()
        assert jig.waiting.wait(10), "the unit never got to its own check"
        s2 = {s.name: s for s in line.slots()}["s2"]
        assert (s2.state, s2.serial, s2.step) == (RESERVED, "SN00000001", "qa:reverify")
        with pytest.raises(InputError) as refused:
            line.scan("SN00000002", slot="s2")
        assert refused.value.title == "Slot reserved"
        assert line.scan("SN00000002") == "s1"  # a scan meanwhile goes to the free slot
        gate.set()
        worker.join(10)
        assert outcome and outcome[0].title == "Re-verified"
        assert "SN00000001 connected to lab-eu (123456789012/eu-west-1)" in outcome[0].message
        assert {s.name: s.state for s in line.slots()}["s2"] == "idle"
        assert jig.opened[0] == "/dev/ttyUSB1" and jig.verified[0] == ("127.0.0.1", 8883, "widget-SN00000001")
        assert jig.closed >= 1
        (checked,) = [r for r in made.ledger.find("SN00000001") if r.extra.get("qa_action") == "reverify"]
        assert (checked.outcome, checked.slot, checked.operator, checked.verify_mode) == (
            "PASS",
            "s2",
            "qa-anna",
            "device",
        )
        assert checked.extra["reverified_attempt_id"] == "a1" and set(checked.timings_ms) >= {
            "identify",
            "registry",
            "verify",
        }
        (note,) = made.notes("SN00000001", "reverify")
        assert (note.outcome, note.data["slot"], note.data["operator"]) == ("ok", "s2", "qa-anna")
        assert [c[0] for c in made.calls if c[2] == (CERT_ID,)] == ["describe"]  # nothing changed in AWS
    finally:
        gate.set()
        line.stop(timeout=10)
        made.ledger.close()


@pytest.mark.parametrize(
    ("jig", "seeded", "title", "error_type", "recorded"),
    [
        (Jig("SN00000999"), True, "Wrong unit in the jig", UnitFault, None),
        (
            Jig("SN00000001", can_verify=False),
            True,
            "Re-verify needs the device's own check",
            InputError,
            None,
        ),
        (Jig("SN00000001"), False, "Not registered", UnitFault, "FAIL"),
        (Jig("SN00000001", refuse=True), True, "Certificate not accepted", UnitFault, "FAIL"),
    ],
    ids=["wrong-unit", "no-device-verify", "revoked", "refused"],
)
def test_reverify_refuses_and_says_what_to_do(
    tmp_path: Path, jig: Jig, seeded: bool, title: str, error_type: type[Exception], recorded: str | None
) -> None:
    made = make_rig(tmp_path, jig=jig)
    if seeded:
        made.cloud.seed("lab-eu", CERT_ID, "widget-SN00000001")
    try:
        record = made.qa.find("SN00000001")[0]
        with pytest.raises(error_type) as error:
            made.qa.reverify(record, "s2")
        assert isinstance(error.value, InputError | UnitFault | StationFault)
        assert error.value.title == title and error.value.next_action
        if title.startswith("Re-verify needs"):
            assert "never keeps a unit's key" in error.value.message
            assert "own connectivity check" in error.value.next_action
        (note,) = made.notes("SN00000001", "reverify")
        assert (note.outcome, note.title, note.data["operator"]) == ("failed", title, "qa-anna")
        records = [r for r in made.ledger.find("SN00000001") if r.extra.get("qa_action") == "reverify"]
        assert [r.outcome for r in records] == ([recorded] if recorded else [])
        assert jig.closed == 1  # the slot's port is closed again whatever happened
    finally:
        made.ledger.close()


def test_reverify_on_a_busy_slot_touches_nothing(tmp_path: Path) -> None:
    jig = Jig("SN00000001")
    made = make_rig(tmp_path, jig=jig)
    busy = type("Slot", (), {"name": "s2", "state": "busy", "serial": "SN00000005"})()
    made.qa.line = type("LineWithoutReservations", (), {"slots": lambda self: [busy]})()
    try:
        with pytest.raises(InputError) as error:
            made.qa.reverify(made.qa.find("SN00000001")[0], "s2")
        assert error.value.title == "Slot busy" and "SN00000005" in error.value.message
        assert jig.opened == [] and made.notes("SN00000001", "reverify") == []
    finally:
        made.ledger.close()


# ---------------------------------------------------------------------------------------------- ledger


def test_audit_reports_an_intact_ledger(rig: Rig) -> None:
    result = rig.qa.audit()
    assert result.title == "Ledger intact" and "rows checked" in result.message


def test_export_refuses_a_folder_and_a_missing_folder(rig: Rig, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        rig.qa.export("csv", str(tmp_path))
    with pytest.raises(InputError):
        rig.qa.export("csv", str(tmp_path / "missing" / "out.csv"))
    with pytest.raises(InputError):
        rig.qa.export("xml", str(tmp_path / "out.xml"))


def test_the_screens_start_without_loading_aws_or_crypto_libraries() -> None:
    """The QA library (boto3, cryptography) is loaded when QA first acts, not when the operator screen opens."""
    code = (
        "import sys, station.tui.app\n"
        "loaded = [m for m in ('boto3', 'botocore', 'cryptography', 'serial', 'awscrt', 'station.qa') "
        "if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
