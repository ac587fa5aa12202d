"""The SQLite backend: the shared contract, plus what only SQLite has (WAL, schema version, triggers,
busy waits, several connections and processes on one file, surviving a killed process)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ledger_contract import BackendUnderTest, LedgerContract, make_record, note

from station.journal import Stage
from station.ledger import LedgerMissing, LedgerUnavailable, open_ledger
from station.ledger.anchor import Anchor
from station.ledger.base import RECORD_JSON_FIELDS, SCHEMA_VERSION, canonical_json
from station.ledger.sqlite import SqliteLedger
from station.model import Event

ROOT = Path(__file__).resolve().parents[2]


class SqliteTamperer:
    """Edits the file with a raw connection, after dropping the append-only triggers as an attacker would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for name in (
                "events_append_only_update",
                "events_append_only_delete",
                "records_append_only_update",
                "records_append_only_delete",
            ):
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            for sql, params in statements:
                conn.execute(sql, params)
        finally:
            conn.close()

    @staticmethod
    def _encode(columns: dict[str, Any], json_fields: tuple[str, ...]) -> dict[str, Any]:
        return {k: canonical_json(v) if k in json_fields else v for k, v in columns.items()}

    def edit_event(self, seq: int, **columns: Any) -> None:
        cols = self._encode(columns, ("data",))
        sets = ", ".join(f"{k} = ?" for k in cols)
        self._run((f"UPDATE events SET {sets} WHERE seq = ?", (*cols.values(), seq)))

    def delete_event(self, seq: int) -> None:
        self._run(("DELETE FROM events WHERE seq = ?", (seq,)))

    def swap_events(self, a: int, b: int) -> None:
        self._run(
            ("UPDATE events SET seq = -1 WHERE seq = ?", (a,)),
            ("UPDATE events SET seq = ? WHERE seq = ?", (a, b)),
            ("UPDATE events SET seq = ? WHERE seq = -1", (b,)),
        )

    def edit_record(self, attempt_id: str, **columns: Any) -> None:
        cols = self._encode(columns, RECORD_JSON_FIELDS)
        sets = ", ".join(f"{k} = ?" for k in cols)
        self._run((f"UPDATE records SET {sets} WHERE attempt_id = ?", (*cols.values(), attempt_id)))

    def delete_record(self, attempt_id: str) -> None:
        self._run(("DELETE FROM records WHERE attempt_id = ?", (attempt_id,)))

    def insert_record(self, record: Any) -> None:
        cols = self._encode(record.to_dict(), RECORD_JSON_FIELDS)
        names = ", ".join(cols)
        marks = ", ".join("?" * len(cols))
        self._run((f"INSERT INTO records ({names}) VALUES ({marks})", tuple(cols.values())))

    def edit_unit(self, serial: str, **fields: Any) -> None:
        conn = sqlite3.connect(self.path)
        (body,) = conn.execute("SELECT body FROM units WHERE serial = ?", (serial,)).fetchone()
        conn.close()
        changed = json.dumps({**json.loads(body), **fields})
        self._run(
            (
                "UPDATE units SET body = ?, state = ? WHERE serial = ?",
                (changed, fields.get("state", ""), serial),
            )
        )

    def close_journal(self, journal_id: int) -> None:
        self._run(("UPDATE journal SET closed_at = 1, outcome = 'PASS' WHERE id = ?", (journal_id,)))


