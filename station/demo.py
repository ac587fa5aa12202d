"""The demo line: the lab, one simulated PROV/1 unit per slot on a real pty, and the real line over them.

    with DemoLine("demo-state", slots=4) as demo:        # lab + 4 jigs, each holding a fresh simulated unit
        demo.scan("slot-1")                               # what an operator's scan of the unit in slot 1 does
        report = demo.run_units(40)                       # or: feed 40 fresh units through the line

Three parts, usable on their own (the line benchmark runs `Jigs` in a process of its own):

- `Jigs`: a *jig* per slot — a stable port path `jigs/<slot>` that is a symlink to the pty of the unit
  sitting in it. `insert_unit` starts a fresh simulated device (new device id, new flash file under
  `devices/`) on a new pty, re-points the symlink and unplugs the previous unit. The station's configured port
  never changes, as on a real line where the cable stays and the unit changes.
- `Feeder`: feeds units to a line, each slot taking the next unit as soon as it is free.
- `DemoLine`: a `station.lab.Lab`, the jigs, a `station.toml` written by the lab's own writer with one slot per
  jig, the real ledger, `StationContext` and `Line` over them — nothing here provisions anything itself.

Demo faults are units that are bad on purpose, so a newcomer sees FAIL and its rollback: a unit that drops
off the line mid-write, one whose flash corrupts what it stores (hash mismatch), one that is not the unit that
was scanned. Each has the outcome it must come out with (`DemoUnit.expected`).

`DemoLine.stop()` ends everything it started — the line's workers (after the units in progress), every
simulated device and its pty, the ledger, the lab — and leaves no thread or process behind.

It is wiring for the demo, training and benchmarks: it may import `station.lab` and the simulators; the
station's core must never import it. It must not decide outcomes, know the step order, or print.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from flashers.simulators.prov1 import Faults, Prov1Device, flash_path
from flashers.simulators.pty import PtyDevice
from station.config import StationConfig, load_config
from station.context import StationContext
from station.errors import InputError, StationFault
from station.lab import Lab
from station.lab.lab import DEFAULT_REGIONS
from station.line import IDLE, Line
from station.model import Event, Outcome
from station.pipeline import UnitResult

log = logging.getLogger(__name__)

# The demo faults: (what the newcomer is told, the outcome the station must give). Each is a bad *unit*, so
# the right answer is FAIL, with whatever was registered in AWS rolled back.
DEMO_FAULTS: dict[str, tuple[str, Outcome]] = {
    "disconnect": ("the unit drops off the line in the middle of the write", Outcome.FAIL),
    "bad-store": ("the unit's flash corrupts what it stores (its hash differs)", Outcome.FAIL),
    "wrong-unit": ("the unit in the jig is not the one that was scanned", Outcome.FAIL),
}
MIXED = "mixed"  # cycle through every demo fault in turn
PLANNED = "planned"  # DemoLine.insert_unit: let the fault plan decide
DISCONNECT_AT_DATA_FRAME = 6  # far enough in that the cloud side has started, before the write can finish
SERIAL_DIGITS = 8  # SIM + 8 digits: fits the lab product's serial pattern SIM[0-9]{4,8}


@dataclass
class DemoUnit:
    """One simulated unit: what is printed on it (`serial`), what it says it is (`device_id`), where its flash
    file is, and the pty it sits on while in a jig."""

    index: int  # 1-based, in the order units were put into jigs
    slot: str
    serial: str  # the barcode on the unit: what is scanned
    device_id: str  # what the device answers to HELLO (differs from `serial` only for `wrong-unit`)
    fault: str | None
    model: Prov1Device = field(repr=False)
    pty: PtyDevice = field(repr=False)
    used: bool = False  # scanned at least once

    @property
    def flash_path(self) -> Path:
        return self.model.flash_path

    @property
    def port(self) -> str:
        """The unit's own pty (the jig's symlink points here while the unit is in the jig)."""
        return self.pty.port

    @property
    def expected(self) -> Outcome:
        return DEMO_FAULTS[self.fault][1] if self.fault else Outcome.PASS

    @property
    def fault_text(self) -> str:
        return DEMO_FAULTS[self.fault][0] if self.fault else ""


def demo_faults(name: str | None) -> Faults:
    """The simulator faults that make a demo fault (none for a good unit or a wrong one: that one is fine)."""
    if name == "disconnect":
        return Faults(disconnect=DISCONNECT_AT_DATA_FRAME)
    if name == "bad-store":
        return Faults(bad_store=True)
    return Faults()


def _check_fault(name: str | None) -> None:
    if name is not None and name not in DEMO_FAULTS:
        raise InputError(
            "Unknown demo fault", f"There is no demo fault {name!r}.", f"Use one of {', '.join(DEMO_FAULTS)}."
        )


# ------------------------------------------------------------------------------------------------ jigs


class Jigs:
    """One jig per slot, each holding one simulated PROV/1 unit on its own pty. Thread-safe."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        slots: Sequence[str],
        *,
        ca_file: str | os.PathLike[str] | None = None,
        paced: bool = False,
        baud: int = 115200,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.slots = list(slots)
        self.ca_file = ca_file
        self.paced = paced
        self.baud = baud
        self.devices_dir = self.state_dir / "devices"
        self.jigs_dir = self.state_dir / "jigs"
        self.devices: dict[str, DemoUnit] = {}  # slot → the unit in its jig now
        self.units: list[DemoUnit] = []  # every unit ever put in a jig, in order
        self._retired: list[DemoUnit] = []  # units taken out (their pty is closed, their record kept)
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._used_ids: set[str] = set()

    def port(self, slot: str) -> Path:
        """The stable port path of a slot (a symlink to the pty of the unit in it)."""
        return self.jigs_dir / slot

    def insert_unit(self, slot: str, *, fault: str | None = None) -> DemoUnit:
        """Unplug the unit in `slot`'s jig and put a fresh simulated unit in (new device id, new flash file,
        new pty); returns it. Call it while the station is not working on the slot's unit."""
        if slot not in self.slots:
            raise InputError(
                "No such slot", f"There is no slot {slot!r}.", f"Use one of {', '.join(self.slots)}."
            )
        _check_fault(fault)
        self.jigs_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            serial = self._new_serial()
            device_id = self._new_serial() if fault == "wrong-unit" else serial
            model = Prov1Device(
                self.devices_dir, device_id=device_id, ca_file=self.ca_file, faults=demo_faults(fault)
            )
            pty = PtyDevice(model, baudrate=self.baud, pace=self.paced, name=f"{slot} {device_id}").start()
            unit = DemoUnit(next(self._counter), slot, serial, device_id, fault, model, pty)
            # Re-point the jig atomically: whoever opens it finds either the old unit or the new one.
            link = self.port(slot)
            tmp = link.with_name(f".{slot}.{secrets.token_hex(4)}")
            os.symlink(pty.port, tmp)
            os.replace(tmp, link)
            old = self.devices.get(slot)
            self.devices[slot] = unit
            self.units.append(unit)
            if old is not None:
                self._retired.append(old)
        if old is not None:
            # Unplugged: its pty goes away; its flash file stays (the unit's record of what it holds).
            old.pty.stop()
        return unit

    def _new_serial(self) -> str:
        while True:
            candidate = "SIM" + "".join(str(secrets.randbelow(10)) for _ in range(SERIAL_DIGITS))
            if candidate in self._used_ids or flash_path(self.devices_dir, candidate).exists():
                continue  # taken in this run, or by a unit of an earlier run in this state dir
            self._used_ids.add(candidate)
            return candidate

    def unit_for(self, serial: str) -> DemoUnit | None:
        with self._lock:
            return next((u for u in reversed(self.units) if u.serial == serial), None)

    def stop(self) -> None:
        """Unplug every unit (their ptys close; their flash files stay) and remove the jigs' port links: a
        link left behind would point at a pty number the system may hand to someone else."""
        with self._lock:
            units = [*self.devices.values(), *self._retired]
            self.devices.clear()
            self._retired.clear()
        for unit in units:
            unit.pty.stop()
        for slot in self.slots:
            with contextlib.suppress(FileNotFoundError):
                self.port(slot).unlink()


