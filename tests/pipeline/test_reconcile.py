"""Reconcile against fakes: a station "killed" at a given moment is the state its ledger and registry hold at
that moment, so each test snapshots both there and runs reconcile on the snapshot."""

from __future__ import annotations

import copy
from typing import Any

from pipeline_fakes import TARGET, FakeLedger, FakeRegistry, FakeVerifier, Log, fake_record, make_rig

from station.errors import StationFault, UnitFault
from station.model import Outcome
from station.pipeline import RECONCILE_MESSAGE, reconcile


class Snapshot:
    """Freezes the ledger's and the registry's state when called (the instant the station 'dies')."""

    def __init__(self) -> None:
        self.rig: Any = None
        self.ledger: FakeLedger | None = None
        self.registry: FakeRegistry | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        log = Log()
        self.ledger = FakeLedger(log)
        self.ledger.journal = copy.deepcopy(self.rig.ledger.journal)
        self.ledger.records = copy.deepcopy(self.rig.ledger.records)
        self.ledger.stages = copy.deepcopy(self.rig.ledger.stages)
        self.registry = FakeRegistry(log)
        self.registry.certificates = copy.deepcopy(self.rig.registry.certificates)
        self.registry.things = set(self.rig.registry.things)


def run_reconcile(ledger: FakeLedger, registry: FakeRegistry, **kw: Any) -> list[Any]:
    return reconcile(
        ledger,
        targets={TARGET.name: TARGET},
        registry_for=lambda target: registry,
        record_factory=fake_record,
        **kw,
    )


def test_killed_between_register_and_verify_then_reconcile_leaves_no_orphan() -> None:
    snap = Snapshot()
    log = Log()
    rig = make_rig(log=log, verifier=FakeVerifier(log))
    rig.verifier.fault = None
    original_call = rig.verifier.__call__

    def dying_verifier(identity: Any, **kw: Any) -> Any:
        snap()  # the station dies here: registered, written, not verified, nothing recorded
        return original_call(identity, **kw)

    snap.rig = rig
    rig.pipeline._verifier = dying_verifier  # type: ignore[assignment]
    rig.pipeline.run(rig.request(), rig.flasher)

    assert snap.ledger is not None and snap.registry is not None
    assert len(snap.registry.certificates) == 1 and snap.ledger.records == []
    assert len(snap.ledger.open_journals()) == 1

    items = run_reconcile(snap.ledger, snap.registry)

    assert [i.action for i in items] == ["rolled_back"]
    assert snap.registry.certificates == {} and snap.registry.things == set()
    assert snap.ledger.open_journals() == []
    (record,) = snap.ledger.records
    assert record.outcome == "ERROR" and record.message == RECONCILE_MESSAGE
    assert record.serial == "SN00000001" and record.certificate_id == items[0].certificate_id
    events = [e for e in snap.ledger.events if e.kind == "compensation" and e.step == "reconcile"]
    assert len(events) == 1 and events[0].outcome == "ok"


def test_killed_inside_register_before_the_journal_was_updated() -> None:
    snap = Snapshot()
    log = Log()
    rig = make_rig(log=log)
    snap.rig = rig
    original = rig.registry.create_thing

    def dying_create_thing(name: str) -> bool:
        snap()
        return original(name)

    rig.registry.create_thing = dying_create_thing  # type: ignore[method-assign]
    rig.pipeline.run(rig.request(), rig.flasher)
    assert snap.ledger is not None and snap.registry is not None
    # register's answer is not journaled on its own: the entry still says what it said before register,
    # and its certificate id (journaled at open) is all reconcile needs to revoke the certificate.
    (entry,) = snap.ledger.open_journals()
    assert entry.stage == "registering" and entry.certificate_created is None
    assert entry.certificate_id in snap.registry.certificates

    items = run_reconcile(snap.ledger, snap.registry)
    assert [i.action for i in items] == ["rolled_back"]
    assert snap.registry.certificates == {}
    assert len(snap.ledger.records) == 1 and snap.ledger.open_journals() == []


def test_killed_while_attaching_the_journal_already_owns_the_thing() -> None:
    """The thing this attempt made is journaled before attach: a station killed there loses neither the
    certificate nor the thing (AWS cannot tell reconcile who made a thing; only the journal can)."""
    snap = Snapshot()
    rig = make_rig(log=Log())
    snap.rig = rig
    original = rig.registry.attach

    def dying_attach(registration: Any, thing_name: str) -> None:
        original(registration, thing_name)
        snap()  # attached in AWS, the station dies before anything else is written

    rig.registry.attach = dying_attach  # type: ignore[method-assign]
    rig.pipeline.run(rig.request(), rig.flasher)
    assert snap.ledger is not None and snap.registry is not None
    (entry,) = snap.ledger.open_journals()
    assert (entry.stage, entry.thing_created, entry.certificate_created) == ("thing", True, True)
    assert entry.certificate_arn and entry.thing_name in snap.registry.things

    items = run_reconcile(snap.ledger, snap.registry)
    assert [i.action for i in items] == ["rolled_back"]
    assert snap.registry.certificates == {} and snap.registry.things == set()
    assert len(snap.ledger.records) == 1 and snap.ledger.open_journals() == []


