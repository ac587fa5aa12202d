"""The operator screen's state as plain data: scan parsing, one slot card, the shift's counters, the history.

Kept apart from the widgets so it can be tested without a terminal and so the widgets only draw. Everything
here runs on the UI thread (the app feeds it messages); nothing here blocks or does I/O.

It must not import textual, or any AWS, serial or crypto library.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from station.errors import InputError
from station.i18n import N_, _
from station.model import Event, Outcome
from station.pipeline import STEPS

# The prefix that sends a scan to one slot: "2:SN123" (slot number, 1-based) or "slot-2:SN123" (slot name).
SCAN_HINT = N_("2:SERIAL sends it to slot 2")  # translated where shown
_PREFIX_RE = re.compile(r"^\s*([A-Za-z0-9._-]+)\s*:\s*(.*)$", re.DOTALL)
_SLOT_NUMBER_RE = re.compile(r"[0-9]{1,4}")
# A scan is a label's serial (at most 128 characters, station.naming) and perhaps a slot prefix. Longer is a
# stuck key or a scanner reading the wrong code, refused before any parsing.
MAX_SCAN_CHARS = 160
# What ends a scan: Enter (CR), a scanner set to LF or CR LF. Several scans can arrive in one read (a paste, a
# fast scanner); each line is its own scan.
_SCAN_END_RE = re.compile(r"\r\n|\r|\n")
HISTORY_SIZE = 20  # units in the history pane

OUTCOME_LABEL = {
    Outcome.PASS: "✔ PASS",
    Outcome.FAIL: "✘ FAIL",
    Outcome.ERROR: "⚠ ERROR",
    Outcome.DONE: "● DONE",  # a QA action that proved nothing about the identity
}
STEP_MARK = {"pending": "·", "running": "▶", "ok": "✓", "failed": "✗"}


def split_scans(text: str) -> tuple[list[str], str]:
    """(complete scans, the unfinished rest) of text that may hold several scans ended by CR, LF or CR LF.

    "SIM0006\rSIM0007\n" is two scans and no rest; "SIM0006\rSIM00" is one scan and "SIM00" still being
    typed. Blank lines are dropped (a CR LF scanner, or Enter pressed twice).
    """
    parts = _SCAN_END_RE.split(text)
    rest = parts.pop()
    return [part for part in parts if part.strip()], rest


def parse_scan(text: str, slot_names: Sequence[str]) -> tuple[str | None, str]:
    """(slot or None for "next free", serial) from what the scanner typed.

    `2:SN123` picks the second slot, `bench-a:SN123` the slot named bench-a. A prefix that is neither is
    left in the serial (the line's serial check will judge it), except a bare number beyond the slot count,
    which is refused here because it can only be a mistyped slot.
    """
    if len(text) > MAX_SCAN_CHARS:
        raise InputError(
            _("Scan too long"),
            _(
                "The scan is {length:,} characters; a label's serial (with a slot prefix) is at most {limit}."
            ).format(length=len(text), limit=MAX_SCAN_CHARS),
            _("Clear the scan field (Esc) and scan the unit's serial label again."),
        )
    match = _PREFIX_RE.match(text)
    if match is None:
        return None, text.strip()
    prefix, serial = match.group(1), match.group(2).strip()
    if prefix in slot_names:
        return prefix, serial
    if prefix.isdigit():  # ASCII digits only (the pattern); int() only on a few of them
        index = int(prefix) if _SLOT_NUMBER_RE.fullmatch(prefix) else 0
        if 1 <= index <= len(slot_names):
            return slot_names[index - 1], serial
        shown = prefix if len(prefix) <= 8 else f"{prefix[:8]}…"
        raise InputError(
            _("No such slot"),
            _("There is no slot {slot}; this station has slots 1 to {count}.").format(
                slot=shown, count=len(slot_names)
            ),
            _("Scan again with a slot number from 1 to {count}, or without a prefix.").format(
                count=len(slot_names)
            ),
        )
    return None, text.strip()


def format_ms(ms: float | None) -> str:
    """A duration as an operator reads it: 812 ms, 4.3 s, 2 m 05 s."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000.0
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} m {rest:02d} s"


@dataclass
class StepView:
    name: str
    status: str = "pending"  # pending | running | ok | failed
    ms: float | None = None

    def label(self) -> str:
        timing = f" {format_ms(self.ms)}" if self.ms is not None else ""
        return f"{STEP_MARK.get(self.status, '?')}{self.name}{timing}"


def _fresh_steps() -> dict[str, StepView]:
    return {name: StepView(name) for name in STEPS}


