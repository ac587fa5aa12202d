"""Clean-up that does not wait for a person, and no orphan the station cannot see (issue 9, points 7 and 8),
through the real parts: the lab's control plane with its faults, the real `Registry`, the SQLite ledger, the
real `StationContext` and `Line` with its cleaner. The device and the verify are fakes (a bad unit is one
whose verify fails). The registry's truth is read with boto3 (`list_certificates`), never from the ledger.

(a) A station killed mid-unit while the lab is down leaves an ACTIVE orphan; a line started later removes
    it by itself once the lab answers (no command run) and its pending count returns to 0.
(b) With the lab processing each AWS step and then losing its answer (one step per run) and every second
    unit bad, 40 units leave no ACTIVE certificate without a PASS record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_rig import KILL_SCRIPT, REGION, unique_digits, write_config
from pipeline_fakes import FakeFlasher, Log

from station.config import load_config
from station.context import StationContext
from station.errors import UnitFault
from station.lab.control import ControlPlane, Throttle
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.pipeline import RECONCILE_MESSAGE
from station.registry import Registry

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
CLEANUP = "cleanup_interval_s = 0.5\ncleanup_max_interval_s = 2\n"


@pytest.fixture(scope="module")
def plane_server() -> Iterator[ControlPlane]:
    with ControlPlane(throttling=False) as plane:
        yield plane


@pytest.fixture
def plane(plane_server: ControlPlane) -> Iterator[ControlPlane]:
    plane_server.faults.reset()
    plane_server.throttle = Throttle(enabled=False)
    yield plane_server
    plane_server.faults.reset()


def station_config(tmp_path: Path, plane: ControlPlane, *, region: str = REGION, slots: int = 1) -> Path:
    """cloud_rig's station.toml with a fast cleaner (and its own region, so the registry holds only ours)."""
    path = write_config(tmp_path, plane.endpoint_url, slots=slots)
    text = path.read_text().replace("[station]\n", "[station]\n" + CLEANUP, 1)
    path.write_text(text.replace(f'region = "{REGION}"', f'region = "{region}"', 1))
    return path


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took until `predicate()` held; fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def certificate_status(plane: ControlPlane, region: str, cert_id: str) -> str | None:
    iot = plane.client("iot", region=region)
    for cert in iot.list_certificates(pageSize=250)["certificates"]:
        if cert["certificateId"] == cert_id:
            return str(cert["status"])
    return None


# --------------------------------------------------------------------------------------------------- (a)


def test_a_killed_stations_orphan_is_removed_by_the_next_line_without_a_command(
    tmp_path: Path, plane: ControlPlane
) -> None:
    config_path = station_config(tmp_path, plane)
    marker = tmp_path / "registered"
    serial = f"SIM{unique_digits()}"
    script = KILL_SCRIPT.format(here=str(HERE), config=str(config_path), marker=str(marker), serial=serial)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, 60, "the child to reach verify")
        assert marker.exists(), child.stderr.read().decode() if child.stderr else "child died"
        plane.faults.set("down")  # the lab goes down mid-unit ...
        child.send_signal(signal.SIGKILL)  # ... and the station dies: no except/finally runs
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stderr:
            child.stderr.close()

    config = load_config(config_path)
    with open_ledger(config.ledger_path) as ledger:
        (entry,) = ledger.journal_pending()
        assert entry.station_id == config.station_id
    plane.faults.clear()
    assert certificate_status(plane, REGION, entry.certificate_id) == "ACTIVE"  # the orphan a kill leaves
    plane.faults.set("down")  # and the lab is still down when the station starts again

    with open_ledger(config.ledger_path) as ledger:
        context = StationContext(
            config,
            ledger=ledger,
            registry_factory=lambda target: Registry(
                target, station_id="it", max_attempts=2, delete_wait_s=5
            ),
        )
        line = Line.from_context(context)
        try:
            # Nothing is scanned and no command is run: the line's cleaner tries, fails, counts it.
            wait_for(lambda: line.cleanup_pending() == 1, 30, "the cleaner to count the orphan")
            wait_for(lambda: line._cleaner is not None and line._cleaner.rounds >= 2, 30, "a failed retry")
            assert ledger.journal_pending() != []
            plane.faults.clear()  # the lab is back
            took = wait_for(lambda: line.cleanup_pending() == 0, 60, "the orphan to be removed")
            assert took < 60
        finally:
            line.stop(10)
        assert ledger.journal_pending() == []
        (record,) = ledger.find(serial)
        assert record.outcome == "ERROR" and record.message == RECONCILE_MESSAGE
        assert ledger.audit().ok
    assert certificate_status(plane, REGION, entry.certificate_id) is None
    things = plane.client("iot", region=REGION).list_things(maxResults=250)["things"]
    assert entry.thing_name not in {t["thingName"] for t in things}