def test_create_thing_refused_still_journals_what_register_answered() -> None:
    log = Log()
    registry = FakeRegistry(log, faults={"create_thing": StationFault("AWS refused", "no", "")})
    rig = make_rig(log=log, registry=registry)
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR
    entry = rig.ledger.journal[1]
    assert rig.ledger.stages[1][:2] == ["registering", "registered"]
    assert entry.certificate_created is True and entry.certificate_id == result.certificate_id
    assert entry.thing_created is False and rig.registry.certificates == {}


def test_killed_after_the_pass_record_keeps_the_unit() -> None:
    rig = make_rig()
    result = rig.pipeline.run(rig.request(), rig.flasher)
    assert result.outcome == Outcome.PASS
    rig.ledger.reopen(1)  # as if the station died between the record and the close

    items = run_reconcile(rig.ledger, rig.registry)
    assert [i.action for i in items] == ["kept"]
    assert result.certificate_id in rig.registry.certificates
    assert len(rig.ledger.records) == 1 and rig.ledger.open_journals() == []


def test_failed_rollback_is_finished_by_reconcile_without_a_second_record() -> None:
    log = Log()
    registry = FakeRegistry(log, faults={"rollback": StationFault("AWS unreachable", "down", "Call.")})
    rig = make_rig(
        log=log, registry=registry, verifier=FakeVerifier(log, fault=UnitFault("Verify failed", "x", "y"))
    )
    rig.pipeline.run(rig.request(), rig.flasher)
    assert len(registry.certificates) == 1 and len(rig.ledger.open_journals()) == 1

    items = run_reconcile(rig.ledger, registry)
    assert [i.action for i in items] == ["rolled_back"]
    assert registry.certificates == {} and registry.things == set()
    assert [r.outcome for r in rig.ledger.records] == [
        "ERROR"
    ]  # the pipeline's record stands (cleanup pending)
    assert rig.ledger.open_journals() == []


def test_unreachable_registry_leaves_the_journal_open_until_a_later_run() -> None:
    snap = Snapshot()
    log = Log()
    rig = make_rig(log=log)
    snap.rig = rig
    rig.verifier.fault = None
    rig.pipeline._verifier = lambda identity, **kw: snap()  # type: ignore[assignment,misc]
    # The "killed" run: the verifier snapshots and returns, the live rig then finishes (we ignore it).
    rig.pipeline.run(rig.request(), rig.flasher)
    assert snap.ledger is not None and snap.registry is not None

    snap.registry.faults["revoke"] = StationFault("AWS unreachable", "The control plane did not answer.", "x")
    items = run_reconcile(snap.ledger, snap.registry)
    assert [i.action for i in items] == ["failed"]
    assert "did not answer" in items[0].detail
    assert len(snap.ledger.open_journals()) == 1 and snap.ledger.records == []

    del snap.registry.faults["revoke"]
    items = run_reconcile(snap.ledger, snap.registry)
    assert [i.action for i in items] == ["rolled_back"]
    assert snap.registry.certificates == {} and snap.ledger.open_journals() == []


def test_target_filter_and_unknown_targets() -> None:
    log = Log()
    ledger = FakeLedger(log)
    registry = FakeRegistry(log)
    ledger.journal_open(serial="A", target="elsewhere", certificate_id="c1", thing_name="t", attempt_id="a1")
    ledger.journal_open(serial="B", target=TARGET.name, certificate_id="c2", thing_name="t2", attempt_id="a2")

    items = run_reconcile(ledger, registry, only_target=TARGET.name)
    assert [(i.serial, i.action) for i in items] == [("B", "nothing_registered")]
    items = run_reconcile(ledger, registry)
    assert [(i.serial, i.action) for i in items] == [("A", "failed")]
    assert "not in the station configuration" in items[0].detail
    assert [e.serial for e in ledger.open_journals()] == ["A"]


def test_young_entries_are_skipped_with_a_minimum_age() -> None:
    log = Log()
    ledger = FakeLedger(log)
    ledger.backdate(ledger.journal_open(serial="A", target=TARGET.name, certificate_id="c1"), 1000.0)
    items = run_reconcile(ledger, FakeRegistry(log), min_age_s=60, now=lambda: 1010.0)
    assert [i.action for i in items] == ["skipped"] and len(ledger.open_journals()) == 1
    items = run_reconcile(ledger, FakeRegistry(log), min_age_s=60, now=lambda: 1100.0)
    assert [i.action for i in items] == ["nothing_registered"] and ledger.open_journals() == []
