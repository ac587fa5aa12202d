"""The QA desk's lists and labels, through its screens: the recent units on open (newest first, paged), the
search in any case (serial, certificate id prefix), each filter narrowing to the right units (also across two
stations on a shared DynamoDB ledger), one confirmation per action with the CLI's defaults, the focus on each
dialog's primary button, the label preview (decoded back) and a reprint received by a TCP listener."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from qa_fixtures import (
    ACCOUNTS,
    PIN,
    REAL_ID,
    FakeCloud,
    FakeRegistry,
    make_config,
    record_unit,
)
from test_labels import ZebraListener, decode_qr_from_zpl
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Select, Static
from tui_fakes import ScriptedLine, type_scan, wait_until

from station.config import LabelSettings, StationConfig
from station.desk import QaServices
from station.ledger import AttemptRecord, open_ledger
from station.ledger.base import Ledger
from station.tui.app import StationApp, build_app
from station.tui.qa import desk as desk_module
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.dialogs import (
    ConfirmScreen,
    ExportScreen,
    FilterScreen,
    LabelScreen,
    ReprovisionScreen,
    ReverifyScreen,
    TransferScreen,
)
from station.tui.qa.pin import PinScreen
from station.tui.relay import EventRelay

HERE = "line1-station3"
THERE = "line2-station1"


def day(d: int, hour: int = 10) -> float:
    """A moment in December 2026, in local time (the desk's dates are local)."""
    return datetime(2026, 12, d, hour, 0).timestamp()


def add_unit(
    ledger: Ledger,
    serial: str,
    at: float,
    *,
    outcome: str = "PASS",
    target: str = "lab-eu",
    station: str = HERE,
) -> AttemptRecord:
    """A unit's one attempt: PASS with its own certificate, or FAIL with none (its state: failed)."""
    passed = outcome == "PASS"
    record = AttemptRecord(
        attempt_id=f"t-{serial}",
        serial=serial,
        outcome=outcome,
        product="widget",
        thing_name=f"widget-{serial}" if passed else "",
        certificate_id=hashlib.sha256(serial.encode()).hexdigest() if passed else "",
        target=target,
        account_id=ACCOUNTS[target],
        region="eu-west-1" if target == "lab-eu" else "us-east-1",
        station_id=station,
        slot="s1",
        operator="day-shift",
        title="Provisioned" if passed else "Write failed",
        message="ok" if passed else "The unit did not take its key.",
        started_at=at - 4,
        finished_at=at,
    )
    ledger.record_attempt(record)
    return record


@dataclass
class Desk:
    app: StationApp
    pilot: Pilot[None]
    ledger: Ledger
    cloud: FakeCloud
    screen: QaDeskScreen

    def serials(self) -> list[str]:
        table = self.screen.query_one("#qa-records", DataTable)
        return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]

    def toast(self, title: str) -> str:
        return next((str(t.render()) for t in self.app.screen.query("Toast") if title in str(t.render())), "")


async def open_desk(app: StationApp, pilot: Pilot[None], pin: str = PIN) -> QaDeskScreen:
    await pilot.press("f3")
    await wait_until(pilot, lambda: isinstance(app.screen, PinScreen), what="the PIN prompt")
    await type_scan(pilot, pin)
    await wait_until(pilot, lambda: isinstance(app.screen, QaDeskScreen), what="the QA desk")
    assert isinstance(app.screen, QaDeskScreen)
    return app.screen


