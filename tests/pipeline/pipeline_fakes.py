"""In-process fakes of the pipeline's seams: flasher, registry, verifier, ledger and identity functions.

They keep just enough state to let a test check what the pipeline left behind (certificates and things in the
"registry", credentials on the "device", records and an open or closed journal in the "ledger"), and they
can be told to fail or to be slow at any call. None of them keeps a reference to a unit's private key.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Unpack

from flashers.base import Capabilities, DeviceInfo
from station.journal import JournalEntry, JournalFields, Stage, journal_fields
from station.ledger import AttemptRecord
from station.model import Event, Identity, Registration, Secret, Target
from station.pipeline import Pipeline, UnitRequest, UnitResult, record_fields

FAKE_KEY_MARK = "FAKEKEYMATERIAL"
ARN_PREFIX = "arn:aws:iot:eu-west-1:111122223333:cert/"


def fake_pem(tag: str) -> str:
    return f"-----BEGIN CERTIFICATE-----\n{tag}{secrets.token_hex(16)}\n-----END CERTIFICATE-----\n"


def fake_certificate_id(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


def fake_new_identity(common_name: str, *, key_type: str, days: int, issuer: Any) -> Identity:
    pem = fake_pem(common_name)
    key = f"-----BEGIN PRIVATE KEY-----\n{FAKE_KEY_MARK}{secrets.token_hex(8)}\n-----END PRIVATE KEY-----\n"
    return Identity(pem, fake_certificate_id(pem), Secret(key.encode()))


def fake_sign_csr(csr: str, issuer: Any, *, common_name: str, days: int) -> str:
    assert issuer is not None
    return fake_pem(f"signed-{common_name}-")


@dataclass(frozen=True)
class Caps(Capabilities):
    """The real capabilities type; a fake unit takes a station-made key unless a test says otherwise."""

    writes_key: bool = True


class Log:
    """A thread-safe, ordered list of what happened, shared by all fakes of one test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[float, str]] = []

    def add(self, what: str) -> None:
        with self._lock:
            self.items.append((time.perf_counter(), what))

    def names(self) -> list[str]:
        with self._lock:
            return [w for _, w in self.items]

    def at(self, what: str) -> float:
        with self._lock:
            return next(t for t, w in self.items if w == what)


class FakeFlasher:
    family = "fake"

    def __init__(
        self,
        log: Log,
        *,
        device_id: str | None = None,
        caps: Caps | None = None,
        write_delay: float = 0.0,
        faults: dict[str, BaseException] | None = None,
        own_certificate: str | None = None,
    ) -> None:
        self.log = log
        self.device_id = device_id
        self.capabilities = caps or Caps()
        self.write_delay = write_delay
        self.faults = dict(faults or {})
        self.own_certificate = own_certificate
        self.certificate: str | None = None  # committed certificate on the "device"
        self.has_key = False
        self.wiped = False
        self.closed = False
        self.verify_calls: list[tuple[str, int, str]] = []
        self.ca_pem: str | None = None

    def _maybe_fail(self, name: str) -> None:
        fault = self.faults.get(name)
        if fault is not None:
            self.log.add(f"flasher.{name}.failed")
            raise fault

    def identify(self) -> DeviceInfo:
        self.log.add("flasher.identify")
        self._maybe_fail("identify")
        return DeviceInfo(self.device_id, "fake-1.0", family=self.family)

    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> str:
        self.log.add("flasher.write.start")
        self.ca_pem = ca_pem
        if self.write_delay:
            time.sleep(self.write_delay)  # stands in for wire time
        self._maybe_fail("write_identity")
        self.certificate = identity.certificate_pem
        self.has_key = identity.private_key is not None  # keep a flag, never the key
        self.log.add("flasher.write.end")
        return "proof"

    def keygen(self, common_name: str) -> str:
        self.log.add("flasher.keygen")
        self._maybe_fail("keygen")
        return f"-----BEGIN CERTIFICATE REQUEST-----\n{common_name}\n-----END CERTIFICATE REQUEST-----\n"

    def read_certificate(self) -> str:
        self.log.add("flasher.read_certificate")
        self._maybe_fail("read_certificate")
        assert self.own_certificate is not None
        return self.own_certificate

    def device_verify(self, host: str, port: int, thing_name: str) -> None:
        self.log.add("flasher.device_verify")
        self.verify_calls.append((host, port, thing_name))
        self._maybe_fail("device_verify")

    def go_online(self) -> None:
        self.log.add("flasher.go_online")
        self._maybe_fail("go_online")

    def wipe(self) -> None:
        self.log.add("flasher.wipe")
        self._maybe_fail("wipe")
        self.certificate = None
        self.has_key = False
        self.wiped = True

    def close(self) -> None:
        self.closed = True


