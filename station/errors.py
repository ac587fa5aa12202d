"""The station's error families: what went wrong, in operator words, and what to do next.

Every failure the station reports is a `StationError` carrying a short title, one plain sentence of message
and the next action. Two families decide a unit's outcome by type, never by string matching:

- `UnitFault`   → FAIL: the unit is bad (rework bin).
- `StationFault` → ERROR: the station, network or cloud is broken (call a technician).

This module must not import anything from the rest of the station, and an error's text must never contain
private key material.
"""

from __future__ import annotations


class StationError(Exception):
    """Base of every error the station reports to a person.

    `title` is a few words for a banner, `message` says what happened, `next_action` what to do now.
    """

    outcome = "ERROR"
    # A registry's CreateThing that never answered names the thing here: it was absent a moment before, so
    # if it exists now this attempt made it (the pipeline then owns it and its rollback deletes it).
    thing_maybe_created: str | None = None

    def __init__(self, title: str, message: str, next_action: str) -> None:
        super().__init__(f"{title}: {message} Next: {next_action}")
        self.title = title
        self.message = message
        self.next_action = next_action

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": type(self).__name__,
            "outcome": self.outcome,
            "title": self.title,
            "message": self.message,
            "next_action": self.next_action,
        }


class UnitFault(StationError):
    """The unit is bad: the outcome is FAIL and the unit goes to the rework bin."""

    outcome = "FAIL"


class StationFault(StationError):
    """The station, its network or the cloud is broken: the outcome is ERROR; call a technician."""

    outcome = "ERROR"


class InputError(StationError):
    """What a person typed or supplied is unusable (a mistyped scan, a malformed file, a bad config).

    Nothing was attempted; the person fixes the input and tries again.
    """

    outcome = "ERROR"


class ConfigError(InputError):
    """The station configuration is invalid; the message points at the file, line and field."""


class CertificateRejected(InputError):
    """A certificate breaks AWS IoT's acceptance rules (checked locally, before any AWS call)."""
