"""Start-up stays light: `station --help` and `station show` do not import the lab, botocore, awscrt or textual."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("botocore", "boto3", "awscrt", "awsiot", "textual", "moto", "station.lab")

CHILD = """
import json, sys
import station.cli
station.cli.build_parser()
try:
    station.cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _loaded(*argv: str, tmp_path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    last = done.stderr.strip().splitlines()[-1]
    return set(json.loads(last))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_imports_nothing_heavy(tmp_path):
    modules = _loaded("--help", tmp_path=tmp_path)
    assert "station.commands.demo" in modules  # the parser really was built
    assert _heavy(modules) == []


def test_show_imports_nothing_heavy(tmp_path):
    modules = _loaded("show", "SN000001", "--ledger", str(tmp_path / "l.sqlite"), tmp_path=tmp_path)
    assert "station.commands.show" in modules
    assert _heavy(modules) == []


def test_demo_fault_choices_match_the_demo():
    from station.commands.demo import FAULT_CHOICES
    from station.lab.demo import DEMO_FAULTS, MIXED

    assert (MIXED, *DEMO_FAULTS) == FAULT_CHOICES


def test_python_dash_m_station_cli_runs_main(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "station.cli", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: station")