class FakeRegistry:
    """A registry of one (account, region): certificates, things, attachments."""

    def __init__(
        self,
        log: Log,
        *,
        delays: dict[str, float] | None = None,
        faults: dict[str, BaseException] | None = None,
        on_register: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self.delays = dict(delays or {})
        self.faults = dict(faults or {})
        self.on_register = on_register
        self._lock = threading.Lock()
        self.certificates: dict[str, dict[str, Any]] = {}
        self.things: set[str] = set()
        self.endpoint = ("data.fake.example", 8883)
        self.where = "111122223333/eu-west-1"

    def _enter(self, name: str) -> None:
        self.log.add(f"registry.{name}")
        delay = self.delays.get(name)
        if delay:
            time.sleep(delay)  # stands in for a round trip to AWS
        fault = self.faults.get(name)
        if fault is not None:
            self.log.add(f"registry.{name}.failed")
            raise fault

    def register(self, identity: Identity, *, origin: str = "unit") -> Registration:
        if self.on_register is not None:
            self.on_register()
        self._enter("register")
        cid = identity.certificate_id
        with self._lock:
            created = cid not in self.certificates
            self.certificates.setdefault(cid, {"status": "ACTIVE", "things": set(), "policy": False})
        # The real type, so the pipeline is tested against what `station.registry.Registry` returns.
        return Registration(cid, f"{ARN_PREFIX}{cid}", created)

    def create_thing(self, name: str) -> bool:
        self._enter("create_thing")
        with self._lock:
            created = name not in self.things
            self.things.add(name)
        return created

    def attach(self, registration: Registration, thing_name: str) -> None:
        self._enter("attach")
        with self._lock:
            cert = self.certificates[registration.certificate_id]
            cert["things"].add(thing_name)
            cert["policy"] = True

    def rollback(self, registration: Registration) -> None:
        self._enter("rollback")
        with self._lock:
            if registration.created:
                self.certificates.pop(registration.certificate_id, None)
            if registration.thing_created and registration.thing_name:
                self.things.discard(registration.thing_name)

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        self._enter("revoke")
        with self._lock:
            existed = self.certificates.pop(certificate_id, None) is not None
            if delete_thing:
                self.things.discard(delete_thing)
        return existed

    def describe(self, certificate_id: str) -> dict[str, Any] | None:
        self._enter("describe")
        with self._lock:
            cert = self.certificates.get(certificate_id)
            if cert is None:
                return None
            return {
                "certificateId": certificate_id,
                "certificateArn": f"{ARN_PREFIX}{certificate_id}",
                "status": cert["status"],
                "account_id": "111122223333",
                "region": "eu-west-1",
            }

    def data_endpoint(self) -> tuple[str, int]:
        return self.endpoint


class FakeVerifier:
    def __init__(self, log: Log, *, delay: float = 0.0, fault: BaseException | None = None) -> None:
        self.log = log
        self.delay = delay
        self.fault = fault
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        identity: Identity,
        *,
        thing_name: str,
        host: str,
        port: int,
        ca_bytes: bytes | None,
        where: str | None = None,
    ) -> str:
        self.log.add("verify")
        self.calls.append(
            {
                "thing_name": thing_name,
                "host": host,
                "port": port,
                "had_key": identity.private_key is not None,
            }
        )
        if self.delay:
            time.sleep(self.delay)
        if self.fault is not None:
            raise self.fault
        return "verified"


