"""The QA desk's dialogs: confirm, transfer, import a certificate, export, re-verify, re-provision, the
list's filter and a unit's label.

Each is a modal that only collects what the person chose and dismisses with it (or None on Esc/Cancel);
the desk does the work in a thread worker. A dialog opens with the focus on its primary button when what it
needs has a default (export's file, the unit's own slot, the only other target); otherwise on the first
field to fill. The one confirmation of a destructive action (ConfirmScreen) opens on Cancel, its primary
button, so an Enter pressed by habit does nothing destructive. Choosing a destination or a slot only plans:
the action itself is asked once, with its plan.

They must not call the core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from station.i18n import N_, _
from station.model import Outcome
from station.tui.bindings import translate_bindings
from station.units import UnitFilter, UnitStateName


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
    """Where to transfer the unit, and whether to revoke it at the source afterwards (off, as in `station
    transfer`, which keeps the source unless --revoke-source). Its button only plans: the transfer is asked
    once, with the plan."""

    def __init__(self, serial: str, source: str, targets: list[str]) -> None:
        super().__init__(id="transfer-screen")
        self._serial = serial
        self._source = source
        self._targets = [t for t in targets if t != source]

    def compose(self) -> ComposeResult:
        only = self._targets[0] if len(self._targets) == 1 else Select.NULL
        with Vertical(classes="dialog"):
            yield Label(
                Content(
                    _("Transfer {serial} from {source}").format(serial=self._serial, source=self._source)
                ),
                classes="dialog-title",
            )
            yield Select(
                [(t, t) for t in self._targets], id="destination", prompt=_("destination target"), value=only
            )
            yield Checkbox(
                Content(_("Revoke it in {source} afterwards").format(source=self._source)),
                value=False,
                id="revoke-source",
            )
            with Horizontal(classes="buttons"):
                yield Button(_("Plan…"), id="ok", variant="primary")
                yield Button(_("Cancel"), id="cancel")

    def on_mount(self) -> None:
        chosen = isinstance(self.query_one("#destination", Select).value, str)
        self.query_one("#ok" if chosen else "#destination").focus()

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


def default_export_path(fmt: str, now: float | None = None) -> str:
    """A file name in the current folder that names the moment: records-20261205-1430.csv."""
    stamp = time.strftime("%Y%m%d-%H%M", time.localtime(time.time() if now is None else now))
    return f"records-{stamp}.{fmt}"


class ExportScreen(_Dialog):
    """Export every record; the file name is filled in (and follows the format), the focus is on Export."""

    AUTO_FOCUS = "#ok"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(_("Export every record"), classes="dialog-title")
            yield Select(
                [("CSV", "csv"), ("JSON", "json")], id="export-format", value="csv", allow_blank=False
            )
            yield Input(
                default_export_path("csv"),
                id="export-path",
                max_length=4096,
                placeholder=_("file to write, e.g. records.csv"),
            )
            with Horizontal(classes="buttons"):
                yield Button(_("Export"), id="ok", variant="primary")
                yield Button(_("Cancel"), id="cancel")

    @on(Select.Changed, "#export-format")
    def _format(self, event: Select.Changed) -> None:
        field = self.query_one("#export-path", Input)
        path = Path(field.value)
        if isinstance(event.value, str) and path.suffix.lower() in (".csv", ".json"):
            field.value = str(path.with_suffix(f".{event.value}"))

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

    def on_mount(self) -> None:
        self.query_one("#reverify-slot" if self._preselect is None else "#ok").focus()

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
                yield Button(_("Plan…"), id="ok", variant="primary")
                yield Button(_("Cancel"), id="cancel")

    def on_mount(self) -> None:
        self.query_one("#reprovision-slot" if self._preselect is None else "#ok").focus()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        slot = self.query_one("#reprovision-slot", Select).value
        if not isinstance(slot, str):
            self.app.notify(_("Choose the slot the unit is in."), title=_("No slot"), severity="warning")
            return
        self.dismiss(slot)


# ---------------------------------------------------------------------------------------------------------
# The list's filter


def parse_day(text: str, *, end: bool = False) -> float | None:
    """A date (2026-12-05) or date and time (2026-12-05 14:00) in the desk's local time, as epoch seconds;
    None for an empty field; ValueError otherwise. With `end`, a bare date means the end of that day (the
    desk's "until 2026-12-05" includes the 5th)."""
    text = text.strip()
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("T", " "))
    if end and len(text) <= 10:
        moment += timedelta(days=1)
    return moment.timestamp()


def _day(epoch: float | None, *, end: bool = False) -> str:
    if epoch is None:
        return ""
    moment = datetime.fromtimestamp(epoch)
    if end and (moment.hour, moment.minute, moment.second) == (0, 0, 0):
        return (moment - timedelta(days=1)).strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d" if (moment.hour, moment.minute) == (0, 0) else "%Y-%m-%d %H:%M")


