"""`station lab`: run the local AWS IoT (control plane + data plane) until Ctrl-C or SIGTERM.

Writes DIR/lab.json (how to reach it) and DIR/station.toml (a ready station config), prints where they are,
and exits cleanly. Training, rehearsal and CI use it; it never talks to real AWS.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lab",
        help="run the local AWS IoT (moto control plane + TLS data plane) until Ctrl-C",
        description="Run the local AWS IoT until Ctrl-C or SIGTERM. Example: station lab --state-dir ./lab --accounts 2 --regions ap-northeast-1,us-east-1",
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
    p.add_argument("--json", action="store_true", help="print lab.json on stdout once ready")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.lab import Lab

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
    try:
        with lab:
            if args.json:
                print(json.dumps(lab.description()), flush=True)
            else:
                print(f"Lab ready in {lab.start_seconds:.2f} s.", flush=True)
                print(f"  control plane: {lab.control.endpoint_url}", flush=True)
                print(f"  DynamoDB:      {lab.dynamodb_url}", flush=True)
                for r in lab.registries:
                    print(f"  {r.target.name}: account {r.account_id}, localhost:{r.data_port}", flush=True)
                print(f"  lab.json:      {lab.lab_json_path}", flush=True)
                print(f"  station.toml:  {lab.config_path}", flush=True)
                print("Ctrl-C to stop.", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("Lab stopped.", file=sys.stderr, flush=True)
    return 0
