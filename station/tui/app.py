"""The station's Textual app: the operator screen over a line, and the QA desk behind a PIN.

Wiring (what `station run` and `station demo` do):

    relay = EventRelay()
    line = Line(config, ledger=ledger, on_event=relay)
    qa = QaServices(config, ledger, line=line)      # station.desk: the QA desk's services, built by the command
    run_app(config, line, qa=qa, relay=relay)       # returns when the operator quits
    line.stop()

Who is working: when station.toml lists people or sets `sign_in`, the app asks at start (and on Ctrl+O;
`station.tui.signin`) and names that person on the line's next records and the QA desk's actions; a QA
person's own PIN names them instead, for what they do at the desk.

The app never runs a unit itself: the line does, on its own threads; the relay turns the line's events into
messages for the operator screen. The QA desk calls the services it is handed, through the Protocol
`station.tui.api.QaServicesAPI`; without them (no ledger) the desk stays closed.

It must not import boto3, serial, awscrt or cryptography, not even through a core module (import-linter
checks, indirect imports included), nor call the core on the UI thread.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.widgets import Static

from station.i18n import N_, _
from station.model import Event
from station.people import qa_pins, sign_in_required, who_signs_in
from station.qapin import PinGuard
from station.tui.api import LineAPI, QaServicesAPI, StationInfo, station_info
from station.tui.bindings import translate_bindings
from station.tui.operator.header import station_line
from station.tui.operator.help import HelpSource
from station.tui.operator.screen import OperatorScreen
from station.tui.operator.shift import SHIFT_SERIAL, SHIFT_STEP
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.pin import PinScreen
from station.tui.relay import EventRelay
from station.tui.signin import SignInScreen

QUIT_CONFIRM_S = 4.0  # a second quit key within this many seconds quits even with units in progress


class StationApp(App[None]):
    """The operator screen is the default screen; the QA desk is pushed on top of it."""

    CSS_PATH = "station.tcss"
    TITLE = "station"
    # No command palette: every action has its own key, and an operator should not browse app commands.
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", N_("Quit"), priority=True),
        Binding("ctrl+o", "sign_in", N_("Sign in"), show=False),
    ]

    def __init__(
        self,
        *,
        line: LineAPI,
        info: StationInfo,
        relay: EventRelay | None = None,
        qa: QaServicesAPI | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float | None = 1.0,
        help_content: HelpSource | None = None,
        sign_in: Callable[[str], str] | None = None,
        pins: dict[str, str] | None = None,
    ) -> None:
        """`sign_in` (a badge or name → the person) asks who is working when the app starts; `pins` are the
        QA desk's stored PINs by whom they name (`station.people.qa_pins`; default: `info.qa_pin`)."""
        super().__init__()
        translate_bindings(self)
        self.person = info.operator  # who the line's records and the desk's actions name
        self._sign_in = sign_in
        self._pins = pins if pins is not None else ({"": info.qa_pin} if info.qa_pin else {})
        self.line = line
        self.info = info
        self.relay = relay
        self.qa = qa
        self.clock = clock
        # Read once, before the app runs: the screen needs the slot list to lay out its cards.
        self.operator = OperatorScreen(
            line,
            info,
            line.slots(),
            relay=relay,
            clock=clock,
            poll_interval=poll_interval,
            help_content=help_content,  # F1 (the demo names its units and PIN there)
            on_shift_change=self._record_shift if qa is not None and qa.ledger is not None else None,
        )
        self._quit_armed_at: float | None = None
        self._pin_guard: PinGuard | None = None
        self.title = f"station {info.station_id}"

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification as plain text: they carry scanned text and file names, never markup."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def get_default_screen(self) -> OperatorScreen:
        return self.operator

    def _record_shift(self, data: dict[str, Any]) -> None:
        """The shift change into the ledger's event log (called off the UI thread by the operator screen)."""
        ledger = self.qa.ledger if self.qa is not None else None
        if ledger is None:
            return
        if self.person:
            data = {**data, "operator": self.person}
        ledger.append_event(
            Event(
                "note",
                SHIFT_SERIAL,
                step=SHIFT_STEP,
                title="Shift change",
                message=f"Shift {data.get('shift')} ended; shift {int(data.get('shift') or 0) + 1} started.",
                data=data,
                at=float(data.get("ended_at") or time.time()),
            )
        )

    def tell(self, text: str, severity: SeverityLevel = "information") -> None:
        """One sentence for the person at the screen: the operator screen's message line, else a notification."""
        if self.screen is self.operator:
            level = {"information": "info", "warning": "warning", "error": "error"}[severity]
            self.operator.say(text, level)  # type: ignore[arg-type]
        else:
            self.notify(text, severity=severity)

    def on_mount(self) -> None:
        if self._sign_in is not None:
            self.push_screen(SignInScreen(self._sign_in), self._signed_in)

    def action_sign_in(self) -> None:
        """Someone else at the bench: ask who (Esc keeps the person signed in)."""
        self.push_screen(
            SignInScreen(self._sign_in or who_signs_in_any, current=self.person), self._signed_in
        )

    def _signed_in(self, name: str | None) -> None:
        if not name:
            return
        self.person = name
        self.line.set_operator(name)  # the next record names them
        if self.qa is not None:
            self.qa.act_as(name)
            qa = self.qa
            self.run_worker(lambda: qa.record_sign_in(name), thread=True, exit_on_error=False)
        self.sub_title = name
        # The header's "Operator" names them too (the header draws a StationInfo).
        self.info = dataclasses.replace(self.info, operator=name)
        for shown in self.operator.query("#station-line").results(Static):
            shown.update(station_line(self.info))
        self.tell(_("{name} is signed in.").format(name=name))

    def on_unmount(self) -> None:
        if self.relay is not None:
            self.relay.detach()

    async def action_quit(self) -> None:
        """Quit; with units still in progress, only on a second press (they finish in the line regardless)."""
        now = time.monotonic()
        armed = self._quit_armed_at is not None and now - self._quit_armed_at < QUIT_CONFIRM_S
        if self.operator.busy and not armed:
            self._quit_armed_at = now
            self.tell(
                _("Units are still in progress; press Ctrl+Q again to quit (they finish first)."), "warning"
            )
            return
        if self.relay is not None:
            self.relay.detach()
        self.exit()

    def action_open_qa(self) -> None:
        if self.qa is None:
            self.tell(_("This station has no QA desk (no ledger was given)."), "warning")
            return
        pins = self._pins
        if not pins:
            self.tell(_("No QA PIN is configured, so the QA desk stays closed."), "warning")
            return
        qa = self.qa
        if self._pin_guard is None:
            # One guard for the app's life; its count of wrong PINs lives in the ledger anyway.
            ledger = qa.ledger if qa is not None else None
            self._pin_guard = PinGuard(pins, ledger=ledger, where="QA desk", operator=self.person)
        self._pin_guard.operator = self.person
        prompt = PinScreen(self._pin_guard)

        def opened(ok: bool | None) -> None:
            if ok:
                # A person's own PIN names them; the shared PIN names whoever is signed in.
                qa.act_as(prompt.who or self.person)
                self.push_screen(QaDeskScreen(qa, self.info))

        self.push_screen(prompt, opened)


