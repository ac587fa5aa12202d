"""What the operator reads about a finished unit or a refused scan: a few words why and one thing to do.

The core's errors carry a title, a message and a next action written for whoever reads the record or the
log: they name security tags, accounts, proxies. The operator at the bench needs less: the outcome, a
short reason (the error's title) and one plain next action, the same for every unit with that outcome
unless the core's own next action is already about the unit in front of them. This module makes that
choice; the full message and the core's next action still go to the log and the record, unchanged.

It must not change what the core decides (the outcome), nor rewrite the core's errors: it only picks the
words shown on a card or in the message line.
"""

from __future__ import annotations

from station.i18n import N_, _
from station.model import Outcome

MAX_SHOWN_SCAN = 24  # characters of a refused scan repeated in the message line

# Core titles whose words are the station's, not the bench's, and core next actions too long for a card:
# the operator's version, keyed by the error's title (the core's text is unchanged in the log and record).
_OPERATOR_WHY: dict[str, str] = {
    "Write not proven": N_("The unit did not keep its credentials"),
    "Device disconnected": N_("The unit dropped off the line"),
    "Device refused the command": N_("The unit refused the credentials"),
    "Already provisioned": N_("This unit already has an identity"),
}
_OPERATOR_DO: dict[str, str] = {
    "Device disconnected": N_("Reseat the unit, scan again; if it fails again: rework bin."),
    "Write not proven": N_("Put the unit in the rework bin."),
    "Already provisioned": N_("Put the unit in the QA tray."),
}


def _operator_words(table: dict[str, str], title: str) -> str | None:
    """The operator's words for the core's `title`, which arrives in the station's language (the core
    translates a title when it makes it), so the English key is matched in its translation too."""
    for key, words in table.items():
        if title in (key, _(key)):
            return _(words)
    return None


def do_next(outcome: Outcome, next_action: str, title: str = "") -> str:
    """The one next action for the operator.

    PASS and FAIL keep the core's next action (about the unit: which bin, reseat it, the QA tray), in the
    operator's shorter words where this module has them for the error's `title`; an ERROR is never the
    unit's fault and never the operator's to fix, so it always says to call a technician, as the README
    does, whatever the core suggested to the technician.
    """
    if outcome == Outcome.ERROR:
        return _("Call a technician.")
    words = _operator_words(_OPERATOR_DO, title)
    if words is not None:
        return words
    if next_action:
        return next_action
    if outcome == Outcome.PASS:
        return _("Put the unit in the good bin.")
    if outcome == Outcome.FAIL:
        return _("Put the unit in the rework bin.")
    return ""


def why(outcome: Outcome, title: str) -> str:
    """A few words why: the core's title (or the operator's words for it), none on a PASS (the big word)."""
    if outcome == Outcome.PASS:
        return ""
    words = _operator_words(_OPERATOR_WHY, title)
    return title if words is None else words


def shown_scan(text: str) -> str:
    """A scan as the message line repeats it: one line, cut with an ellipsis when long."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_SHOWN_SCAN else f"{flat[: MAX_SHOWN_SCAN - 1]}…"


# Refusals whose core text lists every product's pattern or other detail: one sentence instead.
_NOT_A_SERIAL = frozenset(
    ("Invalid serial", "Serial does not match", "Serial not for this line", "No serial", "Scan too long")
)


def refusal(text: str, title: str, next_action: str) -> str:
    """The message line's sentence for a refused scan (details, such as the patterns tried, go to the log)."""
    scan = shown_scan(text)
    if any(title in (key, _(key)) for key in _NOT_A_SERIAL):
        return _("{scan} is not a serial this station takes: check the label and scan again.").format(
            scan=scan or "''"
        )
    return _("{scan} not taken: {title}. {next_action}").format(
        scan=scan, title=title, next_action=next_action
    )
