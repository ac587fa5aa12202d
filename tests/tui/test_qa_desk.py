"""The QA desk through its screens, over the real line: behind the PIN, search, revoke, transfer, register an
imported certificate, re-verify a unit back on a slot, export — asserting what the desk shows and what the
ledger and the (in-memory) registry then hold. The services on their own: test_qa_services.py."""

from __future__ import annotations

import csv
import threading
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qa_fixtures import (
    CERT_ID,
    CERTS,
    PIN,
    REAL_ID,
    FakeCloud,
    FakeRegistry,
    Jig,
    make_config,
    make_ledger,
    record_unit,
)
from textual import events
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select
from tui_fakes import type_scan, wait_until

from station.desk import QaServices
from station.errors import InputError
from station.ledger.base import Ledger
from station.line import RESERVED, Line
from station.tui.app import StationApp, build_app
from station.tui.operator.screen import OperatorScreen
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.dialogs import ConfirmScreen, ExportScreen, ImportScreen, ReverifyScreen, TransferScreen
from station.tui.qa.pin import PinScreen
from station.tui.relay import EventRelay


@dataclass
class Desk:
    app: StationApp
    pilot: Pilot[None]
    ledger: Ledger
    line: Line
    cloud: FakeCloud
    jig: Jig
    calls: list[tuple[str, str, Any]]

    def toasts(self) -> list[str]:
        return [str(t.render()) for t in self.app.screen.query("Toast")]

    def toast(self, title: str) -> str:
        """The text of the toast with this title ("" if none)."""
        return next((t for t in self.toasts() if title in t), "")

    def qa_notes(self, serial: str = "SN00000001") -> list[Any]:
        return [e.event for e in self.ledger.events(serial) if e.event.step.startswith("qa:")]

    def records(self, serial: str, action: str) -> list[Any]:
        return [r for r in self.ledger.find(serial) if r.extra.get("qa_action") == action]


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    calls: list[tuple[str, str, Any]] = []
    cloud = FakeCloud()
    cloud.seed("lab-eu", CERT_ID, "widget-SN00000001")
    jig = Jig("SN00000001")
    config = make_config(tmp_path)
    ledger = make_ledger(tmp_path)
    relay = EventRelay()

    def registries(target: Any) -> FakeRegistry:
        return FakeRegistry(target, calls, cloud=cloud)

    line = Line(
        config, ledger=ledger, on_event=relay, flasher_factory=jig.factory, registry_factory=registries
    )
    app = build_app(
        config,
        line,
        qa=QaServices(config, ledger, line=line, registry_factory=registries, flasher_factory=jig.factory),
        relay=relay,
        poll_interval=None,
    )
    try:
        async with app.run_test(size=(100, 32), notifications=True) as pilot:
            yield Desk(app, pilot, ledger, line, cloud, jig, calls)
    finally:
        if jig.gate is not None:
            jig.gate.set()
        line.stop(timeout=10)
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


