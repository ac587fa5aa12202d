"""The help panel (F1): the keys, what to scan, and in the demo which units sit in the jigs and the QA PIN.

`HelpContent` is what a command hands the app (the demo fills in its jigs' units, which of them are faulty and
its PIN; a production station gives none of that); `HelpScreen` shows it with the keys of the screen it was
opened from. The content can be a function, called each time the panel opens, so a demo whose jigs get a
fresh unit after every scan shows the units in the jigs now.

It must not show a production station's QA PIN (only a demo or lab hands one over), nor take the scanner's
focus for longer than it is open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from station.i18n import N_, _


@dataclass(frozen=True)
class JigUnit:
    """A unit waiting in a demo jig: scan `serial` to provision it; `fault` says how it fails ("" = good)."""

    slot: str
    family: str
    serial: str
    fault: str = ""


@dataclass(frozen=True)
class HelpContent:
    """What the help panel says beyond the keys: the station's situation, and the demo's units and PIN."""

    intro: str = ""  # one or two sentences: what this station is (e.g. the lab, not AWS)
    scan: tuple[str, ...] = ()  # sentences on what to scan, beyond the station's own rule
    units: tuple[JigUnit, ...] = ()  # demo: the units in the jigs now
    faults: str = ""  # demo: which units are faulty, in one sentence
    qa_pin: str | None = field(default=None, repr=False)  # demo / lab only

    @property
    def demo(self) -> bool:
        return bool(self.units)


HelpSource = HelpContent | Callable[[], HelpContent]


def resolve(source: HelpSource | None) -> HelpContent:
    """The content now (calling a function source); empty content when there is none."""
    if source is None:
        return HelpContent()
    return source() if callable(source) else source


def help_text(content: HelpContent, keys: Sequence[tuple[str, str]]) -> Content:
    """The panel's text: sections of short lines (plain text: serials and PINs are never read as markup)."""
    parts: list[Content | str | tuple[str, str]] = []

    def heading(text: str) -> None:
        if parts:
            parts.append("\n\n")
        parts.append((text, "bold"))

    if content.intro:
        parts.append(content.intro)
    # The demo's units and PIN first: on a small screen they are what a newcomer opened the panel for.
    if content.units:
        heading(_("Units in the jigs now"))
        for unit in content.units:
            mark = _("faulty: {what}").format(what=unit.fault) if unit.fault else _("good")
            parts.append("\n")
            parts.append((f"{unit.serial:<14}", "bold"))
            parts.append(f" {unit.slot} · {unit.family} · ")
            parts.append((mark, "bold $error" if unit.fault else "$success"))
        if content.faults:
            parts.append("\n" + content.faults)
    if content.qa_pin:
        parts.append(
            "\n" + _("F3 opens the QA desk; the QA PIN of this demo is {pin}.").format(pin=content.qa_pin)
        )
    heading(_("What to scan"))
    parts.append(
        "\n"
        + _(
            "Scan the serial label of the unit in a jig and press Enter: it goes to the jig that holds that "
            "unit (or, where the label is not the unit's own id, to the next free slot that takes it). Put the "
            "slot number first (2:SERIAL) to choose the slot."
        )
    )
    for sentence in content.scan:
        parts.append("\n" + sentence)
    heading(_("After the outcome"))
    parts.append(
        "\n"
        + _("PASS: good bin. FAIL: rework bin. ERROR: call a technician.")
        + "\n"
        + _("The card goes back to READY by itself, or when the next unit is scanned on its slot.")
    )
    heading(_("Keys"))
    for key, what in keys:
        parts.append("\n")
        parts.append((f"{key:<8}", "bold"))
        parts.append(what)
    return Content.assemble(*parts)


class HelpScreen(ModalScreen[None]):
    """The help panel over the operator screen; F1 or Esc closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1", "close", N_("Close")),
    ]

    def __init__(self, content: HelpContent, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__(id="help-screen")
        self.content = content
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog", classes="dialog") as box:
            box.border_title = _("Help  ·  F1 or Esc closes")
            yield Static(help_text(self.content, self.keys), id="help-body")

    def action_close(self) -> None:
        self.dismiss(None)
