"""`station run --config station.toml`: the operator screen over this station's line.

Opens the ledger, builds the line (one worker per configured slot) and shows the operator screen until the
operator quits (Ctrl+Q); then lets the units in progress finish and stops the line. Thin: the wiring is
`station.context`, the QA desk's services `station.desk`, the screen `station.tui`.
"""

from __future__ import annotations

import argparse
import sys

from station.cli import EXIT_ERROR, EXIT_OK, add_language_argument, apply_language
from station.i18n import _

EXAMPLES = """examples:
  station run --config station.toml
  station run --config station.toml --operator "night-shift"
  station run --config station.toml --lang ja

keys: type or scan a serial + Enter (2:SERIAL sends it to slot 2), F2 log, F3 QA desk (PIN), Ctrl+Q quit
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="open the operator screen over this station's line",
        description="Open the operator screen: scan units, watch each slot, read the outcome.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the station's station.toml")
    p.add_argument("--operator", help="who is at the station (default: the config's operator)")
    add_language_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.config import load_config
    from station.context import StationContext
    from station.desk import QaServices
    from station.ledger import open_ledger
    from station.line import Line
    from station.tui import EventRelay, run_app

    config = load_config(args.config)
    apply_language(args, config.language)
    relay = EventRelay()
    with open_ledger(config.ledger_path, station_id=config.station_id) as ledger:
        context = StationContext(config, ledger=ledger, operator=args.operator)
        line = Line.from_context(context, on_event=relay)
        try:
            qa = QaServices(config, ledger, operator=args.operator, line=line)
            code = run_app(config, line, qa=qa, relay=relay, operator=args.operator)
        finally:
            busy = [s.serial for s in line.slots() if s.state == "busy"]
            if busy:
                print(
                    _("Finishing the units in progress ({serials})…").format(serials=", ".join(busy)),
                    file=sys.stderr,
                )
            line.stop()
            # The station's own identities (observers for verify-by-observing) end with the station.
            for problem in context.close():
                print(
                    _("Could not remove an observer identity: {problem}").format(problem=problem),
                    file=sys.stderr,
                )
    return EXIT_OK if code == 0 else screen_ended(code)


def screen_ended(code: int) -> int:
    """The operator screen ended on an error: say so and exit ERROR, so a supervisor restarts the station."""
    print(
        _(
            "The operator screen stopped after an unexpected error (code {code}); the units in progress were "
            "finished and the line stopped.\nNext: start the station again; if it happens again, call a "
            "technician with the station log."
        ).format(code=code),
        file=sys.stderr,
    )
    return EXIT_ERROR