# ---------------------------------------------------------------------------------------------- feeder


class _HasSerial(Protocol):
    @property
    def serial(self) -> str: ...


U = TypeVar("U", bound=_HasSerial)


class Feeder(Generic[U]):
    """Feeds `count` units to a line: every slot takes the next unit as soon as its previous one is done.

    Hand `on_event` to the line (or call it from the line's sink). `put_unit(slot)` puts the next unit in the
    slot's jig and returns it (anything with a `serial`); the feeder then scans that serial on that slot.
    """

    def __init__(self) -> None:
        self._finished: queue.SimpleQueue[Event] | None = None

    def on_event(self, event: Event) -> None:
        finished = self._finished
        if finished is not None and event.kind == "unit_finished":
            finished.put(event)

    def run(
        self,
        line: Line,
        slots: Sequence[str],
        count: int,
        put_unit: Callable[[str], U],
        *,
        unit_timeout_s: float = 120.0,
    ) -> tuple[list[tuple[U, UnitResult]], float]:
        """Returns each unit with its result, in finishing order, and the wall time in seconds."""
        if count < 1:
            raise InputError(
                "Bad unit count", f"Feed at least one unit, not {count}.", "Use --units 1 or more."
            )
        finished: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._finished = finished
        done: list[tuple[U, UnitResult]] = []
        fed: dict[str, U] = {}  # scanned serial → unit
        started = time.perf_counter()

        def feed(slot: str) -> None:
            unit = put_unit(slot)
            fed[unit.serial] = unit
            line.scan(unit.serial, slot=slot)

        try:
            for slot in slots[:count]:
                feed(slot)
            while len(done) < count:
                try:
                    event = finished.get(timeout=unit_timeout_s)
                except queue.Empty:
                    raise StationFault(
                        "Demo stalled",
                        f"No unit finished within {unit_timeout_s:.0f} s.",
                        "Stop the demo and look at the station log.",
                    ) from None
                unit = fed.get(event.serial)
                if unit is None:
                    continue  # not one of ours (an operator's scan on the same line)
                # unit_finished comes just before the worker closes the port, files the result and frees
                # the slot; once the slot is free the result is there.
                _wait_slot_idle(line, event.slot, time.monotonic() + unit_timeout_s)
                done.append((unit, _result_of(line, unit.serial, event)))
                if len(fed) < count:
                    feed(event.slot)
        finally:
            self._finished = None
        return done, time.perf_counter() - started