# --------------------------------------------------------------------------------------------------- (b)

# Each AWS step the station uses, in its own region (moto's registries are process-wide: a region of its own
# means list_certificates sees only this run's certificates).
LOST_STEPS = {
    "RegisterCertificateWithoutCA": "us-west-1",
    "DescribeCertificate": "us-west-2",
    "CreateThing": "eu-west-2",
    "AttachPolicy": "eu-north-1",
    "AttachThingPrincipal": "eu-south-1",
    "DetachPolicy": "ap-south-1",
    "DetachThingPrincipal": "ap-southeast-1",
    "UpdateCertificate": "ap-southeast-2",
    "DeleteCertificate": "ap-northeast-2",
    "DeleteThing": "me-south-1",
}
# The station asks DescribeCertificate after a register met "already exists" (and in a revoke): lose one
# register answer first so that the step is reached during a unit, not only by the cleaner.
PRIMERS = {"DescribeCertificate": "RegisterCertificateWithoutCA"}
UNITS_PER_STEP = 4  # 10 steps x 4 = 40 units
LOSS = 0.6  # share of the step's answers lost: with 3 tries per call (max_attempts=2 retries), 22 % fail


class BadEverySecondUnit:
    """The verify: odd serials pass, even serials are bad units (their verify fails)."""

    def __call__(self, identity: Any, *, thing_name: str, **kw: Any) -> str:
        if int(thing_name[-1]) % 2 == 0:
            raise UnitFault("Verify failed", f"{thing_name} did not echo.", "Put the unit in the rework bin.")
        return "verified"


