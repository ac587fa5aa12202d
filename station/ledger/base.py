"""The ledger's interface and record types, shared by every backend.

What the ledger holds:
- one `AttemptRecord` per unit attempt (serial, device id, thing, certificate id and PEM, target, station,
  slot, operator, outcome, per-step timings, compensations);
- an append-only, hash-chained event log of `station.model.Event`s. Row `seq` stores `prev_hash` (the hash
  of row `seq - 1`, or `GENESIS_HASH` for the first) and `hash = SHA-256(canonical JSON of {seq, prev_hash,
  event})`. Every attempt record is covered too: writing a record appends a `record` event carrying the
  record's own canonical hash, in the same transaction. So editing, deleting or reordering an event row, or
  editing, deleting or inserting a record row, is caught by `audit()`;
- one current state per unit (serial), `station.units.UnitState`: written in the same transaction as the
  record that changes it, computed by `station.units.apply`, so `audit()` can replay the records and compare;
- a crash-recovery journal of in-flight provisioning attempts (a mutable to-do list for reconcile). Every
  open/update/close also appends a chained `journal` event (ids, stage, certificate id, created flags; never
  the PEM), so an entry closed or edited by hand no longer matches the chain and `audit()` names it.

The chain alone proves the rows were not changed by someone who cannot recompute it; `station.ledger.anchor`
adds signed checkpoints kept outside the ledger so that truncation and re-chaining are caught too.

This module holds the types, the canonical hashing, the audit rules and the export formats; it does no I/O
of its own (except writing an export to a path it is given) and must not know any backend. Key material never enters the ledger: any record, event or journal
text containing "PRIVATE KEY" is refused with a ValueError before it is written.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TextIO, Unpack

from station.errors import InputError, StationFault, UnitFault
from station.i18n import _
from station.journal import JournalEntry, JournalFields, journal_fields
from station.model import Event, Outcome
from station.units import LiveIdentity, UnitState, iso_utc

if TYPE_CHECKING:
    from station.ledger.anchor import Anchor

# 2: the unit state table, `action` on records, journal events in the chain.
SCHEMA_VERSION = 2
GENESIS_HASH = "0" * 64
RECORD_EVENT = "record"  # the event kind a record write appends; reserved for the ledger itself
JOURNAL_EVENT = "journal"  # the event kind every journal write appends; reserved too
RESERVED_KINDS = (RECORD_EVENT, JOURNAL_EVENT)
# A page of units is at most this long (a caller asking for more gets this many).
MAX_PAGE = 1000
# How many events one `record_attempt` may carry (DynamoDB's transaction holds 100 items).
MAX_EVENTS_PER_RECORD = 90
# Progress callbacks: (rows done, rows in total) — total is the chain's length when known, else 0.
Progress = Callable[[int, int], None]
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


class UnitAlreadyLive(UnitFault):
    """`record_attempt` refused a provision record: the unit already has a live identity the record neither
    replaces nor could have known about (another station or slot made the unit live while this attempt ran).
    Nothing was written. `identity` is that live identity, `station_id`/`slot` where it was made; the message
    is the re-scan policy's answer ("SN… was provisioned on … at station/slot as …; send it to QA")."""

    def __init__(self, serial: str, identity: LiveIdentity, station_id: str = "", slot: str = "") -> None:
        self.serial = serial
        self.identity = identity
        self.station_id = station_id
        self.slot = slot
        day = datetime.fromtimestamp(float(identity.since or 0.0), UTC).strftime("%Y-%m-%d")
        super().__init__(
            _("Already provisioned"),
            _(
                "{serial} was provisioned on {day} at {station_id}/{slot} as {certificate_id}; send it to QA."
            ).format(
                serial=serial,
                day=day,
                station_id=station_id,
                slot=slot,
                certificate_id=identity.thing_name or identity.certificate_id[:12],
            ),
            _("Put the unit in the QA tray: QA re-verifies, revokes or re-provisions it."),
        )


class UnitClaimed(UnitFault):
    """`claim_unit` refused: another attempt (at `station_id`/`slot`, since `since`) is provisioning the unit
    right now. Nothing was written; the unit waits until that attempt ends."""

    def __init__(self, serial: str, station_id: str, slot: str, since: float) -> None:
        self.serial = serial
        self.station_id = station_id
        self.slot = slot
        self.since = since
        at = datetime.fromtimestamp(float(since or 0.0), UTC).strftime("%H:%M:%S")
        super().__init__(
            _("Being provisioned elsewhere"),
            _("{serial} is being provisioned at {station_id}/{slot} (since {at} UTC).").format(
                serial=serial, station_id=station_id, slot=slot, at=at
            ),
            _("Put the unit aside and scan it again once that station has finished; then QA decides."),
        )


