"""`station audit verify`: prove the ledger is intact, or name the first tampered row; `station audit
checkpoint`: sign the chain head into the anchor log now (e.g. at a shift's end).

verify checks every event row and attempt record against the hash chain, the unit table against a replay of
the records, the journal against its chained events, and the chain against the newest signed checkpoint
(truncation, re-chaining); on a shared DynamoDB ledger, one station's chain (`--station`, else the config's
`[station] id`) or every station's (`--all-stations`) against its own head and the factory anchor. Exit 0 when all hold, 5 (`EXIT_INTEGRITY`) naming what it found otherwise. On a
terminal it shows progress on stderr. Read-only on the ledger: it never repairs, rewrites or re-chains
anything (checkpoint only appends to the anchor log, outside the ledger).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from station.cli import EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE
from station.i18n import _
from station.ledger import add_location_arguments, ledger_location, open_ledger

EXAMPLES = """examples:
  station audit verify --ledger /var/lib/station/ledger.sqlite
  station audit verify --since-checkpoint          (only what came after the last signed checkpoint)
  station audit verify --config station.toml --json
  station audit verify --ledger "dynamodb://station-ledger?region=eu-west-1" --all-stations
  station audit checkpoint --ledger ledger.sqlite   (sign the head now, e.g. at a shift's end)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="check the ledger's integrity",
        description="Check the ledger's integrity (verify) or sign its head now (checkpoint).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="prove the ledger is intact (exit 5 names the first tampered row)",
        description="Check the hash chain, every record, the unit states, the journal and the signed anchor.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location_arguments(verify)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument(
        "--since-checkpoint",
        action="store_true",
        help="trust everything up to the newest signed checkpoint and verify only what came after it",
    )
    verify.add_argument(
        "--station",
        metavar="ID",
        help="a shared (DynamoDB) ledger: check this station's chain (default: --config's [station] id, "
        "else every station)",
    )
    verify.add_argument(
        "--all-stations",
        action="store_true",
        help="a shared (DynamoDB) ledger: check every station's chain and the factory anchor",
    )
    verify.set_defaults(func=run_verify)
    checkpoint = actions.add_parser(
        "checkpoint",
        help="sign the chain head into the anchor log now",
        description="Sign the ledger's head (seq, hash) with the anchor key and append it to the anchor log.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_location_arguments(checkpoint)
    checkpoint.add_argument(
        "--station",
        metavar="ID",
        help="a shared (DynamoDB) ledger: this station's chain (default: --config's)",
    )
    checkpoint.set_defaults(func=run_checkpoint)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal (rich if installed, else one rewritten line)."""
    if not enabled:
        yield None
        return
    try:
        from rich.progress import Progress
    except ImportError:
        last = [0.0]

        def line(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or done >= total:
                last[0] = now
                share = f" ({100 * done // total}%)" if total else ""
                print(f"\rChecking event {done} of {total}{share}", end="", file=sys.stderr, flush=True)

        yield line
        print(file=sys.stderr)
        return
    with Progress(transient=True) as bar:
        task = bar.add_task("Checking the chain", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def _station_id(args: argparse.Namespace) -> str | None:
    """The station whose chain a shared ledger's audit checks: --station, else the config's [station] id."""
    if args.station:
        return str(args.station)
    if args.config and not getattr(args, "all_stations", False):
        from station.config import load_config

        return load_config(args.config).station_id
    return None


def run_verify(args: argparse.Namespace) -> int:
    location = ledger_location(args.ledger, args.config)
    with (
        open_ledger(location, create=False, station_id=_station_id(args)) as ledger,
        _progress(sys.stderr.isatty() and not args.json) as tick,
    ):
        result = ledger.audit(
            progress=tick, since_checkpoint=args.since_checkpoint, all_stations=args.all_stations
        )
    if args.json:
        print(json.dumps({"ledger": location, **result.to_dict()}))
    elif result.ok:
        scope = f" after the checkpoint at event {result.since_seq}" if result.since_seq else ""
        print(f"Ledger intact{scope}: {result.checked} rows, {result.units_checked} unit states checked.")
        if result.stations:
            for station, seq, digest in result.stations:
                print(f"Station {station}: head event {seq}, hash {digest}")
        else:
            print(f"Head: event {result.head_seq}, hash {result.head_hash}")
        if result.anchored_seq:
            print(f"Anchored: matches the signed checkpoint at event {result.anchored_seq}.")
        if result.anchor_note:
            print(f"Note: {result.anchor_note}.")
    else:
        where = f" in station {result.station}'s chain" if result.station else ""
        print(f"Ledger TAMPERED: first bad row is {result.first_bad_row}{where}: {result.reason}.")
        print(f"{result.checked} row(s) checked before it.")
        print(_("Next: keep a copy of the file as evidence and call the person responsible for the ledger."))
    return EXIT_OK if result.ok else EXIT_INTEGRITY


def run_checkpoint(args: argparse.Namespace) -> int:
    location = ledger_location(args.ledger, args.config)
    with open_ledger(location, create=False, station_id=_station_id(args)) as ledger:
        signed = ledger.checkpoint("manual")
    if signed is None:
        print(
            "Nothing signed: the ledger is empty or has no anchor (set STATION_ANCHOR_KEY and STATION_ANCHOR_LOG)."
        )
        return EXIT_USAGE
    print(f"Signed event {signed.seq} (hash {signed.hash}) into the anchor log.")
    return EXIT_OK