@pytest.mark.parametrize("api", list(LOST_STEPS))
def test_lost_answers_and_bad_units_leave_no_active_certificate_without_a_pass(
    tmp_path: Path, plane: ControlPlane, api: str
) -> None:
    region = LOST_STEPS[api]
    config = load_config(
        station_config(tmp_path, plane, region=region)
    )  # one slot: the first call is the unit's
    log = Log()
    base = unique_digits(5)
    serials = [f"SIM{base}{i}" for i in range(UNITS_PER_STEP)]  # last digit 0..3: every second one bad
    seed = sum(map(ord, api))
    # What the lab does to this step's answers (AWS processed every request whose answer is lost), unit by
    # unit: bad unit 0 loses one answer (the retry meets the effect: "already exists", "not found"), bad
    # unit 2 loses three (all tries: its call fails outright after taking effect), the good units a share.
    plans: list[dict[str, Any]] = [
        {"count": 1},
        {"fraction": LOSS, "seed": seed},
        {"count": 3},
        {"fraction": LOSS, "seed": seed + 1},
    ]
    primed = 0
    with open_ledger(config.ledger_path) as ledger:
        context = StationContext(
            config,
            ledger=ledger,
            flasher_factory=lambda port, **kw: FakeFlasher(log, device_id=None),
            registry_factory=lambda target: Registry(
                target, station_id="it", max_attempts=2, throttle_wait_s=30, delete_wait_s=3
            ),
            verifier=BadEverySecondUnit(),
        )
        line = Line.from_context(context)
        try:
            for serial, plan in zip(serials, plans, strict=True):
                plane.faults.clear()
                if api in PRIMERS and "count" in plan:
                    plane.faults.set("lose", api=PRIMERS[api], count=1)
                    primed += 1
                plane.faults.set("lose", api=api, **plan)
                line.scan(serial)
                assert line.wait_idle(60)
            results = line.results()
            assert sorted(r.serial for r in results) == serials
            # No command is run and the lab keeps losing a share of the answers: the cleaner finishes alone.
            wait_for(lambda: ledger.journal_pending() == [], 60, "the journal to be cleaned up")
            wait_for(lambda: line.cleanup_pending() == 0, 10, "the pending count to return to 0")
        finally:
            line.stop(10)
        fired = plane.faults.fired["lose"] - primed
        plane.faults.clear()
        passed = {r.certificate_id for s in serials for r in ledger.find(s) if r.outcome == "PASS"}
        assert all(r.outcome in (Outcome.PASS, Outcome.FAIL, Outcome.ERROR) for r in results)
        assert {r.serial for r in results if r.outcome == Outcome.PASS} <= set(serials[1::2])

    iot = plane.client("iot", region=region)
    active = {
        c["certificateId"]
        for c in iot.list_certificates(pageSize=250)["certificates"]
        if c["status"] == "ACTIVE"
    }
    orphans = active - passed
    assert orphans == set(), (
        f"{len(orphans)} ACTIVE certificate(s) without a PASS ({api}, {fired} answers lost)"
    )
    assert passed <= active  # every PASS is live
    # Things too: a thing whose CreateThing answer was lost is the attempt's, removed with the rest.
    things = {t["thingName"] for t in iot.list_things(maxResults=250)["things"]}
    assert things == {r.thing_name for r in results if r.outcome == Outcome.PASS}, f"things left ({api})"
    assert fired >= 4, f"fewer {api} answers lost than planned: the run proved nothing"


def test_a_refused_rollback_is_an_error_that_the_line_finishes_once_aws_accepts(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """403 on UpdateCertificate (the station's role lost a permission): the bad units' undo fails, each says
    "cleanup pending" (an ERROR, not an ordinary FAIL), and the line removes them once AWS accepts again."""
    region = "ca-central-1"
    config = load_config(station_config(tmp_path, plane, region=region))
    log = Log()
    base = unique_digits(5)
    serials = [f"SIM{base}{i}" for i in range(4)]
    fault = plane.faults.set("error", api="UpdateCertificate", status=403, code="AccessDeniedException")
    with open_ledger(config.ledger_path) as ledger:
        context = StationContext(
            config,
            ledger=ledger,
            flasher_factory=lambda port, **kw: FakeFlasher(log, device_id=None),
            registry_factory=lambda target: Registry(
                target, station_id="it", max_attempts=2, delete_wait_s=3
            ),
            verifier=BadEverySecondUnit(),
        )
        line = Line.from_context(context)
        try:
            for serial in serials:
                wait_for(lambda: any(s.state == "idle" for s in line.slots()), 60, "a free slot")
                line.scan(serial)
            assert line.wait_idle(60)
            bad = [r for r in line.results() if r.serial in serials[0::2]]
            assert [r.outcome for r in bad] == [Outcome.ERROR, Outcome.ERROR]
            for result in bad:
                assert result.title == "Cleanup pending", result.message
                assert "the station will remove it when AWS answers" in result.message
                assert "rework bin" not in result.next_action
                assert certificate_status(plane, region, result.certificate_id) == "ACTIVE"
            wait_for(lambda: line.cleanup_pending() == 2, 30, "the screen's count of 2")
            plane.faults.clear(fault)  # the permission is back; nobody runs a command
            wait_for(lambda: line.cleanup_pending() == 0, 60, "the line to clean up")
        finally:
            line.stop(10)
        assert ledger.journal_pending() == []
        passed = {r.certificate_id for s in serials for r in ledger.find(s) if r.outcome == "PASS"}
    iot = plane.client("iot", region=region)
    active = {
        c["certificateId"]
        for c in iot.list_certificates(pageSize=250)["certificates"]
        if c["status"] == "ACTIVE"
    }
    assert active == passed and len(passed) == 2
