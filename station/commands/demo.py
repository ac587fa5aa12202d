"""`station demo`: the station over a simulated line (the lab + one simulated unit per slot).

    station demo                                    # the operator screen: 4 slots, one per device family
    station demo --headless --slots 4 --units 40    # feed 40 fresh PROV/1 units through the line, print a summary
    station demo --headless --families prov1,expresslink,nrf91,esp32 --units 8    # a mixed line
    station demo --headless --units 20 --fault-every 5 --json     # every 5th unit is a bad one (FAIL + rollback)
    station demo --headless --paced --slots 8 --units 80          # devices answer at 115200 baud wire time

Slots take the `--families` round-robin (default: every family for the interactive demo, PROV/1 only headless).
Headless, every unit is a fresh simulated device of its slot's family (new device id, new store). A PROV/1
unit's printed serial is its device id, so the station's cross-check passes; ExpressLink, nRF91 and ESP32 units
carry family serials (`EL####`, `NRF####`, `ESP####`) that are not their device ids (ThingName, IMEI, MAC), so
the demo's products turn the cross-check off (see `station.lab.demo`). On a mixed line every slot takes an even
share of the units. A demo fault (`--fault-every K`, `--fault KIND`) makes every K-th unit a bad one that must
come out FAIL with what it registered rolled back (a family gets only the faults its simulator can act out).
The summary gives per unit the family, serial, outcome, thing name, device id, certificate id, target, step
timings and the unit's store; then the totals, per family too.

Exit codes: 0 when every unit PASSed, or every non-PASS was an injected demo fault that came out as expected;
otherwise 1 (a unit FAILed unexpectedly) or 3 (an ERROR). A thin layer over `station.lab.demo.DemoLine`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from station.cli import add_language_argument
from station.errors import StationFault
from station.i18n import _

if TYPE_CHECKING:
    from station.lab.demo import DemoLine  # the lab loads only when a demo starts

EXAMPLES = """examples:
  station demo
  station demo --families prov1,esp32
  station demo --lang ja
  station demo --headless --slots 4 --units 40
  station demo --headless --families all --slots 4 --units 8
  station demo --headless --units 20 --fault-every 5 --fault disconnect --json
  station demo --headless --paced --slots 8 --units 80 --state-dir /tmp/demo
  station demo --headless --lab lab/lab.json --station-id line2 --ledger "dynamodb://station-ledger?region=…"
               (one of several stations on a running `station lab`; lab.json names its ledger URL)

families:    prov1 (serials SIM####), expresslink (EL####), nrf91 (NRF####), esp32 (ESP####; the real
             esptool on a pty), or all
demo faults: disconnect (drops off part-way), bad-store (its store corrupts what it keeps; not ExpressLink),
             wrong-unit (not the unit that was scanned; PROV/1, headless only: the interactive demo sends a
             scan to the jig holding that unit, so such a label is refused at the scan instead),
             mixed (each in turn; the default)
