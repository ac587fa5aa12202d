"""The ledger's interface and record types, shared by every backend.

What the ledger holds:
- one `AttemptRecord` per unit attempt (serial, device id, thing, certificate id and PEM, target, station,
  slot, operator, outcome, per-step timings, compensations);
- an append-only, hash-chained event log of `station.model.Event`s. Row `seq` stores `prev_hash` (the hash
  of row `seq - 1`, or `GENESIS_HASH` for the first) and `hash = SHA-256(canonical JSON of {seq, prev_hash,
  event})`. Every attempt record is covered too: writing a record appends a `record` event carrying the
  record's own canonical hash, in the same transaction. So editing, deleting or reordering an event row, or
  editing, deleting or inserting a record row, is caught by `audit()`;
- a crash-recovery journal of in-flight provisioning attempts (mutable, outside the chain: it is a to-do list
  for `station reconcile`, not evidence).

The chain proves the rows were not changed *after the fact by someone who cannot recompute it*: anyone with
write access who rewrites every later hash and the head can forge a consistent chain. Anchor the head hash
that `audit()` reports somewhere else (an MES, a ticket, a signed export) when that matters.

This module holds the types, the canonical hashing, the audit algorithm and the export formats; it does no I/O
of its own and must not know any backend. Key material never enters the ledger: any record, event or journal
text containing "PRIVATE KEY" is refused with a ValueError before it is written.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TextIO

from station.errors import InputError, StationFault
from station.model import Event, Outcome

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
RECORD_EVENT = "record"  # the event kind a record write appends; reserved for the ledger itself
OUTCOMES = tuple(o.value for o in Outcome)
KEY_MARKER = "PRIVATE KEY"
# A certificate id prefix shorter than this matches too much to be a lookup.
CERT_PREFIX_MIN = 8

ExportFormat = Literal["csv", "json"]


# ---------------------------------------------------------------------------------------------------------
# Errors a person sees
# ---------------------------------------------------------------------------------------------------------


class LedgerMissing(InputError):
    """The ledger file named does not exist (and the caller asked not to create it)."""


class LedgerUnavailable(StationFault):
    """The ledger cannot be read or written (locked too long, disk full, not a ledger, newer schema)."""


# ---------------------------------------------------------------------------------------------------------
# Canonical form and hashing
# ---------------------------------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, ASCII only (so lone surrogates cannot break hashing)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def plain(value: Any) -> Any:
    """`value` as plain JSON data (dicts, lists, str, int, float, bool, None): what is stored is what is hashed.

    Anything JSON cannot hold becomes its str(); tuples become lists; NaN/inf are refused (no canonical form).
    """
    # -0.0 + 0.0 is +0.0: SQLite stores an integral REAL such as -0.0 as the integer 0, so a negative zero
    # would hash differently once read back.
    return json.loads(json.dumps(value, default=str, allow_nan=False), parse_float=lambda s: float(s) + 0.0)


def reject_key_material(text: str, what: str) -> None:
    """Refuse anything that looks like a private key; the message never repeats the text."""
    if KEY_MARKER in text.upper():
        raise ValueError(f"{what} contains private key material; the ledger never stores keys")


def chain_hash(seq: int, prev_hash: str, fields: Mapping[str, Any]) -> str:
    """Hash of chain row `seq`: binds its position, its predecessor and its content."""
    return sha256_hex(canonical_json({"seq": seq, "prev_hash": prev_hash, "event": fields}))


def chain_hash_json(seq: int, prev_hash: str, fields_json: str) -> str:
    """`chain_hash` when the event's canonical JSON is already known (it is made outside the write lock).

    Builds exactly `canonical_json({"event": …, "prev_hash": …, "seq": …})`: keys in sorted order, no spaces.
    """
    return sha256_hex(f'{{"event":{fields_json},"prev_hash":{json.dumps(prev_hash)},"seq":{int(seq)}}}')


EVENT_FIELDS = (
    "kind",
    "serial",
    "slot",
    "step",
    "outcome",
    "duration_ms",
    "title",
    "message",
    "next_action",
    "data",
    "at",
)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("timings and timestamps must be finite numbers")
    return number + 0.0  # -0.0 → +0.0, as `plain` does


def event_fields(event: Event) -> dict[str, Any]:
    """The event as the plain dict that is stored and hashed (checked for key material)."""
    return encode_event(event)[0]


def encode_event(event: Event) -> tuple[dict[str, Any], str]:
    """The event's stored fields and their canonical JSON; refuses key material."""
    fields = {
        "kind": str(event.kind),
        "serial": str(event.serial),
        "slot": str(event.slot),
        "step": str(event.step),
        "outcome": str(event.outcome),
        "duration_ms": _opt_float(event.duration_ms),
        "title": str(event.title),
        "message": str(event.message),
        "next_action": str(event.next_action),
        "data": plain(dict(event.data)),
        "at": _opt_float(event.at),
    }
    text = canonical_json(fields)
    reject_key_material(text, "event")
    return fields, text


