"""The station's ledger: attempt records, a hash-chained event log and the crash journal.

`open_ledger(location, station_id=…)` picks the backend from the location:
`dynamodb://TABLE?region=R[&station=ID][&endpoint_url=U]` for DynamoDB (one shared table, one hash chain per
station), anything else is a path to an SQLite file (the default). `ledger_location(...)` resolves where the
ledger is for a command: `--ledger`, then `--config` (station.toml), then `STATION_LEDGER`.

This package records what happened; it must not talk to AWS IoT, run any step of the pipeline, or hold keys.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from station.errors import InputError
from station.i18n import _
from station.ledger.base import (
    AttemptRecord,
    AuditResult,
    JournalEntry,
    Ledger,
    LedgerEvent,
    LedgerMissing,
    LedgerUnavailable,
    RowRef,
    UnitAlreadyLive,
    UnitClaimed,
    UnitPage,
    UnitSummary,
)

__all__ = [
    "ENV_VAR",
    "AttemptRecord",
    "AuditResult",
    "JournalEntry",
    "Ledger",
    "LedgerEvent",
    "LedgerMissing",
    "LedgerUnavailable",
    "RowRef",
    "UnitAlreadyLive",
    "UnitClaimed",
    "UnitPage",
    "UnitSummary",
    "add_location_arguments",
    "ledger_location",
    "open_ledger",
]

ENV_VAR = "STATION_LEDGER"


def open_ledger(
    location: str | os.PathLike[str], *, create: bool = True, station_id: str | None = None
) -> Ledger:
    """Open (or, with `create`, make) the ledger at `location`.

    `station_id` (station.toml's `[station] id`) picks this station's hash chain in a shared DynamoDB ledger
    (the URL's `station=` may name it instead; they must agree). An SQLite file is one station's ledger and
    ignores it."""
    text = os.fspath(location)
    if text.startswith("dynamodb://"):
        from station.ledger.dynamodb import DynamoLedger

        return DynamoLedger.from_url(text, create=create, station_id=station_id)
    from station.ledger.sqlite import SqliteLedger

    return SqliteLedger(text, create=create)


def add_location_arguments(parser: Any) -> None:
    """The options every ledger command takes to find its ledger (an argparse parser)."""
    parser.add_argument(
        "--ledger",
        metavar="PATH",
        help="the ledger: a file or a dynamodb:// URL (default: the [station] ledger of --config's "
        f"station.toml, else ${ENV_VAR}, else ./station.toml's [station] ledger)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="station.toml whose [station] ledger names the ledger"
    )


def ledger_location(ledger: str | None = None, config: str | None = None) -> str:
    """Where the ledger is: an explicit `--ledger`, else the config's ledger, else $STATION_LEDGER."""
    if ledger:
        return ledger
    if config:
        return _from_config(config)
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    if Path("station.toml").is_file() and _config_loader() is not None:
        return _from_config("station.toml")
    raise InputError(
        _("No ledger given"),
        _("This command needs to know which ledger to read."),
        _("Pass --ledger PATH or --config station.toml, or set {ENV_VAR}.").format(ENV_VAR=ENV_VAR),
    )


def _config_loader() -> Any:
    # station.config is written separately; until it exists, --config cannot work but --ledger still does.
    try:
        return importlib.import_module("station.config").load_config
    except (ImportError, AttributeError):
        return None


def _from_config(path: str) -> str:
    load_config = _config_loader()
    if load_config is None:
        raise InputError(
            _("Config not supported yet"),
            _("This station cannot read station.toml yet."),
            _("Pass --ledger PATH or set {ENV_VAR}.").format(ENV_VAR=ENV_VAR),
        )
    config = load_config(path)
    for name in ("ledger", "ledger_path"):
        value = getattr(config, name, None)
        if value:
            return os.fspath(value)
    raise InputError(
        _("No ledger in config"),
        _("{path} does not say where the ledger is.").format(path=path),
        _("Add the ledger setting to station.toml, or pass --ledger PATH."),
    )
