"""The operator screen: scan, watch each slot's card, read the outcome, bin the unit.

Flow: the scan field always has focus (it is the only focusable widget here), so a keyboard-wedge scanner
can type a serial and Enter at any moment; CR, LF and several scans in one read each count as one scan.
`2:SN…` sends a unit to slot 2; a plain serial goes to the jig holding that unit (the line decides). Scans
are handed to the line in order, in thread workers; the line answers at once (queued on a slot, or an `InputError` shown as one
sentence in the message line under the scan field, the details in the log). Progress arrives as the line's
events, turned into messages by the relay and folded into the cards here, on the UI thread.

A finished unit's card shows its outcome in big letters until the next scan on that slot or until
`card_reset_s` has passed (then READY again); the same serial starting on another slot clears the old card.
FAIL and ERROR ring the terminal bell (`bell`). The history pane lists the last units; the counters are per
shift (F5 starts a new one). F1 opens the help panel.

It must not: call the line on the UI thread, touch a widget from a thread, or decide anything about a unit
(the outcome, its reason and the next action come from the core's events).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal
from textual.events import Click, Resize
from textual.geometry import Size
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, RichLog

from station.errors import InputError, StationError
from station.i18n import N_, _
from station.model import Event, Outcome
from station.tui.api import LineAPI, SlotLike, StationInfo
from station.tui.bindings import translate_bindings
from station.tui.messages import (
    CompensationRan,
    LineEventMessage,
    NoteAdded,
    ScanAccepted,
    ScanRefused,
    SlotsRefreshed,
    StepFinished,
    StepStarted,
    UnitFinished,
    UnitStarted,
    message_for,
)
from station.tui.operator import wording
from station.tui.operator.counters import CountersBar
from station.tui.operator.header import StationHeader
from station.tui.operator.help import HelpContent, HelpScreen, HelpSource, resolve
from station.tui.operator.history import HistoryPane
from station.tui.operator.message_line import MessageLine, Severity
from station.tui.operator.scan_field import ScanField
from station.tui.operator.shift import ShiftChangeScreen
from station.tui.operator.slot_card import SlotCard
from station.tui.relay import EventRelay
from station.tui.state import (
    SCAN_HINT,
    CardState,
    Counters,
    History,
    HistoryEntry,
    Shift,
    format_ms,
    parse_scan,
    split_scans,
)

log = logging.getLogger(__name__)

CARD_MIN_WIDTH = 38  # below this a card's steps wrap onto too many lines
ROOMY_HEIGHT = 40  # from here on the outcome banner gets three lines
WIDE_WIDTH = 110  # from here on the history pane stands beside the cards, shown unless hidden with F4
HISTORY_WIDTH = 40  # the pane's width beside the cards (station.tcss #history)


class CleanupCounted(Message):
    """How many of this station's journal entries the line's cleaner still has to finish (polled)."""

    def __init__(self, pending: int) -> None:
        super().__init__()
        self.pending = pending


class OperatorScreen(Screen[None]):
    """Header, counters, one card per slot, the (toggleable) log and the scan field."""

    AUTO_FOCUS = "#scan"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", N_("Help")),
        Binding("f2", "toggle_log", N_("Log")),
        Binding("f3", "app.open_qa", N_("QA desk")),
        Binding("f4", "toggle_history", N_("History")),
        Binding("f5", "new_shift", N_("New shift")),
        Binding("escape", "clear_scan", N_("Clear scan"), show=False),
    ]

    def __init__(
        self,
        line: LineAPI,
        info: StationInfo,
        slots: Sequence[SlotLike],
        *,
        relay: EventRelay | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float | None = 1.0,
        help_content: HelpSource | None = None,
        on_shift_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(id="operator")
        translate_bindings(self)
        self.line = line
        self.relay = relay
        self.info = info
        self.clock = clock
        self.poll_interval = poll_interval
        self.help_content = help_content
        self.on_shift_change = on_shift_change  # writes the shift event (called in a thread worker)
        self.shift = Shift(started_at=clock())
        self.history = History()
        self._history_wanted: bool | None = None  # None: shown when the screen is wide
        # Scans waiting for the line, oldest first: each worker takes the oldest under the lock, so scans
        # reach the line in the order they were made even when several arrive at once.
        self._scans: deque[tuple[str, str, str | None]] = deque()
        self._scan_lock = threading.Lock()
        self.cards: dict[str, CardState] = {}
        for slot in slots:
            self.cards[slot.name] = CardState(
                slot=slot.name,
                port=slot.port,
                product=info.slot_products.get(slot.name, ""),
                state=slot.state,
            )
        self.slot_names = list(self.cards)
        self._widgets: dict[str, SlotCard] = {}
        self.cleanup_pending = 0  # the line's cleaner: journal entries still to finish in AWS

    # ------------------------------------------------------------------------------------------ layout
    @property
    def counters(self) -> Counters:
        """This shift's counters."""
        return self.shift.counters

    def compose(self) -> ComposeResult:
        yield StationHeader(self.info, id="header")
        yield CountersBar(id="counters")
        with Horizontal(id="middle"):
            with Container(id="cards"):
                for index, (name, card) in enumerate(self.cards.items(), start=1):
                    widget = SlotCard(index, card, id=f"card-{index}", classes="slot-card")
                    self._widgets[name] = widget
                    yield widget
            yield HistoryPane(id="history")
        pane = RichLog(id="log", wrap=True, max_lines=2000, markup=False)
        pane.can_focus = False  # a scanner must never type into the log
        yield pane
        scan = ScanField(id="scan", placeholder=_("Scan a unit's serial and press Enter"))
        scan.border_title = _("Scan  ·  {hint}  ·  F1 help").format(hint=_(SCAN_HINT))
        yield scan
        yield MessageLine(id="message")
        yield Footer()

    def on_mount(self) -> None:
        self._refresh_counters()
        self.query_one(HistoryPane).show(self.history)
        if resolve(self.help_content).demo:
            self.say(_("Lab demo: press F1 for the serials to scan and the QA PIN."))
        else:
            self.say(_("Scan a unit's serial label. F1 shows the help."))
        if self.relay is not None:
            # Only now: posting to a screen from another thread needs the screen mounted in the app.
            self.relay.attach(self.deliver)
        if self.poll_interval:
            self.set_interval(self.poll_interval, self._poll_slots)
        self.set_interval(15.0, self._refresh_counters)  # units/h drifts with time even when idle

    def on_unmount(self) -> None:
        if self.relay is not None:
            self.relay.detach()

    def on_resize(self, event: Resize) -> None:
        self._arrange(event.size)

    def on_screen_resume(self) -> None:
        self._arrange(self.size)
        self.refocus()

    def _arrange(self, size: Size) -> None:
        """As many card columns as fit, balanced so no row is left nearly empty."""
        wide = size.width >= WIDE_WIDTH
        history_shown = wide if self._history_wanted is None else self._history_wanted
        room = size.width - (HISTORY_WIDTH if wide and history_shown else 0)
        count = max(1, len(self.cards))
        columns = max(1, min(count, room // CARD_MIN_WIDTH))
        rows = math.ceil(count / columns)
        columns = math.ceil(count / rows)
        self.query_one("#cards").styles.grid_size_columns = columns
        self.set_class(size.height >= ROOMY_HEIGHT, "-roomy")
        self.query_one(HistoryPane).set_class(history_shown, "-shown")
        self.query_one("#middle").set_class(not wide, "-narrow")

    def refocus(self) -> None:
        self.query_one("#scan", Input).focus()

    def on_click(self, event: Click) -> None:
        # A stray mouse click must not leave the scanner typing into nothing.
        self.call_after_refresh(self.refocus)

    # ------------------------------------------------------------------------------------------ scanning
    @on(Input.Submitted, "#scan")
    def _scanned(self, event: Input.Submitted) -> None:
        # The scan field has cleared itself already (the next scan may be arriving behind this one).
        self.refocus()
        # A value can still hold line ends (set by a paste into a plain field, or a program): each is a scan.
        scans, rest = split_scans(event.value)
        for text in [*scans, rest]:
            if text.strip():
                self._take(text)

    def _take(self, text: str) -> None:
        try:
            slot, serial = parse_scan(text, self.slot_names)
        except InputError as error:
            self.post_message(ScanRefused(text, error.title, error.message, error.next_action))
            return
        if not serial:
            self.post_message(
                ScanRefused(
                    text,
                    _("No serial"),
                    _("The scan had a slot number but no serial."),
                    _("Scan the unit's label."),
                )
            )
            return
        self._scans.append((text, serial, slot))
        self.scan_in_thread()

    @work(thread=True, group="scan", exit_on_error=False)
    def scan_in_thread(self) -> None:
        """Hand the oldest waiting scan to the line (it validates and queues; it never runs the unit here)."""
        with self._scan_lock:
            if not self._scans:
                return
            text, serial, slot = self._scans.popleft()
            try:
                name = self.line.scan(serial, slot)
            except StationError as error:
                self.post_message(ScanRefused(text, error.title, error.message, error.next_action))
                return
            except Exception:
                log.exception("the line failed to take scan %r", text)
                self.post_message(
                    ScanRefused(
                        text,
                        _("Scan not taken"),
                        _("The station could not queue this unit; the details are in the station log."),
                        _("Scan again; if it happens again, call a technician."),
                    )
                )
                return
            self.post_message(ScanAccepted(serial.strip(), name))

    def on_scan_accepted(self, message: ScanAccepted) -> None:
        self._clear_stale(message.serial, message.slot)
        card = self.cards.get(message.slot)
        if card is not None:
            card.accepted(message.serial)
            self._show(message.slot)
        index = self.slot_names.index(message.slot) + 1 if message.slot in self.slot_names else "?"
        self.say(
            _("{serial} taken on slot {index} ({slot}).").format(
                serial=message.serial, index=index, slot=message.slot
            ),
            "ok",
        )
        self._log(f"scan {message.serial} → slot {message.slot}")

    def on_scan_refused(self, message: ScanRefused) -> None:
        self.say(wording.refusal(message.text, message.title, message.next_action), "error")
        self._log(
            f"scan refused {message.text.strip()!r}: {message.title}: {message.message} "
            f"Next: {message.next_action}"
        )
        self.refocus()

    def say(self, text: str, severity: Severity = "info") -> None:
        """One sentence in the message line under the scan field (the newest replaces the last)."""
        self.query_one(MessageLine).say(text, severity)

    def action_clear_scan(self) -> None:
        self.query_one("#scan", Input).clear()
        self.refocus()

    # ------------------------------------------------------------------------------------------ survival
    async def _on_message(self, message: Message) -> None:
        """Every handler of this screen, guarded: one bad update must not close the screen of a whole line.

        An unexpected error in a handler is logged, shown on the slot it concerns (when it concerns one) and
        as a notification; the other slots, the scan field and the line keep running.
        """
        try:
            await super()._on_message(message)
        except Exception as error:
            self._handler_failed(message, error)

    def _handler_failed(self, message: Message, error: Exception) -> None:
        log.error(
            "operator screen: %s failed on %s", type(error).__name__, type(message).__name__, exc_info=error
        )
        event = getattr(message, "event", None)
        slot = getattr(event, "slot", None) or getattr(message, "slot", None)
        try:
            card = self.cards.get(slot) if isinstance(slot, str) else None
            if card is not None:
                card.screen_problem(type(error).__name__)
                self._show(card.slot)
            self.say(
                _("The screen could not show an update ({error}); the line carries on.").format(
                    error=type(error).__name__
                ),
                "error",
            )
        except Exception:  # showing the problem failed too: the log has it, keep the screen up
            log.exception("operator screen: could not show a handler failure")

    # ------------------------------------------------------------------------------------------ events
    def deliver(self, event: Event) -> None:
        """The relay's sink: called from the line's threads; only posts a message (thread-safe)."""
        self.post_message(message_for(event))

    def on_unit_started(self, message: UnitStarted) -> None:
        self.counters.started(message.event.at)
        self._clear_stale(message.event.serial, message.event.slot)
        self._apply(message)

    def on_step_started(self, message: StepStarted) -> None:
        self._apply(message)

    def on_step_finished(self, message: StepFinished) -> None:
        self._apply(message)

    def on_compensation_ran(self, message: CompensationRan) -> None:
        self._apply(message)

    def on_unit_finished(self, message: UnitFinished) -> None:
        event = message.event
        try:
            outcome = Outcome(event.outcome)
        except ValueError:
            outcome = Outcome.ERROR
        self.counters.finished(event.serial, outcome, event.at)
        self._apply(message)
        self._refresh_counters()
        self.history.add(HistoryEntry(event.serial, outcome, event.slot, event.at))
        self.query_one(HistoryPane).show(self.history)
        if self.info.bell and outcome in (Outcome.FAIL, Outcome.ERROR):
            self.app.bell()
        card = self.cards.get(event.slot)
        if card is not None and card.outcome is not None and self.info.card_reset_s > 0:
            token = card.units_started
            self.set_timer(self.info.card_reset_s, lambda: self._expire(event.slot, token))

    def _expire(self, slot: str, token: int) -> None:
        """The outcome has been up for `card_reset_s`: READY again, unless another unit came since."""
        card = self.cards.get(slot)
        if card is None or card.outcome is None or card.units_started != token:
            return
        if card.scans_accepted > card.units_started:
            return  # a scan for this slot is on its way: its own begin() replaces the card
        card.reset()
        self._show(slot)

    def _clear_stale(self, serial: str, slot: str) -> None:
        """`serial` is starting on `slot`: no other card may still show an old outcome of that unit."""
        for name, card in self.cards.items():
            if name != slot and card.serial == serial and card.outcome is not None:
                card.reset()
                self._show(name)

    def on_note_added(self, message: NoteAdded) -> None:
        self._log_event(message.event)

    def _apply(self, message: LineEventMessage) -> None:
        event = message.event
        card = self.cards.get(event.slot)
        if card is not None:
            card.apply(event)
            self._show(event.slot)
        self._log_event(event)

    def _show(self, slot: str) -> None:
        widget = self._widgets.get(slot)
        if widget is not None and widget.is_mounted:
            widget.show()

    def _refresh_counters(self) -> None:
        self.query_one(CountersBar).show(
            self.counters, self.clock(), self.cleanup_pending, shift=self.shift.number
        )

    # ------------------------------------------------------------------------------------------ slots
    def _poll_slots(self) -> None:
        self.poll_in_thread()

    @work(thread=True, group="poll", exclusive=True, exit_on_error=False)
    def poll_in_thread(self) -> None:
        """The line's own view of its slots (a port that went away, a stopped slot)."""
        try:
            slots = self.line.slots()
        except Exception:
            log.exception("could not read the line's slots")
            return
        self.post_message(SlotsRefreshed(slots))
        pending = getattr(self.line, "cleanup_pending", None)  # a line without a cleaner has none
        if callable(pending):
            try:
                self.post_message(CleanupCounted(int(pending())))
            except Exception:
                log.exception("could not read the line's cleanup count")

    def on_cleanup_counted(self, message: CleanupCounted) -> None:
        if message.pending != self.cleanup_pending:
            self.cleanup_pending = message.pending
            self._refresh_counters()

    def on_slots_refreshed(self, message: SlotsRefreshed) -> None:
        for slot in message.slots:
            card = self.cards.get(slot.name)
            if card is None:
                continue
            before = (card.state, card.port, card.step)
            card.sync(slot.state, slot.port, getattr(slot, "step", ""))
            if (card.state, card.port, card.step) != before:
                self._show(slot.name)

    @property
    def busy(self) -> bool:
        """Some unit is still on its way through the pipeline."""
        return any(card.active for card in self.cards.values())

    # ------------------------------------------------------------------------------------------ help, history, shift
    def help_keys(self) -> list[tuple[str, str]]:
        """The keys the help panel lists (what each does, in the operator's words)."""
        return [
            ("Enter", _("Ends a scan (a scanner sends it by itself)")),
            ("Esc", _("Clears the scan field")),
            ("F1", _("This help")),
            ("F2", _("Shows or hides the log (all details)")),
            ("F3", _("QA desk (asks for the QA PIN)")),
            ("F4", _("Shows or hides the last units")),
            ("F5", _("Starts a new shift (asks first)")),
            ("Ctrl+Q", _("Quits (twice while units are working)")),
        ]

    def action_help(self) -> None:
        try:
            content = resolve(self.help_content)
        except Exception:
            log.exception("could not build the help content")
            content = HelpContent()
        self.app.push_screen(HelpScreen(content, self.help_keys()))

    def action_toggle_history(self) -> None:
        pane = self.query_one(HistoryPane)
        self._history_wanted = not pane.has_class("-shown")
        self._arrange(self.size)
        self.refocus()

    def action_new_shift(self) -> None:
        shift = self.shift
        c = shift.counters
        fpy = c.first_pass_yield
        summary = _("{passed} PASS, {failed} FAIL, {errored} ERROR, first-pass yield {fpy}").format(
            passed=c.passed,
            failed=c.failed,
            errored=c.errored,
            fpy="–" if fpy is None else f"{fpy * 100:.0f}%",
        )

        def answered(ok: bool | None) -> None:
            if ok and self.shift is shift:
                self.change_shift()

        self.app.push_screen(ShiftChangeScreen(shift.number, summary), answered)

    def change_shift(self) -> None:
        """End this shift: new counters, the ended shift's figures to the log and (by the app) the ledger."""
        ended = self.shift
        now = self.clock()
        self.shift = ended.next(now)
        data = {**ended.summary(), "ended_at": now, "station": self.info.station_id}
        self._refresh_counters()
        self._log(
            f"shift {ended.number} ended: {ended.counters.passed} PASS, {ended.counters.failed} FAIL, "
            f"{ended.counters.errored} ERROR; shift {self.shift.number} started"
        )
        self.say(
            _("Shift {number} started: the counters are at zero.").format(number=self.shift.number), "ok"
        )
        record = self.on_shift_change
        if record is not None:

            def write() -> None:
                try:
                    record(data)
                except Exception:
                    log.exception("could not record the shift change")

            self.run_worker(write, thread=True, group="shift", exit_on_error=False)
        self.refocus()

    # ------------------------------------------------------------------------------------------ log
    def action_toggle_log(self) -> None:
        self.query_one("#log", RichLog).toggle_class("-shown")
        self.refocus()

    def _log(self, text: str, at: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock() if at is None else at))
        self.query_one("#log", RichLog).write(f"{stamp}  {text}")

    def _log_event(self, event: Event) -> None:
        where = f"{event.slot or '-'} {event.serial}"
        if event.kind == "step_finished":
            text = f"{where} {event.step} {event.outcome} {format_ms(event.duration_ms)}"
        elif event.kind == "step_started":
            text = f"{where} {event.step} …"
        elif event.kind == "compensation":
            text = f"{where} undo {event.step}: {event.outcome} {event.message}".rstrip()
        elif event.kind == "unit_finished":
            text = f"{where} {event.outcome} {event.title}: {event.message} Next: {event.next_action}"
        elif event.kind == "unit_started":
            text = f"{where} started"
        else:
            text = f"{where} {event.kind} {event.title} {event.message}".rstrip()
        self._log(text, at=event.at)
