"""The demo line: the lab, one simulated unit per slot (of one device family or several), and the real line.

    with DemoLine("demo-state", slots=4) as demo:        # lab + 4 jigs, each holding a fresh PROV/1 unit
        demo.scan("slot-1")                               # what an operator's scan of the unit in slot 1 does
        report = demo.run_units(40)                       # or: feed 40 fresh units through the line

    with DemoLine(slots=4, families=["prov1", "expresslink", "nrf91", "esp32"]) as demo:   # a mixed line
        report = demo.run_units(8)                        # two units of each family

Three parts, usable on their own (the line benchmark runs `Jigs` in a process of its own):

- `Jigs`: a *jig* per slot, each of one device family. A pty family's jig is a stable port path `jigs/<slot>`
  that is a symlink to the pty of the unit sitting in it (an ESP32 is the ROM-loader simulator, written by the
  real esptool; a pty has no DTR/RTS, so its product says `connect_mode = "no-reset"`, `reset_after = false`).
  `insert_unit` starts a fresh simulated device of the
  slot's family (new device id, new store), re-points the jig and unplugs the previous unit. The station's
  configured port never changes, as on a real line where the cable stays and the unit changes.
- `Feeder`: feeds units to a line, each slot taking the next unit as soon as it is free (or up to its share).
- `DemoLine`: a `station.lab.Lab`, the jigs, a `station.toml` written by the lab's own writer with one slot per
  jig and one product per family, the real ledger, `StationContext` and `Line` over them — nothing here
  provisions anything itself.

Families (`FAMILIES`; slots take them round-robin). Each has a product in the generated station.toml and a
printed serial an operator can type:

- `prov1` — product `sim`, serials `SIM####`. The unit's device id is its serial, so the station's cross-check of
  the scan against the device id stays on (unless `check_device_id=False`).
- `expresslink` — product `sim-expresslink`, serials `EL####`. The module keeps its own key and birth
  certificate; its device id is its ThingName (a random UID), which the thing is named after (the product's
  target uses `thing_name_template = "{device_id}"`, a second lab target on the same registry), and it
  checks its own connection (device-side verify) to the lab's data endpoint with the lab's CA.
- `nrf91` — product `sim-nrf91`, serials `NRF####`, a station-made key (`key_source = "station"`) written with
  `%CMNG`; device id = IMEI.
- `esp32` — product `sim-esp32`, serials `ESP####`, an NVS partition image written by the unmodified esptool
  to the ROM-loader simulator on the jig's pty; device id = MAC.

The device ids of ExpressLink, nRF91 and ESP32 units are not their printed serials, so for those products the
demo turns the cross-check off (`check_device_id = false`): any serial of the product's pattern provisions
the unit in the jig. A real line keeps the check by printing the device id on the label.

What the demo announces is data (`DemoLine.jig_units()` → `JigUnit`: slot, family, the serial to type,
the fault if any and the outcome it must come out with), so a help panel can show exactly the units in the
jigs and which of them are faulty; a faulty unit is made faulty when it is put in its jig, so scanning an
announced serial gives the announced outcome. The interactive demo (`routed=True`) keeps the cross-check on
for PROV/1, whose label carries its id, so the station sends each scan to the jig holding that unit
(`station.line`); the other families' scans go to the next free jig of their family (one per family on the
default line).

Demo faults are units that are bad on purpose, so a newcomer sees FAIL and its rollback: a unit that drops
off the line part-way, one whose store corrupts what it keeps (hash mismatch), one that is not the unit that
was scanned. Each has the outcome it must come out with (`DemoUnit.expected`). A family gets only the faults
its simulator can act out (`DemoFamily.faults`): an ExpressLink module stores nothing, so it only drops off
(at its own connection check, after the station registered its certificate); `wrong-unit` needs the
cross-check, so only PROV/1 units with the check on get it.

`DemoLine.stop()` ends everything it started — the line's workers (after the units in progress), every
simulated device (its pty, its MQTT connection, its in-process port), the ledger, the lab — and leaves no
thread or process behind.

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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from flashers.simulators.prov1 import Faults, Prov1Device, flash_path
from flashers.simulators.pty import PtyDevice
from station.config import StationConfig, load_config
from station.context import StationContext
from station.errors import InputError, StationFault
from station.i18n import N_
from station.lab import Lab
from station.lab.lab import DEFAULT_REGIONS, JoinedLab, LabProduct
from station.line import IDLE, Line
from station.model import Event, Outcome
from station.pipeline import UnitResult

log = logging.getLogger(__name__)

# The demo faults: (what the newcomer is told, the outcome the station must give). Each is a bad *unit*, so
# the right answer is FAIL, with whatever was registered in AWS rolled back. The words are for the help panel
# (translated where shown).
DEMO_FAULTS: dict[str, tuple[str, Outcome]] = {
    "disconnect": (N_("the unit drops off the line part-way through"), Outcome.FAIL),
    "bad-store": (N_("the unit's store corrupts what it keeps (its hash differs)"), Outcome.FAIL),
    "wrong-unit": (N_("the unit in the jig is not the one that was scanned"), Outcome.FAIL),
}
MIXED = "mixed"  # cycle through every demo fault in turn
PLANNED = "planned"  # DemoLine.insert_unit: let the fault plan decide
DISCONNECT_AT_DATA_FRAME = 6  # far enough in that the cloud side has started, before the write can finish
NRF91_DISCONNECT_AT_WRITE = 2  # the second %CMNG write: after the first object, before the set is complete
SERIAL_DIGITS = 8  # prefix + 8 digits: fits every demo product's pattern PREFIX[0-9]{4,8}


@dataclass(frozen=True)
class DemoFamily:
    """One device family as the demo runs it: its product in the generated station.toml and its units."""

    name: str  # the flasher family (`flasher = ...` in station.toml)
    label: str  # how a person calls it
    product: str  # the product's name in the demo's station.toml
    serial_prefix: str  # printed serials: prefix + digits
    device_id_is_serial: bool  # the unit's own id is its printed serial, so the cross-check can stay on
    faults: tuple[str, ...]  # the demo faults its simulator can act out
    options: Mapping[str, bool | int | float | str] = field(default_factory=dict)
    thing_name_template: str | None = None  # None: the lab target's default ({product}-{serial})
    in_process: bool = False  # its simulated units live in this process (no pty)

    @property
    def serial_pattern(self) -> str:
        return f"{self.serial_prefix}[0-9]{{4,8}}"

    @property
    def example_serial(self) -> str:
        return f"{self.serial_prefix}0001"


FAMILIES: dict[str, DemoFamily] = {
    f.name: f
    for f in (
        DemoFamily("prov1", "PROV/1", "sim", "SIM", True, ("disconnect", "bad-store", "wrong-unit")),
        # The module connects with its ThingName as client id and the policy ties it to the thing's name.
        DemoFamily(
            "expresslink",
            "ExpressLink",
            "sim-expresslink",
            "EL",
            False,
            ("disconnect",),
            thing_name_template="{device_id}",
        ),
        # The lab's target has no factory CA, so a device-made key could not be signed: the station's key.
        DemoFamily(
            "nrf91",
            "nRF91",
            "sim-nrf91",
            "NRF",
            False,
            ("disconnect", "bad-store"),
            options={"key_source": "station"},
        ),
        # The ROM-loader simulator on a pty, through the real esptool: nothing can toggle DTR/RTS on a pty.
        DemoFamily(
            "esp32",
            "ESP32",
            "sim-esp32",
            "ESP",
            False,
            ("disconnect", "bad-store"),
            options={"connect_mode": "no-reset", "reset_after": False},
        ),
    )
}
DEFAULT_FAMILY = "prov1"


def parse_families(text: str | Sequence[str]) -> list[str]:
    """`prov1,expresslink` (or a list, or `all`) → family names, checked; `InputError` for an unknown one."""
    names = text.split(",") if isinstance(text, str) else list(text)
    families = [n.strip().lower() for n in names if n.strip()]
    if families == ["all"]:
        return list(FAMILIES)
    unknown = [n for n in families if n not in FAMILIES]
    if unknown or not families:
        shown = ", ".join(repr(n) for n in unknown) if unknown else "none"
        raise InputError(
            "Unknown device family",
            f"The demo has no device family {shown}.",
            f"Use some of {', '.join(FAMILIES)} (comma-separated), or all.",
        )
    return families


def assign_families(slots: Sequence[str], families: Sequence[str]) -> dict[str, str]:
    """Slot → family, round-robin over `families` in slot order."""
    return {slot: families[i % len(families)] for i, slot in enumerate(slots)}


@dataclass
class DemoUnit:
    """One simulated unit: what is printed on it (`serial`), what it says it is (`device_id`), its family, its
    simulator (`model`), and where it sits while in a jig (its pty, or an in-process port URL)."""

    index: int  # 1-based, in the order units were put into jigs
    slot: str
    serial: str  # the barcode on the unit: what is scanned
    device_id: str  # what the device says it is (HELLO id, ThingName, IMEI, MAC)
    fault: str | None
    model: Any = field(
        repr=False
    )  # the family's simulator (Prov1Device, ExpressLinkDevice, Nrf91Modem, Esp32RomDevice)
    pty: PtyDevice | None = field(repr=False)  # None for an in-process family (ESP32)
    family: str = DEFAULT_FAMILY
    url: str = ""  # the unit's own port when it has no pty
    used: bool = False  # scanned at least once

    @property
    def flash_path(self) -> Path | None:
        """The file that is the unit's non-volatile store (None for a unit whose store is in memory)."""
        path = getattr(self.model, "flash_path", None)
        return Path(path) if path is not None else None

    @property
    def store(self) -> str:
        """Where the unit keeps its credentials, for a person: its flash file, or its in-memory port."""
        path = self.flash_path
        return str(path) if path is not None else f"{self.port} (in memory)"

    @property
    def port(self) -> str:
        """The unit's own port (a pty jig's symlink points here while the unit is in the jig)."""
        return self.pty.port if self.pty is not None else self.url

    @property
    def connected(self) -> bool:
        """Still on the line (not unplugged)."""
        if self.pty is not None:
            return self.pty.connected
        return not bool(getattr(self.model, "gone", False))

    def stored_certificate(self) -> str | None:
        """The certificate PEM the unit's store holds now (an ExpressLink module's is its birth certificate)."""
        cert = self.model.live().get("cert")
        return str(cert) if cert else None

    @property
    def expected(self) -> Outcome:
        return DEMO_FAULTS[self.fault][1] if self.fault else Outcome.PASS

    @property
    def fault_text(self) -> str:
        return DEMO_FAULTS[self.fault][0] if self.fault else ""

    def unplug(self) -> None:
        """Take the unit off the line: its pty closes (or its in-process port goes), any connection of its own
        drops. Its store stays (a flash file, or the model's memory)."""
        if self.pty is not None:
            self.pty.stop()
        close = getattr(self.model, "close", None)  # an ExpressLink module may hold an MQTT connection
        if callable(close):
            close()
        if self.pty is None:
            stop = getattr(self.model, "stop", None)  # the ESP32 fake: off the in-process port registry
            if callable(stop):
                stop()


