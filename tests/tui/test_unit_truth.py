"""Issue 9 acceptance through the screens and real parts: the lab (local AWS IoT), simulated PROV/1 units on
real ptys, the real line, registry, verify and ledger; AWS is read back with the lab's own boto3 client.

- a unit revoked by the CLI is shown revoked by every view QA uses (desk list, desk detail, `station units`);
- re-verify from the desk in `station demo` passes for a unit still in its jig (the recorded unit goes back in);
- the desk's import of the seed's keychain pair (DER certificate + PKCS#12 key) into a `{product}-{serial}`
  target registers it, and with verify the unit's own identity connects.
"""

from __future__ import annotations

import csv
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input, Label, Select
from tui_fakes import type_scan, wait_until

from flashers.simulators.prov1 import Prov1Device
from flashers.simulators.pty import PtyDevice
from station.cli import main as station_main
from station.config import load_config
from station.context import StationContext
from station.desk import QaServices
from station.lab import Lab
from station.lab.demo import DemoLine
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.tui.app import StationApp, build_app
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.dialogs import ImportScreen, ReverifyScreen
from station.tui.relay import EventRelay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qa"))
from qa_rig import KEYCHAIN_CER, KEYCHAIN_P12, device_echo, forget_everywhere, keychain_device

pytestmark = [pytest.mark.lab, pytest.mark.slow]


async def type_text(pilot: Pilot[Any], text: str) -> None:
    for char in text:
        name = char if char.isalnum() else unicodedata.name(char).lower().replace("-", "_").replace(" ", "_")
        pilot.app.post_message(events.Key(name, char))
    await pilot.pause()


async def choose(pilot: Pilot[Any], selector: str, value: str) -> None:
    select = pilot.app.screen.query_one(selector, Select)
    select.focus()
    for _ in range(10):
        await pilot.press("enter", "down", "enter")
        if select.value == value:
            return
    raise AssertionError(f"{value!r} is not an option of {selector}")


async def open_desk(app: StationApp, pilot: Pilot[Any], pin: str = "0000") -> QaDeskScreen:
    await pilot.press("f3")
    await type_scan(pilot, pin)
    await wait_until(pilot, lambda: isinstance(app.screen, QaDeskScreen), what="QA desk")
    assert isinstance(app.screen, QaDeskScreen)
    return app.screen


async def find(app: StationApp, pilot: Pilot[Any], desk: QaDeskScreen, serial: str) -> Any:
    desk.query_one("#qa-search", Input).focus()
    await type_scan(pilot, serial)
    await wait_until(
        pilot,
        lambda: desk.selected() is not None and desk.selected().serial == serial,
        what=f"the records of {serial}",
    )
    return desk.selected()


def toast(app: StationApp, title: str) -> str:
    texts = [str(t.render()) for t in app.screen.query("Toast")]
    return next((t for t in texts if title in t), "")