"""

# The demo faults by name, kept here so that `station --help` need not import the demo (and with it the
# lab, moto and botocore); tests/robustness/test_startup.py checks it equals station.lab.demo's list.
FAULT_CHOICES = ("mixed", "disconnect", "bad-store", "wrong-unit")

STEP_ORDER = ("identify", "identity", "write", "register", "write_register", "verify", "record", "total")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the station over a simulated line (local AWS IoT + simulated devices)",
        description="Start the lab and one simulated unit per slot, then open the operator screen over "
        "them — or, with --headless, feed units through the line and print a summary.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--headless", action="store_true", help="no screen: feed --units units and print a summary"
    )
    p.add_argument(
        "--slots", type=int, default=4, help="slots on the line, one simulated unit each (default 4)"
    )
    p.add_argument(
        "--families",
        default=None,
        metavar="F1,F2,…",
        help="device families of the slots, round-robin (prov1, expresslink, nrf91, esp32, or all; default: "
        "all for the interactive demo, prov1 headless)",
    )
    p.add_argument(
        "--units", type=int, default=20, help="units to feed through the line (headless; default 20)"
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="where the lab, the station.toml, the ledger and the units' flash files go (default: a new "
        "temporary folder; headless runs keep it and print it, the interactive demo removes it on exit)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text (headless)")
    p.add_argument(
        "--fault-every",
        type=int,
        default=0,
        metavar="K",
        help="make every K-th unit a faulty demo unit (default 0: none)",
    )
    p.add_argument(
        "--fault",
        choices=FAULT_CHOICES,
        default=FAULT_CHOICES[0],
        help="which demo fault the faulty units have (default: each in turn)",
    )
    p.add_argument(
        "--paced", action="store_true", help="devices answer at wire speed (--baud) instead of pty speed"
    )
    p.add_argument(
        "--baud", type=int, default=115200, help="the devices' baud rate when paced (default 115200)"
    )
    p.add_argument("--no-throttling", action="store_true", help="switch off AWS's default quotas in the lab")
    p.add_argument(
        "--lab",
        metavar="LAB_JSON",
        help="join a running lab (`station lab`'s lab.json) instead of starting one: several stations, one lab",
    )
    p.add_argument("--station-id", metavar="ID", help="this station's id (default lab-station)")
    p.add_argument(
        "--ledger",
        metavar="WHERE",
        help="the ledger: a file, or a shared one (dynamodb://TABLE?region=R&endpoint_url=U; see lab.json)",
    )
    p.add_argument(
        "--budget-store",
        metavar="URL",
        help="the AWS rate budget shared with other stations (default with --lab: the lab's budget_url; "
        "'none': this station's own)",
    )
    p.add_argument(
        "--printer",
        metavar="WHERE",
        help="print a label for every PASS: tcp://HOST:9100 (a Zebra), lp://QUEUE (CUPS) or a file path",
    )
    add_language_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.errors import InputError
    from station.lab.demo import FAMILIES, parse_families

    if args.families is not None:
        args.families = parse_families(args.families)
    else:
        args.families = ["prov1"] if args.headless else list(FAMILIES)
    if args.baud <= 0:
        raise InputError(
            _("Bad baud rate"),
            _("{baud} is not a baud rate.").format(baud=args.baud),
            _("Give a positive number, e.g. 115200."),
        )
    if args.headless and args.units < 1:
        raise InputError(
            _("Bad unit count"),
            _("Feed at least one unit, not {units}.").format(units=args.units),
            _("Use --units 1 or more."),
        )
    if args.state_dir is None:
        args.state_dir = tempfile.mkdtemp(prefix="station-demo-")
        if not args.headless:
            try:
                return run_interactive(args)
            finally:
                shutil.rmtree(args.state_dir, ignore_errors=True)
    if not args.headless:
        return run_interactive(args)
    return run_headless(args)


def demo_line(args: argparse.Namespace, **mode: Any) -> DemoLine:
    """The `DemoLine` the command's options describe; `mode` adds what headless or interactive decides."""
    from station.lab.demo import DemoLine  # the lab loads here, when a demo starts

    return DemoLine(
        args.state_dir,
        slots=args.slots,
        families=args.families,
        paced=args.paced,
        baud=args.baud,
        lab_throttling=not args.no_throttling,
        fault=args.fault,
        printer=args.printer,
        **mode,
    )


def run_headless(args: argparse.Namespace) -> int:
    families_of: dict[str, str] = {}  # slot → family, once the demo has assigned them

    def progress(event: Any) -> None:
        if event.kind == "unit_finished":
            print(
                f"  {event.slot:<8} {families_of.get(event.slot, ''):<11} {event.serial:<12} "
                f"{event.outcome:<5} {event.title}",
                file=sys.stderr,
                flush=True,
            )

    demo = demo_line(
        args, fault_every=args.fault_every, on_event=None if args.json else progress, **joining(args)
    )
    families_of.update(demo.slot_families)
    with demo:
        if not args.json:
            target = demo.lab.target()
            print(
                f"Demo line: {args.slots} slots ({', '.join(demo.families)}), {args.units} units, "
                f"target {target.name} "
                f"({target.account_id}/{target.region}); state in {demo.state_dir}",
                file=sys.stderr,
                flush=True,
            )
        report = demo.run_units(args.units)
        document = {
            "units": [o.summary() for o in report.outcomes],
            "totals": report.totals(),
            "state_dir": str(demo.state_dir),
            "config": str(demo.config_path),
            "ledger": str(demo.config.ledger_path) if demo.config else None,
            "paced": args.paced,
            "baud": args.baud,
            "throttling": not args.no_throttling,
            "slot_families": dict(demo.slot_families),
        }
    if args.json:
        print(json.dumps(document))
    else:
        print_summary(document)
    return exit_code(report)


def joining(args: argparse.Namespace) -> dict[str, Any]:
    """The DemoLine options of a station that joins a running lab (and shares its ledger and budget)."""
    if not args.lab:
        return {"station_id": args.station_id, "ledger": args.ledger, "budget_store": args.budget_store}
    from station.lab.lab import JoinedLab

    lab = JoinedLab(args.lab, args.state_dir)
    control = lab.described["control_plane"]
    # The lab's DynamoDB (shared ledger, shared budget) takes the lab's keys, as its control plane does.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", str(control["aws_access_key_id"]))
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", str(control["aws_secret_access_key"]))
    return {
        "lab_json": args.lab,
        "station_id": args.station_id,
        "ledger": args.ledger,
        # "none": this station keeps its own in-process budget (to compare with a shared one).
        "budget_store": None if args.budget_store == "none" else (args.budget_store or lab.budget_url),
    }


def exit_code(report: Any) -> int:
    """0 when everything came out as it should; else 3 if any surprise was an ERROR, 1 otherwise."""
    from station.cli import EXIT_ERROR, EXIT_FAIL, EXIT_OK
    from station.model import Outcome

    surprises = report.unexpected
    if not surprises:
        return EXIT_OK
    if any(o.result.outcome == Outcome.ERROR for o in surprises):
        return EXIT_ERROR
    return EXIT_FAIL