@dataclass(frozen=True)
class JigUnit:
    """One unit waiting in a jig, as the demo announces it (for the operator screen's help panel)."""

    slot: str
    family: str  # how a person calls its family ("PROV/1", "nRF91", …)
    serial: str  # the label on the unit: what to scan
    fault: str | None  # its demo fault (None: a good unit)
    fault_text: str  # the fault for a person ("" for a good unit)
    expected: Outcome  # what scanning it gives: PASS, or FAIL for a faulty unit

    @property
    def faulty(self) -> bool:
        return self.fault is not None


def demo_faults(name: str | None) -> Faults:
    """The PROV/1 simulator faults that make a demo fault (none for a good unit or a wrong one: it is fine)."""
    if name == "disconnect":
        return Faults(disconnect=DISCONNECT_AT_DATA_FRAME)
    if name == "bad-store":
        return Faults(bad_store=True)
    return Faults()


def _check_fault(name: str | None, family: str | None = None) -> None:
    if name is not None and name not in DEMO_FAULTS:
        raise InputError(
            "Unknown demo fault", f"There is no demo fault {name!r}.", f"Use one of {', '.join(DEMO_FAULTS)}."
        )
    if name is not None and family is not None and name not in FAMILIES[family].faults:
        fam = FAMILIES[family]
        raise InputError(
            "Fault not possible",
            f"A simulated {fam.label} unit cannot have the demo fault {name!r}.",
            f"Use one of {', '.join(fam.faults)} for {fam.label} units.",
        )


