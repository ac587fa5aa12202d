"""`station export`: every attempt record as CSV (one row per attempt, stable columns) or a JSON list.

Certificates (public) are included; private keys never are — the ledger never holds one. Read-only on the
ledger; writes only the file given by --out (or standard output).
"""

from __future__ import annotations

import argparse
import sys

from station.cli import EXIT_OK
from station.i18n import _
from station.ledger import add_location_arguments, ledger_location, open_ledger

EXAMPLES = """examples:
  station export --format csv --out units.csv
  station export --format json --ledger ledger.sqlite > units.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export attempt records as CSV or JSON",
        description="Export every attempt record: CSV with one row per attempt, or a JSON list.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", required=True, type=str.lower, choices=("csv", "json"), help="output format")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--station", metavar="ID", help=_("only the records made at this station"))
    add_location_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_ledger(ledger_location(args.ledger, args.config), create=False) as ledger:
        if args.out:
            count = ledger.export(args.format, args.out, station=args.station)
            print(f"Exported {count} attempt record(s) to {args.out}.", file=sys.stderr)
        else:
            ledger.export(args.format, sys.stdout, station=args.station)
    return EXIT_OK
