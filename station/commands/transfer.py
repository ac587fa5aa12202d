"""`station transfer SN --to T`: register a unit's certificate in another target (region or account).

    station transfer SA00001234 --to prod-us --yes
    station transfer SA00001234 --to other-account-eu --revoke-source --yes --json

The certificate comes from the unit's latest PASS record in the ledger (or its latest one in `--from`); it
is registered without a CA in the destination, with the unit's thing (the destination's thing-name template)
and policy — the seed's re-registration of the same device credentials in another region or account. With
--revoke-source it is then revoked at the source (the destination first, so the unit always has somewhere
to connect). Everything is recorded in the ledger with the operator.

It asks for confirmation on a terminal; without a terminal it refuses unless --yes is given (exit 2).
A thin layer over `station.qa.plan_transfer` / `transfer_unit`.
"""

from __future__ import annotations

import argparse
import json

from station.cli import EXIT_FAIL, EXIT_OK
from station.commands.register import (
    add_pin_argument,
    add_station_arguments,
    confirm_plan,
    not_found,
    qa_ledger,
)
from station.errors import StationError
from station.i18n import _

EXAMPLES = """examples:
  station transfer SA00001234 --to prod-us                    (asks first)
  station transfer SA00001234 --to other-account-eu --yes --json
  station transfer SA00001234 --to prod-us --revoke-source --yes
  echo "$QA_PIN" | station transfer SA00001234 --to prod-us --pin-stdin --yes   (a station with a QA PIN)

exit codes:
  0  transferred (registered in the destination; revoked at the source with --revoke-source), or already
     there: run again, it answers DONE "Already at target" and changes nothing
  1  FAIL: AWS refused the unit's certificate in the destination; or "n" at the question (nothing
     transferred)
  2  bad input or config; same registry; or no terminal to confirm and no --yes; a QA PIN missing,
     wrong or locked
  3  ERROR: station, network or AWS problem (a half-done transfer says what is left)
  4  not found: no such unit, no PASS record, or no such target
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transfer",
        help="register a unit's certificate in another target (another region or account)",
        description=(
            "Register the certificate of a unit's PASS record in another target with thing and policy, "
            "optionally revoke it at the source, and record it."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("serial", metavar="SN", help="the unit's serial (or its thing name or certificate id)")
    p.add_argument("--to", required=True, metavar="TARGET", help="the destination target")
    p.add_argument(
        "--from",
        dest="source",
        metavar="TARGET",
        help="take the unit's record in this target (default: its latest PASS record)",
    )
    p.add_argument(
        "--thing", metavar="NAME", help="thing name in the destination (default: its thing-name template)"
    )
    p.add_argument(
        "--revoke-source", action="store_true", help="revoke the certificate at the source afterwards"
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_pin_argument(p)
    add_station_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station import qa

    with qa_ledger(args, action="transfer") as (config, ledger, person):  # a person's own PIN names them
        try:
            plan = qa.plan_transfer(
                config,
                ledger,
                args.serial,
                to=args.to,
                source=args.source,
                thing=args.thing,
                revoke_source=args.revoke_source,
            )
        except qa.NotFound as error:
            return not_found(args, error)
        except qa.AlreadyDone as there:
            return already_done(args, there)
        lines = [
            f"Transfer {plan.serial}: certificate {plan.certificate_id[:12]}… from {plan.source_target} "
            f"to {plan.destination} as thing {plan.thing_name}"
        ]
        if plan.revoke_source:
            lines.append(f"  then revoke it in {plan.source_target}")
        question = f"Register the unit's certificate in {plan.destination}?"
        if not confirm_plan(args, lines, question, refused=_("Nothing transferred.")):
            return EXIT_FAIL
        result = qa.transfer_unit(
            config,
            ledger,
            plan.serial,
            to=plan.destination,
            operator=qa.operator_name(config, person or args.operator),
            plan=plan,
        )
    if args.json:
        print(json.dumps(result.as_dict()))
        return EXIT_OK
    reg = result.registration
    print(f"Transferred: {plan.serial} to {reg.target} ({reg.account_id}/{reg.region})")
    print(f"  {reg.message}")
    print(f"  thing        {reg.thing_name} ({'created' if reg.thing_created else 'existed'})")
    print(f"  certificate  {reg.certificate_id}")
    for done in result.source_revoke:
        state = "revoked" if done.existed else "was not registered there any more"
        print(f"  source       {done.item.target}: {state}")
    if not plan.revoke_source:
        print(f"  source       {plan.source_target}: still registered (use --revoke-source to remove it)")
    print(f"  recorded     attempt {reg.attempt_id} by {reg.operator}")
    return EXIT_OK


def already_done(args: argparse.Namespace, done: StationError) -> int:
    """A transfer run again: the unit is registered in the destination already. DONE, exit 0."""
    if args.json:
        print(json.dumps({"ok": True, "changed": False, **done.as_dict()}))  # kind AlreadyDone, outcome DONE
    else:
        print(f"{done.title}: {done.message}\n{done.next_action}")
    return EXIT_OK
