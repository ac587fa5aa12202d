"""Print how long the lab takes to start (cold, in a fresh process, and warm) and to stop.

Usage: uv run python benchmarks/bench_lab.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import time, tempfile
t0 = time.perf_counter()
from station.lab import Lab
t1 = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    lab = Lab(d).start()
    t2 = time.perf_counter()
    lab.stop()
    t3 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
"""


def main() -> None:
    cold = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
        cold.append([float(x) for x in out.split()])
    print("cold (fresh process): import / start / stop, seconds")
    for row in cold:
        print("  " + " / ".join(f"{x:.3f}" for x in row))
    from station.lab import Lab

    warm = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(5):
            t0 = time.perf_counter()
            lab = Lab(d).start()
            warm.append(time.perf_counter() - t0)
            lab.stop()
    print(f"warm start (same process, CA reused): median {statistics.median(warm) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
