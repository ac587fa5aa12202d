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

Tamper evidence is the hash chain (see `base`) plus signed checkpoints outside the file (`anchor`); triggers
additionally refuse UPDATE and DELETE on the event and record tables, which stops accidents (a stray tool, a
wrong script), not a person who drops them.

Scale (schema 2): one row per unit in `units` (its `UnitState` as JSON plus the columns pages filter and sort
on), written in the same transaction as the record; indexes make `find`/`find_units` index lookups (the
certificate id prefix is a range scan), a page of units one index range read, and `audit()` streams: the
chain in seq order (records looked up by attempt id), then records by serial merged with the unit rows, then
journal rows merged with their latest chained event — constant memory however large the ledger.

This module must not talk to AWS, must not hold or write key material, and must not hand out its connection.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from station.i18n import _
from station.journal import COLUMNS as JOURNAL_FIELDS
from station.journal import Stage
from station.ledger.anchor import Anchor, AnchorError, Checkpoint, anchor_verdict
from station.ledger.base import (
    EVENT_FIELDS,
    GENESIS_HASH,
    JOURNAL_EVENT,
    MAX_PAGE,
    RECORD_EVENT,
    RECORD_FIELDS,
    RECORD_JSON_FIELDS,
    SCHEMA_VERSION,
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
    UnitPage,
    as_record,
    body_hash,
    canonical_json,
    cert_prefix_range,
    chain_hash_json,
    check_units,
    digest_text,
    encode_appended_event,
    encode_attempt_events,
    encode_journal_event,
    encode_record_seal,
    event_from_fields,
    is_cert_prefix,
    journal_columns,
    journal_mismatch,
    page_cursor,
    page_limit,
    parse_cursor,
    plain,
    unit_target,
    unit_time,
)
from station.model import Event
from station.units import UnitState, apply

