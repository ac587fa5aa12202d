"""A serial scanned again after it PASSed, through real parts: a PROV/1 simulator on a pty, the real flasher,
the lab's control and data planes, the real registry and verify, the real SQLite ledger. The registry is read
with boto3 (the lab's own client), never from the ledger.

- `refuse` (the default): FAIL at once with where and when the unit was provisioned, nothing touched — the
  registry and the device's flash are unchanged;
- `replace`: a new identity provisioned and verified first, then the old certificate revoked in AWS; the
  unit's state names both; a revoke AWS refuses stays in the journal and reconcile finishes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_rig import REGION, unique_digits, write_config
from test_end_to_end import THING_POLICY, Lab, Unit

from station.config import load_config
from station.context import StationContext
from station.lab.control import DEFAULT_ACCOUNT_ID, ControlPlane
from station.lab.dataplane import DataPlane
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.registry import Registry
from station.units import UnitStateName

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with ControlPlane(throttling=False) as plane:
        data = DataPlane({(DEFAULT_ACCOUNT_ID, REGION): 0}, tmp_path_factory.mktemp("lab"))
        data.start()
        try:
            yield Lab(plane, data)
        finally:
            data.stop()


class Rescan:
    def __init__(self, tmp_path: Path, lab: Lab, policy: str | None) -> None:
        self.lab = lab
        path = write_config(
            tmp_path,
            lab.plane.endpoint_url,
            data_port=lab.port,
            ca_file=str(lab.data.ca_file),
            policy_document=THING_POLICY,
            on_reprovision=policy,
        )
        self.config = load_config(path)
        self.ledger = open_ledger(self.config.ledger_path)
        self.context = StationContext(
            self.config,
            ledger=self.ledger,
            registry_factory=lambda target: Registry(
                target, station_id="e2e", max_attempts=2, delete_wait_s=5
            ),
        )
        self.unit = Unit(tmp_path / "devices", f"SIM{unique_digits()}")
        self.thing = f"sim-{self.unit.serial}"
        self.iot = lab.plane.client("iot", region=REGION)

    def provision(self) -> Any:
        return self.context.provision(self.unit.serial, self.unit.port, slot="s1")

    def thing_certificates(self) -> dict[str, str]:
        """certificate id → status of every certificate attached to the unit's thing (boto3)."""
        arns = self.iot.list_thing_principals(thingName=self.thing)["principals"]
        found = {}
        for arn in arns:
            cert_id = arn.rsplit("/", 1)[1]
            found[cert_id] = self.iot.describe_certificate(certificateId=cert_id)["certificateDescription"][
                "status"
            ]
        return found

    def registered(self, cert_id: str) -> str | None:
        try:
            return str(
                self.iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]
            )
        except self.iot.exceptions.ResourceNotFoundException:
            return None

    def close(self) -> None:
        self.lab.plane.faults.clear()
        self.unit.stop()
        self.ledger.close()


@pytest.fixture
def refuse(tmp_path: Path, lab: Lab) -> Iterator[Rescan]:
    rig = Rescan(tmp_path, lab, None)  # the default policy
    yield rig
    rig.close()


@pytest.fixture
def replace(tmp_path: Path, lab: Lab) -> Iterator[Rescan]:
    rig = Rescan(tmp_path, lab, "replace")
    yield rig
    rig.close()


def test_a_rescan_is_refused_at_once_and_touches_nothing(refuse: Rescan) -> None:
    first = refuse.provision()
    assert first.outcome == Outcome.PASS, first.message
    certificates = refuse.thing_certificates()
    flash = refuse.unit.model.flash_path.read_bytes()
    all_before = {c["certificateId"] for c in refuse.iot.list_certificates(pageSize=250)["certificates"]}

    again = refuse.provision()

    assert again.outcome == Outcome.FAIL and again.title == "Already provisioned"
    day = time.strftime("%Y-%m-%d", time.gmtime(first.finished_at))
    assert again.message == (
        f"{refuse.unit.serial} was provisioned on {day} at it-station/s1 as {refuse.thing}; send it to QA."
    )
    assert "identify" not in again.timings_ms  # refused before the unit was even asked its id
    # Nothing touched: the registry, the device.
    assert refuse.thing_certificates() == certificates == {first.certificate_id: "ACTIVE"}
    assert {
        c["certificateId"] for c in refuse.iot.list_certificates(pageSize=250)["certificates"]
    } == all_before
    assert refuse.unit.model.flash_path.read_bytes() == flash
    # One live identity, the first; the refused scan is on record.
    state = refuse.context.unit_state(refuse.unit.serial)
    assert state.state == UnitStateName.PROVISIONED
    assert [i.certificate_id for i in state.live] == [first.certificate_id]
    assert [r.outcome for r in refuse.ledger.find(refuse.unit.serial)] == ["PASS", "FAIL"]
    assert refuse.ledger.journal_pending() == []


