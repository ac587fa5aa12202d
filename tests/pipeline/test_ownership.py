"""Ownership follows the identity's origin (issue 9, point 8): a certificate this attempt generated can only be
in AWS because this attempt registered it, so an "already exists" answer (its own register processed, the
answer lost, the retry refused) does not make it someone else's. Only a certificate read from the unit may
conclude "not ours". And when the undo itself fails, the unit's outcome says so."""

from __future__ import annotations

from typing import Any

from pipeline_fakes import (
    Caps,
    FakeFlasher,
    FakeRegistry,
    FakeVerifier,
    Log,
    Registration,
    fake_certificate_id,
    fake_pem,
    make_rig,
)

from station.errors import StationFault, UnitFault
from station.identity import Identity
from station.journal import Stage
from station.model import Outcome


class LostAnswerRegistry(FakeRegistry):
    """AWS registered the certificate, the answer was lost, the retry met "already exists": created=False."""

    def register(self, identity: Identity, *, origin: str = "unit") -> Registration:
        super().register(identity, origin=origin)
        return Registration(identity.certificate_id, "arn:aws:iot:eu-west-1:111122223333:cert/x", False)


def verify_fails() -> UnitFault:
    return UnitFault("Verify failed", "no echo", "Put the unit in the rework bin.")


def test_a_station_key_certificate_met_as_already_registered_is_still_this_attempts() -> None:
    log = Log()
    registry = LostAnswerRegistry(log)
    rig = make_rig(log=log, registry=registry, verifier=FakeVerifier(log, fault=verify_fails()))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.FAIL
    assert registry.certificates == {}, "the attempt's own certificate was left registered"
    (entry,) = rig.ledger.journal.values()
    assert entry.certificate_created is True and entry.registry_answer == "already registered"
    assert entry.closed_at is not None and entry.stage == "rolled_back"
    (record,) = rig.ledger.records
    assert record.compensations[0] == {
        "action": "rollback",
        "ok": True,
        "detail": "What this attempt made in AWS was deleted.",
    }


def test_a_device_key_whose_csr_this_attempt_signed_is_owned_too() -> None:
    log = Log()
    registry = LostAnswerRegistry(log)
    flasher = FakeFlasher(
        log,
        device_id="SN00000001",
        caps=Caps(writes_key=False, device_keygen=True, device_verify=True),
        faults={"device_verify": verify_fails()},
    )
    rig = make_rig(log=log, registry=registry, flasher=flasher)
    result = rig.pipeline.run(rig.request(key_source="device", issuer=object()), flasher)

    assert result.key_source == "device" and result.outcome == Outcome.FAIL
    assert registry.certificates == {}
    assert rig.ledger.journal[1].certificate_created is True


def test_a_certificate_read_from_the_unit_and_already_registered_is_kept() -> None:
    log = Log()
    registry = FakeRegistry(log)
    own = fake_pem("module-")
    flasher = FakeFlasher(
        log,
        device_id="SN00000001",
        caps=Caps(writes_key=False, reads_certificate=True, device_verify=True),
        own_certificate=own,
        faults={"device_verify": verify_fails()},
    )
    rig = make_rig(log=log, registry=registry, flasher=flasher)
    # Registered before this attempt (e.g. by the module's maker): not this attempt's to delete.
    cid = fake_certificate_id(own)
    registry.certificates[cid] = {"status": "ACTIVE", "things": set(), "policy": False}

    result = rig.pipeline.run(rig.request(), flasher)

    assert result.key_source == "read" and result.outcome == Outcome.FAIL
    assert cid in registry.certificates
    assert rig.ledger.journal[1].certificate_created is False
    detail = rig.ledger.records[0].compensations[0]["detail"]
    assert "registered before this attempt and was kept" in detail
    assert "was deleted" not in detail


def test_an_undo_that_fails_is_an_error_that_says_cleanup_is_pending() -> None:
    log = Log()
    down = StationFault(
        "AWS IoT refused a request", "UpdateCertificate was refused (403).", "Call a technician."
    )
    registry = FakeRegistry(log, faults={"rollback": down})
    rig = make_rig(log=log, registry=registry, verifier=FakeVerifier(log, fault=verify_fails()))
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR and result.title == "Cleanup pending"
    assert "the station will remove it when AWS answers" in result.message
    assert "rework bin" not in result.next_action and "cleanup pending" in result.next_action
    assert len(registry.certificates) == 1  # the fake's rollback really failed
    (entry,) = rig.ledger.open_journals()
    assert entry.stage == Stage.CLEANUP_PENDING
    (record,) = rig.ledger.records
    assert record.outcome == "ERROR" and record.title == "Cleanup pending"
    finished = [e for e in rig.events if e.kind == "unit_finished"]
    assert finished[-1].title == "Cleanup pending"


def test_a_failed_register_whose_hidden_registration_cannot_be_undone_is_pending_too() -> None:
    log = Log()
    faults: dict[str, Any] = {
        "register": StationFault("AWS IoT unreachable", "ReadTimeoutError", "Check the network."),
        "revoke": StationFault("AWS IoT unreachable", "EndpointConnectionError", "Check the network."),
    }
    rig = make_rig(log=log, registry=FakeRegistry(log, faults=faults))
    result = rig.pipeline.run(rig.request(), rig.flasher)
    assert result.outcome == Outcome.ERROR and result.title == "Cleanup pending"
    assert rig.ledger.open_journals()[0].stage == Stage.CLEANUP_PENDING


class LostThingRegistry(FakeRegistry):
    """CreateThing took effect in AWS; every answer was lost (the real registry says "maybe created")."""

    def create_thing(self, name: str) -> bool:
        super().create_thing(name)
        error = StationFault(
            "AWS IoT unreachable", "CreateThing: ConnectionClosedError.", "Check the network."
        )
        error.thing_maybe_created = name  # type: ignore[attr-defined]
        raise error


def test_a_thing_whose_create_answer_was_lost_is_the_attempts_and_is_deleted() -> None:
    log = Log()
    registry = LostThingRegistry(log)
    rig = make_rig(log=log, registry=registry)
    result = rig.pipeline.run(rig.request(), rig.flasher)

    assert result.outcome == Outcome.ERROR and result.title == "AWS IoT unreachable"
    assert result.thing_created is True
    assert registry.things == set() and registry.certificates == {}
    (entry,) = rig.ledger.journal.values()
    assert entry.thing_created is True and entry.thing_answer == "lost" and entry.closed_at is not None


def test_a_thing_that_failed_without_the_registry_saying_maybe_is_not_claimed() -> None:
    log = Log()
    registry = FakeRegistry(log, faults={"create_thing": StationFault("Thing type missing", "x", "y")})
    rig = make_rig(log=log, registry=registry)
    registry.things.add("widget-SN00000001")  # someone else's thing of that name
    result = rig.pipeline.run(rig.request(), rig.flasher)
    assert result.outcome == Outcome.ERROR and result.thing_created is False
    assert registry.things == {"widget-SN00000001"}
