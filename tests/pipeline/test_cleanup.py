"""The line's cleaner (station.cleanup) over fakes: it finishes this station's open journal entries by itself
once the registry answers, through the one reconcile, and leaves alone what is not its own to touch."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pipeline_fakes import TARGET, FakeLedger, FakeRegistry, FakeVerifier, Log, fake_record, make_rig
from test_line import FakeContext

from station.cleanup import Cleaner
from station.errors import InputError, StationFault, UnitFault
from station.journal import Stage
from station.line import Line
from station.model import Event, Outcome
from station.pipeline import reconcile

STATION = "st-1"


def refused() -> StationFault:
    return StationFault("AWS IoT refused a request", "UpdateCertificate refused (403).", "Call a technician.")


def runner(ledger: FakeLedger, registry: FakeRegistry) -> Callable[..., Any]:
    def run(include: Callable[[Any], bool], on_event: Callable[[Event], None] | None) -> Any:
        return reconcile(
            ledger,
            targets={TARGET.name: TARGET},
            registry_for=lambda target: registry,
            record_factory=fake_record,
            station_id=STATION,
            on_event=on_event,
            include=include,
        )

    return run


def failed_rollback_rig() -> Any:
    """A unit whose verify failed and whose rollback AWS refused: its certificate is still registered."""
    log = Log()
    registry = FakeRegistry(log, faults={"rollback": refused(), "revoke": refused()})
    rig = make_rig(
        log=log,
        registry=registry,
        verifier=FakeVerifier(log, fault=UnitFault("Verify failed", "no echo", "Rework bin.")),
    )
    result = rig.pipeline.run(rig.request(station_id=STATION), rig.flasher)
    assert result.title == "Cleanup pending" and len(registry.certificates) == 1
    return rig


def test_a_round_finishes_a_pending_entry_once_the_registry_answers() -> None:
    rig = failed_rollback_rig()
    events: list[Event] = []
    cleaner = Cleaner(
        rig.ledger, run=runner(rig.ledger, rig.registry), station_id=STATION, on_event=events.append
    )

    assert cleaner.run_once() is False  # AWS still refuses
    assert cleaner.pending == 1 and len(rig.registry.certificates) == 1
    assert rig.ledger.open_journals()[0].stage == Stage.CLEANUP_PENDING

    rig.registry.faults.clear()  # AWS answers again
    assert cleaner.run_once() is True
    assert cleaner.pending == 0
    assert rig.registry.certificates == {} and rig.ledger.open_journals() == []
    assert [r.outcome for r in rig.ledger.records] == ["ERROR"]  # the attempt's own record stands
    assert [e.outcome for e in events] == ["failed", "ok"]
    assert all(e.slot == "" for e in events)  # a slot card now shows another unit: no slot on these


def test_only_this_stations_entries_that_are_over_are_touched() -> None:
    log = Log()
    ledger = FakeLedger(log)
    registry = FakeRegistry(log)
    cleaner = Cleaner(ledger, run=runner(ledger, registry), station_id=STATION, in_flight=lambda: {"live"})
    before = cleaner.started_at - 60
    after = cleaner.started_at + 1
    common = {"target": TARGET.name, "thing_name": "t"}
    ledger.journal_open(
        serial="other", station_id="st-2", stage=Stage.CLEANUP_PENDING, attempt_id="a1", **common
    )
    ledger.journal_open(serial="nostation", stage=Stage.CLEANUP_PENDING, attempt_id="a2", **common)
    ledger.journal_open(serial="live", station_id=STATION, stage="registered", attempt_id="live", **common)
    young = ledger.journal_open(
        serial="young", station_id=STATION, stage="attached", attempt_id="a4", **common
    )
    ledger.backdate(young, after)
    killed = ledger.journal_open(
        serial="killed", station_id=STATION, stage="attached", attempt_id="a5", **common
    )
    ledger.backdate(killed, before)
    # Opened before the cleaner started, but updated a moment ago: another process under this station id.
    busy = ledger.journal_open(serial="busy", station_id=STATION, stage="attached", attempt_id="a7", **common)
    ledger.backdate(busy, before, updated_at=cleaner.started_at)
    ledger.journal_open(
        serial="pending", station_id=STATION, stage=Stage.CLEANUP_PENDING, attempt_id="a6", **common
    )

    assert cleaner.run_once() is True
    still_open = sorted(e.serial for e in ledger.open_journals())
    assert still_open == ["busy", "live", "nostation", "other", "young"]


def test_the_thread_backs_off_gives_up_after_max_attempts_and_stops_with_the_line() -> None:
    rig = failed_rollback_rig()
    calls: list[float] = []
    run = runner(rig.ledger, rig.registry)

    def counted(include: Any, on_event: Any) -> Any:
        calls.append(time.monotonic())
        return run(include, on_event)

    cleaner = Cleaner(
        rig.ledger, run=counted, station_id=STATION, interval_s=0.05, max_interval_s=0.2, max_attempts=4
    ).start()
    try:
        deadline = time.monotonic() + 10
        while cleaner.gave_up < 1:
            assert time.monotonic() < deadline, "the cleaner never gave up"
            time.sleep(0.02)
        rounds = cleaner.rounds
        time.sleep(0.5)
        assert len(calls) == 4  # bounded: no reconcile call after max_attempts
        assert cleaner.rounds > rounds  # still counting, so the screen keeps showing it
        assert cleaner.pending == 1
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert gaps[0] >= 0.09 and gaps[-1] >= 0.18  # 0.1, 0.2, 0.2: doubling up to the maximum
    finally:
        cleaner.stop(5)
    assert cleaner._thread is not None and not cleaner._thread.is_alive()


class CleaningContext(FakeContext):
    """The line's wiring over fakes, with what the cleaner needs: a ledger, a station id and reconcile."""

    def __init__(self) -> None:
        super().__init__(slots=1)
        self.ledger = self.rig.ledger
        self.station_id = STATION
        self.config = type("Config", (), {"cleanup_interval_s": 0.05, "cleanup_max_interval_s": 0.1})()
        self.registry.faults["rollback"] = refused()
        self.registry.faults["revoke"] = refused()
        self.rig.verifier.fault = UnitFault("Verify failed", "no echo", "Rework bin.")
        self._run = runner(self.ledger, self.registry)

    def prepare(self, serial: str, **kw: Any) -> Any:
        request = super().prepare(serial, **kw)
        return type(request)(**{**request.__dict__, "station_id": STATION})

    def reconcile(self, *, include: Any = None, on_event: Any = None) -> Any:
        return self._run(include, on_event)


