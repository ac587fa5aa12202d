"""`station units`: units newest first, one page at a time, with their current state and latest outcome.

A unit is a serial. Its state (`provisioned`, `registered`, `failed`, `revoked`, `transferred`, `superseded`)
comes from the ledger's unit table; its outcome is that of its latest attempt. Filters: --state, --outcome,
--target, --station, --since/--until (UTC dates or times); --limit sets the page size and --after continues
after a page (the command prints the cursor to pass). Never loads every unit. Read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from station.cli import EXIT_OK
from station.errors import InputError
from station.i18n import _
from station.ledger import add_location_arguments, ledger_location, open_ledger
from station.ledger.base import MAX_PAGE
from station.model import Outcome
from station.units import UnitState, UnitStateName, iso_utc

EXAMPLES = """examples:
  station units --ledger ledger.sqlite
  station units --state revoked --since 2026-12-01
  station units --outcome FAIL --limit 200 --json
  station units --after '1780000123.0~4567'        (the next page, as the previous one printed)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "units",
        help="list units (newest first) with their state and latest outcome",
        description="List units newest first, one page at a time, with their state and latest outcome.",
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
    p.add_argument(
        "--state", type=str.lower, choices=[s.value for s in UnitStateName], help="only units in this state"
    )
    p.add_argument("--target", help="only units whose live identity (or last attempt) is in this target")
    p.add_argument("--station", help="only units whose last attempt was at this station")
    p.add_argument(
        "--since", type=_time, metavar="WHEN", help="last attempt at or after WHEN (UTC, e.g. 2026-12-05)"
    )
    p.add_argument("--until", type=_time, metavar="WHEN", help="last attempt before WHEN (UTC)")
    p.add_argument("--limit", type=int, default=50, help=f"units per page (default 50, at most {MAX_PAGE})")
    p.add_argument("--after", metavar="CURSOR", help="continue after the page that printed this cursor")
    p.add_argument("--json", action="store_true", help="print a JSON list (the next cursor goes to stderr)")
    p.set_defaults(func=run)


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if epoch else "-"


def _time(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time (use 2026-12-05 or 2026-12-05T14:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def unit_dict(unit: UnitState) -> dict[str, Any]:
    """A unit for JSON output: its stored state plus the names older callers read (`outcome`, `attempts`)."""
    primary = unit.primary
    return {
        **unit.to_dict(),
        "outcome": unit.last_outcome,
        "label": unit.label(),
        "state_changed_at_iso": iso_utc(unit.state_changed_at),
        "thing_name": primary.thing_name if primary else "",
        "certificate_id": primary.certificate_id if primary else "",
        "target": primary.target if primary else "",
        "revoked": unit.state == UnitStateName.REVOKED,
    }


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_PAGE:
        raise InputError(
            _("Bad --limit"),
            _("--limit must be between 1 and {MAX_PAGE}.").format(MAX_PAGE=MAX_PAGE),
            _("Use a smaller page and --after."),
        )
    with open_ledger(ledger_location(args.ledger, args.config), create=False) as ledger:
        page = ledger.unit_page(
            state=args.state,
            outcome=args.outcome,
            target=args.target,
            station=args.station,
            since=args.since,
            until=args.until,
            after=args.after,
            limit=args.limit,
        )
    units = page.units
    more = (
        f"More: station units --after '{page.next_cursor}' (with the same filters)"
        if page.next_cursor
        else ""
    )
    if args.json:
        print(json.dumps([unit_dict(u) for u in units]))
        if more:
            print(more, file=sys.stderr)
        return EXIT_OK
    if not units:
        print("No units match." if args.after or _filtered(args) else "No units in the ledger.")
        return EXIT_OK
    header = ("SERIAL", "STATE", "OUTCOME", "TRIES", "THING", "CERTIFICATE", "TARGET", "CHANGED (UTC)")
    rows = []
    for u in units:
        primary = u.primary
        rows.append(
            (
                u.serial,
                u.label(),
                u.last_outcome,
                str(u.attempts),
                (primary.thing_name if primary else "") or "-",
                (primary.certificate_id[:12] if primary else "") or "-",
                (primary.target if primary else "") or "-",
                when(u.state_changed_at),
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(units)} unit(s), newest first." + (f"\n{more}" if more else ""))
    return EXIT_OK


def _filtered(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, name) is not None
        for name in ("state", "outcome", "target", "station", "since", "until")
    )
