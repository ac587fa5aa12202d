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

Routing a scan without a slot: when the serial's product cross-checks the scan against the unit's own id
(`check_device_id`, the label carries the device id) and the wiring can read a jig's unit id
(`read_unit_id`), the scan goes to the idle jig that holds that unit, not merely the next free one. The line
asks each idle jig of the product which unit it holds (in parallel, bounded by `UNIT_ID_TIMEOUT_S`, each jig in
a session of its own before any unit starts there) and keeps the answer per jig until that jig's unit changes
(another device node behind the port), a unit finished there, or QA gave the jig back. A cached answer is
trusted for a match; a refusal is always made on fresh answers. When no idle jig holds the unit, `scan`
raises `InputError` ("Scanned X, but jig N holds Y") — nothing is started, recorded or sent to AWS: the unit
was not even touched, so it gets no FAIL. A scan with a slot (`2:SN…`) goes to that slot as before (the
pipeline's own cross-check stays the last word there).

It must not: know the step order (that is the pipeline's), talk to AWS, serial ports or the lab itself, or
block the caller of `scan` on a unit's work (reading the idle jigs' ids is bounded and touches no unit).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from station.cleanup import cleaner_for
from station.errors import InputError, StationError
from station.i18n import _
from station.model import Event
from station.pipeline import FlasherLike, Pipeline, UnitRequest, UnitResult
from station.pipeline import _same_id as same_unit  # the pipeline's own cross-check rule: route by the same

log = logging.getLogger(__name__)

IDLE, BUSY, STOPPED = "idle", "busy", "stopped"
RESERVED = "reserved"  # lent out by `Line.reserve` (e.g. QA re-verifying a unit on it): no unit starts here
# How long a scan waits for the idle jigs to say which unit each holds (they answer in parallel; a PROV/1 unit
# on a pty answers in milliseconds, an ESP32's ROM loader in well under a second).
UNIT_ID_TIMEOUT_S = 5.0


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
    def close(self) -> object: ...  # the line closes a context it made itself


@dataclass(frozen=True)
class _UnitId:
    """What a jig said about the unit in it: its id (None: the family cannot tell), and the device node that
    was behind the jig's port then (another node means another unit was put in)."""

    unit_id: str | None
    node: str


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
        # The holder opens the slot's port next: not while a scan is reading the jig's unit id on it.
        self._line._wait_for_unit_id_read(self.slot)
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
        # Routing by the unit's id (module docstring): the wiring's reader, what each jig said, and a lock per
        # jig held while its unit id is read (a unit starts on the jig only after the read closed the port).
        self._read_unit_id: Callable[[str, str, UnitRequest], str | None] | None = getattr(
            context, "read_unit_id", None
        )
        self._unit_ids: dict[str, _UnitId] = {}
        self._unit_id_epoch: dict[str, int] = {}  # bumped whenever a jig's answer is forgotten
        self._reading: dict[str, threading.Lock] = {}
        ports = context.slot_ports()
        if not ports:
            raise InputError(
                _("No slots"),
                _("The station configuration has no slots."),
                _(
                    'Add a slot table to station.toml, e.g. [slots.s1] with port = "/dev/ttyUSB0" and product = "sensor".'
                ),
            )
        for name, port in ports.items():
            self._states[name] = SlotState(name=name, port=port)
            self._reading[name] = threading.Lock()
            self._unit_id_epoch[name] = 0
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
        demo gives each simulated unit its own pty). Without `slot` and `port`, a unit whose product
        cross-checks its id goes to the idle jig that holds it (module docstring), and `InputError` says which
        units the idle jigs hold when none holds this one.
        """
        if slot is None and port is None and self._read_unit_id is not None:
            slot = self._route(serial, product=product, target=target)
        with self._lock:
            if self._stopping:
                raise InputError(
                    _("Line stopped"), _("The line is shutting down."), _("Start the station again.")
                )
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
                    _("Unit already in progress"),
                    _("{serial} is being provisioned in slot {name} right now.").format(
                        serial=request.serial, name=twin.name
                    ),
                    _("Check the label: two units cannot have one serial. Wait for that slot to finish."),
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
                raise InputError(
                    _("Line stopped"), _("The line is shutting down."), _("Start the station again.")
                )
            self._pick(slot)  # the same refusals as a scan on that slot
            held = replace(self._states[slot], state=RESERVED, serial=serial, step=purpose)
            self._states[slot] = held
            self._lock.notify_all()
            return held

    def _give_back(self, slot: str, held: SlotState) -> None:
        with self._lock:
            self._forget_unit_id(slot)  # QA may have put another unit in the jig
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
            self._ctx.close()

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
            title=_("Station error"),
            message=_(
                "The station stopped working on this unit unexpectedly ({error_type}); the details are in the "
                "station log."
            ).format(error_type=type(error).__name__),
            next_action=_(
                "Put the unit aside for a re-test and call a technician; run `station reconcile` before the "
                "next shift."
            ),
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
                    _("No such slot"),
                    _("There is no slot {slot!r}; the slots are {states}.").format(
                        slot=slot, states=", ".join(self._states)
                    ),
                    _("Pick one of the station's slots."),
                )
            if state.state == RESERVED:
                what = (
                    _(" ({step} of {serial})").format(step=state.step, serial=state.serial)
                    if state.serial
                    else ""
                )
                raise InputError(
                    _("Slot reserved"),
                    _(
                        "Slot {slot} is reserved for QA{what}; the line starts no unit on it meanwhile."
                    ).format(slot=slot, what=what),
                    _("Wait for QA to finish on this slot, or use another slot."),
                )
            if state.state != IDLE:
                raise InputError(
                    _("Slot busy"),
                    _("Slot {slot} is still working on {serial}.").format(slot=slot, serial=state.serial),
                    _("Wait for it to finish, or use another slot."),
                )
            return slot
        for name, state in self._states.items():
            if state.state == IDLE:
                return name
        raise InputError(
            _("No free slot"),
            _("Every slot is busy with a unit."),
            _("Wait for a slot to finish, then scan the unit again."),
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
                _("No free slot for this unit"),
                _("Every slot that takes {serial!r} ({takers}) is busy.").format(
                    serial=serial.strip(), takers=", ".join(takers)
                ),
                _("Wait for one of them to finish, then scan the unit again."),
            )
        if len(refusals) == 1:
            raise next(iter(refusals.values()))
        raise InputError(
            _("Serial not for this line"),
            f"{serial.strip()!r} fits none of this line's products: " + " / ".join(refusals),
            _("Scan the unit's label again, or type a serial one of the slots takes."),
        )

    # ------------------------------------------------------------------------- routing by the unit's id
    def _route(self, serial: str, *, product: str | None, target: str | None) -> str | None:
        """The idle jig holding the scanned unit; None leaves the choice to the plain "next free slot" rule
        (nothing to route: a bad scan, no idle jig of the product, or a product that does not cross-check)."""
        candidates: list[tuple[str, UnitRequest, str]] = []
        unchecked: list[str] = []  # idle jigs of a product whose label does not carry the unit's id
        with self._lock:
            if self._stopping:
                return None
            for name, state in self._states.items():
                if state.state != IDLE:
                    continue
                try:
                    request = self._ctx.prepare(serial, slot=name, product=product, target=target)
                except InputError:
                    continue
                if request.check_device_id:
                    candidates.append((name, request, state.port))
                else:
                    unchecked.append(name)
            known = {name: self._unit_ids.get(name) for name, _request, _port in candidates}
            epochs = {name: self._unit_id_epoch[name] for name in known}
        if not candidates:
            return unchecked[0] if unchecked else None
        scanned = candidates[0][1].serial
        for name, _request, port in candidates:
            seen = known[name]
            fresh = seen is not None and seen.node == _node(port)
            if fresh and seen is not None and seen.unit_id is not None and same_unit(scanned, seen.unit_id):
                return name
        # No jig is known to hold it: ask every candidate afresh before saying so.
        answers = self._read_unit_ids(candidates)
        with self._lock:
            for name, answer in answers.items():
                if isinstance(answer, _UnitId) and self._unit_id_epoch[name] == epochs[name]:
                    self._unit_ids[name] = answer
        for name, _request, _port in candidates:
            answer = answers.get(name)
            if (
                isinstance(answer, _UnitId)
                and answer.unit_id is not None
                and same_unit(scanned, answer.unit_id)
            ):
                return name
        if unchecked:
            return unchecked[0]  # any free jig of that product takes it
        for name, _request, _port in candidates:
            answer = answers.get(name)
            if isinstance(answer, _UnitId) and answer.unit_id is None:
                return name  # this jig cannot tell which unit it holds: the pipeline's identify will
        held = []
        for name, _request, _port in candidates:
            answer = answers.get(name)
            if isinstance(answer, _UnitId):
                held.append(_("jig {slot} holds {unit}").format(slot=name, unit=answer.unit_id))
            elif isinstance(answer, StationError):  # e.g. "Device not answering", "Serial port unavailable"
                held.append(_("jig {slot}: {problem}").format(slot=name, problem=answer.title))
            else:
                held.append(_("jig {slot}: no answer in time").format(slot=name))
        log.info("scan %s matches no idle jig: %s", scanned, "; ".join(held))
        raise InputError(
            _("Unit not in a free jig"),
            _("Scanned {serial}, but {jigs}.").format(serial=scanned, jigs="; ".join(held)),
            _(
                "Nothing was done to any unit. Put {serial} in a free jig and scan it again, or scan the label "
                "of the unit that is in the jig."
            ).format(serial=scanned),
        )

    def _read_unit_ids(
        self, candidates: list[tuple[str, UnitRequest, str]]
    ) -> dict[str, _UnitId | StationError | None]:
        """Ask each jig which unit it holds, all at once, for at most `UNIT_ID_TIMEOUT_S`. A jig missing from
        the answer did not answer in time; a `StationError` is why it could not answer."""
        read = self._read_unit_id
        assert read is not None
        answers: dict[str, _UnitId | StationError | None] = {}
        deadline = time.monotonic() + UNIT_ID_TIMEOUT_S

        def ask(name: str, request: UnitRequest, port: str) -> None:
            lock = self._reading[name]
            if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return
            try:
                node = _node(port)
                answers[name] = _UnitId(read(name, port, request), node)
            except StationError as error:
                answers[name] = error
            except Exception:
                log.exception("jig %s: could not read which unit it holds", name)
                answers[name] = StationError(_("unit id not readable"), "", "")
            finally:
                lock.release()

        threads = [
            threading.Thread(target=ask, args=candidate, name=f"unit-id-{candidate[0]}", daemon=True)
            for candidate in candidates
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return dict(answers)

    def _wait_for_unit_id_read(self, slot: str) -> None:
        """Let a read of the jig's unit id that is in progress close the port first."""
        with self._reading[slot]:
            pass

    def _forget_unit_id(self, slot: str) -> None:
        """Under `_lock`: the jig's unit changed (or may have): its next scan asks it again."""
        self._unit_ids.pop(slot, None)
        self._unit_id_epoch[slot] = self._unit_id_epoch.get(slot, 0) + 1

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

            self._wait_for_unit_id_read(name)
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
                    self._forget_unit_id(name)  # provisioned (or failed): the next unit is another one
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


def _node(port: str) -> str:
    """The device node behind a port path (a jig's stable name may point at the node of the unit in it)."""
    if "://" in port:
        return port  # a URL (loop://, an in-process port): its name is all there is
    return os.path.realpath(port)
