"""The DynamoDB backend against moto's in-process DynamoDB: the shared contract, plus the conditional-write
race (a writer whose head is stale retries instead of forking the chain) and its location URL."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from ledger_contract import BackendUnderTest, LedgerContract, make_record, note
from moto import mock_aws

from station.errors import InputError
from station.ledger import LedgerMissing, LedgerUnavailable, UnitAlreadyLive, UnitClaimed, open_ledger
from station.ledger.base import GENESIS_HASH, canonical_json
from station.ledger.dynamodb import (
    CHAIN,
    DEFAULT_STATION,
    JOURNAL,
    RECORD,
    DynamoLedger,
    _Conflict,
    seq_key,
    station_pk,
)

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
    second = DynamoLedger(table, client=aws)  # another handle of the same station (another process)
    first.append_event(note(i=0))  # `first` now knows the head: seq 1, and does not read it again
    assert second.append_event(note("OTHER", 1)) == 2  # the head moves under it
    assert first.append_event(note(i=2)) == 3  # its write at seq 2 is refused; it reads the head, takes seq 3
    first.record_attempt(make_record())
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


# ---------------------------------------------------------------------------------------------------------
# Many stations on one table: a chain per station, the factory anchor, one live station per serial
# ---------------------------------------------------------------------------------------------------------

ST1, ST2 = "line1-st1", "line1-st2"


def _counting_conflicts(ledger: DynamoLedger) -> list[int]:
    """Counts the appends of `ledger` that lost a race for its head (and were retried)."""
    lost: list[int] = []
    real = ledger._transact

    def transact(items: Any, checked: int) -> None:
        try:
            real(items, checked)
        except _Conflict:
            lost.append(1)
            raise

    ledger._transact = transact  # type: ignore[method-assign]
    return lost


class OneCallAtATime:
    """The moto client, one call at a time: moto's in-process backend is not thread-safe ('dictionary changed
    size during iteration'), DynamoDB is. Calls of the two stations still interleave freely between calls."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name == "exceptions" or not callable(attr):
            return attr
        if name == "get_paginator":

            def paginator(op: str) -> Any:
                real = attr(op)

                class Pages:
                    def paginate(pages, **kwargs: Any) -> Any:
                        with self._lock:
                            return list(real.paginate(**kwargs))

                return Pages()

            return paginator

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def test_two_stations_append_concurrently_without_contending(aws: Any, table: str) -> None:
    client = OneCallAtATime(aws)
    stations = {name: DynamoLedger(table, client=client, station_id=name) for name in (ST1, ST2)}
    lost = {name: _counting_conflicts(ledger) for name, ledger in stations.items()}
    errors: list[BaseException] = []
    # 2 × 100: moto's in-process DynamoDB slows down as the table grows (2 × 200 takes ~50 s here).
    per_station = 100
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        ledger = stations[name]
        start.wait()
        try:
            for i in range(per_station):
                serial = f"{name}-SN{i:04d}"
                ledger.record_attempt(
                    make_record(serial, station_id=name, finished_at=1_700_000_000.0 + i),
                    events=[note(serial)],
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in stations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Each station appended to its own chain: not one append had to retry because of the other station.
    assert lost == {ST1: [], ST2: []}
    for ledger in stations.values():
        assert ledger.head()[0] == 2 * per_station  # an event and a seal per record
        ledger.close()  # anchors the head in the factory item
    heads = stations[ST1].factory_heads()
    assert {name: seq for name, (seq, _) in heads.items()} == {ST1: 2 * per_station, ST2: 2 * per_station}
    for name in stations:
        with DynamoLedger(table, client=aws, station_id=name) as again:
            result = again.audit()
            assert result.ok, result
            assert result.station == name and result.head_seq == 2 * per_station
            assert result.units_checked == per_station
            assert [s for s, _, _ in result.stations] == [name]
    with DynamoLedger(table, client=aws, station_id=ST1) as anyone:
        whole = anyone.audit(all_stations=True)
        assert whole.ok and whole.units_checked == 2 * per_station
        assert {s: n for s, n, _ in whole.stations} == {ST1: 2 * per_station, ST2: 2 * per_station}
        assert whole.stations == tuple((s, *heads[s]) for s in (ST1, ST2))
        # Every station sees every unit (records and units are table-wide).
        assert anyone.unit(f"{ST2}-SN0007") is not None
        assert [r.station_id for r in anyone.find(f"{ST2}-SN0007")] == [ST2]


def _two_stations(aws: Any, table: str, records: int = 3) -> dict[str, DynamoLedger]:
    stations = {name: DynamoLedger(table, client=aws, station_id=name) for name in (ST1, ST2)}
    for name, ledger in stations.items():
        for i in range(records):
            ledger.record_attempt(
                make_record(f"{name}-SN{i}", station_id=name), events=[note(f"{name}-SN{i}")]
            )
        ledger.close()
    return stations


def test_a_tampered_station_chain_is_named_and_the_other_station_still_passes(aws: Any, table: str) -> None:
    stations = _two_stations(aws, table)
    DynamoTamperer(aws, table, ST2).edit_event(3, message="nothing to see")
    assert stations[ST1].audit().ok
    mine = stations[ST2].audit()
    assert not mine.ok and mine.station == ST2
    assert (mine.first_bad_row.table, mine.first_bad_row.key) == ("events", 3)
    whole = stations[ST1].audit(all_stations=True)
    assert not whole.ok and whole.station == ST2 and whole.first_bad_row.key == 3
    # A ledger opened without a station id audits every station.
    assert not DynamoLedger(table, client=aws).audit().ok


def test_a_truncated_station_chain_is_caught_by_the_factory_anchor(aws: Any, table: str) -> None:
    stations = _two_stations(aws, table, records=5)  # ST2: 10 events, anchored at 10 by close()
    tamper = DynamoTamperer(aws, table, ST2)
    ten = aws.get_item(TableName=table, Key=tamper._key(station_pk(CHAIN, ST2), seq_key(8)))["Item"]
    for seq in (9, 10):
        tamper.delete_event(seq)
    # Move the head back too, so the chain alone looks whole and only the factory anchor knows better.
    aws.put_item(
        TableName=table,
        Item={**tamper._key(station_pk("head", ST2), "-"), "seq": {"N": "8"}, "hash": ten["hash"]},
    )
    # ... and take the two records away as well, so no seal is missing.
    for attempt_id in [r.attempt_id for r in stations[ST1].find(f"{ST2}-SN4")]:
        tamper.delete_record(attempt_id)
    aws.delete_item(TableName=table, Key=tamper._key("unit", f"{ST2}-SN4"))
    result = stations[ST2].audit()
    assert not result.ok and result.station == ST2
    assert result.first_bad_row.table == "factory" and "truncated" in result.reason
    assert stations[ST1].audit().ok
    assert not stations[ST1].audit(all_stations=True).ok


def test_a_station_removed_from_the_factory_anchor_is_caught(aws: Any, table: str) -> None:
    stations = _two_stations(aws, table)
    aws.update_item(
        TableName=table,
        Key={"pk": {"S": "factory"}, "sk": {"S": "heads"}},
        UpdateExpression="REMOVE heads.#st",
        ExpressionAttributeNames={"#st": ST2},
    )
    result = stations[ST1].audit(all_stations=True)
    assert not result.ok and result.station == ST2 and "factory anchor" in result.reason


def test_each_station_keeps_its_own_journal(aws: Any, table: str) -> None:
    one, two = (DynamoLedger(table, client=aws, station_id=name) for name in (ST1, ST2))
    first = one.journal_open(attempt_id="a1", serial="SN1", stage="registering")
    assert two.journal_open(attempt_id="a2", serial="SN2", stage="registering") == first  # ids per station
    assert [e.attempt_id for e in one.journal_pending()] == ["a1"]
    assert [e.attempt_id for e in two.journal_pending()] == ["a2"]
    one.journal_close(first, "PASS")
    assert one.journal_pending() == [] and len(two.journal_pending()) == 1
    assert one.audit(all_stations=True).ok


def test_the_same_serial_at_two_stations_becomes_live_at_one(aws: Any, table: str) -> None:
    one, two = (DynamoLedger(table, client=aws, station_id=name) for name in (ST1, ST2))
    started = 1_700_000_000.0
    made = make_record("SN0042", station_id=ST1, slot="s3", started_at=started, finished_at=started + 5)
    one.record_attempt(made)
    # Station 2 scanned the same unit before station 1 finished: its re-scan check saw nothing live.
    late = make_record(
        "SN0042",
        station_id=ST2,
        slot="s1",
        certificate_id="ab" * 32,
        started_at=started + 1,
        finished_at=started + 7,
    )
    with pytest.raises(UnitAlreadyLive) as refused:
        two.record_attempt(late, events=[note("SN0042")])
    error = refused.value
    assert (error.serial, error.station_id, error.slot) == ("SN0042", ST1, "s3")
    assert error.identity.certificate_id == made.certificate_id and error.outcome == "FAIL"
    assert error.message == (
        "SN0042 was provisioned on 2023-11-14 at line1-st1/s3 as prov1-SN0042; send it to QA."
    )
    # Nothing of the refused attempt was written: the unit is still station 1's, both chains audit clean.
    state = one.unit("SN0042")
    assert state is not None and [i.certificate_id for i in state.live] == [made.certificate_id]
    assert two.head() == (0, GENESIS_HASH) and two.find(late.attempt_id) == []
    # The pipeline then rolls back its AWS work and records the attempt as a FAIL: that is accepted.
    two.record_attempt(
        dataclasses.replace(late, outcome="FAIL", certificate_id="", title="Already provisioned")
    )
    state = two.unit("SN0042")
    assert state is not None and [i.certificate_id for i in state.live] == [made.certificate_id]
    # A re-provision that names the live certificate as replaced is not a conflict.
    two.record_attempt(
        make_record(
            "SN0042",
            station_id=ST2,
            certificate_id="cd" * 32,
            started_at=started + 20,
            finished_at=started + 25,
            extra={"replaced": [made.certificate_id], "replaced_revoked": [made.certificate_id]},
        )
    )
    assert [i.certificate_id for i in two.unit("SN0042").live] == ["cd" * 32]  # type: ignore[union-attr]
    assert one.audit(all_stations=True).ok


def test_racing_stations_on_one_serial_make_exactly_one_live(aws: Any, table: str) -> None:
    client = OneCallAtATime(aws)
    one, two = (DynamoLedger(table, client=client, station_id=name) for name in (ST1, ST2))
    outcomes: dict[str, list[str]] = {ST1: [], ST2: []}

    def race(ledger: DynamoLedger, serial: str, cert: str, barrier: threading.Barrier) -> None:
        record = make_record(serial, station_id=ledger.station_id, certificate_id=cert, started_at=1.0)
        barrier.wait()
        try:
            ledger.record_attempt(record)
            outcomes[ledger.station_id].append("live")
        except UnitAlreadyLive:
            outcomes[ledger.station_id].append("refused")

    for i in range(10):
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=race, args=(ledger, f"SN-RACE-{i}", cert * 32, barrier))
            for ledger, cert in ((one, "1a"), (two, "2b"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        state = one.unit(f"SN-RACE-{i}")
        assert state is not None and len(state.live) == 1
    results = list(zip(outcomes[ST1], outcomes[ST2], strict=True))
    assert all(sorted(pair) == ["live", "refused"] for pair in results)
    assert one.audit(all_stations=True).ok


def test_station_in_the_url_or_from_the_config(aws: Any) -> None:
    url = f"dynamodb://stations?region={REGION}"
    with open_ledger(url, station_id=ST1) as ledger:
        assert isinstance(ledger, DynamoLedger) and ledger.station_id == ST1
        ledger.append_event(note())
    with open_ledger(f"{url}&station={ST2}", create=False) as ledger:
        assert isinstance(ledger, DynamoLedger) and ledger.station_id == ST2 and ledger.head()[0] == 0
    with pytest.raises(InputError, match="Two station ids"):
        open_ledger(f"{url}&station={ST2}", station_id=ST1)
    with pytest.raises(InputError, match="Bad station id"):
        open_ledger(url, station_id="line 1/st#1")


def test_a_table_of_the_old_schema_is_refused_clearly(aws: Any, table: str) -> None:
    DynamoLedger(table, client=aws)
    aws.put_item(TableName=table, Item={"pk": {"S": "meta"}, "sk": {"S": "schema"}, "version": {"N": "2"}})
    with pytest.raises(LedgerUnavailable, match="older station") as refused:
        DynamoLedger(table, client=aws, station_id=ST1)
    assert "one hash chain per station" in refused.value.message


def test_a_claim_before_any_aws_work_keeps_a_serial_at_one_station(aws: Any, table: str) -> None:
    one, two = (DynamoLedger(table, client=aws, station_id=name) for name in (ST1, ST2))
    first = make_record("SN0077", station_id=ST1, slot="s2")
    one.claim_unit("SN0077", first.attempt_id, slot="s2")
    one.claim_unit("SN0077", first.attempt_id, slot="s2")  # the same attempt again: still its claim
    second = make_record("SN0077", station_id=ST2, certificate_id="ef" * 32)
    with pytest.raises(UnitClaimed) as busy:
        two.claim_unit("SN0077", second.attempt_id, slot="s1")
    assert (busy.value.station_id, busy.value.slot) == (ST1, "s2")
    assert "SN0077 is being provisioned at line1-st1/s2" in busy.value.message
    one.record_attempt(first)  # recorded: the claim is gone, the unit is live
    assert (
        aws.get_item(TableName=table, Key={"pk": {"S": "claim"}, "sk": {"S": "SN0077"}}).get("Item") is None
    )
    with pytest.raises(UnitAlreadyLive) as live:
        two.claim_unit("SN0077", second.attempt_id, slot="s1")
    assert (live.value.station_id, live.value.slot) == (ST1, "s2")
    # A unit that never became live can be claimed again once the holder releases it (a failed attempt).
    failed = make_record("SN0078", station_id=ST1)
    one.claim_unit("SN0078", failed.attempt_id)
    two.release_unit("SN0078", "not-the-holder")  # changes nothing
    with pytest.raises(UnitClaimed):
        two.claim_unit("SN0078", second.attempt_id)
    one.release_unit("SN0078", failed.attempt_id)
    two.claim_unit("SN0078", second.attempt_id)
    assert one.audit(all_stations=True).ok  # claims are locks, not facts: not in any chain


def test_the_default_claim_of_a_one_station_ledger_refuses_a_live_unit(tmp_path: Any) -> None:
    from station.ledger.sqlite import SqliteLedger

    with SqliteLedger(str(tmp_path / "ledger.sqlite")) as ledger:
        ledger.claim_unit("SN0001", "a1")  # nothing live: fine
        made = make_record("SN0001", slot="s4")
        ledger.record_attempt(made)
        with pytest.raises(UnitAlreadyLive) as live:
            ledger.claim_unit("SN0001", "a2")
        assert (live.value.station_id, live.value.slot) == (made.station_id, "s4")


def test_another_target_conflicts_only_when_made_live_meanwhile(aws: Any, table: str) -> None:
    one, two = (DynamoLedger(table, client=aws, station_id=name) for name in (ST1, ST2))
    one.record_attempt(make_record("SN0050", target="lab-us", started_at=100.0, finished_at=110.0))
    # Station 2's attempt for another target started after that identity was live: the re-scan check saw it
    # (and the product's policy allowed a second target), so it is stored.
    two.record_attempt(
        make_record("SN0050", station_id=ST2, certificate_id="aa" * 32, started_at=120.0, finished_at=130.0)
    )
    one.record_attempt(make_record("SN0051", target="lab-us", started_at=100.0, finished_at=110.0))
    with pytest.raises(UnitAlreadyLive):  # started before it was live: it could not have known
        two.record_attempt(
            make_record(
                "SN0051", station_id=ST2, certificate_id="bb" * 32, started_at=105.0, finished_at=130.0
            )
        )
    assert {i.target for i in two.unit("SN0050").live} == {"lab-us", "lab-eu"}  # type: ignore[union-attr]


def test_station_audit_verify_one_station_or_all(aws: Any, capsys: Any) -> None:
    from station.cli import EXIT_INTEGRITY, EXIT_OK, main

    url = f"dynamodb://cli-stations?region={REGION}"
    for name in (ST1, ST2):
        with open_ledger(url, station_id=name) as ledger:
            ledger.record_attempt(make_record(f"{name}-SN1", station_id=name), events=[note(f"{name}-SN1")])
    assert main(["audit", "verify", "--ledger", url, "--station", ST2, "--json"]) == EXIT_OK
    mine = json.loads(capsys.readouterr().out)
    assert mine["station"] == ST2 and [s["station"] for s in mine["stations"]] == [ST2]
    assert main(["audit", "verify", "--ledger", url, "--all-stations"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"Station {ST1}: head event 2" in out and f"Station {ST2}: head event 2" in out
    client = boto3.client("dynamodb", region_name=REGION)
    DynamoTamperer(client, "cli-stations", ST1).edit_event(1, message="edited")
    assert main(["audit", "verify", "--ledger", url, "--station", ST2]) == EXIT_OK
    capsys.readouterr()
    assert main(["audit", "verify", "--ledger", url, "--all-stations"]) == EXIT_INTEGRITY
    assert f"first bad row is events 1 in station {ST1}'s chain" in capsys.readouterr().out


def test_a_re_provision_claims_the_unit_it_replaces(aws: Any, table: str) -> None:
    one, two = (DynamoLedger(table, client=aws, station_id=name) for name in (ST1, ST2))
    made = make_record("SN0090", station_id=ST1)
    one.record_attempt(made)
    with pytest.raises(UnitAlreadyLive):
        two.claim_unit("SN0090", "r1", replacing=["not-the-live-one"])
    two.claim_unit(
        "SN0090", "r1", replacing=[made.certificate_id]
    )  # the replace policy names what it replaces
    with pytest.raises(UnitClaimed):
        one.claim_unit("SN0090", "r2", replacing=[made.certificate_id])


def test_the_audit_streams_a_chain_longer_than_one_page(aws: Any, table: str) -> None:
    """A chain of 24 events read 5 a page: every page is a Query of its own, the chain verifies, and an event
    edited on a late page is found by its seq."""
    ledger = DynamoLedger(table, client=aws, station_id=ST1)
    ledger.chain_page = 5
    for i in range(12):
        ledger.record_attempt(make_record(f"SN-PAGE{i}", station_id=ST1), events=[note(f"SN-PAGE{i}")])
    pages: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        if params.get("KeyConditionExpression", "").endswith("BETWEEN :lo AND :hi"):
            pages.append(params["Limit"])

    aws.meta.events.register("provide-client-params.dynamodb.Query", count)
    try:
        result = ledger.audit()
        assert result.ok and result.head_seq == 24 and result.checked == 24 + 12  # events and records
        assert len(pages) >= 5 and set(pages) == {5}  # 24 events, 5 a page: never the chain in one answer
        DynamoTamperer(aws, table, ST1).edit_event(22, message="nothing to see")
        late = ledger.audit()
        assert not late.ok and (late.first_bad_row.table, late.first_bad_row.key) == ("events", 22)
    finally:
        aws.meta.events.unregister("provide-client-params.dynamodb.Query", count)


def test_show_and_export_across_stations_and_for_one(aws: Any, capsys: Any) -> None:
    """On the shared ledger `station show SN` finds a unit worked on at two stations with each station's events
    and unfinished attempts; `--station` narrows it to one; `station export --station` exports one station's
    records and `station units --station` lists the units last worked on there."""
    from station.cli import EXIT_OK, main

    url = f"dynamodb://cli-show-{uuid.uuid4().hex[:8]}?region={REGION}"
    with open_ledger(url, station_id=ST1) as one:
        one.record_attempt(
            make_record("SN-BOTH", outcome="FAIL", station_id=ST1, attempt_id="a-st1"),
            events=[note("SN-BOTH", message="at st1")],
        )
        one.record_attempt(make_record("SN-ONLY1", station_id=ST1, attempt_id="a-only"))
    with open_ledger(url, station_id=ST2) as two:
        two.record_attempt(
            make_record("SN-BOTH", station_id=ST2, attempt_id="a-st2"),
            events=[note("SN-BOTH", message="at st2")],
        )
        two.journal_open(attempt_id="a-st2-again", serial="SN-BOTH", slot="s2", stage="registering")
    assert main(["show", "SN-BOTH", "--ledger", url, "--json"]) == EXIT_OK
    both = json.loads(capsys.readouterr().out)
    assert [r["attempt_id"] for r in both["records"]] == ["a-st1", "a-st2"]
    messages = [e["message"] for e in both["events"] if e["kind"] == "step_finished"]
    assert sorted(messages) == ["at st1", "at st2"]  # each station's chain, not the `default` one
    assert [j["attempt_id"] for j in both["pending_journal"]] == ["a-st2-again"]
    assert main(["show", "SN-BOTH", "--ledger", url, "--station", ST1, "--json"]) == EXIT_OK
    mine = json.loads(capsys.readouterr().out)
    assert [r["attempt_id"] for r in mine["records"]] == ["a-st1"]
    assert [e["message"] for e in mine["events"] if e["kind"] == "step_finished"] == ["at st1"]
    assert mine["pending_journal"] == []
    assert main(["export", "--format", "json", "--ledger", url, "--station", ST1]) == EXIT_OK
    exported = json.loads(capsys.readouterr().out)
    assert sorted(r["attempt_id"] for r in exported) == ["a-only", "a-st1"]
    # `station units --station`: the units whose last attempt was at that station (SN-BOTH's was at ST2).
    assert main(["units", "--ledger", url, "--station", ST1, "--json"]) == EXIT_OK
    assert [u["serial"] for u in json.loads(capsys.readouterr().out)] == ["SN-ONLY1"]
    assert main(["units", "--ledger", url, "--station", ST2, "--json"]) == EXIT_OK
    assert [u["serial"] for u in json.loads(capsys.readouterr().out)] == ["SN-BOTH"]
