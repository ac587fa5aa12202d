"""The unit's current truth: its state and its live identity per target, derived from its attempt records.

A unit (serial) has many attempts (provision, register, re-verify, revoke, transfer, reconcile) but one
current state. `apply(previous, record)` is the only rule that turns an attempt record into the unit's next
state; the ledger calls it in the same transaction that stores the record (so the state table is always what
a replay of the chain gives), and `station audit verify` replays every record through it and compares.

States (`UnitStateName`):
- `provisioned`  — at least one live identity, proven by a verify (PASS);
- `registered`   — a live identity registered by QA without a verify (never shown as PASS);
- `failed`       — attempts were made and none left a live identity;
- `revoked`      — the unit had a live identity and QA (or the station) revoked the last of them;
- `transferred`  — the unit's certificate was moved to another target; `live` says where it now is;
- `superseded`   — a re-provision replaced the unit's identity but the old certificate is not revoked yet
                   (`pending_revoke` names it; the station's clean-up or reconcile finishes the job).

The record fields this module reads: `action`, `outcome`, `target`, `certificate_id`, `thing_name`,
`account_id`, `region`, `finished_at`, `operator`, `station_id`, `slot`, `attempt_id`, and in `extra`:
`revoked` (certificate ids a revoke removed), `source_target` / `source_revoked` (transfer), `replaced`
(certificate ids a re-provision superseded) and `replaced_revoked` (those of them revoked in AWS).

It must not do I/O, know a ledger backend, or read anything but the record it is given and the previous
state: a state that needed anything else could not be rebuilt from the chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol


class UnitStateName(StrEnum):
    PROVISIONED = "provisioned"
    REGISTERED = "registered"
    FAILED = "failed"
    REVOKED = "revoked"
    TRANSFERRED = "transferred"
    SUPERSEDED = "superseded"


class Action(StrEnum):
    """What an attempt did to a unit: the `action` of its record."""

    PROVISION = "provision"  # the line's pipeline
    REGISTER = "register"  # QA import of a certificate made elsewhere
    REVERIFY = "reverify"
    REVOKE = "revoke"
    TRANSFER = "transfer"
    RECONCILE = "reconcile"  # the station cleaning up what a stopped or failed attempt left in AWS


LIVE_STATES = frozenset(
    {UnitStateName.PROVISIONED, UnitStateName.REGISTERED, UnitStateName.TRANSFERRED, UnitStateName.SUPERSEDED}
)


class RecordLike(Protocol):
    """The part of `station.ledger.AttemptRecord` the rule reads (kept structural: no import of the ledger)."""

    @property
    def attempt_id(self) -> str: ...
    @property
    def serial(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def certificate_id(self) -> str: ...
    @property
    def thing_name(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def station_id(self) -> str: ...
    @property
    def slot(self) -> str: ...
    @property
    def operator(self) -> str: ...
    @property
    def finished_at(self) -> float: ...
    @property
    def extra(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LiveIdentity:
    """A certificate of the unit that is registered (ACTIVE) in one target, as far as the ledger knows."""

    target: str
    certificate_id: str
    thing_name: str = ""
    account_id: str = ""
    region: str = ""
    since: float = 0.0  # epoch seconds of the attempt that made it live
    attempt_id: str = ""
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveIdentity:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class UnitState:
    """One unit's current truth. `live` is ordered by target name; `pending_revoke` lists certificate ids the
    unit no longer uses that are still registered in AWS (a replace whose revoke did not go through)."""

    serial: str
    state: str
    state_changed_at: float
    changed_by: str = ""
    station_id: str = ""
    slot: str = ""
    last_attempt_id: str = ""
    last_action: str = ""
    last_outcome: str = ""
    attempts: int = 0
    live: tuple[LiveIdentity, ...] = ()
    pending_revoke: tuple[str, ...] = ()
    note: str = ""  # one sentence for people: "transferred to prod-us", "replaced 1a2b… by 3c4d…"
    extra: dict[str, Any] = field(default_factory=dict)

    # -- reading ------------------------------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        return bool(self.live)

    def live_in(self, target: str) -> LiveIdentity | None:
        return next((i for i in self.live if i.target == target), None)

    @property
    def primary(self) -> LiveIdentity | None:
        """The newest live identity (what a person means by "the unit's certificate")."""
        return max(self.live, key=lambda i: i.since, default=None)

    @property
    def changed_at_iso(self) -> str:
        return iso_utc(self.state_changed_at)

    def label(self) -> str:
        """`revoked 2026-12-05 by qa` — the state with when and by whom, for lists and details."""
        when = self.changed_at_iso[:10] if self.state_changed_at else ""
        text = self.state
        if self.state == UnitStateName.REGISTERED:
            text = "registered (not verified)"
        parts = [text]
        if when:
            parts.append(when)
        if self.changed_by:
            parts.append(f"by {self.changed_by}")
        return " ".join(parts)

    # -- storage ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["live"] = [i.to_dict() for i in self.live]
        data["pending_revoke"] = list(self.pending_revoke)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitState:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["live"] = tuple(LiveIdentity.from_dict(i) for i in data.get("live") or ())
        kwargs["pending_revoke"] = tuple(str(c) for c in data.get("pending_revoke") or ())
        kwargs["extra"] = dict(data.get("extra") or {})
        return cls(**kwargs)


def iso_utc(epoch: float) -> str:
    """ISO-8601 UTC with seconds (`2026-12-05T16:40:00Z`); empty for 0 (never)."""
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ids(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def apply(previous: UnitState | None, record: RecordLike) -> UnitState:
    """The unit's state after `record`. Pure: the same records in the same order give the same state."""
    action = str(getattr(record, "action", "") or Action.PROVISION)
    outcome = str(record.outcome)
    extra = dict(record.extra or {})
    at = float(record.finished_at or 0.0)
    live = {i.target: i for i in (previous.live if previous else ())}
    pending = list(previous.pending_revoke if previous else ())
    state = previous.state if previous else UnitStateName.FAILED
    note = previous.note if previous else ""
    changed_at = previous.state_changed_at if previous else at
    changed_by = previous.changed_by if previous else record.operator
    ok = outcome in ("PASS", "DONE")

    def made_live(verified: bool) -> LiveIdentity:
        return LiveIdentity(
            target=record.target,
            certificate_id=record.certificate_id,
            thing_name=record.thing_name,
            account_id=record.account_id,
            region=record.region,
            since=at,
            attempt_id=record.attempt_id,
            verified=verified,
        )

    def drop(certificate_ids: Iterable[str]) -> None:
        gone = set(certificate_ids)
        for target, identity in list(live.items()):
            if identity.certificate_id in gone:
                del live[target]

    new_state: str | None = None
    if action in (Action.PROVISION, Action.REGISTER) and ok and record.certificate_id:
        replaced = _ids(extra.get("replaced"))
        revoked = set(_ids(extra.get("replaced_revoked")))
        drop(replaced)
        live[record.target] = made_live(verified=outcome == "PASS")
        pending = [c for c in pending if c not in revoked] + [c for c in replaced if c not in revoked]
        if pending:
            new_state = UnitStateName.SUPERSEDED
            note = f"replaced {', '.join(c[:12] for c in replaced)} by {record.certificate_id[:12]}; old not yet revoked"
        elif outcome == "PASS":
            new_state = UnitStateName.PROVISIONED
            note = (
                f"replaced {', '.join(c[:12] for c in replaced)} by {record.certificate_id[:12]}"
                if replaced
                else ""
            )
        else:
            new_state = UnitStateName.REGISTERED
            note = ""
    elif action in (Action.PROVISION, Action.REGISTER):
        # A failed attempt leaves a live unit as it was (the refuse policy, or a failed replace).
        if not live:
            new_state = UnitStateName.FAILED
            note = ""
    elif action == Action.REVOKE and ok:
        gone = _ids(extra.get("revoked")) or _ids(record.certificate_id)
        drop(gone)
        pending = [c for c in pending if c not in set(gone)]
        if not live:
            new_state = UnitStateName.REVOKED
            note = ""
        elif not pending and state == UnitStateName.SUPERSEDED:
            new_state = UnitStateName.PROVISIONED
            note = ""
    elif action == Action.TRANSFER and ok and record.certificate_id:
        source = str(extra.get("source_target", ""))
        if extra.get("source_revoked") and source in live:
            del live[source]
        live[record.target] = made_live(verified=outcome == "PASS")
        new_state = UnitStateName.TRANSFERRED
        where = f"{record.target} ({record.account_id}/{record.region})"
        note = f"transferred to {where}" + (f", revoked in {source}" if extra.get("source_revoked") else "")
    elif action == Action.RECONCILE and ok:
        drop(_ids(extra.get("revoked")))
        pending = [c for c in pending if c not in set(_ids(extra.get("revoked")))]
        if not live:
            new_state = UnitStateName.FAILED if state != UnitStateName.REVOKED else state
        elif state == UnitStateName.SUPERSEDED and not pending:
            new_state = UnitStateName.PROVISIONED
            note = ""
    # REVERIFY never changes what is live; its outcome shows as the unit's last outcome.

    if new_state is not None and (new_state != state or previous is None):
        state = new_state
        changed_at = at
        changed_by = record.operator or record.station_id
    elif new_state is not None:
        changed_at = at
        changed_by = record.operator or record.station_id
    return UnitState(
        serial=record.serial,
        state=str(state),
        state_changed_at=changed_at,
        changed_by=changed_by,
        station_id=record.station_id,
        slot=record.slot,
        last_attempt_id=record.attempt_id,
        last_action=action,
        last_outcome=outcome,
        attempts=(previous.attempts if previous else 0) + 1,
        live=tuple(live[t] for t in sorted(live)),
        pending_revoke=tuple(dict.fromkeys(pending)),
        note=note,
    )