async def test_wrong_pins_back_off_then_lock_and_the_lock_is_in_the_ledger(desk: Desk, monkeypatch) -> None:
    """Three wrong PINs used to close the prompt and F3 reopened it (42 tries, then the desk opened)."""
    from station import qapin

    now = [1_000_000.0]
    monkeypatch.setattr(qapin, "_now", lambda: now[0])
    await desk.pilot.press("f3")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, PinScreen), what="the PIN prompt")
    pin = desk.app.screen.query_one("#pin", Input)
    await type_scan(desk.pilot, "9999")
    await wait_until(desk.pilot, lambda: any("Wrong PIN" in t for t in desk.toasts()), what="Wrong PIN")
    await wait_until(desk.pilot, lambda: not pin.disabled, what="the field again")
    await type_scan(desk.pilot, "9998")  # a second wrong PIN: the next try must wait
    await wait_until(desk.pilot, lambda: not pin.disabled and len(desk.toasts()) >= 2, what="second refusal")
    await type_scan(desk.pilot, PIN)  # even the right PIN is refused during the back-off
    await wait_until(desk.pilot, lambda: any("Too soon" in t for t in desk.toasts()), what="Too soon")
    assert isinstance(desk.app.screen, PinScreen)
    for wrong in ("9997", "9996", "9995"):
        now[0] += 60
        await wait_until(desk.pilot, lambda: not pin.disabled, what="the field again")
        await type_scan(desk.pilot, wrong)
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, OperatorScreen), what="prompt closed")
    assert any("QA PIN locked" in t for t in desk.toasts())
    steps = [e.event.step for e in desk.ledger.events(qapin.PIN_SERIAL)]
    assert steps.count("qa:pin_failed") == 5 and steps.count("qa:pin_locked") == 1
    assert all("999" not in str(e.event) for e in desk.ledger.events(qapin.PIN_SERIAL))  # no PIN recorded

    now[0] += 60  # F3 again: still locked, even with the right PIN
    await desk.pilot.press("f3")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, PinScreen), what="the PIN prompt")
    await type_scan(desk.pilot, PIN)
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, OperatorScreen), what="refused, closed")

    now[0] += qapin.LOCK_S  # after the lock, the right PIN opens the desk
    await open_desk(desk)


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
    # The plan `station revoke` would print: the certificate, and the thing kept (the ledger of this unit
    # does not say the station made it).
    body = confirm_body(desk)
    assert f"Certificate {CERT_ID[:12]}… will be detached, deactivated and deleted in lab-eu" in body
    assert "thing widget-SN00000001 is kept" in body and "Recorded as day-shift" in body
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
    assert desk.cloud.status("lab-eu", CERT_ID) is None and "widget-SN00000001" in desk.cloud.things["lab-eu"]
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
    # The file name is filled in and Export has the focus: Enter exports (Tab-Tab-Enter no longer cancels).
    dialog = desk.app.screen
    assert desk.app.focused is dialog.query_one("#ok", Button)
    assert dialog.query_one("#export-path", Input).value.startswith("records-")
    out = tmp_path / "records.csv"
    dialog.query_one("#export-path", Input).value = str(out)
    await desk.pilot.press("enter")
    await wait_until(desk.pilot, lambda: any("Records exported" in t for t in desk.toasts()), what="exported")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["serial"], r["outcome"], r["certificate_id"]) for r in rows] == [
        ("SN00000001", "PASS", CERT_ID)
    ]


# ---------------------------------------------------------------------------------------------------------
# The dialogs, keyboard only, as a person at the desk works them


async def type_text(pilot: Pilot[None], text: str) -> None:
    """Type into the focused field (no Enter), as fast as a person pasting."""
    for char in text:
        name = char if char.isalnum() else unicodedata.name(char).lower().replace("-", "_").replace(" ", "_")
        pilot.app.post_message(events.Key(name, char))
    await pilot.pause()


async def choose(desk: Desk, selector: str, value: str) -> None:
    """Open the Select with Enter, go down to `value` with the arrow key, take it with Enter."""
    select = desk.app.screen.query_one(selector, Select)
    select.focus()
    for _ in range(10):
        await desk.pilot.press("enter", "down", "enter")
        if select.value == value:
            return
    raise AssertionError(f"{value!r} is not an option of {selector}")


async def press_button(desk: Desk, selector: str) -> None:
    desk.app.screen.query_one(selector, Button).focus()
    await desk.pilot.press("enter")


async def find_unit(desk: Desk, screen: QaDeskScreen, serial: str) -> Any:
    screen.query_one("#qa-search", Input).focus()
    await type_scan(desk.pilot, serial)
    await wait_until(
        desk.pilot,
        lambda: screen.selected() is not None and screen.selected().serial == serial,
        what=f"the record of {serial}",
    )
    return screen.selected()


def confirm_body(desk: Desk) -> str:
    return str(desk.app.screen.query_one("#confirm-body", Label).render())


def trail_steps(screen: QaDeskScreen) -> list[str]:
    trail = screen.query_one("#qa-trail", DataTable)
    return [str(trail.get_row_at(i)[3]) for i in range(trail.row_count)]