def who_signs_in_any(text: str) -> str:
    """Sign-in where the config lists nobody: any plain name."""
    return who_signs_in(None, text)


def build_app(
    config: Any,
    line: LineAPI,
    *,
    qa: QaServicesAPI | None = None,
    relay: EventRelay | None = None,
    operator: str | None = None,
    clock: Callable[[], float] = time.time,
    poll_interval: float | None = 1.0,
    help_content: HelpSource | None = None,
) -> StationApp:
    """The app over `line` for a `StationConfig`; the QA desk works when its services (`qa`) are given."""
    info = station_info(config, operator=operator)
    sign_in = None
    if sign_in_required(config):

        def sign_in(text: str) -> str:
            return who_signs_in(config, text)

    return StationApp(
        line=line,
        info=info,
        relay=relay,
        qa=qa,
        clock=clock,
        poll_interval=poll_interval,
        help_content=help_content,
        sign_in=sign_in,
        pins=qa_pins(config),
    )


def run_app(
    config: Any,
    line: LineAPI,
    *,
    qa: QaServicesAPI | None = None,
    relay: EventRelay | None = None,
    operator: str | None = None,
    help_content: HelpSource | None = None,
) -> int:
    """Run the operator screen until the operator quits; 0, or non-zero when the screen ended on an error.

    `relay` must be the `on_event` the line was built with, or the cards will not move. `qa` is the QA
    desk's services (`station.desk.QaServices`), built by the caller. The caller stops the line afterwards,
    and turns a non-zero result into a non-zero exit (a supervisor restarts it).
    """
    app = build_app(config, line, qa=qa, relay=relay, operator=operator, help_content=help_content)
    app.run()
    return app.return_code or 0
