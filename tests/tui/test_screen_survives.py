"""The operator screen survives bad input and its own bugs: one slot's failure never closes the screen."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import Input, Static
from tui_fakes import LAB_INFO, ScriptedLine, message_text, shown_word, type_scan, wait_until

from station.tui.app import StationApp
from station.tui.relay import EventRelay
from station.tui.state import CardState

PORTS = {"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1"}


def _card(app: StationApp, index: int, part: str) -> str:
    return str(app.query_one(f"#card-{index} #card-{part}", Static).render())


def _message(app: StationApp) -> str:
    return message_text(app)


async def _submit(pilot: Any, text: str) -> None:
    """A scan of any length, delivered at once (typing 5,000 keys one by one would take minutes)."""
    field = pilot.app.query_one("#scan", Input)
    field.value = text
    await pilot.press("enter")
    await pilot.pause()


@pytest.mark.parametrize("scan", ["7" * 5000 + ":SN00000001", "x" * 10_000, "9" * 40 + ":SN00000001"])
async def test_long_scans_are_refused_and_the_screen_stays(scan: str) -> None:
    """Regression: a 5,000-digit slot prefix raised ValueError in parse_scan and closed the screen (exit 0)."""
    relay = EventRelay()
    line = ScriptedLine(PORTS, on_event=relay)
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=None)
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await _submit(pilot, scan)
        await wait_until(pilot, lambda: "not" in _message(app))
        assert "not a serial" in _message(app) or "No such slot" in _message(app)
        assert line.scanned == []
        await type_scan(pilot, "SN00000001")  # and the next scan still works
        await wait_until(pilot, lambda: shown_word(app, 1) == "PASS", what="PASS")
    assert app.return_code in (None, 0)


async def test_a_failing_handler_is_shown_on_its_slot_and_the_others_keep_running(monkeypatch) -> None:
    real_apply = CardState.apply

    def apply(self: CardState, event: Any) -> None:
        if self.slot == "s1" and event.kind == "unit_finished":
            raise RuntimeError("widget bug")
        real_apply(self, event)

    monkeypatch.setattr(CardState, "apply", apply)
    relay = EventRelay()
    line = ScriptedLine(PORTS, on_event=relay)
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=None)
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await type_scan(pilot, "1:SN00000001")
        await type_scan(pilot, "2:SN00000002")
        await wait_until(pilot, lambda: shown_word(app, 2) == "PASS", what="PASS on slot 2")
        # The slot's own card says so (the message line may already show a newer scan).
        await wait_until(pilot, lambda: "missed an update" in _card(app, 1, "reason"), what="the card")
        assert _card(app, 1, "next") == "→ Wait for the outcome; if none shows, call a technician."
        assert line.wait_idle(5)
        await type_scan(pilot, "2:SN00000003")  # the screen still takes scans
        await wait_until(pilot, lambda: ("SN00000003", "s2") in line.scanned, what="third scan")
    assert app.return_code in (None, 0)


def test_a_screen_that_ends_on_an_error_makes_station_run_exit_error(capsys) -> None:
    from station.cli import EXIT_ERROR
    from station.commands.run import screen_ended

    assert screen_ended(1) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "stopped after an unexpected error" in err and "Next:" in err


async def test_a_crashed_screen_has_a_non_zero_return_code(monkeypatch) -> None:
    """What run_app now returns to `station run`/`station demo` (it returned 0 whatever happened)."""

    def crash(self: StationApp) -> None:
        raise RuntimeError("boom at mount")

    monkeypatch.setattr(StationApp, "on_mount", crash, raising=False)
    relay = EventRelay()
    app = StationApp(line=ScriptedLine(PORTS, on_event=relay), info=LAB_INFO, relay=relay, poll_interval=None)
    with pytest.raises(RuntimeError):
        async with app.run_test(size=(100, 30)):
            pass
    assert app.return_code == 1