def desk_app(config: StationConfig, ledger: Ledger, cloud: FakeCloud) -> StationApp:
    relay = EventRelay()
    line = ScriptedLine({"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1"}, on_event=relay)
    calls: list[Any] = []
    qa = QaServices(
        config, ledger, line=line, registry_factory=lambda target: FakeRegistry(target, calls, cloud=cloud)
    )
    return build_app(config, line, qa=qa, relay=relay, poll_interval=None)


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    ledger = open_ledger(tmp_path / "ledger.sqlite")
    add_unit(ledger, "SN00000011", day(1))
    add_unit(ledger, "SN00000012", day(3), outcome="FAIL")
    add_unit(ledger, "SN00000013", day(4), target="lab-us")
    add_unit(ledger, "SN00000014", day(5), station=THERE)
    cloud = FakeCloud()
    app = desk_app(make_config(tmp_path), ledger, cloud)
    try:
        async with app.run_test(size=(100, 32), notifications=True) as pilot:
            screen = await open_desk(app, pilot)
            yield Desk(app, pilot, ledger, cloud, screen)
    finally:
        ledger.close()


async def shows(desk: Desk, serials: list[str], what: str) -> None:
    await wait_until(desk.pilot, lambda: desk.serials() == serials, what=f"{what}: {serials}")


async def search(desk: Desk, text: str) -> None:
    """Type (or scan) into the search field; the last query is selected there, so typing replaces it."""
    field = desk.screen.query_one("#qa-search", Input)
    field.focus()
    if not text and field.value:
        await desk.pilot.press("backspace")  # deletes the selected last query
        assert field.value == ""
    await type_scan(desk.pilot, text)


async def apply_filter(desk: Desk, **fields: str) -> None:
    """F2, set the fields (`state`, `outcome`, `target` are Selects; `station`, `since`, `until` text), Enter."""
    await desk.pilot.press("f2")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, FilterScreen), what="the filter")
    dialog = desk.app.screen
    assert desk.app.focused is dialog.query_one("#ok", Button)  # Apply
    for name, value in fields.items():
        if name in ("state", "outcome", "target"):
            dialog.query_one(f"#filter-{name}", Select).value = value
        else:
            dialog.query_one(f"#filter-{name}", Input).value = value
    dialog.query_one("#ok", Button).focus()
    await desk.pilot.press("enter")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, QaDeskScreen), what="back at the desk")


async def clear_filter(desk: Desk) -> None:
    await desk.pilot.press("f2")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, FilterScreen), what="the filter")
    desk.app.screen.query_one("#clear", Button).focus()
    await desk.pilot.press("enter")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, QaDeskScreen), what="back at the desk")
    assert not desk.screen.filters.active


async def test_the_desk_opens_on_the_recent_units_newest_first(desk: Desk) -> None:
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "the recent list")
    table = desk.screen.query_one("#qa-records", DataTable)
    assert "Recent units" in str(table.border_title)
    # The highlighted unit's own trail is shown, without a search.
    trail = desk.screen.query_one("#qa-trail", DataTable)
    await wait_until(desk.pilot, lambda: trail.row_count > 0, what="the trail")
    assert "SN00000014" in str(trail.border_title)


