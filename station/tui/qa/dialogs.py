"""The QA desk's dialogs: confirm, transfer, import a certificate, export, re-verify.

Each is a modal that only collects what the person chose and dismisses with it (or None on Esc/Cancel);
the desk does the work in a thread worker. Confirmation dialogs start with the focus on Cancel, so an
Enter pressed by habit does nothing destructive.

They must not call the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select


class _Dialog(ModalScreen[object]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no for a destructive action; Cancel has the focus."""

    AUTO_FOCUS = "#cancel"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("left,right", "switch", "Switch", show=False),
    ]

    def __init__(self, title: str, body: str, confirm_label: str) -> None:
        super().__init__(id="confirm-screen")
        self._title = title
        self._body = body
        self._confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Label(Content(self._title), classes="dialog-title")
            yield Label(Content(self._body), id="confirm-body")
            with Horizontal(classes="buttons"):
                yield Button(self._confirm_label, id="confirm", variant="error")
                yield Button("Cancel", id="cancel", variant="primary")

    @on(Button.Pressed, "#confirm")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def _no(self) -> None:
        self.dismiss(False)

    def action_cancel(self) -> None:
        self.dismiss(False)

    def action_switch(self) -> None:
        self.focus_next(Button)


@dataclass(frozen=True)
class TransferChoice:
    destination: str
    revoke_source: bool


class TransferScreen(_Dialog):
    AUTO_FOCUS = "#destination"

    def __init__(self, serial: str, source: str, targets: list[str]) -> None:
        super().__init__(id="transfer-screen")
        self._serial = serial
        self._source = source
        self._targets = [t for t in targets if t != source]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Content(f"Transfer {self._serial} from {self._source}"), classes="dialog-title")
            yield Select([(t, t) for t in self._targets], id="destination", prompt="destination target")
            yield Checkbox(Content(f"Revoke it in {self._source} afterwards"), value=True, id="revoke-source")
            with Horizontal(classes="buttons"):
                yield Button("Transfer", id="ok", variant="warning")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        destination = self.query_one("#destination", Select).value
        if not isinstance(destination, str):
            self.app.notify("Choose the destination target.", title="No destination", severity="warning")
            return
        self.dismiss(TransferChoice(destination, self.query_one("#revoke-source", Checkbox).value))


@dataclass(frozen=True)
class ImportChoice:
    path: str
    password: str | None
    serial: str
    target: str


class ImportScreen(_Dialog):
    AUTO_FOCUS = "#import-path"

    def __init__(self, targets: list[str]) -> None:
        super().__init__(id="import-screen")
        self._targets = targets

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Register an imported certificate (PEM, DER or PKCS#12)", classes="dialog-title")
            yield Input(
                id="import-path", max_length=4096, placeholder="path of the .pem / .der / .cer / .p12 file"
            )
            yield Input(
                id="import-password",
                password=True,
                max_length=1024,
                placeholder="password (PKCS#12 only; optional)",
            )
            yield Input(id="import-serial", max_length=128, placeholder="the unit's serial")
            yield Select(
                [(t, t) for t in self._targets],
                id="import-target",
                prompt="target",
                value=self._targets[0] if len(self._targets) == 1 else Select.NULL,
            )
            with Horizontal(classes="buttons"):
                yield Button("Register", id="ok", variant="warning")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted, "#import-serial")
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        target = self.query_one("#import-target", Select).value
        if not isinstance(target, str):
            self.app.notify("Choose the target to register in.", title="No target", severity="warning")
            return
        password = self.query_one("#import-password", Input).value
        self.dismiss(
            ImportChoice(
                path=self.query_one("#import-path", Input).value.strip(),
                password=password or None,
                serial=self.query_one("#import-serial", Input).value.strip(),
                target=target,
            )
        )


@dataclass(frozen=True)
class ExportChoice:
    fmt: str
    path: str


class ExportScreen(_Dialog):
    AUTO_FOCUS = "#export-path"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export every record", classes="dialog-title")
            yield Select(
                [("CSV", "csv"), ("JSON", "json")], id="export-format", value="csv", allow_blank=False
            )
            yield Input(id="export-path", max_length=4096, placeholder="file to write, e.g. records.csv")
            with Horizontal(classes="buttons"):
                yield Button("Export", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        fmt = self.query_one("#export-format", Select).value
        self.dismiss(ExportChoice(str(fmt), self.query_one("#export-path", Input).value.strip()))


class ReverifyScreen(_Dialog):
    AUTO_FOCUS = "#reverify-slot"

    def __init__(self, serial: str, slots: list[str]) -> None:
        super().__init__(id="reverify-screen")
        self._serial = serial
        self._slots = slots

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(
                Content(f"Re-verify {self._serial}: put the unit on a free slot"), classes="dialog-title"
            )
            yield Label(
                "The station holds that slot (the line starts no unit on it), checks the unit's id against "
                "its record, then lets the unit connect with its own identity.",
                id="reverify-help",
            )
            yield Select([(s, s) for s in self._slots], id="reverify-slot", prompt="slot")
            with Horizontal(classes="buttons"):
                yield Button("Re-verify", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        slot = self.query_one("#reverify-slot", Select).value
        if not isinstance(slot, str):
            self.app.notify("Choose the slot the unit is on.", title="No slot", severity="warning")
            return
        self.dismiss(slot)
