"""One recorded attempt: the machinery every action on a unit shares (the pipeline, QA register, transfer,
revoke and re-verify, reconcile).

An `Attempt` holds what one attempt accumulates while it runs and writes it once at the end:

- events (`emit`): handed to the live listener at once (the operator screen, the desk) and kept for the ledger,
  which gets them together with the attempt record;
- steps (`step`): `step_started` / `step_finished` events and the step's duration in `timings_ms`;
- the crash journal (`journal_open` / `journal` / `journal_close`): opened before the first AWS side effect,
  updated after each AWS step, closed only when the record is written and AWS holds nothing unaccounted for;
- compensations (`undo`): registered as the attempt goes (what to undo if it fails from here on), run by
  `compensate` — AWS first (a live certificate is the worse leftover), newest first, then the device — each one
  an event and a line of the record;
- the outcome from the exception's type (`classify`, `outcome_of`): `UnitFault` → FAIL, any other
  `StationError` → ERROR, anything unexpected → ERROR with a generic message (the traceback to the log,
  key material redacted), an interrupt → ERROR "Station interrupted";
- the record (`record`): one `AttemptRecord` with its `action`, timings, compensations and times;
- `run(body, conclude=…)`: all of that around one action's work (QA's actions run on it; the pipeline uses
  the same parts around its own step order, since it also closes the unit's port and re-raises interrupts).

What an action does (its steps and their order) stays with the action: the pipeline's order only in
`station.pipeline`, each QA action in its module of `station.qa`.

It must not: import boto3, serial, awscrt, textual or the lab; hold a key; decide anything by message text.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, Unpack

from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.journal import JournalFields, Stage
from station.model import Event, Outcome
from station.plain import plain_dict
from station.units import Action

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]
T = TypeVar("T")

# Compensation actions that undo something in AWS (run before the device's).
CLOUD_UNDO = frozenset({"rollback", "revoke"})


class AttemptLedger(Protocol):
    """What an attempt needs from the ledger (`station.ledger.Ledger`)."""

    def record_attempt(self, record: Any, *, events: Sequence[Event] = ()) -> Any: ...
    def append_event(self, event: Event) -> Any: ...
    def journal_open(self, **fields: Unpack[JournalFields]) -> Any: ...
    def journal_update(self, journal_id: Any, **fields: Unpack[JournalFields]) -> Any: ...
    def journal_close(self, journal_id: Any, outcome: str | None = None) -> Any: ...


# ---------------------------------------------------------------------------------------------------------
# Outcome by exception type (the only copy)
# ---------------------------------------------------------------------------------------------------------


def unexpected_fault() -> StationFault:
    return StationFault(
        _("Station error"),
        _("An unexpected error stopped this unit; the details are in the station log."),
        _("Call a technician; scan the unit again once the station is fixed."),
    )


def interrupted_fault() -> StationFault:
    return StationFault(
        _("Station interrupted"),
        _("The station was stopped while working on this unit; what was done in AWS was rolled back."),
        _("Run it again when the station is running."),
    )


def classify(exc: BaseException) -> StationError:
    """The error a person sees: a StationError keeps its own; anything else is a station fault."""
    if isinstance(exc, StationError):
        return exc
    if isinstance(exc, Exception):
        return unexpected_fault()
    return interrupted_fault()


def outcome_of(error: StationError | None, *, proved: bool = True) -> Outcome:
    """PASS (or DONE when the action proved nothing about the identity) without an error; FAIL for a unit
    fault; ERROR otherwise."""
    if error is None:
        return Outcome.PASS if proved else Outcome.DONE
    return Outcome.FAIL if isinstance(error, UnitFault) else Outcome.ERROR


_PEM_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)


def redact(text: str) -> str:
    """Remove any private key PEM block from a text meant for a log."""
    return _PEM_KEY.sub("<private key redacted>", text)


def log_unexpected(what: str, serial: str, exc: BaseException) -> None:
    log.error(
        "%s of %s failed unexpectedly:\n%s", what, serial, redact("".join(traceback.format_exception(exc)))
    )


# ---------------------------------------------------------------------------------------------------------
# Compensations
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Compensation:
    """One undo an attempt ran after a failure: what, whether it worked, and why not."""

    action: str  # "rollback" | "revoke" | "wipe"
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)


_UNDO_TEXT = {  # translated where an undo is reported
    "rollback": N_("What this attempt made in AWS was deleted."),
    "revoke": N_("The certificate found registered after a failed register was deleted."),
    "wipe": N_("The device's staged credentials were wiped."),
}


@dataclass
class _Undo:
    key: str
    action: str
    fn: Callable[[], Any]
    skip_if_false: bool
    data: dict[str, Any]
    done_text: str | None = None


# ---------------------------------------------------------------------------------------------------------
# The attempt
# ---------------------------------------------------------------------------------------------------------


class Attempt:
    """One attempt on one unit. Thread-safe where the pipeline needs it (write ‖ register emit and register
    undos from two threads)."""

    def __init__(
        self,
        ledger: AttemptLedger,
        *,
        serial: str,
        action: str = Action.PROVISION,
        slot: str = "",
        station_id: str = "",
        operator: str = "",
        on_event: EventSink | None = None,
        attempt_id: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.serial = serial
        self.action = str(action)
        self.slot = slot
        self.station_id = station_id
        self.operator = operator
        self.on_event = on_event
        self.attempt_id = attempt_id or uuid.uuid4().hex
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.timings_ms: dict[str, float] = {}
        self.compensations: list[Compensation] = []
        self.journal_id: Any = None
        self.events: list[Event] = []  # what the ledger gets with the record
        self._undos: list[_Undo] = []
        self._lock = threading.RLock()
        self.recorded = False
        self.journal_closed = False

    # ----------------------------------------------------------------------------------------- events
    def emit(self, kind: str, *, keep: bool = True, publish: bool = True, **fields: Any) -> Event:
        """Publish an event to the listener now and keep it for the ledger (`keep=False`: listener only;
        `publish=False`: kept now, published by the caller later with `publish`)."""
        fields.setdefault("slot", self.slot)
        event = Event(kind=kind, serial=self.serial or "-", **fields)
        # One lock: two threads emit at once and consumers want events one after another, in order.
        with self._lock:
            if keep:
                self.events.append(event)
            if publish:
                self.publish(event)
        return event

    def publish(self, event: Event) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken screen must not break the unit
            log.exception("event consumer failed on %s", event.kind)

    def step(self, name: str, fn: Callable[[], Any], *, keep_finish: bool = True) -> Any:
        """Run one step: its events and its duration in `timings_ms` (`keep_finish=False`: the step that
        writes the record, whose end the ledger cannot hold)."""
        self.emit("step_started", step=name)
        start = time.perf_counter()
        ok = False
        try:
            value = fn()
            ok = True
            return value
        finally:
            ms = (time.perf_counter() - start) * 1000.0
            with self._lock:
                self.timings_ms[name] = round(ms, 3)
            self.emit(
                "step_finished", keep=keep_finish, step=name, outcome="ok" if ok else "failed", duration_ms=ms
            )

    def total(self) -> float:
        ms = round((time.perf_counter() - self._t0) * 1000.0, 3)
        self.timings_ms["total"] = ms
        return ms

    # ---------------------------------------------------------------------------------------- journal
    def journal_open(self, **fields: Unpack[JournalFields]) -> Any:
        """Open the crash journal (before the first AWS side effect)."""
        fields.setdefault("attempt_id", self.attempt_id)
        fields.setdefault("serial", self.serial)
        fields.setdefault("slot", self.slot)
        self.journal_id = self.ledger.journal_open(**fields)
        return self.journal_id

    def journal(self, **fields: Unpack[JournalFields]) -> None:
        """Update the open journal entry (nothing when none is open)."""
        if self.journal_id is not None:
            self.ledger.journal_update(self.journal_id, **fields)

    def journal_close(self, outcome: str) -> bool:
        """Close the journal when the record is written and no AWS undo failed (else reconcile needs it)."""
        if self.journal_id is None or not self.recorded or not self.aws_clean:
            return False
        try:
            self.ledger.journal_close(self.journal_id, outcome=outcome)
        except Exception:
            log.exception("could not close the journal of %s", self.serial)
            return False
        self.journal_closed = True
        return True

    @property
    def aws_clean(self) -> bool:
        """No undo in AWS failed: nothing this attempt made is left unaccounted for."""
        return not any(c.action in CLOUD_UNDO and not c.ok for c in self.compensations)

    # ---------------------------------------------------------------------------------- compensations
    def undo(
        self,
        key: str,
        action: str,
        fn: Callable[[], Any],
        *,
        skip_if_false: bool = False,
        done_text: str | None = None,
        **data: Any,
    ) -> None:
        """From now on, a failure runs `fn` (compensation `action`; `done_text` says what it did when the
        usual words would not be true). A second `undo` with the same key replaces the first in place (e.g.
        "revoke if it is there" becomes "roll back what register made")."""
        entry = _Undo(key, action, fn, skip_if_false, data, done_text)
        with self._lock:
            for i, existing in enumerate(self._undos):
                if existing.key == key:
                    self._undos[i] = entry
                    return
            self._undos.append(entry)

    def forget(self, key: str) -> None:
        with self._lock:
            self._undos = [u for u in self._undos if u.key != key]

    def compensate(self) -> None:
        """Run the registered undos once: AWS first (newest first), then the rest (newest first)."""
        with self._lock:
            undos, self._undos = self._undos, []
        cloud = [u for u in reversed(undos) if u.action in CLOUD_UNDO]
        rest = [u for u in reversed(undos) if u.action not in CLOUD_UNDO]
        for entry in cloud + rest:
            self._run_undo(entry)

    def _run_undo(self, entry: _Undo) -> None:
        start = time.perf_counter()
        try:
            value = entry.fn()
        except BaseException as exc:
            detail = exc.message if isinstance(exc, StationError) else type(exc).__name__
            if not isinstance(exc, StationError):
                log_unexpected(f"compensation {entry.action}", self.serial, exc)
            comp = Compensation(entry.action, False, detail)
        else:
            if entry.skip_if_false and value is False:
                return  # nothing was there to undo
            comp = Compensation(
                entry.action, True, _(entry.done_text or _UNDO_TEXT.get(entry.action, N_("done")))
            )
        with self._lock:
            self.compensations.append(comp)
        if entry.action in CLOUD_UNDO and comp.ok:
            try:
                self.journal(stage=Stage.ROLLED_BACK)
            except Exception:
                log.exception("could not mark the journal of %s rolled back", self.serial)
        self.emit(
            "compensation",
            step=entry.action,
            outcome="ok" if comp.ok else "failed",
            duration_ms=(time.perf_counter() - start) * 1000.0,
            message=comp.detail,
            data=dict(entry.data),
        )

    # ----------------------------------------------------------------------------------------- record
    def record_fields(self) -> dict[str, Any]:
        """The fields of the record this attempt owns (the action adds what it knows about the unit)."""
        return {
            "attempt_id": self.attempt_id,
            "serial": self.serial,
            "action": self.action,
            "slot": self.slot,
            "station_id": self.station_id,
            "operator": self.operator,
            "timings_ms": dict(self.timings_ms),
            "compensations": [c.as_dict() for c in self.compensations],
            "started_at": self.started_at,
        }

    def record(self, record: Any) -> Any:
        """Hand the record and the events kept so far to the ledger (one write)."""
        value = store(self.ledger, record, self.events)
        self.recorded = True
        return value

    def run(
        self,
        body: Callable[[], T],
        *,
        conclude: Callable[[StationError | None], Mapping[str, Any]],
        not_recorded: Callable[[str], StationError] | None = None,
    ) -> T:
        """Run an attempt whose work is `body` (registering its undos as it goes) and record it once.

        `conclude(error)` emits the action's own events and returns the record's fields (outcome, title,
        message, …) for the error, or for success (None). On failure: compensate, record, close the journal
        when nothing is left in AWS, and raise — an undo that failed first (something is left in AWS), else
        the error itself (an interrupt is re-raised after all that). On success: record; a record that cannot
        be written undoes the attempt and raises "Ledger unavailable" — or, for an action that cannot be
        undone (a revoke), raises `not_recorded(detail)`.
        """
        try:
            value = body()
        except BaseException as exc:
            error = classify(exc)
            if error is not exc and isinstance(exc, Exception):
                log_unexpected(self.action, self.serial, exc)
            self.compensate()
            failed_undo = next((c for c in self.compensations if not c.ok), None)
            try:
                fields = conclude(error)
                self.total()
                self.build_and_record(fields)
                self.journal_close(str(fields.get("outcome", Outcome.ERROR)))
            except Exception:
                log.error("could not record the failed %s of %s", self.action, self.serial)
                self.flush_events()
            if not isinstance(exc, Exception):
                raise
            if failed_undo is not None:
                raise StationFault(
                    _("Undo failed"),
                    _("{message} Undoing what the {action} made in AWS failed too: {detail}").format(
                        message=error.message, action=self.action, detail=failed_undo.detail
                    ),
                    _("Run `station reconcile` once AWS answers; if it keeps failing, call a technician."),
                ) from None
            if error is exc:
                raise
            raise error from None
        try:
            fields = conclude(None)
            self.total()
            self.build_and_record(fields)
        except Exception as exc:
            detail = exc.message if isinstance(exc, StationError) else type(exc).__name__
            log.error("could not record the %s of %s: %s", self.action, self.serial, detail)
            self.flush_events()
            if not_recorded is not None:
                raise not_recorded(detail) from None
            self.compensate()
            raise StationFault(
                _("Ledger unavailable"),
                _(
                    "The station could not write the record of {serial}, so the {action} was undone "
                    "({detail})."
                ).format(serial=self.serial, action=self.action, detail=detail),
                _("Call a technician to check the ledger; then run the action again."),
            ) from None
        self.journal_close(str(fields.get("outcome", Outcome.PASS)))
        return value

    def flush_events(self) -> None:
        """Hand the kept events to the ledger without a record (an attempt that ends before it has one, e.g.
        a QA action refused by AWS before it changed anything). Never raises: the error matters more."""
        events, self.events = self.events, []
        for event in events:
            try:
                self.ledger.append_event(event)
            except Exception:
                log.exception("could not append event %s of %s to the ledger", event.kind, event.serial)

    def build_and_record(self, fields: Mapping[str, Any]) -> Any:
        """Build an `AttemptRecord` from this attempt's fields plus `fields`, and record it."""
        from station.ledger.base import AttemptRecord

        merged = {**self.record_fields(), **dict(fields)}
        merged.setdefault("finished_at", time.time())
        return self.record(AttemptRecord.from_fields(merged))


def store(ledger: Any, record: Any, events: list[Event]) -> Any:
    """The record with its events and the unit's new state, in one ledger transaction."""
    return ledger.record_attempt(record, events=tuple(events))
