"""`station.qa.reverify_unit` against the lab: a PROV/1 unit provisioned by the line, put back on its slot,
proves its own connection again (the device's CHECK, over the lab's real MQTT data plane); after a revoke,
or with its policy gone, it is refused with the reason — each recorded with the operator.

One lab for the module; each test provisions its own fresh unit (moto's registries are process-wide).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qa_rig import certificate_status, fresh_serial, observer

from flashers.simulators.prov1 import Prov1Device
from flashers.simulators.pty import PtyDevice
from station import qa
from station.config import StationConfig, load_config
from station.context import StationContext
from station.errors import InputError, UnitFault
from station.lab import Lab
from station.ledger import Ledger, open_ledger
from station.line import IDLE, Line
from station.model import Outcome

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("reverify-lab"), accounts=1, regions=("eu-west-1",)) as running:
        yield running


class Bench:
    """One fresh PROV/1 unit on a pty as slot s1, the station's config and ledger, and a line over them."""

    def __init__(self, tmp_path: Path, lab: Lab) -> None:
        self.serial = fresh_serial()
        self.device = Prov1Device(tmp_path / "devices", device_id=self.serial, ca_file=lab.ca_file)
        self.pty = PtyDevice(self.device).start()
        toml = tmp_path / "station.toml"
        toml.write_text(lab.station_toml(ledger=str(tmp_path / "ledger.sqlite"), slots={"s1": self.pty.port}))
        self.config: StationConfig = load_config(toml)
        self.ledger: Ledger = open_ledger(self.config.ledger_path)
        self.context = StationContext(self.config, ledger=self.ledger)
        self.line = Line.from_context(self.context)

    def provision(self) -> Any:
        self.line.scan(self.serial, slot="s1")
        assert self.line.wait_idle(60)
        (result,) = self.line.results()
        assert result.outcome == Outcome.PASS, result.message
        return result

    def flash(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.device.flash_path.read_text())
        return data

    def reverify(self) -> qa.ReverifyResult:
        return qa.reverify_unit(
            self.config, self.ledger, self.serial, slot="s1", operator="qa-lena", line=self.line
        )

    def reverify_records(self) -> list[Any]:
        return [r for r in self.ledger.find(self.serial) if r.extra.get("qa_action") == "reverify"]

    def notes(self) -> list[Any]:
        return [e.event for e in self.ledger.events(self.serial) if e.event.step == "qa:reverify"]

    def close(self) -> None:
        self.line.stop(timeout=30)
        self.pty.stop()
        self.ledger.close()


@pytest.fixture
def bench(tmp_path: Path, lab: Lab) -> Iterator[Bench]:
    made = Bench(tmp_path, lab)
    yield made
    made.close()


def test_a_provisioned_unit_back_on_its_slot_proves_its_connection_again(bench: Bench) -> None:
    provisioned = bench.provision()
    result = bench.reverify()
    assert (result.serial, result.slot, result.device_id, result.family) == (
        bench.serial,
        "s1",
        bench.serial,
        "prov1",
    )
    assert result.reverified_attempt_id == provisioned.attempt_id
    assert result.timings_ms["verify"] > 0
    (record,) = bench.reverify_records()
    assert (record.outcome, record.slot, record.operator, record.verify_mode, record.device_id) == (
        "PASS",
        "s1",
        "qa-lena",
        "device",
        bench.serial,
    )
    assert record.certificate_id == provisioned.certificate_id and record.thing_name == provisioned.thing_name
    (note,) = bench.notes()
    assert (note.outcome, note.data["operator"], note.data["attempt_id"]) == (
        "ok",
        "qa-lena",
        record.attempt_id,
    )
    assert bench.line.slots()[0].state == IDLE  # the slot is the line's again
    assert bench.ledger.audit().ok


def test_after_a_revoke_the_unit_is_refused_and_keeps_its_credentials(bench: Bench, lab: Lab) -> None:
    provisioned = bench.provision()
    target = provisioned.target
    revoked = qa.revoke_unit(bench.config, bench.ledger, bench.serial, operator="qa-lena")
    assert revoked.ok and certificate_status(lab, target, provisioned.certificate_id) is None
    flash_before = bench.flash()
    with pytest.raises(UnitFault) as error:
        bench.reverify()
    assert error.value.title == "Not registered" and "Provision" in error.value.next_action
    assert [r.outcome for r in bench.reverify_records()] == ["FAIL"]
    assert [(n.outcome, n.title) for n in bench.notes()] == [("failed", "Not registered")]
    assert bench.flash() == flash_before  # re-verify never wipes or rewrites the unit
    # The unit's latest outcome now says it does not work any more.
    (summary,) = [u for u in bench.ledger.units() if u.serial == bench.serial]
    assert summary.outcome == "FAIL"


def test_a_unit_whose_policy_is_gone_fails_its_own_check(bench: Bench, lab: Lab) -> None:
    provisioned = bench.provision()
    target = bench.config.targets[provisioned.target]
    iot = observer(lab, target.name)
    arn = iot.describe_certificate(certificateId=provisioned.certificate_id)["certificateDescription"][
        "certificateArn"
    ]
    iot.detach_policy(policyName=target.policy_name, target=arn)  # ACTIVE, but allowed nothing
    with pytest.raises(UnitFault) as error:
        bench.reverify()
    # The device's own words for a refused connection (PROV/1's CHECK), with what to do.
    assert error.value.title == "Device check failed" and "did not accept" in error.value.message
    assert error.value.next_action
    (record,) = bench.reverify_records()
    assert record.outcome == "FAIL" and "verify" in record.timings_ms
    assert bench.line.slots()[0].state == IDLE


def test_a_busy_slot_or_an_unknown_one_is_refused_before_anything_is_done(bench: Bench) -> None:
    bench.provision()
    with bench.line.reserve("s1", serial="SIM0", purpose="other"), pytest.raises(InputError) as error:
        bench.reverify()
    assert error.value.title == "Slot reserved"
    with pytest.raises(InputError) as error:
        qa.reverify_unit(bench.config, bench.ledger, bench.serial, slot="s9", operator="qa-lena")
    assert error.value.title == "No such slot"
    assert bench.notes() == [] and bench.reverify_records() == []
