"""A station config, a real SQLite ledger with recorded units, and a fake registry for the QA desk tests."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from station.config import Product, Slot, StationConfig
from station.errors import StationFault
from station.ledger import AttemptRecord, open_ledger
from station.ledger.base import Ledger
from station.model import Event, Identity, Target

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CERT_PEM = (FIXTURES / "certs" / "ec-p256.pem").read_text()
CERT_ID = "ab" * 32
PIN = "0042"


def lab_target(name: str, region: str, account: str) -> Target:
    return Target(
        name=name, region=region, policy_name="lab", policy_document="{}", account_id=account, lab=True
    )


def make_config(tmp_path: Path) -> StationConfig:
    return StationConfig(
        path=tmp_path / "station.toml",
        station_id="line1-station3",
        ledger_path=tmp_path / "ledger.sqlite",
        operator="day-shift",
        qa_pin=PIN,
        targets={
            "lab-eu": lab_target("lab-eu", "eu-west-1", "123456789012"),
            "lab-us": lab_target("lab-us", "us-east-1", "210987654321"),
        },
        products={"widget": Product("widget", r"SN[0-9]{8}", "prov1", "lab-eu")},
        slots={
            "s1": Slot("s1", "/dev/ttyUSB0", product="widget"),
            "s2": Slot("s2", "/dev/ttyUSB1", product="widget"),
        },
    )


def make_ledger(tmp_path: Path) -> Ledger:
    ledger = open_ledger(tmp_path / "ledger.sqlite")
    ledger.append_event(Event(kind="unit_started", serial="SN00000001", slot="s1", at=1_700_000_000.0))
    ledger.record_attempt(
        AttemptRecord(
            attempt_id="a1",
            serial="SN00000001",
            outcome="PASS",
            device_id="SN00000001",
            product="widget",
            thing_name="widget-SN00000001",
            certificate_id=CERT_ID,
            certificate_pem=CERT_PEM,
            target="lab-eu",
            account_id="123456789012",
            region="eu-west-1",
            station_id="line1-station3",
            slot="s1",
            operator="day-shift",
            title="Provisioned",
            message="widget-SN00000001 is registered in lab-eu and verified.",
            next_action="Put the unit in the good bin.",
            started_at=1_700_000_000.0,
            finished_at=1_700_000_004.0,
        )
    )
    return ledger


class FakeRegistry:
    """What the QA desk may call on `station.registry.Registry`; remembers every call."""

    def __init__(self, target: Target, calls: list[tuple[str, str, Any]], *, fail: str = "") -> None:
        self.target = target
        self.calls = calls
        self.fail = fail
        self.lock = threading.Lock()

    def _call(self, op: str, *args: Any) -> None:
        with self.lock:
            self.calls.append((op, self.target.name, args))
        if op == self.fail:
            raise StationFault(
                "AWS IoT unreachable", f"{self.target.region} did not answer.", "Call a technician."
            )

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        self._call("revoke", certificate_id, delete_thing)
        return True

    def provision(self, identity: Identity, thing_name: str, *, origin: str = "unit") -> Any:
        assert identity.private_key is None, "the QA desk must never pass a key to the registry"
        self._call("provision", identity.certificate_id, thing_name, origin)
        return None

    def describe(self, certificate_id: str) -> dict[str, Any] | None:
        self._call("describe", certificate_id)
        return {"certificateId": certificate_id, "status": "ACTIVE"}

    def data_endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", 8883)
