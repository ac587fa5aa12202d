"""The QA desk: find a unit, read its records and audit trail, and act on it.

It opens with the most recent units (newest first, one page at a time through the ledger's indexed
`unit_page`; moving past the last row loads the next page). The search finds units by serial (any case),
thing name or certificate id (or its first 8+ hex characters); an empty search shows the recent list again.
Filters (F2) narrow both by state, outcome, target, station and date, as `station units` does. A search that
finds one unit shows all its records (newest first); Enter on a unit in a list opens its records; Esc goes
back to the recent list, and from there to the line. The trail
below shows the highlighted unit's events from the ledger's hash-chained log, QA actions included.

Actions work on the record under the cursor: re-verify (F5), revoke (F6), transfer (F7), re-provision (F3: a
new identity on a slot, then the old one revoked), the unit's label (Ctrl+L: preview, reprint); register an
imported certificate (F8), export records (F9) and check the ledger (F4) need no record. The outcome column
and the detail also show what the unit is now (its state, from the ledger): a revoked unit's PASS reads
"✔ PASS · ⊘ revoked …". Revoke, transfer and re-provision are planned from the ledger first and asked once,
with that plan; the choices before it (destination, slot) only plan. `station.desk.QaServices` (the desk
sees only `station.tui.api.QaServicesAPI`) carries them out through `station.qa`, which records every action with the person as the CLI does.

At 80 columns the table keeps When, Serial, Outcome, Thing, Target, Slot and Operator (narrower, cut with an
ellipsis); the certificate id moves to the detail line below it.

All ledger and cloud calls, plans included, run in thread workers; results come back as messages. It must
not call boto3, serial, awscrt or cryptography, nor the core on the UI thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from station.errors import StationError
from station.i18n import N_, _
from station.tui.api import ActionResult, Prepared, QaServicesAPI, StationInfo
from station.tui.bindings import translate_bindings
from station.tui.qa.dialogs import (
    ConfirmScreen,
    ExportChoice,
    ExportScreen,
    FilterScreen,
    ImportChoice,
    ImportScreen,
    LabelScreen,
    ReprovisionScreen,
    ReverifyChoice,
    ReverifyScreen,
    TransferChoice,
    TransferScreen,
    filter_summary,
)
from station.tui.state import OUTCOME_LABEL
from station.units import UnitFilter

# Column headers, translated where the tables are made (N_: these are read before the language is chosen).
RECORD_COLUMNS = (
    N_("When"),
    N_("Serial"),
    N_("Outcome"),
    N_("Thing"),
    N_("Certificate"),
    N_("Target"),
    N_("Slot"),
    N_("Operator"),
)
TRAIL_COLUMNS = (N_("#"), N_("When"), N_("Event"), N_("Step"), N_("Result"), N_("Message"))
WIDE = 120  # from this width the table shows full times and ids


class ListLoaded(Message):
    """Rows for the records table, newest first: each unit's latest record (`mode` "recent" or "search"),
    or every record of one unit ("unit"). `append` adds a further page of the recent list."""

    def __init__(
        self,
        mode: str,
        query: str,
        records: list[Any],
        states: dict[str, Any],
        *,
        next_cursor: str | None = None,
        append: bool = False,
        generation: int = 0,
    ) -> None:
        super().__init__()
        self.generation = generation  # which request it answers (QaDeskScreen drops stale ones)
        self.mode = mode
        self.query = query
        self.records = records
        self.states = states  # serial → the unit's current state (station.units.UnitState) or None
        self.next_cursor = next_cursor
        self.append = append


class TrailLoaded(Message):
    """The audit trail of one unit (ledger events in chain order)."""

    def __init__(self, serial: str, trail: list[Any]) -> None:
        super().__init__()
        self.serial = serial
        self.trail = trail


class QaActionDone(Message):
    def __init__(self, action: str, result: ActionResult) -> None:
        super().__init__()
        self.action = action
        self.result = result


class PlanReady(Message):
    """An action was planned from the ledger; `then` asks the person to confirm it (on the UI thread)."""

    def __init__(self, action: str, prepared: Prepared, then: Callable[[Prepared], None]) -> None:
        super().__init__()
        self.action = action
        self.prepared = prepared
        self.then = then


class LabelReady(Message):
    def __init__(self, record: Any, preview: str) -> None:
        super().__init__()
        self.record = record
        self.preview = preview


class QaActionFailed(Message):
    def __init__(self, action: str, title: str, message: str, next_action: str) -> None:
        super().__init__()
        self.action = action
        self.title = title
        self.message = message
        self.next_action = next_action


def _when(at: float | None) -> str:
    if not at:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _cell(value: object) -> Text:
    """A table cell as plain text (a str cell would be read as markup, and serials are not markup)."""
    return Text("" if value is None else str(value))


def _fit(value: object, width: int | None) -> Text:
    """A cell cut to `width` terminal cells with an ellipsis (None: as it is); a Japanese name takes two
    cells a character, so the cut counts cells, not characters."""
    text = Text("" if value is None else str(value))
    if width is not None:
        text.truncate(width, overflow="ellipsis")
    return text


# An action's name as a person reads it (the keys are the action's id, never shown).
_ACTION_LABEL = {
    "search": N_("Search"),
    "audit": N_("Audit"),
    "revoke": N_("Revoke"),
    "transfer": N_("Transfer"),
    "import": N_("Import"),
    "export": N_("Export"),
    "reverify": N_("Re-verify"),
    "reprovision": N_("Re-provision"),
    "reprint": N_("Reprint"),
    "label": N_("Label"),
}


def _label(action: str) -> str:
    """An action's name as a person reads it in a notification."""
    return _(_ACTION_LABEL[action]) if action in _ACTION_LABEL else action.capitalize()


