"""End to end through the screens: the lab (local AWS IoT), a simulated PROV/1 unit on a real pty, the real
line, registry, verify and ledger. The operator scans, the unit passes; QA enters the PIN, finds the unit,
revokes it (confirming); then the unit's own identity no longer connects."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tui_fakes import shown_word, type_scan, wait_until

from flashers.simulators.prov1 import Prov1Device, check_connectivity
from flashers.simulators.pty import PtyDevice
from station.config import load_config
from station.context import StationContext
from station.desk import QaServices
from station.lab import Lab
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.tui.app import build_app
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.dialogs import ConfirmScreen
from station.tui.relay import EventRelay

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SERIAL = "SIM0001"


async def test_scan_pass_then_qa_revoke_and_the_unit_can_no_longer_connect(tmp_path: Path) -> None:
    with Lab(tmp_path / "lab") as lab:
        device = Prov1Device(tmp_path / "devices", device_id=SERIAL)
        pty = PtyDevice(device).start()
        try:
            toml = tmp_path / "station.toml"
            toml.write_text(lab.station_toml(ledger=str(tmp_path / "ledger.sqlite"), slots={"s1": pty.port}))
            config = load_config(toml)
            target = next(iter(config.targets.values()))
            relay = EventRelay()
            with open_ledger(config.ledger_path) as ledger:
                line = Line.from_context(StationContext(config, ledger=ledger), on_event=relay)
                try:
                    app = build_app(
                        config, line, qa=QaServices(config, ledger, line=line), relay=relay, poll_interval=0.5
                    )
                    async with app.run_test(size=(100, 32), notifications=True) as pilot:
                        await type_scan(pilot, SERIAL)
                        card = app.operator.cards["s1"]
                        await wait_until(
                            pilot, lambda: card.outcome is not None, timeout=60, what="an outcome"
                        )
                        assert card.outcome == Outcome.PASS, (card.title, card.message)

                        record = ledger.find(SERIAL)[0]
                        flash = json.loads(device.flash_path.read_text())

                        def connects() -> str | None:
                            return check_connectivity(
                                str(target.endpoint),
                                target.port,
                                record.thing_name,
                                flash["cert"].encode(),
                                flash["key"].encode(),
                                lab.ca_bytes,
                                10.0,
                            )

                        assert await asyncio.to_thread(connects) is None  # the unit works

                        await pilot.press("f3")
                        await type_scan(pilot, "0000")  # the lab config's QA PIN
                        await wait_until(pilot, lambda: isinstance(app.screen, QaDeskScreen), what="QA desk")
                        await type_scan(pilot, SERIAL)
                        desk = app.screen
                        assert isinstance(desk, QaDeskScreen)
                        await wait_until(pilot, lambda: desk.selected() is not None, what="the record")
                        await pilot.press("f6")
                        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
                        await pilot.press("left", "enter")
                        await wait_until(
                            pilot,
                            lambda: any(
                                "Certificate revoked" in str(t.render()) for t in app.screen.query("Toast")
                            ),
                            timeout=30,
                            what="the revoke",
                        )
                        assert await asyncio.to_thread(connects) is not None  # revoked: refused
                    notes = [e.event for e in ledger.events(SERIAL) if e.event.step == "qa:revoke"]
                    assert [(n.outcome, n.data["operator"]) for n in notes] == [("ok", "trainee")]
                finally:
                    line.stop(timeout=30)
        finally:
            pty.stop()


async def test_lab_control_plane_down_shows_error_with_a_technician_action(tmp_path: Path) -> None:
    with Lab(tmp_path / "lab") as lab:
        device = Prov1Device(tmp_path / "devices", device_id="SIM0002")
        pty = PtyDevice(device).start()
        try:
            toml = tmp_path / "station.toml"
            toml.write_text(lab.station_toml(ledger=str(tmp_path / "ledger.sqlite"), slots={"s1": pty.port}))
            config = load_config(toml)
            relay = EventRelay()
            lab.control.faults.set("down", service="iot")
            with open_ledger(config.ledger_path) as ledger:
                line = Line.from_context(StationContext(config, ledger=ledger), on_event=relay)
                try:
                    app = build_app(
                        config, line, qa=QaServices(config, ledger, line=line), relay=relay, poll_interval=0.5
                    )
                    async with app.run_test(size=(100, 32), notifications=True) as pilot:
                        await type_scan(pilot, "SIM0002")
                        card = app.operator.cards["s1"]
                        await wait_until(
                            pilot, lambda: card.outcome is not None, timeout=90, what="an outcome"
                        )
                        assert card.outcome == Outcome.ERROR, (card.title, card.message)
                        # A station problem, in words: what happened and what to check, on the card itself.
                        assert (
                            "network" in card.next_action.lower() or "technician" in card.next_action.lower()
                        )
                        await pilot.pause()
                        assert shown_word(app, 1) == "ERROR"
                        assert "Call a technician" in str(app.query_one("#card-1 #card-next").render())
                finally:
                    line.stop(timeout=30)
                (record,) = ledger.find("SIM0002")
                assert record.outcome == "ERROR"
                # AWS could not be asked whether the register landed, so the attempt stays in the journal
                # for `station reconcile`, which resolves it once AWS answers again.
                assert [e.serial for e in ledger.journal_pending()] == ["SIM0002"]
            lab.control.faults.clear()
            from station.cli import main as station_main

            assert station_main(["reconcile", "--config", str(toml)]) == 0
            with open_ledger(config.ledger_path) as ledger:
                assert ledger.journal_pending() == []
            certificates = lab.iot().list_certificates()["certificates"]
            assert record.certificate_id not in {c["certificateId"] for c in certificates}
        finally:
            pty.stop()