def test_a_line_cleans_up_by_itself_and_counts_what_is_pending() -> None:
    ctx = CleaningContext()
    line = Line.from_context(ctx)
    try:
        line.scan("SN00000001")
        assert line.wait_idle(10)
        (result,) = line.results()
        assert result.outcome == Outcome.ERROR and result.title == "Cleanup pending"
        deadline = time.monotonic() + 10
        while line.cleanup_pending() != 1:
            assert time.monotonic() < deadline, "the pending entry was never counted"
            time.sleep(0.02)
        assert len(ctx.registry.certificates) == 1

        ctx.registry.faults.clear()  # AWS answers again: no command is run
        while line.cleanup_pending() != 0:
            assert time.monotonic() < deadline, "the line never cleaned up"
            time.sleep(0.02)
        assert ctx.registry.certificates == {} and ctx.ledger.open_journals() == []
    finally:
        line.stop(10)


@pytest.mark.parametrize(
    "bad", [dict(interval_s=0), dict(interval_s=2, max_interval_s=1), dict(max_attempts=0)]
)
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Cleaner(FakeLedger(Log()), run=lambda i, e: [], station_id=STATION, **bad)


def test_a_serial_already_in_progress_is_refused_in_another_slot() -> None:
    """Ownership of a unit's thing rests on one attempt per unit at a time."""
    ctx = FakeContext(slots=2)
    ctx.gates = {"SN00000001": threading.Event()}
    line = Line.from_context(ctx)
    try:
        assert line.scan("SN00000001") == "s1"
        with pytest.raises(InputError) as refused:
            line.scan("SN00000001", slot="s2")
        assert refused.value.title == "Unit already in progress" and "slot s1" in refused.value.message
        assert [s.state for s in line.slots()] == ["busy", "idle"]
        ctx.gates["SN00000001"].set()
        assert line.wait_idle(10)
        assert line.scan("SN00000001", slot="s2") == "s2"  # once done, a rescan is the line's business again
        ctx.gates["SN00000001"].set()
        assert line.wait_idle(10)
    finally:
        line.stop(10)