def event_from_fields(fields: Mapping[str, Any]) -> Event:
    return Event(**{name: fields[name] for name in EVENT_FIELDS})


def encode_appended_event(event: Event) -> tuple[dict[str, Any], str]:
    """`encode_event` for an event a caller appends: the `record` kind is the ledger's own and is refused,
    so nobody can forge the entry that seals a record."""
    if event.kind == RECORD_EVENT:
        raise ValueError(f"event kind {RECORD_EVENT!r} is reserved for the ledger's own record entries")
    return encode_event(event)


def encode_record_seal(record: AttemptRecord, digest: str) -> tuple[dict[str, Any], str]:
    """The encoded `record` event a backend appends with `record` (same transaction): it carries the record's
    canonical hash `digest`, which `audit_chain` compares with the stored record."""
    return encode_event(
        Event(
            kind=RECORD_EVENT,
            serial=record.serial,
            slot=record.slot,
            outcome=record.outcome,
            data={"attempt_id": record.attempt_id, "record_hash": digest},
        )
    )


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------

# Names other modules use for the same field (the pipeline's `record_fields` says "account").
_RECORD_ALIASES = {"account": "account_id", "target_name": "target", "timings": "timings_ms"}


@dataclass(frozen=True)
class AttemptRecord:
    """One unit attempt: who, what, where, how it ended and how long each step took. Never a private key."""

    attempt_id: str
    serial: str
    outcome: str  # PASS / FAIL / ERROR / DONE (a QA action that proved nothing about the identity)
    device_id: str | None = None
    product: str = ""
    thing_name: str = ""
    certificate_id: str = ""
    certificate_pem: str = field(default="", repr=False)
    certificate_arn: str = ""
    target: str = ""
    account_id: str = ""
    region: str = ""
    station_id: str = ""
    slot: str = ""
    operator: str = ""
    title: str = ""
    message: str = ""
    next_action: str = ""
    error_kind: str = ""
    firmware: str | None = None
    family: str = ""
    key_source: str = ""
    verify_mode: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)  # step → milliseconds
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0
    compensations: list[Any] = field(default_factory=list)  # what was rolled back, in order
    extra: dict[str, Any] = field(default_factory=dict)  # fields a newer caller added; kept and hashed
    action: str = "provision"  # station.units.Action: what the attempt did to the unit

    def __post_init__(self) -> None:
        # Normalise so that what is stored, read back and hashed is byte-for-byte the same data.
        outcome = str(self.outcome)
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if not str(self.attempt_id) or not str(self.serial):
            raise ValueError("an attempt record needs an attempt id and a serial")
        set_ = object.__setattr__
        set_(self, "outcome", outcome)
        for name in _STR_FIELDS:
            set_(self, name, str(getattr(self, name)))
        for name in ("device_id", "firmware"):
            value = getattr(self, name)
            set_(self, name, None if value is None else str(value))
        timings = {str(k): _opt_float(v) for k, v in dict(self.timings_ms).items()}
        set_(self, "timings_ms", timings)
        set_(self, "started_at", _opt_float(self.started_at) or 0.0)
        set_(self, "finished_at", _opt_float(self.finished_at) or 0.0)
        set_(self, "compensations", plain(list(self.compensations)))
        set_(self, "extra", plain(dict(self.extra)))
        reject_key_material(canonical_json(self.to_dict()), "attempt record")

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> AttemptRecord:
        """Build from a plain mapping (e.g. `station.pipeline.record_fields`); unknown keys go to `extra`."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = dict(fields.get("extra") or {})
        for key, value in fields.items():
            if key == "extra":
                continue
            name = _RECORD_ALIASES.get(key, key)
            if name in known:
                kwargs[name] = value
            else:
                extra[key] = value
        kwargs["extra"] = extra
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def canonical_hash(self) -> str:
        return record_hash(self.to_dict())


_STR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(AttemptRecord)
    if f.name
    not in {
        "outcome",
        "device_id",
        "firmware",
        "timings_ms",
        "started_at",
        "finished_at",
        "compensations",
        "extra",
    }
)
RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(AttemptRecord))
RECORD_JSON_FIELDS = ("timings_ms", "compensations", "extra")


def record_hash(fields: Mapping[str, Any]) -> str:
    """Canonical hash of a record's fields (as `AttemptRecord.to_dict()` gives them)."""
    return sha256_hex(canonical_json({name: fields[name] for name in RECORD_FIELDS}))