def live_conflict(previous: UnitState | None, record: AttemptRecord) -> LiveIdentity | None:
    """The live identity a provision `record` must not be stored over, or None.

    A successful provision that makes a new identity live conflicts with a live identity of the unit's
    stored state that is not its own certificate, not named in its `extra["replaced"]`, and either in the same
    target (storing the record would silently drop a live certificate) or made live after this attempt
    started (another station or slot provisioned the unit meanwhile: the re-scan check could not see it).
    Pure: reads only its two arguments."""
    if previous is None or not record.certificate_id or record.outcome not in ("PASS", "DONE"):
        return None
    if str(record.action or "provision") != "provision":
        return None
    replaced = record.extra.get("replaced") or []
    named = {str(c) for c in ([replaced] if isinstance(replaced, str) else replaced)}
    for identity in previous.live:
        if identity.certificate_id == record.certificate_id or identity.certificate_id in named:
            continue
        if identity.attempt_id == record.attempt_id:
            continue
        started = float(record.started_at or 0.0)  # 0: unknown, so only the same-target rule applies
        if identity.target == record.target or (started and float(identity.since or 0.0) >= started):
            return identity
    return None


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
    if event.kind in RESERVED_KINDS:
        raise ValueError(f"event kind {event.kind!r} is reserved for the ledger's own entries")
    return encode_event(event)


def encode_attempt_events(events: Sequence[Event]) -> list[tuple[dict[str, Any], str]]:
    """The events a `record_attempt` carries, encoded and checked (reserved kinds and keys refused)."""
    if len(events) > MAX_EVENTS_PER_RECORD:
        raise ValueError(f"one attempt may carry at most {MAX_EVENTS_PER_RECORD} events, not {len(events)}")
    return [encode_appended_event(e) for e in events]


# The journal columns a journal event carries: enough to tell what the entry said, never the PEM.
JOURNAL_CHAINED = (
    "attempt_id",
    "serial",
    "target",
    "certificate_id",
    "certificate_created",
    "thing_name",
    "thing_created",
    "stage",
)


def journal_snapshot(entry: JournalEntry) -> dict[str, Any]:
    """What the chain says about a journal entry after a write: compared with the row by the audit."""
    data: dict[str, Any] = {"journal_id": int(entry.id)}
    for name in JOURNAL_CHAINED:
        value = getattr(entry, name)
        data[name] = str(value) if name == "stage" else value
    data["closed"] = entry.closed_at is not None
    data["outcome"] = entry.outcome
    return data


def encode_journal_event(entry: JournalEntry, op: str) -> tuple[dict[str, Any], str]:
    """The chained event for a journal write (`op`: open, update, close)."""
    return encode_event(
        Event(
            kind=JOURNAL_EVENT,
            serial=entry.serial,
            slot=entry.slot,
            step=op,
            outcome=entry.outcome or "",
            data=journal_snapshot(entry),
        )
    )


def journal_mismatch(entry: JournalEntry | None, chained: Mapping[str, Any] | None) -> str:
    """Why a journal row and the latest chained event for it disagree ("" when they agree)."""
    if entry is None:
        return "the journal entry chained in the log is missing (deleted)"
    if chained is None:
        return "the journal entry is not in the chain (inserted)"
    now = journal_snapshot(entry)
    for name, value in now.items():
        if chained.get(name) != value:
            if name == "closed":
                how = "closed" if value else "reopened"
                return f"the journal entry was {how} outside the station (the chain says otherwise)"
            return f"the journal entry's {name} does not match the chain (edited)"
    return ""


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

