"""Routing a scan to the jig that holds the unit, through the real wiring: PROV/1 simulators on real ptys, the
lab's control plane and data plane, the real registry, verify and ledger.

A scan without a slot must go to the idle jig whose unit reports the scanned serial as its id, and a serial no
idle jig holds must be refused at the scan: nothing recorded, no AWS call, no unit touched beyond reading ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloud_rig import REGION, registry_truth, unique_digits, write_config

from flashers.simulators.prov1 import Prov1Device
from flashers.simulators.pty import PtyDevice
from station.config import load_config
from station.context import StationContext
from station.errors import InputError
from station.lab.control import DEFAULT_ACCOUNT_ID, ControlPlane
from station.lab.dataplane import DataPlane
from station.ledger import open_ledger
from station.line import Line
from station.model import Outcome
from station.registry import Registry

THING_POLICY = (
    Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "thing-policy.json"
).read_text()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, DataPlane]]:
    with ControlPlane(throttling=False) as plane:
        data = DataPlane({(DEFAULT_ACCOUNT_ID, REGION): 0}, tmp_path_factory.mktemp("lab"))
        data.start()
        try:
            yield plane, data
        finally:
            data.stop()


class CountingRegistry:
    """The real registry, counting every call the station makes on it."""

    def __init__(self, real: Registry, calls: list[str]) -> None:
        self._real = real
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(name)
            return value(*args, **kwargs)

        return counted


class TwoJigs:
    """A station with two slots whose ports are the ptys of two simulated PROV/1 units (the jigs)."""

    def __init__(self, tmp_path: Path, lab: tuple[ControlPlane, DataPlane]) -> None:
        plane, data = lab
        self.plane = plane
        self.models = [Prov1Device(tmp_path / "devices", device_id=f"SIM{unique_digits()}") for _ in range(2)]
        self.ptys = [PtyDevice(model).start() for model in self.models]
        path = write_config(
            tmp_path,
            plane.endpoint_url,
            slots=2,
            data_port=data.port_for(DEFAULT_ACCOUNT_ID, REGION),
            ca_file=str(data.ca_file),
            policy_document=THING_POLICY,
        )
        text = path.read_text()
        for i, pty in enumerate(self.ptys):
            text = text.replace(f'"loop://s{i + 1}"', f'"{pty.port}"')
        path.write_text(text)
        self.config = load_config(path)
        self.ledger = open_ledger(self.config.ledger_path)
        self.calls: list[str] = []
        self.context = StationContext(
            self.config,
            ledger=self.ledger,
            registry_factory=lambda target: CountingRegistry(
                Registry(target, station_id="route", max_attempts=2, delete_wait_s=5), self.calls
            ),
        )
        self.line = Line.from_context(self.context)

    def close(self) -> None:
        self.line.stop(timeout=30)
        for pty in self.ptys:
            pty.stop()
        self.ledger.close()


@pytest.fixture
def jigs(tmp_path: Path, lab: tuple[ControlPlane, DataPlane]) -> Iterator[TwoJigs]:
    rig = TwoJigs(tmp_path, lab)
    yield rig
    rig.close()


def test_a_scan_goes_to_the_jig_that_holds_the_unit(jigs: TwoJigs) -> None:
    in_jig_2 = jigs.models[1].device_id
    assert jigs.line.scan(in_jig_2) == "s2"  # s1 is free too: the next-free rule would have taken it
    assert jigs.line.wait_idle(60)
    (result,) = jigs.line.results()
    assert (result.serial, result.slot, result.outcome) == (in_jig_2, "s2", Outcome.PASS), result.message
    assert result.device_id == in_jig_2
    (record,) = jigs.ledger.find(in_jig_2)
    assert record.outcome == "PASS" and record.slot == "s2"
    assert jigs.models[1].live()["cert"] == record.certificate_pem  # written into the unit in jig 2
    assert jigs.models[0].live()["cert"] is None  # the unit in jig 1 was only asked its id
    # After its provisioning jig 2's answer is forgotten: the unit in jig 1 still routes to jig 1.
    in_jig_1 = jigs.models[0].device_id
    assert jigs.line.scan(in_jig_1) == "s1"
    assert jigs.line.wait_idle(60)
    assert [r.outcome for r in jigs.line.results()] == [Outcome.PASS, Outcome.PASS]


def test_a_serial_no_jig_holds_is_refused_before_anything_is_done(jigs: TwoJigs) -> None:
    before = registry_truth(jigs.plane)
    stranger = f"SIM{unique_digits()}"
    with pytest.raises(InputError) as refused:
        jigs.line.scan(stranger)
    held = [m.device_id for m in jigs.models]
    assert refused.value.message == f"Scanned {stranger}, but jig s1 holds {held[0]}; jig s2 holds {held[1]}."
    assert all(s.state == "idle" for s in jigs.line.slots())
    assert jigs.line.wait_idle(5) and jigs.line.results() == []
    assert jigs.ledger.find(stranger) == [] and jigs.ledger.unit(stranger) is None  # no record, no FAIL
    assert jigs.calls == []  # not one AWS call
    assert registry_truth(jigs.plane) == before
    assert all(m.live()["cert"] is None for m in jigs.models)


def test_a_unit_swapped_into_a_jig_is_asked_again(jigs: TwoJigs, tmp_path: Path) -> None:
    first = jigs.models[0].device_id
    with pytest.raises(InputError):
        jigs.line.scan(f"SIM{unique_digits()}")  # both jigs answered: their ids are cached now
    # Swap the unit in jig 1 for another (a new device node behind the same configured port path is what a
    # real jig shows; here the configured port is the pty itself, so restart the pty's model in place).
    other = Prov1Device(tmp_path / "devices", device_id=f"SIM{unique_digits()}")
    jigs.ptys[0].model = other  # the same pty now answers as the new unit
    assert jigs.line.scan(other.device_id) == "s1"  # not in the cache: the jigs were asked afresh
    assert jigs.line.wait_idle(60)
    (result,) = jigs.line.results()
    assert result.outcome == Outcome.PASS and result.device_id == other.device_id != first


def test_scans_of_both_units_at_once_each_reach_their_own_jig(jigs: TwoJigs) -> None:
    serials = [m.device_id for m in reversed(jigs.models)]
    slots: dict[str, str] = {}

    def scan(serial: str) -> None:
        slots[serial] = jigs.line.scan(serial)

    threads = [threading.Thread(target=scan, args=(s,)) for s in serials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert slots == {jigs.models[0].device_id: "s1", jigs.models[1].device_id: "s2"}
    assert jigs.line.wait_idle(60)
    assert sorted((r.slot, r.outcome) for r in jigs.line.results()) == [
        ("s1", Outcome.PASS),
        ("s2", Outcome.PASS),
    ]


# ------------------------------------------------------------------------- the rules, over fast fakes


class JigContext:
    """The line's wiring over the pipeline fakes, with jigs that say which unit they hold (`held`: slot →
    unit id, an exception to raise, or a number of seconds to hang before answering)."""

    def __init__(self, held: dict[str, Any]) -> None:
        from pipeline_fakes import TARGET, FakeFlasher, FakeRegistry, Log, make_rig

        self._target, self._flasher, self.log = TARGET, FakeFlasher, Log()
        self.rig = make_rig(log=self.log, registry=FakeRegistry(self.log), on_event=self._forward)
        self.pipeline = self.rig.pipeline
        self.on_event: Any = None
        self.held = dict(held)
        self.reads: list[str] = []
        self.opened_while_reading: list[str] = []
        self._reading: set[str] = set()

    def _forward(self, event: Any) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def slot_ports(self) -> dict[str, str]:
        return {slot: f"loop://{slot}" for slot in self.held}

    def prepare(self, serial: str, *, slot: str, product: str | None, target: str | None) -> Any:
        from station import naming
        from station.pipeline import UnitRequest

        serial = naming.validate_serial(serial, r"SN[0-9]{8}", product="widget")
        return UnitRequest(serial=serial, target=self._target, slot=slot, product="widget", thing_name=str)

    def read_unit_id(self, slot: str, port: str, request: Any) -> str | None:
        self.reads.append(slot)
        self._reading.add(slot)
        try:
            held = self.held[slot]
            if isinstance(held, BaseException):
                raise held
            if isinstance(held, float):
                time.sleep(held)
                return None
            return str(held)
        finally:
            self._reading.discard(slot)

    def open_flasher(self, slot: str, port: str, request: Any) -> Any:
        if slot in self._reading:
            self.opened_while_reading.append(slot)
        held = self.held[slot]
        return self._flasher(self.log, device_id=held if isinstance(held, str) else request.serial)


def test_a_jig_without_an_answering_unit_is_named_and_a_slow_one_bounds_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flashers.base import DeviceNotAnswering

    monkeypatch.setattr("station.line.UNIT_ID_TIMEOUT_S", 0.5)
    ctx = JigContext({"s1": DeviceNotAnswering(), "s2": 3.0, "s3": "SN00000003"})
    line = Line.from_context(ctx)
    try:
        started = time.monotonic()
        with pytest.raises(InputError) as refused:
            line.scan("SN00000009")
        assert time.monotonic() - started < 2.0  # the hanging jig did not hold the scan for its 3 s
        assert refused.value.message == (
            "Scanned SN00000009, but jig s1: Device not answering; jig s2: no answer in time; "
            "jig s3 holds SN00000003."
        )
        assert ctx.rig.ledger.records == [] and ctx.log.names() == []
    finally:
        line.stop(timeout=10)


def test_answers_are_kept_until_the_jig_finishes_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = JigContext({"s1": "SN00000001", "s2": "SN00000002"})
    line = Line.from_context(ctx)
    try:
        with pytest.raises(InputError):
            line.scan("SN00000009")  # both jigs asked
        assert sorted(ctx.reads) == ["s1", "s2"]
        assert line.scan("SN00000002") == "s2"  # from what s2 said: not asked again
        assert sorted(ctx.reads) == ["s1", "s2"]
        assert line.wait_idle(10)
        ctx.held["s2"] = "SN00000005"  # the next unit in jig 2
        assert line.scan("SN00000005") == "s2"  # s2's answer was forgotten after its unit: asked afresh
        assert line.wait_idle(10)
        assert ctx.reads.count("s2") == 2 and ctx.opened_while_reading == []
        assert [(r.serial, r.slot, r.outcome) for r in line.results()] == [
            ("SN00000002", "s2", Outcome.PASS),
            ("SN00000005", "s2", Outcome.PASS),
        ]
    finally:
        line.stop(timeout=10)


# ------------------------------------------------------------------- every family that reads its id

# Family → (the label's pattern when it carries the unit's own id, product options, thing-name template).
ID_LABELS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "nrf91": ("[0-9]{15}", {"key_source": "station"}, None),  # the IMEI
    "esp32": ("[0-9A-F]{12}", {"connect_mode": "no-reset", "reset_after": False}, None),  # the MAC
    "expresslink": ("[0-9a-f]{32}", {}, "{device_id}"),  # the ThingName
}


@pytest.mark.parametrize("family", sorted(ID_LABELS))
def test_a_scan_of_the_units_own_id_reaches_its_jig_for_every_family(tmp_path: Path, family: str) -> None:
    from station.lab import Lab
    from station.lab.demo import Jigs
    from station.lab.lab import LabProduct

    pattern, options, template = ID_LABELS[family]
    with Lab(tmp_path / "lab", accounts=1, regions=["eu-west-1"], throttling=False) as lab:
        jigs = Jigs(
            tmp_path,
            ["s1", "s2"],
            ca_file=lab.ca_file,
            data_port=lab.registry().data_port,
            families={"s1": family, "s2": family},
        )
        try:
            units = [jigs.insert_unit(slot) for slot in ("s1", "s2")]
            toml = tmp_path / "station.toml"
            product = LabProduct(
                flasher=family, serial_pattern=pattern, options=options, thing_name_template=template
            )
            toml.write_text(
                lab.station_toml(
                    ledger=str(tmp_path / "ledger.sqlite"),
                    slots={"s1": jigs.port("s1"), "s2": jigs.port("s2")},
                    products={"unit": product},
                )
            )
            config = load_config(toml)
            with open_ledger(config.ledger_path) as ledger:
                line = Line.from_context(StationContext(config, ledger=ledger))
                try:
                    with pytest.raises(InputError) as refused:
                        line.scan(units[0].device_id[:-1] + ("0" if units[0].device_id[-1] != "0" else "1"))
                    assert f"jig s1 holds {units[0].device_id}; jig s2 holds {units[1].device_id}." in (
                        refused.value.message
                    )
                    assert line.scan(units[1].device_id) == "s2"
                    assert line.wait_idle(90)
                    (result,) = line.results()
                    assert (result.slot, result.device_id) == ("s2", units[1].device_id)
                    assert result.outcome == Outcome.PASS, result.message
                finally:
                    line.stop(timeout=30)
        finally:
            jigs.stop()
