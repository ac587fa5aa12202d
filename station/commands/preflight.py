"""`station preflight [--target T]`: check that the station can work with its targets, before a shift.

    station preflight
    station preflight --target prod-eu --json

Per target (all of them at once unless --target): the credentials resolve (and act in the configured
account), the data endpoint is reachable, the policy exists (or can be made from the configured document),
and the policy is not over-broad — `iot:*` on `*` is refused for any target not marked lab. Each check is
printed with ✔/✘, its reason and what to do. The ledger must be writable too; the result is recorded there.
Read-only towards AWS. A thin layer over `station.qa.preflight`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from station.cli import EXIT_ERROR, EXIT_OK
from station.commands.register import add_station_arguments, ledger_location, not_found

EXAMPLES = """examples:
  station preflight
  station preflight --target prod-eu --json
  station preflight --config lab-state/station.toml

exit codes:
  0  every check passed
  2  bad config
  3  a check failed (credentials, endpoint, policy, policy too broad, ledger)
  4  not found: no such target
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preflight",
        help="check credentials, endpoints and policies of the targets",
        description=(
            "Check every target (or one): credentials, data endpoint, policy present and not over-broad "
            "(iot:* on * is refused unless the target is lab), and that the ledger is writable."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", help="check only this target")
    add_station_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station import qa
    from station.config import load_config
    from station.errors import StationError
    from station.ledger import open_ledger
    from station.registry import Check

    config = load_config(args.config)
    if args.target is not None:
        try:
            qa.find_target(config, args.target)
        except qa.NotFound as error:
            return not_found(args, error)
    operator = qa.operator_name(config, args.operator)
    location = ledger_location(args, config)
    try:
        ledger: Any = open_ledger(location, station_id=config.station_id)
    except StationError as error:
        ledger = None
        ledger_problem = Check("ledger", False, f"{location}: {error.message}", error.next_action)
    try:
        report = qa.preflight(config, target=args.target, ledger=ledger, operator=operator)
    finally:
        if ledger is not None:
            ledger.close()
    if ledger is None:
        report = qa.PreflightReport(report.targets, (ledger_problem,))
    if args.json:
        print(json.dumps({"config": str(config.path), **report.as_dict()}))
        return EXIT_OK if report.ok else EXIT_ERROR
    print(f"Preflight of station {config.station_id} ({config.path})")
    _checks(report.station)
    for target in report.targets:
        kind = "lab" if target.lab else "production"
        print(f"{target.target}  ({kind}, {target.where})")
        _checks(target.checks)
    failed = sum(1 for c in report.station if not c.ok) + sum(
        1 for t in report.targets for c in t.checks if not c.ok
    )
    print("All checks passed." if report.ok else f"{failed} check(s) failed.")
    return EXIT_OK if report.ok else EXIT_ERROR


def _checks(checks: Any) -> None:
    for check in checks:
        mark = "✔" if check.ok else "✘"
        print(f"  {mark} {check.name:<16} {check.message}")
        if not check.ok and check.next_action:
            print(f"    {'':<16} Next: {check.next_action}")