# Second names earlier versions accepted for a record field: refused, so that a field has one name.
# (Stored records never used them: their columns are the fields' own names, see `RECORD_FIELDS`.)
_OLD_RECORD_NAMES = {"account": "account_id", "target_name": "target", "timings": "timings_ms"}


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
        """Build from a plain mapping (e.g. `station.pipeline.record_fields`); unknown keys go to `extra`.

        A field's old second name (`account`, `target_name`, `timings`) is a `TypeError`, not an extra key.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = dict(fields.get("extra") or {})
        for key, value in fields.items():
            if key == "extra":
                continue
            if key in _OLD_RECORD_NAMES:
                raise TypeError(f"attempt record: {key!r} (the field is {_OLD_RECORD_NAMES[key]!r})")
            if key in known:
                kwargs[key] = value
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
# Journal (the entry type and its stored columns are `station.journal`'s)
# ---------------------------------------------------------------------------------------------------------


def journal_columns(fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check one journal write (`station.journal.journal_fields`: unknown names are a TypeError, an unknown
    stage a ValueError) and refuse key material; (columns, notes for the row's `extra`)."""
    columns, notes = journal_fields(fields)
    reject_key_material(canonical_json([columns, notes]), "journal entry")
    return columns, notes


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
class UnitPage:
    """One page of units, newest first; pass `next_cursor` as `after` for the next page (None: no more)."""

    units: list[UnitState]
    next_cursor: str | None = None


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
    units_checked: int = 0  # unit rows compared with a replay of their records
    journal_checked: int = 0  # journal rows compared with their latest chained journal event
    anchored_seq: int = 0  # the newest signed checkpoint the chain was checked against (0: none)
    anchor_note: str = ""  # what the anchor check found or why it could not run
    since_seq: int = 0  # incremental audit: rows up to this seq were trusted from the checkpoint
    # A ledger with one chain per station (DynamoDB): the station whose chain the verdict (or the first bad
    # row) is about ("" for a one-station ledger), and every audited station's (id, head seq, head hash).
    station: str = ""
    stations: tuple[tuple[str, int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        bad = self.first_bad_row
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_row": None if bad is None else {"table": bad.table, "key": bad.key},
            "reason": self.reason,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "units_checked": self.units_checked,
            "journal_checked": self.journal_checked,
            "anchored_seq": self.anchored_seq,
            "anchor_note": self.anchor_note,
            "since_seq": self.since_seq,
            "station": self.station,
            "stations": [{"station": s, "head_seq": n, "head_hash": h} for s, n, h in self.stations],
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
    for attempt_id, (seq, _hash) in sorted(record_hashes.items(), key=lambda item: item[1][0]):
        if attempt_id not in seen:
            return bad("records", attempt_id, f"the record chained by event {seq} is missing (deleted)")
    return AuditResult(True, checked, None, "", last_seq, prev_hash)


class ChainVerifier:
    """The chain rules of `audit_chain`, one row at a time and in constant memory.

    `lookup(attempt_id)` returns the stored record row a seal names and its storage position (rows are
    stored in seal order, so positions must strictly increase along the chain) or None. Start at
    `start_seq`/`start_hash` to verify incrementally from a trusted checkpoint. `watch_seq` asks for the hash
    of one row (the anchored one) as it passes.
    """

    def __init__(
        self,
        lookup: Callable[[str], tuple[int, RecordRow] | None],
        *,
        start_seq: int = 1,
        start_hash: str = GENESIS_HASH,
        watch_seq: int = 0,
    ) -> None:
        self._lookup = lookup
        self.expected_seq = start_seq
        self.prev_hash = start_hash
        self.checked = 0
        self.seals = 0
        self.watch_seq = watch_seq
        self.watched_hash: str | None = start_hash if watch_seq == start_seq - 1 else None
        self.chain_error: AuditResult | None = None
        self.record_error: AuditResult | None = None
        self._last_position = -1

    def _bad(self, table: str, key: int | str, reason: str) -> AuditResult:
        return AuditResult(
            False, self.checked, RowRef(table, key), reason, self.expected_seq - 1, self.prev_hash
        )

    def feed(self, row: ChainRow) -> bool:
        """Check one row; False once the chain is broken (stop feeding)."""
        if self.chain_error is not None:
            return False
        error = self._check(row)
        if error:
            self.chain_error = self._bad("events", error[0], error[1])
            return False
        if row.fields is not None and row.fields.get("kind") == RECORD_EVENT:
            self._check_seal(row.seq, row.fields.get("data") or {})
        self.checked += 1
        if row.seq == self.watch_seq:
            self.watched_hash = row.hash
        self.prev_hash = row.hash
        self.expected_seq = row.seq + 1
        return True

    def _check(self, row: ChainRow) -> tuple[int, str] | None:
        expected = self.expected_seq
        if row.seq > expected:
            missing = f"{expected}" if row.seq == expected + 1 else f"{expected}–{row.seq - 1}"
            return expected, f"event row(s) {missing} are missing (deleted)"
        if row.seq < expected:
            return row.seq, "event rows are out of order (duplicate or reordered seq)"
        if row.prev_hash != self.prev_hash:
            return row.seq, "the link to the previous row is broken (rows deleted, inserted or reordered)"
        if row.fields is None:
            return row.seq, "the row cannot be decoded (edited)"
        try:
            computed = chain_hash(row.seq, row.prev_hash, row.fields)
        except (TypeError, ValueError):
            return row.seq, "the row cannot be decoded (edited)"
        if computed != row.hash:
            return row.seq, "the row's content does not match its hash (edited)"
        return None

    def _check_seal(self, seq: int, data: Mapping[str, Any]) -> None:
        self.seals += 1
        if self.record_error is not None:
            return
        attempt_id = str(data.get("attempt_id", ""))
        found = self._lookup(attempt_id)
        if found is None:
            self.record_error = self._bad(
                "records", attempt_id, f"the record chained by event {seq} is missing (deleted)"
            )
            return
        position, record = found
        if position <= self._last_position:
            self.record_error = self._bad(
                "events", seq, f"attempt {attempt_id} is recorded twice in the chain"
            )
            return
        self._last_position = position
        if record.fields is None:
            self.record_error = self._bad("records", attempt_id, "the record cannot be decoded (edited)")
            return
        try:
            computed = record_hash(record.fields)
        except (KeyError, TypeError, ValueError):
            computed = ""
        if computed != str(data.get("record_hash", "")):
            reason = f"the record does not match the hash in event {seq} (edited)"
            if not computed:
                reason = "the record cannot be decoded (edited)"
            self.record_error = self._bad("records", attempt_id, reason)
            return
        self.checked += 1

    def finish(
        self, head: tuple[int, str] | None, record_count: int, unsealed: Callable[[], str | None]
    ) -> AuditResult:
        """The verdict once every row was fed: the head, then the records (`record_count` stored rows;
        `unsealed()` names one that no seal names, asked only when there are more rows than seals)."""
        if self.chain_error is not None:
            return self.chain_error
        last_seq = self.expected_seq - 1
        if head is None:
            if last_seq:
                return self._bad("chain_head", 1, "the chain head is missing (deleted)")
        elif head != (last_seq, self.prev_hash):
            if head[0] > last_seq:
                missing = f"{last_seq + 1}" if head[0] == last_seq + 1 else f"{last_seq + 1}–{head[0]}"
                return self._bad("events", last_seq + 1, f"event row(s) {missing} are missing (deleted)")
            return self._bad("chain_head", 1, "the chain head does not match the last event row (edited)")
        if self.record_error is not None:
            return self.record_error
        if record_count > self.seals:
            extra = unsealed()
            if extra is not None:
                return self._bad("records", extra, "the record is not in the chain (inserted)")
        return AuditResult(True, self.checked, None, "", last_seq, self.prev_hash)


def check_units(
    groups: Iterable[tuple[str, Iterable[AttemptRecord]]],
    rows: Iterable[tuple[str, dict[str, Any] | None]],
) -> tuple[int, str, str]:
    """Compare the unit table with a replay of the records, both sorted by serial (a merge: constant memory).

    `groups`: (serial, that serial's records in chain order); `rows`: (serial, stored UnitState dict or None
    if undecodable). Returns (units checked, first differing serial or "", why).
    """
    from station.units import apply

    checked = 0
    group_iter = iter(groups)
    row_iter = iter(rows)
    group = next(group_iter, None)
    row = next(row_iter, None)
    while group is not None or row is not None:
        if row is None or (group is not None and group[0] < row[0]):
            assert group is not None
            return checked, group[0], "the unit's state row is missing (deleted)"
        if group is None or row[0] < group[0]:
            return checked, row[0], "the unit's state row has no records behind it (inserted)"
        state: UnitState | None = None
        for record in group[1]:
            state = apply(state, record)
        stored = row[1]
        if (
            stored is None
            or state is None
            or canonical_json(plain(state.to_dict())) != canonical_json(stored)
        ):
            return checked, row[0], "the unit's state row does not equal a replay of its records (edited)"
        checked += 1
        group = next(group_iter, None)
        row = next(row_iter, None)
    return checked, "", ""


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
    "action",
    "state",
    "state_changed_at",
)


# Export columns that hold epoch seconds in the ledger and ISO-8601 UTC text in an export.
EXPORT_TIMES = ("started_at", "finished_at", "state_changed_at")


def export_row(record: AttemptRecord, unit: UnitState | None) -> dict[str, Any]:
    """One exported attempt: the record, its unit's current state, every time as ISO-8601 UTC."""
    row = record.to_dict()
    row["state"] = unit.state if unit else ""
    row["state_changed_at"] = unit.state_changed_at if unit else 0.0
    for name in EXPORT_TIMES:
        row[name] = iso_utc(row[name] or 0.0)
    return row


def write_export(rows: Iterable[tuple[AttemptRecord, UnitState | None]], fmt: str, out: TextIO) -> int:
    """Write (record, its unit's state) pairs as CSV (one row per attempt, `CSV_COLUMNS`) or JSON (a list);
    streams: one row in memory at a time."""
    count = 0
    records = (export_row(record, unit) for record, unit in rows)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in records:
            writer.writerow(
                [
                    canonical_json(row[c]) if c in RECORD_JSON_FIELDS else ("" if row[c] is None else row[c])
                    for c in CSV_COLUMNS
                ]
            )
            count += 1
    elif fmt == "json":
        out.write("[")
        for row in records:
            out.write(",\n " if count else "\n ")
            out.write(json.dumps(row, sort_keys=True))
            count += 1
        out.write("\n]\n" if count else "]\n")
    else:
        raise ValueError(f"unknown export format {fmt!r} (csv or json)")
    return count


# ---------------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------------


class Ledger(ABC):
    """A station's records, unit states, hash-chained event log and crash journal. Safe to share between slot
    threads. `anchor` (optional) signs checkpoints of the chain head outside the ledger (see `anchor`)."""

    anchor: Anchor | None = None
    # A checkpoint is appended after this many records (and at `close` and `checkpoint`).
    checkpoint_every: int = 1000
    _since_checkpoint: int = 0
    _wrote: bool = False

    # -- chain --------------------------------------------------------------------------------------------
    @abstractmethod
    def append_event(self, event: Event) -> int:
        """Append one event to the chain; returns its seq. Refuses key material and the reserved kinds."""

    @abstractmethod
    def record_attempt(
        self, record: AttemptRecord | Mapping[str, Any], *, events: Sequence[Event] = ()
    ) -> str:
        """Store one attempt record, its buffered `events` (chained before its seal), the record's seal and
        the unit's new state (`station.units.apply`) in ONE transaction; returns the record's hash.

        A mapping is accepted (`AttemptRecord.from_fields`). An attempt id can be recorded once; at most
        `MAX_EVENTS_PER_RECORD` events. Nothing is written if anything is refused.
        """

    @abstractmethod
    def events(self, serial: str | None = None, *, after_seq: int = 0) -> list[LedgerEvent]:
        """Events in chain order, all or one serial's, after `after_seq`."""

    @abstractmethod
    def head(self) -> tuple[int, str]:
        """The chain head: (seq, hash) of the last event, (0, GENESIS_HASH) for an empty ledger."""

    @abstractmethod
    def audit(
        self, *, progress: Progress | None = None, since_checkpoint: bool = False, all_stations: bool = False
    ) -> AuditResult:
        """Check the chain, every record against it, the unit table against a replay of the records, the
        journal against its chained events and the chain against the newest signed checkpoint.

        `progress(done, total)` is called now and then; `since_checkpoint` trusts everything up to the newest
        valid checkpoint and verifies only what came after it (see the backend for what is re-checked).
        `all_stations`: on a ledger with one chain per station (DynamoDB), every station's chain and the
        factory anchor instead of this ledger's station only; a one-station ledger ignores it.
        """

    # -- records ------------------------------------------------------------------------------------------
    @abstractmethod
    def records(self) -> Iterator[AttemptRecord]:
        """Every attempt record, in the order they were written (streamed)."""

    @abstractmethod
    def find(self, query: str) -> list[AttemptRecord]:
        """Attempts whose serial, thing name, attempt id or certificate id equals `query`, or whose
        certificate id starts with it (at least `CERT_PREFIX_MIN` hex characters). Oldest first."""

    # -- units --------------------------------------------------------------------------------------------
    @abstractmethod
    def unit(self, serial: str) -> UnitState | None:
        """The unit's current state (exact serial), or None if it has no record."""

    @abstractmethod
    def unit_page(
        self,
        *,
        state: str | None = None,
        outcome: str | None = None,
        target: str | None = None,
        station: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> UnitPage:
        """Units newest first (by their last attempt's time), filtered; `after` is a page's `next_cursor`.

        `state`: a `UnitStateName`; `outcome`: the last attempt's outcome; `target`: the target of the unit's
        newest live identity (or of its last attempt when none is live); `station`: the last attempt's
        station; `since`/`until`: epoch seconds bounding the last attempt's time (inclusive/exclusive).
        """

    @abstractmethod
    def find_units(self, query: str) -> list[UnitState]:
        """Units whose serial (case-insensitive), or one of whose records' thing name, attempt id or
        certificate id (or its first 8+ hex characters) equals `query`. Newest first, at most `MAX_PAGE`."""

    @abstractmethod
    def _latest_records(self, attempt_ids: Sequence[str]) -> dict[str, AttemptRecord]:
        """The records with these attempt ids (one round trip per page, not one per unit)."""

    @abstractmethod
    def _export_rows(self) -> Iterator[tuple[AttemptRecord, UnitState | None]]:
        """Every record in write order with its unit's current state, streamed."""

    def units(self, outcome: str | None = None, *, limit: int | None = None) -> Iterator[UnitSummary]:
        """Units newest first with their latest attempt, page by page (never the whole table at once);
        `outcome` filters on the latest attempt's outcome, `limit` stops after that many."""
        after: str | None = None
        left = limit
        while left is None or left > 0:
            page = self.unit_page(
                outcome=outcome, after=after, limit=MAX_PAGE if left is None else min(left, MAX_PAGE)
            )
            latest = self._latest_records([u.last_attempt_id for u in page.units])
            for state in page.units:
                record = latest.get(state.last_attempt_id)
                if record is not None:
                    yield UnitSummary(state.serial, state.last_outcome, state.attempts, record)
            if left is not None:
                left -= len(page.units)
            if page.next_cursor is None:
                return
            after = page.next_cursor

    # -- journal ------------------------------------------------------------------------------------------
    @abstractmethod
    def journal_open(self, **fields: Unpack[JournalFields]) -> int:
        """Open a journal entry (durably) before the attempt's first AWS side effect; returns its id.

        Fields (`station.journal.JournalEntry`, one name each): attempt_id, serial, target, account_id, region,
        slot, product, certificate_id, certificate_pem, certificate_arn, certificate_created, thing_name,
        thing_created, stage (a `Stage`), station_id, purpose, registry_answer, thing_answer. Any other name is
        a TypeError. A `journal` event is chained in the same transaction.
        """

    @abstractmethod
    def journal_update(self, journal_id: int, **fields: Unpack[JournalFields]) -> None:
        """Update an open entry (durably, chained). Raises KeyError for an unknown or closed entry."""

    @abstractmethod
    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        """Close an entry (chained): it leaves `journal_pending()`. Closing twice is harmless."""

    @abstractmethod
    def journal_pending(self) -> list[JournalEntry]:
        """Open entries, oldest first: what `station reconcile` must roll back or complete."""

    # -- one live station per unit -------------------------------------------------------------------------
    def claim_unit(
        self,
        serial: str,
        attempt_id: str,
        *,
        station_id: str = "",
        slot: str = "",
        replacing: Sequence[str] = (),
    ) -> None:
        """Claim the unit for one attempt before its first AWS side effect: raises `UnitAlreadyLive` if the
        unit's live certificates are not exactly `replacing` (the ones a re-provision replaces; none for a
        first provision), `UnitClaimed` if another attempt holds it (a shared ledger only). Claiming again
        with the same attempt id is harmless. This default checks `unit(serial)` only: one station's slots
        are kept apart by the pipeline itself."""
        state = self.unit(serial)
        live = list(state.live) if state is not None else []
        if state is not None and live and {i.certificate_id for i in live} != set(replacing):
            newest = max(live, key=lambda i: float(i.since or 0.0))
            made = [r for r in self.find(newest.attempt_id) if r.attempt_id == newest.attempt_id]
            where = made[0] if made else None
            raise UnitAlreadyLive(
                serial, newest, where.station_id if where else state.station_id, where.slot if where else ""
            )

    def release_unit(self, serial: str, attempt_id: str) -> None:
        """Give up the claim `attempt_id` holds on the unit (an attempt that ends without a record; a record
        releases it by itself). Releasing a claim one does not hold changes nothing. This default holds no
        claims."""
        return None

    # -- anchoring ----------------------------------------------------------------------------------------
    def checkpoint(self, reason: str = "manual") -> Any:
        """Sign the current head into the anchor log (a shift's end, say); None without an anchor."""
        if self.anchor is None:
            return None
        seq, digest, units = self._anchor_state()
        if not seq:
            return None
        self._since_checkpoint = 0
        return self.anchor.append(seq, digest, reason, units)

    def _anchor_state(self) -> tuple[int, str, str]:
        """(head seq, head hash, unit-table digest) read together; backends without a digest give ""."""
        seq, digest = self.head()
        return seq, digest, ""

    def _wrote_record(self) -> None:
        """Backends call this after each committed record: every `checkpoint_every` records, a checkpoint."""
        self._wrote = True
        self._since_checkpoint += 1
        if self.anchor is not None and self._since_checkpoint >= self.checkpoint_every:
            self._checkpoint_quietly(f"every {self.checkpoint_every} records")

    def _close_anchor(self) -> None:
        if self.anchor is not None and self._wrote:
            self._wrote = False
            self._checkpoint_quietly("close")

    def _checkpoint_quietly(self, reason: str) -> None:
        # The record is committed whatever happens here: a checkpoint that cannot be written (read-only folder,
        # a missing key) must not fail the unit; it is logged, and the next audit says what it can check.
        from station.ledger.anchor import AnchorError

        try:
            self.checkpoint(reason)
        except (OSError, AnchorError) as exc:
            logging.getLogger(__name__).warning("ledger checkpoint not signed: %s", exc)

    # -- lifetime -----------------------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Sign a last checkpoint (if this handle wrote anything) and release the storage."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared -------------------------------------------------------------------------------------------
    def export(self, fmt: str, out: TextIO | str | Path, *, station: str | None = None) -> int:
        """Write every record (with its unit's state) as CSV or JSON to a stream or a file path; returns how
        many. `station`: only the records made at that station (a shared ledger holds every station's).
        Streams: never holds more than one record."""
        if fmt not in ("csv", "json"):
            raise ValueError(f"unknown export format {fmt!r} (csv or json)")
        rows = self._export_rows()
        if station is not None:
            rows = ((record, unit) for record, unit in rows if record.station_id == station)
        if isinstance(out, str | Path):
            with open(out, "w", encoding="utf-8", newline="") as stream:
                return write_export(rows, fmt, stream)
        return write_export(rows, fmt, out)


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


def cert_prefix_range(query: str) -> tuple[str, str]:
    """[low, high) bounds of the certificate ids starting with a hex prefix (an index range scan)."""
    q = query.strip().lower()
    return q, q[:-1] + chr(ord(q[-1]) + 1)


def page_cursor(last_at: float, seq: int) -> str:
    """The opaque cursor after a unit ordered by (last attempt time, seal seq)."""
    return f"{last_at!r}~{int(seq)}"


def parse_cursor(cursor: str) -> tuple[float, int]:
    try:
        at, seq = cursor.split("~")
        return float(at), int(seq)
    except ValueError:
        raise InputError(
            _("Bad cursor"),
            _("{cursor!r} is not a cursor this ledger gave out.").format(cursor=cursor),
            _("Start again without --after."),
        ) from None


def unit_time(record: AttemptRecord) -> float:
    """The time a unit is ordered by: its last attempt's end (its start if it never finished)."""
    return record.finished_at or record.started_at


def unit_target(state: UnitState, record: AttemptRecord) -> str:
    primary = state.primary
    return primary.target if primary else record.target


def page_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


# The unit table's digest: the sum of SHA-256(stored unit body) mod 2**256 over every unit row. A sum can be
# kept up to date per write (minus the old row's hash, plus the new one's), and an incremental audit can
# check that rows nobody wrote since a checkpoint are unchanged without replaying them.
DIGEST_MOD = 2**256


def body_hash(body: str | None) -> int:
    return int(hashlib.sha256(body.encode("utf-8")).hexdigest(), 16) if body else 0


def digest_text(value: int) -> str:
    return f"{value % DIGEST_MOD:064x}"
