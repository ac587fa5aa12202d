"""`station reconcile`: resolve what a stopped station left in its journal.

    station reconcile
    station reconcile --target prod-eu --config station.toml --json

For every pending journal entry: if the ledger has a PASS record for its certificate, the entry is closed;
otherwise what AWS still holds for it is removed (detach, deactivate, delete, and the thing if this station
made it) and an ERROR record says "station stopped mid-provisioning; rolled back by reconcile". Afterwards no
certificate is left registered without a PASS record. Run it while no unit is being provisioned on this
ledger, or pass --min-age so entries younger than that are left alone. A running line (`station run`) does
the same for its own station by itself (station.cleanup); this command is for the offline case, or for
entries the line's cleaner gave up on.

Exit codes: 0 everything resolved (or nothing to do), 3 some entries could not be resolved (they stay pending;
run it again once AWS is reachable), 2 bad input. A thin layer over `StationContext.reconcile`.
"""

from __future__ import annotations

import argparse
import json

from station.commands._options import add_config_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconcile",
        help="roll back or complete what a stopped station left half-done",
        description="Resolve every pending journal entry so no certificate stays registered without a PASS.",
        epilog="Example: station reconcile --target prod-eu",
    )
    p.add_argument("--target", help="only entries of this target")
    p.add_argument(
        "--min-age",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="leave entries younger than this alone (a unit may still be in progress); default 0",
    )
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.cli import EXIT_ERROR, EXIT_OK
    from station.config import load_config
    from station.context import StationContext
    from station.ledger import open_ledger

    config = load_config(args.config)
    with open_ledger(config.ledger_path, station_id=config.station_id) as ledger:
        context = StationContext(config, ledger=ledger)
        items = context.reconcile(only_target=args.target, min_age_s=args.min_age)
    failed = [i for i in items if i.action == "failed"]
    if args.json:
        print(json.dumps({"entries": [i.as_dict() for i in items], "unresolved": len(failed)}))
    else:
        if not items:
            print("Nothing to reconcile: the journal has no pending entries.")
        for i in items:
            print(f"{i.action:<18} {i.serial:<20} {i.target:<12} {i.certificate_id[:16]}  {i.detail}")
        if failed:
            print(
                f"{len(failed)} entr{'y' if len(failed) == 1 else 'ies'} could not be resolved; run again later."
            )
    return EXIT_ERROR if failed else EXIT_OK