async def test_the_recent_list_pages_through_the_ledger(desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two units a page: moving past the last row loads the next page (the ledger's cursor), in order."""
    monkeypatch.setattr(desk.screen.services, "recent", _paged(desk.screen.services.recent, 2))
    await search(desk, "")  # an empty search shows the recent list again
    await shows(desk, ["SN00000014", "SN00000013"], "the first page")
    desk.screen.query_one("#qa-records", DataTable).focus()
    await desk.pilot.press("down")
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "both pages")


def _paged(recent: Any, size: int) -> Any:
    def page(filters: Any = None, *, after: str | None = None, limit: int = 50) -> Any:
        return recent(filters, after=after, limit=size)

    return page


async def test_search_finds_a_unit_in_any_case_and_an_empty_search_lists_again(desk: Desk) -> None:
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "the recent list")
    await search(desk, "sn00000013")  # lower case
    await shows(desk, ["SN00000013"], "the unit's records")
    assert desk.screen.mode == "unit" and desk.screen.selected().target == "lab-us"
    prefix = hashlib.sha256(b"SN00000011").hexdigest()[:10].upper()  # a certificate id prefix, upper case
    await search(desk, prefix)
    await shows(desk, ["SN00000011"], "the unit of that certificate")
    await search(desk, "WIDGET-SN00000014")  # a thing name, all upper case
    await shows(desk, ["SN00000014"], "the unit of that thing")
    await search(desk, "")
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "the recent list again")
    # Enter on a unit opens its records; Esc goes back to the list, and from there to the line.
    table = desk.screen.query_one("#qa-records", DataTable)
    table.focus()
    await desk.pilot.press("down", "enter")
    await shows(desk, ["SN00000013"], "the unit's records")
    assert desk.screen.query_one("#qa-search", Input).value == "SN00000013"
    await desk.pilot.press("escape")
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "the list after Esc")
    assert isinstance(desk.app.screen, QaDeskScreen)
    await desk.pilot.press("escape")
    await wait_until(desk.pilot, lambda: not isinstance(desk.app.screen, QaDeskScreen), what="the line")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"state": "failed"}, ["SN00000012"]),
        ({"outcome": "PASS"}, ["SN00000014", "SN00000013", "SN00000011"]),
        ({"since": "2026-12-03", "until": "2026-12-04"}, ["SN00000013", "SN00000012"]),
        ({"target": "lab-us"}, ["SN00000013"]),
        ({"station": THERE}, ["SN00000014"]),
        ({"station": HERE, "outcome": "PASS"}, ["SN00000013", "SN00000011"]),
    ],
    ids=["state", "outcome", "dates", "target", "station", "station+outcome"],
)
async def test_each_filter_narrows_the_list_to_its_units(
    desk: Desk, fields: dict[str, str], expected: list[str]
) -> None:
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "the recent list")
    await apply_filter(desk, **fields)
    await shows(desk, expected, "the filtered list")
    assert "filter:" in str(desk.screen.query_one("#qa-records", DataTable).border_title)
    # A search keeps the filter: a unit outside it is not found.
    outside = next(s for s in ("SN00000011", "SN00000012", "SN00000013", "SN00000014") if s not in expected)
    await search(desk, outside)
    await wait_until(desk.pilot, lambda: bool(desk.toast("Not found")), what="not found with the filter")
    await clear_filter(desk)
    await search(desk, "")
    await shows(desk, ["SN00000014", "SN00000013", "SN00000012", "SN00000011"], "the whole list again")


async def test_a_wrong_date_is_refused_in_the_filter(desk: Desk) -> None:
    await desk.pilot.press("f2")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, FilterScreen), what="the filter")
    desk.app.screen.query_one("#filter-since", Input).value = "5.12.2026"
    await desk.pilot.press("enter")
    await wait_until(desk.pilot, lambda: bool(desk.toast("Not a date")), what="refused")
    assert isinstance(desk.app.screen, FilterScreen)


# ---------------------------------------------------------------------------------------------------------
# Two stations on one shared DynamoDB ledger (moto in process)


@pytest.fixture
def shared_ledgers() -> Iterator[tuple[Ledger, Ledger]]:
    from moto import mock_aws

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        with mock_aws():
            url = "dynamodb://desk-shared?region=eu-west-1"
            here = open_ledger(url, station_id=HERE)
            there = open_ledger(url, station_id=THERE)
            yield here, there
            here.close()
            there.close()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def test_the_station_filter_on_a_ledger_shared_by_two_stations(
    tmp_path: Path, shared_ledgers: tuple[Ledger, Ledger]
) -> None:
    here, there = shared_ledgers
    add_unit(here, "SN00000021", day(1))
    add_unit(there, "SN00000022", day(2), station=THERE)
    add_unit(here, "SN00000023", day(3))
    add_unit(there, "SN00000024", day(4), station=THERE, outcome="FAIL")
    app = desk_app(make_config(tmp_path), here, FakeCloud())
    async with app.run_test(size=(100, 32), notifications=True) as pilot:
        screen = await open_desk(app, pilot)
        desk = Desk(app, pilot, here, FakeCloud(), screen)
        # This station's desk sees the other station's units too.
        await shows(desk, ["SN00000024", "SN00000023", "SN00000022", "SN00000021"], "both stations' units")
        await apply_filter(desk, station=THERE)
        await shows(desk, ["SN00000024", "SN00000022"], "the other station's units")
        await search(desk, "sn00000022")  # found at the other station, in any case
        await shows(desk, ["SN00000022"], "its record")
        assert screen.selected().station_id == THERE
        await search(desk, "")
        await apply_filter(desk, station=HERE)
        await shows(desk, ["SN00000023", "SN00000021"], "this station's units")


