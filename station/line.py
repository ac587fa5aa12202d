"""The line: N slots provisioning units at the same time, one worker thread per slot.

    line = Line(config, ledger=ledger, on_event=screen.post)   # one worker per configured slot
    slot = line.scan("SN00001234")            # → "slot-1": validated and queued on the next free slot
    line.scan("SN00001235", slot="slot-3")    # or on a named slot
    line.slots()                              # → [SlotState(name, port, state, serial, step, last), …]
    line.wait_idle(timeout=60)                # True once no slot is working on a unit
    line.results()                            # every UnitResult so far, in finishing order
    with line.reserve("slot-2", serial="SN00001234", purpose="qa:reverify"):
        ...                                   # the slot is yours: the line starts no unit on it
    line.cleanup_pending()                    # → journal entries the line's cleaner still has to finish
    line.stop()                               # finish the units in progress, then end the workers

That is the whole API (the TUI is a thin view over it plus the events). `scan` validates the serial against
the product's pattern on the spot and raises `InputError` — nothing is started — for a bad scan, an unknown,
busy or reserved slot, or when no slot is free. `reserve` lends an idle slot to someone else for a while
(the QA desk's re-verify opens the slot's port itself): the slot shows `reserved` and scans skip it. Each
slot runs one unit at a time through `station.pipeline`; slots never wait for each other: they share only
the per-(account, region) rate budget (inside the registry) and the ledger. Events from every slot go to
`on_event` (called from worker threads, one event at a time).

A line over the real wiring also runs a cleaner (`station.cleanup`): what an attempt could not undo in AWS
(AWS unreachable or refusing during rollback), or what a killed run of this station left, is retried in the
background with back-off until AWS answers; `cleanup_pending()` says how many entries still wait. It stops
with the line and never touches an attempt in flight in one of the line's slots.

It must not: know the step order (that is the pipeline's), talk to AWS, serial ports or the lab itself, or
block the caller of `scan` on a unit's work.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from station.cleanup import cleaner_for
from station.errors import InputError
from station.model import Event
from station.pipeline import FlasherLike, Pipeline, UnitRequest, UnitResult

log = logging.getLogger(__name__)

IDLE, BUSY, STOPPED = "idle", "busy", "stopped"
RESERVED = "reserved"  # lent out by `Line.reserve` (e.g. QA re-verifying a unit on it): no unit starts here


@dataclass(frozen=True)
class SlotState:
    """What one slot is doing, for a screen: `state` is idle, busy, reserved or stopped."""

    name: str
    port: str
    state: str = IDLE
    serial: str = ""  # the unit in progress while busy; the unit it is reserved for while reserved
    step: str = ""  # the step in progress while busy; what the slot is reserved for while reserved
    last: UnitResult | None = None  # the slot's previous unit
    units: int = 0  # units this slot has finished


class LineContext(Protocol):
    """What the line needs from the wiring (`station.context.StationContext` provides it)."""

    pipeline: Pipeline
    on_event: Callable[[Event], None] | None  # the line sets this to receive the pipeline's events

    def slot_ports(self) -> dict[str, str]: ...
    def prepare(self, serial: str, *, slot: str, product: str | None, target: str | None) -> UnitRequest: ...
    def open_flasher(self, slot: str, port: str, request: UnitRequest) -> FlasherLike: ...


@dataclass(frozen=True)
class _Job:
    request: UnitRequest
    port: str


_STOP = object()


class _Reservation:
    """`Line.reserve`'s context manager: takes the slot on entering (so a refusal reserves nothing), gives
    it back on leaving, whatever happened inside."""

    def __init__(self, line: Line, slot: str, serial: str, purpose: str) -> None:
        self._line = line
        self.slot = slot
        self._serial = serial
        self._purpose = purpose
        self._held: SlotState | None = None

    def __enter__(self) -> SlotState:
        self._held = self._line._take(self.slot, self._serial, self._purpose)
        return self._held

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._line._give_back(self.slot, held)


class Line:
    """N slots at once; see the module docstring for the API."""

    def __init__(
        self,
        config: Any,
        *,
        ledger: Any,
        on_event: Callable[[Event], None] | None = None,
        flasher_factory: Callable[..., FlasherLike] | None = None,
        registry_factory: Callable[..., Any] | None = None,
        verifier: Callable[..., Any] | None = None,
        station_id: str | None = None,
        context: LineContext | None = None,
    ) -> None:
        """Build the line from a `StationConfig` (or from a ready `context`, for tests).

        `flasher_factory(slot, port, family)`, `registry_factory(target)` and `verifier(...)` replace the real
        drivers (openhtf style: the lab, the demo and the tests inject their own).
        """
        self._on_event = on_event
        # A line that built its own wiring also ends it (stop() releases the observer identities it made);
        # a caller that passed a ready context closes that context itself.
        self._owns_context = context is None
        if context is None:
            from station.context import StationContext  # the wiring imports every real part

            context = StationContext(
                config,
                ledger=ledger,
                flasher_factory=flasher_factory,
                registry_factory=registry_factory,
                verifier=verifier,
                station_id=station_id,
            )
        self._ctx = context
        context.on_event = self._event
        self._lock = threading.Condition()
        self._states: dict[str, SlotState] = {}
        self._queues: dict[str, queue.SimpleQueue[Any]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._results: list[UnitResult] = []
        self._stopping = False
        self._in_flight: dict[str, str] = {}  # slot → attempt id of the unit it runs (for the cleaner)
        ports = context.slot_ports()
        if not ports:
            raise InputError(
                "No slots",
                "The station configuration has no slots.",
                'Add a slot table to station.toml, e.g. [slots.s1] with port = "/dev/ttyUSB0" and product = "sensor".',
            )
        for name, port in ports.items():
            self._states[name] = SlotState(name=name, port=port)
            self._queues[name] = queue.SimpleQueue()
            worker = threading.Thread(target=self._work, args=(name,), name=f"slot-{name}", daemon=True)
            self._workers[name] = worker
            worker.start()
        self._cleaner = cleaner_for(context, in_flight=self._attempts_in_flight, on_event=self._on_event)
        if self._cleaner is not None:
            self._cleaner.start()

    def set_operator(self, name: str) -> None:
        """Name `name` as the operator on every record from now on (a sign-in at the station)."""
        if hasattr(self._ctx, "operator"):
            self._ctx.operator = name

    @classmethod
    def from_context(cls, context: LineContext, *, on_event: Callable[[Event], None] | None = None) -> Line:
        """A line over a ready context (tests, or a caller that built its own wiring)."""
        return cls(None, ledger=None, on_event=on_event, context=context)

    # ------------------------------------------------------------------------------------------ the API
    def scan(
        self,
        serial: str,
        slot: str | None = None,
        *,
        product: str | None = None,
        target: str | None = None,
        port: str | None = None,
    ) -> str:
        """Queue a scanned unit on `slot` (or the next free one) and return the slot's name.

        The serial is checked against the product's pattern first; a bad scan, an unknown or busy slot, no
        free slot, or a serial already in progress in another slot raises `InputError` and starts nothing.
        `product`/`target` override the slot's defaults; `port` overrides the slot's port for this unit (the
        demo gives each simulated unit its own pty).
        """
        with self._lock:
            if self._stopping:
                raise InputError("Line stopped", "The line is shutting down.", "Start the station again.")
            if slot is not None:
                name = self._pick(slot)
                request = self._ctx.prepare(serial, slot=name, product=product, target=target)
            else:
                name, request = self._pick_for(serial, product=product, target=target)
            # One unit, one attempt at a time: two would share its thing and each could undo the other's.
            twin = next(
                (s for s in self._states.values() if s.state == BUSY and s.serial == request.serial), None
            )
            if twin is not None:
                raise InputError(
                    "Unit already in progress",
                    f"{request.serial} is being provisioned in slot {twin.name} right now.",
                    "Check the label: two units cannot have one serial. Wait for that slot to finish.",
                )
            state = self._states[name]
            self._states[name] = replace(state, state=BUSY, serial=request.serial, step="")
            self._queues[name].put(_Job(request, port or state.port))
            self._lock.notify_all()
        return name

    def slots(self) -> list[SlotState]:
        """Every slot's state, in configuration order."""
        with self._lock:
            return list(self._states.values())

    def results(self) -> list[UnitResult]:
        """Every unit's result so far, in the order they finished."""
        with self._lock:
            return list(self._results)

    def cleanup_pending(self) -> int:
        """This station's journal entries the cleaner still has to finish (0 without a cleaner)."""
        return 0 if self._cleaner is None else self._cleaner.pending

    def _attempts_in_flight(self) -> set[str]:
        with self._lock:
            return set(self._in_flight.values())

    def reserve(self, slot: str, *, serial: str = "", purpose: str = "reserved") -> _Reservation:
        """Hold the idle `slot` for the length of a `with` block: the line starts no unit on it meanwhile.

        For work on a slot's port that is not a unit through the pipeline (the QA desk's re-verify). The
        slot reads `reserved` (its `serial` and `step` say for whom and what); `scan` refuses it by name and
        skips it when picking a free slot. Entering the block raises `InputError` — nothing reserved — for an
        unknown, busy or already reserved slot, or a stopping line. On leaving it the slot is idle again.
        """
        return _Reservation(self, slot, serial, purpose)

    def _take(self, slot: str, serial: str, purpose: str) -> SlotState:
        with self._lock:
            if self._stopping:
                raise InputError("Line stopped", "The line is shutting down.", "Start the station again.")
            self._pick(slot)  # the same refusals as a scan on that slot
            held = replace(self._states[slot], state=RESERVED, serial=serial, step=purpose)
            self._states[slot] = held
            self._lock.notify_all()
            return held

    def _give_back(self, slot: str, held: SlotState) -> None:
        with self._lock:
            state = self._states[slot]
            if state.state == RESERVED:
                self._states[slot] = replace(state, state=IDLE, serial="", step="")
            elif (state.serial, state.step) == (held.serial, held.step):
                # The line stopped meanwhile (its worker said STOPPED): keep that, forget the reservation.
                self._states[slot] = replace(state, serial="", step="")
            self._lock.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no slot is working on a unit (True) or `timeout` seconds pass (False).

        A reserved slot does not count: it runs no unit, and whoever holds it decides when it ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while any(s.state == BUSY for s in self._states.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new scans, let the units in progress finish, and end the workers."""
        with self._lock:
            self._stopping = True
            for q in self._queues.values():
                q.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers.values():
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._cleaner is not None:
            # Bounded: a round in progress may be waiting on AWS; the thread is a daemon either way.
            self._cleaner.stop(10.0 if deadline is None else max(0.1, deadline - time.monotonic()))
        if self._owns_context and not any(w.is_alive() for w in self._workers.values()):
            close = getattr(self._ctx, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Line:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ inside
    def _event(self, event: Event) -> None:
        """Where the pipeline's events arrive (from worker threads): track each slot's step, pass them on."""
        if event.kind == "unit_started" and event.slot:
            with self._lock:
                self._in_flight[event.slot] = str(event.data.get("attempt_id", ""))
        if event.kind == "step_started" and event.slot:
            with self._lock:
                state = self._states.get(event.slot)
                if state is not None and state.state == BUSY:
                    self._states[event.slot] = replace(state, step=event.step)
        if self._on_event is not None:
            self._on_event(event)

    def _aborted(self, slot: str, serial: str, error: BaseException) -> None:
        """A unit_finished ERROR for a unit whose pipeline raised, so its slot's card does not wait forever."""
        event = Event(
            "unit_finished",
            serial,
            slot=slot,
            outcome="ERROR",
            title="Station error",
            message=f"The station stopped working on this unit unexpectedly ({type(error).__name__}); "
            "the details are in the station log.",
            next_action="Put the unit aside for a re-test and call a technician; run `station reconcile` "
            "before the next shift.",
        )
        try:
            self._event(event)
        except Exception:
            log.exception("slot %s: could not report the aborted unit %s", slot, serial)

    def _pick(self, slot: str | None) -> str:
        if slot is not None:
            state = self._states.get(slot)
            if state is None:
                raise InputError(
                    "No such slot",
                    f"There is no slot {slot!r}; the slots are {', '.join(self._states)}.",
                    "Pick one of the station's slots.",
                )
            if state.state == RESERVED:
                what = f" ({state.step} of {state.serial})" if state.serial else ""
                raise InputError(
                    "Slot reserved",
                    f"Slot {slot} is reserved for QA{what}; the line starts no unit on it meanwhile.",
                    "Wait for QA to finish on this slot, or use another slot.",
                )
            if state.state != IDLE:
                raise InputError(
                    "Slot busy",
                    f"Slot {slot} is still working on {state.serial}.",
                    "Wait for it to finish, or use another slot.",
                )
            return slot
        for name, state in self._states.items():
            if state.state == IDLE:
                return name
        raise InputError(
            "No free slot",
            "Every slot is busy with a unit.",
            "Wait for a slot to finish, then scan the unit again.",
        )

    def _pick_for(self, serial: str, *, product: str | None, target: str | None) -> tuple[str, Any]:
        """The next free slot whose product takes this serial (a mixed line routes by the serial's pattern)."""
        refusals: dict[str, InputError] = {}  # by message: one per product that refused the serial
        takers: list[str] = []
        for name, state in self._states.items():
            try:
                request = self._ctx.prepare(serial, slot=name, product=product, target=target)
            except InputError as error:
                refusals.setdefault(error.message, error)
                continue
            if state.state == IDLE:
                return name, request
            takers.append(name)
        if takers:
            if not any(state.state == IDLE for state in self._states.values()):
                self._pick(None)  # every slot is taken: the plain "No free slot"
            raise InputError(
                "No free slot for this unit",
                f"Every slot that takes {serial.strip()!r} ({', '.join(takers)}) is busy.",
                "Wait for one of them to finish, then scan the unit again.",
            )
        if len(refusals) == 1:
            raise next(iter(refusals.values()))
        raise InputError(
            "Serial not for this line",
            f"{serial.strip()!r} fits none of this line's products: " + " / ".join(refusals),
            "Scan the unit's label again, or type a serial one of the slots takes.",
        )

    def _work(self, name: str) -> None:
        q = self._queues[name]
        while True:
            job = q.get()
            if job is _STOP:
                break
            result: UnitResult | None = None
            request: UnitRequest = job.request
            port: str = job.port

            def open_flasher(request: UnitRequest = request, port: str = port) -> FlasherLike:
                return self._ctx.open_flasher(name, port, request)

            try:
                result = self._ctx.pipeline.run(request, open_flasher=open_flasher)
            except BaseException as error:
                # The pipeline records every outcome itself; reaching here means the worker was told to
                # stop (SystemExit / KeyboardInterrupt) or the pipeline itself broke — leave the slot usable,
                # keep the line alive, and tell whoever watches this slot.
                log.exception("slot %s: unit %s aborted", name, request.serial)
                self._aborted(name, request.serial, error)
            finally:
                with self._lock:
                    self._in_flight.pop(name, None)
                    state = self._states[name]
                    if result is not None:
                        self._results.append(result)
                    self._states[name] = replace(
                        state,
                        state=IDLE,
                        serial="",
                        step="",
                        last=result if result is not None else state.last,
                        units=state.units + 1,
                    )
                    self._lock.notify_all()
        with self._lock:
            self._states[name] = replace(self._states[name], state=STOPPED)
            self._lock.notify_all()
