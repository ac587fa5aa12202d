"""The scan field: an `Input` that takes a scan ended by Enter (CR) or LF, and several scans in one go.

A keyboard-wedge scanner ends each scan with CR, LF or CR LF, and a fast scanner or a paste can deliver
several scans in one terminal read. Textual's `Input` submits on Enter only (LF arrives as ctrl+j and was
ignored, so two scans ran together into one serial), and a paste keeps only its first line. Here LF submits
too, and a pasted block is split into its scans, each submitted in order; an unfinished tail stays in the
field.

It must not interpret a scan (that is `station.tui.state.parse_scan`'s job) nor talk to the line.
"""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.widgets import Input

from station.tui.state import split_scans


class ScanField(Input):
    """The operator screen's only focusable widget."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+j", "submit", "Submit", show=False)]

    def _on_paste(self, event: events.Paste) -> None:
        event.prevent_default()  # not Input's: it keeps the first line only
        event.stop()
        scans, rest = split_scans(self.value + event.text)
        if not scans:
            self.insert_text_at_cursor(event.text)
            return
        self.value = rest
        self.cursor_position = len(rest)
        for scan in scans:
            self.post_message(self.Submitted(self, scan))