# ------------------------------------------------------------------------------------------------ jigs


class Jigs:
    """One jig per slot, each holding one simulated unit of the slot's family (default PROV/1). Thread-safe.

    `ca_file` is the server CA the units trust (the lab's); `data_port` the lab data endpoint's port, which an
    ExpressLink module connects to (a real module always uses 8883). Set both before inserting such units.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        slots: Sequence[str],
        *,
        ca_file: str | os.PathLike[str] | None = None,
        paced: bool = False,
        baud: int = 115200,
        families: Mapping[str, str] | None = None,
        data_port: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.slots = list(slots)
        self.families = {slot: (families or {}).get(slot, DEFAULT_FAMILY) for slot in self.slots}
        parse_families(list(self.families.values()))  # refuse an unknown family before anything starts
        self.ca_file = ca_file
        self.data_port = data_port
        self.paced = paced
        self.baud = baud
        self.devices_dir = self.state_dir / "devices"
        self.jigs_dir = self.state_dir / "jigs"
        self.devices: dict[str, DemoUnit] = {}  # slot → the unit in its jig now
        self.units: list[DemoUnit] = []  # every unit ever put in a jig, in order
        self._retired: list[DemoUnit] = []  # units taken out (unplugged, their record kept)
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._used_ids: set[str] = set()
        self._tag = secrets.token_hex(3)  # in-process port names are process-wide: keep this run's apart

    def port(self, slot: str) -> str:
        """The stable port of a slot: a symlink to the pty of the unit in it, or an in-process port URL."""
        if FAMILIES[self.families[slot]].in_process:
            return f"esp32sim://jig-{self._tag}-{slot}"
        return str(self.jigs_dir / slot)

    def insert_unit(self, slot: str, *, fault: str | None = None) -> DemoUnit:
        """Unplug the unit in `slot`'s jig and put a fresh simulated unit of the slot's family in (new device
        id, new store, new pty); returns it. Call it while the station is not working on the slot's unit."""
        self._check_slot(slot)
        family = self.families[slot]
        _check_fault(fault, family)
        self.jigs_dir.mkdir(parents=True, exist_ok=True)
        self.devices_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            serial = self._new_serial(FAMILIES[family].serial_prefix)
            unit = self._make_unit(slot, family, serial, fault)
            old = self._plug(slot, unit)
        if old is not None:
            # Unplugged: its pty (or in-process port) goes away; its store stays (the unit's record).
            old.unplug()
        return unit

    def put_back(self, slot: str, unit_id: str) -> DemoUnit:
        """QA puts the unit whose device id (or printed serial) is `unit_id` — one this demo made, whose store
        kept its identity — back into `slot`'s jig for a re-verify there: the jig then holds the recorded
        unit, not a fresh one. Call it while the station is not working on the slot."""
        self._check_slot(slot)
        with self._lock:
            wanted = _plain_id(unit_id)
            current = self.devices.get(slot)
            if current is not None and wanted in (_plain_id(current.device_id), _plain_id(current.serial)):
                return current
            unit = next((u for u in reversed(self.units) if _plain_id(u.device_id) == wanted), None) or next(
                (u for u in reversed(self.units) if _plain_id(u.serial) == wanted), None
            )
            if unit is None:
                raise InputError(
                    "Not a demo unit",
                    f"{unit_id} was not made by this demo, so there is no simulated unit to put in {slot}.",
                    "Re-verify a unit of this demo run.",
                )
            serial = unit.serial
            elsewhere = next((s for s, u in self.devices.items() if u is unit), None)
            if elsewhere is not None:
                raise InputError(
                    "Unit in another jig",
                    f"{serial} is in {elsewhere}'s jig.",
                    f"Re-verify it on {elsewhere}.",
                )
            if FAMILIES[unit.family].in_process or self.families[slot] != unit.family:
                raise InputError(
                    "Cannot put it back",
                    f"{serial} is a {unit.family} unit; {slot} takes {self.families[slot]} units"
                    + (" and in-process units cannot be moved." if FAMILIES[unit.family].in_process else "."),
                    "Re-verify it on a slot of its own family.",
                )
            again = self._make_unit(slot, unit.family, serial, None, device_id=unit.device_id)
            again.used = True
            assert again.pty is not None
            self._plug(slot, again)
        if current is not None:
            current.unplug()
        return again

    def _check_slot(self, slot: str) -> None:
        if slot not in self.slots:
            raise InputError(
                "No such slot", f"There is no slot {slot!r}.", f"Use one of {', '.join(self.slots)}."
            )

    def _plug(self, slot: str, unit: DemoUnit) -> DemoUnit | None:
        """Put `unit` in `slot`'s jig (under `_lock`); returns the unit it took out, which the caller unplugs
        once the lock is released."""
        if unit.pty is not None:
            # Re-point the jig atomically: whoever opens it finds either the old unit or the new one.
            link = Path(self.port(slot))
            tmp = link.with_name(f".{slot}.{secrets.token_hex(4)}")
            os.symlink(unit.pty.port, tmp)
            os.replace(tmp, link)
        old = self.devices.get(slot)
        self.devices[slot] = unit
        self.units.append(unit)
        if old is not None:
            self._retired.append(old)
        return old

    def _make_unit(
        self, slot: str, family: str, serial: str, fault: str | None, *, device_id: str | None = None
    ) -> DemoUnit:
        """A simulated unit; with `device_id`, the unit of that id again (its store holds its identity)."""
        index = next(self._counter)
        again = device_id
        if family == "prov1":
            device_id = again or (self._new_serial("SIM") if fault == "wrong-unit" else serial)
            model: Any = Prov1Device(
                self.devices_dir, device_id=device_id, ca_file=self.ca_file, faults=demo_faults(fault)
            )
        elif family == "expresslink":
            from flashers.simulators import expresslink as el

            device_id = again or self._new_id(el.new_thing_name, lambda v: el.flash_path(self.devices_dir, v))
            model = el.ExpressLinkDevice(
                self.devices_dir,
                thing_name=device_id,
                ca_file=self.ca_file,
                port=self.data_port or el.STANDARD_PORT,
                # It drops off when told to connect: after the station registered its certificate.
                faults=el.Faults(disconnect_on="CONNECT") if fault == "disconnect" else el.Faults(),
            )
        elif family == "nrf91":
            from flashers.simulators import nrf91

            device_id = again or self._new_id(nrf91.new_imei, lambda v: nrf91.flash_path(self.devices_dir, v))
            model = nrf91.Nrf91Modem(
                self.devices_dir,
                imei=device_id,
                faults=nrf91.Faults(
                    disconnect=NRF91_DISCONNECT_AT_WRITE if fault == "disconnect" else None,
                    bad_store=fault == "bad-store",
                ),
            )
        elif family == "esp32":
            from flashers.simulators import esp32rom

            device_id = again or self._new_id(
                lambda: "240AC4" + secrets.token_hex(3).upper(),
                lambda v: esp32rom.flash_file(self.devices_dir, bytes.fromhex(v)),
            )
            model = esp32rom.Esp32RomDevice(
                self.devices_dir,
                mac=bytes.fromhex(device_id),
                faults=esp32rom.Faults(
                    disconnect_on_write=1 if fault == "disconnect" else None, bad_store=fault == "bad-store"
                ),
            )
        else:  # parse_families refused it already
            raise InputError("Unknown device family", f"No demo family {family!r}.", "Use a known one.")
        pty = PtyDevice(model, baudrate=self.baud, pace=self.paced, name=f"{slot} {device_id}").start()
        return DemoUnit(index, slot, serial, device_id, fault, model, pty, family)

    def _new_serial(self, prefix: str) -> str:
        def candidate() -> str:
            return prefix + "".join(str(secrets.randbelow(10)) for _ in range(SERIAL_DIGITS))

        # A PROV/1 unit's flash file is named by its id (= its serial): not one of an earlier run in this dir.
        return self._new_id(candidate, lambda v: flash_path(self.devices_dir, v) if prefix == "SIM" else None)

    def _new_id(self, make: Callable[[], str], stored: Callable[[str], Path | None] | None) -> str:
        while True:
            value = make()
            path = stored(value) if stored is not None else None
            if value in self._used_ids or (path is not None and path.exists()):
                continue  # taken in this run, or by a unit of an earlier run in this state dir
            self._used_ids.add(value)
            return value

    def unit_for(self, serial: str) -> DemoUnit | None:
        with self._lock:
            return next((u for u in reversed(self.units) if u.serial == serial), None)

    def stop(self) -> None:
        """Unplug every unit (their ptys close, their in-process ports go; their stores stay) and remove the
        jigs' port links: a link left behind would point at a pty number the system may hand to someone else."""
        with self._lock:
            units = [*self.devices.values(), *self._retired]
            self.devices.clear()
            self._retired.clear()
        for unit in units:
            try:
                unit.unplug()
            except Exception:
                log.exception("could not unplug the simulated unit %s", unit.serial)
        for slot in self.slots:
            if not FAMILIES[self.families[slot]].in_process:
                with contextlib.suppress(FileNotFoundError):
                    Path(self.port(slot)).unlink()


