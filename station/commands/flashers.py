"""`station flashers`: which device families are installed and what each supports."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flashers",
        help="list the installed device families and their capabilities",
        description="List the device families installed as `station.flashers` plugins.",
        epilog="Example: station flashers --json",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import flashers

    rows = []
    for family in flashers.available():
        cls = flashers.load(family)
        caps = cls.capabilities
        rows.append(
            {
                "family": family,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "writes_key": caps.writes_key,
                "device_keygen": caps.device_keygen,
                "device_verify": caps.device_verify,
                "reads_certificate": caps.reads_certificate,
                "observable": caps.observable,
                "atomic_commit": caps.atomic_commit,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    flags = (
        "writes_key",
        "device_keygen",
        "device_verify",
        "reads_certificate",
        "observable",
        "atomic_commit",
    )
    print(f"{'family':<12} " + " ".join(f"{f:<17}" for f in flags))
    for row in rows:
        print(f"{row['family']:<12} " + " ".join(f"{'yes' if row[f] else '-':<17}" for f in flags))
    return 0