class TestSqliteContract(LedgerContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> BackendUnderTest:
        path = tmp_path / "ledger.sqlite"
        return BackendUnderTest(open=lambda: open_ledger(path), tamper=SqliteTamperer(path))


# -------------------------------------------------------------------------------------------------------
# SQLite only
# -------------------------------------------------------------------------------------------------------


def test_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.sqlite"
    with SqliteLedger(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


def test_missing_ledger_is_not_created_when_asked_not_to(tmp_path: Path) -> None:
    path = tmp_path / "nope.sqlite"
    with pytest.raises(LedgerMissing) as caught:
        open_ledger(path, create=False)
    assert str(path) in caught.value.message
    assert not path.exists()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerUnavailable, match="newer"):
        SqliteLedger(path)


@pytest.mark.parametrize("content", ["other-sqlite", "garbage"])
def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.sqlite"
    if content == "garbage":
        path.write_bytes(b"this is not a database at all" * 200)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.commit()
        conn.close()
    with pytest.raises(LedgerUnavailable):
        SqliteLedger(path)


def test_triggers_refuse_updates_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with SqliteLedger(path) as ledger:
        ledger.append_event(note())
        ledger.record_attempt(make_record())
    conn = sqlite3.connect(path)
    try:
        for sql in (
            "UPDATE events SET message = 'x'",
            "DELETE FROM events",
            "UPDATE records SET outcome = 'PASS'",
            "DELETE FROM records",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()


def test_no_key_material_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
    with SqliteLedger(path) as ledger:
        ledger.record_attempt(make_record())
        for attempt in (
            lambda: ledger.record_attempt(make_record(certificate_pem=key)),
            lambda: ledger.append_event(note(message=key)),
            lambda: ledger.journal_open(serial="SN1", thing_name=key),
        ):
            with pytest.raises(ValueError):
                attempt()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("ledger.sqlite"))
    assert b"BEGIN CERTIFICATE" in blob  # the certificate is there …
    assert b"PRIVATE KEY" not in blob  # … the key never is


def test_a_busy_ledger_waits_then_fails_as_a_station_fault(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with SqliteLedger(path, busy_timeout_s=0.05) as impatient, pytest.raises(LedgerUnavailable):
            impatient.append_event(note())
        with SqliteLedger(path, busy_timeout_s=10) as patient:
            done: list[int] = []
            writer = threading.Thread(target=lambda: done.append(patient.append_event(note())))
            writer.start()
            writer.join(timeout=0.3)
            assert writer.is_alive()  # still waiting for the lock, not failed
            holder.execute("COMMIT")
            writer.join(timeout=10)
            assert done == [1]
            assert patient.audit().ok
    finally:
        holder.close()


def test_several_connections_on_one_file_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    handles = [SqliteLedger(path) for _ in range(4)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                handles[n].append_event(note(f"C{n}", i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    result = handles[0].audit()
    assert result.ok and result.head_seq == 200
    for h in handles:
        h.close()


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from station.ledger import open_ledger
    from station.model import Event
    ledger = open_ledger(sys.argv[1])
    mode = sys.argv[2]
    if mode == "append":
        for i in range(int(sys.argv[3])):
            ledger.append_event(Event(kind="note", serial=sys.argv[4], data={"i": i}))
    else:
        ledger.append_event(Event(kind="unit_started", serial="SN-K"))
        jid = ledger.journal_open(serial="SN-K", certificate_id="ab" * 32, stage="registering")
        ledger.journal_update(jid, stage="registered", certificate_created=True)
        print(jid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no atexit, no flush: a station killed mid-unit
    """
)


def _python(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_journal_and_events_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    proc = _python(str(path), "kill")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    with SqliteLedger(path) as ledger:
        (entry,) = ledger.journal_pending()
        assert (entry.id, entry.serial, entry.stage, entry.certificate_created) == (
            int(out),
            "SN-K",
            "registered",
            True,
        )
        assert [e.event.kind for e in ledger.events()] == ["unit_started", "journal", "journal"]
        assert ledger.audit().ok


def test_two_processes_append_to_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()  # create first so the two do not race on the schema
    procs = [_python(str(path), "append", "150", f"P{n}") for n in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with SqliteLedger(path) as ledger:
        result = ledger.audit()
        assert result.ok and result.head_seq == 300
        for n in range(2):
            assert [e.event.data["i"] for e in ledger.events(f"P{n}")] == list(range(150))


def test_in_memory_ledger_works_for_throwaway_use() -> None:
    with SqliteLedger(":memory:") as ledger:
        ledger.append_event(note())
        ledger.record_attempt(make_record())
        assert ledger.audit().ok and len(list(ledger.records())) == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.text(max_size=40), min_size=6, max_size=6),
    duration=st.none() | _finite,
    at=_finite,
    data=st.dictionaries(st.text(max_size=10), _json, max_size=5),
    timings=st.dictionaries(st.text(min_size=1, max_size=10), _finite, max_size=4),
)
def test_any_event_and_record_round_trips_and_audits(
    texts: list[str], duration: float | None, at: float, data: dict[str, Any], timings: dict[str, float]
) -> None:
    blob = json.dumps([texts, data, timings])
    assume("PRIVATE KEY" not in blob.upper())
    kind, serial, step, title, message, operator = texts
    assume(kind != "record" and serial)
    event = Event(
        kind, serial, step=step, title=title, message=message, duration_ms=duration, data=data, at=at
    )
    record = make_record(serial=serial, operator=operator, title=title, timings_ms=timings, extra={"d": data})
    with SqliteLedger(":memory:") as ledger:
        ledger.append_event(event)
        digest = ledger.record_attempt(record)
        (stored,) = ledger.events(serial)[:1]
        assert stored.event == Event(**{**event.__dict__, "data": json.loads(json.dumps(data))})
        (back,) = ledger.find(record.attempt_id)
        assert back == record and back.canonical_hash() == digest
        assert ledger.audit().ok


# -------------------------------------------------------------------------------------------------------
# Anchors, scale and old files (SQLite only: the anchor lives beside the file by default)
# -------------------------------------------------------------------------------------------------------


def _anchored(path: Path, units: int = 5) -> list[Any]:
    records = [make_record(f"SN{i:04d}") for i in range(units)]
    with SqliteLedger(path) as ledger:
        for r in records:
            ledger.record_attempt(r, events=[note(r.serial, 0), note(r.serial, 1)])
    return records  # close() signed a checkpoint at seq 3 * units


def test_close_signs_a_checkpoint_outside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _anchored(path)
    key = Path(f"{path}.anchor-key")
    assert key.stat().st_mode & 0o777 == 0o600
    (line,) = Path(f"{path}.anchors.jsonl").read_text().splitlines()
    checkpoint = json.loads(line)
    assert (checkpoint["seq"], checkpoint["reason"]) == (15, "close")
    assert key.read_text().strip() not in path.read_bytes().decode("latin-1")  # the key is not in the ledger
    with SqliteLedger(path) as reader:
        result = reader.audit()
        assert result.ok and result.anchored_seq == 15 and not result.anchor_note
    assert len(Path(f"{path}.anchors.jsonl").read_text().splitlines()) == 1  # a reader signs nothing


def test_truncated_ledger_is_caught_by_the_anchor(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    records = _anchored(path)
    # Cut the last unit off: its record, its three events, its unit row, and a consistent head.
    tamper = SqliteTamperer(path)
    tamper.delete_record(records[-1].attempt_id)
    tamper._run(
        ("DELETE FROM events WHERE seq > 12", ()),
        ("DELETE FROM units WHERE serial = ?", (records[-1].serial,)),
        ("UPDATE chain_head SET seq = 12, hash = (SELECT hash FROM events WHERE seq = 12)", ()),
    )
    with SqliteLedger(path) as ledger:
        result = ledger.audit()
    assert not result.ok and result.first_bad_row.key == 15
    assert "truncated" in result.reason and "event 15" in result.reason


def test_rechained_ledger_is_caught_by_the_anchor(tmp_path: Path) -> None:
    from station.ledger.base import chain_hash

    path = tmp_path / "ledger.sqlite"
    _anchored(path)
    # Edit event 4 and recompute every later hash and the head: the plain chain is consistent again.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET message = 'edited' WHERE seq = 4")
    prev = conn.execute("SELECT hash FROM events WHERE seq = 3").fetchone()[0]
    names = (
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
    for row in conn.execute(
        f"SELECT seq, {', '.join(names)} FROM events WHERE seq >= 4 ORDER BY seq"
    ).fetchall():
        fields = dict(zip(names, row[1:], strict=True))
        fields["data"] = json.loads(fields["data"])
        digest = chain_hash(row[0], prev, fields)
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row[0]))
        prev = digest
    conn.execute("UPDATE chain_head SET hash = ?", (prev,))
    conn.close()
    os.environ.pop("STATION_ANCHOR_KEY", None)
    with SqliteLedger(path, anchor=None) as blind:
        assert blind.audit().ok  # without the anchor, a re-chained ledger passes: what the anchor is for
    with SqliteLedger(path) as ledger:
        result = ledger.audit()
    assert not result.ok and "re-chained" in result.reason and result.first_bad_row.key == 15


def test_a_forged_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _anchored(path)
    log = Path(f"{path}.anchors.jsonl")
    forged = json.loads(log.read_text())
    forged["seq"] = 3
    log.write_text(json.dumps(forged) + "\n")
    with SqliteLedger(path) as ledger:
        result = ledger.audit()
    assert not result.ok and "not signed" in result.reason


def test_incremental_audit_checks_only_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    records = _anchored(path)
    with SqliteLedger(path) as ledger:
        ledger.record_attempt(make_record("SN0100"), events=[note("SN0100", 0)])
        ledger.record_attempt(make_record("SN0000", "FAIL"))  # a unit from before the checkpoint
        full, since = ledger.audit(), ledger.audit(since_checkpoint=True)
        assert full.ok and since.ok
        assert (since.since_seq, since.head_seq, since.units_checked) == (15, 18, 2)
        assert full.units_checked == 6
    # close() signed a checkpoint at 18; more work follows, then someone edits a unit nobody touched since.
    with SqliteLedger(path, anchor=Anchor(f"{path}.anchor-key", f"{path}.anchors.jsonl")) as ledger:
        ledger.record_attempt(make_record("SN0200"))
        assert ledger.audit(since_checkpoint=True).ok
        SqliteTamperer(path).edit_record(
            records[1].attempt_id, outcome="ERROR"
        )  # before the checkpoint: trusted
        assert ledger.audit(since_checkpoint=True).ok
        SqliteTamperer(path).edit_unit("SN0002", state="revoked")  # not replayed, but the digest moves
        result = ledger.audit(since_checkpoint=True)
        assert not result.ok and "digest" in result.reason
        full = ledger.audit()
        assert not full.ok and full.first_bad_row.table == "records"  # the full audit names the edited record


def test_an_old_ledger_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerUnavailable, match="older") as caught:
        SqliteLedger(path)
    assert "new ledger file" in caught.value.next_action


def test_lookups_and_pages_use_indexes(tmp_path: Path) -> None:
    """The plans, not the clock: a lookup or a page never scans the units or records table."""
    with SqliteLedger(tmp_path / "ledger.sqlite") as ledger:
        ledger.record_attempt(make_record())
        conn = ledger._conn
        sql = "SELECT body FROM units WHERE state = ? AND (last_at, seq) < (?, ?) ORDER BY last_at DESC, seq DESC LIMIT 51"
        plans = [
            conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("failed", 1.0, 1)).fetchall(),
            conn.execute(
                "EXPLAIN QUERY PLAN SELECT body FROM units ORDER BY last_at DESC, seq DESC LIMIT 51"
            ).fetchall(),
        ]
        ids, params = ledger._matching_ids("3f2a9c1e")
        plans.append(
            conn.execute(f"EXPLAIN QUERY PLAN SELECT * FROM records WHERE id IN ({ids})", params).fetchall()
        )
        for plan in plans:
            for detail in (str(row[-1]) for row in plan):
                assert not detail.startswith("SCAN") or "INDEX" in detail, detail  # a table scan
                assert "FOR ORDER BY" not in detail, detail  # a sort of everything that matched


def test_a_checkpoint_that_cannot_be_written_does_not_fail_the_unit(tmp_path: Path, caplog: Any) -> None:
    unwritable = tmp_path / "log-is-a-folder"
    unwritable.mkdir()
    with SqliteLedger(tmp_path / "ledger.sqlite", anchor=Anchor(tmp_path / "key", unwritable)) as ledger:
        ledger.checkpoint_every = 1
        ledger.record_attempt(make_record())
        assert ledger.unit("SN0001") is not None
    assert "checkpoint not signed" in caplog.text


def test_a_journal_row_of_an_older_station_is_read_and_kept(tmp_path: Path) -> None:
    """Older stations stored notes in the row's `extra` JSON under any name; the typed entry reads its own
    fields from there, keeps the keys it does not know (read-only) and never loses them on an update."""
    path = tmp_path / "ledger.sqlite"
    with SqliteLedger(path) as ledger:
        jid = ledger.journal_open(serial="SN-OLD", stage=Stage.CLEANUP_PENDING, account_id="123456789012")
    # As an older station wrote it: its notes (one this version has no field for) in `extra`.
    old_extra = {"station_id": "st-1", "purpose": "replace_revoke", "retries": 2}
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE journal SET extra = ? WHERE id = ?", (json.dumps(old_extra), jid))
    with SqliteLedger(path) as ledger:
        (entry,) = ledger.journal_pending()
        assert (entry.serial, entry.stage, entry.account_id) == (
            "SN-OLD",
            Stage.CLEANUP_PENDING,
            "123456789012",
        )
        assert (entry.station_id, entry.purpose, entry.unknown) == ("st-1", "replace_revoke", {"retries": 2})
        ledger.journal_update(jid, thing_answer="lost")
        assert ledger.audit().ok
    with sqlite3.connect(path) as conn:
        (stored,) = conn.execute("SELECT extra FROM journal WHERE id = ?", (jid,)).fetchone()
    assert json.loads(stored) == {**old_extra, "thing_answer": "lost"}