async def test_transfer_dialog_confirms_the_plan_then_moves_the_unit(desk: Desk) -> None:
    record_unit(desk.ledger, "SN00000002")
    desk.cloud.seed("lab-eu", REAL_ID, "widget-SN00000002")
    screen = await open_desk(desk)
    await find_unit(desk, screen, "SN00000002")

    async def plan_transfer() -> None:
        await desk.pilot.press("f7")
        await wait_until(
            desk.pilot, lambda: isinstance(desk.app.screen, TransferScreen), what="transfer dialog"
        )
        dialog = desk.app.screen
        assert "Transfer SN00000002 from lab-eu" in str(dialog.query_one(".dialog-title", Label).render())
        # Keeping the source is the default, as in `station transfer` (without --revoke-source).
        assert dialog.query_one("#revoke-source", Checkbox).value is False
        # The only other target is chosen already, and the focus is on the (planning) primary button.
        assert dialog.query_one("#destination", Select).value == "lab-us"
        assert desk.app.focused is dialog.query_one("#ok", Button)
        dialog.query_one("#revoke-source", Checkbox).value = True  # this test moves the unit
        await desk.pilot.press("enter")
        await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ConfirmScreen), what="the plan")

    # The plan, from the ledger alone: where it goes, as which thing, and that the source loses it.
    await plan_transfer()
    body = confirm_body(desk)
    assert "registered in lab-us (210987654321/us-east-1) as thing widget-SN00000002" in body
    assert "then it is revoked in lab-eu" in body and "Recorded as day-shift" in body
    assert desk.app.focused is not None and desk.app.focused.id == "cancel"
    await desk.pilot.press("enter")  # cancel: nothing happens
    await wait_until(desk.pilot, lambda: bool(desk.toast("Transfer cancelled")), what="cancelled")
    assert desk.calls == [] and desk.records("SN00000002", "transfer") == []

    await plan_transfer()
    await desk.pilot.press("left", "enter")
    await wait_until(desk.pilot, lambda: bool(desk.toast("Certificate transferred")), what="transferred")
    assert "SN00000002 now works in lab-us (210987654321/us-east-1) as widget-SN00000002" in desk.toast(
        "Certificate transferred"
    )
    # The registry: registered at the destination with thing and policy, gone at the source.
    assert desk.cloud.status("lab-us", REAL_ID) == "ACTIVE"
    assert desk.cloud.attached("lab-us", "widget-SN00000002") == {REAL_ID}
    assert desk.cloud.status("lab-eu", REAL_ID) is None
    # The ledger: what `station transfer --revoke-source` records, with the desk's operator.
    (moved,) = desk.records("SN00000002", "transfer")
    assert (moved.outcome, moved.target, moved.operator, moved.certificate_id) == (
        "DONE",  # a transfer proves nothing about the unit
        "lab-us",
        "day-shift",
        REAL_ID,
    )
    notes = [(n.step, n.outcome, n.data["operator"]) for n in desk.qa_notes("SN00000002")]
    assert notes == [("qa:transfer", "ok", "day-shift"), ("qa:revoke", "ok", "day-shift")]
    await wait_until(desk.pilot, lambda: "qa:transfer" in trail_steps(screen), what="the trail")
    assert screen.query_one("#qa-records", DataTable).row_count == 2


@pytest.mark.parametrize(
    ("name", "password"),
    [("ec-p256.pem", ""), ("keychain-client.cer", ""), ("ec-p256-secret.p12", "secret")],
    ids=["pem", "der", "p12-with-password"],
)
async def test_import_dialog_registers_the_certificate_and_records_it(
    desk: Desk, name: str, password: str
) -> None:
    await open_desk(desk)
    await desk.pilot.press("f8")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ImportScreen), what="import dialog")
    assert desk.app.focused is desk.app.screen.query_one("#import-path", Input)
    await type_text(desk.pilot, str(CERTS / name))
    if password:
        desk.app.screen.query_one("#import-password", Input).focus()
        await type_text(desk.pilot, password)
        assert desk.app.screen.query_one("#import-password", Input).password  # not shown as typed
    await choose(desk, "#import-target", "lab-us")
    desk.app.screen.query_one("#import-serial", Input).focus()
    await type_scan(desk.pilot, "SN00000077")  # Enter in the last field registers

    await wait_until(desk.pilot, lambda: bool(desk.toast("Certificate registered")), what="registered")
    assert "as widget-SN00000077" in desk.toast("Certificate registered")
    (record,) = desk.ledger.find("SN00000077")
    assert (record.outcome, record.target, record.operator, record.key_source) == (
        "DONE",  # registered, not verified: never PASS
        "lab-us",
        "day-shift",
        "file",
    )
    assert record.extra["qa_action"] == "register" and record.extra["source"] == name
    assert desk.cloud.status("lab-us", record.certificate_id) == "ACTIVE"
    assert desk.cloud.attached("lab-us", "widget-SN00000077") == {record.certificate_id}
    (note,) = desk.qa_notes("SN00000077")
    assert (note.step, note.outcome, note.data["operator"], note.data["file"]) == (
        "qa:register",
        "ok",
        "day-shift",
        name,
    )
    assert "PRIVATE KEY" not in repr(record) and "password" not in note.data


