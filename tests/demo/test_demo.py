"""`station demo` and `station.demo.DemoLine`: the lab, simulated PROV/1 units on real ptys and the real line.

The headless runs go through `station.cli.main` in this process. What the registry holds is read with boto3
through a lab control plane of the test's own: moto's state is process-wide, so it sees what the demo's lab
did, before and after (the difference is what this run left registered). Every run must leave no thread, no
pty and no child process behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.cli import main as station_main
from station.demo import DEMO_FAULTS, DemoLine
from station.lab.control import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, ControlPlane
from station.ledger import open_ledger
from station.model import Outcome

pytestmark = [pytest.mark.lab, pytest.mark.slow]

STEPS_OF_A_PASS = {"identify", "identity", "write", "register", "write_register", "verify", "record", "total"}


@pytest.fixture(scope="module")
def registry_view() -> Iterator[ControlPlane]:
    """A control plane over the same (process-wide) moto state as the demo's lab, to read the registry."""
    with ControlPlane(throttling=False) as plane:
        yield plane


def certificates(plane: ControlPlane) -> dict[str, str]:
    """Certificate id → status in the demo's account-region (the lab's first target)."""
    iot = plane.client("iot", account_id=DEFAULT_ACCOUNT_ID, region=DEFAULT_REGION)
    return {c["certificateId"]: c["status"] for c in iot.list_certificates(pageSize=250)["certificates"]}


def things(plane: ControlPlane) -> set[str]:
    iot = plane.client("iot", account_id=DEFAULT_ACCOUNT_ID, region=DEFAULT_REGION)
    return {t["thingName"] for t in iot.list_things(maxResults=250)["things"]}


def pty_fds() -> set[str]:
    """This process's open descriptors that are ptys (master or slave)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/pts/") or target == "/dev/ptmx":
            found.add(f"{fd}->{target}")
    return found


def children() -> set[str]:
    pids: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            pids |= set(Path(f"/proc/self/task/{task}/children").read_text().split())
        except OSError:
            continue
    return pids


class Leftovers:
    """What existed before a run; `assert_clean` waits (bounded) until the run's threads are gone."""

    def __init__(self) -> None:
        self.threads = set(threading.enumerate())
        self.ptys = pty_fds()
        self.children = children()

    def assert_clean(self, deadline_s: float = 10.0) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            extra = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
            if not extra or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert extra == [], f"threads left running: {[t.name for t in extra]}"
        assert pty_fds() - self.ptys == set(), "ptys left open"
        assert children() - self.children == set(), "child processes left running"


