"""The PIN prompt in front of the QA desk.

The PIN comes from the station's configuration; the comparison is constant-time. A wrong PIN is refused on
the spot (a notification, the field cleared, focus kept); after `MAX_TRIES` wrong PINs the prompt closes.

It must not log or show the PIN, and must not open the desk itself: it only answers True or False.
"""

from __future__ import annotations

import hmac
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

MAX_TRIES = 3


class PinScreen(ModalScreen[bool]):
    """Asks for the QA PIN; dismisses with True for the right one, False on Escape or too many tries."""

    AUTO_FOCUS = "#pin"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Back")]

    def __init__(self, pin: str) -> None:
        super().__init__(id="pin-screen")
        self._pin = pin
        self.tries = 0

    def compose(self) -> ComposeResult:
        with Vertical(id="pin-dialog", classes="dialog"):
            yield Label("QA desk", classes="dialog-title")
            yield Label("Enter the QA PIN and press Enter (Esc: back).")
            yield Input(id="pin", password=True, restrict=r"[0-9]*", max_length=12, placeholder="PIN")

    @on(Input.Submitted, "#pin")
    def _submitted(self, event: Input.Submitted) -> None:
        given = event.value
        event.input.clear()
        if hmac.compare_digest(given.encode(), self._pin.encode()):
            self.dismiss(True)
            return
        self.tries += 1
        if self.tries >= MAX_TRIES:
            self.app.notify(
                "Too many wrong PINs; the QA desk stays closed.", title="QA desk locked", severity="error"
            )
            self.dismiss(False)
            return
        self.app.notify(
            f"That PIN is not the QA PIN. {MAX_TRIES - self.tries} tries left.",
            title="Wrong PIN",
            severity="error",
        )
        event.input.focus()

    def action_cancel(self) -> None:
        self.dismiss(False)