def _wait_slot_idle(line: Line, slot: str, deadline: float) -> None:
    # A deadline-poll: the line has no per-slot wait, and the gap is the port's close (about a millisecond).
    while True:
        state = next(s for s in line.slots() if s.name == slot)
        if state.state == IDLE:
            return
        if time.monotonic() >= deadline:
            raise StationFault(
                "Slot stuck", f"Slot {slot} did not become free after its unit finished.", "Stop the demo."
            )
        time.sleep(0.001)


def _result_of(line: Line, serial: str, event: Event) -> UnitResult:
    attempt_id = (event.data or {}).get("attempt_id")
    for result in reversed(line.results()):
        if result.attempt_id == attempt_id:
            return result
    raise StationFault("Result missing", f"The line has no result for {serial}.", "Stop the demo.")


# ---------------------------------------------------------------------------------------------- report


@dataclass
class DemoUnitOutcome:
    """A unit that went through the line, with its result."""

    unit: DemoUnit
    result: UnitResult

    @property
    def as_expected(self) -> bool:
        if self.result.outcome != self.unit.expected:
            return False
        if self.unit.fault and "register" in self.result.timings_ms:
            # A bad unit that got as far as registering must have been rolled back in AWS.
            return self.result.rolled_back
        return True

    def summary(self) -> dict[str, Any]:
        data = self.result.summary()
        data.update(
            {
                "unit": self.unit.index,
                "device_id": self.result.device_id or self.unit.device_id,
                "flash_file": str(self.unit.flash_path),
                "fault": self.unit.fault,
                "expected": str(self.unit.expected),
                "as_expected": self.as_expected,
                "rolled_back": self.result.rolled_back,
            }
        )
        return data


