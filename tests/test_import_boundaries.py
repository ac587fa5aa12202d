"""Importing the core, in a fresh interpreter, loads neither Textual nor the lab; importing the screen loads
no AWS, serial or crypto library (import-linter checks the source; this checks what really ends up in
`sys.modules`, lazy imports and plugins included)."""

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
    "station.qa",
    "station.desk",  # the QA desk's services live in the core: no Textual there either
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
        "importlib.import_module('station.lab.demo')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('station.lab'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "station.lab" in json.loads(done.stdout)


# What the TUI must never load, not even through the core (its QA services are handed to it by the command).
AWS_AND_DEVICE = ("boto3", "botocore", "serial", "awscrt", "awsiot", "cryptography")


def _loaded_roots(*modules: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(AWS_AND_DEVICE)!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout))


def test_importing_the_screen_loads_no_boto3_serial_awscrt_or_cryptography() -> None:
    assert _loaded_roots("station.tui.app", "station.tui.qa.desk", "station.tui.api") == []


def test_the_screen_check_sees_the_core_that_does_load_them() -> None:
    # The same probe with the registry and the verifier (what the desk's services call once QA acts) must
    # report them, so the check above can fail.
    loaded = _loaded_roots("station.tui.app", "station.registry", "station.verify")
    assert {"boto3", "botocore", "awscrt", "awsiot"} <= set(loaded)