STATE_MARK = {
    "provisioned": "✔",
    "registered": "○",
    "failed": "✘",
    "revoked": "⊘",
    "transferred": "→",
    "superseded": "↻",
}


def state_text(record: Any, state: Any) -> str:
    """What the unit is now, when the record alone would mislead: "⊘ revoked 2026-12-05 by qa" for a revoked
    unit, "↻ replaced …" for a certificate a re-provision superseded; "" while the record's identity is the
    unit's live one."""
    if state is None:
        return ""
    live = {i.certificate_id for i in state.live}
    mark = STATE_MARK.get(state.state, "·")
    if state.state in ("provisioned", "registered"):
        if (
            not record.certificate_id
            or record.certificate_id in live
            or record.outcome not in ("PASS", "DONE")
        ):
            return ""
        return _("↻ replaced {date}").format(date=state.changed_at_iso[:10])
    return f"{mark} {state.label()}"


def _outcome_label(outcome: str) -> str:
    for key, label in OUTCOME_LABEL.items():
        if key.value == outcome:
            return label
    return outcome


def column_widths(width: int) -> dict[str, int | None]:
    """The columns shown in a table `width` cells wide, each with its width (None: natural). From `WIDE` all
    eight at their natural width; narrower, the certificate column goes (the detail line below names it) and
    the others narrow, cut with an ellipsis, so Slot and Operator stay; the thing name takes what is left."""
    if width >= WIDE:
        return dict.fromkeys(RECORD_COLUMNS, None)
    fixed = {"When": 11, "Serial": 10, "Outcome": 7, "Target": 8, "Slot": 6, "Operator": 8}
    # A column is never narrower than its header in the station's language (ターゲット is 10 cells wide):
    # Textual cuts a header without an ellipsis.
    fixed = {name: max(cells, cell_len(_(name))) for name, cells in fixed.items()}
    # The table's border (2), a cell's padding (2 per column) and the vertical scrollbar (2).
    left = width - 2 - 2 * (len(fixed) + 1) - 2 - sum(fixed.values())
    shown = {**fixed, "Thing": max(6, left)}
    return {name: shown[name] for name in RECORD_COLUMNS if name in shown}


