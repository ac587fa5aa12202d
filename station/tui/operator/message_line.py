"""The message line under the scan field: the one sentence the operator needs now (a refused scan, a scan
taken, a warning), replacing pop-up notifications that covered the cards.

One line, the newest message; a longer one ends in an ellipsis. The details go to the log pane (F2).
It must not read text as markup: messages repeat what was scanned.
"""

from __future__ import annotations

from typing import Literal

from textual.content import Content
from textual.widgets import Static

Severity = Literal["info", "ok", "warning", "error"]


class MessageLine(Static):
    """`say(text, severity)` shows one sentence; severity picks the colour (the words carry the meaning)."""

    can_focus = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.text = ""
        self.severity: Severity = "info"

    def say(self, text: str, severity: Severity = "info") -> None:
        self.text = " ".join(text.split())  # one line, whatever the source put in it
        self.severity = severity
        self.remove_class("-info", "-ok", "-warning", "-error")
        self.add_class(f"-{severity}")
        self.update(Content(self.text))
