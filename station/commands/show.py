"""`station show SN`: one unit's current state (from the unit table), its attempt records, its events and any
unfinished journal entry.

SN may be a serial (any case), a thing name, an attempt id or a certificate id (or its first 8+ hex
characters). Exit 4 when the ledger knows nothing about it. Read-only.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from station.cli import EXIT_NOT_FOUND, EXIT_OK
from station.commands.units import unit_dict, when
from station.i18n import _
from station.ledger import add_location_arguments, ledger_location, open_ledger
from station.units import UnitState

EXAMPLES = """examples:
  station show SN00001234
  station show prov1-SN00001234 --json
  station show 3f2a9c1e          (a certificate id prefix)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="show one unit's records and events",
        description="Show a unit's attempt records, its events and any open journal entry.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("query", metavar="SN", help="serial, thing name, attempt id or certificate id (prefix)")
    add_location_arguments(p)
    p.add_argument(
        "--station",
        metavar="ID",
        help=_("only what this station did (its records, its events, its unfinished attempts)"),
    )
    p.add_argument("--json", action="store_true", help="print the unit as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    query = args.query.strip()
    location = ledger_location(args.ledger, args.config)
    with open_ledger(location, create=False, station_id=args.station) as ledger:
        units = ledger.find_units(query)
        records = ledger.find(query)
        if args.station:
            records = [r for r in records if r.station_id == args.station]
        serials = sorted({r.serial for r in records} | {u.serial for u in units} or {query})
        if units and {u.serial for u in units} - {r.serial for r in records}:
            # found by a serial in another case: show that unit's records too
            records = sorted(
                {r.attempt_id: r for s in serials for r in ledger.find(s)}.values(),
                key=lambda r: r.finished_at,
            )
        # A shared (DynamoDB) ledger keeps events and journals per station: read those of the stations that
        # worked on the unit (or the one asked for); a ledger file is one station's.
        stations = [args.station] if args.station else sorted({r.station_id for r in records if r.station_id})
        handles = (
            [open_ledger(location, create=False, station_id=s) for s in stations]
            if location.startswith("dynamodb://") and not args.station and stations
            else [ledger]
        )
        try:
            events = [e for h in handles for serial in serials for e in h.events(serial)]
            pending = [
                j
                for h in handles
                for j in h.journal_pending()
                if j.serial in serials or (query and query in (j.thing_name, j.certificate_id, j.attempt_id))
            ]
        finally:
            for h in handles:
                if h is not ledger:
                    h.close()
        # One chain: its order. Several stations' chains: interleaved by time (their seqs are not comparable).
        events.sort(key=(lambda e: e.seq) if len(handles) == 1 else (lambda e: (e.event.at or 0, e.seq)))
    if not records and not events and not pending:
        if args.json:
            print(json.dumps({"error": {"kind": "NotFound", "title": "Unknown unit", "query": query}}))
        else:
            print(_("Unknown unit: the ledger has nothing for {query!r}.").format(query=query))
            print(_("Next: check the serial, or search by thing name or certificate id."))
        return EXIT_NOT_FOUND
    if args.json:
        print(
            json.dumps(
                {
                    "query": query,
                    "units": [unit_dict(u) for u in units],
                    "records": [r.to_dict() for r in records],
                    "events": [e.to_dict() for e in events],
                    "pending_journal": [j.to_dict() for j in pending],
                }
            )
        )
        return EXIT_OK
    for unit in units:
        _unit(unit)
    for record in records:
        print(f"Attempt {record.attempt_id}: {record.outcome}  {record.title}".rstrip())
        _lines(
            [
                ("serial", record.serial),
                ("device id", record.device_id),
                ("product", record.product),
                ("thing", record.thing_name),
                ("certificate", record.certificate_id),
                ("target", f"{record.target} ({record.account_id}/{record.region})"),
                ("station/slot", f"{record.station_id}/{record.slot}"),
                ("operator", record.operator),
                ("message", record.message),
                ("next", record.next_action),
                ("started", when(record.started_at)),
                ("finished", when(record.finished_at)),
                (
                    "timings",
                    ", ".join(f"{k} {v:.0f} ms" for k, v in record.timings_ms.items() if v is not None),
                ),
                ("rolled back", "; ".join(_compensation(c) for c in record.compensations)),
            ]
        )
        print()
    if pending:
        for entry in pending:
            print(
                f"Unfinished attempt {entry.attempt_id or '?'} (journal {entry.id}): stage {entry.stage or '?'}"
            )
            print(_("  Next: run `station reconcile` to roll it back or complete it."))
        print()
    if events:
        print("Events:")
        for item in events:
            e = item.event
            took = f" {e.duration_ms:.0f} ms" if e.duration_ms is not None else ""
            text = " ".join(x for x in (e.kind, e.step, e.outcome) if x)
            print(f"  {item.seq:>6}  {when(e.at or 0)}  {text}{took}  {e.title or e.message}".rstrip())
    return EXIT_OK


def _unit(unit: UnitState) -> None:
    print(f"Unit {unit.serial}: {unit.label()}")
    pairs: list[tuple[str, Any]] = [
        ("last attempt", f"{unit.last_action} {unit.last_outcome} ({unit.attempts} in all)")
    ]
    for identity in unit.live:
        checked = "verified" if identity.verified else "not verified"
        pairs.append(
            (
                "live in",
                f"{identity.target} ({identity.account_id}/{identity.region}) as {identity.thing_name or '-'}, "
                f"certificate {identity.certificate_id[:12]}, since {when(identity.since)}, {checked}",
            )
        )
    if unit.pending_revoke:
        pairs.append(("to revoke", ", ".join(c[:12] for c in unit.pending_revoke)))
    pairs.append(("note", unit.note))
    _lines(pairs)
    print()


def _lines(pairs: list[tuple[str, Any]]) -> None:
    for label, value in pairs:
        if value not in (None, "", "/", " (/)"):
            print(f"  {label:<12} {value}")


def _compensation(item: Any) -> str:
    if isinstance(item, dict):
        state = "ok" if item.get("ok") else "FAILED"
        return f"{item.get('action', '?')} {state}"
    return str(item)
