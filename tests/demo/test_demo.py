"""`station demo` and `station.lab.demo.DemoLine`: the lab, simulated units in jigs and the real line.

One-family (PROV/1) runs first, then mixed lines: slots of PROV/1, ExpressLink, nRF91 and ESP32 units (the ESP32
ones in-process, behind the fake esptool link). The headless runs go through `station.cli.main` in this process. What the registry holds is read with boto3
through a lab control plane of the test's own: moto's state is process-wide, so it sees what the demo's lab
did, before and after (the difference is what this run left registered). Every run must leave no thread, no
pty and no child process behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.cli import main as station_main
from station.errors import InputError
from station.lab.control import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, ControlPlane
from station.lab.demo import DEMO_FAULTS, FAMILIES, DemoLine, assign_families, parse_families
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
        assert first.flash_path is not None
        assert not first.connected and first.flash_path.exists()  # unplugged; its flash file stays

        # The operator scans the unit in the jig: the station opens the jig's stable port.
        third = demo.insert_unit("slot-1", fault=None)
        demo.scan("slot-1")
        assert demo.line.wait_idle(60)
        (result,) = demo.line.results()
        assert result.outcome == Outcome.PASS and result.device_id == third.device_id
        assert third.flash_path is not None
        assert json.loads(third.flash_path.read_text())["cert"] == result.certificate_pem
    assert all(not u.connected for u in demo.units)
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
        assert fresh is not first and fresh.connected and not fresh.used
        assert demo.line.results()[0].outcome == Outcome.PASS
        assert events[0] == "unit_started" and events[-1] == "unit_finished"  # the caller's sink sees all


def test_interactive_demo_opens_the_operator_screen_over_the_demo_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import station.tui

    seen: dict[str, Any] = {}

    def fake_run_app(config: Any, line: Any, *, qa: Any = None, relay: Any = None, **kw: Any) -> int:
        # What a newcomer does on the screen: type the serial the demo names for slot-1's unit, watch it pass.
        (unit, *_) = qa._put_in_jig.__self__.jig_units()
        slot = line.scan(unit.serial)
        seen["serial"] = unit.serial
        assert line.wait_idle(60)
        seen["slot"] = slot
        seen["result"] = line.results()[0]
        seen["relay"] = relay
        seen["qa_line"] = qa.line
        seen["qa_found"] = [r.serial for r in qa.ledger.find(unit.serial)]  # the demo's own ledger
        return 0

    monkeypatch.setattr(station.tui, "run_app", fake_run_app)
    code = station_main(["demo", "--slots", "2", "--state-dir", str(tmp_path)])
    assert code == 0
    assert seen["slot"] == "slot-1" and seen["result"].outcome == Outcome.PASS
    assert seen["relay"] is not None
    # The QA desk's services come from the command, over the demo's own line and ledger.
    assert seen["qa_line"] is not None and seen["qa_found"] == [seen["serial"]]


@pytest.mark.parametrize(
    ("args", "title"),
    [
        (["--slots", "0"], "Bad slot count"),
        (["--units", "0"], "Bad unit count"),
        (["--fault-every", "-1"], "Bad fault interval"),
        (["--baud", "0"], "Bad baud rate"),
        (["--families", "prov1,zigbee"], "Unknown device family"),
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


# ------------------------------------------------------------------------------------------ mixed lines

ALL_FAMILIES = ["prov1", "expresslink", "nrf91", "esp32"]
DEVICE_ID_RE = {
    "prov1": r"SIM[0-9]{8}",  # the serial itself
    "expresslink": r"[0-9a-f]{32}",  # the module's ThingName (a random UID)
    "nrf91": r"[0-9]{15}",  # IMEI
    "esp32": r"[0-9A-F]{12}",  # base MAC
}
SERIAL_PREFIX = {"prov1": "SIM", "expresslink": "EL", "nrf91": "NRF", "esp32": "ESP"}


def test_families_are_parsed_and_assigned_round_robin() -> None:
    assert parse_families("prov1, ExpressLink,esp32") == ["prov1", "expresslink", "esp32"]
    assert parse_families("all") == ALL_FAMILIES == list(FAMILIES)
    with pytest.raises(InputError) as refused:
        parse_families("prov1,zigbee")
    assert refused.value.title == "Unknown device family" and "'zigbee'" in refused.value.message
    with pytest.raises(InputError):
        parse_families(" , ")
    slots = [f"slot-{i}" for i in range(1, 6)]
    assert assign_families(slots, ["prov1", "esp32"]) == {
        "slot-1": "prov1",
        "slot-2": "esp32",
        "slot-3": "prov1",
        "slot-4": "esp32",
        "slot-5": "prov1",
    }


def test_the_fault_plan_gives_each_family_only_faults_its_simulator_can_act_out(tmp_path: Path) -> None:
    # Nothing is started: the plan and the refusals are decided before any unit exists.
    demo = DemoLine(tmp_path, slots=4, families=ALL_FAMILIES, fault_every=1)
    planned = [(family, demo.next_fault(family)) for _ in range(6) for family in ALL_FAMILIES]
    for family, fault in planned:
        assert fault is not None, "every unit is faulty with --fault-every 1"
        assert fault in FAMILIES[family].faults, (family, fault)
    assert {f for fam, f in planned if fam == "expresslink"} == {"disconnect"}  # it stores nothing
    assert {f for fam, f in planned if fam == "prov1"} == set(DEMO_FAULTS)  # PROV/1 gets each in turn
    assert "wrong-unit" not in {f for fam, f in planned if fam != "prov1"}  # only PROV/1 keeps the check

    with pytest.raises(InputError) as refused:
        demo.insert_unit("slot-2", fault="bad-store")  # slot-2 holds ExpressLink units
    assert refused.value.title == "Fault not possible"
    # Without the cross-check a wrong unit would PASS: not a demo fault there.
    unchecked = DemoLine(tmp_path, slots=1, fault_every=1, check_device_id=False)
    assert {unchecked.next_fault("prov1") for _ in range(6)} == {"disconnect", "bad-store"}
    with pytest.raises(InputError):
        unchecked.insert_unit("slot-1", fault="wrong-unit")
    # A fixed fault a family cannot act out leaves its units good.
    fixed = DemoLine(tmp_path, slots=2, families=["expresslink", "esp32"], fault_every=1, fault="bad-store")
    assert [fixed.next_fault("expresslink"), fixed.next_fault("esp32")] == [None, "bad-store"]


def test_mixed_line_four_families_eight_units_all_pass_and_each_unit_holds_its_certificate(
    tmp_path: Path, registry_view: ControlPlane
) -> None:
    from flashers.simulators.esp32rom import Esp32RomDevice

    before = certificates(registry_view)
    leftovers = Leftovers()
    iot = registry_view.client("iot", account_id=DEFAULT_ACCOUNT_ID, region=DEFAULT_REGION)

    with DemoLine(tmp_path, slots=4, families=["all"]) as demo:
        assert demo.config is not None
        assert demo.slot_families == dict(zip(demo.slot_names, ALL_FAMILIES, strict=True))
        # The generated station.toml: one product per family, each on its slot.
        for slot, family in demo.slot_families.items():
            product = demo.config.products[demo.config.slots[slot].product or ""]
            assert product.flasher == family
            assert product.serial_pattern == f"{SERIAL_PREFIX[family]}[0-9]{{4,8}}"
            # The cross-check stays on only where the printed serial is the device id.
            assert product.options.get("check_device_id", True) is (family == "prov1")
        expresslink_target = demo.config.target_for("sim-expresslink")
        assert expresslink_target.thing_name_template == "{device_id}"
        assert expresslink_target.registry_key == demo.config.target_for("sim").registry_key
        assert demo.config.products["sim-nrf91"].options["key_source"] == "station"
        assert demo.config.products["sim-esp32"].options["connect_mode"] == "no-reset"  # a pty: no DTR/RTS

        report = demo.run_units(8)

        outcomes = report.outcomes
        assert [o.result.outcome for o in outcomes] == [Outcome.PASS] * 8, [
            (o.unit.family, o.result.title, o.result.message) for o in outcomes
        ]
        assert sorted(o.unit.family for o in outcomes) == sorted(ALL_FAMILIES * 2)  # two of each
        assert report.totals()["families"] == {
            f: {"units": 2, "pass": 2, "fail": 0, "error": 0} for f in ALL_FAMILIES
        }
        for o in outcomes:
            unit, result = o.unit, o.result
            assert demo.slot_families[unit.slot] == unit.family == result.family
            assert unit.serial.startswith(SERIAL_PREFIX[unit.family])
            assert re.fullmatch(DEVICE_ID_RE[unit.family], result.device_id or ""), result.device_id
            assert result.device_id == unit.device_id
            # The unit's own store holds the registered certificate (an ExpressLink module's *is* it), and
            # the key beside it belongs to that certificate.
            live = unit.model.live()
            assert live["cert"] and cert_id_of(live["cert"]) == result.certificate_id, unit.family
            key = serialization.load_pem_private_key(live["key"].encode(), password=None)
            assert key.public_key() == x509.load_pem_x509_certificate(live["cert"].encode()).public_key()
            if unit.family == "expresslink":
                assert result.thing_name == unit.device_id  # named after its ThingName: it connects as that
                assert (result.key_source, result.verify_mode) == ("read", "device")
            else:
                assert result.thing_name == f"{FAMILIES[unit.family].product}-{unit.serial}"
            if unit.family == "nrf91":
                assert (result.key_source, result.verify_mode) == ("station", "host")
            if unit.family == "esp32":
                assert isinstance(unit.model, Esp32RomDevice)  # written by the unmodified esptool
            assert unit.flash_path is not None and unit.flash_path.parent == tmp_path / "devices"
            # In the registry: the certificate, active, attached to the thing.
            principals = iot.list_thing_principals(thingName=result.thing_name)["principals"]
            assert any(p.endswith(f"/{result.certificate_id}") for p in principals), result.thing_name

        new = {c: status for c, status in certificates(registry_view).items() if c not in before}
        assert new == {o.result.certificate_id: "ACTIVE" for o in outcomes}  # exactly the eight
        assert {o.result.thing_name for o in outcomes} <= things(registry_view)
        assert demo.ledger is not None
        assert demo.ledger.journal_pending() == []
        families = sorted(r.family for o in outcomes for r in demo.ledger.find(o.unit.serial))
        assert families == sorted(ALL_FAMILIES * 2)
    # Everything is unplugged.
    assert all(not u.connected for u in demo.units)
    leftovers.assert_clean()


def test_mixed_headless_faulty_units_of_other_families_fail_and_leave_no_orphan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry_view: ControlPlane
) -> None:
    before = certificates(registry_view)
    things_before = things(registry_view)
    leftovers = Leftovers()

    code, doc = run_demo(
        capsys,
        "--families",
        "expresslink,nrf91,esp32",
        "--slots",
        "3",
        "--units",
        "6",
        "--fault-every",
        "1",
        "--state-dir",
        str(tmp_path),
    )

    assert code == 0  # every unit was a demo fault and came out as it should
    units = doc["units"]
    assert doc["slot_families"] == {"slot-1": "expresslink", "slot-2": "nrf91", "slot-3": "esp32"}
    assert sorted(u["family"] for u in units) == [
        "esp32",
        "esp32",
        "expresslink",
        "expresslink",
        "nrf91",
        "nrf91",
    ]
    assert doc["totals"] == doc["totals"] | {"pass": 0, "fail": 6, "error": 0, "injected_faults": 6}
    for unit in units:
        assert unit["outcome"] == "FAIL" and unit["as_expected"], unit
        assert unit["fault"] in FAMILIES[unit["family"]].faults
        if "register" in unit["timings_ms"]:
            assert {"action": "rollback", "ok": True} in [
                {"action": c["action"], "ok": c["ok"]} for c in unit["compensations"]
            ], unit
    # An ExpressLink module drops off at its own connection check: after its certificate was registered.
    for unit in (u for u in units if u["family"] == "expresslink"):
        assert unit["fault"] == "disconnect" and unit["title"] == "Device disconnected"
        assert unit["certificate_id"] and unit["thing_name"] == unit["device_id"]
        assert "register" in unit["timings_ms"]

    # The registry, not just the ledger: nothing of these units is left there.
    assert set(certificates(registry_view)) - set(before) == set()
    assert things(registry_view) - things_before == set()
    with open_ledger(doc["ledger"]) as ledger:
        assert ledger.journal_pending() == []
        for unit in units:
            (record,) = ledger.find(unit["serial"])
            assert (record.outcome, record.family) == ("FAIL", unit["family"])
    leftovers.assert_clean()


def test_mixed_text_summary_names_each_units_family_device_id_and_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = station_main(
        [
            "demo",
            "--headless",
            "--families",
            "prov1,esp32",
            "--slots",
            "2",
            "--units",
            "2",
            "--state-dir",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert re.search(r"slot-1 +prov1 +SIM[0-9]{8} +PASS  Provisioned", out), out
    assert re.search(r"slot-2 +esp32 +ESP[0-9]{8} +PASS  Provisioned", out), out
    assert re.search(r"device id [0-9A-F]{12}\n", out)  # the ESP32's MAC; PROV/1's id is its serial
    assert out.count("device id ") == 1
    assert out.count(f"flash {tmp_path / 'devices'}") == 2  # the ESP32's flash image is a file too
    assert re.search(r"flash \S+/esp32-[0-9A-F]{12}\.bin", out)
    assert "by family: prov1 1 PASS, 0 FAIL, 0 ERROR; esp32 1 PASS, 0 FAIL, 0 ERROR" in out  # slot order
    assert "slots (prov1, esp32)" in captured.err


def test_interactive_demo_is_a_mixed_line_and_a_scan_goes_to_a_slot_of_its_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import station.tui

    seen: dict[str, Any] = {}
    leftovers = Leftovers()

    def fake_run_app(config: Any, line: Any, *, qa: Any = None, relay: Any = None, **kw: Any) -> int:
        seen["products"] = {name: p.flasher for name, p in config.products.items()}
        seen["slot_products"] = {name: s.product for name, s in config.slots.items()}
        seen["help"] = kw["help_content"]()  # what F1 shows before any scan
        demo = qa._put_in_jig.__self__  # the DemoLine behind the screen
        seen["announced"] = {u.serial: u for u in demo.jig_units()}
        # What a newcomer does: type the serial of each unit the demo names, in any order, without a slot number.
        order = sorted(seen["announced"], key=lambda serial: serial[:1])  # ESP…, EL…, NRF…, SIM…
        seen["slots"] = {serial: line.scan(serial) for serial in order}
        with pytest.raises(InputError) as busy:
            line.scan("SIM0002")  # the only PROV/1 jig is still working on SIM0001
        seen["busy"] = busy.value.title
        with pytest.raises(InputError) as foreign:
            line.scan("XYZ0001")
        seen["foreign"] = (foreign.value.title, foreign.value.message)
        assert line.wait_idle(60)
        seen["results"] = {r.serial: r for r in line.results()}
        return 0

    monkeypatch.setattr(station.tui, "run_app", fake_run_app)
    code = station_main(["demo", "--state-dir", str(tmp_path)])  # the defaults: 4 slots, one per family

    assert code == 0
    assert seen["products"] == {
        "sim": "prov1",
        "sim-expresslink": "expresslink",
        "sim-nrf91": "nrf91",
        "sim-esp32": "esp32",
    }
    assert seen["slot_products"] == {
        "slot-1": "sim",
        "slot-2": "sim-expresslink",
        "slot-3": "sim-nrf91",
        "slot-4": "sim-esp32",
    }
    assert seen["slots"] == {serial: u.slot for serial, u in seen["announced"].items()}
    assert sorted(seen["slots"].values()) == ["slot-1", "slot-2", "slot-3", "slot-4"]
    # Every unit comes out as announced: the third unit put in (slot-3's nRF91) is the faulty one.
    assert {serial: r.outcome for serial, r in seen["results"].items()} == {
        serial: u.expected for serial, u in seen["announced"].items()
    }
    assert [u.slot for u in seen["announced"].values() if u.faulty] == ["slot-3"]
    assert {r.family for r in seen["results"].values()} == set(ALL_FAMILIES)
    # Which refusal depends on whether the other families' units have finished yet: all slots busy, or only
    # the PROV/1 one.
    assert seen["busy"] in ("No free slot", "No free slot for this unit", "Unit not in a free jig")
    assert seen["foreign"][0] == "Serial not for this line" and "EL[0-9]{4,8}" in seen["foreign"][1]
    # F1 names the unit waiting in each jig (its slot, family and serial), which one is faulty and how, and the
    # QA PIN; the faulty one is the one that FAILs (checked above).
    help_units = {unit.serial: unit for unit in seen["help"].units}
    assert set(help_units) == set(seen["announced"])
    for serial, unit in seen["announced"].items():
        shown = help_units[serial]
        assert (shown.slot, shown.family, shown.fault) == (unit.slot, unit.family, unit.fault_text)
    (faulty,) = [u for u in seen["announced"].values() if u.faulty]
    assert help_units[faulty.serial].fault
    assert seen["help"].qa_pin and "faulty" in seen["help"].faults
    leftovers.assert_clean()
