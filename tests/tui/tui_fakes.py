"""A scripted stand-in for `station.line.Line`, and helpers shared by the TUI tests.

`ScriptedLine` keeps the real line's contract (validate the scan on the spot → `InputError`; next free slot
or a named one; events from a worker thread, one unit per slot) and plays a realistic event sequence per
unit: the step order of `station.pipeline`, write and register side by side, compensations after a failure.
Which script a unit gets is decided by its serial; a gate can hold a unit before verify (a slow device).
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from textual import events
from textual.pilot import Pilot

from station.errors import InputError
from station.model import Event
from station.tui.api import StationInfo, TargetInfo

SERIAL_RE = re.compile(r"SN[0-9]{8}")

LAB_INFO = StationInfo(
    station_id="line1-station3",
    operator="day-shift",
    products=("widget",),
    targets=(TargetInfo(name="lab-eu", account="123456789012", region="eu-west-1", lab=True),),
    slot_products={"s1": "widget", "s2": "widget", "s3": "widget", "s4": "widget"},
    qa_pin="0042",
)

PASS = (
    "PASS",
    "Provisioned",
    "widget-{serial} is registered in lab-eu and verified.",
    "Put the unit in the good bin.",
)
FAIL = (
    "FAIL",
    "Certificate not accepted",
    "The unit's certificate was not accepted by 123456789012/eu-west-1.",
    "Put the unit in the rework bin.",
)
ERROR = (
    "ERROR",
    "AWS IoT unreachable",
    "The station cannot reach AWS IoT in eu-west-1 (connection refused).",
    "Call a technician: check the network and the AWS credentials.",
)


@dataclass(frozen=True)
class FakeSlot:
    name: str
    port: str
    state: str = "idle"
    serial: str = ""
    step: str = ""


class ScriptedLine:
    """N slots; each scanned unit plays `scripts.get(serial, "pass")` on its own thread."""

    def __init__(
        self,
        ports: dict[str, str],
        *,
        on_event: Callable[[Event], None],
        scripts: dict[str, str] | None = None,
        step_s: float = 0.005,
        timings: dict[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`timings` (step → ms) makes every unit run instantly with those durations, and `clock` dates the
        events: together they make screenshots repeatable (nothing run-specific on screen)."""
        self._on_event = on_event
        self._lock = threading.Lock()
        self._slots = {name: FakeSlot(name, port) for name, port in ports.items()}
        self.scripts = dict(scripts or {})
        self.gates: dict[str, threading.Event] = {}  # serial → verify waits for it
        self.waiting: dict[str, threading.Event] = {}  # serial → set when the unit waits at its gate
        self.step_s = step_s
        self.timings = timings
        self.clock = clock
        self.scanned: list[tuple[str, str]] = []
        self.operator: str | None = None  # who signed in last (the real line names them on its records)
        self._threads: list[threading.Thread] = []

    # -- the LineAPI ----------------------------------------------------------------------------------
    def set_operator(self, name: str) -> None:
        self.operator = name

    def scan(self, serial: str, slot: str | None = None) -> str:
        serial = serial.strip()
        if not SERIAL_RE.fullmatch(serial):
            raise InputError(
                "Invalid serial",
                f"{serial!r} does not look like a widget serial (SN and 8 digits).",
                "Scan the unit's label again.",
            )
        with self._lock:
            if slot is not None:
                if slot not in self._slots:
                    raise InputError(
                        "No such slot", f"There is no slot {slot!r}.", "Pick one of the station's slots."
                    )
                if self._slots[slot].state != "idle":
                    raise InputError("Slot busy", f"Slot {slot} is still working.", "Use another slot.")
                name = slot
            else:
                free = [n for n, s in self._slots.items() if s.state == "idle"]
                if not free:
                    raise InputError(
                        "No free slot", "Every slot is busy with a unit.", "Wait for a slot to finish."
                    )
                name = free[0]
            self._slots[name] = replace(self._slots[name], state="busy", serial=serial)
            self.scanned.append((serial, name))
        thread = threading.Thread(target=self._play, args=(serial, name), daemon=True)
        self._threads.append(thread)
        thread.start()
        return name

    def slots(self) -> list[FakeSlot]:
        with self._lock:
            return list(self._slots.values())

    # -- test helpers ---------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()

    # -- one unit -------------------------------------------------------------------------------------
    def _emit(self, serial: str, slot: str, kind: str, **fields: Any) -> None:
        if kind == "step_started":
            with self._lock:
                self._slots[slot] = replace(self._slots[slot], step=fields.get("step", ""))
        self._on_event(Event(kind=kind, serial=serial, slot=slot, at=self.clock(), **fields))

    def _step(self, serial: str, slot: str, name: str, ok: bool = True) -> None:
        self._emit(serial, slot, "step_started", step=name)
        if self.timings is not None:
            ms = self.timings.get(name, 1.0)
        else:
            started = time.perf_counter()
            time.sleep(self.step_s)
            ms = (time.perf_counter() - started) * 1000.0
        self._emit(serial, slot, "step_finished", step=name, outcome="ok" if ok else "failed", duration_ms=ms)

    def _play(self, serial: str, slot: str) -> None:
        script = self.scripts.get(serial, "pass")
        started = time.perf_counter()
        self._emit(serial, slot, "unit_started", data={"target": "lab-eu", "product": "widget"})
        self._step(serial, slot, "identify")
        self._step(serial, slot, "identity")
        if script == "error":
            self._step(serial, slot, "write")
            self._step(serial, slot, "register", ok=False)
            self._emit(
                serial,
                slot,
                "compensation",
                step="wipe",
                outcome="ok",
                message="The device's staged credentials were wiped.",
            )
            outcome = ERROR
        else:
            self._step(serial, slot, "write")
            self._step(serial, slot, "register")
            gate = self.gates.get(serial)
            if gate is not None:
                self._emit(serial, slot, "step_started", step="verify")
                self.waiting.setdefault(serial, threading.Event()).set()
                assert gate.wait(10), "the test never released its gate"
                self._emit(serial, slot, "step_finished", step="verify", outcome="ok", duration_ms=2500.0)
            else:
                self._step(serial, slot, "verify", ok=script != "fail")
            if script == "fail":
                self._emit(
                    serial,
                    slot,
                    "compensation",
                    step="rollback",
                    outcome="ok",
                    message="What this attempt made in AWS was deleted.",
                )
                self._emit(
                    serial,
                    slot,
                    "compensation",
                    step="wipe",
                    outcome="ok",
                    message="The device's staged credentials were wiped.",
                )
                outcome = FAIL
            else:
                outcome = PASS
        self._step(serial, slot, "record")
        word, title, message, next_action = outcome
        self._emit(
            serial,
            slot,
            "unit_finished",
            outcome=word,
            title=title,
            message=message.format(serial=serial),
            next_action=next_action,
            duration_ms=sum(self.timings.values())
            if self.timings
            else (time.perf_counter() - started) * 1000.0,
        )
        with self._lock:
            self._slots[slot] = replace(self._slots[slot], state="idle", serial="", step="")


