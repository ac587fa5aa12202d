"""A station config, a real SQLite ledger with recorded units, an in-memory registry and a unit in a jig,
for the QA desk tests.

`FakeRegistry` answers what `station.qa` calls on `station.registry.Registry` (register, create_thing,
attach, rollback, revoke, describe, data_endpoint, where) over a `FakeCloud` that the test can read: which
certificates each target holds and in which state, which things exist and who is attached to them. It
remembers every call in `calls` as (operation, target, arguments). It is checked against the real registry by
`tests/test_registry_contract.py` (`TestDeskRegistry`). `Jig` is a unit back on a slot for
re-verify: it says its id and, where its family can, proves its own connection (optionally held at a gate).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from station.config import Product, Slot, StationConfig
from station.errors import StationFault, UnitFault
from station.identity import certificate_id
from station.ledger import AttemptRecord, open_ledger
from station.ledger.base import Ledger
from station.model import Event, Identity, Target
from station.registry import Registration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CERTS = FIXTURES / "certs"
CERT_PEM = (CERTS / "ec-p256.pem").read_text()
CERT_ID = "ab" * 32  # the first unit's recorded certificate id (what the snapshot shows)
REAL_ID = certificate_id(CERT_PEM)  # ec-p256.pem's own id, for units whose certificate goes anywhere
PIN = "0042"
ACCOUNTS = {"lab-eu": "123456789012", "lab-us": "210987654321"}


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
            "lab-eu": lab_target("lab-eu", "eu-west-1", ACCOUNTS["lab-eu"]),
            "lab-us": lab_target("lab-us", "us-east-1", ACCOUNTS["lab-us"]),
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


def record_unit(
    ledger: Ledger,
    serial: str,
    *,
    target: str = "lab-eu",
    pem: str = CERT_PEM,
    thing_created: bool = True,
    finished_at: float = 1_700_000_100.0,
) -> AttemptRecord:
    """A unit the line provisioned (PASS, the station made its thing), with a real certificate and its id."""
    record = AttemptRecord(
        attempt_id=f"line-{serial}",
        serial=serial,
        outcome="PASS",
        device_id=serial,
        product="widget",
        thing_name=f"widget-{serial}",
        certificate_id=certificate_id(pem),
        certificate_pem=pem,
        target=target,
        account_id=ACCOUNTS[target],
        region="eu-west-1" if target == "lab-eu" else "us-east-1",
        station_id="line1-station3",
        slot="s1",
        operator="day-shift",
        family="prov1",
        key_source="station",
        verify_mode="host",
        title="Provisioned",
        message=f"widget-{serial} is registered in {target} and verified.",
        started_at=finished_at - 4.0,
        finished_at=finished_at,
        extra={"thing_created": thing_created},
    )
    ledger.record_attempt(record)
    return record


@dataclass
class FakeCloud:
    """What every fake registry holds, per target name: certificate id → status, things, attachments."""

    certificates: dict[str, dict[str, str]] = field(default_factory=dict)
    things: dict[str, set[str]] = field(default_factory=dict)
    principals: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # target → thing → cert ids
    policies: dict[str, set[str]] = field(default_factory=dict)  # target → cert ids with the policy

    def seed(self, target: str, cert_id: str, thing: str = "") -> None:
        """A certificate registered ACTIVE in `target` (with its thing and policy), as the line left it."""
        self.certificates.setdefault(target, {})[cert_id] = "ACTIVE"
        self.policies.setdefault(target, set()).add(cert_id)
        if thing:
            self.things.setdefault(target, set()).add(thing)
            self.principals.setdefault(target, {}).setdefault(thing, set()).add(cert_id)

    def status(self, target: str, cert_id: str) -> str | None:
        return self.certificates.get(target, {}).get(cert_id)

    def attached(self, target: str, thing: str) -> set[str]:
        return set(self.principals.get(target, {}).get(thing, set()))


class FakeRegistry:
    """One target's registry over a `FakeCloud`; fails with a StationFault on the operation named `fail`."""

    def __init__(
        self,
        target: Target,
        calls: list[tuple[str, str, Any]],
        *,
        fail: str = "",
        cloud: FakeCloud | None = None,
    ) -> None:
        self.target = target
        self.calls = calls
        self.fail = fail
        self.cloud = cloud if cloud is not None else FakeCloud()
        self.lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.target.account_id}/{self.target.region}"

    @property
    def account_id(self) -> str:
        return str(self.target.account_id)

    def _call(self, op: str, *args: Any) -> None:
        with self.lock:
            self.calls.append((op, self.target.name, args))
        if op == self.fail:
            raise StationFault(
                "AWS IoT unreachable", f"{self.target.region} did not answer.", "Call a technician."
            )

    @property
    def _certs(self) -> dict[str, str]:
        return self.cloud.certificates.setdefault(self.target.name, {})

    def register(self, identity: Identity, *, origin: str = "unit") -> Registration:
        assert identity.private_key is None, "the QA desk must never pass a key to the registry"
        self._call("register", identity.certificate_id, origin)
        before = self._certs.get(identity.certificate_id)
        self._certs[identity.certificate_id] = "ACTIVE"
        return Registration(
            certificate_id=identity.certificate_id,
            certificate_arn=self._arn(identity.certificate_id),
            created=before is None,
            target=self.target.name,
            account_id=self.account_id,
            region=self.target.region,
            activated=before == "INACTIVE",
        )

    def create_thing(self, name: str) -> bool:
        self._call("create_thing", name)
        things = self.cloud.things.setdefault(self.target.name, set())
        created = name not in things
        things.add(name)
        return created

    def attach(self, registration: Registration, thing_name: str) -> None:
        self._call("attach", registration.certificate_id, thing_name)
        policies = self.cloud.policies.setdefault(self.target.name, set())
        registration.policy_attached = registration.certificate_id not in policies
        policies.add(registration.certificate_id)
        principals = self.cloud.principals.setdefault(self.target.name, {}).setdefault(thing_name, set())
        registration.thing_attached = registration.certificate_id not in principals
        principals.add(registration.certificate_id)

    def rollback(self, registration: Registration) -> None:
        """Undo exactly what `registration` says was made (as `Registry.rollback`): a certificate it did not
        create keeps its status and its other attachments."""
        self._call("rollback", registration.certificate_id)
        cert_id, thing = registration.certificate_id, registration.thing_name
        if registration.created:
            self._forget(cert_id, None)
        else:
            if registration.policy_attached:
                self.cloud.policies.get(self.target.name, set()).discard(cert_id)
            if registration.thing_attached and thing:
                self.cloud.principals.get(self.target.name, {}).get(thing, set()).discard(cert_id)
            if registration.activated and cert_id in self._certs:
                self._certs[cert_id] = "INACTIVE"
        if registration.thing_created and thing:
            self.cloud.things.get(self.target.name, set()).discard(thing)
            self.cloud.principals.get(self.target.name, {}).pop(thing, None)

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        self._call("revoke", certificate_id, delete_thing)
        existed = certificate_id in self._certs
        self._forget(certificate_id, delete_thing)
        return existed

    def _forget(self, cert_id: str, thing: str | None) -> None:
        self._certs.pop(cert_id, None)
        self.cloud.policies.get(self.target.name, set()).discard(cert_id)
        for holders in self.cloud.principals.get(self.target.name, {}).values():
            holders.discard(cert_id)
        if thing:
            self.cloud.things.get(self.target.name, set()).discard(thing)
            self.cloud.principals.get(self.target.name, {}).pop(thing, None)

    def describe(self, certificate_id: str) -> dict[str, Any] | None:
        self._call("describe", certificate_id)
        status = self._certs.get(certificate_id)
        if status is None:
            return None
        return {
            "certificateId": certificate_id,
            "certificateArn": self._arn(certificate_id),
            "status": status,
            "account_id": self.account_id,
            "region": self.target.region,
        }

    def _arn(self, certificate_id: str) -> str:
        return f"arn:aws:iot:{self.target.region}:{self.account_id}:cert/{certificate_id}"

    def data_endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", 8883)