def run_demo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = station_main(["demo", "--headless", "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def cert_id_of(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


# ----------------------------------------------------------------------------------------------- headless


def test_four_slots_forty_units_all_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry_view: ControlPlane
) -> None:
    before = certificates(registry_view)
    leftovers = Leftovers()

    code, doc = run_demo(capsys, "--slots", "4", "--units", "40", "--state-dir", str(tmp_path))

    assert code == 0
    units = doc["units"]
    assert len(units) == 40
    assert doc["totals"]["pass"] == 40 and doc["totals"]["fail"] == doc["totals"]["error"] == 0
    assert doc["totals"]["units_per_hour"] > 0
    assert {u["slot"] for u in units} == {"slot-1", "slot-2", "slot-3", "slot-4"}  # every slot worked
    assert len({u["serial"] for u in units}) == 40  # forty different units
    assert len({u["flash_file"] for u in units}) == 40
    for unit in units:
        assert unit["outcome"] == "PASS", unit
        assert unit["target"] == "lab1-ap-northeast-1"
        assert unit["thing_name"] == f"sim-{unit['serial']}"
        assert unit["device_id"] == unit["serial"]  # the scan matched the device's own id
        assert set(unit["timings_ms"]) >= STEPS_OF_A_PASS, unit["timings_ms"]
        assert all(ms >= 0 for ms in unit["timings_ms"].values())
        # The unit's flash holds the certificate AWS knows by that id, and the key that goes with it.
        flash = json.loads(Path(unit["flash_file"]).read_text())
        assert flash["device_id"] == unit["serial"]
        assert cert_id_of(flash["cert"]) == unit["certificate_id"]
        key = serialization.load_pem_private_key(flash["key"].encode(), password=None)
        cert = x509.load_pem_x509_certificate(flash["cert"].encode())
        assert key.public_key() == cert.public_key()

    after = certificates(registry_view)
    new = {cid: status for cid, status in after.items() if cid not in before}
    assert set(new) == {u["certificate_id"] for u in units}  # exactly the forty, nothing else
    assert set(new.values()) == {"ACTIVE"}
    assert {u["thing_name"] for u in units} <= things(registry_view)
    with open_ledger(doc["ledger"]) as ledger:
        assert ledger.journal_pending() == []
        assert ledger.audit().ok
        assert sorted(r.outcome for u in units for r in ledger.find(u["serial"])) == ["PASS"] * 40
    leftovers.assert_clean()


def test_faulty_demo_units_fail_with_their_rollback_and_leave_no_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry_view: ControlPlane
) -> None:
    before = certificates(registry_view)
    things_before = things(registry_view)
    leftovers = Leftovers()

    code, doc = run_demo(
        capsys, "--slots", "3", "--units", "9", "--fault-every", "3", "--state-dir", str(tmp_path)
    )

    assert code == 0  # every non-PASS was an injected fault that came out as it should
    units = doc["units"]
    faulty = {u["fault"]: u for u in units if u["fault"]}
    assert set(faulty) == set(DEMO_FAULTS)  # one of each, in turn
    assert doc["totals"] == doc["totals"] | {"pass": 6, "fail": 3, "error": 0, "injected_faults": 3}
    for unit in faulty.values():
        assert unit["outcome"] == "FAIL" and unit["as_expected"], unit
    # Units that got as far as registering are rolled back in AWS; the wrong unit never got that far.
    for name in ("disconnect", "bad-store"):
        unit = faulty[name]
        assert unit["certificate_id"] and "register" in unit["timings_ms"]
        assert {"action": "rollback", "ok": True} in [
            {"action": c["action"], "ok": c["ok"]} for c in unit["compensations"]
        ]
    assert faulty["disconnect"]["title"] == "Device disconnected"
    assert faulty["wrong-unit"]["title"] == "Wrong unit in the jig"
    assert faulty["wrong-unit"]["device_id"] != faulty["wrong-unit"]["serial"]
    assert (
        faulty["wrong-unit"]["compensations"] == [] and "register" not in faulty["wrong-unit"]["timings_ms"]
    )
    # bad-store: the device was still there to wipe what it staged, and holds no live credentials.
    assert {"action": "wipe", "ok": True} in [
        {"action": c["action"], "ok": c["ok"]} for c in faulty["bad-store"]["compensations"]
    ]
    assert json.loads(Path(faulty["bad-store"]["flash_file"]).read_text())["cert"] is None

    # The registry, not just the ledger: only the PASSes are there.
    new = set(certificates(registry_view)) - set(before)
    assert new == {u["certificate_id"] for u in units if u["outcome"] == "PASS"}
    new_things = things(registry_view) - things_before
    assert new_things == {u["thing_name"] for u in units if u["outcome"] == "PASS"}
    with open_ledger(doc["ledger"]) as ledger:
        assert ledger.journal_pending() == []
        for unit in faulty.values():
            (record,) = ledger.find(unit["serial"])
            assert record.outcome == "FAIL"
            assert [c["action"] for c in record.compensations] == [c["action"] for c in unit["compensations"]]
    leftovers.assert_clean()


def test_a_fault_that_does_not_come_out_as_expected_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the demo's wrong unit should PASS: the station (rightly) FAILs it, so the run is a surprise.
    monkeypatch.setitem(DEMO_FAULTS, "wrong-unit", ("test: expected to pass", Outcome.PASS))
    code, doc = run_demo(
        capsys,
        "--slots",
        "1",
        "--units",
        "1",
        "--fault-every",
        "1",
        "--fault",
        "wrong-unit",
        "--state-dir",
        str(tmp_path),
    )
    assert code == 1
    assert doc["totals"]["unexpected"] == 1 and doc["units"][0]["outcome"] == "FAIL"


