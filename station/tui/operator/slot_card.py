"""One slot's card: port and line state, the unit's serial, its steps with timings, and the outcome.

A finished unit's outcome fills the card: the word (PASS, FAIL, ERROR) in three-line letters on a coloured
band, readable from across the bench, the unit's serial, one next action and a few words why (the full
reason is in the log); the border repeats the word with its symbol (✔ PASS, ✘ FAIL, ⚠ ERROR). Colour
repeats the word, it never replaces it. The card only draws a
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
from station.tui.operator.bigtext import big_lines
from station.tui.operator.wording import do_next, why
from station.tui.state import OUTCOME_LABEL, CardState, format_ms

# DONE (a QA action that completed) is not a failure: it takes the calm colour.
_OUTCOME_CLASS = {
    Outcome.PASS: "-pass",
    Outcome.FAIL: "-fail",
    Outcome.ERROR: "-error",
    Outcome.DONE: "-pass",
}
_ALL_CLASSES = ("-pass", "-fail", "-error", "-done", "-busy", "-idle", "-stopped")


def steps_text(card: CardState) -> Content:
    """Each step with its mark and time. What was undone after a failure is for the log, not the operator."""
    parts: list[Content | str | tuple[str, str]] = []
    for view in card.steps.values():
        style = {"ok": "$success", "failed": "bold $error", "running": "bold $accent"}.get(view.status, "dim")
        if parts:
            parts.append(" ")
        parts.append((view.label(), style))
    return Content.assemble(*parts)


def banner_text(card: CardState, *, big: bool = True) -> Content:
    """The band: the outcome's word in three-line letters (one line on a card too small for them), or what
    the slot is doing in one line."""
    if card.outcome is not None:
        if not big:  # the serial joins the word, so the next action keeps its line
            return Content(f"{OUTCOME_LABEL[card.outcome]}  {card.serial}")
        return Content("\n".join(big_lines(card.outcome.value)))
    if card.active:
        return Content(_("▶ WORKING  {step}").format(step=card.step or _("queued")))
    if card.state == "stopped":
        return Content(_("■ STOPPED"))
    if card.state == "reserved":
        return Content(_("◇ RESERVED  QA is checking a unit here"))
    return Content(_("○ READY  scan a unit"))


def state_word(card: CardState) -> str:
    """The border's word: the outcome while it shows, else what the slot is doing (never "idle" over a result)."""
    if card.outcome is not None:
        return OUTCOME_LABEL[card.outcome]
    if card.active:
        return _("working")
    return {"stopped": _("stopped"), "reserved": _("reserved for QA"), "busy": _("working")}.get(
        card.state, _("ready")
    )


class SlotCard(Vertical):
    """The card of slot number `index` (1-based, the number an operator types as a scan prefix)."""

    can_focus = False

    def __init__(self, index: int, card: CardState, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.index = index
        self.card = card

    def compose(self) -> ComposeResult:
        yield Static(id="card-banner")
        yield Static(id="card-unit", classes="card-line")
        yield Static(id="card-steps", classes="card-line")
        # What to do comes before why: if a small screen has no room for both, it is the reason that goes.
        yield Static(id="card-next", classes="card-line")
        yield Static(id="card-reason", classes="card-line")

    def on_mount(self) -> None:
        self.show()

    def on_resize(self) -> None:
        self.show()  # the next action is wrapped to the card's width and height

    def _roomy(self) -> bool:
        return self.screen.has_class("-roomy") if self.is_attached else False

    def _tiny(self) -> bool:
        """Too small for the big letters with the serial and the next action (many slots on a small screen)."""
        height = self.content_size.height
        return 0 < height < (5 if self._roomy() else 3) + 2

    def _rows_for_next(self) -> int:
        """The lines the next action may take: what the band, the serial and the steps leave (at least 1)."""
        height = self.content_size.height
        if height <= 0:
            return 3  # not laid out yet: on_resize draws it again
        card = self.card
        roomy, tiny = self._roomy(), self._tiny()
        # The band's height as station.tcss gives it: big letters (+ padding when roomy), or one line.
        big_band = 5 if roomy else 3  # the outcome in big letters
        line_band = 3 if roomy else 1  # READY / WORKING
        banner = 1 if tiny else big_band if card.outcome is not None else line_band
        steps = 0
        if card.serial and not tiny and (card.outcome is None or roomy):
            steps = len(steps_text(card).wrap(max(1, self.content_size.width)))
        unit = 0 if tiny and card.outcome is not None else 1  # a tiny done card has its serial in the band
        return max(1, height - banner - unit - steps)

    def _fit(self, text: Content, rows: int) -> Content:
        """`text` wrapped to the card's width in at most `rows` lines, the last ending in … when cut."""
        width = self.content_size.width
        if width <= 1 or not text.plain:
            return text
        lines = text.wrap(width)
        if len(lines) <= rows:
            return text
        kept = lines[:rows]
        last = kept[-1].rstrip()
        kept[-1] = (last.truncate(width - 1) if last.cell_length >= width else last) + "…"
        return Content("\n").join(kept)

    def show(self) -> None:
        card = self.card
        # Content, not str: a port name must never be read as markup.
        self.border_title = Content(f"{self.index} · {card.slot}" + (f" · {card.port}" if card.port else ""))
        self.border_subtitle = Content(state_word(card))
        unit = Content.assemble((card.serial or _("no unit"), "bold" if card.serial else "dim"))
        if card.product:
            unit = Content.assemble(unit, (f"  {card.product}", "dim"))
        if card.duration_ms is not None:
            unit = Content.assemble(unit, (f"  {format_ms(card.duration_ms)}", "dim"))
        self.query_one("#card-unit", Static).update(unit)
        self.query_one("#card-steps", Static).update(steps_text(card) if card.serial else "")
        tiny = self._tiny()
        self.set_class(tiny, "-tiny")
        self.query_one("#card-banner", Static).update(banner_text(card, big=not tiny))
        if card.outcome is not None:
            reason, action = (
                why(card.outcome, card.title),
                do_next(card.outcome, card.next_action, card.title),
            )
        else:
            reason, action = card.message, card.next_action  # the screen's own notes (screen_problem)
        # The arrow is translated: without a space after it, a Japanese sentence (no spaces to wrap at) would
        # start on the arrow's line instead of leaving the arrow alone on one.
        next_line = Content.assemble((_("→ "), "bold"), action) if action else Content("")
        self.query_one("#card-next", Static).update(self._fit(next_line, self._rows_for_next()))
        self.query_one("#card-reason", Static).update(Content(reason))
        self.remove_class(*_ALL_CLASSES)
        if card.outcome is not None:
            self.add_class(_OUTCOME_CLASS[card.outcome], "-done")
        elif card.active:
            self.add_class("-busy")
        else:
            self.add_class("-stopped" if card.state == "stopped" else "-idle")
