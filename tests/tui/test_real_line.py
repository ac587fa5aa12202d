"""The operator screen over the real line: `station.line.Line` + `station.context.StationContext` + the real
pipeline, identity functions and SQLite ledger. Only the device, the registry and the MQTT verify are
in-test stand-ins (the lab-backed end-to-end runs live with the demo)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qa_fixtures import make_config
from textual.widgets import Static
from tui_fakes import type_scan, wait_until

from flashers.base import Capabilities, DeviceInfo
from station.context import StationContext
from station.desk import QaServices
from station.errors import UnitFault
from station.ledger import open_ledger
from station.ledger.base import Ledger
from station.line import Line
from station.model import Identity, Outcome, Registration, Target
from station.tui.app import StationApp, build_app
from station.tui.relay import EventRelay

BAD_UNIT = "SN00000066"  # its certificate "is not accepted" at verify


class Device:
    """A unit in the jig that takes its key and says nothing about itself."""

    family = "prov1"
    capabilities = Capabilities(writes_key=True)

    def __init__(self, port: str) -> None:
        self.port = port

    def identify(self) -> DeviceInfo:
        return DeviceInfo(None, "sim-1.0")

    def write_identity(self, identity: Identity, **_: Any) -> dict[str, str]:
        return {"certificate_id": identity.certificate_id}

    def keygen(self, common_name: str) -> str:
        raise AssertionError("this unit takes the station's key")

    def read_certificate(self) -> str:
        raise AssertionError("this unit takes the station's key")

    def device_verify(self, host: str, port: int, thing_name: str) -> None:
        raise AssertionError("the station verifies this unit itself")

    def go_online(self) -> None:
        raise AssertionError("the station verifies this unit itself")

    def wipe(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Cloud:
    """One registry's state: registered certificates, things; every rollback is noted."""

    target: Target
    certificates: dict[str, str] = field(default_factory=dict)
    things: set[str] = field(default_factory=set)
    rolled_back: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def where(self) -> str:
        return f"123456789012/{self.target.region}"

    def register(self, identity: Identity, *, origin: str = "unit") -> Registration:
        with self.lock:
            self.certificates[identity.certificate_id] = "ACTIVE"
        return Registration(
            identity.certificate_id,
            f"arn:aws:iot:{self.target.region}:123456789012:cert/{identity.certificate_id}",
            created=True,
        )

    def create_thing(self, name: str) -> bool:
        with self.lock:
            created = name not in self.things
            self.things.add(name)
        return created

    def attach(self, registration: Any, thing_name: str) -> None:
        pass

    def rollback(self, registration: Any) -> None:
        with self.lock:
            self.certificates.pop(registration.certificate_id, None)
            if registration.thing_created and registration.thing_name:
                self.things.discard(registration.thing_name)
            self.rolled_back.append(registration.certificate_id)

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        with self.lock:
            return self.certificates.pop(certificate_id, None) is not None

    def describe(self, certificate_id: str) -> dict[str, Any] | None:
        with self.lock:
            status = self.certificates.get(certificate_id)
        return None if status is None else {"certificateId": certificate_id, "status": status}

    def data_endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", 8883)


def verifier(identity: Identity, *, thing_name: str, **_: Any) -> None:
    if thing_name.endswith(BAD_UNIT):
        raise UnitFault(
            "Certificate not accepted",
            "The unit's certificate was not accepted by 123456789012/eu-west-1.",
            "Put the unit in the rework bin.",
        )


@dataclass
class RealLine:
    app: StationApp
    line: Line
    ledger: Ledger
    clouds: dict[str, Cloud]  # target name → its stand-in cloud


@contextmanager
def real_line_app(
    config: Any,
    tmp_path: Path,
    *,
    device: Callable[[str], Any] = Device,
    verify: Callable[..., None] = verifier,
) -> Iterator[RealLine]:
    """The app over the real line and pipeline (a SQLite ledger in `tmp_path`, the desk's services built as
    the commands build them), with `device` in every jig and stand-in clouds; the line stops on the way out."""
    clouds: dict[str, Cloud] = {}

    def registry_factory(target: Target) -> Cloud:
        return clouds.setdefault(target.name, Cloud(target))

    relay = EventRelay()
    with open_ledger(tmp_path / "ledger.sqlite") as ledger:
        context = StationContext(
            config,
            ledger=ledger,
            flasher_factory=lambda port, **_: device(port),
            registry_factory=registry_factory,
            verifier=verify,
        )
        line = Line.from_context(context, on_event=relay)
        try:
            qa = QaServices(config, ledger, line=line, registry_factory=registry_factory)
            app = build_app(config, line, qa=qa, relay=relay, poll_interval=0.1)
            yield RealLine(app, line, ledger, clouds)
        finally:
            line.stop(timeout=10)


async def test_operator_screen_over_the_real_line(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = replace(
        config, products={"widget": replace(config.products["widget"], options={"check_device_id": False})}
    )
    with real_line_app(config, tmp_path) as real:
        app, line, ledger = real.app, real.line, real.ledger
        async with app.run_test(size=(80, 24)) as pilot:
            # A fast unit frees its slot at once, so pin each unit to its own slot.
            await type_scan(pilot, "1:SN00000001")
            await type_scan(pilot, f"2:{BAD_UNIT}")
            cards = app.operator.cards
            await wait_until(
                pilot,
                lambda: (
                    {c.serial: c.outcome for c in cards.values()}
                    == {"SN00000001": Outcome.PASS, BAD_UNIT: Outcome.FAIL}
                ),
                timeout=15,
                what="one PASS and one FAIL",
            )
            bad = next(c for c in cards.values() if c.serial == BAD_UNIT)
            assert bad.next_action == "Put the unit in the rework bin."
            assert [a for a, ok in bad.compensations if ok][:1] == ["rollback"]
            good = next(c for c in cards.values() if c.serial == "SN00000001")
            assert good.title == "Provisioned" and all(v.ms is not None for v in good.steps.values())
            assert "✔ PASS 1" in str(app.query_one("#counters", Static).render())
            # A scan the product's pattern refuses never reaches a slot.
            await type_scan(pilot, "SN123")
            await pilot.pause(0.2)
            assert {c.serial for c in cards.values() if c.serial} == {"SN00000001", BAD_UNIT}
        assert line.wait_idle(10)
        records = {r.serial: r for r in ledger.records()}
        assert records["SN00000001"].outcome == "PASS" and records[BAD_UNIT].outcome == "FAIL"
        assert records["SN00000001"].operator == "day-shift"
        cloud = real.clouds["lab-eu"]
        assert set(cloud.certificates) == {records["SN00000001"].certificate_id}
        assert cloud.rolled_back == [records[BAD_UNIT].certificate_id]