_AUTO: Any = object()  # "the anchor beside the ledger file (or from the environment)"
PROGRESS_EVERY = 20_000

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
CREATE INDEX events_journal ON events (json_extract(data, '$.journal_id'), seq) WHERE kind = '{JOURNAL_EVENT}';
CREATE TABLE units (
    serial TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    last_outcome TEXT NOT NULL,
    target TEXT NOT NULL,
    station_id TEXT NOT NULL,
    last_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE units_digest (id INTEGER PRIMARY KEY CHECK (id = 1), digest TEXT NOT NULL);
CREATE INDEX units_serial_nocase ON units (serial COLLATE NOCASE);
CREATE INDEX units_order ON units (last_at, seq);
CREATE INDEX units_state ON units (state, last_at, seq);
CREATE INDEX units_outcome ON units (last_outcome, last_at, seq);
CREATE INDEX units_target ON units (target, last_at, seq);
CREATE INDEX units_station ON units (station_id, last_at, seq);
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
_RECORD_COLUMNS = ", ".join("r." + n for n in RECORD_FIELDS)
_UNIT_UPSERT = (
    "INSERT INTO units (serial, state, last_outcome, target, station_id, last_at, seq, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET state = excluded.state, "
    "last_outcome = excluded.last_outcome, target = excluded.target, station_id = excluded.station_id, "
    "last_at = excluded.last_at, seq = excluded.seq, body = excluded.body"
)
_JOURNAL_SELECT = (
    f"SELECT id, {', '.join(JOURNAL_FIELDS)}, opened_at, updated_at, closed_at, outcome, extra FROM journal"
)


def _unavailable(path: str, exc: BaseException) -> LedgerUnavailable:
    # sqlite's messages name the problem (locked, disk full, not a database) and never the values written.
    return LedgerUnavailable(
        _("Ledger unavailable"),
        _("The ledger at {path} cannot be used: {exc}.").format(path=path, exc=exc),
        _("Check the disk and that no other program holds the ledger file; then try again."),
    )


class SqliteLedger(Ledger):
    """The ledger in one SQLite file (or ":memory:" for a throwaway one)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        busy_timeout_s: float = 10.0,
        anchor: Anchor | None = _AUTO,
    ) -> None:
        self.path = str(path)
        self.anchor = Anchor.for_location(self.path) if anchor is _AUTO else anchor
        self._memory = self.path == ":memory:"
        self._timeout = busy_timeout_s
        if not self._memory:
            target = Path(self.path)
            if not target.exists():
                if not create:
                    raise LedgerMissing(
                        _("No ledger"),
                        _("There is no ledger at {path}.").format(path=self.path),
                        _("Check --ledger, STATION_LEDGER or the ledger setting in station.toml."),
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
        # 64 MB of page cache: the certificate-id index takes random inserts; at a million units its pages no
        # longer fit the 2 MB default and every write would read some back.
        conn.execute("PRAGMA cache_size = -65536")
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
                    _("Not a ledger"),
                    _("{path} is an SQLite file but not a station ledger.").format(path=self.path),
                    _("Point --ledger (or the ledger setting) at the station's ledger file."),
                )
            return False
        version = int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
        if version > SCHEMA_VERSION:
            raise LedgerUnavailable(
                _("Ledger from a newer station"),
                _(
                    "The ledger at {path} has schema version {version}; this station knows {SCHEMA_VERSION}."
                ).format(path=self.path, version=version, SCHEMA_VERSION=SCHEMA_VERSION),
                _("Update the station software before using this ledger."),
            )
        if version < SCHEMA_VERSION:
            raise LedgerUnavailable(
                _("Ledger from an older station"),
                _(
                    "The ledger at {path} has schema version {version}; this station needs "
                    "{SCHEMA_VERSION} (a unit state table, actions on records, the journal in the chain)."
                ).format(path=self.path, version=version, SCHEMA_VERSION=SCHEMA_VERSION),
                _(
                    "Keep the old file as it is (it is evidence) and start a new ledger file for this station; "
                    "export the old one with the station version that wrote it."
                ),
            )
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
                    self._wrote = True  # close() signs a checkpoint of what this handle wrote
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
    def _head(conn: sqlite3.Connection) -> tuple[int, str]:
        head = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
        if head is None:
            head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, seq: int, prev: str, fields: Mapping[str, Any], fields_json: str
    ) -> str:
        digest = chain_hash_json(seq, prev, fields_json)
        values = [fields[name] for name in EVENT_FIELDS]
        values[EVENT_FIELDS.index("data")] = canonical_json(fields["data"])
        conn.execute(_EVENT_INSERT, (seq, prev, digest, *values))
        return digest

    @classmethod
    def _append(cls, conn: sqlite3.Connection, fields: Mapping[str, Any], fields_json: str) -> int:
        seq, prev = cls._head(conn)
        digest = cls._insert(conn, seq + 1, prev, fields, fields_json)
        conn.execute(_HEAD_UPSERT, (seq + 1, digest))
        return seq + 1

    # ------------------------------------------------------------------------------------------- chain
    def append_event(self, event: Event) -> int:
        fields, fields_json = encode_appended_event(event)  # outside the lock: serialising is the slow part
        return self._write(lambda conn: self._append(conn, fields, fields_json))

    def head(self) -> tuple[int, str]:
        return self._read(self._head)

    def _anchor_state(self) -> tuple[int, str, str]:
        def work(conn: sqlite3.Connection) -> tuple[int, str, str]:
            conn.execute("BEGIN")  # head and digest from one snapshot
            try:
                seq, digest = self._head(conn)
                row = conn.execute("SELECT digest FROM units_digest WHERE id = 1").fetchone()
                return seq, digest, row[0] if row else digest_text(0)
            finally:
                conn.execute("COMMIT")

        return self._read(work)

    def record_attempt(
        self, record: AttemptRecord | Mapping[str, Any], *, events: Sequence[Event] = ()
    ) -> str:
        rec = as_record(record)
        row = rec.to_dict()
        digest = rec.canonical_hash()
        values = [canonical_json(row[n]) if n in RECORD_JSON_FIELDS else row[n] for n in RECORD_FIELDS]
        encoded = [*encode_attempt_events(events), encode_record_seal(rec, digest)]

        def work(conn: sqlite3.Connection) -> None:
            seq, prev = self._head(conn)
            conn.execute(_RECORD_INSERT, values)
            for fields, fields_json in encoded:
                seq += 1
                prev = self._insert(conn, seq, prev, fields, fields_json)
            conn.execute(_HEAD_UPSERT, (seq, prev))
            old = conn.execute("SELECT body FROM units WHERE serial = ?", (rec.serial,)).fetchone()
            state = apply(_unit(old[0]) if old else None, rec)
            body = canonical_json(plain(state.to_dict()))
            stored = conn.execute("SELECT digest FROM units_digest WHERE id = 1").fetchone()
            total = int(stored[0], 16) if stored else 0
            total += body_hash(body) - body_hash(old[0] if old else None)
            conn.execute(
                "INSERT INTO units_digest (id, digest) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET digest = excluded.digest",
                (digest_text(total),),
            )
            conn.execute(
                _UNIT_UPSERT,
                (
                    rec.serial,
                    state.state,
                    state.last_outcome,
                    unit_target(state, rec),
                    rec.station_id,
                    unit_time(rec),
                    seq,
                    body,
                ),
            )

        try:
            self._write(work)
        except ValueError as exc:
            raise ValueError(f"attempt {rec.attempt_id} is already recorded") from exc
        self._wrote_record()
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

    # ------------------------------------------------------------------------------------------- audit
    def audit(
        self, *, progress: Progress | None = None, since_checkpoint: bool = False, all_stations: bool = False
    ) -> AuditResult:
        # One file is one station's ledger: all stations are this one (`all_stations` changes nothing).
        try:
            checkpoint = self.anchor.latest() if self.anchor is not None else None
        except AnchorError as exc:
            return AuditResult(False, 0, RowRef("anchor", 0), str(exc), anchor_note=str(exc))
        try:
            with self._snapshot() as conn:
                return _Audit(conn, checkpoint, progress, since_checkpoint and checkpoint is not None).run()
        except sqlite3.Error as exc:
            raise _unavailable(self.path, exc) from exc

    # ----------------------------------------------------------------------------------------- records
    def records(self) -> Iterator[AttemptRecord]:
        with self._snapshot() as conn:
            for row in conn.execute(f"{_RECORD_SELECT} ORDER BY id"):
                yield _record(row)

    def _export_rows(self) -> Iterator[tuple[AttemptRecord, UnitState | None]]:
        with self._snapshot() as conn:
            sql = f"SELECT u.body, {_RECORD_COLUMNS} FROM records r LEFT JOIN units u ON u.serial = r.serial ORDER BY r.id"
            for row in conn.execute(sql):
                yield _record(row[1:]), (_unit(row[0]) if row[0] else None)

    def _latest_records(self, attempt_ids: Sequence[str]) -> dict[str, AttemptRecord]:
        if not attempt_ids:
            return {}
        sql = f"{_RECORD_SELECT} WHERE attempt_id IN ({', '.join('?' * len(attempt_ids))})"
        rows = self._read(lambda conn: conn.execute(sql, list(attempt_ids)).fetchall())
        return {r.attempt_id: r for r in map(_record, rows)}

    @staticmethod
    def _matching_ids(query: str) -> tuple[str, list[Any]]:
        """A subquery of record ids matching `find`'s rule: a UNION of index lookups (no table scan)."""
        parts = [
            "SELECT id FROM records WHERE serial = ?",
            "SELECT id FROM records WHERE thing_name = ?",
            "SELECT id FROM records WHERE attempt_id = ?",
            "SELECT id FROM records WHERE certificate_id = ?",
        ]
        params: list[Any] = [query] * 4
        if is_cert_prefix(query):
            parts.append("SELECT id FROM records WHERE certificate_id >= ? AND certificate_id < ?")
            params += list(cert_prefix_range(query))
        return " UNION ".join(parts), params

    def find(self, query: str) -> list[AttemptRecord]:
        q = query.strip()
        if not q:
            return []
        ids, params = self._matching_ids(q)
        sql = f"{_RECORD_SELECT} WHERE id IN ({ids}) ORDER BY id"
        return [_record(row) for row in self._read(lambda conn: conn.execute(sql, params).fetchall())]

    # ------------------------------------------------------------------------------------------- units
    def unit(self, serial: str) -> UnitState | None:
        row = self._read(
            lambda conn: conn.execute("SELECT body FROM units WHERE serial = ?", (serial,)).fetchone()
        )
        return _unit(row[0]) if row else None

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
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("last_outcome", outcome),
            ("target", target),
            ("station_id", station),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(str(value))
        if since is not None:
            where.append("last_at >= ?")
            params.append(float(since))
        if until is not None:
            where.append("last_at < ?")
            params.append(float(until))
        if after:
            where.append("(last_at, seq) < (?, ?)")
            params += list(parse_cursor(after))
        n = page_limit(limit)
        sql = "SELECT body, last_at, seq FROM units"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY last_at DESC, seq DESC LIMIT ?"
        params.append(n + 1)
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        more = len(rows) > n
        rows = rows[:n]
        cursor = page_cursor(rows[-1][1], rows[-1][2]) if more else None
        return UnitPage([_unit(row[0]) for row in rows], cursor)

    def find_units(self, query: str) -> list[UnitState]:
        q = query.strip()
        if not q:
            return []
        ids, params = self._matching_ids(q)
        sql = (
            "SELECT body FROM units WHERE serial IN (SELECT serial FROM units WHERE serial = ? COLLATE NOCASE "
            f"UNION SELECT serial FROM records WHERE id IN ({ids})) ORDER BY last_at DESC, seq DESC LIMIT ?"
        )
        rows = self._read(lambda conn: conn.execute(sql, [q, *params, MAX_PAGE]).fetchall())
        return [_unit(row[0]) for row in rows]

    # ----------------------------------------------------------------------------------------- journal
    def _chain_journal(self, conn: sqlite3.Connection, journal_id: int, op: str) -> None:
        row = conn.execute(f"{_JOURNAL_SELECT} WHERE id = ?", (journal_id,)).fetchone()
        fields, fields_json = encode_journal_event(_journal_entry(row), op)
        self._append(conn, fields, fields_json)

    def journal_open(self, **fields: Any) -> int:
        columns, extra = journal_columns(fields)
        now = time.time()
        names = [*columns, "opened_at", "updated_at", "extra"]
        values = [_journal_value(v) for v in columns.values()] + [now, now, canonical_json(extra)]
        sql = f"INSERT INTO journal ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(sql, values)
            journal_id = int(cursor.lastrowid or 0)
            self._chain_journal(conn, journal_id, "open")
            return journal_id

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
            self._chain_journal(conn, int(journal_id), "update")

        self._write(work, durable=True)

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        def work(conn: sqlite3.Connection) -> None:
            now = time.time()
            cursor = conn.execute(
                "UPDATE journal SET closed_at = ?, updated_at = ?, outcome = ? WHERE id = ? AND closed_at IS NULL",
                (now, now, None if outcome is None else str(outcome), int(journal_id)),
            )
            if cursor.rowcount:
                self._chain_journal(conn, int(journal_id), "close")
            elif not conn.execute("SELECT 1 FROM journal WHERE id = ?", (int(journal_id),)).fetchone():
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
            try:
                self._close_anchor()
            finally:
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


def _unit(body: str) -> UnitState:
    try:
        return UnitState.from_dict(json.loads(body))
    except (TypeError, ValueError) as exc:
        raise _damaged("A unit's state") from exc


class _Audit:
    """One streaming audit inside one read snapshot (see `SqliteLedger.audit`)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        checkpoint: Checkpoint | None,
        progress: Progress | None,
        incremental: bool,
    ) -> None:
        self.conn = conn
        self.checkpoint = checkpoint
        self.progress = progress
        self.incremental = incremental
        self._row_sum = 0
        self.units_total = 0
        self.head_seq = 0

    def _tick(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _lookup(self, attempt_id: str) -> tuple[int, RecordRow] | None:
        row = self.conn.execute(
            f"SELECT id, {', '.join(RECORD_FIELDS)} FROM records WHERE attempt_id = ?", (attempt_id,)
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), RecordRow(attempt_id, _decode_record_row(row[1:]))

    def _unsealed(self) -> str | None:
        """The first record row no seal names (a merge of seals in chain order with rows in id order)."""
        sealed = (
            self._lookup(json.loads(data).get("attempt_id", ""))
            for (data,) in self.conn.execute(
                f"SELECT data FROM events WHERE kind = '{RECORD_EVENT}' ORDER BY seq"
            )
        )
        sealed_ids = (found[0] for found in sealed if found is not None)
        for (row_id, attempt_id), sealed_id in itertools.zip_longest(
            self.conn.execute("SELECT id, attempt_id FROM records ORDER BY id"), sealed_ids
        ):
            if row_id != sealed_id:
                return str(attempt_id) if attempt_id is not None else None
        return None

    def run(self) -> AuditResult:
        conn = self.conn
        head_row = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
        head = (int(head_row[0]), str(head_row[1])) if head_row else None
        total = head[0] if head else 0
        # Progress runs over the chain's rows, then the unit rows replayed (a full audit).
        self.units_total = (
            0 if self.incremental else int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
        )
        self.head_seq = total
        cp = self.checkpoint
        start_seq, start_hash = 1, GENESIS_HASH
        if self.incremental and cp is not None:
            stored = conn.execute("SELECT hash FROM events WHERE seq = ?", (cp.seq,)).fetchone()
            verdict = anchor_verdict(cp, total, stored[0] if stored else None)
            if verdict:
                return AuditResult(
                    False, 0, RowRef("events", cp.seq), verdict, anchored_seq=cp.seq, anchor_note=verdict
                )
            start_seq, start_hash = cp.seq + 1, cp.hash
        verifier = ChainVerifier(
            self._lookup, start_seq=start_seq, start_hash=start_hash, watch_seq=cp.seq if cp else 0
        )
        rows = conn.execute(
            f"SELECT seq, prev_hash, hash, {', '.join(EVENT_FIELDS)} FROM events WHERE seq >= ? ORDER BY seq",
            (start_seq,),
        )
        for row in rows:
            if not verifier.feed(ChainRow(row[0], row[1], row[2], _decode_event_row(row[3:]))):
                break
            if row[0] % PROGRESS_EVERY == 0:
                self._tick(row[0], total + self.units_total)
        if self.incremental:
            record_count = 0  # records sealed before the checkpoint are trusted with it
        else:
            record_count = int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        result = verifier.finish(head, record_count, self._unsealed)
        result = dataclasses.replace(result, anchored_seq=cp.seq if cp else 0, since_seq=start_seq - 1)
        if not result.ok:
            return result
        self._tick(total, total + self.units_total)
        if cp is not None:
            verdict = anchor_verdict(cp, result.head_seq, verifier.watched_hash)
            if verdict:
                return dataclasses.replace(
                    result,
                    ok=False,
                    first_bad_row=RowRef("events", cp.seq),
                    reason=verdict,
                    anchor_note=verdict,
                )
        note = "" if cp else "no signed checkpoint yet: truncation or re-chaining cannot be detected"
        self._row_sum = 0
        units_checked, serial, why = check_units(self._unit_groups(start_seq), self._unit_rows(start_seq))
        if not serial:
            why = self._check_digest(start_seq)
            serial = "*" if why else ""

        def broken(row: RowRef, why: str, *, units: int, journal: int = 0) -> AuditResult:
            return dataclasses.replace(
                result,
                ok=False,
                first_bad_row=row,
                reason=why,
                units_checked=units,
                journal_checked=journal,
                anchor_note=note,
            )

        if serial:
            return broken(RowRef("units", serial), why, units=units_checked)
        journal_checked, journal_id, why = self._check_journal()
        if why:
            return broken(RowRef("journal", journal_id), why, units=units_checked, journal=journal_checked)
        self._tick(total + self.units_total, total + self.units_total)
        return dataclasses.replace(
            result, units_checked=units_checked, journal_checked=journal_checked, anchor_note=note
        )

    def _check_digest(self, start_seq: int) -> str:
        """The unit table against its digest: in a full audit, the running digest must equal the rows'; in an
        incremental one, the rows' digest must equal the checkpoint's plus what the touched units changed."""
        stored = self.conn.execute("SELECT digest FROM units_digest WHERE id = 1").fetchone()
        running = int(stored[0], 16) if stored else 0
        touched = self._touched(start_seq)
        if touched is None:  # full: the rows were summed while they were compared
            if digest_text(self._row_sum) != digest_text(running):
                return "the unit table's running digest does not match its rows (edited)"
            return ""
        assert self.checkpoint is not None
        if not self.checkpoint.units_digest:
            return ""
        total = sum(body_hash(body) for (body,) in self.conn.execute("SELECT body FROM units"))
        expected = int(self.checkpoint.units_digest, 16)
        for serial in touched:
            (now,) = self.conn.execute("SELECT body FROM units WHERE serial = ?", (serial,)).fetchone()
            expected += body_hash(now) - body_hash(self._state_at(serial, start_seq - 1))
        if digest_text(total) != digest_text(expected):
            return (
                "a unit row nobody wrote since the checkpoint was changed (the unit table's digest differs)"
            )
        return ""

    def _state_at(self, serial: str, seq: int) -> str | None:
        """The unit's stored body as it was when the chain ended at `seq` (a replay of the records sealed by
        then), None if it had none."""
        sealed = {
            json.loads(data).get("attempt_id")
            for (data,) in self.conn.execute(
                f"SELECT data FROM events WHERE serial = ? AND kind = '{RECORD_EVENT}' AND seq <= ?",
                (serial, seq),
            )
        }
        state: UnitState | None = None
        for row in self.conn.execute(f"{_RECORD_SELECT} WHERE serial = ? ORDER BY id", (serial,)).fetchall():
            record = _record(row)
            if record.attempt_id in sealed:
                state = apply(state, record)
        return canonical_json(plain(state.to_dict())) if state else None

    def _touched(self, start_seq: int) -> list[str] | None:
        """Serials with a record sealed at or after `start_seq` (None: every serial)."""
        if start_seq <= 1:
            return None
        rows = self.conn.execute(
            f"SELECT DISTINCT serial FROM events WHERE seq >= ? AND kind = '{RECORD_EVENT}' ORDER BY serial",
            (start_seq,),
        )
        return [str(r[0]) for r in rows]

    def _unit_groups(self, start_seq: int) -> Iterator[tuple[str, Iterator[AttemptRecord]]]:
        touched = self._touched(start_seq)
        if touched is None:
            rows = self.conn.execute(f"{_RECORD_SELECT} ORDER BY serial, id")
            records = (_record(row) for row in rows)
            for serial, group in itertools.groupby(records, key=lambda r: r.serial):
                yield serial, group
            return
        for serial in touched:
            found = self.conn.execute(f"{_RECORD_SELECT} WHERE serial = ? ORDER BY id", (serial,)).fetchall()
            yield serial, (_record(row) for row in found)

    def _unit_rows(self, start_seq: int) -> Iterator[tuple[str, dict[str, Any] | None]]:
        touched = self._touched(start_seq)
        if touched is None:
            rows: Iterable[Any] = self.conn.execute("SELECT serial, body FROM units ORDER BY serial")
        else:
            rows = (
                r
                for serial in touched
                for r in self.conn.execute("SELECT serial, body FROM units WHERE serial = ?", (serial,))
            )
        for n, (serial, body) in enumerate(rows, 1):
            if n % PROGRESS_EVERY == 0:
                self._tick(self.head_seq + n, self.head_seq + self.units_total)
            self._row_sum += body_hash(body)
            try:
                data = json.loads(body)
            except (TypeError, ValueError):
                data = None
            yield str(serial), data if isinstance(data, dict) else None

    def _check_journal(self) -> tuple[int, int, str]:
        """Every journal row against its latest chained journal event (merged by id); (checked, id, why)."""
        chained = self.conn.execute(
            f"SELECT json_extract(data, '$.journal_id') AS jid, MAX(seq) FROM events WHERE kind = '{JOURNAL_EVENT}' "
            "AND json_extract(data, '$.journal_id') IS NOT NULL GROUP BY jid ORDER BY jid"
        )
        entries = (_journal_entry(row) for row in self.conn.execute(f"{_JOURNAL_SELECT} ORDER BY id"))
        data_at = self.conn.cursor()
        checked = 0
        c = next(chained, None)
        e = next(entries, None)
        while c is not None or e is not None:
            if e is None or (c is not None and int(c[0]) < e.id):
                assert c is not None
                return checked, int(c[0]), journal_mismatch(None, {})
            if c is None or e.id < int(c[0]):
                return checked, e.id, journal_mismatch(e, None)
            (data,) = data_at.execute("SELECT data FROM events WHERE seq = ?", (c[1],)).fetchone()
            why = journal_mismatch(e, json.loads(data))
            if why:
                return checked, e.id, why
            checked += 1
            c = next(chained, None)
            e = next(entries, None)
        return checked, 0, ""


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""


def _damaged(what: str) -> LedgerUnavailable:
    return LedgerUnavailable(
        _("Ledger damaged"),
        _("{what} in the ledger cannot be read.").format(what=what),
        _("Run `station audit verify` and call the person responsible for the ledger."),
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
    if isinstance(value, bool):
        return int(value)
    return str(value) if isinstance(value, Stage) else value


def _journal_entry(row: tuple[Any, ...]) -> JournalEntry:
    names = ("id", *JOURNAL_FIELDS, "opened_at", "updated_at", "closed_at", "outcome", "extra")
    return JournalEntry.from_stored(dict(zip(names, row, strict=True)))
