"""`station units`: every unit in the ledger with its latest outcome, optionally only PASS, FAIL or ERROR.

A unit is a serial; its outcome is that of its latest attempt (a unit that failed and then passed after
rework is PASS). Read-only.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from station.cli import EXIT_OK
from station.ledger import add_location_arguments, ledger_location, open_ledger
from station.model import Outcome

EXAMPLES = """examples:
  station units --ledger ledger.sqlite
  station units --outcome FAIL --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "units",
        help="list units and their latest outcome",
        description="List every unit (serial) in the ledger with the outcome of its latest attempt.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location_arguments(p)
    p.add_argument(
        "--outcome",
        type=str.upper,
        choices=[o.value for o in Outcome],
        help="only units whose latest attempt had this outcome",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if epoch else "-"


def run(args: argparse.Namespace) -> int:
    from station.qa import revocation_of

    with open_ledger(ledger_location(args.ledger, args.config), create=False) as ledger:
        units = list(ledger.units(args.outcome))
        # A revoke is a QA note after the attempt: a PASS whose certificate QA revoked no longer works.
        revoked = {u.serial: revocation_of(ledger, u.latest) is not None for u in units}
    if args.json:
        print(json.dumps([{**u.to_dict(), "revoked": revoked[u.serial]} for u in units]))
        return EXIT_OK
    if not units:
        print("No units" + (f" with outcome {args.outcome}." if args.outcome else " in the ledger."))
        return EXIT_OK
    header = ("SERIAL", "OUTCOME", "TRIES", "THING", "CERTIFICATE", "TARGET", "FINISHED (UTC)")
    rows = [
        (
            u.serial,
            f"{u.outcome} (revoked)" if revoked[u.serial] else u.outcome,
            str(u.attempts),
            u.latest.thing_name or "-",
            u.latest.certificate_id[:12] or "-",
            u.latest.target or "-",
            when(u.latest.finished_at),
        )
        for u in units
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(units)} unit(s).")
    return EXIT_OK