def as_record(record: AttemptRecord | Mapping[str, Any]) -> AttemptRecord:
    return record if isinstance(record, AttemptRecord) else AttemptRecord.from_fields(record)


# ---------------------------------------------------------------------------------------------------------
# Journal
# ---------------------------------------------------------------------------------------------------------

JOURNAL_FIELDS = (
    "attempt_id",
    "serial",
    "target",
    "account_id",
    "region",
    "slot",
    "product",
    "certificate_id",
    "certificate_pem",
    "certificate_arn",
    "certificate_created",
    "thing_name",
    "thing_created",
    "stage",
)
# The pipeline says "state" and "account"; both mean the same columns.
_JOURNAL_ALIASES = {"state": "stage", "account": "account_id", "target_name": "target"}
_JOURNAL_BOOLS = ("certificate_created", "thing_created")


def journal_columns(fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split journal keyword fields into known columns and `extra`, normalised and checked for keys."""
    columns: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in fields.items():
        name = _JOURNAL_ALIASES.get(key, key)
        if name in _JOURNAL_BOOLS:
            columns[name] = None if value is None else bool(value)
        elif name in JOURNAL_FIELDS:
            columns[name] = "" if value is None else str(value)
        else:
            extra[key] = value
    extra = plain(extra)
    reject_key_material(canonical_json([columns, extra]), "journal entry")
    return columns, extra


@dataclass(frozen=True)
class JournalEntry:
    """One in-flight provisioning attempt, written before its first AWS side effect."""

    id: int
    attempt_id: str = ""
    serial: str = ""
    target: str = ""
    account_id: str = ""
    region: str = ""
    slot: str = ""
    product: str = ""
    certificate_id: str = ""
    certificate_pem: str = ""
    certificate_arn: str = ""
    certificate_created: bool | None = None  # None: not known yet (register did not answer)
    thing_name: str = ""
    thing_created: bool = False
    stage: str = ""  # e.g. registering → registered → thing → attached → verified / rolled_back
    opened_at: float = 0.0
    updated_at: float = 0.0
    closed_at: float | None = None
    outcome: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """The pipeline's word for `stage`."""
        return self.stage

    @property
    def account(self) -> str:
        return self.account_id

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------------------------------------------------
# Query and audit results
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEvent:
    """An event as the chain holds it."""

    seq: int
    prev_hash: str
    hash: str
    event: Event

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, **dataclasses.asdict(self.event)}


@dataclass(frozen=True)
class UnitSummary:
    """A unit (serial) and its latest attempt; `attempts` counts every attempt recorded for it."""

    serial: str
    outcome: str
    attempts: int
    latest: AttemptRecord

    def to_dict(self) -> dict[str, Any]:
        r = self.latest
        return {
            "serial": self.serial,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "attempt_id": r.attempt_id,
            "thing_name": r.thing_name,
            "certificate_id": r.certificate_id,
            "target": r.target,
            "station_id": r.station_id,
            "slot": r.slot,
            "finished_at": r.finished_at,
        }


@dataclass(frozen=True)
class RowRef:
    """A row of the ledger: its table and key (`seq` for events, attempt id for records)."""

    table: str
    key: int | str

    def __str__(self) -> str:
        return f"{self.table} {self.key}"


@dataclass(frozen=True)
class AuditResult:
    ok: bool
    checked: int  # rows checked (events + records)
    first_bad_row: RowRef | None = None
    reason: str = ""
    # Intact: the last event's seq and hash (anchor them elsewhere to catch a rewritten chain).
    # Not intact: the last event row that was verified before the first bad row.
    head_seq: int = 0
    head_hash: str = GENESIS_HASH

    def to_dict(self) -> dict[str, Any]:
        bad = self.first_bad_row
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_row": None if bad is None else {"table": bad.table, "key": bad.key},
            "reason": self.reason,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
        }


@dataclass(frozen=True)
class ChainRow:
    """A raw event row for the audit. `fields` is None when the row could not even be decoded."""

    seq: int
    prev_hash: str
    hash: str
    fields: dict[str, Any] | None


