"""The pipeline against in-process fakes: step order, overlap, rollback, journal, outcomes, events, the key."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from typing import Any

import pytest
from pipeline_fakes import (
    FAKE_KEY_MARK,
    Caps,
    FakeFlasher,
    FakeLedger,
    FakeRegistry,
    FakeVerifier,
    Log,
    fake_new_identity,
    fake_pem,
    fake_record,
    make_rig,
)

from station.errors import InputError, StationFault, UnitFault
from station.model import Identity, Outcome
from station.pipeline import Pipeline


def unit(msg: str = "no echo") -> UnitFault:
    return UnitFault("Verify failed", msg, "Put the unit in the rework bin.")


def station(msg: str = "cloud down") -> StationFault:
    return StationFault("AWS unreachable", msg, "Call a technician.")


def assert_nothing_left(rig: Any) -> None:
    assert rig.registry.certificates == {}, "a certificate was left registered"
    assert rig.registry.things == set(), "a thing was left behind"


# ------------------------------------------------------------------------------------------------ PASS


def test_pass_runs_the_steps_in_order_and_records_once() -> None:
    rig = make_rig()
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.PASS, result.message
    names = rig.log.names()
    # identify before anything else; journal before any AWS call; verify after both write and register;
    # the record before the journal closes.
    assert names[0] == "flasher.identify"
    assert names.index("journal.open") < names.index("registry.register")
    assert names.index("verify") > names.index("flasher.write.end")
    assert names.index("verify") > names.index("registry.attach")
    assert names.index("ledger.record") < names.index("journal.close")
    assert names[-1] == "journal.close"

    assert len(rig.ledger.records) == 1
    record = rig.ledger.records[0]
    assert record.outcome == "PASS"
    assert record.certificate_id in rig.registry.certificates
    assert record.thing_name == "widget-SN00000001"
    assert rig.flasher.certificate is not None and rig.flasher.has_key
    assert rig.ledger.open_journals() == []
    assert result.journal_closed and result.recorded
    # The verify used the unit's own key, at the registry's data endpoint.
    assert rig.verifier.calls == [
        {"thing_name": "widget-SN00000001", "host": "data.fake.example", "port": 8883, "had_key": True}
    ]


def test_event_sequence_of_a_pass() -> None:
    rig = make_rig()
    rig.pipeline.run(rig.request(), rig.flasher)
    kinds = [(e.kind, e.step) for e in rig.events]

    assert kinds[0] == ("unit_started", "")
    assert kinds[-1] == ("unit_finished", "")
    steps = [e.step for e in rig.events if e.kind == "step_finished"]
    assert steps[:2] == ["identify", "identity"]
    assert sorted(steps[2:4]) == ["register", "write"]
    assert steps[4:] == ["verify", "record"]
    for e in rig.events:
        if e.kind == "step_finished":
            assert e.outcome == "ok" and e.duration_ms is not None and e.duration_ms >= 0
    # every step_started has its step_finished
    started = sorted(e.step for e in rig.events if e.kind == "step_started")
    assert started == sorted(steps)
    final = rig.events[-1]
    assert final.outcome == "PASS" and final.title and final.next_action
    assert final.data["certificate_id"] and final.data["thing_name"] == "widget-SN00000001"
    assert all(e.serial == "SN00000001" and e.slot == "s1" for e in rig.events)
    # The ledger receives the very same events the callback sees, with the record (so not the end of the
    # step that writes it).
    assert rig.ledger.events == [
        e for e in rig.events if not (e.kind == "step_finished" and e.step == "record")
    ]


def test_write_and_register_overlap() -> None:
    log = Log()
    rig = make_rig(
        log=log,
        flasher=FakeFlasher(log, device_id="SN00000001", write_delay=0.3),
        registry=FakeRegistry(log, delays={"register": 0.3}),
    )
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.PASS
    # Serial 0.3 s and cloud 0.3 s: overlapped the pair takes ≈ 0.3 s, in sequence it would be ≥ 0.6 s.
    assert result.timings_ms["write"] >= 300 and result.timings_ms["register"] >= 300
    assert result.timings_ms["total"] < 500, result.timings_ms
    # Both were under way before either had finished.
    assert log.at("registry.register") < log.at("flasher.write.end")
    assert log.at("flasher.write.start") < log.at("registry.attach")


# ------------------------------------------------------------------------------------------ rollbacks


def test_verify_failure_rolls_back_and_wipes() -> None:
    log = Log()
    rig = make_rig(log=log, verifier=FakeVerifier(log, fault=unit("no echo came back")))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.FAIL
    assert result.message == "no echo came back"
    assert_nothing_left(rig)
    assert rig.flasher.wiped and rig.flasher.certificate is None
    assert [(c.action, c.ok) for c in result.compensations] == [("rollback", True), ("wipe", True)]
    record = rig.ledger.records[0]
    assert record.outcome == "FAIL"
    assert [c["action"] for c in record.compensations] == ["rollback", "wipe"]
    comp_events = [(e.step, e.outcome) for e in rig.events if e.kind == "compensation"]
    assert comp_events == [("rollback", "ok"), ("wipe", "ok")]
    assert rig.ledger.open_journals() == []
    # AWS is cleaned up before the device, and the record is written after both.
    names = log.names()
    assert names.index("registry.rollback") < names.index("flasher.wipe") < names.index("ledger.record")


def test_write_failure_after_registration_rolls_back() -> None:
    log = Log()
    disconnect = UnitFault("Device stopped answering", "The device went silent mid-write.", "Rework bin.")
    rig = make_rig(
        log=log,
        # The write fails late, when the cloud side has long finished registering.
        flasher=FakeFlasher(
            log, device_id="SN00000001", write_delay=0.1, faults={"write_identity": disconnect}
        ),
    )
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.FAIL
    assert result.title == "Device stopped answering"
    assert log.at("registry.attach") < log.at("flasher.write_identity.failed")
    assert_nothing_left(rig)
    assert rig.flasher.wiped
    assert "verify" not in log.names()
    assert [c.action for c in result.compensations] == ["rollback", "wipe"]
    assert len(rig.ledger.records) == 1 and rig.ledger.open_journals() == []


def test_cloud_failure_after_certificate_registered_rolls_back_what_was_made() -> None:
    log = Log()
    rig = make_rig(log=log, registry=FakeRegistry(log, faults={"attach": station("attach refused")}))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR
    assert result.message == "attach refused"
    assert_nothing_left(rig)  # certificate and the thing this attempt made are both gone
    assert rig.flasher.wiped
    assert rig.ledger.open_journals() == []


def test_register_failure_checks_for_a_hidden_registration() -> None:
    log = Log()
    registry = FakeRegistry(log, faults={"register": station("timed out")})
    rig = make_rig(log=log, registry=registry)
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR
    assert "registry.revoke" in log.names()  # it looked, found nothing, so nothing was revoked
    assert [c.action for c in result.compensations] == ["wipe"]
    assert rig.ledger.open_journals() == []


def test_identify_mismatch_fails_before_anything_is_registered() -> None:
    log = Log()
    rig = make_rig(log=log, flasher=FakeFlasher(log, device_id="SN99999999"))
    result = rig.pipeline.run(rig.request("SN00000001"), rig.flasher)

    assert result.outcome == Outcome.FAIL
    assert result.message == "wrong unit in the jig: scanned SN00000001, device says SN99999999."
    assert result.next_action == "Put the right unit in the jig and scan again."
    assert not [n for n in log.names() if n.startswith("registry.") or n.startswith("journal.")]
    assert not rig.flasher.wiped and rig.flasher.certificate is None  # nothing was written, nothing to wipe
    assert result.compensations == []
    assert len(rig.ledger.records) == 1 and rig.ledger.records[0].outcome == "FAIL"
    assert rig.ledger.records[0].device_id == "SN99999999"
    finished = [e for e in rig.events if e.kind == "step_finished"]
    assert [(e.step, e.outcome) for e in finished] == [("identify", "ok"), ("record", "ok")]


def test_device_without_an_id_is_not_cross_checked() -> None:
    log = Log()
    rig = make_rig(log=log, flasher=FakeFlasher(log, device_id=None))
    assert rig.pipeline.run(rig.request("SN00000042"), rig.flasher).outcome == Outcome.PASS


def test_failed_rollback_keeps_the_journal_open_for_reconcile() -> None:
    log = Log()
    registry = FakeRegistry(log, faults={"rollback": station("AWS unreachable")})
    rig = make_rig(log=log, registry=registry, verifier=FakeVerifier(log, fault=unit()))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    # The unit's own fault is named, but the outcome says AWS still holds its certificate: an ERROR, not
    # an ordinary FAIL with "put it in the rework bin".
    assert result.outcome == Outcome.ERROR and result.title == "Cleanup pending"
    assert result.message.startswith("Verify failed: no echo")
    assert (
        "cleanup pending: what this attempt registered in lab-eu is still there (AWS unreachable)"
        in result.message
    )
    assert "rework bin" not in result.next_action
    assert rig.ledger.open_journals()[0].stage == "cleanup_pending"
    assert [(c.action, c.ok) for c in result.compensations] == [("rollback", False), ("wipe", True)]
    assert [(e.step, e.outcome) for e in rig.events if e.kind == "compensation"] == [
        ("rollback", "failed"),
        ("wipe", "ok"),
    ]
    assert len(rig.ledger.records) == 1
    assert len(rig.ledger.open_journals()) == 1  # the certificate is still there: reconcile must see it
    assert not result.journal_closed


def test_ledger_failure_on_record_undoes_a_pass() -> None:
    log = Log()
    ledger = FakeLedger(log, faults={"record_attempt": OSError("disk full")})
    rig = make_rig(log=log, ledger=ledger)
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR
    assert result.title == "Ledger unavailable"
    assert_nothing_left(rig)  # no PASS record → no certificate may stay registered
    assert rig.flasher.wiped
    assert len(rig.ledger.open_journals()) == 1  # no record yet: reconcile writes it later


def test_journal_is_opened_before_register_and_tracks_each_aws_step() -> None:
    log = Log()
    seen: list[int] = []
    ledger = FakeLedger(log)
    registry = FakeRegistry(log, on_register=lambda: seen.append(len(ledger.open_journals())))
    rig = make_rig(log=log, ledger=ledger, registry=registry)
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert seen == [1]
    entry = ledger.journal[1]
    # What register answered rides on the write after the thing is made; attach has no write of its own.
    assert ledger.stages[1] == ["registering", "thing", "verified"]
    assert entry.certificate_id == result.certificate_id
    assert entry.thing_name == result.thing_name
    assert entry.thing_created is True and entry.certificate_created is True
    assert entry.attempt_id == result.attempt_id
    assert entry.closed_at is not None


def test_journal_unavailable_means_no_aws_call() -> None:
    log = Log()
    rig = make_rig(log=log, ledger=FakeLedger(log, faults={"journal_open": OSError("locked")}))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR
    assert not [n for n in log.names() if n.startswith("registry.")]


# ------------------------------------------------------------------------------------ outcome mapping


@pytest.mark.parametrize(
    ("fault", "outcome", "title"),
    [
        (unit("bad"), Outcome.FAIL, "Verify failed"),
        (station("down"), Outcome.ERROR, "AWS unreachable"),
        (InputError("Bad input", "x", "y"), Outcome.ERROR, "Bad input"),
        (RuntimeError("boom"), Outcome.ERROR, "Station error"),
        (KeyError("x"), Outcome.ERROR, "Station error"),
    ],
)
def test_outcome_follows_the_exception_family(fault: Exception, outcome: Outcome, title: str) -> None:
    log = Log()
    rig = make_rig(log=log, verifier=FakeVerifier(log, fault=fault))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == outcome
    assert result.title == title
    assert rig.events[-1].outcome == str(outcome)
    assert_nothing_left(rig)


def test_unexpected_error_is_logged_without_key_material(caplog: pytest.LogCaptureFixture) -> None:
    log = Log()
    leaked = f"-----BEGIN PRIVATE KEY-----\n{FAKE_KEY_MARK}leak\n-----END PRIVATE KEY-----"
    rig = make_rig(log=log, verifier=FakeVerifier(log, fault=ValueError(f"bad key {leaked}")))
    with caplog.at_level(logging.ERROR, logger="station.pipeline"):
        result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR
    assert result.message == "An unexpected error stopped this unit; the details are in the station log."
    assert "ValueError" in caplog.text  # the technician gets the traceback …
    assert FAKE_KEY_MARK not in caplog.text  # … without the key
    assert "private key redacted" in caplog.text


def test_a_station_fault_on_one_side_wins_over_a_unit_fault_on_the_other() -> None:
    log = Log()
    rig = make_rig(
        log=log,
        flasher=FakeFlasher(log, device_id="SN00000001", faults={"write_identity": unit("silent")}),
        registry=FakeRegistry(log, faults={"create_thing": station("throttled out")}),
    )
    result = rig.pipeline.run(rig.request(), rig.flasher)
    assert result.outcome == Outcome.ERROR and result.message == "throttled out"
    assert_nothing_left(rig)


def test_keyboard_interrupt_compensates_records_and_reraises() -> None:
    log = Log()
    rig = make_rig(log=log, verifier=FakeVerifier(log, fault=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        rig.pipeline.run(rig.request(), rig.flasher)
    assert_nothing_left(rig)
    assert rig.flasher.wiped
    assert rig.ledger.records[0].outcome == "ERROR"
    assert rig.ledger.records[0].title == "Station interrupted"
    assert rig.ledger.open_journals() == []


def test_a_broken_event_consumer_does_not_break_the_unit() -> None:
    def explode(event: Any) -> None:
        raise RuntimeError("screen crashed")

    rig = make_rig(on_event=explode)
    assert rig.pipeline.run(rig.request(), rig.flasher).outcome == Outcome.PASS


# ------------------------------------------------------------------------------------- other flows


def test_device_keygen_flow_signs_the_csr_and_verifies_on_the_device() -> None:
    log = Log()
    flasher = FakeFlasher(
        log, device_id="SN00000001", caps=Caps(writes_key=False, device_keygen=True, device_verify=True)
    )
    rig = make_rig(log=log, flasher=flasher)
    result = rig.pipeline.run(rig.request(key_source="device", issuer=object()), flasher)

    assert result.outcome == Outcome.PASS, result.message
    assert result.key_source == "device" and result.verify_mode == "device"
    names = log.names()
    assert names.index("flasher.keygen") < names.index("journal.open")
    assert flasher.certificate is not None and "signed-widget-SN00000001" in flasher.certificate
    assert not flasher.has_key  # the key never left the device
    assert flasher.verify_calls == [("data.fake.example", 8883, "widget-SN00000001")]
    assert rig.verifier.calls == []


def test_auto_key_source_uses_the_device_only_with_an_issuer() -> None:
    caps = Caps(writes_key=True, device_keygen=True, device_verify=True)
    log = Log()
    rig = make_rig(log=log, flasher=FakeFlasher(log, device_id="SN00000001", caps=caps))
    assert rig.pipeline.run(rig.request(key_source="auto"), rig.flasher).key_source == "station"
    assert (
        rig.pipeline.run(rig.request(key_source="auto", issuer=object()), rig.flasher).key_source == "device"
    )


def test_device_that_keeps_its_key_is_read_registered_and_verified_on_device() -> None:
    log = Log()
    own = fake_pem("module-")
    flasher = FakeFlasher(
        log,
        device_id="SN00000001",
        caps=Caps(writes_key=False, reads_certificate=True, device_verify=True),
        own_certificate=own,
    )
    rig = make_rig(log=log, flasher=flasher, verifier=FakeVerifier(log))
    result = rig.pipeline.run(rig.request(), flasher)
    assert result.outcome == Outcome.PASS
    assert result.key_source == "read"
    assert "flasher.write.start" not in log.names()
    assert rig.registry.certificates.keys() == {result.certificate_id}


def test_device_verify_failure_on_a_read_certificate_rolls_back_and_points_the_unit_back() -> None:
    log = Log()
    flasher = FakeFlasher(
        log,
        device_id="SN00000001",
        caps=Caps(writes_key=False, reads_certificate=True, device_verify=True),
        own_certificate=fake_pem("module-"),
        faults={"device_verify": unit("could not connect")},
    )
    rig = make_rig(log=log, flasher=flasher)
    result = rig.pipeline.run(rig.request(), flasher)
    assert result.outcome == Outcome.FAIL
    assert_nothing_left(rig)
    # Nothing was written, but the unit was pointed at the target: the wipe puts it back.
    assert [c.action for c in result.compensations] == ["rollback", "wipe"]


def test_impossible_plan_is_an_error_before_anything_happens() -> None:
    log = Log()
    flasher = FakeFlasher(log, device_id="SN00000001", caps=Caps(writes_key=True, device_keygen=True))
    rig = make_rig(log=log, flasher=flasher)
    result = rig.pipeline.run(rig.request(key_source="device"), flasher)  # no issuer configured
    assert result.outcome == Outcome.ERROR
    assert result.title == "No issuer for device keys"
    assert log.names() == ["flasher.identify", "ledger.record"]


def test_a_port_that_will_not_open_is_a_recorded_error() -> None:
    def will_not_open() -> Any:
        raise StationFault("Port busy", "Another program holds /dev/ttyUSB0.", "Close it and scan again.")

    rig = make_rig()
    result = rig.pipeline.run(rig.request(), open_flasher=will_not_open)
    assert result.outcome == Outcome.ERROR and result.title == "Port busy"
    assert [e.step for e in rig.events if e.kind == "step_finished"] == ["identify", "record"]
    assert len(rig.ledger.records) == 1


def test_a_flasher_opened_by_the_pipeline_is_closed_by_it() -> None:
    rig = make_rig()
    result = rig.pipeline.run(rig.request(), open_flasher=lambda: rig.flasher)
    assert result.outcome == Outcome.PASS and result.family == "fake"
    assert rig.flasher.closed
    # … but one handed in stays open: it belongs to the caller.
    other = FakeFlasher(rig.log, device_id="SN00000001")
    rig.pipeline.run(rig.request(), other)
    assert not other.closed


# --------------------------------------------------------------------------------------------- the key


def test_the_key_is_never_in_events_or_records_and_is_dropped_after_verify() -> None:
    made: list[weakref.ref[Identity]] = []

    def tracking_new_identity(common_name: str, **kw: Any) -> Identity:
        identity = fake_new_identity(common_name, **kw)
        made.append(weakref.ref(identity))
        return identity

    log = Log()
    verifier = FakeVerifier(log)
    rig = make_rig(log=log, verifier=verifier)
    pipeline = Pipeline(
        ledger=rig.ledger,
        registry_for=lambda target: rig.registry,
        verifier=verifier,
        new_identity=tracking_new_identity,
        sign_csr=lambda *a, **k: "",
        certificate_id=lambda pem: "x" * 64,
        record_factory=fake_record,
        on_event=rig.events.append,
    )
    result = pipeline.run(rig.request(), rig.flasher)
    assert result.outcome == Outcome.PASS
    gc.collect()
    assert made and made[0]() is None, "something still holds the unit's identity (and its key)"
    blob = repr(rig.events) + repr(rig.ledger.records) + repr(result)
    assert FAKE_KEY_MARK not in blob and "PRIVATE KEY" not in blob


def test_the_key_is_dropped_after_a_failed_verify_too() -> None:
    made: list[weakref.ref[Identity]] = []

    def tracking_new_identity(common_name: str, **kw: Any) -> Identity:
        identity = fake_new_identity(common_name, **kw)
        made.append(weakref.ref(identity))
        return identity

    log = Log()
    rig = make_rig(log=log, verifier=FakeVerifier(log, fault=unit()))
    rig.pipeline._new_identity = tracking_new_identity
    result = rig.pipeline.run(rig.request(), rig.flasher)
    assert result.outcome == Outcome.FAIL
    gc.collect()
    assert made and made[0]() is None


def test_the_targets_server_ca_goes_to_the_device_with_the_identity() -> None:
    rig = make_rig()
    rig.pipeline.run(rig.request(ca_bytes=b"-----BEGIN CERTIFICATE-----\nLAB\n"), rig.flasher)
    assert rig.flasher.ca_pem == "-----BEGIN CERTIFICATE-----\nLAB\n"
    assert rig.verifier.calls[0]["had_key"]


def test_one_pipeline_serves_several_units_at_once() -> None:
    log = Log()
    registry = FakeRegistry(log, delays={"register": 0.05})
    rig = make_rig(log=log, registry=registry)
    flashers = [FakeFlasher(log, device_id=f"SN0000000{i}", write_delay=0.05) for i in range(4)]
    results: list[Any] = []

    def run(i: int) -> None:
        results.append(rig.pipeline.run(rig.request(f"SN0000000{i}", slot=f"s{i}"), flashers[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(r.outcome for r in results) == [Outcome.PASS] * 4
    assert len(registry.certificates) == 4 and len(rig.ledger.records) == 4
    assert rig.ledger.open_journals() == []
