"""Typed, past-tense messages that carry what happened elsewhere (the line's threads, workers) to the screens.

The line calls `on_event` from its worker threads; `message_for` turns each `station.model.Event` into one
of these, and the relay posts it with `post_message` (thread-safe). Widgets are only ever touched by the
handlers of these messages, on the UI thread.

It must not touch widgets or do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.message import Message

from station.model import Event


class LineEventMessage(Message):
    """Base of the messages made from the line's events; `event` is the original, unchanged."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class UnitStarted(LineEventMessage):
    """A unit entered the pipeline on a slot."""


class StepStarted(LineEventMessage):
    """A pipeline step began."""


class StepFinished(LineEventMessage):
    """A pipeline step ended (ok or failed), with its duration."""


class CompensationRan(LineEventMessage):
    """An undo ran after a failure (rollback in AWS, wipe on the device)."""


class UnitFinished(LineEventMessage):
    """A unit reached its outcome: PASS, FAIL or ERROR, with a reason and the next action."""


class NoteAdded(LineEventMessage):
    """Anything else the station wants written in the log."""


_BY_KIND: dict[str, type[LineEventMessage]] = {
    "unit_started": UnitStarted,
    "step_started": StepStarted,
    "step_finished": StepFinished,
    "compensation": CompensationRan,
    "unit_finished": UnitFinished,
}


def message_for(event: Event) -> LineEventMessage:
    """The message for one of the line's events (unknown kinds become a note, never an error)."""
    return _BY_KIND.get(event.kind, NoteAdded)(event)


class ScanAccepted(Message):
    """The line took a scan and queued the unit on `slot`."""

    def __init__(self, serial: str, slot: str) -> None:
        super().__init__()
        self.serial = serial
        self.slot = slot


class ScanRefused(Message):
    """A scan was refused before anything started: a title, one sentence and what to do."""

    def __init__(self, text: str, title: str, message: str, next_action: str) -> None:
        super().__init__()
        self.text = text
        self.title = title
        self.message = message
        self.next_action = next_action


class SlotsRefreshed(Message):
    """The line's own view of its slots (polled in a worker)."""

    def __init__(self, slots: Sequence[Any]) -> None:
        super().__init__()
        self.slots = list(slots)
