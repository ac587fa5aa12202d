"""The PIN prompt in front of the QA desk.

The check is `station.qapin.PinGuard`'s: the PIN's salted hash (or the lab's plain PIN) compared in constant
time, a back-off after repeated wrong PINs and a lock after `MAX_FAILURES` within `LOCK_S`, each wrong PIN
and each lock recorded in the ledger — so closing the prompt and pressing F3 again starts no fresh count.
The check runs on a worker thread (scrypt and the ledger are not for the UI thread). A wrong PIN is refused
on the spot (a notification, the field cleared, focus kept); a locked PIN closes the prompt.

With a PIN per person, `who` is then whose PIN it was ("" for the station's shared PIN).

It must not log or show the PIN, and must not open the desk itself: it only answers True or False.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from station.errors import InputError
from station.i18n import N_, _
from station.tui.bindings import translate_bindings

LOCKED_TITLE = N_("QA PIN locked")  # station.qapin's title for a locked PIN (translated there)


class PinChecker(Protocol):
    def check(self, pin: str) -> str: ...


class PinScreen(ModalScreen[bool]):
    """Asks for the QA PIN; dismisses with True for the right one, False on Escape or when the PIN locks."""

    AUTO_FOCUS = "#pin"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", N_("Back"))]

    def __init__(self, guard: PinChecker) -> None:
        super().__init__(id="pin-screen")
        translate_bindings(self)
        self._guard = guard
        self.who = ""  # whose PIN opened the desk (a person's name; "" for the shared PIN)

    def compose(self) -> ComposeResult:
        with Vertical(id="pin-dialog", classes="dialog"):
            yield Label(_("QA desk"), classes="dialog-title")
            yield Label(_("Enter the QA PIN and press Enter (Esc: back)."))
            yield Input(id="pin", password=True, restrict=r"[0-9]*", max_length=12, placeholder="PIN")

    @on(Input.Submitted, "#pin")
    def _submitted(self, event: Input.Submitted) -> None:
        given = event.value
        event.input.clear()
        event.input.disabled = True  # one check at a time
        self.check_in_thread(given)

    @work(thread=True, group="pin", exclusive=True, exit_on_error=False)
    def check_in_thread(self, given: str) -> None:
        try:
            who = self._guard.check(given)
        except InputError as error:
            self.app.call_from_thread(self._refused, error)
            return
        except Exception:  # the ledger could not be read or written: fail closed, and say so
            unchecked = InputError(
                _("PIN not checked"),
                _("The station could not check the PIN (its ledger is not available)."),
                _("Try again; if it keeps failing, call a technician."),
            )
            self.app.call_from_thread(self._refused, unchecked)
            return
        self.app.call_from_thread(self._opened, who)

    def _opened(self, who: str) -> None:
        self.who = who
        self.dismiss(True)

    def _refused(self, error: InputError) -> None:
        self.app.notify(f"{error.message} {error.next_action}", title=error.title, severity="error")
        if error.title in (LOCKED_TITLE, _(LOCKED_TITLE)):
            self.dismiss(False)
            return
        field = self.query_one("#pin", Input)
        field.disabled = False
        field.focus()

    def action_cancel(self) -> None:
        self.dismiss(False)
