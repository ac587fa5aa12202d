"""The operator screen and the QA desk in English and Japanese: snapshots of both, and the real line's FAIL card.

A language is chosen before the app is built, as `station run --lang ja` does; the autouse fixture in
tests/conftest.py puts English back afterwards. Update the golden files after a deliberate change with
`uv run pytest tests/tui/test_i18n_screens.py --snapshot-update` and look at them (in ja: nothing cut
without an ellipsis at 80×24; Japanese characters take two columns).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tui_fakes
from qa_fixtures import PIN, FakeRegistry, make_config, make_ledger
from rich.cells import cell_len
from test_real_line import Device, real_line_app
from test_snapshots import operator_app, outcome_of, settle
from textual.pilot import Pilot
from textual.widgets import DataTable, Footer, Static
from tui_fakes import type_scan, wait_until

from flashers.base import DeviceInfo
from station.desk import QaServices
from station.i18n import _, set_language
from station.model import Outcome
from station.tui.app import build_app
from station.tui.qa import desk as desk_module
from station.tui.qa.desk import QaDeskScreen
from station.tui.relay import EventRelay

LANGUAGES = ("en", "ja")


@pytest.fixture(params=LANGUAGES)
def language(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    code = request.param
    assert set_language(code) == code
    # The scripted line's PASS and FAIL, in the words the pipeline uses (so ja has them translated).
    monkeypatch.setattr(
        tui_fakes,
        "PASS",
        (
            "PASS",
            _("Provisioned"),
            _("{thing_name} is registered in {target} and verified.").format(
                thing_name="widget-{serial}", target="lab-eu"
            ),
            _("Put the unit in the good bin."),
        ),
    )
    monkeypatch.setattr(
        tui_fakes,
        "FAIL",
        (
            "FAIL",
            _("Wrong unit in the jig"),
            _("wrong unit in the jig: scanned {scanned}, device says {device_id}.").format(
                scanned="{serial}", device_id="SN00000099"
            ),
            _("Put the right unit in the jig and scan again."),
        ),
    )
    yield code


def test_snapshot_operator_fail(snap_compare: Any, language: str) -> None:
    """80×24, one FAIL and one PASS: the card's reason and next action in the chosen language."""
    app, _line = operator_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await type_scan(pilot, "1:SN00000002")
        await type_scan(pilot, "2:SN00000001")
        await wait_until(
            pilot,
            lambda: [outcome_of(app, "s1"), outcome_of(app, "s2")] == [Outcome.FAIL, Outcome.PASS],
            what="FAIL on s1, PASS on s2",
        )
        await settle(pilot)
        card = app.operator.cards["s1"]
        assert card.serial == "SN00000002" and card.next_action == _(
            "Put the right unit in the jig and scan again."
        )
        # The footer's keys: Textual read the bindings before the language was chosen; the screen translated its own.
        shown = {b.binding.description for b in app.screen.active_bindings.values() if b.binding.show}
        assert {_("Log"), _("QA desk"), _("Quit")} <= shown

    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_snapshot_qa_desk(
    snap_compare: Any, language: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(desk_module, "_when", lambda at: "YYYY-MM-DD hh:mm:ss" if at else "")
    config = make_config(tmp_path)
    ledger = make_ledger(tmp_path)
    relay = EventRelay()
    line = tui_fakes.ScriptedLine({"s1": "/dev/ttyUSB0", "s2": "/dev/ttyUSB1"}, on_event=relay)
    app = build_app(
        config,
        line,
        qa=QaServices(config, ledger, line=line, registry_factory=lambda t: FakeRegistry(t, [])),
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
        headers = [str(column.label) for column in table.columns.values()]
        assert headers[:3] == [_("When"), _("Serial"), _("Outcome")]
        assert app.screen.query_one(Footer) is not None

    try:
        assert snap_compare(app, run_before=run_before, terminal_size=(100, 30))
    finally:
        ledger.close()


async def test_a_fail_card_in_japanese_names_the_unit_and_says_what_to_do(tmp_path: Path) -> None:
    """The real line and pipeline, in Japanese: a unit whose device id is not the scanned serial FAILs, and its
    card shows that serial with the Japanese next action (the pipeline's own words, not the test's)."""
    set_language("ja")
    serial = "SN00000007"
    config = make_config(tmp_path)
    config = replace(
        config, products={"widget": replace(config.products["widget"], options={"check_device_id": True})}
    )

    class OtherUnit(Device):
        def identify(self) -> DeviceInfo:
            return DeviceInfo("SN00000099", "sim-1.0")

    with real_line_app(config, tmp_path, device=OtherUnit, verify=lambda *a, **k: None) as real:
        app, line, ledger = real.app, real.line, real.ledger
        async with app.run_test(size=(80, 24)) as pilot:
            await type_scan(pilot, f"1:{serial}")
            card = app.operator.cards["s1"]
            await wait_until(pilot, lambda: card.outcome == Outcome.FAIL, timeout=15, what="the FAIL")
            await pilot.pause()
            widget = app.query_one("#card-1")
            shown = " ".join(str(s.render()) for s in widget.query(Static))
            assert "正しいユニットを治具に入れて、もう一度スキャンしてください。" in shown
            assert serial in shown
            assert card.message == f"治具のユニットが違います: スキャンは {serial}、デバイスは SN00000099。"
        assert line.wait_idle(10)
        (record,) = [r for r in ledger.records() if r.serial == serial]
        assert record.outcome == "FAIL"  # a stored value: never translated


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.mark.parametrize(
    ("config_language", "argv", "environ_lang", "seen"),
    [
        ("ja", [], "en_US.UTF-8", "ja"),  # [station] language beats the locale
        ("ja", ["--lang", "en"], "en_US.UTF-8", "en"),  # --lang on `station run` beats the config
        (None, [], "ja_JP.UTF-8", "ja"),  # no config language: the locale
    ],
)
def test_station_run_chooses_the_language_before_the_screen_opens(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config_language: str | None,
    argv: list[str],
    environ_lang: str,
    seen: str,
) -> None:
    from station import i18n
    from station.cli import EXIT_OK, main

    text = (FIXTURES / "configs" / "lab-station.toml").read_text()
    text = text.replace(
        'ca_file = "../certs/factory-ca.pem"', f'ca_file = "{FIXTURES / "certs" / "factory-ca.pem"}"'
    )
    if config_language:
        text = text.replace("[station]\n", f'[station]\nlanguage = "{config_language}"\n', 1)
    config = tmp_path / "station.toml"
    config.write_text(text)
    for name in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", environ_lang)
    chosen: list[str] = []

    def fake_run_app(*args: Any, **kwargs: Any) -> int:
        chosen.append(i18n.language())
        return 0

    monkeypatch.setattr("station.tui.run_app", fake_run_app)
    assert main(["run", "--config", str(config), *argv]) == EXIT_OK
    assert chosen == [seen]


def test_the_operator_words_match_a_title_made_in_japanese() -> None:
    """The core translates an error's title when it makes it: the card's shorter words and the message line's
    one sentence for a bad scan must still be found for the Japanese title."""
    from station.tui.operator import wording

    assert set_language("ja") == "ja"
    title = _("Device disconnected")  # as the pipeline makes it in ja
    assert title != "Device disconnected"
    assert wording.why(Outcome.FAIL, title) == _("The unit dropped off the line")
    assert wording.do_next(Outcome.FAIL, _("Try again."), title) == _(
        "Reseat the unit, scan again; if it fails again: rework bin."
    )
    refused = wording.refusal("XQ-17", _("Invalid serial"), _("Scan the unit's label."))
    assert refused.startswith("XQ-17 ") and refused == _(
        "{scan} is not a serial this station takes: check the label and scan again."
    ).format(scan="XQ-17")


async def test_the_help_panel_is_japanese_at_80x24() -> None:
    """F1 in ja: the headings, the demo unit's fault and the keys in Japanese; the unit's serial and the PIN as
    they are."""
    from station.tui.operator.help import HelpContent, HelpScreen, JigUnit

    set_language("ja")
    app, _line = operator_app()
    app.operator.help_content = HelpContent(
        units=(JigUnit("s2", "PROV/1", "SIM00000042", _("the unit drops off the line part-way through")),),
        qa_pin="4321",
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help panel")
        body = str(app.screen.query_one("#help-body", Static).render())
        for shown in (
            "今治具に入っているユニット",
            "SIM00000042",
            "故障: ユニットが途中でラインから外れる",
            "このデモの QA PIN は 4321 です。",
            "スキャンするもの",
            "PASS: 良品箱へ。FAIL: リワーク箱へ。ERROR: 技術者を呼んでください。",
            "スキャンの終わり (スキャナーが自動で送ります)",
        ):
            assert shown in body
        assert "What to scan" not in body
        assert str(app.screen.query_one("#help-dialog").border_title) == "ヘルプ  ·  F1 または Esc で閉じる"


@pytest.mark.parametrize("width", [80, 100])
def test_the_desks_narrow_columns_show_their_whole_header(language: str, width: int) -> None:
    """Textual cuts a column header without an ellipsis: in ja ターゲット (10 cells) and スロット (8) would
    lose their last character in the 8- and 6-cell columns made for English."""
    widths = desk_module.column_widths(width)
    for name, cells in widths.items():
        assert cells is not None and cells >= cell_len(_(name)), (language, name, cells)
    assert sum(w or 0 for w in widths.values()) + 2 * len(widths) + 2 + 2 <= width


def test_a_japanese_name_is_cut_by_cells_with_an_ellipsis() -> None:
    cut = desk_module._fit("山田太郎さん", 8).plain
    assert cut.endswith("…") and cut.startswith("山田太") and cell_len(cut) <= 8
    assert desk_module._fit("day-shift", 8).plain == "day-shi…"
