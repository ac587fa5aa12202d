"""`station export`: every attempt record as CSV (one row per attempt, stable columns) or a JSON list.

Certificates (public) are included; private keys never are — the ledger never holds one. Read-only on the
ledger; writes only the file given by --out (or standard output).
"""

from __future__ import annotations

import argparse
import sys

from station.cli import EXIT_OK
from station.errors import InputError
from station.i18n import _
from station.ledger import add_location_arguments, ledger_location, open_ledger

EXAMPLES = """examples:
  station export --format csv --out units.csv
  station export --format json --ledger ledger.sqlite > units.json
  station export --json --config station.toml > units.json      (--json is --format json)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export attempt records as CSV or JSON",
        description="Export every attempt record: CSV with one row per attempt, or a JSON list.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", type=str.lower, choices=("csv", "json"), help="output format (csv or json)")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--station", metavar="ID", help=_("only the records made at this station"))
    add_location_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt = export_format(args)
    with open_ledger(ledger_location(args.ledger, args.config), create=False) as ledger:
        if args.out:
            count = ledger.export(fmt, args.out, station=args.station)
            print(f"Exported {count} attempt record(s) to {args.out}.", file=sys.stderr)
        else:
            ledger.export(fmt, sys.stdout, station=args.station)
    return EXIT_OK


def export_format(args: argparse.Namespace) -> str:
    """csv or json, from --format or --json (`InputError` for neither, or for both disagreeing)."""
    if args.json and args.format not in (None, "json"):
        raise InputError(
            _("Two formats"),
            _("--json asks for JSON, --format {format} for something else.").format(format=args.format),
            _("Give one of them."),
        )
    fmt = "json" if args.json else args.format
    if fmt is None:
        raise InputError(
            _("No format"),
            _("Say which format to export."),
            _("Add --format csv, --format json or --json."),
        )
    return str(fmt)
