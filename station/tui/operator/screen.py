"""The operator screen: scan, watch each slot's card, read the outcome, bin the unit.

Flow: the scan field always has focus (it is the only focusable widget here), so a keyboard-wedge scanner
can type a serial and Enter at any moment. `2:SN…` sends a unit to slot 2; a plain serial goes to the next
free slot. The scan is handed to the line in a thread worker; the line answers at once (queued on a slot,
or an `InputError` shown as a notification). Progress arrives as the line's events, turned into messages
by the relay and folded into the cards here, on the UI thread.

It must not: call the line on the UI thread, touch a widget from a thread, or decide anything about a unit
(the outcome, its reason and the next action come from the core's events).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
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
from station.tui.operator.counters import CountersBar
from station.tui.operator.header import StationHeader
from station.tui.operator.slot_card import SlotCard
from station.tui.relay import EventRelay
from station.tui.state import SCAN_HINT, CardState, Counters, format_ms, parse_scan

log = logging.getLogger(__name__)

CARD_MIN_WIDTH = 38  # below this a card's steps wrap onto too many lines
ROOMY_HEIGHT = 40  # from here on the outcome banner gets three lines


class CleanupCounted(Message):
    """How many of this station's journal entries the line's cleaner still has to finish (polled)."""

    def __init__(self, pending: int) -> None:
        super().__init__()
        self.pending = pending


class OperatorScreen(Screen[None]):
    """Header, counters, one card per slot, the (toggleable) log and the scan field."""

    AUTO_FOCUS = "#scan"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "toggle_log", N_("Log")),
        Binding("f3", "app.open_qa", N_("QA desk")),
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
    ) -> None:
        super().__init__(id="operator")
        translate_bindings(self)
        self.line = line
        self.relay = relay
        self.info = info
        self.clock = clock
        self.poll_interval = poll_interval
        self.counters = Counters()
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
    def compose(self) -> ComposeResult:
        yield StationHeader(self.info, id="header")
        yield CountersBar(id="counters")
        with Container(id="cards"):
            for index, (name, card) in enumerate(self.cards.items(), start=1):
                widget = SlotCard(index, card, id=f"card-{index}", classes="slot-card")
                self._widgets[name] = widget
                yield widget
        pane = RichLog(id="log", wrap=True, max_lines=2000, markup=False)
        pane.can_focus = False  # a scanner must never type into the log
        yield pane
        scan = Input(id="scan", placeholder=_("Scan a unit's serial and press Enter"))
        scan.border_title = _("Scan  ·  {hint}").format(hint=_(SCAN_HINT))
        yield scan
        yield Footer()

    def on_mount(self) -> None:
        self._refresh_counters()
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
        count = max(1, len(self.cards))
        columns = max(1, min(count, size.width // CARD_MIN_WIDTH))
        rows = math.ceil(count / columns)
        columns = math.ceil(count / rows)
        self.query_one("#cards").styles.grid_size_columns = columns
        self.set_class(size.height >= ROOMY_HEIGHT, "-roomy")

    def refocus(self) -> None:
        self.query_one("#scan", Input).focus()

    def on_click(self, event: Click) -> None:
        # A stray mouse click must not leave the scanner typing into nothing.
        self.call_after_refresh(self.refocus)

    # ------------------------------------------------------------------------------------------ scanning
    @on(Input.Submitted, "#scan")
    def _scanned(self, event: Input.Submitted) -> None:
        text = event.value
        event.input.clear()
        self.refocus()
        if not text.strip():
            return
        try:
            slot, serial = parse_scan(text, self.slot_names)
        except InputError as error:
            self.post_message(ScanRefused(text, error.title, error.message, error.next_action))
            return
        if not serial:
            self.post_message(
                ScanRefused(
                    text, "No serial", "The scan had a slot number but no serial.", "Scan the unit's label."
                )
            )
            return
        self.scan_in_thread(text, serial, slot)

    @work(thread=True, group="scan", exit_on_error=False)
    def scan_in_thread(self, text: str, serial: str, slot: str | None) -> None:
        """Hand the scan to the line (it validates and queues; it never runs the unit on this thread)."""
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
                    "Scan not taken",
                    "The station could not queue this unit; the details are in the station log.",
                    "Scan again; if it happens again, call a technician.",
                )
            )
            return
        self.post_message(ScanAccepted(serial.strip(), name))

    def on_scan_accepted(self, message: ScanAccepted) -> None:
        card = self.cards.get(message.slot)
        if card is not None:
            card.accepted(message.serial)
            self._show(message.slot)
        self._log(f"scan {message.serial} → slot {message.slot}")

    def on_scan_refused(self, message: ScanRefused) -> None:
        self.notify(
            f"{message.message} {message.next_action}", title=message.title, severity="error", timeout=8
        )
        self._log(f"scan refused {message.text.strip()!r}: {message.title}: {message.message}")
        self.refocus()

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
            self.notify(
                f"The screen could not show an update ({type(error).__name__}); the line carries on. The "
                "details are in the station log.",
                title=f"Screen error on slot {slot}" if card is not None else "Screen error",
                severity="error",
                timeout=8,
            )
        except Exception:  # showing the problem failed too: the log has it, keep the screen up
            log.exception("operator screen: could not show a handler failure")

    # ------------------------------------------------------------------------------------------ events
    def deliver(self, event: Event) -> None:
        """The relay's sink: called from the line's threads; only posts a message (thread-safe)."""
        self.post_message(message_for(event))

    def on_unit_started(self, message: UnitStarted) -> None:
        self.counters.started(message.event.at)
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
        self.query_one(CountersBar).show(self.counters, self.clock(), self.cleanup_pending)

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
