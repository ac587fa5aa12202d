"""The line's cleaner: removes what failed or interrupted attempts left in AWS, by itself, once AWS answers.

    cleaner = Cleaner(ledger, run=reconcile_some, station_id="line1-st3", in_flight=line_attempts)
    cleaner.start()          # a daemon thread: one round at once, then every `interval_s`
    cleaner.pending          # → how many of this station's journal entries still wait for clean-up
    cleaner.stop()           # with the line

A journal entry stays open when an attempt's undo in AWS failed (the pipeline marks it `cleanup_pending`) or
when the station was killed mid-unit. The cleaner resolves them with the one reconcile there is
(`station.pipeline.reconcile`, through `run(include, on_event)`): a round retries every entry that is

- this station's (the entry's `station_id`; entries of other stations, and entries without one, are left to
  `station reconcile`),
- not an attempt in flight in one of the line's slots (`in_flight()` gives their attempt ids),
- over: marked `cleanup_pending` by its attempt, or opened before this cleaner started (a previous run of
  the station died with it open) and untouched for `settle_s` (default 3 × `interval_s`: a second process
  wrongly running under the same station id updates its entries after every AWS step). Anything else may
  be a unit (or a QA action) still in progress.

Rounds that leave something unresolved back off (doubling from `interval_s` up to `max_interval_s`); each
entry gets at most `max_attempts` rounds, after which it is left for `station reconcile` and counted in
`gave_up` (it still counts as pending: AWS still holds it). A round that resolves everything goes back to
the plain interval. `station reconcile` stays for the offline case (no line running).

It must not: talk to AWS itself (reconcile does), decide what is rolled back (reconcile's rule), or touch an
entry another station or a live slot owns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from station.journal import JournalEntry, Stage
from station.model import Event
from station.pipeline import ReconcileItem

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
DEFAULT_MAX_INTERVAL_S = 30.0
DEFAULT_MAX_ATTEMPTS = 120  # rounds per entry: ≥ an hour at the longest back-off


class CleanupTimes(Protocol):
    """The cleaner's pace from the station's configuration (`station.config.StationConfig`)."""

    @property
    def cleanup_interval_s(self) -> float: ...
    @property
    def cleanup_max_interval_s(self) -> float: ...


@runtime_checkable
class CleanerContext(Protocol):
    """What a line's wiring offers for its cleaner (`station.context.StationContext`); test wiring without
    it gets no cleaner."""

    @property
    def ledger(self) -> Any: ...
    @property
    def station_id(self) -> str: ...
    @property
    def config(self) -> CleanupTimes: ...
    def reconcile(
        self,
        *,
        include: Callable[[JournalEntry], bool] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> list[ReconcileItem]: ...


RunReconcile = Callable[[Callable[[JournalEntry], bool], Callable[[Event], None] | None], list[ReconcileItem]]


class Cleaner:
    """A background thread that keeps this station's journal clean (see the module docstring)."""

    def __init__(
        self,
        ledger: Any,
        *,
        run: RunReconcile,
        station_id: str,
        in_flight: Callable[[], Collection[str]] = frozenset,
        on_event: Callable[[Event], None] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_interval_s: float = DEFAULT_MAX_INTERVAL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        settle_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not station_id:
            raise ValueError("the cleaner needs the station id whose journal entries it may touch")
        if interval_s <= 0 or max_interval_s < interval_s or max_attempts < 1:
            raise ValueError("need 0 < interval_s ≤ max_interval_s and max_attempts ≥ 1")
        self._ledger = ledger
        self._run = run
        self.station_id = station_id
        self._in_flight = in_flight
        self._on_event = on_event
        self.interval_s = float(interval_s)
        self.max_interval_s = float(max_interval_s)
        self.max_attempts = int(max_attempts)
        self.settle_s = 3 * self.interval_s if settle_s is None else float(settle_s)
        self._clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._attempts: dict[Any, int] = {}  # journal id → rounds that failed to resolve it
        self._pending = 0
        self._gave_up = 0
        self._rounds = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ the API
    @property
    def pending(self) -> int:
        """This station's journal entries still waiting for clean-up (as of the last round)."""
        with self._lock:
            return self._pending

    @property
    def gave_up(self) -> int:
        """Entries the cleaner stopped retrying (`max_attempts` reached): `station reconcile` is needed."""
        with self._lock:
            return self._gave_up

    @property
    def rounds(self) -> int:
        with self._lock:
            return self._rounds

    def start(self) -> Cleaner:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cleanup", daemon=True)
            self._thread.start()
        return self

    def poke(self) -> None:
        """Run a round now instead of at the end of the current wait."""
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """End the thread (a round in progress finishes first; reconcile's AWS calls are bounded)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ a round
    def mine(self, entry: JournalEntry, in_flight: Collection[str] | None = None) -> bool:
        """May the cleaner act on this entry now? (this station's, not in a live slot, and over)"""
        if entry.station_id != self.station_id:
            return False
        flying = self._in_flight() if in_flight is None else in_flight
        if entry.attempt_id in flying:
            return False
        if entry.stage == Stage.CLEANUP_PENDING:
            return True
        if entry.opened_at >= self.started_at:
            return False
        return self._clock() - entry.updated_at >= self.settle_s

    def run_once(self) -> bool:
        """One round; True when nothing of this station is left pending (or only given-up entries)."""
        flying = set(self._in_flight())
        entries = [e for e in self._ledger.journal_pending() if self.mine(e, flying)]
        with self._lock:
            todo = {e.id for e in entries if self._attempts.get(e.id, 0) < self.max_attempts}
        failed: set[Any] = set()
        if todo:
            items = self._run(lambda entry: entry.id in todo, self._emit)
            failed = {i.journal_id for i in items if i.action in ("failed", "skipped")}
            for item in items:
                log.info("cleanup: %s %s %s", item.action, item.serial, item.detail)
        left = [e for e in self._ledger.journal_pending() if self.mine(e, flying)]
        left_ids = {e.id for e in left}
        with self._lock:
            self._rounds += 1
            for jid in failed & left_ids:
                self._attempts[jid] = self._attempts.get(jid, 0) + 1
                if self._attempts[jid] == self.max_attempts:
                    log.error(
                        "cleanup: gave up on journal entry %s after %d rounds; run `station reconcile`",
                        jid,
                        self.max_attempts,
                    )
            for jid in list(self._attempts):
                if jid not in left_ids:
                    del self._attempts[jid]
            self._pending = len(left)
            self._gave_up = sum(1 for n in self._attempts.values() if n >= self.max_attempts)
            return self._pending == self._gave_up

    def _emit(self, event: Event) -> None:
        # Reconcile names the slot the entry came from; on a screen that slot now shows another unit.
        if self._on_event is not None:
            self._on_event(replace(event, slot=""))

    def _loop(self) -> None:
        delay = 0.0
        failures = 0
        while not self._stop.is_set():
            if delay:
                self._wake.wait(delay)
                self._wake.clear()
                if self._stop.is_set():
                    break
            try:
                clean = self.run_once()
            except Exception:  # the ledger or the wiring failed: try again later, never end the thread
                log.exception("cleanup round failed")
                clean = False
            failures = 0 if clean else failures + 1
            delay = min(self.interval_s * (2 ** min(failures, 16)), self.max_interval_s)


def cleaner_for(
    context: object,
    *,
    in_flight: Callable[[], Collection[str]],
    on_event: Callable[[Event], None] | None,
) -> Cleaner | None:
    """The cleaner of a line built over `context` (a `CleanerContext`), or None when the context cannot
    reconcile (test wiring that is not one, or has no ledger or station id)."""
    if not isinstance(context, CleanerContext) or context.ledger is None or not context.station_id:
        return None
    ledger, station_id, reconcile = context.ledger, context.station_id, context.reconcile
    interval = float(context.config.cleanup_interval_s)
    longest = float(context.config.cleanup_max_interval_s)

    def run(
        include: Callable[[JournalEntry], bool], emit: Callable[[Event], None] | None
    ) -> list[ReconcileItem]:
        return list(reconcile(include=include, on_event=emit))

    return Cleaner(
        ledger,
        run=run,
        station_id=station_id,
        in_flight=in_flight,
        on_event=on_event,
        interval_s=interval,
        max_interval_s=max(longest, interval),
    )