# ---------------------------------------------------------------------------------------------------------
# One confirmation, the CLI's defaults, the focus on the primary button


@pytest.fixture
async def unit_desk(tmp_path: Path) -> AsyncIterator[Desk]:
    """One provisioned unit (SN00000002, registered in lab-eu) and a label printer listening on TCP."""
    ledger = open_ledger(tmp_path / "ledger.sqlite")
    record_unit(ledger, "SN00000002")
    cloud = FakeCloud()
    cloud.seed("lab-eu", REAL_ID, "widget-SN00000002")
    listener = ZebraListener()
    config = dataclasses.replace(
        make_config(tmp_path), labels=LabelSettings(printer=f"tcp://127.0.0.1:{listener.port}", timeout_s=5)
    )
    app = desk_app(config, ledger, cloud)
    try:
        async with app.run_test(size=(100, 32), notifications=True) as pilot:
            screen = await open_desk(app, pilot)
            desk = Desk(app, pilot, ledger, cloud, screen)
            await shows(desk, ["SN00000002"], "the unit")
            desk.listener = listener  # type: ignore[attr-defined]
            yield desk
    finally:
        listener.close(expected=0, timeout=0)
        ledger.close()


async def test_transfer_asks_once_and_keeps_the_source_as_the_cli_does(
    unit_desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = unit_desk
    pushed: list[str] = []
    push = desk.app.push_screen

    def counting(screen: Any, *args: Any, **kwargs: Any) -> Any:
        pushed.append(type(screen).__name__)
        return push(screen, *args, **kwargs)

    monkeypatch.setattr(desk.app, "push_screen", counting)
    await desk.pilot.press("f7")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, TransferScreen), what="the choice")
    await desk.pilot.press("enter")  # Plan… (the only other target is chosen; the source is kept)
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, ConfirmScreen), what="the one question")
    await desk.pilot.press("left", "enter")
    await wait_until(desk.pilot, lambda: bool(desk.toast("Certificate transferred")), what="transferred")
    assert pushed == ["TransferScreen", "ConfirmScreen"]  # asked once
    assert "still registered in lab-eu" in desk.toast("Certificate transferred")
    assert (
        desk.cloud.status("lab-us", REAL_ID) == "ACTIVE" and desk.cloud.status("lab-eu", REAL_ID) == "ACTIVE"
    )


async def test_every_dialog_opens_on_its_primary_button(unit_desk: Desk) -> None:
    desk = unit_desk
    for key, dialog in (
        ("f9", ExportScreen),
        ("f7", TransferScreen),
        ("f5", ReverifyScreen),  # the unit's own slot (s1) is chosen already
        ("f3", ReprovisionScreen),
        ("f2", FilterScreen),
        ("f6", ConfirmScreen),  # the revoke's one question: its primary button is Cancel
        ("ctrl+l", LabelScreen),
    ):
        await desk.pilot.press(key)
        await wait_until(desk.pilot, lambda d=dialog: isinstance(desk.app.screen, d), what=dialog.__name__)
        focused = desk.app.focused
        assert isinstance(focused, Button) and focused.variant == "primary", (dialog.__name__, focused)
        await desk.pilot.press("escape")
        await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, QaDeskScreen), what="the desk")
        await wait_until(desk.pilot, lambda: desk.screen.busy_action is None, what="nothing running")
    assert desk.cloud.status("lab-eu", REAL_ID) == "ACTIVE"  # Escape everywhere changed nothing


