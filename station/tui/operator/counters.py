"""The counters bar: the shift, pass / fail / error, first-pass yield and units per hour, each with its word.

It must not compute anything itself beyond formatting: the figures come from `station.tui.state.Counters`.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from station.i18n import _
from station.tui.state import Counters


def counters_text(
    counters: Counters, now: float, cleanup_pending: int = 0, shift: int | None = None
) -> Content:
    fpy = counters.first_pass_yield
    uph = counters.units_per_hour(now)
    # What failed attempts left in AWS until the line's cleaner has removed it (shown only while it is there,
    # before the yield and the rate, so a narrow screen cuts those rather than the warning).
    pending = (
        (("   ⚠ " + _("cleanup pending:") + " ", "bold $warning"), (str(cleanup_pending), "bold"))
        if cleanup_pending
        else ()
    )
    return Content.assemble(
        *(((_("Shift {number}").format(number=shift), "bold"), "  ") if shift is not None else ()),
        ("✔ PASS ", "bold $success"),
        (str(counters.passed), "bold"),
        ("   ✘ FAIL ", "bold $error"),
        (str(counters.failed), "bold"),
        ("   ⚠ ERROR ", "bold $warning"),
        (str(counters.errored), "bold"),
        *pending,
        "   " + _("first-pass yield") + " ",
        ("–" if fpy is None else f"{fpy * 100:.0f}%", "bold"),
        "   " + _("units/h") + " ",
        ("–" if uph is None else f"{uph:.0f}", "bold"),
    )


class CountersBar(Static):
    """One line of figures; `show` redraws it."""

    def show(
        self, counters: Counters, now: float, cleanup_pending: int = 0, shift: int | None = None
    ) -> None:
        self.update(counters_text(counters, now, cleanup_pending, shift))