def test_text_summary_names_each_unit_and_its_flash_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = station_main(["demo", "--headless", "--slots", "2", "--units", "2", "--state-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count(" PASS  Provisioned") == 2
    assert out.count("certificate ") == 2 and out.count("thing sim-SIM") == 2
    assert out.count(f"flash {tmp_path / 'devices'}") == 2
    assert "Totals: 2 units on 2 slots — 2 PASS, 0 FAIL, 0 ERROR" in out


# ------------------------------------------------------------------------------------------ the library


def test_a_new_unit_in_the_jig_gets_a_new_pty_and_flash_file(tmp_path: Path) -> None:
    leftovers = Leftovers()
    with DemoLine(tmp_path, slots=1, accounts=1, regions=["eu-west-1"]) as demo:
        first = demo.devices["slot-1"]
        jig = demo.jig_port("slot-1")
        assert os.readlink(jig) == first.port
        assert demo.config is not None and demo.config.slots["slot-1"].port == str(jig)

        second = demo.insert_unit("slot-1", fault="bad-store")
        assert demo.devices["slot-1"] is second and second.fault == "bad-store"
        assert os.readlink(jig) == second.port
        assert second.serial != first.serial and second.flash_path != first.flash_path
        assert not first.pty.connected and first.flash_path.exists()  # unplugged; its flash file stays

        # The operator scans the unit in the jig: the station opens the jig's stable port.
        third = demo.insert_unit("slot-1", fault=None)
        demo.scan("slot-1")
        assert demo.line.wait_idle(60)
        (result,) = demo.line.results()
        assert result.outcome == Outcome.PASS and result.device_id == third.device_id
        assert json.loads(third.flash_path.read_text())["cert"] == result.certificate_pem
    assert all(not u.pty.connected for u in demo.units)
    assert not os.path.lexists(jig)  # no link left pointing at a pty number someone else may get
    leftovers.assert_clean()


def test_auto_replace_puts_a_fresh_unit_in_the_jig_after_each_unit(tmp_path: Path) -> None:
    events: list[str] = []
    with DemoLine(
        tmp_path,
        slots=1,
        accounts=1,
        regions=["eu-west-1"],
        auto_replace=True,
        on_event=lambda e: events.append(e.kind),
    ) as demo:
        first = demo.devices["slot-1"]
        demo.scan("slot-1")
        assert demo.line.wait_idle(60)
        fresh = demo.devices["slot-1"]
        assert fresh is not first and fresh.pty.connected and not fresh.used
        assert demo.line.results()[0].outcome == Outcome.PASS
        assert events[0] == "unit_started" and events[-1] == "unit_finished"  # the caller's sink sees all


def test_interactive_demo_opens_the_operator_screen_over_the_demo_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import station.tui

    seen: dict[str, Any] = {}

    def fake_run_app(config: Any, line: Any, ledger: Any = None, *, relay: Any = None, **kw: Any) -> int:
        # What a newcomer does on the screen: type a serial, watch the unit pass.
        slot = line.scan("SIM0001")
        assert line.wait_idle(60)
        seen["slot"] = slot
        seen["result"] = line.results()[0]
        seen["relay"] = relay
        seen["ledger"] = ledger
        return 0

    monkeypatch.setattr(station.tui, "run_app", fake_run_app)
    code = station_main(["demo", "--slots", "2", "--state-dir", str(tmp_path)])
    assert code == 0
    assert seen["slot"] == "slot-1" and seen["result"].outcome == Outcome.PASS
    assert seen["relay"] is not None and seen["ledger"] is not None


@pytest.mark.parametrize(
    ("args", "title"),
    [
        (["--slots", "0"], "Bad slot count"),
        (["--units", "0"], "Bad unit count"),
        (["--fault-every", "-1"], "Bad fault interval"),
        (["--baud", "0"], "Bad baud rate"),
    ],
)
def test_bad_arguments_are_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], title: str
) -> None:
    leftovers = Leftovers()
    code = station_main(["demo", "--headless", "--json", "--state-dir", str(tmp_path), *args])
    assert code == 2
    assert json.loads(capsys.readouterr().out)["error"]["title"] == title
    leftovers.assert_clean()
