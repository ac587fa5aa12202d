"""The default ledger backend: one SQLite file in WAL mode.

Concurrency: one connection per `SqliteLedger`, shared by every slot thread behind a lock; every write is its
own `BEGIN IMMEDIATE` transaction that reads the chain head *inside* the transaction, so several processes on
the same file (the line and a QA command, say) also chain correctly; `busy_timeout` makes them wait for each
other instead of failing. `audit()` reads through a second connection in one read transaction (a snapshot),
so it never blocks the line and never sees half of an append.

Durability (WAL): every call commits before it returns, and a commit is atomic.
- Events and records commit with `synchronous=NORMAL`: they survive the station process being killed at any
  point; after a power cut or OS crash the last few commits may be lost (never half-written, never corrupt).
- Journal calls commit with `synchronous=FULL`: the WAL is fsynced before the call returns, so the entry
  survives a power cut too — it is written before an AWS side effect, and reconcile depends on it. Because the
  WAL is sequential, that fsync also makes every earlier record and event durable.

Tamper evidence is the hash chain (see `base`); triggers additionally refuse UPDATE and DELETE on the event
and record tables, which stops accidents (a stray tool, a wrong script), not a person who drops them.

This module must not talk to AWS, must not hold or write key material, and must not hand out its connection.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from station.ledger.base import (
    EVENT_FIELDS,
    GENESIS_HASH,
    JOURNAL_FIELDS,
    RECORD_FIELDS,
    RECORD_JSON_FIELDS,
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
    is_cert_prefix,
    journal_columns,
)
from station.model import Event

T = TypeVar("T")

_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    serial TEXT NOT NULL,
    slot TEXT NOT NULL,
    step TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms REAL,
    title TEXT NOT NULL,
    message TEXT NOT NULL,
    next_action TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL
);
CREATE INDEX events_serial ON events (serial, seq);
CREATE TABLE chain_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    {", ".join(f"{name} {'TEXT NOT NULL UNIQUE' if name == 'attempt_id' else 'REAL' if name.endswith('_at') else 'TEXT'}" for name in RECORD_FIELDS)}
);
CREATE INDEX records_serial ON records (serial);
CREATE INDEX records_thing ON records (thing_name);
CREATE INDEX records_certificate ON records (certificate_id);
CREATE TABLE journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{name} {'INTEGER' if name.endswith('_created') else 'TEXT'}" for name in JOURNAL_FIELDS)},
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    closed_at REAL,
    outcome TEXT,
    extra TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX journal_pending ON journal (closed_at, id);
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'attempt records are append-only'); END;
CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'attempt records are append-only'); END;
"""

_EVENT_INSERT = (
    f"INSERT INTO events (seq, prev_hash, hash, {', '.join(EVENT_FIELDS)}) "
    f"VALUES ({', '.join('?' * (len(EVENT_FIELDS) + 3))})"
)
_RECORD_INSERT = (
    f"INSERT INTO records ({', '.join(RECORD_FIELDS)}) VALUES ({', '.join('?' * len(RECORD_FIELDS))})"
)
_HEAD_UPSERT = (
    "INSERT INTO chain_head (id, seq, hash) VALUES (1, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash"
)
_RECORD_SELECT = f"SELECT {', '.join(RECORD_FIELDS)} FROM records"
_JOURNAL_SELECT = (
    f"SELECT id, {', '.join(JOURNAL_FIELDS)}, opened_at, updated_at, closed_at, outcome, extra FROM journal"
)


def _unavailable(path: str, exc: BaseException) -> LedgerUnavailable:
    # sqlite's messages name the problem (locked, disk full, not a database) and never the values written.
    return LedgerUnavailable(
        "Ledger unavailable",
        f"The ledger at {path} cannot be used: {exc}.",
        "Check the disk and that no other program holds the ledger file; then try again.",
    )


