"""An optional ledger backend on Amazon DynamoDB: one table, the same chain, conditional writes.

Location: `dynamodb://TABLE?region=eu-west-1[&endpoint_url=URL][&profile=NAME]`. Credentials come from the
usual boto3 chain (environment, profile, instance role). With `create=True` the table is made if missing
(on-demand billing).

Layout (partition key `pk`, sort key `sk`, both strings):
- `chain` / zero-padded seq: one event — `seq`, `prev_hash`, `hash` and `body` (the event's canonical JSON:
  DynamoDB numbers cannot tell 2 from 2.0, so the hashed content is kept as the exact text that was hashed);
- `head` / `-`: the last seq and hash; `record` / attempt id: one attempt record (`body` = canonical JSON);
- `journal` / zero-padded id: one journal entry; `counter` / `journal`: the journal id counter;
  `meta` / `schema`: the schema version.

Appends are optimistic: read the head (strongly consistent), then one TransactWriteItems that puts the new
event only if its seq is free and moves the head only if it still holds the seq that was read. A writer that
loses the race (another station or process on the same table) re-reads the head and tries again; within one
process a lock keeps the slots from racing each other. A record write puts the record (only if its attempt id
is new), its `record` event and the head in the same transaction. Every write is durable when DynamoDB
acknowledges it.

`audit()` reads the head before and after reading every row and starts again if a writer moved it meanwhile,
so a busy line never produces a false alarm. Lookups (`find`, `units`) read the record partition and filter
here: fine for a station's volume, not an analytics store.

This module must not talk to AWS IoT, must not hold key material, and must not hand out its client.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlparse

from station.ledger.base import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    AttemptRecord,
    AuditResult,
    ChainRow,
    JournalEntry,
    Ledger,
    LedgerEvent,
    LedgerMissing,
    LedgerUnavailable,
    RecordRow,
    UnitSummary,
    as_record,
    audit_chain,
    canonical_json,
    chain_hash_json,
    encode_appended_event,
    encode_record_seal,
    event_from_fields,
    journal_columns,
    matches_query,
)
from station.model import Event

CHAIN = "chain"
RECORD = "record"
JOURNAL = "journal"
HEAD_KEY = {"pk": {"S": "head"}, "sk": {"S": "-"}}
SCHEMA_KEY = {"pk": {"S": "meta"}, "sk": {"S": "schema"}}
COUNTER_KEY = {"pk": {"S": "counter"}, "sk": {"S": "journal"}}
MAX_APPEND_TRIES = 50
AUDIT_TRIES = 5


def seq_key(seq: int) -> str:
    return f"{seq:020d}"


class _Conflict(Exception):
    """Another writer moved the head between our read and our write."""


class DynamoLedger(Ledger):
    """The ledger in one DynamoDB table."""

    def __init__(self, table: str, *, client: Any, create: bool = True) -> None:
        self.table = table
        self._client = client
        self._lock = threading.RLock()
        errors = self._errors()
        try:
            self._ensure_table(create)
        except errors as exc:
            raise self._unavailable(exc) from exc

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> DynamoLedger:
        import boto3  # only when this backend is chosen: SQLite stations never load boto3 for the ledger

        parsed = urlparse(url)
        table = parsed.netloc or parsed.path.lstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        session = boto3.Session(profile_name=query.get("profile"), region_name=query.get("region"))
        client = session.client("dynamodb", endpoint_url=query.get("endpoint_url"))
        return cls(table, client=client, create=create)

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
                client.create_table(
                    TableName=self.table,
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    AttributeDefinitions=[
                        {"AttributeName": "pk", "AttributeType": "S"},
                        {"AttributeName": "sk", "AttributeType": "S"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
        try:
            client.put_item(
                TableName=self.table,
                Item={**SCHEMA_KEY, "version": {"N": str(SCHEMA_VERSION)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except client.exceptions.ConditionalCheckFailedException:
            item = client.get_item(TableName=self.table, Key=SCHEMA_KEY, ConsistentRead=True)["Item"]
            version = int(item["version"]["N"])
            if version > SCHEMA_VERSION:
                raise LedgerUnavailable(
                    "Ledger from a newer station",
                    f"The ledger table {self.table} has schema version {version}; this station knows "
                    f"{SCHEMA_VERSION}.",
                    "Update the station software before using this ledger.",
                ) from None

    def _call(self, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except self._errors() as exc:
            raise self._unavailable(exc) from exc

    # ------------------------------------------------------------------------------------------- chain
    def _head(self) -> tuple[int, str]:
        item = self._client.get_item(TableName=self.table, Key=HEAD_KEY, ConsistentRead=True).get("Item")
        if item is None:
            return 0, GENESIS_HASH
        return int(item["seq"]["N"]), item["hash"]["S"]

    def _append(
        self, fields_json: str, extra_items: Callable[[int], list[dict[str, Any]]] | None = None
    ) -> int:
        """One transaction: `extra_items(seq)` (checked puts) + the event + the head move; retried on a lost
        race (DynamoDB's own TransactionConflict included)."""
        with self._lock:
            for _ in range(MAX_APPEND_TRIES):
                old_seq, prev = self._head()
                seq = old_seq + 1
                digest = chain_hash_json(seq, prev, fields_json)
                event_item = {
                    "pk": {"S": CHAIN},
                    "sk": {"S": seq_key(seq)},
                    "seq": {"N": str(seq)},
                    "prev_hash": {"S": prev},
                    "hash": {"S": digest},
                    "body": {"S": fields_json},
                }
                head_update: dict[str, Any] = {
                    "TableName": self.table,
                    "Key": HEAD_KEY,
                    "UpdateExpression": "SET #s = :new, #h = :hash",
                    "ExpressionAttributeNames": {"#s": "seq", "#h": "hash"},
                    "ExpressionAttributeValues": {":new": {"N": str(seq)}, ":hash": {"S": digest}},
                }
                if old_seq:
                    head_update["ConditionExpression"] = "#s = :old"
                    head_update["ExpressionAttributeValues"][":old"] = {"N": str(old_seq)}
                else:
                    head_update["ConditionExpression"] = "attribute_not_exists(#pk)"
                    head_update["ExpressionAttributeNames"]["#pk"] = "pk"
                puts = extra_items(seq) if extra_items else []
                items = [
                    *({"Put": item} for item in puts),
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": event_item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Update": head_update},
                ]
                try:
                    self._transact(items, len(puts))
                    return seq
                except _Conflict:
                    continue
            raise LedgerUnavailable(
                "Ledger busy",
                f"Could not append to the DynamoDB ledger {self.table}: other writers kept moving its head.",
                "Try again; if it persists, check how many stations write to this table.",
            )

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

    def record_attempt(self, record: AttemptRecord | Mapping[str, Any]) -> str:
        rec = as_record(record)
        digest = rec.canonical_hash()
        _, fields_json = encode_record_seal(rec, digest)
        body = canonical_json(rec.to_dict())

        def record_put(seq: int) -> list[dict[str, Any]]:
            item = {
                "pk": {"S": RECORD},
                "sk": {"S": rec.attempt_id},
                "chain_seq": {"N": str(seq)},  # for ordering only; the audit trusts the chain, not this
                "body": {"S": body},
            }
            return [
                {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
            ]

        try:
            self._call(lambda: self._append(fields_json, record_put))
        except ValueError as exc:
            raise ValueError(f"attempt {rec.attempt_id} is already recorded") from exc
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

    def _chain_items(self, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        return self._query(
            CHAIN,
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

    def audit(self) -> AuditResult:
        def work() -> AuditResult:
            for _ in range(AUDIT_TRIES):
                head_item = self._client.get_item(
                    TableName=self.table, Key=HEAD_KEY, ConsistentRead=True
                ).get("Item")
                records = [RecordRow(item["sk"]["S"], _body(item)) for item in self._query(RECORD)]
                rows = [
                    ChainRow(
                        _int(item.get("seq")),
                        _str(item.get("prev_hash")),
                        _str(item.get("hash")),
                        _body(item),
                    )
                    for item in self._chain_items()
                ]
                head_again = self._client.get_item(
                    TableName=self.table, Key=HEAD_KEY, ConsistentRead=True
                ).get("Item")
                if head_item == head_again:
                    head = None if head_item is None else (int(head_item["seq"]["N"]), head_item["hash"]["S"])
                    return audit_chain(rows, head, records)
            raise LedgerUnavailable(
                "Ledger busy",
                "The ledger kept changing while it was being checked.",
                "Run the audit again when the line is quieter.",
            )

        return self._call(work)

    # ----------------------------------------------------------------------------------------- records
    def _records(self) -> list[AttemptRecord]:
        items = sorted(self._query(RECORD), key=lambda item: _int(item.get("chain_seq")))
        out = []
        for item in items:
            fields = _body(item)
            if fields is None:
                raise _damaged("An attempt record")
            try:
                out.append(AttemptRecord(**fields))
            except (TypeError, ValueError) as exc:
                raise _damaged("An attempt record") from exc
        return out

    def records(self) -> Iterator[AttemptRecord]:
        yield from self._call(self._records)

    def find(self, query: str) -> list[AttemptRecord]:
        return [r for r in self._call(self._records) if matches_query(r, query)]

    def units(self, outcome: str | None = None) -> list[UnitSummary]:
        latest: dict[str, AttemptRecord] = {}
        counts: dict[str, int] = {}
        for record in self._call(self._records):  # oldest first: the last one seen is the latest
            latest[record.serial] = record
            counts[record.serial] = counts.get(record.serial, 0) + 1
        return [
            UnitSummary(serial, r.outcome, counts[serial], r)
            for serial, r in sorted(latest.items())
            if outcome is None or r.outcome == str(outcome)
        ]

    # ----------------------------------------------------------------------------------------- journal
    def journal_open(self, **fields: Any) -> int:
        columns, extra = journal_columns(fields)

        def work() -> int:
            counter = self._client.update_item(
                TableName=self.table,
                Key=COUNTER_KEY,
                UpdateExpression="ADD #n :one",
                ExpressionAttributeNames={"#n": "n"},
                ExpressionAttributeValues={":one": {"N": "1"}},
                ReturnValues="UPDATED_NEW",
            )
            journal_id = int(counter["Attributes"]["n"]["N"])
            now = repr(time.time())
            item = {
                "pk": {"S": JOURNAL},
                "sk": {"S": seq_key(journal_id)},
                "id": {"N": str(journal_id)},
                "opened_at": {"N": now},
                "updated_at": {"N": now},
                "extra": {"S": canonical_json(extra)},
                **{name: _attr(value) for name, value in columns.items()},
            }
            self._client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
            return journal_id

        return self._call(work)

    def journal_update(self, journal_id: int, **fields: Any) -> None:
        columns, extra = journal_columns(fields)
        key = {"pk": {"S": JOURNAL}, "sk": {"S": seq_key(int(journal_id))}}
        client = self._client

        def work() -> None:
            # Read-modify-write of `extra`, guarded by its old value so two updaters cannot lose each other's keys.
            for _ in range(MAX_APPEND_TRIES):
                item = client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
                if item is None or "closed_at" in item:
                    raise KeyError(f"no open journal entry {journal_id}")
                old_extra = item["extra"]["S"]
                merged = canonical_json({**json.loads(old_extra), **extra})
                # Every attribute name goes through a placeholder: DynamoDB reserves hundreds of words.
                names = {f"#c{i}": name for i, name in enumerate(columns)}
                names.update({"#pk": "pk", "#closed": "closed_at", "#upd": "updated_at", "#extra": "extra"})
                values: dict[str, Any] = {f":c{i}": _attr(v) for i, v in enumerate(columns.values())}
                values.update(
                    {":now": {"N": repr(time.time())}, ":extra": {"S": merged}, ":old": {"S": old_extra}}
                )
                sets = [f"#c{i} = :c{i}" for i in range(len(columns))] + ["#upd = :now", "#extra = :extra"]
                try:
                    client.update_item(
                        TableName=self.table,
                        Key=key,
                        UpdateExpression="SET " + ", ".join(sets),
                        ConditionExpression="attribute_exists(#pk) AND attribute_not_exists(#closed) AND #extra = :old",
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                    )
                    return
                except client.exceptions.ConditionalCheckFailedException:
                    continue  # closed or changed meanwhile: look again
            raise LedgerUnavailable(
                "Ledger busy", "A journal entry kept changing.", "Try again; check for a second station."
            )

        self._call(work)

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        key = {"pk": {"S": JOURNAL}, "sk": {"S": seq_key(int(journal_id))}}
        client = self._client

        def work() -> None:
            now = {"N": repr(time.time())}
            try:
                client.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET #closed = :now, #upd = :now, #out = :outcome",
                    ConditionExpression="attribute_exists(#pk) AND attribute_not_exists(#closed)",
                    ExpressionAttributeNames={
                        "#pk": "pk",
                        "#closed": "closed_at",
                        "#upd": "updated_at",
                        "#out": "outcome",
                    },
                    ExpressionAttributeValues={
                        ":now": now,
                        ":outcome": {"NULL": True} if outcome is None else {"S": str(outcome)},
                    },
                )
            except client.exceptions.ConditionalCheckFailedException:
                if client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item") is None:
                    raise KeyError(f"no journal entry {journal_id}") from None

        self._call(work)

    def journal_pending(self) -> list[JournalEntry]:
        def work() -> list[JournalEntry]:
            items = self._query(
                JOURNAL,
                FilterExpression="attribute_not_exists(#closed)",
                ExpressionAttributeNames={"#closed": "closed_at"},
            )
            return [_journal_entry(item) for item in items]

        return self._call(work)

    # ---------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        pass  # boto3 clients hold no resources that need closing

    def __repr__(self) -> str:
        return f"DynamoLedger({self.table!r})"


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
    fields: dict[str, Any] = {"id": int(item["id"]["N"])}
    for name, attr in item.items():
        if name in ("pk", "sk", "id"):
            continue
        if name == "extra":
            fields["extra"] = json.loads(attr["S"])
        elif "N" in attr:
            fields[name] = float(attr["N"])
        elif "BOOL" in attr:
            fields[name] = bool(attr["BOOL"])
        elif "NULL" in attr:
            fields[name] = None
        else:
            fields[name] = attr["S"]
    fields["thing_created"] = bool(fields.get("thing_created"))
    return JournalEntry(**fields)
