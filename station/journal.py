"""The crash journal's entry: one typed record of an attempt that touched AWS and is not finished yet.

- `Stage`: how far the attempt got in AWS (registering → registered → thing → attached → verified;
  rolled_back, cleanup_pending; revoking for a re-provision's old certificate). Stored as its value.
- `JournalEntry`: every field has exactly one name. What a caller may write is `WRITABLE`;
  `journal_fields(fields)` checks a write (an unknown name is a TypeError, an unknown stage a ValueError) and
  splits it into the stored columns (`COLUMNS`) and the notes a backend keeps in the row's `extra` JSON
  (`NOTES`), so the stored format is the one older stations wrote.
- `JournalEntry.from_stored(row)` reads a stored row back, also one written by an older station: the old
  second names (`state`, `account`, `target_name`) are read as their field, and keys this version does not
  know are kept, read-only, in `unknown` (never written again by this version).

It must not: do I/O or know any backend; accept key material (the ledger refuses it on every write).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict


class Stage(StrEnum):
    """How far an attempt got in AWS (the journal's `stage`)."""

    OPENED = ""  # opened, no AWS step recorded yet (stored as "", as older stations did)
    REGISTERING = "registering"  # the certificate is being registered
    REGISTERED = "registered"
    THING = "thing"  # the thing is made (or was there)
    ATTACHED = "attached"  # policy and thing attached to the certificate
    VERIFIED = "verified"
    ROLLED_BACK = "rolled_back"  # an undo in AWS ran
    CLEANUP_PENDING = "cleanup_pending"  # the attempt is over; AWS still holds what it made
    REVOKING = "revoking"  # a re-provision's old certificate is being revoked


# `purpose` of an entry whose certificate a re-provision must revoke (the old one, not this attempt's).
REPLACE_REVOKE = "replace_revoke"

# Stored as columns, in this order (the SQLite table's columns, DynamoDB's attributes).
COLUMNS = (
    "attempt_id",
    "serial",
    "target",
    "account_id",
    "region",
    "slot",
    "product",
    "certificate_id",
    "certificate_pem",
    "certificate_arn",
    "certificate_created",
    "thing_name",
    "thing_created",
    "stage",
)
# Stored in the row's `extra` JSON (where older stations kept them too).
NOTES = ("station_id", "purpose", "registry_answer", "thing_answer")
WRITABLE = frozenset(COLUMNS + NOTES)
BOOLS = ("certificate_created", "thing_created")

# Second names older stations wrote; read as their field, refused on a write.
_OLD_NAMES = {"state": "stage", "account": "account_id", "target_name": "target"}


@dataclass(frozen=True)
class JournalEntry:
    """One in-flight attempt, written before its first AWS side effect and updated after each AWS step."""

    id: int
    attempt_id: str = ""
    serial: str = ""
    target: str = ""
    account_id: str = ""
    region: str = ""
    slot: str = ""
    product: str = ""
    certificate_id: str = ""
    certificate_pem: str = ""
    certificate_arn: str = ""
    certificate_created: bool | None = None  # None: not known yet (register did not answer)
    thing_name: str = ""
    thing_created: bool = False
    stage: Stage = Stage.OPENED
    station_id: str = ""  # the station whose cleaner may finish it (`station.cleanup`)
    purpose: str = ""  # "" (the attempt's own certificate) or REPLACE_REVOKE
    registry_answer: str = ""  # "already registered" when AWS had the certificate before
    thing_answer: str = ""  # "lost" when CreateThing never answered (the thing is counted as made)
    opened_at: float = 0.0
    updated_at: float = 0.0
    closed_at: float | None = None
    outcome: str | None = None
    unknown: Mapping[str, Any] = field(default_factory=dict)  # read from an older row; never written

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["stage"] = str(self.stage)
        data["unknown"] = dict(self.unknown)
        return data

    @classmethod
    def from_stored(cls, row: Mapping[str, Any]) -> JournalEntry:
        """An entry from a stored row: its columns, times and `extra` (a dict or its JSON text).

        Reads rows of older stations too: a second name is read as its field, an unknown key is kept in
        `unknown`. A stage this version does not know is a ValueError naming the entry.
        """
        values: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        extra = row.get("extra") or {}
        if isinstance(extra, str | bytes):
            extra = json.loads(extra or "{}")
        for source in (extra, row):
            for key, value in source.items():
                if source is row and key in ("extra", "unknown"):
                    if key == "unknown" and isinstance(value, Mapping):
                        unknown.update(value)  # a `to_dict` read back
                    continue
                name = _OLD_NAMES.get(key, key)
                if name in _FIELD_NAMES and name != "unknown":
                    values[name] = value
                elif source is extra:
                    unknown[key] = value
        entry_id = int(values.pop("id"))
        for name in COLUMNS + NOTES:
            if name in BOOLS:
                continue
            values[name] = "" if values.get(name) is None else str(values[name])
        created = values.get("certificate_created")
        values["certificate_created"] = None if created is None else bool(created)
        values["thing_created"] = bool(values.get("thing_created"))
        try:
            values["stage"] = Stage(values["stage"])
        except ValueError:
            raise ValueError(
                f"journal entry {entry_id} has the stage {values['stage']!r}, which this station does not know"
            ) from None
        for name in ("opened_at", "updated_at"):
            values[name] = float(values.get(name) or 0.0)
        if values.get("closed_at") is not None:
            values["closed_at"] = float(values["closed_at"])
        if values.get("outcome") is not None:
            values["outcome"] = str(values["outcome"])
        return cls(id=entry_id, unknown=unknown, **values)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(JournalEntry))


def journal_fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check one journal write and split it into (columns, notes), values normalised.

    Only `WRITABLE` names are accepted: anything else (a second name such as `state`, a misspelling, a key
    the entry has no field for) is a TypeError, and a stage that is not a `Stage` a ValueError, so nothing
    is stored that nobody reads.
    """
    wrong = sorted(set(fields) - WRITABLE)
    if wrong:
        hints = [
            f"{name!r} (the field is {_OLD_NAMES[name]!r})" if name in _OLD_NAMES else repr(name)
            for name in wrong
        ]
        raise TypeError(
            f"unknown journal field{'s' if len(wrong) > 1 else ''} {', '.join(hints)}; "
            f"a journal entry has {', '.join(sorted(WRITABLE))}"
        )
    columns: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "stage":
            value = _stage(value)
        elif name in BOOLS:
            value = None if value is None else bool(value)
        else:
            value = "" if value is None else str(value)
        (notes if name in NOTES else columns)[name] = value
    return columns, notes


def _stage(value: Any) -> Stage:
    try:
        return Stage(value)
    except ValueError:
        known = ", ".join(repr(s.value) for s in Stage)
        raise ValueError(f"unknown journal stage {value!r}; the stages are {known}") from None


class JournalFields(TypedDict, total=False):
    """What one journal write may carry (`WRITABLE`), for type checkers: `**fields: Unpack[JournalFields]`."""

    attempt_id: str
    serial: str
    target: str
    account_id: str
    region: str
    slot: str
    product: str
    certificate_id: str
    certificate_pem: str
    certificate_arn: str
    certificate_created: bool | None
    thing_name: str
    thing_created: bool
    stage: Stage
    station_id: str
    purpose: str
    registry_answer: str
    thing_answer: str
