"""The line floor at 80×24 and 120×40: the outcome in big letters on the finished unit's own card, the card back
to READY, the message line, scans split on CR/LF, the help panel, the history pane and the shift counters."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qa_fixtures import make_config, make_ledger
from textual import events
from textual.pilot import Pilot
from textual.widgets import Static
from tui_fakes import (
    LAB_INFO,
    ScriptedLine,
    feed_terminal,
    message_text,
    shown_word,
    type_scan,
    wait_until,
)

from station.desk import QaServices
from station.model import Event, Outcome
from station.tui.api import StationInfo
from station.tui.app import StationApp, build_app
from station.tui.operator.help import HelpContent, HelpScreen, JigUnit
from station.tui.operator.shift import SHIFT_SERIAL, SHIFT_STEP, ShiftChangeScreen
from station.tui.relay import EventRelay

PORTS = {"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1", "s3": "/dev/ttyUSB2", "s4": "/dev/ttyUSB3"}
SCRIPTS = {"SN00000002": "fail", "SN00000003": "error"}
SIZES = [(80, 24), (120, 40)]


@dataclass
class Floor:
    app: StationApp
    line: ScriptedLine
    pilot: Pilot[None]
    bells: list[int]

    def text(self, index: int, part: str) -> str:
        return str(self.app.query_one(f"#card-{index} #card-{part}", Static).render())

    def counters(self) -> str:
        return str(self.app.query_one("#counters", Static).render())


@asynccontextmanager
async def open_floor(
    size: tuple[int, int], info: StationInfo = LAB_INFO, **kwargs: Any
) -> AsyncIterator[Floor]:
    relay = EventRelay()
    line = ScriptedLine(PORTS, on_event=relay, scripts=dict(SCRIPTS))
    app = StationApp(line=line, info=info, relay=relay, poll_interval=0.1, **kwargs)
    bells: list[int] = []
    app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
    async with app.run_test(size=size) as pilot:
        yield Floor(app, line, pilot, bells)
        line.release_all()
        assert line.wait_idle(5)


@pytest.fixture(params=SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def floor(request: pytest.FixtureRequest) -> AsyncIterator[Floor]:
    async with open_floor(request.param) as rig:
        yield rig


async def test_the_finished_units_own_card_shows_the_big_word_and_its_serial(floor: Floor) -> None:
    await type_scan(floor.pilot, "3:SN00000002")
    await wait_until(floor.pilot, lambda: shown_word(floor.app, 3) == "FAIL", what="FAIL on card 3")
    assert floor.text(3, "unit").startswith("SN00000002")
    assert floor.text(3, "next") == "→ Put the unit in the rework bin."
    assert floor.app.query_one("#card-3").border_subtitle == "✘ FAIL"
    # Only that slot: the others still say READY, with no serial.
    for index in (1, 2, 4):
        assert shown_word(floor.app, index) is None and "READY" in floor.text(index, "banner")
    # The band is as wide as the card and the three letter lines are all on screen.
    band = floor.app.query_one("#card-3 #card-banner")
    assert band.size.height >= 3 and band.size.width >= 30
    assert floor.bells == [1]  # FAIL rings the bell once

    await type_scan(floor.pilot, "2:SN00000001")
    await wait_until(floor.pilot, lambda: shown_word(floor.app, 2) == "PASS", what="PASS on card 2")
    assert floor.text(2, "unit").startswith("SN00000001")
    assert floor.bells == [1]  # a PASS does not ring


async def test_an_error_card_says_call_a_technician_and_rings(floor: Floor) -> None:
    await type_scan(floor.pilot, "SN00000003")
    await wait_until(floor.pilot, lambda: shown_word(floor.app, 1) == "ERROR", what="ERROR on card 1")
    assert floor.text(1, "next") == "→ Call a technician."
    assert floor.bells == [1]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_the_card_returns_to_ready_after_card_reset_s(size: tuple[int, int]) -> None:
    info = dataclasses.replace(LAB_INFO, card_reset_s=0.4, bell=False)
    async with open_floor(size, info) as floor:
        await type_scan(floor.pilot, "2:SN00000002")
        await wait_until(floor.pilot, lambda: shown_word(floor.app, 2) == "FAIL", what="FAIL on card 2")
        await wait_until(floor.pilot, lambda: "READY" in floor.text(2, "banner"), what="READY again")
        assert shown_word(floor.app, 2) is None
        assert "SN00000002" not in floor.text(2, "unit")
        assert floor.app.query_one("#card-2").border_subtitle == "ready"
        assert floor.bells == []  # bell = false
        # The unit is still in the history and the counters.
        assert "SN00000002" in str(floor.app.query_one("#history", Static).render())
        assert "✘ FAIL 1" in floor.counters()


async def test_the_next_scan_on_the_slot_and_the_same_unit_elsewhere_clear_an_old_card(floor: Floor) -> None:
    await type_scan(floor.pilot, "1:SN00000002")
    await wait_until(floor.pilot, lambda: shown_word(floor.app, 1) == "FAIL", what="FAIL on card 1")
    # The stale card: slot 1 kept "FAIL SN…" while the same unit passed on slot 2.
    floor.line.scripts["SN00000002"] = "pass"
    await type_scan(floor.pilot, "2:SN00000002")
    await wait_until(floor.pilot, lambda: shown_word(floor.app, 2) == "PASS", what="PASS on card 2")
    assert shown_word(floor.app, 1) is None and "READY" in floor.text(1, "banner")
    assert "SN00000002" not in floor.text(1, "unit")
    # The next scan on a slot replaces its outcome at once.
    await type_scan(floor.pilot, "2:SN00000003")
    await wait_until(floor.pilot, lambda: shown_word(floor.app, 2) == "ERROR", what="ERROR on card 2")
    assert floor.text(2, "unit").startswith("SN00000003")


async def test_a_bad_scan_gives_one_sentence_in_the_message_line(floor: Floor) -> None:
    await type_scan(floor.pilot, "XYZ-123")
    await wait_until(floor.pilot, lambda: "XYZ-123" in message_text(floor.app), what="the message line")
    assert (
        message_text(floor.app)
        == "XYZ-123 is not a serial this station takes: check the label and scan again."
    )
    line = floor.app.query_one("#message")
    assert line.size.height == 1 and "-error" in line.classes
    assert not floor.app.screen.query("Toast")
    assert floor.line.scanned == []
    await type_scan(floor.pilot, "SN00000001")
    await wait_until(floor.pilot, lambda: "taken on slot 1" in message_text(floor.app), what="taken")
    assert message_text(floor.app) == "SN00000001 taken on slot 1 (s1)."


async def test_scans_in_one_read_split_on_cr_and_lf(floor: Floor) -> None:
    # A fast scanner (CR, then LF) delivering two scans in one terminal read, then the start of a third.
    await feed_terminal(floor.pilot, "SN00000001\rSN00000005\nSN0000")
    await wait_until(floor.pilot, lambda: len(floor.line.scanned) == 2, what="two scans")
    assert floor.line.scanned == [("SN00000001", "s1"), ("SN00000005", "s2")]
    field = floor.app.query_one("#scan")
    assert field.value == "SN0000"  # being typed: not a scan yet
    await feed_terminal(floor.pilot, "0006\r\n")  # CR LF is one end, not an empty scan as well
    await wait_until(floor.pilot, lambda: len(floor.line.scanned) == 3, what="the third scan")
    assert floor.line.scanned[2][0] == "SN00000006"
    assert "not a serial" not in message_text(floor.app)

    # A paste of several lines: each is a scan (Textual's Input kept only the first line).
    floor.app.query_one("#scan").post_message(events.Paste("4:SN00000007\r\nSN00000002\r\n"))
    await wait_until(floor.pilot, lambda: len(floor.line.scanned) == 5, what="two pasted scans")
    assert [serial for serial, _ in floor.line.scanned[3:]] == ["SN00000007", "SN00000002"]  # in order
    assert floor.line.scanned[3][1] == "s4"
    assert floor.app.query_one("#scan").value == ""


DEMO_HELP = HelpContent(
    intro="This is the lab, not AWS.",
    units=(
        JigUnit("slot-1", "PROV/1", "SIM00000201"),
        JigUnit("slot-2", "ExpressLink", "EL00000202", fault="drops off the line while writing"),
    ),
    faults="Every 3rd unit put in a jig is a faulty demo unit.",
    qa_pin="0000",
)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_f1_opens_the_help_with_the_demo_units_and_pin(size: tuple[int, int]) -> None:
    calls: list[int] = []

    def content() -> HelpContent:
        calls.append(1)
        return DEMO_HELP

    async with open_floor(size, help_content=content) as floor:
        assert "press F1" in message_text(floor.app)
        before = len(calls)
        await floor.pilot.press("f1")
        await wait_until(floor.pilot, lambda: isinstance(floor.app.screen, HelpScreen), what="the help")
        body = " ".join(str(floor.app.screen.query_one("#help-body", Static).render()).split())
        assert "SIM00000201 slot-1 · PROV/1 · good" in body
        assert "EL00000202 slot-2 · ExpressLink · faulty: drops off the line while writing" in body
        assert "the QA PIN of this demo is 0000." in body
        assert "F5" in body and "2:SERIAL" in body
        assert len(calls) == before + 1  # read again when the panel opens (a demo's jigs change)
        await floor.pilot.press("escape")
        await wait_until(floor.pilot, lambda: floor.app.screen is floor.app.operator, what="closed")
        assert floor.app.focused is floor.app.query_one("#scan")


async def test_help_without_demo_content_shows_no_pin(floor: Floor) -> None:
    await floor.pilot.press("f1")
    await wait_until(floor.pilot, lambda: isinstance(floor.app.screen, HelpScreen), what="the help")
    body = str(floor.app.screen.query_one("#help-body", Static).render())
    assert "What to scan" in body and "QA PIN of" not in body and "0042" not in body


async def test_the_history_lists_the_last_units_newest_first(floor: Floor) -> None:
    for index, serial in enumerate(("SN00000001", "SN00000002", "SN00000003"), start=1):
        await type_scan(floor.pilot, f"{index}:{serial}")
        await wait_until(
            floor.pilot,
            lambda s=serial: (
                floor.app.operator.history.newest_first()[:1] != []
                and floor.app.operator.history.newest_first()[0].serial == s
            ),
            what=serial,
        )
    history = floor.app.operator.history.newest_first()
    assert [(e.serial, e.outcome, e.slot) for e in history] == [
        ("SN00000003", Outcome.ERROR, "s3"),
        ("SN00000002", Outcome.FAIL, "s2"),
        ("SN00000001", Outcome.PASS, "s1"),
    ]
    if floor.app.size.width < 110:
        await floor.pilot.press("f4")  # a narrow screen shows it on demand
    pane = floor.app.query_one("#history", Static)
    await wait_until(floor.pilot, lambda: pane.display and pane.size.height > 0, what="the pane")
    lines = [line for line in str(pane.render()).splitlines() if "SN" in line]
    assert [line.split()[2] for line in lines] == ["SN00000003", "SN00000002", "SN00000001"]
    assert lines[0].endswith("⚠ ERROR") and lines[2].endswith("✔ PASS")
    assert floor.app.focused is floor.app.query_one("#scan")


def test_the_history_keeps_twenty() -> None:
    from station.tui.state import History, HistoryEntry

    history = History()
    for n in range(25):
        history.add(HistoryEntry(f"SN{n:08d}", Outcome.PASS, "s1", float(n)))
    assert len(history.newest_first()) == 20
    assert (
        history.newest_first()[0].serial == "SN00000024" and history.newest_first()[-1].serial == "SN00000005"
    )


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_a_shift_change_resets_the_counters_and_is_recorded(
    size: tuple[int, int], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    ledger = make_ledger(tmp_path)
    relay = EventRelay()
    line = ScriptedLine(PORTS, on_event=relay, scripts=dict(SCRIPTS))
    app = build_app(config, line, qa=QaServices(config, ledger, line=line), relay=relay, poll_interval=None)
    try:
        async with app.run_test(size=size) as pilot:
            await type_scan(pilot, "1:SN00000001")
            await type_scan(pilot, "2:SN00000002")
            await wait_until(pilot, lambda: app.operator.counters.total == 2, what="two units")
            counters = str(app.query_one("#counters", Static).render())
            assert "Shift 1" in counters and "✔ PASS 1" in counters and "first-pass yield 50%" in counters

            await pilot.press("f5")
            await wait_until(pilot, lambda: isinstance(app.screen, ShiftChangeScreen), what="the question")
            await pilot.press("enter")  # Cancel has the focus: a stray scan's Enter does not end the shift
            await wait_until(pilot, lambda: app.screen is app.operator, what="cancelled")
            assert app.operator.shift.number == 1 and app.operator.counters.total == 2

            await pilot.press("f5")
            await wait_until(pilot, lambda: isinstance(app.screen, ShiftChangeScreen), what="the question")
            await pilot.press("f5")  # confirmed
            await wait_until(pilot, lambda: app.operator.shift.number == 2, what="shift 2")
            counters = str(app.query_one("#counters", Static).render())
            assert "Shift 2" in counters and "✔ PASS 0" in counters and "✘ FAIL 0" in counters
            assert "first-pass yield –" in counters
            assert "Shift 2 started" in message_text(app)
            assert len(app.operator.history.newest_first()) == 2  # the history stays
            await wait_until(pilot, lambda: bool(ledger.events(SHIFT_SERIAL)), what="the shift event")
        [event] = ledger.events(SHIFT_SERIAL)
        data = event.event.data
        assert event.event.kind == "note" and event.event.step == SHIFT_STEP
        assert (data["shift"], data["pass"], data["fail"], data["error"]) == (1, 1, 1, 0)
        assert data["first_pass_yield"] == 0.5
    finally:
        line.release_all()
        line.wait_idle(5)
        ledger.close()


async def test_a_long_next_action_ends_in_an_ellipsis_at_80x24() -> None:
    relay = EventRelay()
    line = ScriptedLine(PORTS, on_event=relay)
    long_next = (
        "Flash the product's firmware first; if it fails again, put the unit in the rework bin and tell the "
        "line lead which jig it came from so the fixture can be checked before the next shift starts."
    )
    relay(Event(kind="unit_started", serial="SN00000042", slot="s2"))
    relay(
        Event(
            kind="unit_finished",
            serial="SN00000042",
            slot="s2",
            outcome="FAIL",
            title="No partition table with a very long title that cannot fit on one card line",
            message="The unit has no valid partition table at 0x8000.",
            next_action=long_next,
        )
    )
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: shown_word(app, 2) == "FAIL", what="FAIL")
        await pilot.pause()
        card = app.query_one("#card-2")
        width = card.content_size.width
        shown = str(app.query_one("#card-2 #card-next", Static).render())
        assert shown.endswith("…") and shown.startswith("→ Flash the product's firmware")
        assert all(len(row) <= width for row in shown.splitlines())
        # Everything the card draws fits inside it: the band, the serial and the action.
        for part in ("banner", "unit", "next"):
            widget = app.query_one(f"#card-2 #card-{part}")
            assert widget.region.bottom <= card.content_region.bottom, part
        # A reason that does not fit its line is cut with an ellipsis by the style, not mid-word silently.
        reason = app.query_one("#card-2 #card-reason")
        assert reason.styles.text_overflow == "ellipsis" and reason.styles.text_wrap == "nowrap"


async def test_many_slots_on_a_small_screen_keep_the_word_on_one_line() -> None:
    """8 slots at 80×24: no room for the big letters; the card says ✘ FAIL and the serial on one line, and
    the next action on the next."""
    ports = {f"s{i}": f"/dev/ttyUSB{i}" for i in range(1, 9)}
    relay = EventRelay()
    line = ScriptedLine(ports, on_event=relay, scripts={"SN00000002": "fail"})
    info = dataclasses.replace(LAB_INFO, slot_products=dict.fromkeys(ports, "widget"), bell=False)
    app = StationApp(line=line, info=info, relay=relay, poll_interval=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await type_scan(pilot, "7:SN00000002")
        await wait_until(pilot, lambda: app.operator.cards["s7"].outcome == Outcome.FAIL, what="FAIL on s7")
        await pilot.pause()
        card = app.query_one("#card-7")
        assert "-tiny" in card.classes
        assert str(app.query_one("#card-7 #card-banner", Static).render()) == "✘ FAIL  SN00000002"
        assert (
            str(app.query_one("#card-7 #card-next", Static).render()) == "→ Put the unit in the rework bin."
        )
        for part in ("banner", "next"):
            assert app.query_one(f"#card-7 #card-{part}").region.bottom <= card.content_region.bottom
    assert line.wait_idle(5)
