"""Snapshot tests of the main screens, and the README's screenshot of the operator screen.

Nothing run-specific reaches the screen: the scripted line runs each unit instantly with fixed step
durations, events and the app's clock are pinned to one instant, ports are fixed names, time zones are
pinned to UTC, cursors do not blink, and the times the ledger stamps itself are masked on the QA desk. Each test asserts the state it is about to photograph before the photo is taken (a snapshot
once recorded the idle screen as the golden PASS screen).

Update the golden files after a deliberate change with `uv run pytest tests/tui --snapshot-update` and look
at them before committing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qa_fixtures import PIN, FakeRegistry, make_config, make_ledger
from textual.pilot import Pilot
from textual.widgets import DataTable, Input
from tui_fakes import LAB_INFO, ScriptedLine, type_scan, wait_until

from station.desk import QaServices
from station.model import Outcome
from station.tui.api import StationInfo, TargetInfo
from station.tui.app import StationApp, build_app
from station.tui.qa import desk as desk_module
from station.tui.qa.desk import QaDeskScreen
from station.tui.relay import EventRelay

NOW = 1_700_000_600.0  # the app's clock and the events' time, fixed
TIMINGS = {
    "identify": 42.0,
    "identity": 18.0,
    "write": 640.0,
    "register": 410.0,
    "verify": 880.0,
    "record": 6.0,
}
PORTS = {"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1", "s3": "/dev/ttyUSB2", "s4": "/dev/ttyUSB3"}
SCRIPTS = {"SN00000002": "fail", "SN00000003": "error", "SN00000004": "block"}
PRODUCTION_INFO = StationInfo(
    station_id="line1-station3",
    operator="day-shift",
    products=("sensor-a",),
    targets=(TargetInfo(name="prod-eu", account="111122223333", region="eu-west-1", lab=False),),
    slot_products={name: "sensor-a" for name in PORTS},
    qa_pin=PIN,
)
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def operator_app(info: StationInfo = LAB_INFO) -> tuple[StationApp, ScriptedLine]:
    relay = EventRelay()
    line = ScriptedLine(PORTS, on_event=relay, scripts=SCRIPTS, timings=TIMINGS, clock=lambda: NOW - 60.0)
    app = StationApp(line=line, info=info, relay=relay, clock=lambda: NOW, poll_interval=None)
    return app, line


def outcome_of(app: StationApp, slot: str) -> Outcome | None:
    return app.operator.cards[slot].outcome


async def settle(pilot: Pilot[Any]) -> None:
    """Let the screen come to rest; a steady cursor, since a blinking one is on in one photo and off in the next."""
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def scanned_to(app: StationApp, slot: str, outcome: Outcome) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await type_scan(pilot, "SN00000001" if outcome == Outcome.PASS else "SN00000002")
        await wait_until(pilot, lambda: outcome_of(app, slot) == outcome, what=f"{outcome} on {slot}")
        await settle(pilot)
        card = app.query_one("#card-1")
        assert f"-{outcome.value.lower()}" in card.classes
        assert app.focused is app.query_one("#scan", Input)

    return run_before


def test_snapshot_idle(snap_compare: Any) -> None:
    app, _ = operator_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        assert all(card.serial == "" and card.outcome is None for card in app.operator.cards.values())
        assert app.focused is app.query_one("#scan", Input)

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_snapshot_pass(snap_compare: Any) -> None:
    app, _ = operator_app()
    assert snap_compare(app, run_before=scanned_to(app, "s1", Outcome.PASS), terminal_size=(80, 24))


def test_snapshot_fail_production(snap_compare: Any) -> None:
    app, _ = operator_app(PRODUCTION_INFO)
    assert snap_compare(app, run_before=scanned_to(app, "s1", Outcome.FAIL), terminal_size=(80, 24))


def test_snapshot_outcomes_roomy(snap_compare: Any) -> None:
    """120×40: the big outcomes with every step, the history pane beside the cards."""
    app, _ = operator_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        for index, serial in enumerate(("SN00000001", "SN00000002", "SN00000003"), start=1):
            await type_scan(pilot, f"{index}:{serial}")
        await wait_until(
            pilot,
            lambda: (
                [outcome_of(app, s) for s in ("s1", "s2", "s3")]
                == [Outcome.PASS, Outcome.FAIL, Outcome.ERROR]
            ),
            what="three outcomes",
        )
        await settle(pilot)
        assert len(app.operator.history.newest_first()) == 3
        assert app.query_one("#history").display

    assert snap_compare(app, run_before=run_before, terminal_size=(120, 40))


def test_snapshot_qa_desk(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The ledger dates its own "record" event with the wall clock: mask every time shown on the desk.
    monkeypatch.setattr(desk_module, "_when", lambda at: "YYYY-MM-DD hh:mm:ss" if at else "")
    config = make_config(tmp_path)
    ledger = make_ledger(tmp_path)
    relay = EventRelay()
    line = ScriptedLine({"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1"}, on_event=relay)
    calls: list[Any] = []
    app = build_app(
        config,
        line,
        qa=QaServices(config, ledger, line=line, registry_factory=lambda t: FakeRegistry(t, calls)),
        relay=relay,
        poll_interval=None,
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await pilot.press("f3")
        await type_scan(pilot, PIN)
        await wait_until(pilot, lambda: isinstance(app.screen, QaDeskScreen), what="the QA desk")
        await type_scan(pilot, "SN00000001")
        table = app.screen.query_one("#qa-records", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1, what="the unit's record")
        await settle(pilot)
        assert isinstance(app.screen, QaDeskScreen) and app.screen.selected().serial == "SN00000001"
        assert app.screen.query_one("#qa-trail", DataTable).row_count == 2

    try:
        assert snap_compare(app, run_before=run_before, terminal_size=(100, 30))
    finally:
        ledger.close()


async def test_readme_screenshot_of_the_operator_screen() -> None:
    """docs/operator-screen.svg: four slots — PASS, FAIL, ERROR and one still verifying — at 100×30."""
    app, line = operator_app()
    line.gates["SN00000004"] = threading.Event()
    async with app.run_test(size=(100, 30)) as pilot:
        for index, serial in enumerate(("SN00000001", "SN00000002", "SN00000003", "SN00000004"), start=1):
            await type_scan(pilot, f"{index}:{serial}")
        await wait_until(
            pilot,
            lambda: (
                [outcome_of(app, s) for s in ("s1", "s2", "s3")]
                == [Outcome.PASS, Outcome.FAIL, Outcome.ERROR]
            ),
            what="three outcomes",
        )
        await wait_until(pilot, lambda: app.operator.cards["s4"].step == "verify", what="slot 4 verifying")
        await settle(pilot)
        DOCS.mkdir(exist_ok=True)
        path = app.save_screenshot(filename="operator-screen.svg", path=str(DOCS))
        line.release_all()
    svg = Path(path).read_text(encoding="utf-8")
    for text in ("PASS", "FAIL", "ERROR", "WORKING", "LAB"):
        assert text in svg
    assert line.wait_idle(5)
