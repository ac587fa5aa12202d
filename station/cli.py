"""`station …`: the command line, a thin layer over the library.

Each subcommand lives in its own module under `station.commands` and exposes `register(subparsers)`, which
adds its parser and sets `func(args) -> int`. This module only discovers them, parses, runs, and turns a
`StationError` into a clear message and a documented exit code. It must not hold any business logic.

Exit codes (stable; scripts depend on them):
  0  success / PASS
  1  FAIL: the unit is bad
  2  usage or input error (bad arguments, bad file, bad config, invalid scan)
  3  ERROR: station, network or cloud problem
  4  not found (no such unit, target or record)
  5  integrity problem (the ledger's hash chain is broken)
 130 interrupted
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence

from station import commands
from station.errors import InputError, StationError, UnitFault

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_NOT_FOUND = 4
EXIT_INTEGRITY = 5
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="station",
        description="Factory provisioning station for AWS IoT devices.",
        epilog="Exit codes: 0 ok/PASS, 1 FAIL, 2 usage/input, 3 ERROR, 4 not found, 5 integrity, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def exit_code_for(error: StationError) -> int:
    if isinstance(error, UnitFault):
        return EXIT_FAIL
    if isinstance(error, InputError):
        return EXIT_USAGE
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except StationError as error:
        if getattr(args, "json", False):
            print(json.dumps({"error": error.as_dict()}))
        else:
            print(f"{error.title}: {error.message}\nNext: {error.next_action}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
