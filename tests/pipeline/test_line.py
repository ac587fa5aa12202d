"""The line over fakes: slot assignment, scan validation, independence of slots, idle/stop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pipeline_fakes import TARGET, FakeFlasher, FakeRegistry, Log, make_rig

from station import naming
from station.errors import InputError
from station.line import BUSY, IDLE, RESERVED, STOPPED, Line
from station.model import Event, Outcome
from station.pipeline import FlasherLike, Pipeline, UnitRequest


class FakeContext:
    """The wiring, as the line sees it, over the pipeline fakes."""

    def __init__(self, slots: int = 2, *, write_delay: dict[str, float] | None = None) -> None:
        self.log = Log()
        self.registry = FakeRegistry(self.log, delays={"register": 0.01})
        self.rig = make_rig(log=self.log, registry=self.registry, on_event=self._forward)
        self.pipeline: Pipeline = self.rig.pipeline
        self.on_event: Any = None
        self.ports = {f"s{i + 1}": f"loop://s{i + 1}" for i in range(slots)}
        self.write_delay = dict(write_delay or {})  # serial → seconds
        self.gates: dict[str, threading.Event] = {}  # serial → the write waits for this
        self.opened: list[tuple[str, str]] = []

    def _forward(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def slot_ports(self) -> dict[str, str]:
        return dict(self.ports)

    def close(self) -> None:
        pass

    def prepare(self, serial: str, *, slot: str, product: str | None, target: str | None) -> UnitRequest:
        serial = naming.validate_serial(serial, r"SN[0-9]{8}", product="widget")
        return UnitRequest(
            serial=serial, target=TARGET, slot=slot, product="widget", thing_name=lambda d: f"widget-{serial}"
        )

    def open_flasher(self, slot: str, port: str, request: UnitRequest) -> FlasherLike:
        self.opened.append((slot, port))
        flasher = FakeFlasher(
            self.log, device_id=request.serial, write_delay=self.write_delay.get(request.serial, 0)
        )
        gate = self.gates.get(request.serial)
        if gate is not None:
            original = flasher.write_identity

            def gated(identity: Any, **kw: Any) -> Any:
                assert gate.wait(10), "test gate never opened"
                return original(identity, **kw)

            flasher.write_identity = gated  # type: ignore[method-assign]
        return flasher


@pytest.fixture
def ctx() -> FakeContext:
    return FakeContext(slots=2)


def test_scan_assigns_free_slots_and_refuses_when_none_is_free(ctx: FakeContext) -> None:
    ctx.gates = {"SN00000001": threading.Event(), "SN00000002": threading.Event()}
    line = Line.from_context(ctx)
    try:
        assert line.scan("SN00000001") == "s1"
        assert line.scan(" SN00000002\r\n") == "s2"  # the scanner's line ending is trimmed
        with pytest.raises(InputError) as error:
            line.scan("SN00000003")
        assert error.value.title == "No free slot"
        with pytest.raises(InputError) as error:
            line.scan("SN00000003", slot="s1")
        assert error.value.title == "Slot busy" and "SN00000001" in error.value.message
        assert [(s.name, s.state, s.serial) for s in line.slots()] == [
            ("s1", BUSY, "SN00000001"),
            ("s2", BUSY, "SN00000002"),
        ]
        for gate in ctx.gates.values():
            gate.set()
        assert line.wait_idle(10)
        assert [s.state for s in line.slots()] == [IDLE, IDLE]
        assert sorted(r.serial for r in line.results()) == ["SN00000001", "SN00000002"]
        assert all(r.outcome == Outcome.PASS for r in line.results())
        assert line.scan("SN00000003", slot="s2") == "s2"
        assert line.wait_idle(10)
        last = line.slots()[1].last
        assert last is not None and last.serial == "SN00000003"
        assert line.slots()[1].units == 2
    finally:
        line.stop(timeout=10)


def test_a_bad_scan_starts_nothing(ctx: FakeContext) -> None:
    events: list[Event] = []
    line = Line.from_context(ctx, on_event=events.append)
    try:
        for bad in ("SN123", "", "SN00000001SN00000001", "sn00000001"):
            with pytest.raises(InputError):
                line.scan(bad)
        with pytest.raises(InputError) as error:
            line.scan("SN00000001", slot="s9")
        assert error.value.title == "No such slot"
        assert all(s.state == IDLE for s in line.slots())
        assert events == [] and ctx.rig.ledger.records == [] and ctx.opened == []
    finally:
        line.stop(timeout=10)


def test_a_slow_unit_does_not_block_another_slot(ctx: FakeContext) -> None:
    ctx.gates = {"SN00000001": threading.Event()}
    line = Line.from_context(ctx)
    try:
        line.scan("SN00000001")  # s1: stuck in its serial write until the gate opens
        line.scan("SN00000002")  # s2: should finish meanwhile
        deadline = time.monotonic() + 10
        while not line.results() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r.serial for r in line.results()] == ["SN00000002"]
        s1 = line.slots()[0]
        assert s1.state == BUSY and s1.step in ("write", "register", "identity")
        ctx.gates["SN00000001"].set()
        assert line.wait_idle(10)
        assert [r.serial for r in line.results()] == ["SN00000002", "SN00000001"]
    finally:
        line.stop(timeout=10)


def test_slots_work_in_parallel() -> None:
    ctx = FakeContext(slots=4, write_delay={f"SN0000000{i}": 0.3 for i in range(4)})
    line = Line.from_context(ctx)
    try:
        t0 = time.perf_counter()
        for i in range(4):
            line.scan(f"SN0000000{i}")
        assert line.wait_idle(10)
        elapsed = time.perf_counter() - t0
        assert len(line.results()) == 4 and all(r.outcome == Outcome.PASS for r in line.results())
        assert elapsed < 0.9, f"4 units of 0.3 s on 4 slots took {elapsed:.2f} s"
        assert sorted(s for s, _ in ctx.opened) == ["s1", "s2", "s3", "s4"]
    finally:
        line.stop(timeout=10)


def test_port_override_and_events_reach_the_caller(ctx: FakeContext) -> None:
    events: list[Event] = []
    line = Line.from_context(ctx, on_event=events.append)
    try:
        line.scan("SN00000001", port="/dev/pts/99")
        assert line.wait_idle(10)
        assert ctx.opened == [("s1", "/dev/pts/99")]
        kinds = [e.kind for e in events]
        assert kinds[0] == "unit_started" and kinds[-1] == "unit_finished"
        assert {e.slot for e in events} == {"s1"}
    finally:
        line.stop(timeout=10)


def test_wait_idle_times_out_and_stop_finishes_the_unit_in_progress(ctx: FakeContext) -> None:
    ctx.gates = {"SN00000001": threading.Event()}
    line = Line.from_context(ctx)
    line.scan("SN00000001")
    assert line.wait_idle(0.05) is False
    stopper = threading.Thread(target=line.stop, kwargs={"timeout": 10})
    stopper.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            line.scan("SN00000002", slot="s1")  # s1 is busy: refused either way, but why?
        except InputError as error:
            if error.title == "Line stopped":
                break
        time.sleep(0.01)
    else:
        pytest.fail("the line kept accepting scans while stopping")
    ctx.gates["SN00000001"].set()
    stopper.join(10)
    assert [r.serial for r in line.results()] == ["SN00000001"]
    assert [s.state for s in line.slots()] == [STOPPED, STOPPED]


def test_a_reserved_slot_gets_no_unit_until_it_is_given_back(ctx: FakeContext) -> None:
    ctx.gates = {"SN00000001": threading.Event()}
    line = Line.from_context(ctx)
    try:
        with line.reserve("s1", serial="SN00000009", purpose="qa:reverify") as held:
            assert held.state == RESERVED
            assert [(s.name, s.state, s.serial, s.step) for s in line.slots()] == [
                ("s1", RESERVED, "SN00000009", "qa:reverify"),
                ("s2", IDLE, "", ""),
            ]
            with pytest.raises(InputError) as error:
                line.scan("SN00000001", slot="s1")
            assert error.value.title == "Slot reserved" and "SN00000009" in error.value.message
            assert line.wait_idle(0.05), "a reservation is not a unit in progress"
            assert line.scan("SN00000001") == "s2"  # the next free slot skips the reserved one
            with pytest.raises(InputError) as error:
                line.scan("SN00000002")
            assert error.value.title == "No free slot"
            with pytest.raises(InputError) as error, line.reserve("s2"):
                pass
            assert error.value.title == "Slot busy"  # a slot with a unit cannot be reserved
            with pytest.raises(InputError) as error, line.reserve("s1"):
                pass
            assert error.value.title == "Slot reserved"  # nor one reserved already
        s1 = line.slots()[0]
        assert (s1.state, s1.serial, s1.step) == (IDLE, "", "")
        assert line.scan("SN00000003", slot="s1") == "s1"  # given back: units start there again
        ctx.gates["SN00000001"].set()
        assert line.wait_idle(10)
        assert sorted((r.serial, r.slot) for r in line.results()) == [
            ("SN00000001", "s2"),
            ("SN00000003", "s1"),
        ]
        assert ctx.opened.count(("s1", "loop://s1")) == 1  # nothing opened s1 while it was reserved
    finally:
        line.stop(timeout=10)


def test_a_reservation_is_given_back_after_an_error_and_refused_for_unknown_slots(ctx: FakeContext) -> None:
    line = Line.from_context(ctx)
    try:
        with pytest.raises(InputError) as error, line.reserve("s9"):
            pass
        assert error.value.title == "No such slot"
        with pytest.raises(RuntimeError), line.reserve("s2", serial="SN00000009"):
            raise RuntimeError("the port went away")
        assert [s.state for s in line.slots()] == [IDLE, IDLE]
        with line.reserve("s1"):
            line.stop(timeout=10)  # the line stops while QA still holds s1
        assert [(s.state, s.serial, s.step) for s in line.slots()] == [(STOPPED, "", "")] * 2
        with pytest.raises(InputError) as error, line.reserve("s1"):
            pass
        assert error.value.title == "Line stopped"
    finally:
        line.stop(timeout=10)


def test_a_line_that_built_its_wiring_closes_it_on_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Observer identities made for verify-by-observing must end with the line, not live on in AWS."""
    import station.context

    closed: list[bool] = []

    class Context:
        on_event: Any = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def slot_ports(self) -> dict[str, str]:
            return {"s1": "loop://"}

        def close(self) -> list[str]:
            closed.append(True)
            return []

    monkeypatch.setattr(station.context, "StationContext", Context)
    line = Line(object(), ledger=None)
    line.stop(timeout=5)
    assert closed == [True]

    given = Context()
    other = Line.from_context(given)  # type: ignore[arg-type]
    other.stop(timeout=5)
    assert closed == [True], "a context the caller passed in is the caller's to close"


