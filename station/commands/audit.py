"""`station audit verify`: prove the ledger's hash chain is intact, or name the first tampered row.

Exit 0 when every event row and every attempt record checks out, 5 (`EXIT_INTEGRITY`) naming the first bad
row otherwise. Read-only: it never repairs, rewrites or re-chains anything.
"""

from __future__ import annotations

import argparse
import json

from station.cli import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE
from station.ledger import add_location_arguments, ledger_location, open_ledger

EXAMPLES = """examples:
  station audit verify --ledger /var/lib/station/ledger.sqlite
  station audit verify --config station.toml --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="check the ledger's integrity")
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="prove the hash chain is intact (exit 5 names the first tampered row)",
        description="Check every event row and attempt record against the ledger's hash chain.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location_arguments(verify)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def run_verify(args: argparse.Namespace) -> int:
    location = ledger_location(args.ledger, args.config)
    with open_ledger(location, create=False) as ledger:
        result = ledger.audit()
    if args.json:
        print(json.dumps({"ledger": location, **result.to_dict()}))
    elif result.ok:
        print(f"Ledger intact: {result.checked} rows checked.")
        print(f"Head: event {result.head_seq}, hash {result.head_hash}")
    else:
        print(f"Ledger TAMPERED: first bad row is {result.first_bad_row}: {result.reason}.")
        print(f"{result.checked} row(s) checked before it.")
        print("Next: keep a copy of the file as evidence and call the person responsible for the ledger.")
    return EXIT_OK if result.ok else EXIT_INTEGRITY