def _plain_id(value: str) -> str:
    """A device id as compared across spellings (a MAC with or without separators, any case)."""
    return "".join(c for c in str(value) if c.isalnum()).upper()


# ---------------------------------------------------------------------------------------------- feeder


class _HasSerial(Protocol):
    @property
    def serial(self) -> str: ...


U = TypeVar("U", bound=_HasSerial)


class Feeder(Generic[U]):
    """Feeds `count` units to a line: every slot takes the next unit as soon as its previous one is done.

    Hand `on_event` to the line (or call it from the line's sink). `put_unit(slot)` puts the next unit in the
    slot's jig and returns it (anything with a `serial`); the feeder then scans that serial on that slot.
    With `shares` (slot → units), a slot takes no more than its share: on a mixed line each family then gets
    its share, however much faster another family's slots are.
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
        shares: Mapping[str, int] | None = None,
    ) -> tuple[list[tuple[U, UnitResult]], float]:
        """Returns each unit with its result, in finishing order, and the wall time in seconds."""
        if count < 1:
            raise InputError(
                "Bad unit count", f"Feed at least one unit, not {count}.", "Use --units 1 or more."
            )
        if shares is not None and sum(shares.get(s, 0) for s in slots) < count:
            raise InputError(
                "Bad shares",
                f"The slots' shares add up to less than {count} units.",
                "Give every unit a slot.",
            )
        finished: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._finished = finished
        done: list[tuple[U, UnitResult]] = []
        fed: dict[str, U] = {}  # scanned serial → unit
        per_slot: Counter[str] = Counter()
        started = time.perf_counter()

        def wants_more(slot: str) -> bool:
            return len(fed) < count and (shares is None or per_slot[slot] < shares.get(slot, 0))

        def feed(slot: str) -> None:
            unit = put_unit(slot)
            fed[unit.serial] = unit
            per_slot[slot] += 1
            line.scan(unit.serial, slot=slot)

        try:
            for slot in slots:
                if wants_more(slot):
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
                if wants_more(event.slot):
                    feed(event.slot)
        finally:
            self._finished = None
        return done, time.perf_counter() - started


def even_shares(slots: Sequence[str], count: int) -> dict[str, int]:
    """`count` units shared out over `slots` as evenly as possible, the first slots taking any remainder."""
    base, extra = divmod(count, len(slots))
    return {slot: base + (1 if i < extra else 0) for i, slot in enumerate(slots)}


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
                "family": self.unit.family,
                "device_id": self.result.device_id or self.unit.device_id,
                "flash_file": str(self.unit.flash_path) if self.unit.flash_path is not None else None,
                "store": self.unit.store,
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

    def by_family(self) -> dict[str, dict[str, int]]:
        """Family → units, pass, fail, error (families in the order they first finished a unit)."""
        counts: dict[str, dict[str, int]] = {}
        for o in self.outcomes:
            row = counts.setdefault(o.unit.family, {"units": 0, "pass": 0, "fail": 0, "error": 0})
            row["units"] += 1
            row[str(o.result.outcome).lower()] += 1
        return counts

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
            "families": self.by_family(),
        }


# ------------------------------------------------------------------------------------ the operator's scan


# ------------------------------------------------------------------------------------------- the line


class DemoLine:
    """The lab + N jigs of simulated units + the real line. A context manager, or `start()` / `stop()`.

    After `start()`: `lab`, `config` (the `StationConfig` of `config_path`), `ledger`, `context`, `line`, and
    `devices` (slot → the `DemoUnit` in its jig, with its store). `families` gives the slots' device families,
    round-robin in slot order (default: all PROV/1); `slot_families` says which slot got which. `on_event`
    receives every event of the line (from worker threads), e.g. the TUI's relay. With `auto_replace`, a unit
    that finished is unplugged and a fresh one put in its jig, so an interactive demo always has a unit waiting
    in every slot. The fault plan makes every `fault_every`-th unit a faulty demo unit (`fault`: one kind, or
    `mixed`: each family's units have the faults its simulator can act out, each in turn; a fixed kind the
    family cannot act out leaves that unit good). `paced` holds each pty device's answers to real wire time at `baud` (the
    in-process ESP32 units are never paced); unpaced, units go at pty speed. `check_device_id=False` lets any
    serial a product accepts provision the unit in the jig (for a newcomer who cannot read a simulated unit's
    label); the families whose device id is not their serial have it off anyway (module docstring). Without
    `state_dir`, a temporary folder is used and removed at `stop()`. `routed`: the operator scans without a
    slot and the station finds the jig by the unit's id (the interactive demo); a `wrong-unit` unit would then
    be refused at the scan rather than FAIL, so the fault plan leaves it out. With `auto_replace` the units put
    in the jigs at start follow the fault plan too, so "every K-th unit" counts from the first.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        slots: int = 4,
        families: Sequence[str] | None = None,
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
        routed: bool = False,
        operator: str | None = None,
        registry_factory: Callable[..., Any] | None = None,
        printer: str | None = None,
        lab_json: str | os.PathLike[str] | None = None,
        station_id: str | None = None,
        ledger: str | None = None,
        budget_store: str | None = None,
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
        chosen_families = parse_families(families) if families is not None else [DEFAULT_FAMILY]
        self._own_state_dir = state_dir is None
        chosen = state_dir if state_dir is not None else tempfile.mkdtemp(prefix="station-demo-")
        self.state_dir = Path(chosen).expanduser().resolve()
        self.slot_names = [f"slot-{i + 1}" for i in range(slots)]
        self.slot_families = assign_families(self.slot_names, chosen_families)
        self.auto_replace = auto_replace
        self.fault_every = fault_every
        self.fault = fault
        self.check_device_id = check_device_id
        self.routed = routed
        self.operator = operator
        self._on_event = on_event
        self._registry_factory = registry_factory
        self.printer = printer  # where PASS labels go (tcp://host:9100, lp://QUEUE, a file); None: no labels
        # One station of several on a running lab (`lab_json`), or a lab of its own.
        self.lab: Lab = (
            JoinedLab(lab_json, self.state_dir)
            if lab_json is not None
            else Lab(self.state_dir, accounts=accounts, regions=regions, throttling=lab_throttling)
        )
        self.station_id = station_id or "lab-station"
        self.ledger_location = ledger or "ledger.sqlite"
        self.budget_store = budget_store
        self.jigs = Jigs(self.state_dir, self.slot_names, paced=paced, baud=baud, families=self.slot_families)
        self.config: StationConfig | None = None
        self.context: StationContext | None = None
        self.ledger: Any = None
        self._line: Line | None = None
        self._feeder: Feeder[DemoUnit] = Feeder()
        self._lock = threading.Lock()
        # `mixed`: each family goes through the faults it can act out in turn, its own cycle.
        self._fault_cycles = {f: itertools.cycle(self.supported_faults(f)) for f in self.families}
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

    @property
    def families(self) -> list[str]:
        """The device families on this line, in slot order."""
        return list(dict.fromkeys(self.slot_families.values()))

    @property
    def mixed(self) -> bool:
        return len(self.families) > 1

    def jig_port(self, slot: str) -> str:
        return self.jigs.port(slot)

    def checks_device_id(self, family: str) -> bool:
        """Whether the station cross-checks a scan of this family's units against their device id."""
        return self.check_device_id and FAMILIES[family].device_id_is_serial

    def supported_faults(self, family: str) -> tuple[str, ...]:
        """The demo faults a unit of `family` can have here (`wrong-unit` only where the cross-check is on and
        scans are not routed by the unit's id)."""
        return tuple(
            f
            for f in FAMILIES[family].faults
            if f != "wrong-unit" or (self.checks_device_id(family) and not self.routed)
        )

    def products(self) -> dict[str, LabProduct]:
        """The generated station.toml's products: one per family on the line."""
        products: dict[str, LabProduct] = {}
        for name in self.families:
            family = FAMILIES[name]
            options = dict(family.options)
            if not self.checks_device_id(name):
                options["check_device_id"] = False
            products[family.product] = LabProduct(
                flasher=family.name,
                serial_pattern=family.serial_pattern,
                options=options,
                thing_name_template=family.thing_name_template,
            )
        return products

    def start(self) -> DemoLine:
        if self._started:
            return self
        self._started = True
        try:
            self.lab.start()
            # For the units' own connections: the lab's CA (as if in their firmware), the data endpoint's port.
            self.jigs.ca_file = self.lab.ca_file
            self.jigs.data_port = self.lab.registry().data_port
            for slot in self.slot_names:
                # An interactive line's first units follow the fault plan like the ones after them; a headless
                # run decides each unit's fault when it feeds it (`run_units`).
                if self.auto_replace:
                    self.insert_unit(slot)
                else:
                    self.jigs.insert_unit(slot)
            toml = self.lab.station_toml(
                slots={s: self.jig_port(s) for s in self.slot_names},
                products=self.products(),
                slot_products={s: FAMILIES[f].product for s, f in self.slot_families.items()},
                label_printer=self.printer,
                station_id=self.station_id,
                ledger=self.ledger_location,
                budget_store=self.budget_store,
            )
            self.config_path.write_text(toml)
            self.config = load_config(self.config_path)
            from station.ledger import open_ledger

            self.ledger = open_ledger(self.config.ledger_path, station_id=self.config.station_id)
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
        if self.context is not None:
            try:
                self.context.close()  # the station's own identities (observers), if it made any
            except Exception:
                log.exception("could not close the demo station's context")
            self.context = None
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
    def next_fault(self, family: str = DEFAULT_FAMILY) -> str | None:
        """The fault of the next unit (of `family`) by the plan: every `fault_every`-th unit is faulty."""
        supported = self.supported_faults(family)
        with self._lock:
            self._planned += 1
            if self.fault_every <= 0 or self._planned % self.fault_every:
                return None
            if self.fault != MIXED:
                return self.fault if self.fault in supported else None
            if family not in self._fault_cycles:
                self._fault_cycles[family] = itertools.cycle(supported)
            return next(self._fault_cycles[family], None)

    def _check_planned(self, slot: str, fault: str | None) -> None:
        family = self.slot_families.get(slot)
        if fault is None or family is None:
            return  # Jigs refuses an unknown slot itself
        _check_fault(fault, family)
        if fault not in self.supported_faults(family):
            raise InputError(
                "Fault not possible",
                f"A {fault!r} unit in {slot} would not be caught: the station does not cross-check the scan "
                "against the device id there.",
                "Use another demo fault for this slot.",
            )

    def insert_unit(self, slot: str, *, fault: str | None = PLANNED) -> DemoUnit:
        """Put a fresh simulated unit in `slot`'s jig (a new unit in the jig); returns it. `fault` names a
        demo fault, None for a good unit; left out, the fault plan decides. Call it while the slot is idle."""
        if fault == PLANNED:
            chosen = self.next_fault(self.slot_families.get(slot, DEFAULT_FAMILY))
        else:
            self._check_planned(slot, fault)
            chosen = fault
        return self.jigs.insert_unit(slot, fault=chosen)

    def jig_units(self) -> list[JigUnit]:
        """The units in the jigs now, in slot order: the serial to scan for each, and which are faulty."""
        with self.jigs._lock:
            units = [(slot, self.devices.get(slot)) for slot in self.slot_names]
        return [
            JigUnit(
                slot=slot,
                family=FAMILIES[unit.family].label,
                serial=unit.serial,
                fault=unit.fault,
                fault_text=unit.fault_text,
                expected=unit.expected,
            )
            for slot, unit in units
            if unit is not None
        ]

    def scan(self, slot: str) -> str:
        """Scan the unit in `slot`'s jig (its printed serial), as an operator would; returns the slot."""
        unit = self.devices[slot]
        unit.used = True
        return self.line.scan(unit.serial, slot=slot)

    def unit_for(self, serial: str) -> DemoUnit | None:
        return self.jigs.unit_for(serial)

    def put_back(self, record: Any, slot: str) -> None:
        """QA puts the recorded unit back into `slot`'s jig (before a re-verify there). The record's device
        id names the simulated unit (the interactive demo lets an operator type any serial for it)."""
        self.jigs.put_back(slot, str(record.device_id or record.serial))

    def _event(self, event: Event) -> None:
        self._feeder.on_event(event)
        if self._on_event is not None:
            self._on_event(event)
        if event.kind == "unit_finished" and self.auto_replace and event.slot in self.slot_names:
            # The unit's record is written: the next unit goes into the jig. The station still holds the old
            # port open for a moment and closes it on its own.
            try:
                self.insert_unit(event.slot)
            except Exception:
                log.exception("could not put a fresh unit into %s", event.slot)

    # ------------------------------------------------------------------------------------------ headless
    def run_units(
        self, count: int, *, unit_timeout_s: float = 120.0, faults: Iterable[str | None] | None = None
    ) -> DemoReport:
        """Feed `count` fresh units through the line, each slot taking the next unit as soon as it is free.

        On a mixed line every slot takes an even share of the units (so each family gets its share, at its
        own pace); on a one-family line the next unit goes to whichever slot is free first. Units follow the
        fault plan unless `faults` gives each unit's fault in order. Returns when every unit has finished;
        `unit_timeout_s` bounds the wait for any one unit.
        """
        plan = iter(faults) if faults is not None else None

        def put_unit(slot: str) -> DemoUnit:
            family = self.slot_families[slot]
            if plan is not None:
                wanted = next(plan, None)
                self._check_planned(slot, wanted)
            else:
                wanted = self.next_fault(family)
            current = self.devices.get(slot)
            if current is not None and not current.used and current.fault == wanted:
                unit = current  # the unit waiting in the jig since start will do
            else:
                unit = self.jigs.insert_unit(slot, fault=wanted)
            unit.used = True
            return unit

        shares = even_shares(self.slot_names, count) if self.mixed else None
        done, wall_s = self._feeder.run(
            self.line, self.slot_names, count, put_unit, unit_timeout_s=unit_timeout_s, shares=shares
        )
        return DemoReport(
            outcomes=[DemoUnitOutcome(u, r) for u, r in done], wall_s=wall_s, slots=len(self.slot_names)
        )
