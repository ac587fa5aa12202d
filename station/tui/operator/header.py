"""The header: which station, who is at it, what product, and — impossible to miss — where identities go.

A lab station says LAB on a warning stripe; a station writing to a real (production) account says
PRODUCTION on an error-coloured stripe, with the account and region. The words carry the meaning; the
colours only repeat it.

It must not fetch anything: it draws a `StationInfo` it is given.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from station.i18n import _
from station.tui.api import StationInfo


def target_line(info: StationInfo) -> Content:
    """The target stripe's text: mode word first, then each target as name → account · region."""
    if not info.targets:
        return Content(_("⚠ NO TARGET  this station has no target configured"))
    mode = _("▲ PRODUCTION") if info.production else _("◆ LAB")
    parts = [
        _("{target} → account {account} · {region}").format(target=t.name, account=t.account, region=t.region)
        for t in info.targets
    ]
    tail = _("  (local lab, not AWS)") if info.lab else ""
    return Content.assemble((mode, "bold"), _("  target "), ", ".join(parts), tail)


def station_line(info: StationInfo) -> Content:
    products = ", ".join(info.products) or _("none")
    return Content.assemble(
        (_("Station "), "dim"),
        (info.station_id, "bold"),
        (_("  ·  Operator "), "dim"),
        (info.operator, "bold"),
        (_("  ·  Product "), "dim"),
        (products, "bold"),
    )


class StationHeader(Vertical):
    """Two lines: the station line and the target stripe (class -lab or -production)."""

    # One line each: what does not fit ends in "…" rather than stopping mid-word (Japanese takes two
    # columns a character, so a narrow screen runs out sooner in some languages than in others).
    DEFAULT_CSS = """
    StationHeader > Static {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, info: StationInfo, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.info = info

    def compose(self) -> ComposeResult:
        yield Static(station_line(self.info), id="station-line")
        stripe = Static(target_line(self.info), id="target-line")
        stripe.add_class("-production" if self.info.production else "-lab")
        yield stripe
