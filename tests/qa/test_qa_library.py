"""`station.qa` as the TUI's QA desk will use it: imports, records and events, thing rules, failures.

The cloud side is a real lab (one per module); a few failure cases replace one registry with a stand-in that
fails, to show that the other work still happens and that what was done is recorded honestly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qa_rig import (
    CERTS,
    HOME,
    KEYCHAIN_CER,
    KEYCHAIN_P12,
    OTHER_ACCOUNT,
    REGIONS,
    certificate_status,
    device_connect_error,
    fresh_serial,
    observer,
    thing_exists,
    write_unit_files,
)

from station import qa
from station.config import StationConfig, load_config
from station.context import registry_factory
from station.errors import CertificateRejected, InputError, StationFault
from station.lab import Lab
from station.ledger import AttemptRecord, Ledger, open_ledger
from station.model import Event, Target
from station.registry import Check

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("qa-lib-lab"), accounts=2, regions=REGIONS) as running:
        yield running


@pytest.fixture(scope="module")
def config(lab: Lab) -> StationConfig:
    return load_config(lab.config_path)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with open_ledger(tmp_path / "ledger.sqlite") as book:
        yield book


def offline_config(tmp_path: Path, *names: str) -> StationConfig:
    """A config with targets that are never reached (for plans and stand-in registries)."""
    targets = {
        name: Target(
            name=name, region=f"eu-west-{i + 1}", policy_name="p", policy_document="{}", account_id="1" * 12
        )
        for i, name in enumerate(names)
    }
    return StationConfig(
        path=tmp_path / "station.toml", station_id="qa-test", ledger_path=tmp_path / "l", targets=targets
    )


def pass_record(serial: str, target: str, cert_id: str, thing: str, **extra: Any) -> AttemptRecord:
    return AttemptRecord(
        attempt_id=f"{serial}-{target}-{cert_id[:6]}-{time.monotonic_ns()}",
        serial=serial,
        outcome="PASS",
        thing_name=thing,
        certificate_id=cert_id,
        target=target,
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------- import


def test_load_certificate_takes_every_pairing_and_checks_aws_rules() -> None:
    pair = qa.load_certificate(KEYCHAIN_CER, p12=KEYCHAIN_P12)
    assert pair.private_key is not None  # the key from the .p12 (empty password)
    alone = qa.load_certificate(p12=KEYCHAIN_P12)
    assert alone.certificate_id == pair.certificate_id
    assert qa.load_certificate(CERTS / "cert-only.p12").private_key is None
    assert qa.load_certificate(CERTS / "ec-p256-secret.p12", password=b"secret").private_key is not None
    assert qa.load_certificate(CERTS / "ec-p256.pem", key=CERTS / "ec-p256.key").private_key is not None
    with pytest.raises(InputError, match="twice"):
        qa.load_certificate(KEYCHAIN_CER, key=CERTS / "ec-p256.key", p12=KEYCHAIN_P12)
    with pytest.raises(InputError):
        qa.load_certificate(CERTS / "ec-p256.pem", key=CERTS / "rsa-2048.key")  # not its key
    with pytest.raises(CertificateRejected):
        qa.load_certificate(CERTS / "bad-sha1.pem")
    with pytest.raises(InputError, match="certificate"):
        qa.load_certificate()
    assert "PRIVATE KEY" not in repr(pair)


def test_unit_names_check_serial_and_thing_before_anything(tmp_path: Path, config: StationConfig) -> None:
    target = config.targets[HOME]
    assert qa.unit_names(config, target, " SIM0001 ") == ("SIM0001", "sim", "sim-SIM0001")
    assert qa.unit_names(config, target, "SIM0001", thing="custom-thing")[2] == "custom-thing"
    with pytest.raises(InputError, match="thing name"):
        qa.unit_names(config, target, "SIM0001", thing="has space")
    with pytest.raises(InputError, match="does not match"):
        qa.unit_names(config, target, "SIM12")
    bare = offline_config(tmp_path, "t1")  # no products: the {product} of the template is unknown
    with pytest.raises(InputError) as error:
        qa.unit_names(bare, bare.targets["t1"], "ABC")
    assert "--product" in error.value.next_action


# ---------------------------------------------------------------------------------------------- register


def test_register_records_who_did_what_and_never_the_key(
    lab: Lab, config: StationConfig, ledger: Ledger, tmp_path: Path
) -> None:
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "recorded")
    identity = qa.load_certificate(files["pem"], key=files["key"])
    seen: list[Event] = []
    result = qa.register_certificate(
        config,
        ledger,
        identity,
        serial=serial,
        target=HOME,
        operator="qa-bob",
        verify=True,
        source="recorded.pem",
        on_event=seen.append,
    )
    assert result.verify is not None and result.verify["messages"] == 3
    assert result.thing_created and result.policy_attached and result.thing_attached
    (record,) = ledger.find(serial)
    assert record.operator == "qa-bob" and record.slot == qa.QA_SLOT and record.outcome == "PASS"
    assert record.key_source == "file" and record.verify_mode == "host"
    assert (
        record.certificate_pem == device.certificate_pem and record.certificate_arn == result.certificate_arn
    )
    assert record.extra["thing_created"] is True and record.extra["source"] == "recorded.pem"
    assert {"register", "verify", "total"} <= set(record.timings_ms)
    notes = [e for e in seen if e.kind == "note"]
    assert [(e.step, e.outcome, e.data["operator"]) for e in notes] == [("qa:register", "ok", "qa-bob")]
    assert [e.step for e in seen if e.kind == "step_finished"] == ["register", "verify"]
    assert ledger.journal_pending() == []
    assert "PRIVATE KEY" not in repr(result.as_dict()) + repr(record.to_dict())


def test_an_interrupted_register_is_rolled_back_and_recorded(
    lab: Lab, config: StationConfig, ledger: Ledger, tmp_path: Path
) -> None:
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "interrupted")
    identity = qa.load_certificate(files["pem"], key=files["key"])

    def ctrl_c(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qa.register_certificate(
            config, ledger, identity, serial=serial, target=HOME, operator="qa", verify=True, verifier=ctrl_c
        )
    assert certificate_status(lab, HOME, device.certificate_id) is None
    assert not thing_exists(lab, HOME, f"sim-{serial}")
    (record,) = ledger.find(serial)
    assert record.outcome == "ERROR" and record.title == "Station interrupted"
    assert [c["action"] for c in record.compensations] == ["rollback"] and record.compensations[0]["ok"]
    assert ledger.journal_pending() == []


def test_a_thing_the_station_did_not_make_is_kept_on_revoke(
    lab: Lab, config: StationConfig, ledger: Ledger, tmp_path: Path
) -> None:
    serial = fresh_serial()
    thing = f"preexisting-{serial}"
    observer(lab, HOME).create_thing(thingName=thing)
    device, files = write_unit_files(tmp_path / "unit", "kept")
    result = qa.register_certificate(
        config,
        ledger,
        qa.load_certificate(files["pem"]),
        serial=serial,
        target=HOME,
        operator="qa",
        thing=thing,
    )
    assert result.thing_created is False and result.thing_attached
    plan = qa.plan_revoke(config, ledger, serial)
    (item,) = plan.items
    assert item.delete_thing is None and item.keep_reason == "the station did not make it"
    done = qa.revoke_unit(config, ledger, serial, operator="qa", plan=plan)
    assert done.ok and done.revoked == 1
    assert certificate_status(lab, HOME, device.certificate_id) is None
    assert thing_exists(lab, HOME, thing)


# ---------------------------------------------------------------------------------------------- plans


def test_revoke_plan_deletes_a_shared_thing_once_and_only_when_nothing_else_uses_it(
    tmp_path: Path, ledger: Ledger
) -> None:
    config = offline_config(tmp_path, "a", "b")
    old, new = "1" * 64, "2" * 64
    ledger.record_attempt(pass_record("SN1", "a", old, "thing-SN1", thing_created=True))
    ledger.record_attempt(pass_record("SN1", "a", new, "thing-SN1", thing_created=False))  # re-provisioned
    ledger.record_attempt(pass_record("SN1", "b", new, "thing-SN1"))  # a pipeline record: no flag

    plan = qa.plan_revoke(config, ledger, "SN1")
    by_key = {(i.target, i.certificate_id): i for i in plan.items}
    assert [by_key[("a", old)].delete_thing, by_key[("a", new)].delete_thing] == [None, "thing-SN1"]
    assert by_key[("b", new)].delete_thing is None
    assert by_key[("b", new)].keep_reason == "the ledger does not say the station made it"

    only_old = qa.plan_revoke(config, ledger, "SN1", target="a", certificate_id=old[:12])
    (item,) = only_old.items
    assert item.delete_thing is None and item.keep_reason.startswith("still used by certificate 222222")

    with pytest.raises(qa.NotFound):
        qa.plan_revoke(config, ledger, "SN2")
    ledger.record_attempt(AttemptRecord(attempt_id="f1", serial="SN3", outcome="FAIL", certificate_id=old))
    with pytest.raises(qa.NotFound, match="no PASS record"):
        qa.plan_revoke(config, ledger, "SN3")


class FailingRegistry:
    """A registry whose revoke fails as AWS being down would make it fail."""

    where = "111111111111/eu-west-1"

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        raise StationFault(
            "AWS IoT unreachable", "The station could not reach AWS IoT.", "Check the network."
        )


class RecordingRegistry:
    where = "111111111111/eu-west-2"

    def __init__(self) -> None:
        self.revoked: list[tuple[str, str | None]] = []

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        self.revoked.append((certificate_id, delete_thing))
        return True


def test_revoke_goes_on_after_one_target_fails_and_records_both(tmp_path: Path, ledger: Ledger) -> None:
    config = offline_config(tmp_path, "a", "b")
    cert = "3" * 64
    ledger.record_attempt(pass_record("SN4", "a", cert, "thing-SN4", thing_created=True))
    ledger.record_attempt(pass_record("SN4", "b", cert, "thing-SN4", thing_created=True))
    good = RecordingRegistry()
    result = qa.revoke_unit(
        config,
        ledger,
        "SN4",
        operator="qa-carol",
        registry_for=lambda t: FailingRegistry() if t.name == "a" else good,  # type: ignore[return-value]
    )
    assert not result.ok
    assert [(d.item.target, d.ok) for d in result.done] == [("a", False), ("b", True)]
    assert result.done[0].error is not None and result.done[0].error["title"] == "AWS IoT unreachable"
    assert good.revoked == [(cert, "thing-SN4")]
    notes = [e.event for e in ledger.events("SN4") if e.event.kind == "note"]
    assert [(n.outcome, n.data["target"], n.data["operator"]) for n in notes] == [
        ("failed", "a", "qa-carol"),
        ("ok", "b", "qa-carol"),
    ]


# ---------------------------------------------------------------------------------------------- transfer


def test_a_failed_source_revoke_leaves_the_transfer_recorded_and_says_so(
    lab: Lab, config: StationConfig, ledger: Ledger, tmp_path: Path
) -> None:
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "halfway")
    qa.register_certificate(
        config,
        ledger,
        qa.load_certificate(files["pem"], key=files["key"]),
        serial=serial,
        target=HOME,
        operator="qa",
    )
    real = registry_factory(config.station_id)
    with pytest.raises(StationFault) as error:
        qa.transfer_unit(
            config,
            ledger,
            serial,
            to=OTHER_ACCOUNT,
            operator="qa",
            revoke_source=True,
            registry_for=lambda t: FailingRegistry() if t.name == HOME else real(t),  # type: ignore[return-value,arg-type]
        )
    assert error.value.title == "Transfer half done" and OTHER_ACCOUNT in error.value.message
    assert f"--target {HOME}" in error.value.next_action
    # The destination works and is recorded; the source is untouched.
    assert device_connect_error(lab, device, f"sim-{serial}", OTHER_ACCOUNT) is None
    assert certificate_status(lab, HOME, device.certificate_id) == "ACTIVE"
    records = ledger.find(serial)
    # Neither proved the unit (DONE, never PASS); the transfer says the source was not revoked.
    assert [(r.target, r.outcome, r.action) for r in records] == [
        (HOME, "DONE", "register"),
        (OTHER_ACCOUNT, "DONE", "transfer"),
    ]
    assert records[1].extra["source_target"] == HOME and records[1].key_source == "file"
    assert records[1].extra["source_revoked"] is False
    notes = [(e.event.step, e.event.outcome) for e in ledger.events(serial) if e.event.kind == "note"]
    assert notes == [("qa:register", "ok"), ("qa:transfer", "ok"), ("qa:revoke", "failed")]


# ---------------------------------------------------------------------------------------------- preflight


def test_preflight_reports_a_crashing_check_instead_of_crashing(tmp_path: Path, ledger: Ledger) -> None:
    config = offline_config(tmp_path, "a", "b")

    class Broken:
        where = "x/y"

        def preflight(self) -> list[Check]:
            raise RuntimeError("boom")

    class Fine:
        where = "111111111111/eu-west-2"

        def preflight(self) -> list[Check]:
            return [Check("credentials", True, "ok")]

    report = qa.preflight(
        config,
        registry_for=lambda t: Broken() if t.name == "a" else Fine(),  # type: ignore[return-value,arg-type]
        ledger=ledger,
        operator="qa",
    )
    assert not report.ok
    a, b = report.targets
    assert [(c.name, c.ok) for c in a.checks] == [("policy document", True), ("registry", False)]
    assert b.ok and report.station[0].name == "ledger" and report.station[0].ok
    (note,) = [e.event for e in ledger.events("-")]
    assert (
        note.step == "qa:preflight"
        and note.outcome == "failed"
        and note.data["targets"] == {"a": False, "b": True}
    )


class UnwritableLedger:
    """A ledger that can be read but no longer written (disk full, locked too long)."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner

    def find(self, query: str) -> list[AttemptRecord]:
        return self.inner.find(query)

    def append_event(self, event: Event) -> int:
        from station.ledger import LedgerUnavailable

        raise LedgerUnavailable("Ledger unavailable", "The disk is full.", "Free some space.")


