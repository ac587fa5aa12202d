"""Pilot tests of the operator screen over the scripted line: outcomes, refusals, focus, responsiveness."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, RichLog, Static
from tui_fakes import LAB_INFO, ScriptedLine, message_text, shown_word, type_scan, wait_until

from station.tui.app import StationApp
from station.tui.operator.screen import OperatorScreen
from station.tui.relay import EventRelay

WATCHED = {"ScanAccepted", "UnitStarted", "StepStarted", "StepFinished", "CompensationRan", "UnitFinished"}
PORTS = {"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1", "s3": "/dev/ttyUSB2", "s4": "/dev/ttyUSB3"}


@dataclass
class Rig:
    app: StationApp
    line: ScriptedLine
    pilot: Pilot[None]

    def card_text(self, index: int, part: str) -> str:
        return str(self.app.query_one(f"#card-{index} #card-{part}", Static).render())

    def card_classes(self, index: int) -> set[str]:
        return set(self.app.query_one(f"#card-{index}").classes)

    def focused_is_scan(self) -> bool:
        focused = self.app.focused
        return isinstance(focused, Input) and focused.id == "scan"

    def message(self) -> str:
        return message_text(self.app)

    def word(self, index: int) -> str | None:
        return shown_word(self.app, index)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    relay = EventRelay()
    line = ScriptedLine(
        PORTS, on_event=relay, scripts={"SN00000002": "fail", "SN00000003": "error", "SN00000009": "block"}
    )
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=0.1)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        yield Rig(app, line, pilot)
        line.release_all()
        assert line.wait_idle(5)


async def test_the_scan_field_has_focus_from_the_start(rig: Rig) -> None:
    assert isinstance(rig.app.screen, OperatorScreen)
    assert rig.focused_is_scan()
    assert "○ READY" in rig.card_text(1, "banner")


async def test_scan_pass_shows_on_the_card_with_word_and_symbol(rig: Rig) -> None:
    await type_scan(rig.pilot, "SN00000001")
    await wait_until(rig.pilot, lambda: "-pass" in rig.card_classes(1), what="PASS on card 1")
    assert rig.line.scanned == [("SN00000001", "s1")]
    assert rig.word(1) == "PASS"
    assert rig.card_text(1, "unit").startswith("SN00000001")
    assert rig.card_text(1, "next") == "→ Put the unit in the good bin."
    assert "✔ PASS 1" in str(rig.app.query_one("#counters", Static).render())
    assert rig.focused_is_scan()
    assert rig.app.query_one("#scan", Input).value == ""  # ready for the next scan


async def test_fail_path_shows_reason_next_action_and_rollback(rig: Rig) -> None:
    await type_scan(rig.pilot, "SN00000002")
    await wait_until(rig.pilot, lambda: "-fail" in rig.card_classes(1), what="FAIL on card 1")
    assert rig.word(1) == "FAIL"
    assert rig.card_text(1, "unit").startswith("SN00000002")
    assert rig.card_text(1, "reason") == "Certificate not accepted"  # a few words why, on the card
    assert rig.card_text(1, "next") == "→ Put the unit in the rework bin."
    assert rig.app.query_one("#card-1").border_subtitle == "✘ FAIL"  # not "idle" while a result shows
    # The technical detail and the undo steps are in the log, not on the card.
    await rig.pilot.press("f2")
    logged = " ".join(" ".join(line.text for line in rig.app.query_one("#log", RichLog).lines).split())
    assert "The unit's certificate was not accepted by 123456789012/eu-west-1." in logged
    assert "undo rollback: ok" in logged and "undo wipe: ok" in logged
    assert "rollback" not in rig.card_text(1, "steps") + rig.card_text(1, "reason")
    counters = str(rig.app.query_one("#counters", Static).render())
    assert "✘ FAIL 1" in counters and "first-pass yield 0%" in counters


async def test_error_path_tells_the_operator_to_call_a_technician(rig: Rig) -> None:
    await type_scan(rig.pilot, "SN00000003")
    await wait_until(rig.pilot, lambda: "-error" in rig.card_classes(1), what="ERROR on card 1")
    assert rig.word(1) == "ERROR"
    assert rig.card_text(1, "reason") == "AWS IoT unreachable"
    # Whatever the core suggested to a technician ("check the network and the AWS credentials"), the
    # operator reads one thing to do.
    assert rig.card_text(1, "next") == "→ Call a technician."


async def test_outcome_stays_until_the_next_scan_on_that_slot(rig: Rig) -> None:
    await type_scan(rig.pilot, "SN00000002")
    await wait_until(rig.pilot, lambda: "-fail" in rig.card_classes(1), what="FAIL on card 1")
    await rig.pilot.pause(0.2)  # several slot polls say "idle": the outcome must survive them
    assert rig.word(1) == "FAIL"
    await type_scan(rig.pilot, "1:SN00000001")
    await wait_until(rig.pilot, lambda: "-pass" in rig.card_classes(1), what="PASS replaces FAIL")
    assert rig.word(1) == "PASS" and rig.card_text(1, "unit").startswith("SN00000001")


async def test_invalid_scan_is_refused_on_the_spot_and_focus_stays(rig: Rig) -> None:
    await rig.pilot.press(*"hello", "enter")  # typed by hand this time
    await wait_until(rig.pilot, lambda: "hello" in rig.message(), what="the message line")
    assert rig.message() == "hello is not a serial this station takes: check the label and scan again."
    assert not rig.app.screen.query("Toast")  # no pop-up covering the cards
    assert rig.line.scanned == []  # nothing started
    assert "○ READY" in rig.card_text(1, "banner")
    assert rig.focused_is_scan()
    # and the next scan works straight away
    await type_scan(rig.pilot, "SN00000001")
    await wait_until(rig.pilot, lambda: "-pass" in rig.card_classes(1), what="PASS after a refused scan")


async def test_scanned_text_is_never_read_as_markup(rig: Rig) -> None:
    await type_scan(rig.pilot, "[bold]SN1[/]")
    await wait_until(rig.pilot, lambda: "SN1" in rig.message(), what="the message line")
    assert rig.message().startswith("[bold]SN1[/] is not a serial")
    await rig.pilot.press("f2")
    log = rig.app.query_one("#log", RichLog)
    assert any("[bold]SN1[/]" in line.text for line in log.lines)


async def test_slot_prefix_sends_the_unit_to_that_slot_and_a_wrong_number_is_refused(rig: Rig) -> None:
    await type_scan(rig.pilot, "3:SN00000001")
    await wait_until(rig.pilot, lambda: "-pass" in rig.card_classes(3), what="PASS on card 3")
    assert rig.line.scanned == [("SN00000001", "s3")]
    assert "-idle" in rig.card_classes(1)
    await type_scan(rig.pilot, "7:SN00000005")
    await wait_until(rig.pilot, lambda: "No such slot" in rig.message(), what="No such slot")
    assert rig.line.scanned == [("SN00000001", "s3")]
    assert rig.focused_is_scan()


async def test_ui_stays_responsive_while_a_slot_is_blocked_on_a_slow_device(rig: Rig) -> None:
    gate = threading.Event()
    rig.line.gates["SN00000009"] = gate
    waiting = rig.line.waiting.setdefault("SN00000009", threading.Event())
    await type_scan(rig.pilot, "SN00000009")
    await wait_until(rig.pilot, waiting.is_set, what="unit 9 stuck in verify")
    await wait_until(
        rig.pilot, lambda: "WORKING  verify" in rig.card_text(1, "banner"), what="card 1 shows verify"
    )

    # While slot 1 waits on its device: another scan is taken and finishes on slot 2 ...
    await type_scan(rig.pilot, "SN00000001")
    await wait_until(rig.pilot, lambda: "-pass" in rig.card_classes(2), what="PASS on card 2 while 1 is busy")
    # ... and a key press is handled.
    log = rig.app.query_one("#log", RichLog)
    assert not log.display
    await rig.pilot.press("f2")
    assert log.display
    assert rig.focused_is_scan()  # the log never takes the focus
    assert "-busy" in rig.card_classes(1) and not gate.is_set()

    gate.set()
    await wait_until(rig.pilot, lambda: "-pass" in rig.card_classes(1), what="PASS on card 1 after the gate")
    assert "✔ PASS 2" in str(rig.app.query_one("#counters", Static).render())


async def test_no_free_slot_is_refused_with_the_lines_reason(rig: Rig) -> None:
    gates = {f"SN0000010{i}": threading.Event() for i in range(1, 5)}
    for serial in gates:
        rig.line.scripts[serial] = "block"
    rig.line.gates.update(gates)
    for serial in gates:
        await type_scan(rig.pilot, serial)
    await wait_until(rig.pilot, lambda: len(rig.line.scanned) == 4, what="four slots busy")
    await type_scan(rig.pilot, "SN00000001")
    await wait_until(rig.pilot, lambda: "No free slot" in rig.message(), what="No free slot")
    assert len(rig.line.scanned) == 4
    rig.line.release_all()


async def test_quit_with_units_in_progress_needs_a_second_press(rig: Rig) -> None:
    gate = threading.Event()
    rig.line.gates["SN00000009"] = gate
    await type_scan(rig.pilot, "SN00000009")
    await wait_until(rig.pilot, lambda: rig.app.operator.busy, what="a unit in progress")
    await rig.pilot.press("ctrl+q")
    await wait_until(rig.pilot, lambda: "press Ctrl+Q again" in rig.message(), what="quit warning")
    assert rig.app.is_running
    gate.set()


async def test_event_sequence_arrives_as_typed_messages_in_order() -> None:
    seen: list[str] = []
    handled: dict[int, object] = {}  # holds each message, so no id is reused by a later one

    def hook(message: object) -> None:
        name = type(message).__name__
        # A message bubbles from the screen to the app: count each one once.
        if name in WATCHED and id(message) not in handled:
            handled[id(message)] = message
            seen.append(name)

    relay = EventRelay()
    line = ScriptedLine({"s1": "p1"}, on_event=relay, scripts={"SN00000002": "fail"})
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=None)
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        await type_scan(pilot, "SN00000002")
        await wait_until(pilot, lambda: "UnitFinished" in seen, what="UnitFinished")
    assert seen[-1] == "UnitFinished"
    assert seen.count("CompensationRan") == 2
    assert seen.index("UnitStarted") < seen.index("StepStarted") < seen.index("CompensationRan")
    assert "ScanAccepted" in seen


async def test_events_from_before_the_screen_opened_are_shown() -> None:
    from station.model import Event

    relay = EventRelay()
    line = ScriptedLine({"s1": "p1"}, on_event=relay)
    # A unit the line finished while the screen was still starting.
    relay(Event(kind="unit_started", serial="SN00000042", slot="s1"))
    relay(
        Event(
            kind="unit_finished",
            serial="SN00000042",
            slot="s1",
            outcome="ERROR",
            title="Port gone",
            message="The slot's port cannot be opened.",
            next_action="Call a technician.",
        )
    )
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(
            pilot, lambda: app.operator.cards["s1"].outcome is not None, what="the early outcome"
        )
        assert shown_word(app, 1) == "ERROR"
        assert str(app.query_one("#card-1 #card-reason", Static).render()) == "Port gone"