def filter_summary(filters: UnitFilter) -> str:
    """The active filter in a few words: "state revoked, station line1-s2, from 2026-12-01"."""
    parts = []
    if filters.state is not None:
        parts.append(_("state {state}").format(state=filters.state))
    if filters.outcome is not None:
        parts.append(_("outcome {outcome}").format(outcome=filters.outcome))
    if filters.target is not None:
        parts.append(_("target {target}").format(target=filters.target))
    if filters.station is not None:
        parts.append(_("station {station}").format(station=filters.station))
    if filters.since is not None:
        parts.append(_("from {day}").format(day=_day(filters.since)))
    if filters.until is not None:
        parts.append(_("until {day}").format(day=_day(filters.until, end=True)))
    return ", ".join(parts)


class FilterScreen(_Dialog):
    """Narrow the desk's list (and its searches) by state, outcome, target, station and dates, as
    `station units --state --outcome --target --station --since --until` do. Apply has the focus."""

    AUTO_FOCUS = "#ok"

    def __init__(self, current: UnitFilter, targets: list[tuple[str, str]]) -> None:
        super().__init__(id="filter-screen")
        self._current = current
        self._targets = targets  # (name, "name (account/region)")

    def compose(self) -> ComposeResult:
        now = self._current
        names = [name for name, _shown in self._targets]
        with Vertical(classes="dialog"):
            yield Label(_("Show only units…"), classes="dialog-title")
            yield Select(
                [(s.value, s.value) for s in UnitStateName],
                id="filter-state",
                prompt=_("any state"),
                value=now.state or Select.NULL,
            )
            yield Select(
                [(o.value, o.value) for o in Outcome],
                id="filter-outcome",
                prompt=_("any outcome"),
                value=now.outcome or Select.NULL,
            )
            yield Select(
                [(shown, name) for name, shown in self._targets],
                id="filter-target",
                prompt=_("any target"),
                value=now.target if now.target in names else Select.NULL,
            )
            yield Input(
                now.station or "",
                id="filter-station",
                max_length=64,
                placeholder=_("station id (any station when empty)"),
            )
            with Horizontal(classes="dates"):
                yield Input(
                    _day(now.since), id="filter-since", max_length=16, placeholder=_("from YYYY-MM-DD")
                )
                yield Input(
                    _day(now.until, end=True),
                    id="filter-until",
                    max_length=16,
                    placeholder=_("until YYYY-MM-DD"),
                )
            with Horizontal(classes="buttons"):
                yield Button(_("Apply"), id="ok", variant="primary")
                yield Button(_("Clear"), id="clear")
                yield Button(_("Cancel"), id="cancel")

    @on(Button.Pressed, "#clear")
    def _clear(self) -> None:
        self.dismiss(UnitFilter())

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        def chosen(selector: str) -> str | None:
            value = self.query_one(selector, Select).value
            return value if isinstance(value, str) else None

        try:
            since = parse_day(self.query_one("#filter-since", Input).value)
            until = parse_day(self.query_one("#filter-until", Input).value, end=True)
        except ValueError:
            self.app.notify(
                _("Type dates as 2026-12-05 or 2026-12-05 14:00."), title=_("Not a date"), severity="warning"
            )
            return
        station = self.query_one("#filter-station", Input).value.strip()
        self.dismiss(
            UnitFilter(
                state=chosen("#filter-state"),
                outcome=chosen("#filter-outcome"),
                target=chosen("#filter-target"),
                station=station or None,
                since=since,
                until=until,
            )
        )


# ---------------------------------------------------------------------------------------------------------
# A unit's label


class LabelScreen(_Dialog):
    """The unit's label as the printer prints it (text and QR code); Reprint (the focus) sends it again to
    the station's printer; without a printer it only shows the label."""

    def __init__(self, serial: str, preview: str, printer: str | None) -> None:
        super().__init__(id="label-screen")
        self._serial = serial
        self._preview = preview
        self._printer = printer

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="label-dialog"):
            yield Label(Content(_("Label of {serial}").format(serial=self._serial)), classes="dialog-title")
            with VerticalScroll(id="label-scroll"):
                yield Static(Content(self._preview), id="label-preview")
            if self._printer:
                yield Label(Content(_("Printer: {printer}").format(printer=self._printer)))
            else:
                yield Label(_("No label printer is configured ([station.labels] in station.toml)."))
            with Horizontal(classes="buttons"):
                yield Button(_("Reprint"), id="ok", variant="primary", disabled=not self._printer)
                yield Button(_("Close"), id="cancel")

    def on_mount(self) -> None:
        self.query_one("#ok" if self._printer else "#cancel").focus()

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        self.dismiss(True)
