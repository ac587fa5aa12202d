"""The QA desk: behind the PIN, search, revoke with confirmation (recorded with the operator), export;
and the services it calls, against a real SQLite ledger and a fake registry."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qa_fixtures import CERT_ID, FIXTURES, PIN, FakeRegistry, make_config, make_ledger
from textual.pilot import Pilot
from textual.widgets import DataTable, Input
from tui_fakes import ScriptedLine, type_scan, wait_until

from station.errors import InputError, StationFault, UnitFault
from station.ledger.base import Ledger
from station.model import Target
from station.tui.app import StationApp, build_app
from station.tui.operator.screen import OperatorScreen
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.dialogs import ConfirmScreen, ExportScreen
from station.tui.qa.pin import PinScreen
from station.tui.relay import EventRelay
from station.tui.services import QaServices


@dataclass
class Desk:
    app: StationApp
    pilot: Pilot[None]
    ledger: Ledger
    calls: list[tuple[str, str, Any]]

    def toasts(self) -> list[str]:
        return [str(t.render()) for t in self.app.screen.query("Toast")]

    def qa_notes(self) -> list[Any]:
        return [e.event for e in self.ledger.events("SN00000001") if e.event.step.startswith("qa:")]


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    calls: list[tuple[str, str, Any]] = []
    config = make_config(tmp_path)
    ledger = make_ledger(tmp_path)
    relay = EventRelay()
    line = ScriptedLine({"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1"}, on_event=relay)
    app = build_app(
        config,
        line,
        ledger,
        relay=relay,
        registry_factory=lambda target: FakeRegistry(target, calls),
        poll_interval=None,
    )
    try:
        async with app.run_test(size=(100, 32), notifications=True) as pilot:
            yield Desk(app, pilot, ledger, calls)
    finally:
        ledger.close()


async def open_desk(desk: Desk) -> QaDeskScreen:
    await desk.pilot.press("f3")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, PinScreen), what="the PIN prompt")
    await type_scan(desk.pilot, PIN)
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, QaDeskScreen), what="the QA desk")
    screen = desk.app.screen
    assert isinstance(screen, QaDeskScreen)
    return screen


async def test_qa_desk_needs_the_pin_and_a_wrong_one_is_refused(desk: Desk) -> None:
    await desk.pilot.press("f3")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, PinScreen), what="the PIN prompt")
    pin = desk.app.screen.query_one("#pin", Input)
    assert desk.app.focused is pin and pin.password  # the PIN is not shown as typed
    await type_scan(desk.pilot, "1234")
    await wait_until(desk.pilot, lambda: any("Wrong PIN" in t for t in desk.toasts()), what="Wrong PIN")
    assert isinstance(desk.app.screen, PinScreen) and desk.app.focused is pin and pin.value == ""
    await desk.pilot.press("escape")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, OperatorScreen), what="back to the line")
    assert desk.app.focused is desk.app.query_one("#scan", Input)

    await open_desk(desk)
    await desk.pilot.press("escape")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, OperatorScreen), what="back to the line")
    assert desk.app.focused is desk.app.query_one("#scan", Input)  # the scanner works again at once
    assert desk.calls == []


async def test_three_wrong_pins_close_the_prompt(desk: Desk) -> None:
    await desk.pilot.press("f3")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, PinScreen), what="the PIN prompt")
    for _ in range(3):
        await type_scan(desk.pilot, "9999")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, OperatorScreen), what="prompt closed")
    assert any("QA desk locked" in t for t in desk.toasts())


async def test_search_shows_records_and_audit_trail(desk: Desk) -> None:
    screen = await open_desk(desk)
    await type_scan(desk.pilot, CERT_ID[:10])  # a certificate id prefix finds the unit too
    table = screen.query_one("#qa-records", DataTable)
    await wait_until(desk.pilot, lambda: table.row_count == 1, what="one record")
    assert [str(cell) for cell in table.get_row_at(0)[1:3]] == ["SN00000001", "✔ PASS"]
    trail = screen.query_one("#qa-trail", DataTable)
    kinds = [str(trail.get_row_at(i)[2]) for i in range(trail.row_count)]
    assert kinds == ["unit_started", "record"]
    await type_scan(desk.pilot, "SN99999999")
    await wait_until(desk.pilot, lambda: any("Not found" in t for t in desk.toasts()), what="Not found")
    assert table.row_count == 0


async def test_revoke_asks_for_confirmation_then_calls_the_core_and_is_recorded(desk: Desk) -> None:
    screen = await open_desk(desk)
    await type_scan(desk.pilot, "SN00000001")
    table = screen.query_one("#qa-records", DataTable)
    await wait_until(desk.pilot, lambda: table.row_count == 1, what="one record")

    # First time: the dialog opens with the focus on Cancel; Enter cancels, nothing is revoked.
    await desk.pilot.press("f6")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ConfirmScreen), what="confirmation")
    assert desk.app.focused is not None and desk.app.focused.id == "cancel"
    assert "SN00000001" in str(desk.app.screen.query_one(".dialog-title").render())
    await desk.pilot.press("enter")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, QaDeskScreen), what="back at the desk")
    await desk.pilot.pause(0.1)
    assert desk.calls == [] and desk.qa_notes() == []

    # Second time: move to Revoke and confirm.
    await desk.pilot.press("f6")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ConfirmScreen), what="confirmation")
    await desk.pilot.press("left")
    assert desk.app.focused is not None and desk.app.focused.id == "confirm"
    await desk.pilot.press("enter")
    await wait_until(
        desk.pilot, lambda: any("Certificate revoked" in t for t in desk.toasts()), what="revoked"
    )
    assert desk.calls == [("revoke", "lab-eu", (CERT_ID, None))]
    notes = desk.qa_notes()
    assert len(notes) == 1
    note = notes[0]
    assert note.step == "qa:revoke" and note.outcome == "ok"
    assert note.data["operator"] == "day-shift" and note.data["certificate_id"] == CERT_ID
    # The desk searches again, so the revoke shows in the unit's trail.
    trail = screen.query_one("#qa-trail", DataTable)
    await wait_until(
        desk.pilot,
        lambda: any(str(trail.get_row_at(i)[3]) == "qa:revoke" for i in range(trail.row_count)),
        what="qa:revoke in the trail",
    )


async def test_export_writes_the_records_to_a_file(desk: Desk, tmp_path: Path) -> None:
    await open_desk(desk)
    await desk.pilot.press("f9")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ExportScreen), what="export dialog")
    out = tmp_path / "records.csv"
    await type_scan(desk.pilot, str(out))
    await wait_until(desk.pilot, lambda: any("Records exported" in t for t in desk.toasts()), what="exported")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["serial"], r["outcome"], r["certificate_id"]) for r in rows] == [
        ("SN00000001", "PASS", CERT_ID)
    ]


# ---------------------------------------------------------------------------------------------------------
# The services on their own (no screen)


@pytest.fixture
def services(tmp_path: Path) -> Any:
    calls: list[tuple[str, str, Any]] = []
    ledger = make_ledger(tmp_path)
    failing: dict[str, str] = {}

    def factory(target: Target) -> FakeRegistry:
        return FakeRegistry(target, calls, fail=failing.get(target.name, ""))

    qa = QaServices(make_config(tmp_path), ledger, operator="qa-anna", registry_factory=factory)
    qa.calls, qa.failing = calls, failing  # type: ignore[attr-defined]
    yield qa
    ledger.close()


def test_a_failed_revoke_is_raised_and_still_recorded(services: Any) -> None:
    services.failing["lab-eu"] = "revoke"
    record = services.find("SN00000001")[0]
    with pytest.raises(StationFault) as error:
        services.revoke(record)
    assert error.value.title == "AWS IoT unreachable"
    notes = [e.event for e in services.ledger.events("SN00000001") if e.event.step == "qa:revoke"]
    assert [(n.outcome, n.data["operator"]) for n in notes] == [("failed", "qa-anna")]


def test_transfer_registers_the_certificate_at_the_destination_and_revokes_the_source(services: Any) -> None:
    record = services.find("widget-SN00000001")[0]
    result = services.transfer(record, "lab-us", revoke_source=True)
    assert result.title == "Certificate transferred"
    ops = [(op, target) for op, target, _ in services.calls]
    # registry.transfer provisions the destination first, then revokes the source.
    assert ops[-1] == ("revoke", "lab-eu")
    notes = [e.event for e in services.ledger.events("SN00000001") if e.event.step == "qa:transfer"]
    assert notes and notes[0].data["destination"] == "lab-us" and notes[0].data["revoke_source"] is True


@pytest.mark.parametrize(
    ("name", "password"),
    [("ec-p256.pem", None), ("ec-p256-secret.p12", "secret"), ("keychain-client.cer", None)],
)
def test_import_registers_the_certificate_without_its_key(
    services: Any, name: str, password: str | None
) -> None:
    result = services.import_certificate(
        str(FIXTURES / "certs" / name), password=password, serial="SN00000077", target="lab-us"
    )
    assert result.title == "Certificate registered"
    provisioned = [args for op, target, args in services.calls if op == "provision" and target == "lab-us"]
    assert len(provisioned) == 1 and provisioned[0][1] == "widget-SN00000077" and provisioned[0][2] == "file"
    notes = [e.event for e in services.ledger.events("SN00000077") if e.event.step == "qa:import"]
    assert notes and notes[0].data["operator"] == "qa-anna"
    assert "PRIVATE KEY" not in repr(notes[0])


def test_import_refuses_a_serial_that_is_not_the_products(services: Any) -> None:
    with pytest.raises(InputError):
        services.import_certificate(
            str(FIXTURES / "certs" / "ec-p256.pem"), password=None, serial="bogus", target="lab-us"
        )
    assert services.calls == []


class _Jig:
    """A unit back on a slot for re-verify: says its id, proves its own connection."""

    family = "prov1"

    def __init__(
        self, device_id: str, verified: list[tuple[str, int, str]], *, can_verify: bool = True
    ) -> None:
        from types import SimpleNamespace

        self.device_id = device_id
        self.verified = verified
        self.capabilities = SimpleNamespace(
            writes_key=True, device_keygen=False, device_verify=can_verify, reads_certificate=False
        )
        self.closed = False

    def identify(self) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(device_id=self.device_id, firmware="1.0")

    def device_verify(self, host: str, port: int, thing_name: str) -> None:
        self.verified.append((host, port, thing_name))

    def close(self) -> None:
        self.closed = True


def _reverify_services(tmp_path: Path, jig_id: str, *, can_verify: bool = True, busy: bool = False) -> Any:
    from types import SimpleNamespace

    calls: list[tuple[str, str, Any]] = []
    verified: list[tuple[str, int, str]] = []
    ledger = make_ledger(tmp_path)
    line = SimpleNamespace(
        slots=lambda: [SimpleNamespace(name="s2", state="busy" if busy else "idle", serial="SN00000005")]
    )
    qa = QaServices(
        make_config(tmp_path),
        ledger,
        operator="qa-anna",
        line=line,
        registry_factory=lambda target: FakeRegistry(target, calls),
        flasher_factory=lambda port, **_: _Jig(jig_id, verified, can_verify=can_verify),
    )
    qa.verified = verified  # type: ignore[attr-defined]
    return qa


def test_reverify_checks_the_registry_and_lets_the_device_prove_its_connection(tmp_path: Path) -> None:
    qa = _reverify_services(tmp_path, "SN00000001")
    record = qa.find("SN00000001")[0]
    assert qa.reverify(record, "s2").title == "Re-verified"
    assert qa.verified == [("127.0.0.1", 8883, "widget-SN00000001")]
    notes = [e.event for e in qa.ledger.events("SN00000001") if e.event.step == "qa:reverify"]
    assert [(n.outcome, n.data["slot"]) for n in notes] == [("ok", "s2")]
    qa.ledger.close()


@pytest.mark.parametrize(
    ("jig_id", "can_verify", "busy", "title"),
    [
        ("SN00000999", True, False, "Wrong unit in the jig"),
        ("SN00000001", False, False, "Cannot re-verify this family"),
        ("SN00000001", True, True, "Slot busy"),
    ],
)
def test_reverify_refuses_the_wrong_unit_a_family_without_device_verify_and_a_busy_slot(
    tmp_path: Path, jig_id: str, can_verify: bool, busy: bool, title: str
) -> None:
    qa = _reverify_services(tmp_path, jig_id, can_verify=can_verify, busy=busy)
    record = qa.find("SN00000001")[0]
    with pytest.raises((InputError, StationFault, UnitFault)) as error:
        qa.reverify(record, "s2")
    assert error.value.title == title
    assert qa.verified == []
    qa.ledger.close()


def test_audit_reports_an_intact_ledger(services: Any) -> None:
    result = services.audit()
    assert result.title == "Ledger intact" and "rows checked" in result.message