class FakeLedger:
    """Records, events and a journal, all in memory; logs each journal/record operation in order.

    It keeps and returns the ledger's own types (`AttemptRecord`, `JournalEntry`) and checks a journal write
    as the real ledger does (`station.journal.journal_fields`: unknown names and stages are refused)."""

    def __init__(self, log: Log, *, faults: dict[str, BaseException] | None = None) -> None:
        self.log = log
        self.faults = dict(faults or {})
        self._lock = threading.Lock()
        self.records: list[AttemptRecord] = []
        self.events: list[Event] = []
        self.journal: dict[int, JournalEntry] = {}
        self.stages: dict[int, list[Stage]] = {}  # every stage each entry went through, in order
        self.claims: dict[str, str] = {}  # serial → attempt id holding it

    def _maybe_fail(self, name: str) -> None:
        fault = self.faults.get(name)
        if fault is not None:
            raise fault

    def record_attempt(self, record: AttemptRecord, *, events: Sequence[Event] = ()) -> str:
        self.log.add("ledger.record")
        self._maybe_fail("record_attempt")
        with self._lock:
            self.events.extend(events)  # the attempt's events come with its record
            self.records.append(record)
            if self.claims.get(record.serial) == record.attempt_id:
                del self.claims[record.serial]  # a record releases its attempt's claim
        return record.canonical_hash()

    def append_event(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def claim_unit(
        self,
        serial: str,
        attempt_id: str,
        *,
        station_id: str = "",
        slot: str = "",
        replacing: Sequence[str] = (),
    ) -> None:
        with self._lock:
            self.claims[serial] = attempt_id

    def release_unit(self, serial: str, attempt_id: str) -> None:
        with self._lock:
            if self.claims.get(serial) == attempt_id:
                del self.claims[serial]

    def journal_open(self, **fields: Unpack[JournalFields]) -> int:
        self.log.add("journal.open")
        self._maybe_fail("journal_open")
        columns, notes = journal_fields(fields)
        now = time.time()
        with self._lock:
            jid = len(self.journal) + 1
            self.journal[jid] = JournalEntry(id=jid, **columns, **notes, opened_at=now, updated_at=now)
            self.stages[jid] = [self.journal[jid].stage]
        return jid

    def journal_update(self, journal_id: int, **fields: Unpack[JournalFields]) -> None:
        self.log.add(f"journal.update.{fields.get('stage')}")
        columns, notes = journal_fields(fields)
        with self._lock:
            entry = self.journal[journal_id]
            if entry.closed_at is not None:
                raise KeyError(f"no open journal entry {journal_id}")
            self.journal[journal_id] = replace(entry, **columns, **notes, updated_at=time.time())
            self.stages[journal_id].append(self.journal[journal_id].stage)

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        self.log.add("journal.close")
        with self._lock:
            entry = self.journal[journal_id]
            if entry.closed_at is None:
                self.journal[journal_id] = replace(entry, closed_at=time.time(), outcome=outcome)

    def journal_pending(self) -> list[JournalEntry]:
        with self._lock:
            return [e for e in self.journal.values() if e.closed_at is None]

    def find(self, query: str) -> list[AttemptRecord]:
        with self._lock:
            return [
                r for r in self.records if query in (r.serial, r.certificate_id, r.thing_name, r.attempt_id)
            ]

    # -- for tests ------------------------------------------------------------------------------------------
    def open_journals(self) -> list[JournalEntry]:
        return self.journal_pending()

    def backdate(self, journal_id: int, opened_at: float, updated_at: float | None = None) -> None:
        """Make an entry look opened (and last updated) at another time, as a stopped station's would."""
        with self._lock:
            entry = self.journal[journal_id]
            self.journal[journal_id] = replace(
                entry, opened_at=opened_at, updated_at=opened_at if updated_at is None else updated_at
            )

    def reopen(self, journal_id: int) -> None:
        """As if the station died between the record and the close."""
        with self._lock:
            self.journal[journal_id] = replace(self.journal[journal_id], closed_at=None, outcome=None)


def fake_record(result: UnitResult) -> AttemptRecord:
    """The ledger's record of a result (what `station.context.make_record` builds)."""
    return AttemptRecord.from_fields(record_fields(result))


TARGET = Target(
    name="lab-eu", region="eu-west-1", policy_name="p", policy_document="{}", account_id="111122223333"
)


@dataclass
class Rig:
    """One pipeline wired to fakes, plus everything a test wants to look at afterwards."""

    log: Log
    flasher: FakeFlasher
    registry: FakeRegistry
    verifier: FakeVerifier
    ledger: FakeLedger
    pipeline: Pipeline
    events: list[Event] = field(default_factory=list)

    def request(self, serial: str = "SN00000001", **kw: Any) -> UnitRequest:
        kw.setdefault("target", TARGET)
        kw.setdefault("slot", "s1")
        kw.setdefault("product", "widget")
        return UnitRequest(serial=serial, thing_name=lambda device_id: f"widget-{serial}", **kw)


def make_rig(
    *,
    flasher: FakeFlasher | None = None,
    registry: FakeRegistry | None = None,
    verifier: FakeVerifier | None = None,
    ledger: FakeLedger | None = None,
    log: Log | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Rig:
    log = log or Log()
    flasher = flasher or FakeFlasher(log, device_id="SN00000001")
    registry = registry or FakeRegistry(log)
    verifier = verifier or FakeVerifier(log)
    ledger = ledger or FakeLedger(log)
    events: list[Event] = []

    def collect(event: Event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    pipeline = Pipeline(
        ledger=ledger,
        registry_for=lambda target: registry,
        verifier=verifier,
        new_identity=fake_new_identity,
        sign_csr=fake_sign_csr,
        certificate_id=fake_certificate_id,
        record_factory=fake_record,
        on_event=collect,
    )
    return Rig(log, flasher, registry, verifier, ledger, pipeline, events)
