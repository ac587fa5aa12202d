"""The journal entry as a type: one name per field, an enum of stages, unknown names refused on a write, rows of
older stations read (their second names and notes), and the entry's dict round-trips."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from station.journal import (
    COLUMNS,
    NOTES,
    WRITABLE,
    JournalEntry,
    JournalFields,
    Stage,
    journal_fields,
)


def test_a_write_is_split_into_columns_and_notes_with_typed_values() -> None:
    columns, notes = journal_fields(
        {
            "serial": "SN1",
            "stage": "attached",
            "thing_created": 1,
            "certificate_created": None,
            "station_id": "st",
        }
    )
    assert columns == {
        "serial": "SN1",
        "stage": Stage.ATTACHED,
        "thing_created": True,
        "certificate_created": None,
    }
    assert type(columns["stage"]) is Stage
    assert notes == {"station_id": "st"}


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"state": "registered"}, "'state' (the field is 'stage')"),
        ({"account": "123456789012"}, "'account' (the field is 'account_id')"),
        ({"target_name": "lab"}, "'target_name' (the field is 'target')"),
        ({"serial": "SN1", "retries": 2, "why": "slow"}, "unknown journal fields 'retries', 'why'"),
    ],
)
def test_unknown_names_are_refused(fields: dict[str, object], words: str) -> None:
    with pytest.raises(TypeError) as caught:
        journal_fields(fields)
    assert words in str(caught.value)


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown journal stage 'registred'; the stages are"):
        journal_fields({"stage": "registred"})


@pytest.mark.parametrize("stage", list(Stage))
def test_every_stage_round_trips_through_its_stored_form(stage: Stage) -> None:
    columns, notes = journal_fields({"serial": "SN1", "stage": stage, "purpose": "replace_revoke"})
    stored = {"id": 7, **{k: str(v) for k, v in columns.items()}, "extra": json.dumps(notes)}
    entry = JournalEntry.from_stored(stored)
    assert entry.stage is stage and entry.purpose == "replace_revoke" and entry.unknown == {}
    again = JournalEntry.from_stored(entry.to_dict())
    assert again == entry


def test_a_row_of_an_older_station_is_read() -> None:
    # Second names for a field, notes in `extra` (one this version has no field for), no stage, NULLs.
    row = {
        "id": "12",
        "serial": "SN1",
        "state": "cleanup_pending",
        "account": "123456789012",
        "target_name": "lab-eu",
        "thing_created": 0,
        "certificate_created": None,
        "certificate_arn": None,
        "opened_at": 1000,
        "closed_at": None,
        "extra": json.dumps({"station_id": "st-1", "registry_answer": "already registered", "retries": 2}),
    }
    entry = JournalEntry.from_stored(row)
    assert (entry.id, entry.stage, entry.account_id, entry.target) == (
        12,
        Stage.CLEANUP_PENDING,
        "123456789012",
        "lab-eu",
    )
    assert (entry.station_id, entry.registry_answer, entry.unknown) == (
        "st-1",
        "already registered",
        {"retries": 2},
    )
    assert (entry.thing_created, entry.certificate_created, entry.certificate_arn) == (False, None, "")
    assert (entry.opened_at, entry.closed_at) == (1000.0, None)
    assert JournalEntry.from_stored(entry.to_dict()) == entry  # what `station show --json` prints reads back
    assert JournalEntry.from_stored({"id": 1}).stage is Stage.OPENED  # an entry opened without a stage


def test_a_stored_stage_this_station_does_not_know_names_the_entry() -> None:
    with pytest.raises(ValueError, match="journal entry 3 has the stage 'teleported'"):
        JournalEntry.from_stored({"id": 3, "stage": "teleported"})


def test_the_type_checker_view_and_the_runtime_view_agree() -> None:
    assert set(typing.get_type_hints(JournalFields)) == WRITABLE == set(COLUMNS) | set(NOTES)
    fields = {f.name for f in dataclasses.fields(JournalEntry)}
    assert fields > WRITABLE and fields - WRITABLE == {
        "id",
        "opened_at",
        "updated_at",
        "closed_at",
        "outcome",
        "unknown",
    }
