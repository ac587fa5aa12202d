"""Operator sign-in: who is working at the station, from a badge scan or a typed name.

Shown when the app starts if `station.people.sign_in_required(config)` (station.toml lists `[people]` or sets
`[station] sign_in = true`), and again on Ctrl+O (a new person at the bench). The answer is the person's
name, which the app gives the line (so the next record names them) and the QA desk.
`station.people.who_signs_in` decides what a scan or a name stands for; this screen only asks and shows why
a scan was refused. At start it cannot be dismissed without a name; on Ctrl+O Esc keeps who was there.

It must not call the ledger, AWS or any device, nor show anything but names (a badge is not echoed back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from station.errors import InputError
from station.i18n import N_, _


class SignInScreen(ModalScreen[str | None]):
    """Dismisses with the signed-in person's name, or None on Esc when someone is signed in already."""

    AUTO_FOCUS = "#sign-in"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", N_("Back"))]

    def __init__(self, resolve: Callable[[str], str], *, current: str | None = None) -> None:
        super().__init__(id="sign-in-screen")
        self._resolve = resolve
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="sign-in-dialog", classes="dialog"):
            yield Label(_("Who is working at this station?"), classes="dialog-title")
            yield Label(_("Scan your badge, or type your name and press Enter."))
            if self._current:
                yield Label(Content(_("Signed in now: {name} (Esc keeps them).").format(name=self._current)))
            yield Input(id="sign-in", max_length=128, placeholder=_("badge or name"))
            yield Label("", id="sign-in-problem")

    @on(Input.Submitted, "#sign-in")
    def _submitted(self, event: Input.Submitted) -> None:
        given = event.value
        event.input.clear()
        try:
            name = self._resolve(given)
        except InputError as error:
            self.query_one("#sign-in-problem", Label).update(
                Content(f"{error.title}: {error.message} {error.next_action}")
            )
            return
        self.dismiss(name)

    def action_cancel(self) -> None:
        if self._current:
            self.dismiss(None)
