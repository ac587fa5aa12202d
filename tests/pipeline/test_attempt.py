"""`station.attempt`: the one recorded-attempt machinery (events, steps, journal, compensations, outcome by
exception type, record), on an in-memory ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from station.attempt import Attempt, classify, outcome_of
from station.errors import InputError, StationError, StationFault, UnitFault
from station.journal import journal_fields
from station.model import Event, Outcome
from station.units import Action


class Book:
    def __init__(self) -> None:
        self.records: list[tuple[Any, list[Event]]] = []
        self.loose: list[Event] = []
        self.journal: dict[int, dict[str, Any]] = {}
        self.closed: list[tuple[int, str | None]] = []

    def record_attempt(self, record: Any, *, events: Sequence[Event] = ()) -> str:
        self.records.append((record, list(events)))
        return "hash"

    def append_event(self, event: Event) -> int:
        self.loose.append(event)
        return len(self.loose)

    def journal_open(self, **fields: Any) -> int:
        columns, notes = journal_fields(fields)  # the ledger's own check: one name per field
        self.journal[len(self.journal) + 1] = {**columns, **notes}
        return len(self.journal)

    def journal_update(self, journal_id: int, **fields: Any) -> None:
        columns, notes = journal_fields(fields)
        self.journal[journal_id].update({**columns, **notes})

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        self.closed.append((journal_id, outcome))


def test_outcome_follows_the_exception_type_and_done_proves_nothing() -> None:
    assert outcome_of(None) == Outcome.PASS and outcome_of(None, proved=False) == Outcome.DONE
    assert outcome_of(UnitFault("t", "m", "n")) == Outcome.FAIL
    assert outcome_of(StationFault("t", "m", "n")) == Outcome.ERROR
    assert outcome_of(InputError("t", "m", "n")) == Outcome.ERROR
    assert classify(ValueError("secret text")).title == "Station error"  # never the exception's own words
    assert classify(KeyboardInterrupt()).title == "Station interrupted"


def test_compensations_run_aws_first_newest_first_and_a_key_is_replaced_in_place() -> None:
    done: list[str] = []
    attempt = Attempt(Book(), serial="SN1")
    attempt.undo("aws", "revoke", lambda: done.append("revoke-if-there"))
    attempt.undo("device", "wipe", lambda: done.append("wipe"))
    attempt.undo("aws", "rollback", lambda: done.append("rollback"))  # register answered: replaces revoke
    attempt.undo("other", "rollback", lambda: done.append("second cloud undo"))
    attempt.compensate()
    assert done == ["second cloud undo", "rollback", "wipe"]
    assert [c.action for c in attempt.compensations] == ["rollback", "rollback", "wipe"]
    attempt.compensate()
    assert len(done) == 3  # once only


def test_a_failed_cloud_undo_keeps_the_journal_open() -> None:
    book = Book()
    attempt = Attempt(book, serial="SN2")
    attempt.journal_open(certificate_id="c" * 64, stage="registering")

    def refuse() -> None:
        raise StationFault("AWS down", "AWS did not answer.", "Wait.")

    attempt.undo("aws", "rollback", refuse)
    with pytest.raises(StationError) as error:
        attempt.run(
            lambda: (_ for _ in ()).throw(UnitFault("Bad unit", "It broke.", "Rework.")),
            conclude=lambda e: {"outcome": str(outcome_of(e)), "title": e.title if e else "ok"},
        )
    assert error.value.title == "Undo failed" and "AWS did not answer." in error.value.message
    (record, events) = book.records[0]
    assert record.outcome == "FAIL" and record.compensations == [
        {"action": "rollback", "ok": False, "detail": "AWS did not answer."}
    ]
    assert [e.kind for e in events] == ["compensation"]  # the events come with the record
    assert book.closed == []  # reconcile must still find it


def test_run_records_once_with_its_action_timings_and_events() -> None:
    book = Book()
    seen: list[Event] = []
    attempt = Attempt(book, serial="SN3", action=Action.REVOKE, operator="qa", on_event=seen.append)
    attempt.journal_open(stage="revoking")
    value = attempt.run(
        lambda: attempt.step("revoke", lambda: 42),
        conclude=lambda e: {"outcome": str(outcome_of(e, proved=False)), "title": "Revoked"},
    )
    assert value == 42
    ((record, events),) = book.records
    assert (record.action, record.outcome, record.operator) == ("revoke", "DONE", "qa")
    assert set(record.timings_ms) == {"revoke", "total"}
    assert [e.kind for e in events] == ["step_started", "step_finished"] == [e.kind for e in seen]
    assert book.closed == [(1, "DONE")] and book.loose == []


def test_a_record_that_cannot_be_written_undoes_the_attempt() -> None:
    class Full(Book):
        def record_attempt(self, record: Any, *, events: Sequence[Event] = ()) -> str:
            raise StationFault("Ledger unavailable", "The disk is full.", "Free space.")

    book = Full()
    undone: list[str] = []
    attempt = Attempt(book, serial="SN4", action=Action.REGISTER)
    attempt.journal_open(stage="registering")
    with pytest.raises(StationFault) as error:
        attempt.run(
            lambda: attempt.undo("aws", "rollback", lambda: undone.append("rollback")),
            conclude=lambda e: {"outcome": "PASS"},
        )
    assert error.value.title == "Ledger unavailable" and "was undone" in error.value.message
    assert undone == ["rollback"] and book.closed == []
