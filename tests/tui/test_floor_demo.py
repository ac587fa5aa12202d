"""The floor over the real demo line (the lab, PROV/1 simulators on ptys, the real line, flasher and ledger):
F1 names the units really sitting in the jigs and which is faulty; a unit that drops off the line mid-write
shows FAIL in big letters with the operator's words, not the flasher's; the jig's next unit gets its card."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Static
from tui_fakes import shown_word, type_scan, wait_until

from station.commands.demo import demo_help
from station.desk import QaServices
from station.lab.demo import DemoLine
from station.model import Outcome
from station.tui.app import build_app
from station.tui.operator.help import HelpScreen
from station.tui.relay import EventRelay

pytestmark = [pytest.mark.lab, pytest.mark.slow]


async def test_help_names_the_jigs_units_and_a_real_disconnect_reads_as_plain_words(tmp_path: Path) -> None:
    relay = EventRelay()
    with DemoLine(
        tmp_path,
        slots=2,
        accounts=1,
        regions=["eu-west-1"],
        on_event=relay,
        auto_replace=True,
        check_device_id=False,
    ) as demo:
        good = demo.devices["slot-1"]
        bad = demo.insert_unit("slot-2", fault="disconnect")
        assert demo.config is not None
        app = build_app(
            demo.config,
            demo.line,
            qa=QaServices(demo.config, demo.ledger, line=demo.line),
            relay=relay,
            help_content=demo_help(demo, 3),
            poll_interval=0.2,
        )
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f1")
            await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help panel")
            body = " ".join(str(app.screen.query_one("#help-body", Static).render()).split())
            assert f"{good.serial} slot-1 · PROV/1 · good" in body
            assert f"{bad.serial} slot-2 · PROV/1 · faulty: {bad.fault_text}" in body
            assert "the QA PIN of this demo is 0000" in body
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is app.operator, what="the help closed")

            # What the operator reads: the serial the panel named, scanned on its jig.
            await type_scan(pilot, f"2:{bad.serial}")
            card = app.operator.cards["slot-2"]
            await wait_until(pilot, lambda: card.outcome is not None, timeout=60, what="an outcome")
            assert card.outcome == Outcome.FAIL, (card.title, card.message)
            await pilot.pause()
            assert shown_word(app, 2) == "FAIL"
            assert str(app.query_one("#card-2 #card-unit", Static).render()).startswith(bad.serial)
            shown = " ".join(
                str(app.query_one(f"#card-2 #card-{part}", Static).render()) for part in ("next", "reason")
            )
            assert "Reseat the unit, scan again; if it fails again: rework bin." in shown.replace("\n", " ")
            for technical in ("security tag", "Nothing was committed", "FAILED", "↺"):
                assert technical not in shown
            assert demo.line.wait_idle(30)
            # The jig got a fresh unit; the help says so when opened again.
            fresh = demo.devices["slot-2"]
            assert fresh.serial != bad.serial
            assert fresh.serial in " ".join(f"{u.serial}" for u in demo_help(demo, 3)().units)
