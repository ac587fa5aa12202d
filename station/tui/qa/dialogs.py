"""The QA desk's dialogs: confirm, transfer, import a certificate, export, re-verify, re-provision.

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

from station.i18n import N_, _
from station.tui.bindings import translate_bindings


class _Dialog(ModalScreen[object]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", N_("Cancel"))]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        translate_bindings(self)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no for a destructive action; Cancel has the focus."""

    AUTO_FOCUS = "#cancel"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", N_("Cancel")),
        Binding("left,right", "switch", N_("Switch"), show=False),
    ]

    def __init__(self, title: str, body: str, confirm_label: str) -> None:
        super().__init__(id="confirm-screen")
        translate_bindings(self)
        self._title = title
        self._body = body
        self._confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Label(Content(self._title), classes="dialog-title")
            yield Label(Content(self._body), id="confirm-body")
            with Horizontal(classes="buttons"):
                yield Button(self._confirm_label, id="confirm", variant="error")
                yield Button(_("Cancel"), id="cancel", variant="primary")

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
            yield Label(
                Content(
                    _("Transfer {serial} from {source}").format(serial=self._serial, source=self._source)
                ),
                classes="dialog-title",
            )
            yield Select([(t, t) for t in self._targets], id="destination", prompt=_("destination target"))
            yield Checkbox(
                Content(_("Revoke it in {source} afterwards").format(source=self._source)),
                value=True,
                id="revoke-source",
            )
            with Horizontal(classes="buttons"):
                yield Button(_("Transfer"), id="ok", variant="warning")
                yield Button(_("Cancel"), id="cancel")

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        destination = self.query_one("#destination", Select).value
        if not isinstance(destination, str):
            self.app.notify(
                _("Choose the destination target."), title=_("No destination"), severity="warning"
            )
            return
        self.dismiss(TransferChoice(destination, self.query_one("#revoke-source", Checkbox).value))


@dataclass(frozen=True)
class ImportChoice:
    path: str
    password: str | None
    serial: str
    target: str
    product: str | None = None
    thing: str | None = None
    key_path: str | None = None
    verify: bool = False