def test_replace_provisions_the_new_identity_first_then_revokes_the_old(replace: Rescan) -> None:
    first = replace.provision()
    assert first.outcome == Outcome.PASS, first.message

    second = replace.provision()

    assert second.outcome == Outcome.PASS, second.message
    old, new = first.certificate_id, second.certificate_id
    assert new != old
    # boto3: the unit's thing has exactly one certificate, the new one, ACTIVE; the old one is gone.
    assert replace.thing_certificates() == {new: "ACTIVE"}
    assert replace.registered(old) is None
    # The new identity was verified before the old one was revoked (AWS's order).
    steps = [k for k in second.timings_ms if k in ("verify", "retire")]
    assert steps == ["verify", "retire"]
    assert f"replaces certificate {old[:12]}…, revoked" in second.message
    (record,) = [r for r in replace.ledger.find(replace.unit.serial) if r.attempt_id == second.attempt_id]
    assert record.extra["replaced"] == [old] and record.extra["replaced_revoked"] == [old]
    state = replace.context.unit_state(replace.unit.serial)
    assert state.state == UnitStateName.PROVISIONED
    assert [i.certificate_id for i in state.live] == [new] and state.pending_revoke == ()
    assert old[:12] in state.note and new[:12] in state.note  # the state names both
    assert replace.ledger.journal_pending() == []


def test_a_replace_whose_revoke_fails_is_kept_for_reconcile(replace: Rescan) -> None:
    first = replace.provision()
    assert first.outcome == Outcome.PASS, first.message
    replace.lab.plane.faults.set("error", api="UpdateCertificate", status=403, code="AccessDeniedException")

    second = replace.provision()

    assert second.outcome == Outcome.PASS, second.message  # the new identity works
    old, new = first.certificate_id, second.certificate_id
    assert "could not be revoked yet" in second.message
    assert replace.registered(old) is not None and replace.registered(new) == "ACTIVE"
    state = replace.context.unit_state(replace.unit.serial)
    # Two live certificates, but never without a record saying so.
    assert state.state == UnitStateName.SUPERSEDED and state.pending_revoke == (old,)
    (pending,) = replace.ledger.journal_pending()
    assert pending.certificate_id == old

    replace.lab.plane.faults.clear()
    (item,) = replace.context.reconcile()

    assert item.action == "rolled_back" and item.certificate_id == old
    assert replace.registered(old) is None and replace.thing_certificates() == {new: "ACTIVE"}
    state = replace.context.unit_state(replace.unit.serial)
    assert state.state == UnitStateName.PROVISIONED and state.pending_revoke == ()
    assert [i.certificate_id for i in state.live] == [new]
    assert replace.ledger.journal_pending() == []


def test_the_lines_cleaner_revokes_an_old_certificate_without_any_command(tmp_path: Path, lab: Lab) -> None:
    rig = Rescan(tmp_path, lab, "replace")
    path = rig.config.path
    text = path.read_text().replace(
        "[station]\n", "[station]\ncleanup_interval_s = 0.3\ncleanup_max_interval_s = 1\n"
    )
    path.write_text(text.replace('port = "loop://s1"', f'port = "{rig.unit.port}"'))  # the unit's jig
    rig.ledger.close()
    rig.config = load_config(path)
    rig.ledger = open_ledger(rig.config.ledger_path)
    context = StationContext(
        rig.config,
        ledger=rig.ledger,
        registry_factory=lambda target: Registry(target, station_id="e2e", max_attempts=2, delete_wait_s=5),
    )
    line = Line.from_context(context)
    try:
        line.scan(rig.unit.serial, slot="s1")
        assert line.wait_idle(60)
        rig.lab.plane.faults.set("error", api="UpdateCertificate", status=403, code="AccessDeniedException")
        line.scan(rig.unit.serial, slot="s1")
        assert line.wait_idle(60)
        first, second = line.results()
        assert (first.outcome, second.outcome) == (Outcome.PASS, Outcome.PASS), second.message
        assert rig.registered(first.certificate_id) is not None  # AWS refused the revoke: still there
        assert context.unit_state(rig.unit.serial).pending_revoke == (first.certificate_id,)

        rig.lab.plane.faults.clear()  # AWS answers again; nobody runs a command
        deadline = time.monotonic() + 30
        while rig.ledger.journal_pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rig.ledger.journal_pending() == [] and line.cleanup_pending() == 0
        assert rig.registered(first.certificate_id) is None
        assert rig.thing_certificates() == {second.certificate_id: "ACTIVE"}
        state = context.unit_state(rig.unit.serial)
        assert state.state == UnitStateName.PROVISIONED and state.pending_revoke == ()
        assert state.last_action == "reconcile"
    finally:
        line.stop(timeout=30)
        rig.close()