class QaDeskScreen(Screen[None]):
    AUTO_FOCUS = "#qa-search"
    BINDINGS: ClassVar[list[BindingType]] = [
        # First, so the footer shows it even at 80 columns (the app's own Ctrl+Q does the quitting).
        Binding("ctrl+q", "app.quit", N_("Quit")),
        Binding("escape", "close", N_("Back")),
        Binding("f2", "filter", N_("Filter")),
        Binding("f3", "reprovision", N_("Re-provision")),
        Binding("f4", "audit", N_("Audit")),
        Binding("f5", "reverify", N_("Re-verify")),
        Binding("f6", "revoke", N_("Revoke")),
        Binding("f7", "transfer", N_("Transfer")),
        Binding("f8", "import_certificate", N_("Import")),
        Binding("f9", "export", N_("Export")),
        Binding("ctrl+l", "label", N_("Label")),
    ]

    def __init__(self, services: QaServicesAPI, info: StationInfo) -> None:
        super().__init__(id="qa-desk")
        translate_bindings(self)
        self.services = services
        self.info = info
        self.records: dict[str, Any] = {}  # row key (attempt id) → record, for the row under the cursor
        self.states: dict[str, Any] = {}  # serial → the unit's current state
        self._import_again: ImportChoice | None = None  # what was typed, for the dialog after a failure
        self.last_query = ""
        self.busy_action: str | None = None
        self.filters = UnitFilter()
        self.mode = "recent"  # recent | search | unit
        self.next_cursor: str | None = None
        self._loading_more = False
        self._generation = 0  # the list request whose answer is wanted
        self._trail_serial: str | None = None
        self._widths: dict[str, int | None] = dict.fromkeys(RECORD_COLUMNS, None)  # the columns shown

    def compose(self) -> ComposeResult:
        yield Static(
            Content(
                _("QA DESK  ·  station {station}  ·  actions are recorded as {person}").format(
                    station=self.info.station_id, person=self.services.operator
                )
            ),
            id="qa-title",
        )
        search = Input(
            id="qa-search",
            max_length=256,
            placeholder=_("serial, thing name or certificate id; empty: recent units"),
        )
        search.border_title = _("Find a unit")
        yield search
        records: DataTable[str] = DataTable(id="qa-records", cursor_type="row", zebra_stripes=True)
        records.border_title = _("Records (Tab here, ↑↓ to pick one)")
        yield records
        yield Label("", id="qa-detail")
        trail: DataTable[str] = DataTable(id="qa-trail", cursor_type="row")
        trail.border_title = _("Audit trail")
        yield trail
        yield Footer()

    def on_mount(self) -> None:
        self._widths = column_widths(self.size.width or self.app.size.width)
        self._columns()
        self.query_one("#qa-trail", DataTable).add_columns(*(_(c) for c in TRAIL_COLUMNS))
        self._title()
        self.load_recent()

    def _columns(self) -> None:
        table = self.query_one("#qa-records", DataTable)
        table.clear(columns=True)
        for name, width in self._widths.items():
            table.add_column(_(name), key=name, width=width)

    def on_resize(self, event: events.Resize) -> None:
        widths = column_widths(event.size.width)
        if widths != self._widths:
            self._widths = widths
            rows = list(self.records.values())
            self._columns()
            self._add_rows(rows)

    def _title(self) -> None:
        table = self.query_one("#qa-records", DataTable)
        if self.mode == "recent":
            title = _("Recent units, newest first")
        elif self.mode == "search":
            title = _("Units found for {query}").format(query=repr(self.last_query))
        else:
            title = _("Records of {serial}").format(serial=self.last_query)
        if self.filters.active:
            title += " · " + _("filter: {summary}").format(summary=filter_summary(self.filters))
        table.border_title = title
        subtitle = _("Tab here, ↑↓ pick, Enter open") if self.mode != "unit" else ""
        if self.mode == "recent" and self.next_cursor:
            subtitle += " · " + _("↓ past the last: more")
        table.border_subtitle = subtitle

    # ------------------------------------------------------------------------------------------ lists
    @on(Input.Submitted, "#qa-search")
    def _search(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        self.last_query = query
        event.input.select_all()  # the next scan or typing replaces the query instead of adding to it
        if not query:
            self.load_recent()
            return
        self.search_in_thread(query)

    def refresh_list(self) -> None:
        """The list again as it was asked for (after an action, or new filters)."""
        if self.last_query:
            self.search_in_thread(self.last_query)
        else:
            self.load_recent()

    def _failed(self, action: str, error: Exception) -> None:
        if isinstance(error, StationError):
            self.post_message(QaActionFailed(action, error.title, error.message, error.next_action))
            return
        self.post_message(
            QaActionFailed(
                action,
                _("Search failed"),
                _("The ledger could not be read ({error}).").format(error=type(error).__name__),
                _("Try again; if it fails again, call a technician."),
            )
        )

    def load_recent(self, after: str | None = None) -> None:
        """The recent list (its first page, or the page after `after`), read in a worker."""
        if after is None:
            self._generation += 1  # a new list: pages and answers of the one before are dropped
        self._recent_worker(after, self.filters, self._generation)

    def search_in_thread(self, query: str) -> None:
        """The units `query` finds (or one unit's records), read in a worker."""
        self._generation += 1
        self._search_worker(query, self.filters, self._generation)

    @work(thread=True, group="qa-search", exclusive=True, exit_on_error=False)
    def _recent_worker(self, after: str | None, filters: UnitFilter, generation: int) -> None:
        try:
            page = self.services.recent(filters, after=after)
        except Exception as error:
            self._failed("search", error)
            return
        records = [row.record for row in page.rows if row.record is not None]
        states = {row.unit.serial: row.unit for row in page.rows}
        self.post_message(
            ListLoaded(
                "recent",
                "",
                records,
                states,
                next_cursor=page.next_cursor,
                append=after is not None,
                generation=generation,
            )
        )

    @work(thread=True, group="qa-search", exclusive=True, exit_on_error=False)
    def _search_worker(self, query: str, filters: UnitFilter, generation: int) -> None:
        try:
            rows = self.services.search(query, filters)
            if len(rows) == 1:
                serial = rows[0].unit.serial
                records = self.services.unit_records(serial)
                message = ListLoaded("unit", serial, records, {serial: rows[0].unit}, generation=generation)
            else:
                records = [row.record for row in rows if row.record is not None]
                states = {row.unit.serial: row.unit for row in rows}
                message = ListLoaded("search", query, records, states, generation=generation)
        except Exception as error:
            self._failed("search", error)
            return
        self.post_message(message)

    def on_list_loaded(self, message: ListLoaded) -> None:
        if message.generation != self._generation:
            return  # the answer to a list asked for before the one now wanted
        self._loading_more = False
        table = self.query_one("#qa-records", DataTable)
        if not message.append:
            table.clear()
            self.records = {}
            self.states = {}
        self.mode = message.mode
        if message.mode == "unit":
            self.last_query = message.query  # the unit's own serial (it was found in any case)
        self.states.update(message.states)
        self.next_cursor = message.next_cursor
        self._add_rows(message.records)
        self._title()
        if not message.records and not message.append:
            if message.mode == "recent":
                text = (
                    _("No unit matches the filter.")
                    if self.filters.active
                    else _("The ledger has no units yet.")
                )
                self.notify(text, title=_("No units"), severity="information")
            else:
                text = _("The ledger has no unit for {query}.").format(query=repr(message.query))
                if self.filters.active:
                    text += " " + _("(with the filter: {summary})").format(
                        summary=filter_summary(self.filters)
                    )
                self.notify(text, title=_("Not found"), severity="warning")
            self._show_trail(None, [])
        self._show_detail()
        self._trail_for_selected()

    def _add_rows(self, records: list[Any]) -> None:
        table = self.query_one("#qa-records", DataTable)
        w = self._widths
        narrow = w.get("When") is not None
        for record in records:
            if record.attempt_id in self.records and record.attempt_id in table.rows:
                continue
            self.records[record.attempt_id] = record
            now = state_text(record, self.states.get(record.serial))
            at = record.finished_at or record.started_at
            when = _when(at)[5:16] if narrow else _when(at)  # narrow: "12-05 14:03"
            outcome = _outcome_label(record.outcome)
            if now:
                outcome += f" {now.split()[0]}" if narrow else f" · {now}"
            cert = record.certificate_id
            cells = {
                "When": when,
                "Serial": record.serial,
                "Outcome": outcome,
                "Thing": record.thing_name,
                "Certificate": f"{cert[:12]}…" if cert else "",
                "Target": record.target,
                "Slot": record.slot,
                "Operator": record.operator,
            }
            table.add_row(*(_fit(cells[name], width) for name, width in w.items()), key=record.attempt_id)

    @on(DataTable.RowHighlighted, "#qa-records")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()
        self._trail_for_selected()
        table = event.data_table
        if (
            self.mode == "recent"
            and self.next_cursor
            and not self._loading_more
            and event.cursor_row >= table.row_count - 1
        ):
            self._loading_more = True
            self.load_recent(self.next_cursor)

    @on(DataTable.RowSelected, "#qa-records")
    def _open(self, event: DataTable.RowSelected) -> None:
        """Enter on a unit in a list: its records (all of them) and its trail."""
        record = self.selected()
        if record is None or self.mode == "unit":
            return
        self.last_query = record.serial
        self.query_one("#qa-search", Input).value = record.serial
        self.search_in_thread(record.serial)

    def _trail_for_selected(self) -> None:
        record = self.selected()
        serial = record.serial if record is not None else None
        if serial is None or serial == self._trail_serial:
            return
        self._trail_serial = serial
        self.trail_in_thread(serial)

    @work(thread=True, group="qa-trail", exclusive=True, exit_on_error=False)
    def trail_in_thread(self, serial: str) -> None:
        try:
            trail = self.services.events([serial])
        except Exception as error:
            self._failed("search", error)
            return
        self.post_message(TrailLoaded(serial, trail))

    def on_trail_loaded(self, message: TrailLoaded) -> None:
        record = self.selected()
        if record is not None and record.serial == message.serial:
            self._show_trail(message.serial, message.trail)

    def _show_trail(self, serial: str | None, items: list[Any]) -> None:
        self._trail_serial = serial
        trail = self.query_one("#qa-trail", DataTable)
        trail.clear()
        trail.border_title = (
            _("Audit trail of {serial}").format(serial=serial) if serial else _("Audit trail")
        )
        for item in items:
            event = item.event
            text = f"{event.title}: {event.message}".strip(": ") if event.title else event.message
            trail.add_row(
                *map(_cell, (item.seq, _when(event.at), event.kind, event.step, event.outcome, text))
            )

    def _show_detail(self) -> None:
        record = self.selected()
        label = self.query_one("#qa-detail", Label)
        if record is None:
            label.update(Content(""))
            return
        cert = record.certificate_id or _("no certificate")
        state = self.states.get(record.serial)
        now = state_text(record, state)
        unit = ""
        if state is not None:
            unit = "\n" + _("unit now: {state}").format(
                state=f"{STATE_MARK.get(state.state, '·')} {state.label()}"
            )
            if state.note:
                unit += f" ({state.note})"
        label.update(
            Content(
                f"{_outcome_label(record.outcome)}{f' · {now}' if now else ''}  {record.serial}  "
                f"{record.title}: {record.message}\n"
                # The certificate id last: at 80 columns it is the part cut (with an ellipsis).
                + _("thing {thing}  ·  target {target}  ·  station {station}  ·  certificate {cert}").format(
                    cert=cert,
                    thing=record.thing_name or "-",
                    target=record.target,
                    station=record.station_id or "-",
                )
                + unit
            )
        )

    def selected(self) -> Any:
        table = self.query_one("#qa-records", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:
            return None
        return self.records.get(str(key.value))

    def _need_record(self) -> Any:
        record = self.selected()
        if record is None:
            self.notify(
                _("Search for a unit and pick one of its records first."),
                title=_("No record"),
                severity="warning",
            )
        return record

    def action_filter(self) -> None:
        def chosen(choice: object) -> None:
            if isinstance(choice, UnitFilter):
                self.filters = choice
                self._title()
                self.refresh_list()

        targets = [
            (name, f"{name} ({account}/{region})")
            for name, (account, region) in self.services.target_places().items()
        ]
        self.app.push_screen(FilterScreen(self.filters, targets), chosen)

    # ------------------------------------------------------------------------------------------ actions
    def action_close(self) -> None:
        """Esc: from a search or a unit's records back to the recent list; from there back to the line."""
        if self.last_query:
            self.last_query = ""
            self.query_one("#qa-search", Input).value = ""
            self.load_recent()
            return
        self.dismiss(None)

    def action_audit(self) -> None:
        self._start("audit", self.services.audit)

    def action_revoke(self) -> None:
        record = self._need_record()
        if record is None:
            return
        if not record.certificate_id:
            self.notify(
                _("The record of {serial} has no certificate.").format(serial=record.serial),
                title=_("Nothing to revoke"),
                severity="warning",
            )
            return
        self._plan(
            "revoke",
            lambda: self.services.prepare_revoke(record),
            lambda prepared: self.services.revoke(record, plan=prepared.plan),
        )

    def action_transfer(self) -> None:
        record = self._need_record()
        if record is None:
            return

        def chosen(choice: object) -> None:
            if isinstance(choice, TransferChoice):
                self._plan(
                    "transfer",
                    lambda: self.services.prepare_transfer(
                        record, choice.destination, revoke_source=choice.revoke_source
                    ),
                    lambda prepared: self.services.transfer(
                        record, choice.destination, revoke_source=choice.revoke_source, plan=prepared.plan
                    ),
                )

        self.app.push_screen(
            TransferScreen(record.serial, record.target, self.services.target_names()), chosen
        )

    def action_import_certificate(self, initial: ImportChoice | None = None) -> None:
        def chosen(choice: object) -> None:
            if isinstance(choice, ImportChoice):
                # Kept (without the password) to open the dialog again with it if the import fails.
                self._import_again = ImportChoice(**{**choice.__dict__, "password": None})
                self._start(
                    "import",
                    lambda: self.services.import_certificate(
                        choice.path,
                        password=choice.password,
                        serial=choice.serial,
                        target=choice.target,
                        product=choice.product,
                        thing=choice.thing,
                        key_path=choice.key_path,
                        verify=choice.verify,
                    ),
                )

        self.app.push_screen(
            ImportScreen(self.services.target_names(), self.services.product_names(), initial), chosen
        )

    def action_export(self) -> None:
        def chosen(choice: object) -> None:
            if isinstance(choice, ExportChoice):
                self._start("export", lambda: self.services.export(choice.fmt, choice.path))
            else:  # said, so a Cancel pressed by mistake is not taken for an export
                self.notify(_("Nothing was exported."), title=_("Export cancelled"), timeout=3)

        self.app.push_screen(ExportScreen(id="export-screen"), chosen)

    def action_reverify(self) -> None:
        record = self._need_record()
        if record is None:
            return

        def chosen(choice: object) -> None:
            if isinstance(choice, ReverifyChoice):
                self._start(
                    "reverify",
                    lambda: self.services.reverify(
                        record, choice.slot, key_path=choice.key_path, password=choice.password
                    ),
                )

        self.app.push_screen(
            ReverifyScreen(record.serial, self.services.slot_names(), self.services.default_slot(record)),
            chosen,
        )

    def action_reprovision(self) -> None:
        record = self._need_record()
        if record is None:
            return

        def chosen(slot: object) -> None:
            if isinstance(slot, str):
                self._plan(
                    "reprovision",
                    lambda: self.services.prepare_reprovision(record, slot),
                    lambda prepared: self.services.reprovision(record, slot, plan=prepared.plan),
                )

        self.app.push_screen(
            ReprovisionScreen(record.serial, self.services.slot_names(), self.services.default_slot(record)),
            chosen,
        )

    # ------------------------------------------------------------------------------------------ workers
    def _claim(self, action: str) -> bool:
        """One action at a time: False (and a word to the person) while another is planned or running."""
        if self.busy_action is not None:
            self.notify(
                _("Wait for {action} to finish.").format(action=_label(self.busy_action)),
                title=_("Busy"),
                severity="warning",
            )
            return False
        self.busy_action = action
        return True

    def _start(self, action: str, call: Callable[[], ActionResult]) -> None:
        if self._claim(action):
            self._run(action, call)

    def _run(self, action: str, call: Callable[[], ActionResult]) -> None:
        self.notify(_("{action} in progress…").format(action=_label(action)), title=_("QA desk"), timeout=3)
        self.act_in_thread(action, call)

    def _plan(
        self, action: str, plan: Callable[[], Prepared], act: Callable[[Prepared], ActionResult]
    ) -> None:
        """Plan in a worker, ask the person with the plan, then act on exactly that plan (or on nothing)."""
        if not self._claim(action):
            return

        def ask(prepared: Prepared) -> None:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._run(action, lambda: act(prepared))
                else:
                    self.busy_action = None
                    self.notify(
                        _("Nothing was changed."),
                        title=_("{action} cancelled").format(action=_label(action)),
                        timeout=3,
                    )

            self.app.push_screen(
                ConfirmScreen(prepared.title, prepared.body, prepared.confirm_label), confirmed
            )

        self.plan_in_thread(action, plan, ask)

    @work(thread=True, group="qa-plan", exit_on_error=False)
    def plan_in_thread(
        self, action: str, plan: Callable[[], Prepared], then: Callable[[Prepared], None]
    ) -> None:
        try:
            prepared = plan()
        except StationError as error:
            self.post_message(QaActionFailed(action, error.title, error.message, error.next_action))
            return
        except Exception as error:
            self.post_message(
                QaActionFailed(
                    action,
                    _("{action} failed").format(action=_label(action)),
                    _("Unexpected {error_type} while planning.").format(error_type=type(error).__name__),
                    _("Call a technician; the details are in the station log."),
                )
            )
            return
        self.post_message(PlanReady(action, prepared, then))

    def on_plan_ready(self, message: PlanReady) -> None:
        message.then(message.prepared)

    @work(thread=True, group="qa-action", exit_on_error=False)
    def act_in_thread(self, action: str, call: Callable[[], ActionResult]) -> None:
        try:
            result = call()
        except StationError as error:
            self.post_message(QaActionFailed(action, error.title, error.message, error.next_action))
            return
        except Exception as error:
            self.post_message(
                QaActionFailed(
                    action,
                    _("{action} failed").format(action=_label(action)),
                    _("Unexpected {error_type}.").format(error_type=type(error).__name__),
                    _("Call a technician; the details are in the station log."),
                )
            )
            return
        self.post_message(QaActionDone(action, result))

    def on_qa_action_done(self, message: QaActionDone) -> None:
        self.busy_action = None
        if message.action == "import":
            self._import_again = None
        self.notify(message.result.message, title=message.result.title)
        self._trail_serial = None  # the action is in the unit's trail now
        self.refresh_list()

    def on_qa_action_failed(self, message: QaActionFailed) -> None:
        self._loading_more = False
        if message.action == self.busy_action:
            self.busy_action = None
        self.notify(
            f"{message.message} {message.next_action}", title=message.title, severity="error", timeout=10
        )
        if message.action == "import" and self._import_again is not None:
            # What was typed is kept: the dialog opens again with it, to fix what the message names.
            again, self._import_again = self._import_again, None
            self.call_after_refresh(self.action_import_certificate, again)
        if message.action not in ("search", "label"):
            self._trail_serial = None
            self.refresh_list()

    # ------------------------------------------------------------------------------------------ labels
    def action_label(self) -> None:
        """The unit's label drawn in the terminal; Reprint there sends it to the printer (recorded)."""
        record = self._need_record()
        if record is not None:
            self.label_in_thread(record)

    @work(thread=True, group="qa-label", exclusive=True, exit_on_error=False)
    def label_in_thread(self, record: Any) -> None:
        try:
            preview = self.services.label_preview(record)
        except StationError as error:
            self.post_message(QaActionFailed("label", error.title, error.message, error.next_action))
            return
        except Exception as error:
            self.post_message(
                QaActionFailed(
                    "label",
                    _("No label"),
                    _("The label could not be drawn ({error}).").format(error=type(error).__name__),
                    _("Call a technician; the details are in the station log."),
                )
            )
            return
        self.post_message(LabelReady(record, preview))

    def on_label_ready(self, message: LabelReady) -> None:
        record = message.record

        def chosen(reprint: object) -> None:
            if reprint is True:
                self._start("reprint", lambda: self.services.reprint(record))

        self.app.push_screen(LabelScreen(record.serial, message.preview, self.services.printer()), chosen)