class ImportScreen(_Dialog):
    """Register a certificate from files: the same fields as `station register` (certificate, key or .p12,
    password, serial, target, product, thing, verify). Opened again with what was typed when it fails."""

    AUTO_FOCUS = "#import-path"

    def __init__(
        self, targets: list[str], products: list[str] | None = None, initial: ImportChoice | None = None
    ) -> None:
        # Opened again after a failure while the first one may still be leaving: only the first has the id.
        super().__init__(id="import-screen" if initial is None else None)
        self._targets = targets
        self._products = products or []
        self._initial = initial

    def compose(self) -> ComposeResult:
        first = self._initial
        target: object = Select.NULL
        if first is not None and first.target in self._targets:
            target = first.target
        elif len(self._targets) == 1:
            target = self._targets[0]
        product: object = Select.NULL
        if first is not None and first.product in self._products:
            product = first.product
        with Vertical(classes="dialog"):
            yield Label(_("Register an imported certificate (PEM, DER or PKCS#12)"), classes="dialog-title")
            yield Input(
                first.path if first else "",
                id="import-path",
                max_length=4096,
                placeholder=_("certificate: .pem / .der / .cer / .p12"),
            )
            yield Input(
                (first.key_path or "") if first else "",
                id="import-key",
                max_length=4096,
                placeholder=_("key: .key or the keychain's .p12 (optional; needed to verify)"),
            )
            # The password is not kept when the dialog opens again.
            yield Input(
                id="import-password",
                password=True,
                max_length=1024,
                placeholder=_("password (PKCS#12 only; optional)"),
            )
            yield Select(
                [(p, p) for p in self._products],
                id="import-product",
                prompt=_("product (optional)"),
                value=product,
            )
            yield Input(
                (first.thing or "") if first else "",
                id="import-thing",
                max_length=128,
                placeholder=_("thing name (optional)"),
            )
            yield Select(
                [(t, t) for t in self._targets], id="import-target", prompt=_("target"), value=target
            )
            yield Checkbox(
                _("Verify: connect as the unit with its key"),
                value=first.verify if first else False,
                id="import-verify",
            )
            yield Input(
                first.serial if first else "",
                id="import-serial",
                max_length=128,
                placeholder=_("the unit's serial"),
            )
            with Horizontal(classes="buttons"):
                yield Button(_("Register"), id="ok", variant="warning")
                yield Button(_("Cancel"), id="cancel")

    @on(Input.Submitted, "#import-serial")
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        target = self.query_one("#import-target", Select).value
        if not isinstance(target, str):
            self.app.notify(_("Choose the target to register in."), title=_("No target"), severity="warning")
            return
        product = self.query_one("#import-product", Select).value
        password = self.query_one("#import-password", Input).value
        self.dismiss(
            ImportChoice(
                path=self.query_one("#import-path", Input).value.strip(),
                password=password or None,
                serial=self.query_one("#import-serial", Input).value.strip(),
                target=target,
                product=product if isinstance(product, str) else None,
                thing=self.query_one("#import-thing", Input).value.strip() or None,
                key_path=self.query_one("#import-key", Input).value.strip() or None,
                verify=self.query_one("#import-verify", Checkbox).value,
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
            yield Label(_("Export every record"), classes="dialog-title")
            yield Select(
                [("CSV", "csv"), ("JSON", "json")], id="export-format", value="csv", allow_blank=False
            )
            yield Input(id="export-path", max_length=4096, placeholder=_("file to write, e.g. records.csv"))
            with Horizontal(classes="buttons"):
                yield Button(_("Export"), id="ok", variant="primary")
                yield Button(_("Cancel"), id="cancel")

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        fmt = self.query_one("#export-format", Select).value
        self.dismiss(ExportChoice(str(fmt), self.query_one("#export-path", Input).value.strip()))


@dataclass(frozen=True)
class ReverifyChoice:
    slot: str | None  # None: from the station, with the key file
    key_path: str | None = None
    password: str | None = None


class ReverifyScreen(_Dialog):
    """Re-verify on a slot (the unit's own slot preselected), or from the station with the unit's key file."""

    AUTO_FOCUS = "#reverify-slot"

    def __init__(self, serial: str, slots: list[str], preselect: str | None = None) -> None:
        super().__init__(id="reverify-screen")
        self._serial = serial
        self._slots = slots
        self._preselect = preselect if preselect in slots else None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(
                Content(
                    _("Re-verify {serial}: put the unit in a jig, or give its key file").format(
                        serial=self._serial
                    )
                ),
                classes="dialog-title",
            )
            yield Label(
                _(
                    "On a slot the station holds it (the line starts no unit on it), checks the unit's id "
                    "against its record, then lets the unit connect with its own identity. Without a slot the "
                    "station connects as the unit with the key file — it keeps no unit's key itself."
                ),
                id="reverify-help",
            )
            yield Select(
                [(s, s) for s in self._slots],
                id="reverify-slot",
                prompt=_("slot"),
                value=self._preselect if self._preselect is not None else Select.NULL,
            )
            yield Input(
                id="reverify-key",
                max_length=4096,
                placeholder=_("or: the unit's .p12 (certificate + key), without a slot"),
            )
            yield Input(
                id="reverify-password",
                password=True,
                max_length=1024,
                placeholder=_("password of the .p12 (optional)"),
            )
            with Horizontal(classes="buttons"):
                yield Button(_("Re-verify"), id="ok", variant="primary")
                yield Button(_("Cancel"), id="cancel")

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        slot = self.query_one("#reverify-slot", Select).value
        key = self.query_one("#reverify-key", Input).value.strip()
        if not isinstance(slot, str) and not key:
            self.app.notify(
                _("Choose the slot the unit is on, or give its key file."),
                title=_("No slot"),
                severity="warning",
            )
            return
        if isinstance(slot, str):
            self.dismiss(ReverifyChoice(slot))
            return
        password = self.query_one("#reverify-password", Input).value
        self.dismiss(ReverifyChoice(None, key, password or None))


class ReprovisionScreen(_Dialog):
    """Which slot the unit is in for a re-provision (then the plan is confirmed)."""

    AUTO_FOCUS = "#reprovision-slot"

    def __init__(self, serial: str, slots: list[str], preselect: str | None = None) -> None:
        super().__init__(id="reprovision-screen")
        self._serial = serial
        self._slots = slots
        self._preselect = preselect if preselect in slots else None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(
                Content(_("Re-provision {serial}: put the unit in a jig").format(serial=self._serial)),
                classes="dialog-title",
            )
            yield Select(
                [(s, s) for s in self._slots],
                id="reprovision-slot",
                prompt=_("slot"),
                value=self._preselect if self._preselect is not None else Select.NULL,
            )
            with Horizontal(classes="buttons"):
                yield Button(_("Plan"), id="ok", variant="warning")
                yield Button(_("Cancel"), id="cancel")

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        slot = self.query_one("#reprovision-slot", Select).value
        if not isinstance(slot, str):
            self.app.notify(_("Choose the slot the unit is in."), title=_("No slot"), severity="warning")
            return
        self.dismiss(slot)
