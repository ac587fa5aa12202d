"""An optional ledger backend on Amazon DynamoDB: one table a whole factory shares, one hash chain per station.

Location: `dynamodb://TABLE?region=eu-west-1[&station=ID][&endpoint_url=URL][&profile=NAME]`; the station id
usually comes from station.toml's `[station] id` through `open_ledger(..., station_id=...)` (a URL's `station=`
must agree with it). Without either, a handle writes the `default` chain and audits every station.
Credentials come from the usual boto3 chain (environment, profile, instance role). With `create=True` the table
is made if missing (on-demand billing).

Layout (partition key `pk`, sort key `sk`, both strings). Per station ID — no two stations write these:
- `chain#ID` / zero-padded seq: one event — `seq`, `prev_hash`, `hash` and `body` (the event's canonical JSON:
  DynamoDB numbers cannot tell 2 from 2.0, so the hashed content is kept as the exact text that was hashed);
- `head#ID` / `-`: the station's last seq and hash;
- `journal#ID` / zero-padded id: one journal entry; `counter` / `journal#ID`: its id counter (ids are per
  station, and `journal_pending()` and so reconcile see only the station's own entries).
Table-wide, so every station (and its QA desk) sees every unit:
- `record` / attempt id: one attempt record (`body` = canonical JSON; `st` = the station whose chain seals it,
  `chain_seq` its seal's seq there, `u_n` its place in the unit's history);
- `unit` / serial: one unit's current `UnitState` (`body`), `n` (the number of records applied to it) and
  `u_live` (its live certificate ids);
- `claim` / serial: which attempt (station, slot, until when) is provisioning the unit (`claim_unit`): a lock,
  not a fact — not chained, removed by the attempt's record or `release_unit`, lapsed after `CLAIM_TTL_S`;
- `factory` / `heads`: the factory anchor, a map station → {seq, hash, at};
- `meta` / `schema`: the schema version (3; a table of an older version is refused: keep it as evidence).

Lookups are Queries on global secondary indexes, never Scans (GSIs are sparse: only items carrying the
index's key attributes are in it): records by serial (`r_serial`), thing name (`r_thing`), certificate id
(`r_cp` = its first 4 characters, range `r_cert`, so a prefix is `begins_with`) and write order (`r_all`,
range `r_seq`, microseconds of the write); units by lower-cased serial (`u_fold`), and newest first overall
(`u_all`) or per state (`u_state`), both with range `u_order` (last attempt time, then seq). GSIs are
eventually consistent: a record is findable a moment after it is written.

Appends are optimistic on the station's own head: the head this handle last wrote (else read, strongly
consistent), then one TransactWriteItems that puts the new events only if their seqs are free and moves the
head only if it still holds that seq. Only handles of the same station can lose that race (they read the head
and retry); within one process a lock keeps the slots from racing. A journal update or close likewise uses the
entry as this handle last wrote it, guarded by its `updated_at`: no read before a write on a running line. A station's first append also enters it in the factory anchor (same
transaction, so no chain exists that the anchor does not list); later the anchor is moved forward outside any
transaction every `ANCHOR_EVERY` appends, at `checkpoint()` and at `close()` — stations never wait for each
other. A record write puts the record (only if its attempt id is new), its events, its seal (which also fixes
`unit_n`), the head and the unit item in one transaction; the unit item only if its `n` is still the one read,
so two stations recording one serial serialise on that item, and a provision that would be stored over a live
identity it does not know (`base.live_conflict`: another station made the unit live meanwhile) is refused with
`UnitAlreadyLive` (nothing written; the message is the re-scan policy's answer). Every write is durable when
DynamoDB acknowledges it.

`audit()` checks this ledger's station, `audit(all_stations=True)` every station the factory anchor or a
record names: each chain against its own head (re-read until it did not move) and against the factory anchor
(a chain shorter than its anchored seq was truncated, another hash there re-chained, a chain missing from the
anchor had its entry deleted), each seal against its record (a seal newer than the records read fetches its
record, so a busy factory gives no false alarm), records no chain seals (whole factory only), the units those
records touch against a replay of all their records from every station in seal order, and the station's
journal. The signed anchor log (`anchor.py`, both environment variables set) checkpoints this station's chain.
A chain is streamed a page at a time (`CHAIN_PAGE` events) through the verifier, never held whole; unlike the
SQLite audit it holds the records and the journal in memory (fine for a factory's table, not for millions of
rows) and keeps no unit-table digest, so `since_checkpoint` re-checks everything. The factory anchor lives in the
same table: it catches a rewrite of one station's chain by someone who does not also rewrite the anchor; the
signed checkpoints outside the table are what stops someone who does.

This module must not talk to AWS IoT, must not hold key material, and must not hand out its client.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

from station.errors import InputError
from station.ledger.anchor import Anchor, AnchorError, anchor_verdict
from station.ledger.base import (
    GENESIS_HASH,
    JOURNAL_EVENT,
    MAX_PAGE,
    RECORD_EVENT,
    AttemptRecord,
    AuditResult,
    ChainRow,
    ChainVerifier,
    JournalEntry,
    Ledger,
    LedgerEvent,
    LedgerMissing,
    LedgerUnavailable,
    Progress,
    RecordRow,
    RowRef,
    UnitAlreadyLive,
    UnitClaimed,
    UnitPage,
    as_record,
    canonical_json,
    chain_hash_json,
    check_units,
    encode_appended_event,
    encode_attempt_events,
    encode_event,
    encode_journal_event,
    event_from_fields,
    is_cert_prefix,
    journal_columns,
    journal_mismatch,
    live_conflict,
    page_limit,
    plain,
    unit_target,
    unit_time,
)
from station.model import Event
from station.units import UnitState, apply

CHAIN = "chain"  # partitions are per station: `chain#ID`, `head#ID`, `journal#ID`
HEAD = "head"
RECORD = "record"
UNIT = "unit"
JOURNAL = "journal"
COUNTER = "counter"
CLAIM = "claim"
# A claim not released nor ended by a record lapses after this long (a station killed mid-attempt).
CLAIM_TTL_S = 600.0
# Global secondary indexes: name → (hash attribute, range attribute or None, range type).
INDEXES: dict[str, tuple[str, str | None, str]] = {
    "records_by_serial": ("r_serial", None, "S"),
    "records_by_thing": ("r_thing", None, "S"),
    "records_by_cert": ("r_cp", "r_cert", "S"),
    "records_in_order": ("r_all", "r_seq", "N"),
    "units_by_fold": ("u_fold", None, "S"),
    "units_by_time": ("u_all", "u_order", "S"),
    "units_by_state": ("u_state", "u_order", "S"),
}
SCHEMA_KEY = {"pk": {"S": "meta"}, "sk": {"S": "schema"}}
FACTORY_KEY = {"pk": {"S": "factory"}, "sk": {"S": "heads"}}
# 3: one chain, head and journal per station, the factory anchor, unit items versioned by their record count.
DYNAMO_SCHEMA_VERSION = 3
DEFAULT_STATION = "default"  # the chain of a ledger opened without a station id
STATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_APPEND_TRIES = 50
# The audit reads a chain this many events a Query page (DynamoDB also stops a page at 1 MB).
CHAIN_PAGE = 500
AUDIT_TRIES = 5
# The factory anchor gets a station's head with its first append (in that transaction), then after every
# ANCHOR_EVERY appends, at `checkpoint()` and at `close()` of a handle that wrote.
ANCHOR_EVERY = 16


def seq_key(seq: int) -> str:
    return f"{seq:020d}"


def station_pk(kind: str, station_id: str) -> str:
    """The partition of one station's items of `kind` (chain, head, journal)."""
    return f"{kind}#{station_id}"