async def wait_until(
    pilot: Pilot[Any], predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Let the app run until `predicate()` holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)


def _key_name(char: str) -> str:
    """Textual's key name for a typed character ("a" → "a", ":" → "colon", " " → "space")."""
    if char.isalnum():
        return char
    return unicodedata.name(char).lower().replace("-", "_").replace(" ", "_")


async def type_scan(pilot: Pilot[Any], text: str) -> None:
    """What a keyboard-wedge scanner does: a burst of key events, then Enter, with no pause in between.

    (`pilot.press` waits for the app to go idle after every key; on a busy machine that costs up to a second a
    key, and a scanner does not wait either.)
    """
    app = pilot.app
    for char in text:
        app.post_message(events.Key(_key_name(char), char))
    app.post_message(events.Key("enter", "\r"))
    await pilot.pause()


async def feed_terminal(pilot: Pilot[Any], data: str) -> None:
    """`data` as one read from the terminal: parsed by Textual's own xterm parser, its events posted at once.

    A scanner set to CR or LF, or two scans in one read, arrive like this in a real terminal.
    """
    from textual._xterm_parser import XTermParser

    parser = XTermParser()
    app = pilot.app
    for event in parser.feed(data):
        app.post_message(event)
    await pilot.pause()


def shown_word(app: Any, index: int) -> str | None:
    """The outcome word card `index` shows in big letters, or None (no outcome shown)."""
    from textual.widgets import Static

    from station.tui.operator.bigtext import big_lines

    text = str(app.query_one(f"#card-{index} #card-banner", Static).render())
    for word in ("PASS", "FAIL", "ERROR", "DONE"):
        if text == "\n".join(big_lines(word)):
            return word
    return None


def message_text(app: Any) -> str:
    """The operator screen's message line."""
    return str(app.operator.query_one("#message").render())