def preview_qr(text: str) -> str:
    """Decode the QR code drawn in half blocks in the desk's label preview."""
    art = [line for line in text.splitlines() if line and set(line) <= set(" █▀▄")]
    scale = 8
    image = Image.new("L", (len(art[0]) * scale, len(art) * 2 * scale), 255)
    for y, line in enumerate(art):
        for x, char in enumerate(line):
            for half, dark in ((0, char in "█▀"), (1, char in "█▄")):
                if dark:
                    for dy in range(scale):
                        for dx in range(scale):
                            image.putpixel((x * scale + dx, (2 * y + half) * scale + dy), 0)
    found = zxingcpp.read_barcodes(image)
    assert found, "no QR code in the preview"
    return str(found[0].text)


async def test_label_preview_shows_the_units_label_and_reprint_reaches_the_printer(unit_desk: Desk) -> None:
    desk = unit_desk
    await desk.pilot.press("ctrl+l")
    await wait_until(desk.pilot, lambda: isinstance(desk.app.screen, LabelScreen), what="the label")
    preview = str(desk.app.screen.query_one("#label-preview", Static).render())
    assert preview.splitlines()[:2] == ["widget-SN00000002", "SN SN00000002"]
    assert f"cert {REAL_ID[:12]}" in preview
    assert preview_qr(preview) == "widget-SN00000002"  # the configured payload ({thing_name})
    await desk.pilot.press("enter")  # Reprint has the focus
    await wait_until(desk.pilot, lambda: bool(desk.toast("Label reprinted")), what="reprinted")
    (job,) = desk.listener.close()  # type: ignore[attr-defined]
    zpl = job.decode("utf-8")
    assert "^FDwidget-SN00000002^FS" in zpl and "SN SN00000002" in zpl
    assert decode_qr_from_zpl(zpl) == "widget-SN00000002"
    (note,) = [e.event for e in desk.ledger.events("SN00000002") if e.event.step == "qa:reprint"]
    assert (note.outcome, note.data["operator"], note.data["certificate_id"]) == ("ok", "day-shift", REAL_ID)
    trail = desk.screen.query_one("#qa-trail", DataTable)
    await wait_until(
        desk.pilot,
        lambda: any(str(trail.get_row_at(i)[3]) == "qa:reprint" for i in range(trail.row_count)),
        what="the reprint in the trail",
    )


async def test_at_80_columns_the_desk_keeps_slot_and_operator_and_the_quit_key(unit_desk: Desk) -> None:
    desk = unit_desk
    await desk.pilot.resize_terminal(80, 24)
    await desk.pilot.pause(0.2)
    table = desk.screen.query_one("#qa-records", DataTable)
    headers = [str(column.label) for column in table.columns.values()]
    assert headers[-2:] == ["Slot", "Operator"]
    # Within the border and the vertical scrollbar: no horizontal scrolling.
    assert sum(c.get_render_width(table) for c in table.columns.values()) <= 80 - 2 - 2
    row = [str(cell) for cell in table.get_row_at(0)]
    assert row[1] == "SN00000002" and row[-2:] == ["s1", "day-shi…"]  # cut with an ellipsis
    assert row[3] == "widget-SN00…"  # the thing name, cut
    keys = [str(k.render()) for k in desk.app.screen.query("FooterKey")]
    assert any("Quit" in k for k in keys[:1])


def test_the_desks_table_fits_80_columns() -> None:
    widths = desk_module.column_widths(80)
    assert all(w is not None for w in widths.values())
    assert list(widths) == ["When", "Serial", "Outcome", "Thing", "Target", "Slot", "Operator"]
    assert sum(w or 0 for w in widths.values()) + 2 * len(widths) + 2 + 2 <= 80
    assert len(desk_module.column_widths(120)) == 8  # wide: the certificate column too