def test_a_revoke_the_ledger_cannot_record_is_reported_as_not_done(tmp_path: Path, ledger: Ledger) -> None:
    config = offline_config(tmp_path, "a")
    cert = "4" * 64
    ledger.record_attempt(pass_record("SN5", "a", cert, "thing-SN5", thing_created=True))
    plan = qa.plan_revoke(config, ledger, "SN5")
    good = RecordingRegistry()
    result = qa.revoke_unit(
        config,
        UnwritableLedger(ledger),  # type: ignore[arg-type]
        "SN5",
        operator="qa",
        plan=plan,
        registry_for=lambda t: good,  # type: ignore[return-value,arg-type]
    )
    assert good.revoked == [(cert, "thing-SN5")]  # it did happen in AWS …
    (done,) = result.done
    assert not result.ok and done.existed  # … and the person is told the audit trail misses it
    assert done.error is not None and done.error["title"] == "Revoked but not recorded"


# ---------------------------------------------------------------------------------------------- re-verify


def test_reverify_from_the_station_needs_the_units_key_and_then_connects_as_it(
    lab: Lab, config: StationConfig, ledger: Ledger, tmp_path: Path
) -> None:
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "host-reverify")
    qa.register_files(
        config, ledger, cert=files["pem"], serial=serial, target=HOME, operator="qa", product="sim"
    )
    # Without a slot and without the key the station cannot: it never keeps a unit's key.
    with pytest.raises(InputError) as refused:
        qa.reverify_unit(config, ledger, serial, operator="qa")
    assert "dropped the key" in refused.value.message and ".p12" in refused.value.next_action
    assert [r.action for r in ledger.find(serial)] == ["register"]  # a refusal records nothing

    result = qa.reverify_unit(config, ledger, serial, operator="qa-eve", identity=device)

    assert result.slot == "" and serial in result.message and "from the station" in result.message
    records = ledger.find(serial)
    assert [(r.action, r.outcome) for r in records] == [("register", "DONE"), ("reverify", "PASS")]
    assert records[1].verify_mode == "host" and records[1].operator == "qa-eve"
    state = ledger.unit(serial)
    assert state is not None and state.last_action == "reverify" and state.last_outcome == "PASS"
