"""`station lab`: run the local AWS IoT (control plane + data plane) until Ctrl-C or SIGTERM.

Writes DIR/lab.json (how to reach it) and DIR/station.toml (a ready station config), prints where they are,
and exits cleanly. Training, rehearsal and CI use it; it never talks to real AWS.

With `--units N` (default 2) it also starts N simulated PROV/1 units, each on a pseudo-terminal of its own,
and station.toml gets a slot per unit, so `station run --config DIR/station.toml` starts on it at once; it
prints each slot's unit serial (what to type at the station). The units stop with the lab. `--units 0`
writes a station.toml without slots and says in it how to add one for a unit started by `station sim prov1`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from station.i18n import _

EXAMPLES = """examples:
  station lab --state-dir ./lab --accounts 2 --regions ap-northeast-1,us-east-1
  station lab --state-dir ./lab --units 4        then, in another terminal:
  station run --config ./lab/station.toml        (type a serial the lab printed, e.g. SIM12345678)
  station lab --state-dir ./lab --units 0        (no units: add a [slots.NAME] for `station sim prov1`)
"""
MAX_UNITS = 64


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lab",
        help="run the local AWS IoT (moto control plane + TLS data plane) until Ctrl-C",
        description="Run the local AWS IoT until Ctrl-C or SIGTERM, with --units simulated PROV/1 units, a "
        "slot each in the station.toml it writes (so `station run` starts on it).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--state-dir", default="./lab-state", help="where lab.json, station.toml and the lab CA go"
    )
    p.add_argument("--accounts", type=int, default=2, help="number of AWS accounts (1-9, default 2)")
    p.add_argument(
        "--regions", default="ap-northeast-1,us-east-1", help="comma-separated regions (default: %(default)s)"
    )
    p.add_argument("--no-throttling", action="store_true", help="switch off AWS's default quotas")
    p.add_argument("--control-port", type=int, default=0, help="control-plane port (default: a free one)")
    p.add_argument(
        "--units",
        type=int,
        default=2,
        metavar="N",
        help="simulated PROV/1 units to start, one slot each in station.toml (default 2; 0: none)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print lab.json on stdout once ready, then a line {"units": [{slot, port, serial}, …]}',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.errors import InputError
    from station.lab import Lab

    if not 0 <= args.units <= MAX_UNITS:
        raise InputError(
            "Bad unit count",
            _("The lab starts 0 to {most} simulated units, not {units}.").format(
                most=MAX_UNITS, units=args.units
            ),
            _("Use --units 0..{most}.").format(most=MAX_UNITS),
        )
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    lab = Lab(
        Path(args.state_dir),
        accounts=args.accounts,
        regions=regions,
        throttling=not args.no_throttling,
        control_port=args.control_port,
        dynamodb_process=True,  # many station processes' ledger and budget traffic: its own process, own GIL
    )
    units: list[Any] = []
    try:
        with lab:
            try:
                slots = start_units(lab, args.units, units)
                if slots:
                    lab.config_path.write_text(
                        lab.station_toml(slots={n: port for n, (port, _) in slots.items()})
                    )
            except BaseException:
                stop_units(units)
                raise
            if args.json:
                print(json.dumps(lab.description()), flush=True)
                units_json = [
                    {"slot": n, "port": port, "serial": serial} for n, (port, serial) in slots.items()
                ]
                print(json.dumps({"units": units_json}), flush=True)
            else:
                print(f"Lab ready in {lab.start_seconds:.2f} s.", flush=True)
                print(f"  control plane: {lab.control.endpoint_url}", flush=True)
                print(f"  DynamoDB:      {lab.dynamodb_url}", flush=True)
                for r in lab.registries:
                    print(f"  {r.target.name}: account {r.account_id}, localhost:{r.data_port}", flush=True)
                print(f"  lab.json:      {lab.lab_json_path}", flush=True)
                print(f"  station.toml:  {lab.config_path}", flush=True)
                for name, (port, serial) in slots.items():
                    print(f"  slot {name}: unit {serial} on {port}", flush=True)
                if slots:
                    print(
                        _("Start the station: station run --config {config}  (type a unit's serial)").format(
                            config=lab.config_path
                        ),
                        flush=True,
                    )
                else:
                    print(_("No units: station.toml says how to add a slot for one."), flush=True)
                print("Ctrl-C to stop.", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            finally:
                stop_units(units)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("Lab stopped.", file=sys.stderr, flush=True)
    return 0


def start_units(lab: Any, count: int, started: list[Any]) -> dict[str, tuple[str, str]]:
    """`count` simulated PROV/1 units on ptys of their own (trusting the lab's CA): slot → (port, serial).
    Each is appended to `started` as it starts, so a failure part-way still stops those."""
    from flashers.simulators.prov1 import Prov1Device
    from flashers.simulators.pty import PtyDevice

    slots: dict[str, tuple[str, str]] = {}
    for i in range(count):
        model = Prov1Device(Path(lab.state_dir) / "devices", ca_file=str(lab.ca_file))
        pty = PtyDevice(model, name=f"s{i + 1} {model.device_id}").start()
        started.append(pty)
        slots[f"s{i + 1}"] = (pty.port, model.device_id)
    return slots


def stop_units(units: list[Any]) -> None:
    for pty in units:
        pty.stop()