@dataclass
class CardState:
    """One slot: its port and line state, the unit on it, its steps as they happen, and the last outcome.

    The outcome stays until the next scan on the slot (`begin`) or until the screen's `card_reset_s` has
    passed (`reset`), so an operator who looked away still sees what to do with the unit in front of them.
    """

    slot: str
    port: str = ""
    product: str = ""
    state: str = "idle"  # the line's view: idle | busy | reserved | stopped
    step: str = ""
    serial: str = ""
    steps: dict[str, StepView] = field(default_factory=_fresh_steps)
    compensations: list[tuple[str, bool]] = field(default_factory=list)
    outcome: Outcome | None = None
    title: str = ""
    message: str = ""
    next_action: str = ""
    duration_ms: float | None = None
    # Scans the line accepted for this slot vs units it started here. A fast unit can start (even finish)
    # before the scan's acceptance reaches the screen; counting both keeps a late acceptance from wiping it.
    scans_accepted: int = 0
    units_started: int = 0

    @property
    def active(self) -> bool:
        """A unit is on its way through the pipeline (scanned, not yet finished)."""
        return bool(self.serial) and self.outcome is None

    def accepted(self, serial: str) -> None:
        """The line took a scan for this slot: show it queued, unless its unit already started."""
        self.scans_accepted += 1
        if self.scans_accepted > self.units_started:
            self.begin(serial)

    def screen_problem(self, error_name: str) -> None:
        """The screen failed to show an update for this slot: say so on the card (the unit carries on)."""
        self.message = _(
            "The screen missed an update for this slot ({error}); the unit itself carries on in the line."
        ).format(error=error_name)
        self.next_action = _("Wait for the outcome; if none shows, call a technician.")

    def reset(self) -> None:
        """Back to READY: the finished unit is gone from the card (its outcome stays in the history and log)."""
        self.begin("")
        self.state = "idle"

    def begin(self, serial: str) -> None:
        """A new unit on this slot: forget the previous one."""
        self.serial = serial
        self.state = "busy"
        self.step = ""
        self.steps = _fresh_steps()
        self.compensations = []
        self.outcome = None
        self.title = self.message = self.next_action = ""
        self.duration_ms = None

    def apply(self, event: Event) -> None:
        """Fold one of the line's events for this slot into the card."""
        kind = event.kind
        if kind == "unit_started":
            self.units_started += 1
            self.begin(event.serial)
        elif kind == "step_started":
            self.steps.setdefault(event.step, StepView(event.step)).status = "running"
            self.step = event.step
        elif kind == "step_finished":
            view = self.steps.setdefault(event.step, StepView(event.step))
            view.status = "ok" if event.outcome == "ok" else "failed"
            view.ms = event.duration_ms
        elif kind == "compensation":
            self.compensations.append((event.step, event.outcome == "ok"))
        elif kind == "unit_finished":
            try:
                self.outcome = Outcome(event.outcome)
            except ValueError:  # an outcome this screen does not know is a station problem, not a pass
                self.outcome = Outcome.ERROR
            self.title = event.title
            self.message = event.message
            self.next_action = event.next_action
            self.duration_ms = event.duration_ms
            self.step = ""
            self.state = "idle"
            for view in self.steps.values():
                if view.status == "running":  # a step cut short by the failure of its twin
                    view.status = "failed"

    def sync(self, state: str, port: str, step: str) -> None:
        """Take the line's own view of the slot (polled), without losing the outcome shown."""
        self.port = port
        if self.active and state == "idle":
            return  # the unit_finished event is on its way; keep showing progress until it lands
        self.state = state
        if state == "busy" and step:
            self.step = step


@dataclass
class Counters:
    """The shift's figures since the screen opened.

    First-pass yield: of the serials seen this session, the share whose first attempt passed (a retest
    that passes does not count). Units per hour: units finished in the last hour, over the time the line
    has been working within that hour (at least one minute, so the first unit does not read as 3600/h).
    """

    passed: int = 0
    failed: int = 0
    errored: int = 0
    first_outcome: dict[str, Outcome] = field(default_factory=dict)
    finished_at: list[float] = field(default_factory=list)
    first_start: float | None = None

    WINDOW_S = 3600.0
    MIN_SPAN_S = 60.0

    def started(self, at: float) -> None:
        if self.first_start is None or at < self.first_start:
            self.first_start = at

    def finished(self, serial: str, outcome: Outcome, at: float) -> None:
        if outcome == Outcome.PASS:
            self.passed += 1
        elif outcome == Outcome.FAIL:
            self.failed += 1
        else:
            self.errored += 1
        self.first_outcome.setdefault(serial, outcome)
        self.finished_at.append(at)
        self.started(at)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errored

    @property
    def first_pass_yield(self) -> float | None:
        if not self.first_outcome:
            return None
        good = sum(1 for o in self.first_outcome.values() if o == Outcome.PASS)
        return good / len(self.first_outcome)

    def units_per_hour(self, now: float) -> float | None:
        if self.first_start is None or not self.finished_at:
            return None
        since = now - self.WINDOW_S
        recent = sum(1 for t in self.finished_at if t >= since)
        span = max(self.MIN_SPAN_S, min(self.WINDOW_S, now - self.first_start))
        return recent * 3600.0 / span


@dataclass(frozen=True)
class HistoryEntry:
    """One finished unit as the history pane lists it."""

    serial: str
    outcome: Outcome
    slot: str
    at: float


@dataclass
class History:
    """The last `HISTORY_SIZE` finished units, newest first."""

    size: int = HISTORY_SIZE
    entries: deque[HistoryEntry] = field(default_factory=deque)

    def add(self, entry: HistoryEntry) -> None:
        self.entries.appendleft(entry)
        while len(self.entries) > self.size:
            self.entries.pop()

    def newest_first(self) -> list[HistoryEntry]:
        return list(self.entries)


@dataclass
class Shift:
    """One shift on the screen: its number (1 when the screen opens), when it began, and its counters."""

    number: int = 1
    started_at: float | None = None
    counters: Counters = field(default_factory=Counters)

    def next(self, at: float) -> Shift:
        """The shift that follows this one: counters from zero."""
        return Shift(number=self.number + 1, started_at=at)

    def summary(self) -> dict[str, object]:
        """The ended shift's figures, for the shift event (plain values, not translated)."""
        fpy = self.counters.first_pass_yield
        return {
            "shift": self.number,
            "started_at": self.started_at,
            "pass": self.counters.passed,
            "fail": self.counters.failed,
            "error": self.counters.errored,
            "first_pass_yield": None if fpy is None else round(fpy, 4),
        }
