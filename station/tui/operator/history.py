"""The history pane: the last units finished on this screen, newest first (time, slot, serial, outcome).

It only draws a `station.tui.state.History`; the full record of every unit is in the ledger (`station show`).
It is never focused (the scan field keeps the focus).
"""

from __future__ import annotations

import time

from textual.content import Content
from textual.widgets import Static

from station.i18n import _
from station.model import Outcome
from station.tui.state import OUTCOME_LABEL, History

_STYLE = {Outcome.PASS: "bold $success", Outcome.FAIL: "bold $error", Outcome.ERROR: "bold $warning"}
SERIAL_WIDTH = 12  # a longer serial ends in …
SLOT_WIDTH = 6


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else f"{text[: width - 1]}…"


def history_text(history: History) -> Content:
    entries = history.newest_first()
    if not entries:
        return Content.styled(_("No unit finished yet."), "dim")
    lines: list[Content] = []
    for entry in entries:
        lines.append(
            Content.assemble(
                (time.strftime("%H:%M:%S", time.localtime(entry.at)), "dim"),
                " ",
                _cut(entry.slot, SLOT_WIDTH).ljust(SLOT_WIDTH),
                " ",
                (_cut(entry.serial, SERIAL_WIDTH).ljust(SERIAL_WIDTH), "bold"),
                " ",
                (OUTCOME_LABEL.get(entry.outcome, str(entry.outcome)), _STYLE.get(entry.outcome, "")),
            )
        )
    return Content("\n").join(lines)


class HistoryPane(Static):
    """The last units; `show` redraws it."""

    can_focus = False

    def on_mount(self) -> None:
        self.border_title = _("Last {count} units").format(count=20)

    def show(self, history: History) -> None:
        self.border_title = _("Last {count} units").format(count=history.size)
        self.update(history_text(history))