@dataclass
class DemoReport:
    """What `run_units` did: every unit's outcome in finishing order, and the run's wall time."""

    outcomes: list[DemoUnitOutcome]
    wall_s: float
    slots: int

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.result.outcome == outcome)

    @property
    def units_per_hour(self) -> float:
        return len(self.outcomes) / self.wall_s * 3600.0 if self.wall_s > 0 else 0.0

    @property
    def unexpected(self) -> list[DemoUnitOutcome]:
        return [o for o in self.outcomes if not o.as_expected]

    def totals(self) -> dict[str, Any]:
        return {
            "units": len(self.outcomes),
            "slots": self.slots,
            "pass": self.count(Outcome.PASS),
            "fail": self.count(Outcome.FAIL),
            "error": self.count(Outcome.ERROR),
            "injected_faults": sum(1 for o in self.outcomes if o.unit.fault),
            "unexpected": len(self.unexpected),
            "wall_s": round(self.wall_s, 3),
            "units_per_hour": round(self.units_per_hour, 1),
        }


# ------------------------------------------------------------------------------------------- the line


class DemoLine:
    """The lab + N jigs of simulated units + the real line. A context manager, or `start()` / `stop()`.

    After `start()`: `lab`, `config` (the `StationConfig` of `config_path`), `ledger`, `context`, `line`, and
    `devices` (slot → the `DemoUnit` in its jig, with its `flash_path`). `on_event` receives every event of
    the line (from worker threads), e.g. the TUI's relay. With `auto_replace`, a unit that finished is
    unplugged and a fresh one put in its jig, so an interactive demo always has a unit waiting in every slot.
    The fault plan makes every `fault_every`-th unit a faulty demo unit (`fault`: one kind, or `mixed`).
    `paced` holds each device's answers to real wire time at `baud`; unpaced, units go at pty speed.
    `check_device_id=False` lets any serial the product accepts provision the unit in the jig (for a
    newcomer who cannot read a simulated unit's label). Without `state_dir`, a temporary folder is used and
    removed at `stop()`.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        slots: int = 4,
        paced: bool = False,
        baud: int = 115200,
        lab_throttling: bool = True,
        accounts: int = 2,
        regions: Sequence[str] = DEFAULT_REGIONS,
        on_event: Callable[[Event], None] | None = None,
        auto_replace: bool = False,
        fault_every: int = 0,
        fault: str = MIXED,
        check_device_id: bool = True,
        operator: str | None = None,
        registry_factory: Callable[..., Any] | None = None,
    ) -> None:
        if slots < 1 or slots > 64:
            raise InputError(
                "Bad slot count", f"A demo line has 1 to 64 slots, not {slots}.", "Use --slots 1..64."
            )
        if fault != MIXED:
            _check_fault(fault)
        if fault_every < 0:
            raise InputError(
                "Bad fault interval", "--fault-every cannot be negative.", "Give 0 (no faults) or K ≥ 1."
            )
        self._own_state_dir = state_dir is None
        chosen = state_dir if state_dir is not None else tempfile.mkdtemp(prefix="station-demo-")
        self.state_dir = Path(chosen).expanduser().resolve()
        self.slot_names = [f"slot-{i + 1}" for i in range(slots)]
        self.auto_replace = auto_replace
        self.fault_every = fault_every
        self.fault = fault
        self.check_device_id = check_device_id
        self.operator = operator
        self._on_event = on_event
        self._registry_factory = registry_factory
        self.lab = Lab(self.state_dir, accounts=accounts, regions=regions, throttling=lab_throttling)
        self.jigs = Jigs(self.state_dir, self.slot_names, paced=paced, baud=baud)
        self.config: StationConfig | None = None
        self.context: StationContext | None = None
        self.ledger: Any = None
        self._line: Line | None = None
        self._feeder: Feeder[DemoUnit] = Feeder()
        self._lock = threading.Lock()
        # Without the device-id cross-check a wrong unit cannot be told apart: leave it out of the cycle.
        self._fault_cycle = itertools.cycle([f for f in DEMO_FAULTS if check_device_id or f != "wrong-unit"])
        self._planned = 0  # units the fault plan has decided on
        self._started = False

    # ---------------------------------------------------------------------------------------- lifecycle
    @property
    def line(self) -> Line:
        if self._line is None:
            raise StationFault("Demo not running", "The demo line is not running.", "Start it first.")
        return self._line

    @property
    def config_path(self) -> Path:
        return self.lab.config_path

    @property
    def devices(self) -> dict[str, DemoUnit]:
        """Slot → the unit in its jig now."""
        return self.jigs.devices

    @property
    def units(self) -> list[DemoUnit]:
        """Every unit put in a jig so far, in order."""
        return self.jigs.units

    def jig_port(self, slot: str) -> Path:
        return self.jigs.port(slot)

    def start(self) -> DemoLine:
        if self._started:
            return self
        self._started = True
        try:
            self.lab.start()
            self.jigs.ca_file = self.lab.ca_file  # for the device-side connectivity check
            for slot in self.slot_names:
                self.jigs.insert_unit(slot)
            toml = self.lab.station_toml(slots={s: str(self.jig_port(s)) for s in self.slot_names})
            if not self.check_device_id:
                # A later sub-table of the lab's product: valid TOML, and the lab's writer stays untouched.
                toml += "\n[products.sim.options]\ncheck_device_id = false\n"
            self.config_path.write_text(toml)
            self.config = load_config(self.config_path)
            from station.ledger import open_ledger

            self.ledger = open_ledger(self.config.ledger_path)
            self.context = StationContext(
                self.config,
                ledger=self.ledger,
                registry_factory=self._registry_factory,
                operator=self.operator,
            )
            self._line = Line.from_context(self.context, on_event=self._event)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the units in progress, then stop the line, every simulated unit, the ledger and the lab."""
        line, self._line = self._line, None
        if line is not None:
            line.stop(timeout)
        self.jigs.stop()
        if self.ledger is not None:
            with contextlib.suppress(Exception):
                self.ledger.close()
            self.ledger = None
        self.lab.stop()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._started = False

    def __enter__(self) -> DemoLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------------- units
    def next_fault(self) -> str | None:
        """The fault of the next unit by the plan: every `fault_every`-th unit is a faulty demo unit."""
        with self._lock:
            self._planned += 1
            if self.fault_every <= 0 or self._planned % self.fault_every:
                return None
            return next(self._fault_cycle) if self.fault == MIXED else self.fault

    def insert_unit(self, slot: str, *, fault: str | None = PLANNED) -> DemoUnit:
        """Put a fresh simulated unit in `slot`'s jig (a new unit in the jig); returns it. `fault` names a
        demo fault, None for a good unit; left out, the fault plan decides. Call it while the slot is idle."""
        chosen = self.next_fault() if fault == PLANNED else fault
        return self.jigs.insert_unit(slot, fault=chosen)

    def scan(self, slot: str) -> str:
        """Scan the unit in `slot`'s jig (its printed serial), as an operator would; returns the slot."""
        unit = self.devices[slot]
        unit.used = True
        return self.line.scan(unit.serial, slot=slot)

    def unit_for(self, serial: str) -> DemoUnit | None:
        return self.jigs.unit_for(serial)

    def _event(self, event: Event) -> None:
        self._feeder.on_event(event)
        if self._on_event is not None:
            self._on_event(event)
        if event.kind == "unit_finished" and self.auto_replace and event.slot in self.slot_names:
            # The unit's record is written: the next unit goes into the jig. The station still holds the old
            # pty open for a moment and closes it on its own.
            try:
                self.insert_unit(event.slot)
            except Exception:
                log.exception("could not put a fresh unit into %s", event.slot)

    # ------------------------------------------------------------------------------------------ headless
    def run_units(
        self, count: int, *, unit_timeout_s: float = 120.0, faults: Iterable[str | None] | None = None
    ) -> DemoReport:
        """Feed `count` fresh units through the line, each slot taking the next unit as soon as it is free.

        Units follow the fault plan unless `faults` gives each unit's fault in order. Returns when every
        unit has finished; `unit_timeout_s` bounds the wait for any one unit.
        """
        plan = iter(faults) if faults is not None else None

        def put_unit(slot: str) -> DemoUnit:
            wanted = next(plan, None) if plan is not None else self.next_fault()
            current = self.devices.get(slot)
            if current is not None and not current.used and current.fault == wanted:
                unit = current  # the unit waiting in the jig since start will do
            else:
                unit = self.jigs.insert_unit(slot, fault=wanted)
            unit.used = True
            return unit

        done, wall_s = self._feeder.run(
            self.line, self.slot_names, count, put_unit, unit_timeout_s=unit_timeout_s
        )
        return DemoReport(
            outcomes=[DemoUnitOutcome(u, r) for u, r in done], wall_s=wall_s, slots=len(self.slot_names)
        )