def _timings(timings: dict[str, float]) -> str:
    names = sorted(timings, key=lambda k: STEP_ORDER.index(k) if k in STEP_ORDER else len(STEP_ORDER))
    return "  ".join(f"{k} {timings[k]:.0f} ms" for k in names)


def print_summary(document: dict[str, Any]) -> None:
    for unit in document["units"]:
        fault = ""
        if unit["fault"]:
            verdict = "as expected" if unit["as_expected"] else f"expected {unit['expected']}"
            fault = f"  [demo fault: {unit['fault']}, {verdict}]"
        print(
            f"#{unit['unit']:<4} {unit['slot']:<8} {unit['family']:<11} {unit['serial']:<12} "
            f"{unit['outcome']:<5} {unit['title']}{fault}"
        )
        if unit["outcome"] != "PASS":
            print(f"       {unit['message']}  Next: {unit['next_action']}")
        if unit["device_id"] and unit["device_id"] != unit["serial"]:
            print(f"       device id {unit['device_id']}")
        if unit["thing_name"]:
            print(f"       thing {unit['thing_name']}  target {unit['target']}")
        if unit["certificate_id"]:
            print(f"       certificate {unit['certificate_id']}")
        for comp in unit["compensations"]:
            print(f"       undo {comp['action']}: {'ok' if comp['ok'] else 'FAILED'} — {comp['detail']}")
        if unit["timings_ms"]:
            print(f"       {_timings(unit['timings_ms'])}")
        print(f"       flash {unit['store']}")
    t = document["totals"]
    injected = f" ({t['injected_faults']} injected demo faults)" if t["injected_faults"] else ""
    print(
        f"Totals: {t['units']} units on {t['slots']} slots — {t['pass']} PASS, {t['fail']} FAIL, "
        f"{t['error']} ERROR{injected}; {t['unexpected']} unexpected"
    )
    if len(t["families"]) > 1:
        order = list(dict.fromkeys(document.get("slot_families", {}).values()))  # the line's slot order
        names = sorted(t["families"], key=lambda n: order.index(n) if n in order else len(order))
        rows = [(n, t["families"][n]) for n in names]
        print(
            "        by family: "
            + "; ".join(f"{n} {r['pass']} PASS, {r['fail']} FAIL, {r['error']} ERROR" for n, r in rows)
        )
    print(f"        wall {t['wall_s']:.2f} s, {t['units_per_hour']:.0f} units/hour")
    print(f"        station.toml {document['config']}  ledger {document['ledger']}")


def run_interactive(args: argparse.Namespace) -> int:
    """The operator screen over the demo line (issue 6): by default 4 slots, one per device family."""
    try:
        from station.tui import EventRelay, run_app
    except ImportError:
        raise StationFault(
            _("No operator screen"),
            _("The interactive demo needs the station's screen (station.tui), which is not installed here."),
            _("Run `station demo --headless` instead."),
        ) from None
    from station.desk import QaServices

    relay = EventRelay()
    # The operator types the serial of a unit in a jig (the help panel, F1, lists them, faulty ones
    # marked); the station sends it to the jig holding that unit (PROV/1, whose label is its id) or to the
    # family's free jig. A fresh unit goes into a jig after each unit; every third put in is a faulty demo
    # unit (FAIL and its rollback), decided when it is put in, so the announced ones are the ones that FAIL.
    every = args.fault_every or 3
    demo = demo_line(args, fault_every=every, on_event=relay, auto_replace=True, routed=True)
    with demo:
        assert demo.config is not None
        qa = QaServices(
            demo.config,
            demo.ledger,
            line=demo.line,
            put_in_jig=demo.put_back,  # QA's re-verify: the recorded unit goes back into the chosen jig
        )
        code = run_app(demo.config, demo.line, qa=qa, relay=relay, help_content=demo_help(demo, every))
    if code:
        from station.commands.run import screen_ended

        return screen_ended(code)
    return 0


def demo_help(demo: Any, every: int) -> Callable[[], Any]:
    """The help panel's content (F1), read when it opens: the units in the jigs now, which are faulty, the PIN."""
    from station.i18n import _
    from station.lab.lab import LAB_QA_PIN
    from station.tui import HelpContent, JigUnit

    def content() -> HelpContent:
        units = tuple(
            JigUnit(
                slot=unit.slot,
                family=unit.family,
                serial=unit.serial,
                fault=_(unit.fault_text) if unit.fault_text else "",
            )
            for unit in demo.jig_units()  # the demo's own list: the faulty ones are the ones that FAIL
        )
        return HelpContent(
            intro=_("This is the lab, not AWS: every jig holds a simulated unit."),
            scan=(
                _(
                    "Scan (type) the serial of a unit listed above; after each unit, its jig gets a fresh one."
                ),
            ),
            units=units,
            faults=(
                _("Every unit put in a jig is a faulty demo unit: watch it FAIL and roll back.")
                if every == 1
                else _(
                    "One unit in {every} put in a jig is a faulty demo unit: watch it FAIL and roll back."
                ).format(every=every)
            ),
            qa_pin=LAB_QA_PIN,
        )

    return content
