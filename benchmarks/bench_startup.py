"""Print how long `station --help` and `station show X` take to start, and the ratio to `python -c pass`.

Usage: uv run python benchmarks/bench_startup.py [--runs 7]

Runs the installed entry point (`.venv/bin/station`, what `uv run station` execs after its sync) and the same
interpreter's `python -c pass`, each several times, and prints the median wall time. `station show` runs
against an empty ledger in a temporary folder (exit 4: unknown unit), so it measures start-up plus opening
a ledger, not a query. Also prints what `uv run` adds on top (its sync check), for reference.

Target (issue 10): both commands under 0.5 s after the first install. It measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd: list[str], runs: int, cwd: str) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    station = str(Path(sys.executable).with_name("station"))
    if not os.path.exists(station):
        sys.exit(f"no {station}: run `uv sync` first")
    with tempfile.TemporaryDirectory() as tmp:
        ledger = str(Path(tmp) / "ledger.sqlite")
        base = _time([sys.executable, "-c", "pass"], args.runs, tmp)
        rows = [
            ("python -c pass", base),
            ("station --help", _time([station, "--help"], args.runs, tmp)),
            ("station show X", _time([station, "show", "SN000001", "--ledger", ledger], args.runs, tmp)),
        ]
        uv = shutil.which("uv")
        if uv:
            project = str(Path(__file__).resolve().parent.parent)
            rows.append(
                (
                    "uv run station --help",
                    _time([uv, "run", "--project", project, "station", "--help"], 3, tmp),
                )
            )
    print(f"{'command':<24} {'median s':>9} {'× python -c pass':>17}")
    for name, seconds in rows:
        print(f"{name:<24} {seconds:>9.3f} {seconds / base:>17.1f}")


if __name__ == "__main__":
    main()
