"""`station demo`: the operator screen over a simulated line (lab + simulated devices on ptys)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the station over a simulated line (local AWS IoT + simulated devices)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("The demo line is being built: see README.md.")
    return 0
