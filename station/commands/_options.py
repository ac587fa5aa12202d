"""Options more than one command declares, declared once here (a module whose name starts with `_` is not a
subcommand: `station.cli` skips it).

`--config` with its `$STATION_CONFIG` default is the station commands' (provision, reconcile and the QA
commands). The ledger commands' `--ledger`/`--config` pair, which finds a ledger rather than a station, is
`station.ledger.add_location_arguments`.
"""

from __future__ import annotations

import argparse
import os

CONFIG_ENV = "STATION_CONFIG"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """--config FILE: the station configuration (default: $STATION_CONFIG, else ./station.toml)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get(CONFIG_ENV, "station.toml"),
        help=f"the station configuration (default: ${CONFIG_ENV} or ./station.toml)",
    )
