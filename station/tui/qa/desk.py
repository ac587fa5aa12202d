"""The QA desk: look a unit up, read its records and audit trail, and act on it.

Search by serial, thing name or certificate id (or its first 8+ hex characters). The records table shows
every attempt (newest first); the trail below shows the unit's events from the ledger's hash-chained log,
QA actions included. Actions work on the record under the cursor: re-verify (F5), revoke (F6), transfer
(F7), re-provision (F3: a new identity on a slot, then the old one revoked); register an imported certificate
(F8), export records (F9) and check the ledger (F4) need no record. The outcome column and the detail also
show what the unit is now (its state, from the ledger): a revoked unit's PASS reads "✔ PASS · ⊘ revoked …".
Revoke and transfer are planned from the ledger first and ask for confirmation with that plan (what will be
deleted, where the certificate goes, which thing is kept); `station.desk.QaServices` (the desk
sees only `station.tui.api.QaServicesAPI`) carries them out through `station.qa`, which records every action
with the operator as the CLI does.

All ledger and cloud calls, plans included, run in thread workers; results come back as messages. It must
not call boto3, serial, awscrt or cryptography, nor the core on the UI thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
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
    ImportChoice,
    ImportScreen,
    ReprovisionScreen,
    ReverifyChoice,
    ReverifyScreen,
    TransferChoice,
    TransferScreen,
)
from station.tui.state import OUTCOME_LABEL

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
TRAIL_COLUMNS = ("#", N_("When"), N_("Event"), N_("Step"), N_("Result"), N_("Message"))


class RecordsFound(Message):
    """A search finished: the records (newest first) and their serials' audit trail."""

    def __init__(
        self, query: str, records: list[Any], trail: list[Any], states: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.query = query
        self.records = records
        self.trail = trail
        self.states = states or {}  # serial → the unit's current state (station.units.UnitState) or None


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


class QaDeskScreen(Screen[None]):
    AUTO_FOCUS = "#qa-search"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", N_("Back")),
        Binding("f3", "reprovision", N_("Re-provision")),
        Binding("f4", "audit", N_("Audit")),
        Binding("f5", "reverify", N_("Re-verify")),
        Binding("f6", "revoke", N_("Revoke")),
        Binding("f7", "transfer", N_("Transfer")),
        Binding("f8", "import_certificate", N_("Import")),
        Binding("f9", "export", N_("Export")),
    ]

    def __init__(self, services: QaServicesAPI, info: StationInfo) -> None:
        super().__init__(id="qa-desk")
        translate_bindings(self)
        self.services = services
        self.info = info
        self.records: dict[str, Any] = {}  # attempt id → record, for the row under the cursor
        self.states: dict[str, Any] = {}  # serial → the unit's current state
        self._import_again: ImportChoice | None = None  # what was typed, for the dialog after a failure
        self.last_query = ""
        self.busy_action: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(
            _("QA DESK  ·  station {station}  ·  actions are recorded as {operator}").format(
                station=self.info.station_id, operator=self.services.operator
            ),
            id="qa-title",
        )
        search = Input(
            id="qa-search",
            max_length=256,
            placeholder=_("serial, thing name or certificate id — Enter to search"),
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
        self.query_one("#qa-records", DataTable).add_columns(*(_(c) for c in RECORD_COLUMNS))
        self.query_one("#qa-trail", DataTable).add_columns(*(_(c) for c in TRAIL_COLUMNS))

    # ------------------------------------------------------------------------------------------ search
    @on(Input.Submitted, "#qa-search")
    def _search(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            return
        self.last_query = query
        self.search_in_thread(query)

    @work(thread=True, group="qa-search", exclusive=True, exit_on_error=False)
    def search_in_thread(self, query: str) -> None:
        try:
            records = self.services.find(query)
            trail = self.services.events([r.serial for r in records] or [query])
            states = {
                serial: self.services.unit(serial) for serial in dict.fromkeys(r.serial for r in records)
            }
        except StationError as error:
            self.post_message(QaActionFailed("search", error.title, error.message, error.next_action))
            return
        except Exception as error:
            self.post_message(
                QaActionFailed(
                    "search",
                    _("Search failed"),
                    _("The ledger could not be read ({error_type}).").format(error_type=type(error).__name__),
                    _("Try again; if it fails again, call a technician."),
                )
            )
            return
        self.post_message(RecordsFound(query, records, trail, states))

    def on_records_found(self, message: RecordsFound) -> None:
        table = self.query_one("#qa-records", DataTable)
        table.clear()
        self.records = {}
        self.states = message.states
        for record in message.records:
            self.records[record.attempt_id] = record
            now = state_text(record, message.states.get(record.serial))
            cells = (
                _when(record.finished_at or record.started_at),
                record.serial,
                _outcome_label(record.outcome) + (f" · {now}" if now else ""),
                record.thing_name,
                (record.certificate_id[:12] + "…") if record.certificate_id else "",
                record.target,
                record.slot,
                record.operator,
            )
            table.add_row(*map(_cell, cells), key=record.attempt_id)
        trail = self.query_one("#qa-trail", DataTable)
        trail.clear()
        for item in message.trail:
            event = item.event
            text = f"{event.title}: {event.message}".strip(": ") if event.title else event.message
            trail.add_row(
                *map(_cell, (item.seq, _when(event.at), event.kind, event.step, event.outcome, text))
            )
        if not message.records:
            self.notify(
                _("The ledger has no record for {query!r}.").format(query=message.query),
                title=_("Not found"),
                severity="warning",
            )
        self._show_detail()

    @on(DataTable.RowHighlighted, "#qa-records")
    def _highlighted(self) -> None:
        self._show_detail()

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
                + _("certificate {certificate}  ·  thing {thing}  ·  target {target}").format(
                    certificate=cert, thing=record.thing_name or "-", target=record.target
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

    # ------------------------------------------------------------------------------------------ actions
    def action_close(self) -> None:
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
        if self.last_query:
            self.search_in_thread(self.last_query)  # show the action in the audit trail

    def on_qa_action_failed(self, message: QaActionFailed) -> None:
        if message.action != "search":
            self.busy_action = None
        self.notify(
            f"{message.message} {message.next_action}", title=message.title, severity="error", timeout=10
        )
        if message.action == "import" and self._import_again is not None:
            # What was typed is kept: the dialog opens again with it, to fix what the message names.
            again, self._import_again = self._import_again, None
            self.call_after_refresh(self.action_import_certificate, again)
        if message.action != "search" and self.last_query:
            self.search_in_thread(self.last_query)