def replay(records: Iterable[RecordLike]) -> dict[str, UnitState]:
    """Every unit's state from its records in chain order (what the state table must equal)."""
    states: dict[str, UnitState] = {}
    for record in records:
        states[record.serial] = apply(states.get(record.serial), record)
    return states


@dataclass(frozen=True)
class UnitFilter:
    """What the desk's list is narrowed to (None: any), as `station units` takes it: `target` is the target
    of the unit's live identity (or of its last attempt), `station` the station of its last attempt, and
    `since`/`until` (epoch seconds, inclusive/exclusive) bound its last attempt's time."""

    state: str | None = None
    outcome: str | None = None
    target: str | None = None
    station: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def query(self) -> dict[str, Any]:
        """The keyword arguments of `Ledger.unit_page`."""
        return dataclasses.asdict(self)

    def matches(self, unit: Any, record: Any) -> bool:
        """Does a unit found by search pass the filter (the same rules as `unit_page`)?"""
        primary = unit.primary
        target = primary.target if primary is not None else getattr(record, "target", "")
        at = (getattr(record, "finished_at", 0.0) or getattr(record, "started_at", 0.0)) if record else 0.0
        station = getattr(record, "station_id", "") if record is not None else unit.station_id
        return (
            (self.state is None or unit.state == self.state)
            and (self.outcome is None or unit.last_outcome == self.outcome)
            and (self.target is None or target == self.target)
            and (self.station is None or station == self.station)
            and (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
        )