class SqliteLedger(Ledger):
    """The ledger in one SQLite file (or ":memory:" for a throwaway one)."""

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, busy_timeout_s: float = 10.0
    ) -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._timeout = busy_timeout_s
        if not self._memory:
            target = Path(self.path)
            if not target.exists():
                if not create:
                    raise LedgerMissing(
                        "No ledger",
                        f"There is no ledger at {self.path}.",
                        "Check --ledger, STATION_LEDGER or the ledger setting in station.toml.",
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            raise _unavailable(self.path, exc) from exc
        try:
            self._ensure_schema()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _unavailable(self.path, exc) from exc
            raise

    # -------------------------------------------------------------------------------------------- setup
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each call is exactly one transaction.
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        if not self._memory:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _ensure_schema(self) -> None:
        conn = self._conn
        # A plain read first: opening an existing ledger must not wait for the write lock (WAL readers never
        # block), so a QA command can open the file while the line is writing.
        if not self._check_version(conn):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not self._check_version(conn):  # still missing under the lock: we create it
                    for statement in _statements(_SCHEMA):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _check_version(self, conn: sqlite3.Connection) -> bool:
        """True if the schema is there and this station can use it; False if the file is empty."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables - {"sqlite_sequence"}:
                raise LedgerUnavailable(
                    "Not a ledger",
                    f"{self.path} is an SQLite file but not a station ledger.",
                    "Point --ledger (or the ledger setting) at the station's ledger file.",
                )
            return False
        version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
        if version > SCHEMA_VERSION:
            raise LedgerUnavailable(
                "Ledger from a newer station",
                f"The ledger at {self.path} has schema version {version}; this station knows "
                f"{SCHEMA_VERSION}.",
                "Update the station software before using this ledger.",
            )
        # Migrations from older versions will go here, each in its own BEGIN IMMEDIATE transaction.
        return True

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # ------------------------------------------------------------------------------------ transactions
    def _write(self, work: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """Run `work` in one BEGIN IMMEDIATE transaction; `durable` fsyncs the WAL at commit."""
        with self._lock:
            conn = self._conn
            try:
                if durable:
                    conn.execute("PRAGMA synchronous = FULL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    result = work(conn)
                    conn.execute("COMMIT")
                    return result
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if durable:
                        conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"the ledger refused the write: {exc}") from exc
            except sqlite3.Error as exc:
                raise _unavailable(self.path, exc) from exc

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._conn)
            except sqlite3.Error as exc:
                raise _unavailable(self.path, exc) from exc

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent read view that does not hold the writers' lock (except for an in-memory ledger)."""
        if self._memory:
            with self._lock:
                yield self._conn
            return
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            conn.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot for all that follow
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    @staticmethod
    def _append(conn: sqlite3.Connection, fields: Mapping[str, Any], fields_json: str) -> int:
        head = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
        if head is None:
            head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS_HASH)
        digest = chain_hash_json(seq, prev, fields_json)
        values = [fields[name] for name in EVENT_FIELDS]
        values[EVENT_FIELDS.index("data")] = canonical_json(fields["data"])
        conn.execute(_EVENT_INSERT, (seq, prev, digest, *values))
        conn.execute(_HEAD_UPSERT, (seq, digest))
        return seq

    # ------------------------------------------------------------------------------------------- chain
    def append_event(self, event: Event) -> int:
        fields, fields_json = encode_appended_event(event)  # outside the lock: serialising is the slow part
        return self._write(lambda conn: self._append(conn, fields, fields_json))

    def record_attempt(self, record: AttemptRecord | Mapping[str, Any]) -> str:
        rec = as_record(record)
        row = rec.to_dict()
        digest = rec.canonical_hash()
        values = [canonical_json(row[n]) if n in RECORD_JSON_FIELDS else row[n] for n in RECORD_FIELDS]
        fields, fields_json = encode_record_seal(rec, digest)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(_RECORD_INSERT, values)
            self._append(conn, fields, fields_json)

        try:
            self._write(work)
        except ValueError as exc:
            raise ValueError(f"attempt {rec.attempt_id} is already recorded") from exc
        return digest

    def events(self, serial: str | None = None, *, after_seq: int = 0) -> list[LedgerEvent]:
        sql = f"SELECT seq, prev_hash, hash, {', '.join(EVENT_FIELDS)} FROM events WHERE seq > ?"
        params: list[Any] = [after_seq]
        if serial is not None:
            sql += " AND serial = ?"
            params.append(serial)
        sql += " ORDER BY seq"
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        out = []
        for row in rows:
            fields = _decode_event_row(row[3:])
            if fields is None:
                raise _damaged("An event")
            out.append(LedgerEvent(row[0], row[1], row[2], event_from_fields(fields)))
        return out

    def audit(self) -> AuditResult:
        try:
            with self._snapshot() as conn:
                head_row = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
                head = (int(head_row[0]), str(head_row[1])) if head_row else None
                rows = conn.execute(
                    f"SELECT seq, prev_hash, hash, {', '.join(EVENT_FIELDS)} FROM events ORDER BY seq"
                )
                chain = (ChainRow(row[0], row[1], row[2], _decode_event_row(row[3:])) for row in rows)
                records = (
                    RecordRow(str(row[0]), _decode_record_row(row))
                    for row in conn.execute(f"{_RECORD_SELECT} ORDER BY id")
                )
                return audit_chain(chain, head, records)
        except sqlite3.Error as exc:
            raise _unavailable(self.path, exc) from exc

    # ----------------------------------------------------------------------------------------- records
    def records(self) -> Iterator[AttemptRecord]:
        with self._snapshot() as conn:
            for row in conn.execute(f"{_RECORD_SELECT} ORDER BY id"):
                yield _record(row)

    def find(self, query: str) -> list[AttemptRecord]:
        q = query.strip()
        if not q:
            return []
        sql = f"{_RECORD_SELECT} WHERE serial = ? OR thing_name = ? OR attempt_id = ? OR certificate_id = ?"
        params: list[Any] = [q, q, q, q]
        if is_cert_prefix(q):
            sql += " OR substr(certificate_id, 1, ?) = ?"
            params += [len(q), q.lower()]
        sql += " ORDER BY id"
        return [_record(row) for row in self._read(lambda conn: conn.execute(sql, params).fetchall())]

    def units(self, outcome: str | None = None) -> list[UnitSummary]:
        # The latest attempt of a serial is the last one written (the chain's order), not the latest clock.
        sql = (
            f"SELECT latest.n, {', '.join('r.' + n for n in RECORD_FIELDS)} FROM records r JOIN "
            "(SELECT serial, MAX(id) AS last_id, COUNT(*) AS n FROM records GROUP BY serial) latest "
            "ON r.id = latest.last_id"
        )
        params: list[Any] = []
        if outcome is not None:
            sql += " WHERE r.outcome = ?"
            params.append(str(outcome))
        sql += " ORDER BY r.serial"
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        out = []
        for row in rows:
            record = _record(row[1:])
            out.append(UnitSummary(record.serial, record.outcome, int(row[0]), record))
        return out

    # ----------------------------------------------------------------------------------------- journal
    def journal_open(self, **fields: Any) -> int:
        columns, extra = journal_columns(fields)
        now = time.time()
        names = [*columns, "opened_at", "updated_at", "extra"]
        values = [_journal_value(v) for v in columns.values()] + [now, now, canonical_json(extra)]
        sql = f"INSERT INTO journal ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(sql, values)
            return int(cursor.lastrowid or 0)

        return self._write(work, durable=True)

    def journal_update(self, journal_id: int, **fields: Any) -> None:
        columns, extra = journal_columns(fields)

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT extra FROM journal WHERE id = ? AND closed_at IS NULL", (int(journal_id),)
            ).fetchone()
            if row is None:
                raise KeyError(f"no open journal entry {journal_id}")
            merged = {**json.loads(row[0] or "{}"), **extra}
            assignments = [f"{name} = ?" for name in columns] + ["updated_at = ?", "extra = ?"]
            values = [_journal_value(v) for v in columns.values()] + [time.time(), canonical_json(merged)]
            conn.execute(
                f"UPDATE journal SET {', '.join(assignments)} WHERE id = ?", (*values, int(journal_id))
            )

        self._write(work, durable=True)

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        def work(conn: sqlite3.Connection) -> None:
            now = time.time()
            cursor = conn.execute(
                "UPDATE journal SET closed_at = ?, updated_at = ?, outcome = ? WHERE id = ? AND closed_at IS NULL",
                (now, now, None if outcome is None else str(outcome), int(journal_id)),
            )
            if (
                cursor.rowcount == 0
                and not conn.execute("SELECT 1 FROM journal WHERE id = ?", (int(journal_id),)).fetchone()
            ):
                raise KeyError(f"no journal entry {journal_id}")

        self._write(work, durable=True)

    def journal_pending(self) -> list[JournalEntry]:
        rows = self._read(
            lambda conn: conn.execute(f"{_JOURNAL_SELECT} WHERE closed_at IS NULL ORDER BY id").fetchall()
        )
        return [_journal_entry(row) for row in rows]

    # ---------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SqliteLedger({self.path!r})"