class _RoutingContext:
    """Two products on two slots: s1 takes SIM serials, s2 takes EL serials; units block until released."""

    on_event: Any = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[tuple[str, str]] = []
        self.pipeline = self

    def slot_ports(self) -> dict[str, str]:
        return {"s1": "loop://", "s2": "loop://"}

    def prepare(self, serial: str, *, slot: str, product: Any, target: Any) -> Any:
        pattern = {"s1": "SIM[0-9]{4}", "s2": "EL[0-9]{4}"}[slot]
        return UnitRequest(
            serial=naming.validate_serial(serial, pattern, product=slot),
            slot=slot,
            product=slot,
            target=TARGET,
            thing_name=lambda device_id: f"{slot}-{serial}",
        )

    def open_flasher(self, slot: str, port: str, request: Any) -> Any:
        return None

    def run(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.started.append(request)
        self.release.wait(5)
        raise RuntimeError("not provisioning in this test")


def test_a_scan_without_a_slot_goes_to_a_free_slot_of_its_product() -> None:
    ctx = _RoutingContext()
    line = Line.from_context(ctx)  # type: ignore[arg-type]
    try:
        assert line.scan("EL0001") == "s2"  # s1 is free, but it is for another product
        with pytest.raises(InputError) as busy:
            line.scan("EL0002")
        assert busy.value.title == "No free slot for this unit"
        with pytest.raises(InputError) as wrong:
            line.scan("XX0001")  # fits no product at all: the pattern's own refusal
        assert "does not match" in wrong.value.message
        assert line.scan("SIM0001") == "s1"
    finally:
        ctx.release.set()
        line.stop(timeout=5)


def test_a_pipeline_that_raises_reports_error_on_its_slot_and_the_line_goes_on(ctx: FakeContext) -> None:
    """Issue 10: an unexpected error in a slot worker is shown on that slot; the slot and the others carry on."""
    events: list[Event] = []
    real_run = ctx.pipeline.run

    def run(request: UnitRequest, **kw: Any) -> Any:
        if request.serial == "SN00000001":
            raise RuntimeError("pipeline bug")
        return real_run(request, **kw)

    ctx.pipeline.run = run  # type: ignore[method-assign]
    line = Line.from_context(ctx, on_event=events.append)
    try:
        assert line.scan("SN00000001", "s1") == "s1"
        assert line.wait_idle(10)
        finished = [e for e in events if e.kind == "unit_finished" and e.serial == "SN00000001"]
        assert len(finished) == 1 and finished[0].outcome == "ERROR" and finished[0].slot == "s1"
        assert "RuntimeError" in finished[0].message and "pipeline bug" not in finished[0].message
        line.scan("SN00000002", "s1")  # the same slot takes the next unit
        assert line.wait_idle(10)
        assert [r.outcome for r in line.results()] == [Outcome.PASS]
        assert {s.name: s.state for s in line.slots()} == {"s1": IDLE, "s2": IDLE}
    finally:
        line.stop(timeout=10)
