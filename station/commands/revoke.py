"""`station revoke SN`: remove a unit's certificate from the registries the station registered it in.

    station revoke SA00001234 --yes
    station revoke SA00001234 --target prod-us --json --yes

The unit's PASS records in the ledger say which certificate is registered in which target; each is revoked
in AWS's order (detach policies, detach things, INACTIVE, delete) in that target — or only in `--target` —
and the thing is deleted where the ledger says the station made it. Each revoke is recorded in the ledger
with the operator. After it the unit's connect is hung up on (5134), as AWS does. Revoking again is harmless.

It asks for confirmation on a terminal; without a terminal it refuses unless --yes is given (exit 2).
A thin layer over `station.qa.plan_revoke` / `revoke_unit`.
"""

from __future__ import annotations

import argparse
import json

from station.cli import EXIT_ERROR, EXIT_FAIL, EXIT_OK
from station.commands.register import (
    add_pin_argument,
    add_station_arguments,
    confirm_plan,
    not_found,
    qa_ledger,
)
from station.i18n import _

EXAMPLES = """examples:
  station revoke SA00001234                 (asks before revoking)
  station revoke SA00001234 --yes --json    (scripts: no question)
  station revoke SA00001234 --target prod-us --yes
  echo "$QA_PIN" | station revoke SA00001234 --pin-stdin --yes   (a station with a QA PIN)

exit codes:
  0  revoked (or nothing was registered any more)
  1  "n" at the question: nothing revoked
  2  bad input or config; or no terminal to confirm and no --yes; a QA PIN missing, wrong or locked
  3  ERROR: a revoke failed in AWS (what is left is named; retry)
  4  not found: no such unit, no PASS record, or no such target
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "revoke",
        help="revoke a unit's certificate in AWS IoT (and delete the thing the station made)",
        description=(
            "Revoke the certificate(s) of a unit's PASS records in their targets, in AWS's order, delete "
            "the thing the station made, and record who did it."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("serial", metavar="SN", help="the unit's serial (or its thing name or certificate id)")
    p.add_argument("--target", help="revoke only in this target (default: every target it is registered in)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_pin_argument(p)
    add_station_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station import qa

    with qa_ledger(args, action="revoke") as (config, ledger, person):  # a person's own PIN names them
        try:
            plan = qa.plan_revoke(config, ledger, args.serial, target=args.target)
        except qa.NotFound as error:
            return not_found(args, error)
        lines = [f"Revoke {plan.serial}:"] + [
            f"  {item.target:<24} certificate {item.certificate_id[:12]}…  {_thing(item)}"
            for item in plan.items
        ]
        question = f"The unit will no longer connect to {', '.join(plan.targets)}. Revoke?"
        if not confirm_plan(args, lines, question, refused=_("Nothing revoked.")):
            return EXIT_FAIL
        result = qa.revoke_unit(
            config, ledger, plan.serial, operator=qa.operator_name(config, person or args.operator), plan=plan
        )
    if args.json:
        print(json.dumps(result.as_dict()))
        return EXIT_OK if result.ok else EXIT_ERROR
    for done in result.done:
        item = done.item
        if not done.ok:
            problem = done.error or {}
            print(f"✘ {item.target}: {problem.get('title', 'failed')}: {problem.get('message', '')}")
            print(_("  Next: {next_action}").format(next_action=problem.get("next_action", "")))
            continue
        state = "revoked" if done.existed else "was not registered (already revoked)"
        line = f"✔ {item.target}: certificate {item.certificate_id[:12]}… {state}"
        if done.thing_deleted:
            line += f"; thing {done.thing_deleted} " + (
                "deleted" if done.existed else "removed if still there"
            )
        elif item.thing_name:
            line += f"; thing {item.thing_name} kept ({item.keep_reason or 'not made by the station'})"
        print(line)
    print(_("Recorded in the ledger by {operator}.").format(operator=result.operator))
    return EXIT_OK if result.ok else EXIT_ERROR


def _thing(item: object) -> str:
    name = getattr(item, "thing_name", "")
    if not name:
        return "no thing recorded"
    if getattr(item, "delete_thing", None):
        return f"thing {name} (will be deleted)"
    return f"thing {name} (kept: {getattr(item, 'keep_reason', '')})"