@dataclass(frozen=True)
class RecordRow:
    """A raw record row for the audit. `fields` is None when the row could not even be decoded."""

    attempt_id: str
    fields: dict[str, Any] | None


def audit_chain(
    rows: Iterable[ChainRow], head: tuple[int, str] | None, records: Iterable[RecordRow]
) -> AuditResult:
    """Check the chain and the records against it; report the first bad row.

    `rows` in ascending seq order, `head` the (seq, hash) the ledger wrote with its last append (None if it
    never appended). Any backend feeds its raw rows here, so every backend is audited by the same rules.
    """
    checked = 0
    expected_seq = 1
    prev_hash = GENESIS_HASH
    record_hashes: dict[str, tuple[int, str]] = {}

    def bad(table: str, key: int | str, reason: str) -> AuditResult:
        return AuditResult(False, checked, RowRef(table, key), reason, expected_seq - 1, prev_hash)

    for row in rows:
        if row.seq > expected_seq:
            missing = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}–{row.seq - 1}"
            return bad("events", expected_seq, f"event row(s) {missing} are missing (deleted)")
        if row.seq < expected_seq:
            return bad("events", row.seq, "event rows are out of order (duplicate or reordered seq)")
        if row.prev_hash != prev_hash:
            return bad(
                "events",
                row.seq,
                "the link to the previous row is broken (rows deleted, inserted or reordered)",
            )
        if row.fields is None:
            return bad("events", row.seq, "the row cannot be decoded (edited)")
        try:
            computed = chain_hash(row.seq, row.prev_hash, row.fields)
        except (TypeError, ValueError):
            return bad("events", row.seq, "the row cannot be decoded (edited)")
        if computed != row.hash:
            return bad("events", row.seq, "the row's content does not match its hash (edited)")
        if row.fields.get("kind") == RECORD_EVENT:
            data = row.fields.get("data") or {}
            attempt_id = str(data.get("attempt_id", ""))
            if attempt_id in record_hashes:
                return bad("events", row.seq, f"attempt {attempt_id} is recorded twice in the chain")
            record_hashes[attempt_id] = (row.seq, str(data.get("record_hash", "")))
        checked += 1
        prev_hash = row.hash
        expected_seq = row.seq + 1

    last_seq = expected_seq - 1
    if head is None:
        if last_seq:
            return bad("chain_head", 1, "the chain head is missing (deleted)")
    elif head != (last_seq, prev_hash):
        if head[0] > last_seq:
            missing = f"{last_seq + 1}" if head[0] == last_seq + 1 else f"{last_seq + 1}–{head[0]}"
            return bad("events", last_seq + 1, f"event row(s) {missing} are missing (deleted)")
        return bad("chain_head", 1, "the chain head does not match the last event row (edited)")

    seen: set[str] = set()
    for record in records:
        entry = record_hashes.get(record.attempt_id)
        if record.attempt_id in seen:
            return bad("records", record.attempt_id, "the record appears twice")
        seen.add(record.attempt_id)
        if entry is None:
            return bad("records", record.attempt_id, "the record is not in the chain (inserted)")
        if record.fields is None:
            return bad("records", record.attempt_id, "the record cannot be decoded (edited)")
        try:
            computed = record_hash(record.fields)
        except (KeyError, TypeError, ValueError):
            return bad("records", record.attempt_id, "the record cannot be decoded (edited)")
        if computed != entry[1]:
            return bad(
                "records",
                record.attempt_id,
                f"the record does not match the hash in event {entry[0]} (edited)",
            )
        checked += 1
    for attempt_id, (seq, _) in sorted(record_hashes.items(), key=lambda item: item[1][0]):
        if attempt_id not in seen:
            return bad("records", attempt_id, f"the record chained by event {seq} is missing (deleted)")
    return AuditResult(True, checked, None, "", last_seq, prev_hash)


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------

# Stable CSV columns: add new ones at the end only (spreadsheets and MES imports depend on the order).
CSV_COLUMNS = (
    "attempt_id",
    "serial",
    "outcome",
    "device_id",
    "product",
    "thing_name",
    "certificate_id",
    "target",
    "account_id",
    "region",
    "station_id",
    "slot",
    "operator",
    "title",
    "message",
    "next_action",
    "started_at",
    "finished_at",
    "timings_ms",
    "compensations",
    "certificate_arn",
    "error_kind",
    "firmware",
    "family",
    "key_source",
    "verify_mode",
    "certificate_pem",
)


