"""Importing the core, in a fresh interpreter, loads neither Textual nor the lab (import-linter checks the
source; this checks what really ends up in `sys.modules`, lazy imports and plugins included)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = [
    "station.pipeline",
    "station.line",
    "station.context",
    "station.ledger",
    "station.config",
    "station.units",
]


def test_importing_the_core_loads_neither_textual_nor_the_lab() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith('station.lab'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []


def test_the_check_sees_a_module_that_does_load_the_lab() -> None:
    # The same probe on the demo wiring, which may import the lab, must report it (so the check above can fail).
    code = (
        "import importlib, json, sys\n"
        "importlib.import_module('station.demo')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('station.lab'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "station.lab" in json.loads(done.stdout)