def desk_rows(desk: QaDeskScreen) -> list[list[str]]:
    from textual.widgets import DataTable

    table = desk.query_one("#qa-records", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_a_unit_revoked_by_the_cli_reads_revoked_in_every_view(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial = "SIM0101"
    with Lab(tmp_path / "lab") as lab:
        device = Prov1Device(tmp_path / "devices", device_id=serial)
        pty = PtyDevice(device).start()
        try:
            toml = tmp_path / "station.toml"
            toml.write_text(lab.station_toml(ledger=str(tmp_path / "ledger.sqlite"), slots={"s1": pty.port}))
            config = load_config(toml)
            with open_ledger(config.ledger_path) as ledger:
                line = Line.from_context(StationContext(config, ledger=ledger))
                try:
                    line.scan(serial, slot="s1")
                    assert line.wait_idle(60)
                    (result,) = line.results()
                    assert result.outcome == Outcome.PASS, result.message
                finally:
                    line.stop(timeout=30)
            assert station_main(["revoke", serial, "--config", str(toml), "--yes", "--operator", "qa"]) == 0
            certificates = {c["certificateId"] for c in lab.iot().list_certificates()["certificates"]}
            assert result.certificate_id not in certificates  # really gone in AWS

            with open_ledger(config.ledger_path) as ledger:
                relay = EventRelay()
                line = Line.from_context(StationContext(config, ledger=ledger), on_event=relay)
                try:
                    app = build_app(
                        config, line, qa=QaServices(config, ledger, line=line), relay=relay, poll_interval=0.5
                    )
                    async with app.run_test(size=(120, 36), notifications=True) as pilot:
                        desk = await open_desk(app, pilot)
                        await find(app, pilot, desk, serial)
                        rows = {row[2] for row in desk_rows(desk)}
                        # The PASS record and the revoke both say what the unit is now.
                        assert any(r.startswith("✔ PASS · ⊘ revoked ") and r.endswith(" by qa") for r in rows)
                        assert any(r.startswith("● DONE · ⊘ revoked ") for r in rows)
                        await pilot.pause()
                        detail = str(desk.query_one("#qa-detail", Label).render())
                        assert "unit now: ⊘ revoked" in detail and "by qa" in detail
                finally:
                    line.stop(timeout=30)
        finally:
            pty.stop()
            capsys.readouterr()
            assert station_main(["units", "--config", str(toml), "--json"]) == 0
            (unit,) = [u for u in json.loads(capsys.readouterr().out) if u["serial"] == serial]
            assert unit["revoked"] is True
            assert station_main(["show", serial, "--config", str(toml)]) == 0
            shown = capsys.readouterr().out
            assert f"Unit {serial}: revoked " in shown and " by qa" in shown
            out = tmp_path / "records.csv"
            assert station_main(["export", "--config", str(toml), "--format", "csv", "--out", str(out)]) == 0
            rows = list(csv.DictReader(out.open()))
            assert {r["state"] for r in rows if r["serial"] == serial} == {"revoked"}


async def test_desk_reverify_in_the_demo_passes_for_the_unit_in_its_jig(tmp_path: Path) -> None:
    relay = EventRelay()
    demo = DemoLine(
        tmp_path / "demo",
        slots=1,
        on_event=relay,
        auto_replace=True,  # as `station demo`: a fresh unit goes into the jig after each one
        check_device_id=False,  # as `station demo`: the operator types any serial for the unit in the jig
        fault_every=0,
    )
    with demo:
        assert demo.config is not None and demo.ledger is not None
        slot = demo.slot_names[0]
        jig_unit = demo.devices[slot]
        qa = QaServices(demo.config, demo.ledger, line=demo.line, put_in_jig=demo.put_back)
        app = build_app(demo.config, demo.line, qa=qa, relay=relay, poll_interval=0.5)
        async with app.run_test(size=(120, 36), notifications=True) as pilot:
            await type_scan(pilot, "SIM0007")  # what an operator types in the demo
            card = app.operator.cards[slot]
            await wait_until(pilot, lambda: card.outcome is not None, timeout=60, what="an outcome")
            assert card.outcome == Outcome.PASS, (card.title, card.message)
            # The demo put a fresh unit in the jig meanwhile: not the recorded one.
            await wait_until(pilot, lambda: demo.devices[slot] is not jig_unit, what="a fresh unit")
            assert demo.devices[slot].device_id != jig_unit.device_id

            # Scanned again: refused on the operator screen at once, nothing touched (the default policy).
            await wait_until(pilot, lambda: card.state == "idle", what="the slot free again")
            await type_scan(pilot, "SIM0007")
            await wait_until(pilot, lambda: card.outcome == Outcome.FAIL, timeout=60, what="the refusal")
            assert card.title == "Already provisioned"
            assert card.message.startswith("SIM0007 was provisioned on ") and "send it to QA" in card.message

            desk = await open_desk(app, pilot, pin=demo.config.qa_pin or "0000")
            record = await find(app, pilot, desk, "SIM0007")
            assert record.outcome == "FAIL"  # the newest record, the refused re-scan: QA re-verifies from it
            await pilot.press("f5")
            await wait_until(pilot, lambda: isinstance(app.screen, ReverifyScreen), what="re-verify dialog")
            assert app.screen.query_one("#reverify-slot", Select).value == slot  # the record's slot
            app.screen.query_one("#ok", Button).focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: bool(toast(app, "Re-verified")), timeout=60, what="re-verified")
            assert "SIM0007 connected" in toast(app, "Re-verified")
        assert demo.devices[slot].device_id == jig_unit.device_id  # the recorded unit is in the jig
        assert [r.outcome for r in demo.ledger.find("SIM0007") if r.action == "provision"] == ["PASS", "FAIL"]
        reverified = [r for r in demo.ledger.find("SIM0007") if r.action == "reverify"]
        assert [(r.outcome, r.slot, r.device_id) for r in reverified] == [("PASS", slot, jig_unit.device_id)]


async def test_desk_import_of_the_keychain_pair_registers_and_verify_connects(tmp_path: Path) -> None:
    device = keychain_device()
    serial = "SIM0777"
    with Lab(tmp_path / "lab") as lab:
        toml = tmp_path / "station.toml"
        toml.write_text(lab.station_toml(ledger=str(tmp_path / "ledger.sqlite"), slots={"s1": "loop://s1"}))
        config = load_config(toml)
        target = next(iter(config.targets))
        assert config.targets[target].thing_name_template == "{product}-{serial}"
        forget_everywhere(lab, device.certificate_id)
        with open_ledger(config.ledger_path) as ledger:
            line = Line.from_context(StationContext(config, ledger=ledger))
            try:
                app = build_app(config, line, qa=QaServices(config, ledger, line=line), poll_interval=0.5)
                async with app.run_test(size=(120, 40), notifications=True) as pilot:
                    await open_desk(app, pilot)
                    await pilot.press("f8")
                    await wait_until(
                        pilot, lambda: isinstance(app.screen, ImportScreen), what="import dialog"
                    )
                    await type_text(pilot, str(KEYCHAIN_CER))
                    app.screen.query_one("#import-key", Input).focus()
                    await type_text(pilot, str(KEYCHAIN_P12))
                    await choose(pilot, "#import-product", "sim")
                    if app.screen.query_one("#import-target", Select).value != target:
                        await choose(pilot, "#import-target", target)
                    app.screen.query_one("#import-verify", Checkbox).value = True
                    app.screen.query_one("#import-serial", Input).focus()
                    await type_scan(pilot, serial)
                    await wait_until(
                        pilot, lambda: bool(toast(app, "registered and verified")), timeout=60, what="import"
                    )
                (record,) = ledger.find(serial)
                assert (record.action, record.outcome, record.thing_name) == (
                    "register",
                    "PASS",
                    f"sim-{serial}",
                )
                assert record.certificate_id == device.certificate_id and record.verify_mode == "host"
                # The unit's own identity connects (the device side, not the station's verify).
                assert device_echo(lab, device, f"sim-{serial}", target).messages == 3
                assert b"PRIVATE KEY" not in Path(config.ledger_path).read_bytes()
            finally:
                line.stop(timeout=30)
                forget_everywhere(lab, device.certificate_id, [f"sim-{serial}"])


async def test_desk_reprovision_replaces_the_identity_and_revokes_the_old_one(tmp_path: Path) -> None:
    from station.tui.qa.dialogs import ConfirmScreen, ReprovisionScreen

    relay = EventRelay()
    demo = DemoLine(
        tmp_path / "demo", slots=1, on_event=relay, auto_replace=True, check_device_id=False, fault_every=0
    )
    with demo:
        assert demo.config is not None and demo.ledger is not None
        slot = demo.slot_names[0]
        qa = QaServices(demo.config, demo.ledger, line=demo.line, put_in_jig=demo.put_back)
        app = build_app(demo.config, demo.line, qa=qa, relay=relay, poll_interval=0.5)
        async with app.run_test(size=(120, 36), notifications=True) as pilot:
            await type_scan(pilot, "SIM0008")
            card = app.operator.cards[slot]
            await wait_until(pilot, lambda: card.outcome is not None, timeout=60, what="an outcome")
            assert card.outcome == Outcome.PASS, (card.title, card.message)
            (first,) = demo.ledger.find("SIM0008")

            desk = await open_desk(app, pilot, pin=demo.config.qa_pin or "0000")
            await find(app, pilot, desk, "SIM0008")
            await pilot.press("f3")
            await wait_until(pilot, lambda: isinstance(app.screen, ReprovisionScreen), what="slot dialog")
            assert app.screen.query_one("#reprovision-slot", Select).value == slot
            app.screen.query_one("#ok", Button).focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the plan")
            body = str(app.screen.query_one("#confirm-body", Label).render())
            assert f"{first.certificate_id[:12]}…" in body and "only then" in body
            await pilot.press("left", "enter")
            await wait_until(
                pilot, lambda: bool(toast(app, "Re-provisioned")), timeout=60, what="re-provisioned"
            )
        state = demo.ledger.unit("SIM0008")
        assert state is not None and state.state == "provisioned"
        (new,) = state.live
        assert new.certificate_id != first.certificate_id
        assert first.certificate_id[:12] in state.note and new.certificate_id[:12] in state.note
        # boto3: the thing holds the new certificate only; the old one is gone from AWS.
        iot = demo.lab.iot()
        arns = iot.list_thing_principals(thingName=first.thing_name)["principals"]
        assert [a.rsplit("/", 1)[1] for a in arns] == [new.certificate_id]
        listed = {c["certificateId"]: c["status"] for c in iot.list_certificates()["certificates"]}
        assert first.certificate_id not in listed and listed[new.certificate_id] == "ACTIVE"
        assert demo.ledger.journal_pending() == []