# -------------------------------------------------------------------------------------------------------
# Row decoding
# -------------------------------------------------------------------------------------------------------


def _decode_event_row(values: tuple[Any, ...]) -> dict[str, Any] | None:
    fields = dict(zip(EVENT_FIELDS, values, strict=True))
    try:
        fields["data"] = json.loads(fields["data"])
    except (TypeError, ValueError):
        return None
    return fields


def _decode_record_row(row: tuple[Any, ...]) -> dict[str, Any] | None:
    fields = dict(zip(RECORD_FIELDS, row, strict=True))
    try:
        for name in RECORD_JSON_FIELDS:
            fields[name] = json.loads(fields[name])
    except (TypeError, ValueError):
        return None
    return fields


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""


def _damaged(what: str) -> LedgerUnavailable:
    return LedgerUnavailable(
        "Ledger damaged",
        f"{what} in the ledger cannot be read.",
        "Run `station audit verify` and call the person responsible for the ledger.",
    )


def _record(row: tuple[Any, ...]) -> AttemptRecord:
    fields = _decode_record_row(tuple(row))
    if fields is None:
        raise _damaged("An attempt record")
    try:
        return AttemptRecord(**fields)
    except (TypeError, ValueError) as exc:
        raise _damaged("An attempt record") from exc


def _journal_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _journal_entry(row: tuple[Any, ...]) -> JournalEntry:
    names = ("id", *JOURNAL_FIELDS, "opened_at", "updated_at", "closed_at", "outcome", "extra")
    fields = dict(zip(names, row, strict=True))
    fields["extra"] = json.loads(fields["extra"] or "{}")
    for name in ("certificate_created", "thing_created"):
        fields[name] = None if fields[name] is None else bool(fields[name])
    fields["thing_created"] = bool(fields["thing_created"])
    for name in JOURNAL_FIELDS:
        if fields[name] is None and name not in ("certificate_created", "thing_created"):
            fields[name] = ""
    return JournalEntry(**fields)