class Jig:
    """A unit back on a slot: says `device_id`, and proves its own connection if its family can.

    `gate` holds the device's check until the test opens it (`waiting` is set once it waits there);
    `refuse` makes the check fail as a unit whose certificate the endpoint does not accept."""

    family = "prov1"

    def __init__(
        self,
        device_id: str,
        *,
        can_verify: bool = True,
        gate: threading.Event | None = None,
        refuse: bool = False,
    ) -> None:
        self.device_id = device_id
        self.capabilities = SimpleNamespace(
            writes_key=True, device_keygen=False, device_verify=can_verify, reads_certificate=False
        )
        self.gate = gate
        self.refuse = refuse
        self.waiting = threading.Event()
        self.verified: list[tuple[str, int, str]] = []
        self.opened: list[str] = []  # ports this jig was opened on
        self.closed = 0

    def factory(self, port: str, **_: Any) -> Jig:
        """A `flasher_factory` that always finds this unit on the slot's port."""
        self.opened.append(port)
        return self

    def identify(self) -> Any:
        return SimpleNamespace(device_id=self.device_id, firmware="1.0")

    def device_verify(self, host: str, port: int, thing_name: str) -> None:
        if self.gate is not None:
            self.waiting.set()
            assert self.gate.wait(10), "the test never opened the jig's gate"
        if self.refuse:
            raise UnitFault(
                "Certificate not accepted",
                f"{host}:{port} hung up on {thing_name}.",
                "Put the unit in the rework bin.",
            )
        self.verified.append((host, port, thing_name))

    def close(self) -> None:
        self.closed += 1
