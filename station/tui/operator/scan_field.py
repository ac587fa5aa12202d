"""The scan field: an `Input` that ends a scan on Enter (CR) or LF, in order, however fast the scans come.

A keyboard-wedge scanner ends each scan with CR, LF or CR LF, and a fast scanner or a paste can deliver
several scans in one terminal read. Textual's `Input` left them merged: LF arrives as ctrl+j, which it
ignores; Enter is a binding, run only when the key has gone up to the app, by which time every other key of
the same read has already been typed into the field ("SIM0006EL0003"); and a paste keeps its first line only.
Here the field itself ends the scan the moment it reads CR or LF (it takes the text and clears, so the next
characters start the next scan), and a pasted block is split into its scans; an unfinished tail stays in the
field.

It must not interpret a scan (that is `station.tui.state.parse_scan`'s job) nor talk to the line.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from station.tui.state import split_scans

SCAN_END_KEYS = ("enter", "ctrl+j")  # CR and LF as Textual names them


class ScanField(Input):
    """The operator screen's only focusable widget; posts `Input.Submitted` once per scan, in order."""

    def submit_now(self, text: str) -> None:
        self.post_message(self.Submitted(self, text))

    async def _on_key(self, event: events.Key) -> None:
        if event.key in SCAN_END_KEYS:
            # Handled here, in this widget's own queue, before the next key of the read is typed in.
            event.prevent_default()
            event.stop()
            text = self.value
            self.value = ""
            self.submit_now(text)
            return
        await super()._on_key(event)

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
            self.submit_now(scan)
