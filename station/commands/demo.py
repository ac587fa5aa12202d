"""`station demo`: the station over a simulated line (the lab + one simulated PROV/1 unit per slot on a pty).

    station demo                                    # the operator screen over 4 simulated slots
    station demo --headless --slots 4 --units 40    # feed 40 fresh units through the line, print a summary
    station demo --headless --units 20 --fault-every 5 --json     # every 5th unit is a bad one (FAIL + rollback)
    station demo --headless --paced --slots 8 --units 80          # devices answer at 115200 baud wire time

Headless, every unit is a fresh simulated device (new device id, new flash file) whose printed serial is its
device id, so the station's cross-check passes; a demo fault (`--fault-every K`, `--fault KIND`) makes every
K-th unit a bad one that must come out FAIL with what it registered rolled back. The summary gives per unit the
serial, outcome, thing name, certificate id, target, step timings and the unit's flash file; then the totals.

Exit codes: 0 when every unit PASSed, or every non-PASS was an injected demo fault that came out as expected;
otherwise 1 (a unit FAILed unexpectedly) or 3 (an ERROR). A thin layer over `station.demo.DemoLine`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from typing import Any

from station.errors import StationFault

EXAMPLES = """examples:
  station demo
  station demo --headless --slots 4 --units 40
  station demo --headless --units 20 --fault-every 5 --fault disconnect --json
  station demo --headless --paced --slots 8 --units 80 --state-dir /tmp/demo

demo faults: disconnect (drops off mid-write), bad-store (flash corrupts what it keeps),
             wrong-unit (not the unit that was scanned), mixed (each in turn; the default)
"""

STEP_ORDER = ("identify", "identity", "write", "register", "write_register", "verify", "record", "total")


def register(sub: argparse._SubParsersAction) -> None:
    from station.demo import DEMO_FAULTS, MIXED

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
        choices=[MIXED, *DEMO_FAULTS],
        default=MIXED,
        help="which demo fault the faulty units have (default: each in turn)",
    )
    p.add_argument(
        "--paced", action="store_true", help="devices answer at wire speed (--baud) instead of pty speed"
    )
    p.add_argument(
        "--baud", type=int, default=115200, help="the devices' baud rate when paced (default 115200)"
    )
    p.add_argument("--no-throttling", action="store_true", help="switch off AWS's default quotas in the lab")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.errors import InputError

    if args.baud <= 0:
        raise InputError(
            "Bad baud rate", f"{args.baud} is not a baud rate.", "Give a positive number, e.g. 115200."
        )
    if args.headless and args.units < 1:
        raise InputError(
            "Bad unit count", f"Feed at least one unit, not {args.units}.", "Use --units 1 or more."
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


def run_headless(args: argparse.Namespace) -> int:
    from station.demo import DemoLine

    progress = None if args.json else _progress
    demo = DemoLine(
        args.state_dir,
        slots=args.slots,
        paced=args.paced,
        baud=args.baud,
        lab_throttling=not args.no_throttling,
        fault_every=args.fault_every,
        fault=args.fault,
        on_event=progress,
    )
    with demo:
        if not args.json:
            target = demo.lab.target()
            print(
                f"Demo line: {args.slots} slots, {args.units} units, target {target.name} "
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
        }
    if args.json:
        print(json.dumps(document))
    else:
        print_summary(document)
    return exit_code(report)


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


def _progress(event: Any) -> None:
    if event.kind == "unit_finished":
        print(
            f"  {event.slot:<8} {event.serial:<12} {event.outcome:<5} {event.title}",
            file=sys.stderr,
            flush=True,
        )


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
            f"#{unit['unit']:<4} {unit['slot']:<8} {unit['serial']:<12} {unit['outcome']:<5} {unit['title']}{fault}"
        )
        if unit["outcome"] != "PASS":
            print(f"       {unit['message']}  Next: {unit['next_action']}")
        if unit["thing_name"]:
            print(f"       thing {unit['thing_name']}  target {unit['target']}")
        if unit["certificate_id"]:
            print(f"       certificate {unit['certificate_id']}")
        for comp in unit["compensations"]:
            print(f"       undo {comp['action']}: {'ok' if comp['ok'] else 'FAILED'} — {comp['detail']}")
        if unit["timings_ms"]:
            print(f"       {_timings(unit['timings_ms'])}")
        print(f"       flash {unit['flash_file']}")
    t = document["totals"]
    injected = f" ({t['injected_faults']} injected demo faults)" if t["injected_faults"] else ""
    print(
        f"Totals: {t['units']} units on {t['slots']} slots — {t['pass']} PASS, {t['fail']} FAIL, "
        f"{t['error']} ERROR{injected}; {t['unexpected']} unexpected"
    )
    print(f"        wall {t['wall_s']:.2f} s, {t['units_per_hour']:.0f} units/hour")
    print(f"        station.toml {document['config']}  ledger {document['ledger']}")


def run_interactive(args: argparse.Namespace) -> int:
    """The operator screen over the demo line (issue 6 builds on this)."""
    try:
        from station.tui import EventRelay, run_app
    except ImportError:
        raise StationFault(
            "No operator screen",
            "The interactive demo needs the station's screen (station.tui), which is not installed here.",
            "Run `station demo --headless` instead.",
        ) from None
    from station.demo import DemoLine

    relay = EventRelay()
    # An operator types any serial the product accepts: without the device-id cross-check the unit in the
    # jig takes it, so a newcomer need not know the simulated unit's id. A fresh unit goes into a jig after
    # each unit; every third is a faulty demo unit (FAIL and its rollback).
    demo = DemoLine(
        args.state_dir,
        slots=args.slots,
        paced=args.paced,
        baud=args.baud,
        lab_throttling=not args.no_throttling,
        fault_every=args.fault_every or 3,
        fault=args.fault,
        on_event=relay,
        auto_replace=True,
        check_device_id=False,
    )
    with demo:
        assert demo.config is not None
        welcome = (
            "This is the lab, not AWS. Type a serial such as SIM0001 and press Enter to provision the unit "
            f"in the next free jig. Every {args.fault_every or 3}rd unit is a faulty demo unit: watch it FAIL "
            "and roll back. F3 opens the QA desk (PIN 0000); Ctrl+Q quits."
        )
        run_app(demo.config, demo.line, demo.ledger, relay=relay, welcome=welcome)
    return 0
