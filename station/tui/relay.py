"""EventRelay: the `on_event` callable handed to the line, forwarding its events to whichever screen listens.

The line needs its `on_event` callback when it is built, before any screen exists; the screen appears later
and goes away first. The relay sits in between: `Line(config, ledger=…, on_event=relay)`, then the app calls
`relay.attach(sink)` when its operator screen is mounted and `relay.detach()` when it closes. Events that
arrive while nothing is attached are kept (a bounded number) and delivered on attach, so a unit that starts
while the screen is still opening still shows.

It is called from the line's worker threads: it must stay thread-safe, must never raise into the line (a
broken screen must not break provisioning) and must not import textual — it is plain Python.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from station.model import Event

log = logging.getLogger(__name__)

Sink = Callable[[Event], None]


class EventRelay:
    """Thread-safe fan-in point between the line's worker threads and one consumer (the operator screen)."""

    def __init__(self, *, backlog: int = 1000) -> None:
        self._lock = threading.Lock()
        self._sink: Sink | None = None
        self._pending: deque[Event] = deque(maxlen=backlog)

    def __call__(self, event: Event) -> None:
        with self._lock:
            sink = self._sink
            if sink is None:
                self._pending.append(event)
                return
            # Delivered under the lock so that attach() cannot interleave backlog and live events.
            self._deliver(sink, event)

    def attach(self, sink: Sink) -> None:
        """Start delivering to `sink`, first the events that arrived while nobody listened."""
        with self._lock:
            self._sink = sink
            while self._pending:
                self._deliver(sink, self._pending.popleft())

    def detach(self) -> None:
        with self._lock:
            self._sink = None

    @staticmethod
    def _deliver(sink: Sink, event: Event) -> None:
        try:
            sink(event)
        except Exception:  # e.g. the app's event loop already closed while a unit was finishing
            log.debug("event %s for %s not delivered to the screen", event.kind, event.serial, exc_info=True)
