"""One slot's card: port and line state, the unit's serial, its steps with timings, and the outcome.

The outcome is a word and a symbol (✔ PASS, ✘ FAIL, ⚠ ERROR) on a coloured banner, then one sentence of
reason and the next action; colour repeats the word, it never replaces it. The card only draws a
`station.tui.state.CardState`; it holds no state of its own and is never focused (the scan field keeps
the focus).

It must not be touched from a thread: the operator screen calls `show` from message handlers.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from station.i18n import _
from station.model import Outcome
from station.tui.state import OUTCOME_LABEL, CardState, format_ms

_OUTCOME_CLASS = {Outcome.PASS: "-pass", Outcome.FAIL: "-fail", Outcome.ERROR: "-error"}
_ALL_CLASSES = ("-pass", "-fail", "-error", "-done", "-busy", "-idle", "-stopped")


def _undo_label(action: str, ok: bool) -> tuple[str, str]:
    """↺rollback (done) or ↺rollback FAILED (something may be left in AWS or on the device)."""
    return (f"↺{action}", "$warning") if ok else (f"↺{action} FAILED", "bold $error")


def steps_text(card: CardState) -> Content:
    parts: list[Content | str | tuple[str, str]] = []
    for view in card.steps.values():
        style = {"ok": "$success", "failed": "bold $error", "running": "bold $accent"}.get(view.status, "dim")
        if parts:
            parts.append(" ")
        parts.append((view.label(), style))
    for action, ok in card.compensations:
        parts.append(" ")
        parts.append(_undo_label(action, ok))
    return Content.assemble(*parts)


def summary_text(card: CardState) -> Content:
    """The steps in one line once the unit is done (compact screens): what failed and what was undone."""
    failed = [view for view in card.steps.values() if view.status == "failed"]
    done = [view for view in card.steps.values() if view.status == "ok"]
    parts: list[Content | str | tuple[str, str]] = []
    if failed:
        parts.extend((f"{view.label()} ", "bold $error") for view in failed)
    else:
        parts.append((f"✓ {len(done)} steps ok", "$success"))
    for action, ok in card.compensations:
        parts.append(" ")
        parts.append(_undo_label(action, ok))
    return Content.assemble(*parts)


def banner_text(card: CardState) -> Content:
    """The big line: the outcome's word and symbol and its title, or what the slot is doing (plain text)."""
    if card.outcome is not None:
        title = f"  {card.title}" if card.title else ""
        return Content(f"{OUTCOME_LABEL[card.outcome]}{title}")
    if card.active:
        return Content(f"▶ WORKING  {card.step or 'queued'}")
    if card.state == "stopped":
        return Content("■ STOPPED")
    if card.state == "reserved":
        return Content("◇ RESERVED  QA is checking a unit here")
    return Content("○ READY  scan a unit")


class SlotCard(Vertical):
    """The card of slot number `index` (1-based, the number an operator types as a scan prefix)."""

    can_focus = False

    def __init__(self, index: int, card: CardState, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.index = index
        self.card = card

    def compose(self) -> ComposeResult:
        yield Static(id="card-unit", classes="card-line")
        yield Static(id="card-steps", classes="card-line")
        yield Static(id="card-summary", classes="card-line")
        yield Static(id="card-banner")
        # What to do comes first: if a long reason does not fit a small screen, it is the reason that is cut.
        yield Static(id="card-next", classes="card-line")
        yield Static(id="card-reason", classes="card-line")

    def on_mount(self) -> None:
        self.show()

    def show(self) -> None:
        card = self.card
        # Content, not str: a port name must never be read as markup.
        self.border_title = Content(f"{self.index} · {card.slot}" + (f" · {card.port}" if card.port else ""))
        self.border_subtitle = Content(card.state)
        unit = Content.assemble((card.serial or "no unit", "bold" if card.serial else "dim"))
        if card.product:
            unit = Content.assemble(unit, (f"  {card.product}", "dim"))
        if card.duration_ms is not None:
            unit = Content.assemble(unit, (f"  total {format_ms(card.duration_ms)}", "dim"))
        self.query_one("#card-unit", Static).update(unit)
        self.query_one("#card-steps", Static).update(steps_text(card) if card.serial else "")
        self.query_one("#card-summary", Static).update(summary_text(card) if card.outcome is not None else "")
        self.query_one("#card-banner", Static).update(banner_text(card))
        self.query_one("#card-reason", Static).update(Content(card.message))
        self.query_one("#card-next", Static).update(
            # The arrow is translated: without a space after it, a Japanese sentence (no spaces to wrap at)
            # starts on the arrow's line instead of leaving the arrow alone on one.
            Content.assemble((_("→ "), "bold"), card.next_action) if card.next_action else ""
        )
        self.remove_class(*_ALL_CLASSES)
        if card.outcome is not None:
            self.add_class(_OUTCOME_CLASS[card.outcome], "-done")
        elif card.active:
            self.add_class("-busy")
        else:
            self.add_class("-stopped" if card.state == "stopped" else "-idle")
