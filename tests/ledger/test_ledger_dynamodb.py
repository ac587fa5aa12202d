"""The DynamoDB backend against moto's in-process DynamoDB: the shared contract, plus the conditional-write
race (a writer whose head is stale retries instead of forking the chain) and its location URL."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from ledger_contract import BackendUnderTest, LedgerContract, make_record, note
from moto import mock_aws

from station.ledger import LedgerMissing, open_ledger
from station.ledger.base import canonical_json
from station.ledger.dynamodb import CHAIN, DEFAULT_STATION, JOURNAL, RECORD, DynamoLedger, seq_key, station_pk

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    """One in-process mock AWS for the module (starting one costs more than most tests); tables differ."""
    saved = {k: os.environ.get(k) for k in _ENV}
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    try:
        with mock_aws():
            yield boto3.client("dynamodb", region_name=REGION)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def table() -> str:
    return f"ledger-{uuid.uuid4().hex[:12]}"


class DynamoTamperer:
    """Edits items directly with the DynamoDB API, as anyone with write access to the table could (events and
    journal rows of one station's chain)."""

    def __init__(self, client: Any, table: str, station: str = DEFAULT_STATION) -> None:
        self.client = client
        self.table = table
        self.chain = station_pk(CHAIN, station)
        self.journal = station_pk(JOURNAL, station)

    def _key(self, pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _get(self, pk: str, sk: str) -> dict[str, Any]:
        return self.client.get_item(TableName=self.table, Key=self._key(pk, sk))["Item"]

    def _edit_body(self, pk: str, sk: str, columns: dict[str, Any]) -> None:
        item = self._get(pk, sk)
        body = json.loads(item["body"]["S"])
        body.update(columns)
        item["body"] = {"S": json.dumps(body)}
        self.client.put_item(TableName=self.table, Item=item)

    def edit_event(self, seq: int, **columns: Any) -> None:
        self._edit_body(self.chain, seq_key(seq), columns)

    def delete_event(self, seq: int) -> None:
        self.client.delete_item(TableName=self.table, Key=self._key(self.chain, seq_key(seq)))

    def swap_events(self, a: int, b: int) -> None:
        item_a, item_b = self._get(self.chain, seq_key(a)), self._get(self.chain, seq_key(b))
        for item, seq in ((item_a, b), (item_b, a)):
            item.update({"sk": {"S": seq_key(seq)}, "seq": {"N": str(seq)}})
            self.client.put_item(TableName=self.table, Item=item)

    def edit_record(self, attempt_id: str, **columns: Any) -> None:
        self._edit_body(RECORD, attempt_id, columns)

    def delete_record(self, attempt_id: str) -> None:
        self.client.delete_item(TableName=self.table, Key=self._key(RECORD, attempt_id))

    def insert_record(self, record: Any) -> None:
        item = {**self._key(RECORD, record.attempt_id), "body": {"S": canonical_json(record.to_dict())}}
        self.client.put_item(TableName=self.table, Item=item)

    def edit_unit(self, serial: str, **fields: Any) -> None:
        self._edit_body("unit", serial, fields)

    def close_journal(self, journal_id: int) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(self.journal, seq_key(journal_id)),
            UpdateExpression="SET closed_at = :one, outcome = :pass",
            ExpressionAttributeValues={":one": {"N": "1"}, ":pass": {"S": "PASS"}},
        )


class TestDynamoContract(LedgerContract):
    # moto answers in milliseconds per call; the SQLite suite carries the full 8 × 50 load.
    CONCURRENT_THREADS = 4
    CONCURRENT_PER_THREAD = 10

    @pytest.fixture
    def backend(self, aws: Any, table: str) -> BackendUnderTest:
        return BackendUnderTest(
            open=lambda: DynamoLedger(table, client=aws), tamper=DynamoTamperer(aws, table)
        )


def test_a_writer_with_a_stale_head_retries_instead_of_forking(aws: Any, table: str) -> None:
    first = DynamoLedger(table, client=aws)
    second = DynamoLedger(table, client=aws)  # another station on the same table
    first.append_event(note(i=0))
    real_head = first._head
    raced: list[int] = []

    def stale_head() -> tuple[int, str]:
        head = real_head()
        if not raced:  # between our read and our write, the other station appends
            raced.append(second.append_event(note("OTHER", 1)))
        return head

    first._head = stale_head  # type: ignore[method-assign]
    assert first.append_event(note(i=2)) == 3  # lost the race for seq 2, took seq 3
    first.record_attempt(make_record())
    assert raced == [2]
    result = second.audit()
    assert result.ok and result.head_seq == 4
    assert [e.event.serial for e in second.events()] == ["SN0001", "OTHER", "SN0001", "SN0001"]


def test_open_by_url_and_missing_table(aws: Any) -> None:
    with pytest.raises(LedgerMissing):
        open_ledger(f"dynamodb://nope?region={REGION}", create=False)
    ledger = open_ledger(f"dynamodb://made?region={REGION}")
    assert isinstance(ledger, DynamoLedger)
    ledger.append_event(note())
    again = open_ledger(f"dynamodb://made?region={REGION}", create=False)
    assert again.audit().ok and again.audit().head_seq == 1


def test_lookups_and_pages_query_indexes_and_never_scan(aws: Any, table: str) -> None:
    calls: list[tuple[str, str]] = []

    class Watching:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._inner, name)
            if name in ("scan", "query", "get_item", "batch_get_item"):

                def watched(**kwargs: Any) -> Any:
                    calls.append((name, kwargs.get("IndexName", "")))
                    return attr(**kwargs)

                return watched
            if name == "get_paginator":

                def paginator(op: str) -> Any:
                    real = attr(op)

                    class Pages:
                        def paginate(self, **kwargs: Any) -> Any:
                            calls.append((op, kwargs.get("IndexName", "")))
                            return real.paginate(**kwargs)

                    return Pages()

                return paginator
            return attr

    ledger = DynamoLedger(table, client=Watching(aws))
    for i in range(5):
        ledger.record_attempt(
            make_record(f"SN{i:04d}", finished_at=1_700_000_000.0 + i), events=[note(f"SN{i:04d}")]
        )
    calls.clear()
    assert [u.serial for u in ledger.find_units("sn0003")] == ["SN0003"]
    assert len(ledger.find("prov1-SN0002")) == 1
    page = ledger.unit_page(limit=2)
    assert [u.serial for u in page.units] == ["SN0004", "SN0003"]
    assert [u.serial for u in ledger.unit_page(limit=2, after=page.next_cursor).units] == ["SN0002", "SN0001"]
    assert [u.serial for u in ledger.unit_page(state="provisioned", outcome="PASS", limit=1).units] == [
        "SN0004"
    ]
    assert ledger.unit("SN0001") is not None
    assert not [c for c in calls if c[0] == "scan"]
    assert {index for op, index in calls if op == "query"} >= {
        "units_by_fold",
        "records_by_thing",
        "units_by_time",
        "units_by_state",
    }
