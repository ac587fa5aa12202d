"""The contract every ledger backend passes (fsspec-style: a backend's test class only supplies fixtures).

A backend's test module subclasses `LedgerContract` and provides a `backend` fixture returning a
`BackendUnderTest`: a way to open (and re-open) the same ledger, and a `Tamperer` that edits the stored rows
behind the ledger's back the way a person with access to the storage could.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pytest

from station.journal import Stage
from station.ledger import AttemptRecord, Ledger
from station.ledger.base import CSV_COLUMNS, GENESIS_HASH
from station.model import Event
from station.units import UnitStateName, iso_utc, replay

CERT_ID = "3f2a9c1e" + "0" * 48 + "deadbeef"
KEY_PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n"
CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"


class Tamperer(Protocol):
    """Raw edits to a backend's storage, bypassing the ledger (what an attacker or a stray tool could do)."""

    def edit_event(self, seq: int, **columns: Any) -> None: ...
    def delete_event(self, seq: int) -> None: ...
    def swap_events(self, a: int, b: int) -> None: ...
    def edit_record(self, attempt_id: str, **columns: Any) -> None: ...
    def delete_record(self, attempt_id: str) -> None: ...
    def insert_record(self, record: AttemptRecord) -> None: ...
    def edit_unit(self, serial: str, **fields: Any) -> None: ...  # fields of the stored UnitState
    def close_journal(self, journal_id: int) -> None: ...  # mark closed by hand, as a person could


@dataclass
class BackendUnderTest:
    open: Callable[[], Ledger]  # a new handle on the same stored ledger each call
    tamper: Tamperer


def make_record(serial: str = "SN0001", outcome: str = "PASS", **overrides: Any) -> AttemptRecord:
    fields: dict[str, Any] = {
        "attempt_id": str(uuid.uuid4()),
        "serial": serial,
        "outcome": outcome,
        "device_id": f"dev-{serial}",
        "product": "prov1",
        "thing_name": f"prov1-{serial}",
        "certificate_id": CERT_ID,
        "certificate_pem": CERT_PEM,
        "certificate_arn": f"arn:aws:iot:eu-west-1:123456789012:cert/{CERT_ID}",
        "target": "lab-eu",
        "account_id": "123456789012",
        "region": "eu-west-1",
        "station_id": "line1-st3",
        "slot": "s1",
        "operator": "ana",
        "title": "Passed" if outcome == "PASS" else "Verify failed",
        "message": "ok" if outcome == "PASS" else "certificate not accepted by 123456789012/eu-west-1",
        "next_action": "" if outcome == "PASS" else "Put the unit in the rework bin.",
        "timings_ms": {"identify": 12.5, "register": 340.25, "verify": 800.0},
        "started_at": 1_700_000_000.25,
        "finished_at": 1_700_000_002.5,
        "compensations": [] if outcome == "PASS" else [{"action": "rollback", "ok": True, "detail": "ok"}],
    }
    fields.update(overrides)
    return AttemptRecord(**fields)


def note(serial: str = "SN0001", i: int = 0, **overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "kind": "step_finished",
        "serial": serial,
        "slot": "s1",
        "step": "register",
        "outcome": "ok",
        "duration_ms": 12.25 + i,
        "message": f"event {i}",
        "data": {"i": i, "nested": {"list": [1, 2.5, "x", None, True]}},
        "at": 1_700_000_000.0 + i / 8,
    }
    fields.update(overrides)
    return Event(**fields)