def check_station_id(station_id: str) -> str:
    if not STATION_ID.match(station_id):
        raise InputError(
            "Bad station id",
            f"{station_id!r} cannot name a station's chain in a shared ledger.",
            "Use 1–64 letters, digits, '.', '_', ':' or '-' (the [station] id of station.toml).",
        )
    return station_id


class _Conflict(Exception):
    """Another writer moved the head between our read and our write."""


class _AlreadyClosed(Exception):
    """The journal entry was closed before (closing twice changes nothing and chains nothing)."""


class DynamoLedger(Ledger):
    """The ledger in one DynamoDB table."""

    chain_page = CHAIN_PAGE  # events per Query page when the audit streams a chain

    def __init__(
        self,
        table: str,
        *,
        client: Any,
        create: bool = True,
        anchor: Anchor | None = None,
        station_id: str | None = None,
    ) -> None:
        self.table = table
        self._client = client
        # Without a station id the handle writes the `default` chain and audits every station.
        self.station_id = check_station_id(station_id) if station_id else DEFAULT_STATION
        self._own_station = bool(station_id)
        self._chain_pk = station_pk(CHAIN, self.station_id)
        self._head_key = _key(station_pk(HEAD, self.station_id), "-")
        self._journal_pk = station_pk(JOURNAL, self.station_id)
        self._counter_key = _key(COUNTER, station_pk(JOURNAL, self.station_id))
        self.anchor = anchor if anchor is not None else Anchor.for_location(f"dynamodb://{table}")
        self._lock = threading.RLock()
        self._appends_since_anchor = 0
        # What this handle last wrote or read of its station's head and of its open journal entries: used as
        # the expected old value of the next conditional write instead of reading it first (the condition
        # refuses a stale one; then the handle reads and tries again). Guarded by `_lock`.
        self._known_head: tuple[int, str] | None = None
        self._known_journal: dict[int, dict[str, Any]] = {}
        errors = self._errors()
        try:
            self._ensure_table(create)
        except errors as exc:
            raise self._unavailable(exc) from exc

    @classmethod
    def from_url(cls, url: str, *, create: bool = True, station_id: str | None = None) -> DynamoLedger:
        """`dynamodb://TABLE?region=R[&station=ID][&endpoint_url=U][&profile=P]`; `station_id` (the config's
        `[station] id`) is used when the URL names no station, and must agree with it when it does."""
        import boto3  # only when this backend is chosen: SQLite stations never load boto3 for the ledger

        parsed = urlparse(url)
        table = parsed.netloc or parsed.path.lstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        named = query.get("station")
        if named and station_id and named != station_id:
            raise InputError(
                "Two station ids",
                f"The ledger location names station {named!r} but this station is {station_id!r}.",
                "Drop `station=` from the ledger URL (the station's [station] id is used) or make them agree.",
            )
        session = boto3.Session(profile_name=query.get("profile"), region_name=query.get("region"))
        client = session.client("dynamodb", endpoint_url=query.get("endpoint_url"))
        return cls(table, client=client, create=create, station_id=named or station_id)

    # -------------------------------------------------------------------------------------------- setup
    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def _unavailable(self, exc: BaseException) -> LedgerUnavailable:
        code = _code(exc) or type(exc).__name__
        return LedgerUnavailable(
            "Ledger unavailable",
            f"The DynamoDB ledger table {self.table} cannot be used ({code}).",
            "Check the network, the AWS credentials and the table; then try again.",
        )

    def _ensure_table(self, create: bool) -> None:
        client = self._client
        try:
            client.describe_table(TableName=self.table)
        except client.exceptions.ResourceNotFoundException:
            if not create:
                raise LedgerMissing(
                    "No ledger",
                    f"There is no DynamoDB ledger table {self.table}.",
                    "Check the ledger location (dynamodb://TABLE?region=…).",
                ) from None
            # Another station may create it at the same moment: that is fine.
            with contextlib.suppress(client.exceptions.ResourceInUseException):
                attributes = {"pk": "S", "sk": "S"}
                indexes = []
                for name, (hash_key, range_key, range_type) in INDEXES.items():
                    attributes[hash_key] = "S"
                    schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
                    if range_key:
                        attributes[range_key] = range_type
                        schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
                    indexes.append(
                        {"IndexName": name, "KeySchema": schema, "Projection": {"ProjectionType": "ALL"}}
                    )
                client.create_table(
                    TableName=self.table,
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    AttributeDefinitions=[
                        {"AttributeName": k, "AttributeType": t} for k, t in attributes.items()
                    ],
                    GlobalSecondaryIndexes=indexes,
                    BillingMode="PAY_PER_REQUEST",
                )
            client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
        try:
            client.put_item(
                TableName=self.table,
                Item={**SCHEMA_KEY, "version": {"N": str(DYNAMO_SCHEMA_VERSION)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except client.exceptions.ConditionalCheckFailedException:
            item = client.get_item(TableName=self.table, Key=SCHEMA_KEY, ConsistentRead=True)["Item"]
            version = int(item["version"]["N"])
            if version > DYNAMO_SCHEMA_VERSION:
                raise LedgerUnavailable(
                    "Ledger from a newer station",
                    f"The ledger table {self.table} has schema version {version}; this station knows "
                    f"{DYNAMO_SCHEMA_VERSION}.",
                    "Update the station software before using this ledger.",
                ) from None
            if version < DYNAMO_SCHEMA_VERSION:
                raise LedgerUnavailable(
                    "Ledger from an older station",
                    f"The ledger table {self.table} has schema version {version}; this station needs "
                    f"{DYNAMO_SCHEMA_VERSION} (one hash chain per station and a factory anchor of their heads).",
                    "Keep the old table as it is (it is evidence) and point this station at a new table.",
                ) from None
        # The factory anchor: one item whose `heads` map lists each station's (seq, hash).
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            client.put_item(
                TableName=self.table,
                Item={**FACTORY_KEY, "heads": {"M": {}}},
                ConditionExpression="attribute_not_exists(pk)",
            )

    def _call(self, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except self._errors() as exc:
            raise self._unavailable(exc) from exc

    # ------------------------------------------------------------------------------------------- chain
    def _head(self) -> tuple[int, str]:
        item = self._client.get_item(TableName=self.table, Key=self._head_key, ConsistentRead=True).get(
            "Item"
        )
        head = (0, GENESIS_HASH) if item is None else (int(item["seq"]["N"]), item["hash"]["S"])
        self._known_head = head
        return head

    def _append(
        self,
        fields_json: str | Sequence[str],
        extra_items: Callable[[int], list[dict[str, Any]]] | None = None,
        *,
        checked: int | None = None,
        prepare: Callable[[], tuple[list[str], Callable[[int], list[dict[str, Any]]]]] | None = None,
    ) -> int:
        """One transaction on this station's chain: `extra_items(last_seq)` (transact items; the first
        `checked` of them refuse a duplicate) + the events + the head move; retried on a lost race
        (TransactionConflict included). `prepare()`, when given, is called on every try to build the event
        bodies and `extra_items` from fresh reads. Returns the last event's seq."""
        bodies = [fields_json] if isinstance(fields_json, str) else list(fields_json)
        with self._lock:
            for _ in range(MAX_APPEND_TRIES):
                build = extra_items
                if prepare is not None:
                    bodies, build = prepare()
                # The head this handle last wrote, if any: the transaction's condition on it refuses a stale
                # one (another handle of this station appended), and the retry reads it.
                old_seq, prev = self._known_head or self._head()
                seq = old_seq
                event_puts = []
                for body in bodies:
                    seq += 1
                    digest = chain_hash_json(seq, prev, body)
                    event_puts.append(
                        {
                            "Put": {
                                "TableName": self.table,
                                "Item": {
                                    "pk": {"S": self._chain_pk},
                                    "sk": {"S": seq_key(seq)},
                                    "seq": {"N": str(seq)},
                                    "prev_hash": {"S": prev},
                                    "hash": {"S": digest},
                                    "body": {"S": body},
                                },
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        }
                    )
                    prev = digest
                head_update: dict[str, Any] = {
                    "TableName": self.table,
                    "Key": self._head_key,
                    "UpdateExpression": "SET #s = :new, #h = :hash",
                    "ExpressionAttributeNames": {"#s": "seq", "#h": "hash"},
                    "ExpressionAttributeValues": {":new": {"N": str(seq)}, ":hash": {"S": prev}},
                }
                if old_seq:
                    head_update["ConditionExpression"] = "#s = :old"
                    head_update["ExpressionAttributeValues"][":old"] = {"N": str(old_seq)}
                else:
                    head_update["ConditionExpression"] = "attribute_not_exists(#pk)"
                    head_update["ExpressionAttributeNames"]["#pk"] = "pk"
                extra = build(seq) if build else []
                items = [
                    *({"Put": item} if "Item" in item else item for item in extra),
                    *event_puts,
                    {"Update": head_update},
                ]
                if not old_seq:
                    # A station's first append enters it in the factory anchor in the same transaction, so
                    # no chain can exist that the anchor does not list (the only write all stations share,
                    # once per station).
                    items.append({"Update": self._factory_update(seq, prev, first=True)})
                try:
                    self._transact(items, len(extra) if checked is None else checked)
                except (_Conflict, ValueError) as refused:
                    self._known_journal.clear()  # which condition refused is not said: read everything again
                    # An answer lost under load makes botocore send the transaction again; if the first try
                    # committed, the retry is refused by its own conditions. The head then holds exactly the
                    # hash this transaction computed (it covers the bodies): that write is ours, and done.
                    if self._head() != (seq, prev):
                        if isinstance(refused, _Conflict):
                            continue
                        raise
                except BaseException:
                    self._known_head = None  # the write may or may not have happened: read the head next time
                    raise
                self._known_head = (seq, prev)
                self._wrote = True  # close() signs a checkpoint of what this handle wrote
                self._appends_since_anchor = 0 if not old_seq else self._appends_since_anchor + 1
                if self._appends_since_anchor >= ANCHOR_EVERY:
                    self._anchor_factory(seq, prev)
                return seq
            raise LedgerUnavailable(
                "Ledger busy",
                f"Could not append to station {self.station_id}'s chain in the DynamoDB ledger {self.table}: "
                "other writers kept moving its head.",
                "Try again; if it persists, check that each station process has its own station id.",
            )

    def _factory_update(self, seq: int, digest: str, *, first: bool = False) -> dict[str, Any]:
        """The update of this station's entry in the factory anchor: only forwards (a higher seq)."""
        condition = "attribute_not_exists(#heads.#st)"
        values: dict[str, Any] = {
            ":v": {"M": {"seq": {"N": str(seq)}, "hash": {"S": digest}, "at": {"N": repr(time.time())}}}
        }
        if not first:
            condition += " OR #heads.#st.#seq < :seq"
            values[":seq"] = {"N": str(seq)}
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": FACTORY_KEY,
            "UpdateExpression": "SET #heads.#st = :v",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#heads": "heads", "#st": self.station_id},
            "ExpressionAttributeValues": values,
        }
        if not first:
            update["ExpressionAttributeNames"]["#seq"] = "seq"
        return update

    def _anchor_factory(self, seq: int | None = None, digest: str | None = None) -> None:
        """Move this station's entry in the factory anchor to its head (outside any append's transaction, so
        stations never wait for each other). A failure is logged, never raised: the records are committed."""
        client = self._client
        try:
            if seq is None or digest is None:
                seq, digest = self._head()
            if not seq:
                return
            client.update_item(**self._factory_update(seq, digest))
            self._appends_since_anchor = 0
        except client.exceptions.ConditionalCheckFailedException:
            self._appends_since_anchor = 0  # another handle of this station anchored a later head
        except self._errors() as exc:
            logging.getLogger(__name__).warning("factory anchor not updated: %s", _code(exc) or exc)

    def factory_heads(self) -> dict[str, tuple[int, str]]:
        """The factory anchor: each station's (seq, hash) as it last anchored it."""

        def work() -> dict[str, tuple[int, str]]:
            item = self._client.get_item(TableName=self.table, Key=FACTORY_KEY, ConsistentRead=True).get(
                "Item"
            )
            return _heads_of(item)

        return self._call(work)

    def checkpoint(self, reason: str = "manual") -> Any:
        """Anchor this station's head in the factory item, then sign it into the anchor log (if any)."""
        self._call(self._anchor_factory)
        return super().checkpoint(reason)

    def _transact(self, items: list[dict[str, Any]], checked: int) -> None:
        client = self._client
        try:
            client.transact_write_items(TransactItems=items)
        except client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if any(code == "ConditionalCheckFailed" for code in reasons[:checked]):
                raise ValueError("the ledger refused the write: the item already exists") from None
            if "ConditionalCheckFailed" in reasons or "TransactionConflict" in reasons:
                raise _Conflict() from None
            raise self._unavailable(exc) from exc
        except self._errors() as exc:
            raise self._unavailable(exc) from exc

    def append_event(self, event: Event) -> int:
        _, fields_json = encode_appended_event(event)
        return self._call(lambda: self._append(fields_json))

    def head(self) -> tuple[int, str]:
        return self._call(self._head)

    def record_attempt(
        self, record: AttemptRecord | Mapping[str, Any], *, events: Sequence[Event] = ()
    ) -> str:
        """See `Ledger.record_attempt`. The unit item is written only if it is still the version read (its
        record count `n`), so two stations recording the same serial serialise on it; a provision that would
        be stored over a live identity it does not know (`base.live_conflict`: another station made the unit
        live meanwhile) raises `UnitAlreadyLive` and writes nothing."""
        rec = as_record(record)
        digest = rec.canonical_hash()
        event_bodies = [fields_json for _, fields_json in encode_attempt_events(events)]
        body = canonical_json(rec.to_dict())
        client = self._client

        def prepare() -> tuple[list[str], Callable[[int], list[dict[str, Any]]]]:
            # Read the unit inside the retry loop: a concurrent writer of the same unit makes us re-apply.
            current = client.get_item(
                TableName=self.table, Key=_key(UNIT, rec.serial), ConsistentRead=True
            ).get("Item")
            previous = _unit_of(current) if current else None
            conflict = live_conflict(previous, rec)
            if conflict is not None:
                made = client.get_item(
                    TableName=self.table, Key=_key(RECORD, conflict.attempt_id), ConsistentRead=True
                ).get("Item")
                where = _record_of(made) if made else None
                raise UnitAlreadyLive(
                    rec.serial,
                    conflict,
                    where.station_id if where else "",
                    where.slot if where else "",
                )
            state = apply(previous, rec)
            old_n = _int(current.get("n")) if current else 0
            written_at = time.time_ns() // 1000

            def items(seq: int) -> list[dict[str, Any]]:
                record_item: dict[str, Any] = {
                    **_key(RECORD, rec.attempt_id),
                    "chain_seq": {"N": str(seq)},  # for the audit's seal order in this station's chain
                    "st": {"S": self.station_id},  # the chain that seals it
                    "u_n": {"N": str(old_n + 1)},  # its place in the unit's history (replay order)
                    "body": {"S": body},
                    "r_serial": {"S": rec.serial},
                    "r_all": {"S": RECORD},
                    "r_seq": {"N": str(written_at)},  # write order across stations (microseconds)
                }
                if rec.thing_name:
                    record_item["r_thing"] = {"S": rec.thing_name}
                if rec.certificate_id:
                    record_item["r_cp"] = {"S": rec.certificate_id[:4]}
                    record_item["r_cert"] = {"S": rec.certificate_id}
                unit_put: dict[str, Any] = {
                    "TableName": self.table,
                    "Item": {**_unit_item(state, rec, seq), "n": {"N": str(old_n + 1)}},
                }
                if current is None:
                    unit_put["ConditionExpression"] = "attribute_not_exists(pk)"
                else:
                    unit_put["ConditionExpression"] = "#n = :n"
                    unit_put["ExpressionAttributeNames"] = {"#n": "n"}
                    unit_put["ExpressionAttributeValues"] = {":n": {"N": str(old_n)}}
                return [
                    {
                        "TableName": self.table,
                        "Item": record_item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    },
                    unit_put,
                ]

            # The seal also fixes the record's place in the unit's history (`unit_n`): the audit replays a
            # unit's records from every station in that order.
            seal = encode_event(
                Event(
                    kind=RECORD_EVENT,
                    serial=rec.serial,
                    slot=rec.slot,
                    outcome=rec.outcome,
                    data={"attempt_id": rec.attempt_id, "record_hash": digest, "unit_n": old_n + 1},
                )
            )[1]
            return [*event_bodies, seal], items

        try:
            self._call(lambda: self._append([], checked=1, prepare=prepare))
        except ValueError as exc:
            raise ValueError(f"attempt {rec.attempt_id} is already recorded") from exc
        # Recorded: the unit's item says the rest. Also when another handle claimed it (reconcile recording a
        # killed station's attempt): the delete is conditional on this attempt id, so it frees that claim only.
        self.release_unit(rec.serial, rec.attempt_id)
        self._wrote_record()
        return digest

    def _query(self, pk: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            KeyConditionExpression=kwargs.pop("key_condition", "pk = :pk"),
            ExpressionAttributeValues={":pk": {"S": pk}, **kwargs.pop("values", {})},
            ConsistentRead=True,
            **kwargs,
        )
        for page in pages:
            yield from page.get("Items", [])

    def _index(
        self, index: str, condition: str, values: dict[str, Any], **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Items of a GSI query (eventually consistent, as every GSI read is), page by page."""
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            IndexName=index,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            **kwargs,
        )
        for page in pages:
            yield from page.get("Items", [])

    def _chain_items(self, after_seq: int = 0, station_id: str | None = None) -> Iterator[dict[str, Any]]:
        return self._query(
            station_pk(CHAIN, station_id or self.station_id),
            key_condition="pk = :pk AND sk > :after",
            values={":after": {"S": seq_key(after_seq)}},
        )

    def events(self, serial: str | None = None, *, after_seq: int = 0) -> list[LedgerEvent]:
        def work() -> list[LedgerEvent]:
            out = []
            for item in self._chain_items(after_seq):
                fields = _body(item)
                if fields is None:
                    raise _damaged("An event")
                if serial is not None and fields.get("serial") != serial:
                    continue
                out.append(
                    LedgerEvent(
                        int(item["seq"]["N"]),
                        item["prev_hash"]["S"],
                        item["hash"]["S"],
                        event_from_fields(fields),
                    )
                )
            return out

        return self._call(work)

    def audit(
        self, *, progress: Progress | None = None, since_checkpoint: bool = False, all_stations: bool = False
    ) -> AuditResult:
        """This ledger's station (or, with `all_stations` or a ledger opened without a station id, every
        station): each chain against its own head and the factory anchor, each seal against its record, the
        units those records touch against a replay of all their records (every station's, in the order the
        seals fix), and the station's journal. `since_checkpoint` re-checks everything here."""
        try:
            checkpoint = self.anchor.latest() if self.anchor is not None else None
        except AnchorError as exc:
            return AuditResult(False, 0, RowRef("anchor", 0), str(exc), anchor_note=str(exc))
        every = all_stations or not self._own_station

        def work() -> AuditResult:
            for _ in range(AUDIT_TRIES):
                result = self._audit_once(every, checkpoint, progress)
                if result is not None:
                    return result
            raise LedgerUnavailable(
                "Ledger busy",
                "The ledger kept changing while it was being checked.",
                "Run the audit again when the line is quieter.",
            )

        return self._call(work)

    def _read_head(self, station_id: str) -> tuple[int, str] | None:
        item = self._client.get_item(
            TableName=self.table, Key=_key(station_pk(HEAD, station_id), "-"), ConsistentRead=True
        ).get("Item")
        return None if item is None else (_int(item.get("seq")), _str(item.get("hash")))

    def _chain_rows(self, station_id: str, head_seq: int) -> Iterator[ChainRow]:
        """One station's chain up to `head_seq`, one Query page at a time (never the whole chain in memory);
        events appended after the head was read are not part of this audit."""
        for item in self._query(
            station_pk(CHAIN, station_id),
            key_condition="pk = :pk AND sk BETWEEN :lo AND :hi",
            values={":lo": {"S": seq_key(0)}, ":hi": {"S": seq_key(max(head_seq, 0))}},
            Limit=self.chain_page,
        ):
            yield ChainRow(
                _int(item.get("seq")), _str(item.get("prev_hash")), _str(item.get("hash")), _body(item)
            )

    def _station_verdict(
        self, station_id: str, check: Callable[..., tuple[AuditResult, dict[str, int]]]
    ) -> tuple[AuditResult, dict[str, int]]:
        """`check(head=, rows=, journal=)` on one station: its head, its chain streamed up to that head, and its
        journal (read after the chain); again while the head moved meanwhile (a journal entry read then may be
        newer than the chain that was checked)."""
        for _ in range(AUDIT_TRIES):
            head = self._read_head(station_id)
            rows = self._chain_rows(station_id, head[0] if head else 0)
            verdict = check(
                head=head,
                rows=rows,
                journal=lambda: [
                    _journal_entry(item) for item in self._query(station_pk(JOURNAL, station_id))
                ],
            )
            if self._read_head(station_id) == head:
                return verdict
        raise LedgerUnavailable(
            "Ledger busy",
            f"Station {station_id}'s chain kept changing while it was being checked.",
            "Run the audit again when the line is quieter.",
        )

    def _audit_once(self, every: bool, checkpoint: Any, progress: Progress | None) -> AuditResult | None:
        """One pass of the audit; None when a unit moved past the records read (another station wrote it
        meanwhile): the caller reads again. Reads records, then each chain, then the units: a seal newer than
        the records read fetches its record (consistently), so a busy factory gives no false alarm."""
        factory_item = self._client.get_item(TableName=self.table, Key=FACTORY_KEY, ConsistentRead=True).get(
            "Item"
        )
        factory = _heads_of(factory_item)
        record_items = {item["sk"]["S"]: item for item in self._query(RECORD)}
        stations = (
            sorted(set(factory) | {_str(item.get("st")) for item in record_items.values()} - {""})
            if every
            else [self.station_id]
        )
        by_station: dict[str, dict[str, tuple[int, RecordRow]]] = {}

        def remember(item: dict[str, Any]) -> tuple[int, RecordRow]:
            record_items[item["sk"]["S"]] = item
            found = (_int(item.get("chain_seq")), RecordRow(item["sk"]["S"], _body(item)))
            by_station.setdefault(_str(item.get("st")), {})[item["sk"]["S"]] = found
            return found

        for item in list(record_items.values()):
            remember(item)
        heads: list[tuple[str, int, str]] = []
        checked = journal_checked = 0
        sealed_n: dict[str, int] = {}  # attempt id → its place in the unit's history, as its seal says
        for station_id in stations:
            records = by_station.setdefault(station_id, {})

            def lookup(
                attempt_id: str,
                records: dict[str, tuple[int, RecordRow]] = records,
                station_id: str = station_id,
            ) -> Any:
                found = records.get(attempt_id)
                if found is None and attempt_id and attempt_id not in record_items:
                    item = self._client.get_item(
                        TableName=self.table, Key=_key(RECORD, attempt_id), ConsistentRead=True
                    ).get("Item")
                    if item is not None and _str(item.get("st")) == station_id:
                        found = remember(item)
                return found

            own = station_id == self.station_id
            result, station_sealed = self._station_verdict(
                station_id,
                functools.partial(
                    self._verdict,
                    records=records,
                    lookup=lookup,
                    checkpoint=checkpoint if own else None,
                    anchored=factory.get(station_id),
                    has_factory=factory_item is not None,
                    progress=progress,
                ),
            )
            result = dataclasses.replace(result, station=station_id)
            if not result.ok:
                return result
            sealed_n.update(station_sealed)
            checked += result.checked
            journal_checked += result.journal_checked
            heads.append((station_id, result.head_seq, result.head_hash))
        if every:
            # Records no station's chain seals (their `st` names no chain, or a chain that does not seal them).
            for attempt_id in sorted(record_items):
                if attempt_id not in sealed_n:
                    return AuditResult(
                        False,
                        checked,
                        RowRef("records", attempt_id),
                        "the record is not in the chain of any station (inserted)",
                        station=_str(record_items[attempt_id].get("st")),
                    )
        places = {aid: _int(item.get("u_n")) for aid, item in record_items.items()}
        for attempt_id, n in sealed_n.items():
            if places.get(attempt_id) != n:
                return AuditResult(
                    False,
                    checked,
                    RowRef("records", attempt_id),
                    "the record's place in its unit's history does not match its seal (edited)",
                )
        # Units: the ones this audit's records touch (all of them for the whole factory), replayed from every
        # station's records in the order the seals fix.
        bodies = {aid: _body(item) for aid, item in record_items.items()}
        serials = {
            str(fields.get("serial", ""))
            for aid, fields in bodies.items()
            if fields and (every or aid in sealed_n)
        }
        if every:
            unit_items = list(self._query(UNIT))
        else:
            unit_items = self._batch_get([_key(UNIT, s) for s in sorted(serials)])
        ordered = sorted(
            (
                (AttemptRecord(**fields), places.get(aid, -1))
                for aid, fields in bodies.items()
                if fields and str(fields.get("serial", "")) in serials
            ),
            key=lambda pair: (pair[0].serial, pair[1]),
        )
        counts: dict[str, int] = {}
        for record, _ in ordered:
            counts[record.serial] = counts.get(record.serial, 0) + 1
        if any(_int(item.get("n")) > counts.get(item["sk"]["S"], 0) for item in unit_items):
            return None  # a unit moved on after its records were read: read everything again
        groups = [
            (serial, [r for r, _ in ordered if r.serial == serial])
            for serial in dict.fromkeys(r.serial for r, _ in ordered)
        ]
        units = sorted((item["sk"]["S"], _body(item)) for item in unit_items)
        units_checked, serial, why = check_units(groups, units)
        own_head = next(((n, h) for s, n, h in heads if s == self.station_id), (0, GENESIS_HASH))
        note = "" if checkpoint else "no signed checkpoint: truncation or re-chaining cannot be detected"
        base = AuditResult(
            True,
            checked,
            head_seq=own_head[0],
            head_hash=own_head[1],
            units_checked=units_checked,
            journal_checked=journal_checked,
            anchored_seq=checkpoint.seq if checkpoint else 0,
            anchor_note=note,
            station="" if every else self.station_id,
            stations=tuple(heads),
        )
        if serial:
            return dataclasses.replace(base, ok=False, first_bad_row=RowRef("units", serial), reason=why)
        return base

    def _verdict(
        self,
        rows: Iterable[ChainRow],
        head: tuple[int, str] | None,
        records: dict[str, tuple[int, RecordRow]],
        lookup: Callable[[str], tuple[int, RecordRow] | None],
        journal: Callable[[], list[JournalEntry]],
        checkpoint: Any,
        anchored: tuple[int, str] | None,
        has_factory: bool,
        progress: Progress | None,
    ) -> tuple[AuditResult, dict[str, int]]:
        """One station's chain, seals, records, anchors (signed checkpoint, factory) and journal; with the
        unit places its seals fix."""
        verifier = ChainVerifier(lookup, watch_seq=checkpoint.seq if checkpoint else 0)
        chained_journal: dict[int, dict[str, Any]] = {}
        anchored_hash: str | None = None  # the hash at the factory anchor's seq (the chain is not kept)
        sealed: dict[str, int] = {}
        for row in rows:
            if not verifier.feed(row):
                break
            if anchored is not None and row.seq == anchored[0]:
                anchored_hash = row.hash
            kind = row.fields.get("kind") if row.fields is not None else None
            data = (row.fields or {}).get("data") or {}
            if kind == JOURNAL_EVENT:
                chained_journal[int(data.get("journal_id", 0))] = data
            elif kind == RECORD_EVENT:
                sealed[str(data.get("attempt_id", ""))] = int(data.get("unit_n", -1))
        result = verifier.finish(
            head, len(records), lambda: next((a for a in sorted(records) if a not in sealed), None)
        )
        result = dataclasses.replace(result, anchored_seq=checkpoint.seq if checkpoint else 0)
        if progress is not None:
            progress(result.head_seq, head[0] if head else 0)
        if not result.ok:
            return result, sealed
        if checkpoint is not None:
            verdict = anchor_verdict(checkpoint, result.head_seq, verifier.watched_hash)
            if verdict:
                return dataclasses.replace(
                    result,
                    ok=False,
                    first_bad_row=RowRef("events", checkpoint.seq),
                    reason=verdict,
                    anchor_note=verdict,
                ), sealed
        factory_why = ""
        if not has_factory:
            factory_why = "the factory anchor item is missing (deleted)"
        elif anchored is None:
            if result.head_seq:
                factory_why = "the station's chain is not in the factory anchor (its entry was deleted)"
        elif result.head_seq < anchored[0]:
            factory_why = (
                f"the chain ends at event {result.head_seq} but the factory anchor lists event {anchored[0]} "
                "(truncated)"
            )
        elif anchored_hash != anchored[1]:
            factory_why = f"event {anchored[0]} differs from the factory anchor's hash (re-chained)"
        if factory_why:
            at = anchored[0] if anchored else 1
            return dataclasses.replace(
                result, ok=False, first_bad_row=RowRef("factory", at), reason=factory_why
            ), sealed
        by_id = {e.id: e for e in journal()}
        for journal_id in sorted(set(by_id) | set(chained_journal)):
            why = journal_mismatch(by_id.get(journal_id), chained_journal.get(journal_id))
            if why:
                return dataclasses.replace(
                    result, ok=False, first_bad_row=RowRef("journal", journal_id), reason=why
                ), sealed
        return dataclasses.replace(result, journal_checked=len(by_id)), sealed

    # ----------------------------------------------------------------------------------------- records
    def _in_order(self) -> Iterator[list[dict[str, Any]]]:
        """Record items in write order, one GSI page at a time (streamed)."""
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            IndexName="records_in_order",
            KeyConditionExpression="r_all = :r",
            ExpressionAttributeValues={":r": {"S": RECORD}},
        )
        for page in pages:
            yield page.get("Items", [])

    def records(self) -> Iterator[AttemptRecord]:
        for page in self._in_order():
            for item in page:
                yield _record_of(item)

    def _export_rows(self) -> Iterator[tuple[AttemptRecord, UnitState | None]]:
        for page in self._in_order():
            records = [_record_of(item) for item in page]
            units = self._units_by_serial(sorted({r.serial for r in records}))
            for record in records:
                yield record, units.get(record.serial)

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            pending: dict[str, Any] = {
                self.table: {"Keys": keys[start : start + 100], "ConsistentRead": True}
            }
            while pending:
                answer = self._client.batch_get_item(RequestItems=pending)
                found += answer.get("Responses", {}).get(self.table, [])
                pending = answer.get("UnprocessedKeys") or {}
        return found

    def _units_by_serial(self, serials: Sequence[str]) -> dict[str, UnitState]:
        items = self._call(lambda: self._batch_get([_key(UNIT, s) for s in serials]))
        return {item["sk"]["S"]: _unit_of(item) for item in items}

    def _latest_records(self, attempt_ids: Sequence[str]) -> dict[str, AttemptRecord]:
        items = self._call(lambda: self._batch_get([_key(RECORD, a) for a in dict.fromkeys(attempt_ids)]))
        return {r.attempt_id: r for r in map(_record_of, items)}

    def _matching_records(self, q: str) -> list[dict[str, Any]]:
        items: dict[str, dict[str, Any]] = {}
        lookups = [
            ("records_by_serial", "r_serial = :q", {":q": {"S": q}}),
            ("records_by_thing", "r_thing = :q", {":q": {"S": q}}),
            ("records_by_cert", "r_cp = :p AND r_cert = :q", {":p": {"S": q[:4]}, ":q": {"S": q}}),
        ]
        if is_cert_prefix(q):
            low = q.lower()
            lookups.append(
                (
                    "records_by_cert",
                    "r_cp = :p AND begins_with(r_cert, :q)",
                    {":p": {"S": low[:4]}, ":q": {"S": low}},
                )
            )
        for index, condition, values in lookups:
            for item in self._index(index, condition, values):
                items[item["sk"]["S"]] = item
        direct = self._client.get_item(TableName=self.table, Key=_key(RECORD, q), ConsistentRead=True).get(
            "Item"
        )
        if direct is not None:
            items[q] = direct
        return sorted(items.values(), key=lambda item: _int(item.get("r_seq")))

    def find(self, query: str) -> list[AttemptRecord]:
        q = query.strip()
        if not q:
            return []
        return [_record_of(item) for item in self._call(lambda: self._matching_records(q))]

    # ------------------------------------------------------------------------------------------- units
    def unit(self, serial: str) -> UnitState | None:
        item = self._call(
            lambda: self._client.get_item(
                TableName=self.table, Key=_key(UNIT, serial), ConsistentRead=True
            ).get("Item")
        )
        return _unit_of(item) if item else None

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
        n = page_limit(limit)
        index, hash_name, hash_value = (
            ("units_by_state", "u_state", str(state))
            if state is not None
            else ("units_by_time", "u_all", UNIT)
        )
        condition = f"{hash_name} = :h"
        values: dict[str, Any] = {":h": {"S": hash_value}}
        low = f"{_micros(since):020d}" if since is not None else None
        high = f"{_micros(until) - 1:020d}#~" if until is not None else None
        if low and high:
            condition += " AND u_order BETWEEN :lo AND :hi"
            values.update({":lo": {"S": low}, ":hi": {"S": high}})
        elif low:
            condition += " AND u_order >= :lo"
            values[":lo"] = {"S": low}
        elif high:
            condition += " AND u_order <= :hi"
            values[":hi"] = {"S": high}
        filters = []
        names: dict[str, str] = {}
        for i, (attribute, value) in enumerate(
            (("outcome", outcome), ("target", target), ("station", station))
        ):
            if value is not None:
                filters.append(f"#f{i} = :f{i}")
                names[f"#f{i}"] = f"u_{attribute}"
                values[f":f{i}"] = {"S": str(value)}
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": max(n * 2, 50),
        }
        if filters:
            request["FilterExpression"] = " AND ".join(filters)
            request["ExpressionAttributeNames"] = names
        if after:
            request["ExclusiveStartKey"] = _decode_cursor(after)
        found: list[dict[str, Any]] = []
        while True:
            answer = self._call(lambda: self._client.query(**request))
            found += answer.get("Items", [])
            last = answer.get("LastEvaluatedKey")
            if len(found) > n or not last:
                break
            request["ExclusiveStartKey"] = last
        page = found[:n]
        more = len(found) > n or (len(found) == n and bool(last))
        cursor = None
        if more and page:
            item = page[-1]
            start_key = {k: item[k] for k in ("pk", "sk", hash_name, "u_order")}
            cursor = _encode_cursor(start_key)
        return UnitPage([_unit_of(item) for item in page], cursor)

    def find_units(self, query: str) -> list[UnitState]:
        q = query.strip()
        if not q:
            return []

        def work() -> list[UnitState]:
            serials = {
                item["sk"]["S"]
                for item in self._index("units_by_fold", "u_fold = :q", {":q": {"S": q.lower()}})
            }
            serials |= {_str(item.get("r_serial")) for item in self._matching_records(q)}
            items = self._batch_get([_key(UNIT, s) for s in sorted(serials) if s])
            items.sort(key=lambda item: _str(item.get("u_order")), reverse=True)
            return [_unit_of(item) for item in items[:MAX_PAGE]]

        return self._call(work)

    # ------------------------------------------------------------------------------- one live station
    def claim_unit(
        self,
        serial: str,
        attempt_id: str,
        *,
        station_id: str = "",
        slot: str = "",
        replacing: Sequence[str] = (),
    ) -> None:
        """One conditional transaction before the attempt's first AWS side effect: the unit item's live
        certificates must be exactly `replacing` (none for a first provision; no item at all is fine too) and
        the `claim`/serial item must be free, lapsed
        (`CLAIM_TTL_S`) or this attempt's. Raises `UnitAlreadyLive` or `UnitClaimed`; a claim is a lock, not
        a fact: it is not chained, and the attempt's record (or `release_unit`) removes it."""
        client = self._client
        now = time.time()
        station = station_id or self.station_id
        unit_check = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _key(UNIT, serial),
                "ConditionExpression": "attribute_not_exists(#pk) OR #live = :expected",
                "ExpressionAttributeNames": {"#pk": "pk", "#live": "u_live"},
                "ExpressionAttributeValues": {":expected": {"S": live_key(replacing)}},
            }
        }
        claim_put = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    **_key(CLAIM, serial),
                    "attempt_id": {"S": attempt_id},
                    "station_id": {"S": station},
                    "slot": {"S": slot},
                    "since": {"N": repr(now)},
                    "until": {"N": repr(now + CLAIM_TTL_S)},
                },
                "ConditionExpression": "attribute_not_exists(#pk) OR #until < :now OR #att = :me",
                "ExpressionAttributeNames": {"#pk": "pk", "#until": "until", "#att": "attempt_id"},
                "ExpressionAttributeValues": {":now": {"N": repr(now)}, ":me": {"S": attempt_id}},
            }
        }

        def work() -> None:
            for _ in range(3):  # the unit or the claim may change between a refusal and reading why
                try:
                    client.transact_write_items(TransactItems=[unit_check, claim_put])
                except client.exceptions.TransactionCanceledException as exc:
                    reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                    if reasons[:1] == ["ConditionalCheckFailed"]:
                        # Names the live identity and raises (unless the unit changed back meanwhile).
                        Ledger.claim_unit(self, serial, attempt_id, replacing=replacing)
                    elif len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                        item = client.get_item(
                            TableName=self.table, Key=_key(CLAIM, serial), ConsistentRead=True
                        ).get("Item")
                        if item is not None:
                            raise UnitClaimed(
                                serial,
                                _str(item.get("station_id")),
                                _str(item.get("slot")),
                                float(item["since"]["N"]) if "since" in item else 0.0,
                            ) from None
                    elif "TransactionConflict" not in reasons:
                        raise self._unavailable(exc) from exc
                    continue
                return
            raise LedgerUnavailable(
                "Ledger busy",
                f"Could not claim {serial}: its unit item kept changing.",
                "Scan the unit again.",
            )

        self._call(work)

    def release_unit(self, serial: str, attempt_id: str) -> None:
        client = self._client

        def work() -> None:
            with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
                client.delete_item(
                    TableName=self.table,
                    Key=_key(CLAIM, serial),
                    ConditionExpression="#att = :me",
                    ExpressionAttributeNames={"#att": "attempt_id"},
                    ExpressionAttributeValues={":me": {"S": attempt_id}},
                )

        self._call(work)

    # ----------------------------------------------------------------------------------------- journal
    def journal_open(self, **fields: Any) -> int:
        columns, extra = journal_columns(fields)

        def work() -> int:
            counter = self._client.update_item(
                TableName=self.table,
                Key=self._counter_key,
                UpdateExpression="ADD #n :one",
                ExpressionAttributeNames={"#n": "n"},
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="UPDATED_NEW",
            )
            journal_id = int(counter["Attributes"]["n"]["N"])
            now = time.time()
            item = {
                "pk": {"S": self._journal_pk},
                "sk": {"S": seq_key(journal_id)},
                "id": {"N": str(journal_id)},
                "opened_at": {"N": repr(now)},
                "updated_at": {"N": repr(now)},
                "extra": {"S": canonical_json(extra)},
                **{name: _attr(value) for name, value in columns.items()},
            }
            entry = JournalEntry(id=journal_id, **columns, **extra, opened_at=now, updated_at=now)
            body = encode_journal_event(entry, "open")[1]
            put = {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
            with self._lock:
                self._append(body, lambda seq: [put], checked=1)
                self._known_journal[journal_id] = item
            return journal_id

        return self._call(work)

    def journal_update(self, journal_id: int, **fields: Any) -> None:
        columns, extra = journal_columns(fields)
        key = _key(self._journal_pk, seq_key(int(journal_id)))
        written: list[dict[str, Any]] = []

        def prepare() -> tuple[list[str], Callable[[int], list[dict[str, Any]]]]:
            # Read-modify-write of the entry, guarded by its old `updated_at` and `extra` so two updaters
            # cannot lose each other's changes; a lost guard is a conflict, and the next try reads again.
            item = self._journal_item(journal_id, key)
            if item is None or "closed_at" in item:
                raise KeyError(f"no open journal entry {journal_id}")
            old_extra = item["extra"]["S"]
            merged = {**json.loads(old_extra), **extra}
            now = time.time()
            entry = dataclasses.replace(_journal_entry(item), **columns, **extra, updated_at=now)
            # Every attribute name goes through a placeholder: DynamoDB reserves hundreds of words.
            names = {f"#c{i}": name for i, name in enumerate(columns)}
            names.update({"#pk": "pk", "#closed": "closed_at", "#upd": "updated_at", "#extra": "extra"})
            values: dict[str, Any] = {f":c{i}": _attr(v) for i, v in enumerate(columns.values())}
            values.update(
                {
                    ":now": {"N": repr(now)},
                    ":extra": {"S": canonical_json(merged)},
                    ":old": {"S": old_extra},
                    ":old_upd": item["updated_at"],
                }
            )
            sets = [f"#c{i} = :c{i}" for i in range(len(columns))] + ["#upd = :now", "#extra = :extra"]
            update = {
                "Update": {
                    "TableName": self.table,
                    "Key": key,
                    "UpdateExpression": "SET " + ", ".join(sets),
                    "ConditionExpression": "attribute_exists(#pk) AND attribute_not_exists(#closed) "
                    "AND #extra = :old AND #upd = :old_upd",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
            written[:] = [
                {
                    **item,
                    **{name: _attr(value) for name, value in columns.items()},
                    "updated_at": values[":now"],
                    "extra": values[":extra"],
                }
            ]
            return [encode_journal_event(entry, "update")[1]], lambda seq: [update]

        def work() -> None:
            with self._lock:
                self._append([], prepare=prepare, checked=0)
                self._known_journal[int(journal_id)] = written[0]

        self._call(work)

    def _journal_item(self, journal_id: int, key: dict[str, Any]) -> dict[str, Any] | None:
        """The journal entry's item as this handle last wrote it, else as DynamoDB holds it now."""
        known = self._known_journal.get(int(journal_id))
        if known is not None:
            return known
        item: dict[str, Any] | None = self._client.get_item(
            TableName=self.table, Key=key, ConsistentRead=True
        ).get("Item")
        return item

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        key = _key(self._journal_pk, seq_key(int(journal_id)))
        closed: list[bool] = []

        def prepare() -> tuple[list[str], Callable[[int], list[dict[str, Any]]]]:
            item = self._journal_item(journal_id, key)
            if item is None:
                raise KeyError(f"no journal entry {journal_id}")
            if "closed_at" in item:
                closed.append(True)
                raise _AlreadyClosed()
            now = time.time()
            entry = dataclasses.replace(
                _journal_entry(item),
                closed_at=now,
                updated_at=now,
                outcome=None if outcome is None else str(outcome),
            )
            update = {
                "Update": {
                    "TableName": self.table,
                    "Key": key,
                    "UpdateExpression": "SET #closed = :now, #upd = :now, #out = :outcome",
                    # The entry as read (or last written here): a stale copy is refused and read again.
                    "ConditionExpression": "attribute_exists(#pk) AND attribute_not_exists(#closed) "
                    "AND #upd = :old_upd",
                    "ExpressionAttributeNames": {
                        "#pk": "pk",
                        "#closed": "closed_at",
                        "#upd": "updated_at",
                        "#out": "outcome",
                    },
                    "ExpressionAttributeValues": {
                        ":now": {"N": repr(now)},
                        ":outcome": {"NULL": True} if outcome is None else {"S": str(outcome)},
                        ":old_upd": item["updated_at"],
                    },
                }
            }
            return [encode_journal_event(entry, "close")[1]], lambda seq: [update]

        def work() -> None:
            with self._lock:
                try:
                    self._append([], prepare=prepare, checked=0)
                finally:
                    self._known_journal.pop(int(journal_id), None)  # closed (or unknown): never cached again

        with contextlib.suppress(_AlreadyClosed):  # closing twice is harmless
            self._call(work)

    def journal_pending(self) -> list[JournalEntry]:
        def work() -> list[JournalEntry]:
            items = self._query(
                self._journal_pk,
                FilterExpression="attribute_not_exists(#closed)",
                ExpressionAttributeNames={"#closed": "closed_at"},
            )
            return [_journal_entry(item) for item in items]

        return self._call(work)

    # ---------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._wrote:
            self._call(self._anchor_factory)
        self._close_anchor()  # boto3 clients hold no resources that need closing

    def __repr__(self) -> str:
        return f"DynamoLedger({self.table!r}, station_id={self.station_id!r})"


# -------------------------------------------------------------------------------------------------------
# Item decoding
# -------------------------------------------------------------------------------------------------------


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _damaged(what: str) -> LedgerUnavailable:
    return LedgerUnavailable(
        "Ledger damaged",
        f"{what} in the ledger cannot be read.",
        "Run `station audit verify` and call the person responsible for the ledger.",
    )


def _body(item: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        value = json.loads(item["body"]["S"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _int(attr: Any) -> int:
    try:
        return int(attr["N"])
    except (KeyError, TypeError, ValueError):
        return -1


def _str(attr: Any) -> str:
    return str(attr.get("S", "")) if isinstance(attr, dict) else ""


def _attr(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    return {"S": str(value)}


def _journal_entry(item: Mapping[str, Any]) -> JournalEntry:
    row: dict[str, Any] = {}
    for name, attr in item.items():
        if name in ("pk", "sk"):
            continue
        if "N" in attr:
            row[name] = attr["N"] if name == "id" else float(attr["N"])
        elif "BOOL" in attr:
            row[name] = bool(attr["BOOL"])
        elif "NULL" in attr:
            row[name] = None
        else:
            row[name] = attr["S"]
    return JournalEntry.from_stored(row)


def live_key(certificate_ids: Iterable[str]) -> str:
    """The unit item's `u_live`: its live certificate ids, sorted and comma-joined ("" when none)."""
    return ",".join(sorted(set(certificate_ids)))


def _heads_of(item: Mapping[str, Any] | None) -> dict[str, tuple[int, str]]:
    """The factory anchor item's `heads` map as station → (seq, hash)."""
    heads: dict[str, tuple[int, str]] = {}
    for station_id, attr in ((item or {}).get("heads", {}).get("M") or {}).items():
        entry = attr.get("M") or {}
        heads[station_id] = (_int(entry.get("seq")), _str(entry.get("hash")))
    return heads


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _micros(epoch: float) -> int:
    return max(0, round(float(epoch) * 1_000_000))


def _unit_item(state: UnitState, record: AttemptRecord, seq: int) -> dict[str, Any]:
    at = unit_time(record)
    order = f"{_micros(at):020d}#{seq:020d}"
    return {
        **_key(UNIT, state.serial),
        "body": {"S": canonical_json(plain(state.to_dict()))},
        "seq": {"N": str(seq)},
        "u_fold": {"S": state.serial.lower()},
        "u_all": {"S": UNIT},
        "u_state": {"S": state.state},
        "u_order": {"S": order},
        "u_outcome": {"S": state.last_outcome or "-"},
        "u_target": {"S": unit_target(state, record) or "-"},
        "u_station": {"S": record.station_id or "-"},
        # What `claim_unit` conditions on: the live certificate ids, sorted ("" when none is live).
        "u_live": {"S": live_key(i.certificate_id for i in state.live)},
    }


def _unit_of(item: Mapping[str, Any]) -> UnitState:
    body = _body(item)
    if body is None:
        raise _damaged("A unit's state")
    try:
        return UnitState.from_dict(body)
    except (TypeError, ValueError) as exc:
        raise _damaged("A unit's state") from exc


def _record_of(item: Mapping[str, Any]) -> AttemptRecord:
    fields = _body(item)
    if fields is None:
        raise _damaged("An attempt record")
    try:
        return AttemptRecord(**fields)
    except (TypeError, ValueError) as exc:
        raise _damaged("An attempt record") from exc


def _encode_cursor(key: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if isinstance(value, dict):
            return value
    except (ValueError, TypeError):
        pass
    raise InputError(
        "Bad cursor", f"{cursor!r} is not a cursor this ledger gave out.", "Start again without --after."
    )