def write_export(records: Iterable[AttemptRecord], fmt: str, out: TextIO) -> int:
    """Write records as CSV (one row per attempt, `CSV_COLUMNS`) or JSON (a list of records)."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for record in records:
            row = record.to_dict()
            writer.writerow(
                [
                    canonical_json(row[c]) if c in RECORD_JSON_FIELDS else ("" if row[c] is None else row[c])
                    for c in CSV_COLUMNS
                ]
            )
            count += 1
    elif fmt == "json":
        out.write("[")
        for record in records:
            out.write(",\n " if count else "\n ")
            out.write(json.dumps(record.to_dict(), sort_keys=True))
            count += 1
        out.write("\n]\n" if count else "]\n")
    else:
        raise ValueError(f"unknown export format {fmt!r} (csv or json)")
    return count


# ---------------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------------


class Ledger(ABC):
    """A station's records, hash-chained event log and crash journal. Safe to share between slot threads."""

    # -- chain --------------------------------------------------------------------------------------------
    @abstractmethod
    def append_event(self, event: Event) -> int:
        """Append one event to the chain; returns its seq. Refuses key material and the reserved kind."""

    @abstractmethod
    def record_attempt(self, record: AttemptRecord | Mapping[str, Any]) -> str:
        """Store one attempt record and chain its hash (atomically); returns the record's hash.

        A mapping is accepted (`AttemptRecord.from_fields`). An attempt id can be recorded once.
        """

    @abstractmethod
    def events(self, serial: str | None = None, *, after_seq: int = 0) -> list[LedgerEvent]:
        """Events in chain order, all or one serial's, after `after_seq`."""

    @abstractmethod
    def audit(self) -> AuditResult:
        """Check the whole chain and every record against it."""

    # -- records ------------------------------------------------------------------------------------------
    @abstractmethod
    def records(self) -> Iterator[AttemptRecord]:
        """Every attempt record, in the order they were written."""

    @abstractmethod
    def find(self, query: str) -> list[AttemptRecord]:
        """Attempts whose serial, thing name, attempt id or certificate id equals `query`, or whose
        certificate id starts with it (at least `CERT_PREFIX_MIN` hex characters). Oldest first."""

    @abstractmethod
    def units(self, outcome: str | None = None) -> list[UnitSummary]:
        """One line per serial with its latest attempt; `outcome` filters on that latest attempt's outcome."""

    # -- journal ------------------------------------------------------------------------------------------
    @abstractmethod
    def journal_open(self, **fields: Any) -> int:
        """Open a journal entry (durably) before the attempt's first AWS side effect; returns its id.

        Fields: attempt_id, serial, target, account_id (or account), region, slot, product, certificate_id,
        certificate_pem, certificate_arn, certificate_created, thing_name, thing_created, stage (or state).
        Anything else is kept in `extra`.
        """

    @abstractmethod
    def journal_update(self, journal_id: int, **fields: Any) -> None:
        """Update an open entry (durably). Raises KeyError for an unknown or closed entry."""

    @abstractmethod
    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        """Close an entry: it leaves `journal_pending()`. Closing twice is harmless."""

    @abstractmethod
    def journal_pending(self) -> list[JournalEntry]:
        """Open entries, oldest first: what `station reconcile` must roll back or complete."""

    # -- lifetime -----------------------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared -------------------------------------------------------------------------------------------
    def export(self, fmt: str, out: TextIO | str | Path) -> int:
        """Write every record as CSV or JSON to a text stream or a file path; returns how many."""
        if fmt not in ("csv", "json"):
            raise ValueError(f"unknown export format {fmt!r} (csv or json)")
        if isinstance(out, str | Path):
            with open(out, "w", encoding="utf-8", newline="") as stream:
                return write_export(self.records(), fmt, stream)
        return write_export(self.records(), fmt, out)


def matches_query(record: AttemptRecord, query: str) -> bool:
    """The `find` rule, for backends that filter in Python."""
    q = query.strip()
    if not q:
        return False
    if q in (record.serial, record.thing_name, record.attempt_id, record.certificate_id):
        return True
    return is_cert_prefix(q) and record.certificate_id.startswith(q.lower())


def is_cert_prefix(query: str) -> bool:
    q = query.strip().lower()
    return CERT_PREFIX_MIN <= len(q) <= 64 and all(c in "0123456789abcdef" for c in q)
