"""The shift change (F5): one confirmation, then the counters start again from zero for the new shift.

The screen keeps the history of units across shifts; only the counters and the first-pass yield are per
shift. The ended shift's figures go to the log pane and, when the station has a ledger, into its event log
as a `note` with step `shift:change` (the app does that write, off the UI thread).

It must not touch the line or any unit.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from station.i18n import N_, _

SHIFT_SERIAL = "shift"  # the ledger event's serial: a shift change concerns no unit
SHIFT_STEP = "shift:change"


class ShiftChangeScreen(ModalScreen[bool]):
    """ "Start shift N+1?" with the ended shift's figures. F5 again (or the button) confirms; Cancel has the
    focus, so a scan's Enter arriving while the dialog is open does not end a shift."""

    AUTO_FOCUS = "#shift-cancel"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f5", "confirm", N_("New shift")),
        Binding("escape", "cancel", N_("Cancel")),
        Binding("left,right", "app.focus_next", show=False),
    ]

    def __init__(self, number: int, summary: str) -> None:
        super().__init__(id="shift-screen")
        self.number = number
        self.summary = summary

    def compose(self) -> ComposeResult:
        with Vertical(id="shift-dialog", classes="dialog"):
            yield Label(
                Content(_("Start shift {number}?").format(number=self.number + 1)), classes="dialog-title"
            )
            yield Label(
                Content(
                    _(
                        "Shift {number} ends with {summary}. The counters start again from zero; the list of "
                        "the last units stays. Press F5 again to start the new shift, Esc to cancel."
                    ).format(number=self.number, summary=self.summary)
                ),
                id="confirm-body",
            )
            with Horizontal(classes="buttons"):
                yield Button(_("New shift"), id="shift-confirm", variant="primary")
                yield Button(_("Cancel"), id="shift-cancel")

    @on(Button.Pressed, "#shift-confirm")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#shift-cancel")
    def _no(self) -> None:
        self.dismiss(False)

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