async def test_import_dialog_shows_why_a_file_is_refused_and_registers_nothing(desk: Desk) -> None:
    await open_desk(desk)
    await desk.pilot.press("f8")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ImportScreen), what="import dialog")
    await type_text(desk.pilot, str(CERTS / "ec-p256-secret.p12"))
    desk.app.screen.query_one("#import-password", Input).focus()
    await type_text(desk.pilot, "wrong")
    await choose(desk, "#import-target", "lab-us")
    desk.app.screen.query_one("#import-serial", Input).focus()
    await type_scan(desk.pilot, "SN00000077")
    await wait_until(desk.pilot, lambda: bool(desk.toast("Cannot open file")), what="the refusal")
    assert "wrong password" in desk.toast("Cannot open file") and "Type the password again" in desk.toast(
        "Cannot open file"
    )
    assert desk.calls == [] and desk.ledger.find("SN00000077") == []
    # The dialog opens again with what was typed (but the password), to fix what the message names.
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ImportScreen), what="the dialog again")
    again = desk.app.screen
    assert again.query_one("#import-path", Input).value == str(CERTS / "ec-p256-secret.p12")
    assert again.query_one("#import-serial", Input).value == "SN00000077"
    assert again.query_one("#import-target", Select).value == "lab-us"
    assert again.query_one("#import-password", Input).value == ""


async def test_reverify_dialog_holds_the_slot_then_records_the_units_own_check(desk: Desk) -> None:
    desk.jig.gate = threading.Event()
    screen = await open_desk(desk)
    await find_unit(desk, screen, "SN00000001")
    await desk.pilot.press("f5")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ReverifyScreen), what="re-verify dialog")
    assert "line starts no unit on it" in str(desk.app.screen.query_one("#reverify-help", Label).render())
    await choose(desk, "#reverify-slot", "s2")
    await press_button(desk, "#ok")

    await wait_until(desk.pilot, desk.jig.waiting.is_set, what="the unit's own check")
    assert desk.toast("Re-verify in progress")
    s2 = {s.name: s for s in desk.line.slots()}["s2"]
    assert (s2.state, s2.serial) == (RESERVED, "SN00000001")
    with pytest.raises(InputError) as refused:  # the line starts no unit there meanwhile
        desk.line.scan("SN00000002", slot="s2")
    assert refused.value.title == "Slot reserved"
    desk.jig.gate.set()

    await wait_until(desk.pilot, lambda: bool(desk.toast("Re-verified")), what="re-verified")
    assert "SN00000001 connected to lab-eu (123456789012/eu-west-1)" in desk.toast("Re-verified")
    assert desk.jig.opened == ["/dev/ttyUSB1"] and desk.jig.verified == [
        ("127.0.0.1", 8883, "widget-SN00000001")
    ]
    assert {s.name: s.state for s in desk.line.slots()}["s2"] == "idle"
    (checked,) = desk.records("SN00000001", "reverify")
    assert (checked.outcome, checked.slot, checked.operator, checked.verify_mode) == (
        "PASS",
        "s2",
        "day-shift",
        "device",
    )
    assert [(n.step, n.outcome, n.data["slot"]) for n in desk.qa_notes()] == [("qa:reverify", "ok", "s2")]
    await wait_until(desk.pilot, lambda: "qa:reverify" in trail_steps(screen), what="the trail")
    assert desk.cloud.status("lab-eu", CERT_ID) == "ACTIVE"  # re-verify changes nothing in AWS


async def test_reverify_of_a_family_without_device_side_verify_says_what_to_do(desk: Desk) -> None:
    desk.jig.capabilities.device_verify = False
    screen = await open_desk(desk)
    await find_unit(desk, screen, "SN00000001")
    await desk.pilot.press("f5")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ReverifyScreen), what="re-verify dialog")
    await choose(desk, "#reverify-slot", "s1")
    await press_button(desk, "#ok")
    title = "Re-verify needs the device's own check"
    await wait_until(desk.pilot, lambda: bool(desk.toast(title)), what="the refusal")
    text = desk.toast(title)
    assert "never keeps a unit's key" in text and "own connectivity check" in text
    assert desk.jig.verified == [] and desk.records("SN00000001", "reverify") == []
    assert [(n.step, n.outcome, n.data["operator"]) for n in desk.qa_notes()] == [
        ("qa:reverify", "failed", "day-shift")
    ]
    assert {s.name: s.state for s in desk.line.slots()}["s1"] == "idle"
