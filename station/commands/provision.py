"""`station provision`: provision one unit on one port, outside a line.

    station provision --port /dev/ttyUSB0 --serial SA00001234
    station provision --port /dev/pts/7 --serial SA00001234 --target lab-eu --config lab/station.toml --json

The serial is checked against the product's pattern first (exit 2, nothing started); then the unit goes
through the pipeline once. Progress lines go to stderr; the result goes to stdout (text, or one JSON object
with --json). Exit codes: 0 PASS, 1 FAIL (rework bin), 3 ERROR (call a technician), 2 bad input.

A thin layer over `station.context.StationContext.provision`: no business logic here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from station.commands._options import add_config_argument
from station.i18n import _
from station.model import Event, Outcome
from station.pipeline import STEPS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "provision",
        help="provision one unit on one serial port",
        description="Identify the unit, give it an identity, write it and register it, verify, record.",
        epilog="Example: station provision --port /dev/ttyUSB0 --serial SA00001234 --target prod-eu",
    )
    p.add_argument("--port", required=True, help="serial port or pyserial URL of the unit's jig")
    p.add_argument("--serial", required=True, help="the unit's scanned serial")
    p.add_argument("--target", help="target name (default: the product's target)")
    p.add_argument("--product", help="product name (default: the only product in the config)")
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def _progress(event: Event) -> None:
    if event.kind == "step_finished":
        ms = f"{event.duration_ms:.0f} ms" if event.duration_ms is not None else ""
        print(f"  {event.step:<9} {event.outcome:<6} {ms}", file=sys.stderr, flush=True)
    elif event.kind == "compensation":
        print(f"  undo {event.step:<9} {event.outcome:<6} {event.message}", file=sys.stderr, flush=True)


def exit_code(outcome: Outcome) -> int:
    from station.cli import EXIT_ERROR, EXIT_FAIL, EXIT_OK

    return {Outcome.PASS: EXIT_OK, Outcome.FAIL: EXIT_FAIL}.get(outcome, EXIT_ERROR)


def print_result(summary: dict[str, Any]) -> None:
    print(f"{summary['outcome']}  {summary['serial']}  {summary['title']}")
    print(f"  {summary['message']}")
    print(_("  Next: {next_action}").format(next_action=summary["next_action"]))
    if summary.get("thing_name"):
        print(f"  thing {summary['thing_name']}  target {summary['target']}")
    if summary.get("certificate_id"):
        print(f"  certificate {summary['certificate_id']}")
    timings = summary.get("timings_ms") or {}
    if timings:
        order = [*STEPS, "write_register", "total"]
        names = sorted(timings, key=lambda k: order.index(k) if k in order else len(order))
        print("  " + "  ".join(f"{k} {timings[k]:.0f} ms" for k in names))


def run(args: argparse.Namespace) -> int:
    from station.config import load_config
    from station.context import StationContext
    from station.ledger import open_ledger

    config = load_config(args.config)
    with open_ledger(config.ledger_path, station_id=config.station_id) as ledger:
        context = StationContext(config, ledger=ledger, on_event=None if args.json else _progress)
        result = context.provision(args.serial, args.port, product=args.product, target=args.target)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print_result(summary)
    return exit_code(result.outcome)