class LedgerContract:
    """Behaviour every backend shares. Subclasses provide the `backend` fixture."""

    # How hard the concurrency test pushes; a backend whose test double is slow may lower these.
    CONCURRENT_THREADS = 8
    CONCURRENT_PER_THREAD = 50

    @pytest.fixture
    def ledger(self, backend: BackendUnderTest) -> Any:
        ledger = backend.open()
        yield ledger
        ledger.close()

    # ------------------------------------------------------------------------------------------- chain
    def test_events_round_trip_in_order(self, ledger: Ledger) -> None:
        sent = [note(i=i) for i in range(5)] + [note("SN0002", i=9, duration_ms=None, data={})]
        seqs = [ledger.append_event(e) for e in sent]
        assert seqs == [1, 2, 3, 4, 5, 6]
        stored = ledger.events()
        assert [s.event for s in stored] == sent
        assert [s.seq for s in stored] == seqs
        assert stored[0].prev_hash == GENESIS_HASH
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
        assert [s.event for s in ledger.events("SN0002")] == sent[5:]
        assert [s.seq for s in ledger.events(after_seq=4)] == [5, 6]

    def test_event_data_is_stored_as_plain_json(self, ledger: Ledger) -> None:
        ledger.append_event(note(data={"tuple": (1, 2), "obj": object.__name__}))
        assert ledger.events()[0].event.data == {"tuple": [1, 2], "obj": "object"}
        assert ledger.audit().ok

    def test_empty_ledger_audits_clean(self, ledger: Ledger) -> None:
        result = ledger.audit()
        assert (result.ok, result.checked, result.head_seq, result.head_hash) == (True, 0, 0, GENESIS_HASH)

    def test_audit_counts_events_and_records_and_reports_head(self, ledger: Ledger) -> None:
        for i in range(3):
            ledger.append_event(note(i=i))
        ledger.record_attempt(make_record())
        result = ledger.audit()
        # 3 events + 1 record event + 1 record row
        assert (result.ok, result.checked, result.head_seq) == (True, 5, 4)
        assert result.head_hash == ledger.events()[-1].hash

    def test_reserved_kind_is_refused(self, ledger: Ledger) -> None:
        with pytest.raises(ValueError, match="reserved"):
            ledger.append_event(note(kind="record"))
        assert ledger.events() == []

    # ----------------------------------------------------------------------------------------- records
    def test_record_round_trip_and_lookup(self, ledger: Ledger) -> None:
        record = make_record()
        other = make_record("SN0002", certificate_id="ab" * 32, thing_name="prov1-SN0002")
        digest = ledger.record_attempt(record)
        ledger.record_attempt(other)
        assert digest == record.canonical_hash()
        for query in (
            "SN0001",
            "prov1-SN0001",
            record.attempt_id,
            CERT_ID,
            CERT_ID[:8],
            CERT_ID[:8].upper(),
            f"  {CERT_ID[:20]} ",
        ):
            assert ledger.find(query) == [record], query
        assert ledger.find(CERT_ID[:7]) == []  # too short to be a certificate id prefix
        assert ledger.find("SN000") == []  # serials match exactly
        assert ledger.find("") == []
        assert ledger.find("abababab") == [other]
        # Records come back exactly as written: every field, the PEM and the hash.
        assert ledger.find("SN0001")[0].certificate_pem == CERT_PEM
        assert ledger.find("SN0001")[0].canonical_hash() == digest

    def test_record_from_pipeline_fields(self, ledger: Ledger) -> None:
        # The pipeline hands over plain fields (each under its one name, plus extra keys it may add later).
        fields = make_record().to_dict()
        fields["verify_attempts"] = 2
        ledger.record_attempt(fields)
        (stored,) = ledger.find("SN0001")
        assert stored.account_id == "123456789012"
        assert stored.extra == {"verify_attempts": 2}
        assert ledger.audit().ok

    def test_a_record_field_has_one_name(self, ledger: Ledger) -> None:
        fields = make_record().to_dict()
        fields["account"] = fields.pop("account_id")
        with pytest.raises(TypeError, match="'account' \\(the field is 'account_id'\\)"):
            ledger.record_attempt(fields)
        assert ledger.find("SN0001") == [] and ledger.audit().ok

    def test_an_attempt_is_recorded_once(self, ledger: Ledger) -> None:
        record = make_record()
        ledger.record_attempt(record)
        before = ledger.audit()
        with pytest.raises(ValueError, match="already recorded"):
            ledger.record_attempt(replace(record, outcome="FAIL"))
        after = ledger.audit()
        assert after.ok and after.head_seq == before.head_seq
        assert [r.outcome for r in ledger.find("SN0001")] == ["PASS"]

    def test_units_show_latest_attempt_per_serial(self, ledger: Ledger) -> None:
        ledger.record_attempt(make_record("SN0001", "FAIL"))
        ledger.record_attempt(make_record("SN0001", "PASS"))
        ledger.record_attempt(make_record("SN0002", "ERROR"))
        ledger.record_attempt(make_record("SN0003", "PASS"))
        ledger.record_attempt(make_record("SN0003", "FAIL"))
        units = {u.serial: (u.outcome, u.attempts) for u in ledger.units()}
        assert units == {"SN0001": ("PASS", 2), "SN0002": ("ERROR", 1), "SN0003": ("FAIL", 2)}
        assert [u.serial for u in ledger.units("FAIL")] == ["SN0003"]
        assert [u.serial for u in ledger.units("PASS")] == ["SN0001"]
        assert next(ledger.units("ERROR")).latest.serial == "SN0002"
        assert len(list(ledger.units(limit=2))) == 2

    def test_export_csv_one_row_per_attempt_with_stable_columns(self, ledger: Ledger) -> None:
        records = [make_record("SN0001", "FAIL"), make_record("SN0002"), make_record('SN,"3"\n')]
        for r in records:
            ledger.record_attempt(r)
        out = io.StringIO()
        assert ledger.export("csv", out) == 3
        rows = list(csv.reader(io.StringIO(out.getvalue())))
        assert tuple(rows[0]) == CSV_COLUMNS
        body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
        assert [b["attempt_id"] for b in body] == [r.attempt_id for r in records]
        assert [b["serial"] for b in body] == [r.serial for r in records]
        assert tuple(rows[0][-2:]) == ("state", "state_changed_at")  # new columns only at the end
        assert [b["state"] for b in body] == ["failed", "provisioned", "provisioned"]
        assert {b["finished_at"] for b in body} == {"2023-11-14T22:13:22Z"}  # ISO-8601 UTC, not epoch
        assert body[1]["state_changed_at"] == "2023-11-14T22:13:22Z"
        assert json.loads(body[0]["timings_ms"]) == records[0].timings_ms
        assert json.loads(body[0]["compensations"]) == records[0].compensations
        assert body[1]["certificate_pem"] == CERT_PEM
        assert "PRIVATE KEY" not in out.getvalue()

    def test_export_json_is_the_list_of_records(self, ledger: Ledger, tmp_path: Any) -> None:
        records = [make_record("SN0001"), make_record("SN0002", "ERROR", device_id=None)]
        for r in records:
            ledger.record_attempt(r)
        path = tmp_path / "out.json"
        assert ledger.export("json", path) == 2
        exported = json.loads(path.read_text())
        expected = []
        for r in records:
            row = r.to_dict() | {"state": "provisioned" if r.outcome == "PASS" else "failed"}
            row |= {"started_at": iso_utc(r.started_at), "finished_at": iso_utc(r.finished_at)}
            expected.append(row | {"state_changed_at": iso_utc(r.finished_at)})
        assert exported == expected
        empty = io.StringIO()
        with pytest.raises(ValueError):
            ledger.export("xml", empty)

    # ---------------------------------------------------------------------------------- key material
    @pytest.mark.parametrize(
        "overrides",
        [
            {"certificate_pem": CERT_PEM + KEY_PEM},
            {"message": "oops " + KEY_PEM},
            {"extra": {"debug": {"key": KEY_PEM}}},
            {"compensations": [KEY_PEM]},
        ],
        ids=["pem", "message", "extra", "compensation"],
    )
    def test_records_with_key_material_are_refused(self, ledger: Ledger, overrides: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match="private key") as caught:
            ledger.record_attempt({**make_record().to_dict(), **overrides})
        assert "MHcCAQEEIB" not in str(caught.value)  # the error never repeats the key
        assert ledger.find("SN0001") == []
        assert ledger.audit().head_seq == 0

    def test_events_with_key_material_are_refused(self, ledger: Ledger) -> None:
        for event in (note(message=KEY_PEM), note(data={"k": KEY_PEM.lower()}), note(title="private key")):
            with pytest.raises(ValueError, match="private key"):
                ledger.append_event(event)
        assert ledger.events() == []

    def test_journal_with_key_material_is_refused(self, ledger: Ledger) -> None:
        with pytest.raises(ValueError, match="private key"):
            ledger.journal_open(serial="SN0001", certificate_pem=KEY_PEM)
        jid = ledger.journal_open(serial="SN0001", certificate_pem=CERT_PEM)
        with pytest.raises(ValueError, match="private key"):
            ledger.journal_update(jid, certificate_arn=KEY_PEM)
        assert [j.certificate_pem for j in ledger.journal_pending()] == [CERT_PEM]

    def test_invalid_records_are_refused(self, ledger: Ledger) -> None:
        with pytest.raises(ValueError, match="outcome"):
            ledger.record_attempt(make_record().to_dict() | {"outcome": "MAYBE"})
        with pytest.raises(ValueError):
            ledger.record_attempt(make_record().to_dict() | {"serial": ""})
        with pytest.raises(ValueError):
            ledger.record_attempt(make_record().to_dict() | {"timings_ms": {"x": float("nan")}})
        assert ledger.audit().head_seq == 0

    # ---------------------------------------------------------------------------------------- tamper
    def _fill(self, ledger: Ledger) -> list[AttemptRecord]:
        records = []
        for i in range(3):
            ledger.append_event(note(f"SN000{i}", i))
            record = make_record(f"SN000{i}", "PASS" if i % 2 == 0 else "FAIL")
            ledger.record_attempt(record)
            records.append(record)
        ledger.append_event(note("SN0009", 9))
        assert ledger.audit().ok
        return records  # events: 1 note, 2 record, 3 note, 4 record, 5 note, 6 record, 7 note

    def _audit(self, backend: BackendUnderTest) -> Any:
        with backend.open() as fresh:
            return fresh.audit()

    def test_edited_event_is_named(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        backend.tamper.edit_event(3, message="nothing to see")
        result = self._audit(backend)
        assert not result.ok
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("events", 3)
        assert "edited" in result.reason
        assert result.checked == 3  # events 1 and 2, and the record event 2 seals

    def test_edited_numbers_and_data_are_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        backend.tamper.edit_event(5, duration_ms=1.0)
        assert self._audit(backend).first_bad_row.key == 5
        backend.tamper.edit_event(3, data={"i": 1})
        assert self._audit(backend).first_bad_row.key == 3  # the first bad row, not the last edited

    def test_deleted_event_is_a_gap(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        backend.tamper.delete_event(3)
        result = self._audit(backend)
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("events", 3)
        assert "missing" in result.reason

    def test_deleted_last_event_is_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        backend.tamper.delete_event(7)
        result = self._audit(backend)
        assert not result.ok and result.first_bad_row.key == 7
        assert "missing" in result.reason

    def test_reordered_events_are_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        backend.tamper.swap_events(2, 5)
        result = self._audit(backend)
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("events", 2)
        assert "link" in result.reason

    def test_edited_record_is_named(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        records = self._fill(ledger)
        backend.tamper.edit_record(records[1].attempt_id, outcome="PASS")  # a FAIL turned into a PASS
        result = self._audit(backend)
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("records", records[1].attempt_id)
        assert "edited" in result.reason

    def test_edited_record_timing_is_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        records = self._fill(ledger)
        backend.tamper.edit_record(records[2].attempt_id, timings_ms={"verify": 1.0})
        assert self._audit(backend).first_bad_row.key == records[2].attempt_id

    def test_deleted_record_is_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        records = self._fill(ledger)
        backend.tamper.delete_record(records[0].attempt_id)
        result = self._audit(backend)
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("records", records[0].attempt_id)
        assert "missing" in result.reason

    def test_inserted_record_is_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        forged = make_record("SN0777")
        backend.tamper.insert_record(forged)
        result = self._audit(backend)
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("records", forged.attempt_id)
        assert "not in the chain" in result.reason

    def test_appends_after_tampering_do_not_hide_it(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)
        backend.tamper.delete_event(7)
        with backend.open() as writer:
            writer.append_event(note(i=20))
            writer.record_attempt(make_record("SN0100"))
        assert self._audit(backend).first_bad_row.key == 7

    # ---------------------------------------------------------------------------------- durability
    def test_reopened_ledger_continues_the_chain(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        ledger.append_event(note(i=1))
        ledger.record_attempt(make_record())
        ledger.close()
        with backend.open() as again:
            assert again.append_event(note(i=2)) == 3
            assert again.audit().ok and again.audit().head_seq == 3
            assert len(again.find("SN0001")) == 1

    def test_concurrent_writers_lose_nothing_and_keep_the_chain(self, ledger: Ledger) -> None:
        threads_n, per_thread = self.CONCURRENT_THREADS, self.CONCURRENT_PER_THREAD
        records_per_thread = len(range(0, per_thread, 10))
        errors: list[BaseException] = []
        start = threading.Barrier(threads_n)

        def worker(t: int) -> None:
            try:
                start.wait(timeout=10)
                for i in range(per_thread):
                    ledger.append_event(note(f"SLOT{t}", i))
                    if i % 10 == 0:
                        ledger.record_attempt(make_record(f"SLOT{t}"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        events = ledger.events()
        total = threads_n * (per_thread + records_per_thread)
        assert [e.seq for e in events] == list(range(1, total + 1))
        for t in range(threads_n):
            mine = [
                e.event.data["i"] for e in events if e.event.serial == f"SLOT{t}" and e.event.kind != "record"
            ]
            assert mine == list(range(per_thread))  # every event, in the order its thread wrote them
        assert {u.serial: u.attempts for u in ledger.units()} == {
            f"SLOT{t}": records_per_thread for t in range(threads_n)
        }
        result = ledger.audit()
        assert result.ok and result.checked == total + threads_n * records_per_thread

    # --------------------------------------------------------------------------------------- journal
    def test_journal_lifecycle(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        first = ledger.journal_open(
            attempt_id="a1",
            serial="SN0001",
            target="lab-eu",
            account_id="123456789012",
            region="eu-west-1",
            certificate_id=CERT_ID,
            certificate_pem=CERT_PEM,
            thing_name="prov1-SN0001",
            stage="registering",
            slot="s1",
        )
        second = ledger.journal_open(attempt_id="a2", serial="SN0002", stage="registering")
        assert first != second
        ledger.journal_update(first, stage="registered", certificate_created=True, certificate_arn="arn:x")
        ledger.journal_update(first, stage="thing", thing_created=True, thing_answer="lost")
        ledger.journal_update(first, station_id="st-1", purpose="replace_revoke")
        pending = ledger.journal_pending()
        assert [p.id for p in pending] == [first, second]  # oldest first
        entry = pending[0]
        assert (entry.attempt_id, entry.serial, entry.target, entry.account_id, entry.region) == (
            "a1",
            "SN0001",
            "lab-eu",
            "123456789012",
            "eu-west-1",
        )
        assert (entry.stage, entry.thing_created, entry.certificate_created) == (Stage.THING, True, True)
        assert (entry.certificate_id, entry.certificate_pem, entry.certificate_arn) == (
            CERT_ID,
            CERT_PEM,
            "arn:x",
        )
        assert (entry.thing_answer, entry.station_id, entry.purpose) == ("lost", "st-1", "replace_revoke")
        assert entry.unknown == {}
        assert entry.opened_at <= entry.updated_at and entry.closed_at is None
        assert pending[1].certificate_created is None and pending[1].thing_created is False

        ledger.journal_close(first, "PASS")
        assert [p.id for p in ledger.journal_pending()] == [second]
        ledger.journal_close(first)  # closing twice is harmless
        with pytest.raises(KeyError):
            ledger.journal_update(first, stage="verified")  # a closed entry is no longer in flight
        with pytest.raises(KeyError):
            ledger.journal_update(99999, stage="verified")
        with pytest.raises(KeyError):
            ledger.journal_close(99999)
        ledger.close()
        with backend.open() as again:  # pending entries survive a restart
            assert [(p.id, p.serial, p.stage) for p in again.journal_pending()] == [
                (second, "SN0002", "registering")
            ]
            third = again.journal_open(serial="SN0003")
            assert third not in (first, second)

    def test_journal_refuses_unknown_fields_and_stages(self, ledger: Ledger) -> None:
        with pytest.raises(TypeError, match="'state' \\(the field is 'stage'\\)"):
            ledger.journal_open(serial="SN0001", state="registering")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'retries'"):
            ledger.journal_open(serial="SN0001", retries=2)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="unknown journal stage 'registred'"):
            ledger.journal_open(serial="SN0001", stage="registred")  # type: ignore[arg-type]
        assert ledger.journal_pending() == [] and ledger.events("SN0001") == []  # nothing was written
        jid = ledger.journal_open(serial="SN0001", stage=Stage.REGISTERING)
        with pytest.raises(TypeError, match="'account' \\(the field is 'account_id'\\)"):
            ledger.journal_update(jid, account="123456789012")  # type: ignore[call-arg]
        (entry,) = ledger.journal_pending()
        assert (entry.id, entry.stage, entry.account_id) == (jid, Stage.REGISTERING, "")
        assert ledger.audit().ok

    def test_every_stage_round_trips(self, ledger: Ledger) -> None:
        ids = {stage: ledger.journal_open(serial=f"SN{i:04d}", stage=stage) for i, stage in enumerate(Stage)}
        read = {e.id: e.stage for e in ledger.journal_pending()}
        assert read == {jid: stage for stage, jid in ids.items()}
        assert all(type(stage) is Stage for stage in read.values())
        assert ledger.audit().ok

    def test_journal_writes_are_chained_without_the_pem(self, ledger: Ledger) -> None:
        jid = ledger.journal_open(serial="SN0001", stage="registering", certificate_pem=CERT_PEM)
        ledger.journal_update(jid, stage="registered", certificate_id=CERT_ID, certificate_created=True)
        ledger.journal_close(jid, "PASS")
        ledger.journal_close(jid)  # a second close changes nothing, so it chains nothing
        chained = ledger.events("SN0001")
        assert [(e.event.kind, e.event.step) for e in chained] == [
            ("journal", "open"),
            ("journal", "update"),
            ("journal", "close"),
        ]
        last = chained[-1].event.data
        assert (last["journal_id"], last["stage"], last["certificate_id"], last["closed"]) == (
            jid,
            "registered",
            CERT_ID,
            True,
        )
        assert "BEGIN CERTIFICATE" not in json.dumps([e.to_dict() for e in chained])
        result = ledger.audit()
        assert result.ok and result.journal_checked == 1
        with pytest.raises(ValueError, match="reserved"):
            ledger.append_event(note(kind="journal"))

    def test_journal_closed_by_hand_is_caught(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        done = ledger.journal_open(serial="SN0001", stage="registering")
        ledger.journal_close(done, "PASS")
        jid = ledger.journal_open(serial="SN0002", stage="registering", certificate_id=CERT_ID)
        ledger.journal_update(jid, stage="registered", certificate_created=True)
        assert ledger.audit().ok
        backend.tamper.close_journal(jid)  # someone hides the orphan from reconcile
        result = self._audit(backend)
        assert not result.ok
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("journal", jid)
        assert "closed outside the station" in result.reason

    # ------------------------------------------------------------------------------------------ units
    def test_record_with_events_is_one_chained_write(self, ledger: Ledger) -> None:
        ledger.append_event(note("SN0000", 0))
        record = make_record()
        digest = ledger.record_attempt(record, events=[note(i=i) for i in range(6)])
        assert digest == record.canonical_hash()
        stored = ledger.events("SN0001")
        assert [e.seq for e in stored] == list(range(2, 9))
        assert [e.event.kind for e in stored] == ["step_finished"] * 6 + ["record"]  # the seal comes last
        assert [e.event.data["i"] for e in stored[:6]] == list(range(6))
        result = ledger.audit()
        assert result.ok and result.head_seq == 8 and result.units_checked == 1

    def test_a_refused_event_writes_nothing(self, ledger: Ledger) -> None:
        with pytest.raises(ValueError, match="private key"):
            ledger.record_attempt(make_record(), events=[note(i=0), note(i=1, message=KEY_PEM)])
        with pytest.raises(ValueError, match="reserved"):
            ledger.record_attempt(make_record(), events=[note(kind="record")])
        assert ledger.events() == [] and ledger.unit("SN0001") is None and ledger.find("SN0001") == []

    def test_unit_state_follows_the_records(self, ledger: Ledger) -> None:
        assert ledger.unit("SN0001") is None
        first = make_record("SN0001", "FAIL", finished_at=1_700_000_010.0)
        ledger.record_attempt(first)
        assert ledger.unit("SN0001").state == UnitStateName.FAILED
        passed = make_record("SN0001", "PASS", finished_at=1_700_000_020.0)
        ledger.record_attempt(passed)
        unit = ledger.unit("SN0001")
        assert (unit.state, unit.attempts, unit.last_attempt_id) == ("provisioned", 2, passed.attempt_id)
        assert [(i.target, i.certificate_id, i.verified) for i in unit.live] == [("lab-eu", CERT_ID, True)]
        revoke = make_record(
            "SN0001",
            "DONE",
            action="revoke",
            operator="qa",
            finished_at=1_700_000_030.0,
            extra={"revoked": [CERT_ID]},
        )
        ledger.record_attempt(revoke)
        unit = ledger.unit("SN0001")
        assert (unit.state, unit.live, unit.changed_by, unit.state_changed_at) == (
            "revoked",
            (),
            "qa",
            1_700_000_030.0,
        )
        assert unit == replay([first, passed, revoke])["SN0001"]
        assert ledger.unit("sn0001") is None  # `unit` is exact; `find_units` is the forgiving lookup
        assert ledger.audit().ok

    def test_unit_page_newest_first_with_filters_and_cursor(self, ledger: Ledger) -> None:
        for i in range(7):
            outcome = "FAIL" if i % 3 == 0 else "PASS"
            ledger.record_attempt(
                make_record(f"SN{i:04d}", outcome, finished_at=1_700_000_000.0 + i, station_id=f"st{i % 2}")
            )
        ledger.record_attempt(make_record("SN0100", "PASS", finished_at=1_700_000_003.0, target="prod-us"))
        page = ledger.unit_page(limit=3)
        assert [u.serial for u in page.units] == ["SN0006", "SN0005", "SN0004"]
        seen = [u.serial for u in page.units]
        while page.next_cursor:
            page = ledger.unit_page(limit=3, after=page.next_cursor)
            seen += [u.serial for u in page.units]
        # equal times keep a stable order (the later write first) and nobody is skipped or repeated
        assert seen == ["SN0006", "SN0005", "SN0004", "SN0100", "SN0003", "SN0002", "SN0001", "SN0000"]
        assert [u.serial for u in ledger.unit_page(state="failed").units] == ["SN0006", "SN0003", "SN0000"]
        assert [u.serial for u in ledger.unit_page(outcome="FAIL", limit=2).units] == ["SN0006", "SN0003"]
        assert [u.serial for u in ledger.unit_page(target="prod-us").units] == ["SN0100"]
        assert [u.serial for u in ledger.unit_page(station="st1", state="provisioned").units] == [
            "SN0005",
            "SN0001",
        ]
        window = ledger.unit_page(since=1_700_000_002.0, until=1_700_000_004.0)
        assert [u.serial for u in window.units] == [
            "SN0100",
            "SN0003",
            "SN0002",
        ] and window.next_cursor is None
        assert ledger.unit_page(state="revoked").units == []

    def test_find_units_by_serial_thing_or_certificate(self, ledger: Ledger) -> None:
        other_cert = "ab" * 32
        ledger.record_attempt(make_record("SN0001"))
        ledger.record_attempt(make_record("SN0002", certificate_id=other_cert, thing_name="prov1-SN0002"))
        for query in ("SN0001", "sn0001", " Sn0001 ", "prov1-SN0001", CERT_ID, CERT_ID[:8].upper()):
            assert [u.serial for u in ledger.find_units(query)] == ["SN0001"], query
        assert [u.serial for u in ledger.find_units("abababab")] == ["SN0002"]
        assert ledger.find_units(CERT_ID[:7]) == [] and ledger.find_units("SN000") == []
        assert ledger.find_units("") == []

    def test_edited_unit_state_is_named(self, backend: BackendUnderTest, ledger: Ledger) -> None:
        self._fill(ledger)  # SN0000 PASS, SN0001 FAIL, SN0002 PASS
        backend.tamper.edit_unit("SN0001", state="provisioned")  # a failed unit shown as good
        result = self._audit(backend)
        assert not result.ok
        assert (result.first_bad_row.table, result.first_bad_row.key) == ("units", "SN0001")
        assert "replay" in result.reason

    def test_audit_reports_progress(self, ledger: Ledger) -> None:
        self._fill(ledger)
        calls: list[tuple[int, int]] = []
        assert ledger.audit(progress=lambda done, total: calls.append((done, total))).ok
        assert calls and calls[-1][0] == calls[-1][1] >= 7  # the chain's 7 rows (and the units replayed)
        assert all(done <= total for done, total in calls)
