"""Print how long the ESP32 family takes through the unmodified esptool against the ROM-loader simulator on a pty.

Measures identify (chip detection, stub upload, flash attach, partition table and app header read) + write of a
24 KB NVS image + verify (MD5), unpaced (pty speed) and paced at 115200 baud (wire time of every answer), and
one `esptool chip-id` subprocess (mostly Python start-up).

Usage: uv run python benchmarks/bench_esp32_rom.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

from flashers.esp32 import Esp32Flasher
from flashers.simulators.esp32rom import Esp32RomDevice
from flashers.simulators.pty import PtyDevice
from station.identity import new_identity

RUNS = 5


def family_run(pace: bool) -> float:
    with tempfile.TemporaryDirectory() as state, PtyDevice(Esp32RomDevice(state), pace=pace) as device:
        started = time.perf_counter()
        with Esp32Flasher(device.port, connect_mode="no-reset", reset_after=False) as flasher:
            flasher.identify()
            flasher.write_identity(new_identity("bench-esp32"))
        return time.perf_counter() - started


def cli_run() -> float:
    with tempfile.TemporaryDirectory() as state, PtyDevice(Esp32RomDevice(state)) as device:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "esptool", "--port", device.port, "--before", "no-reset", "--after", "no-reset",
             "chip-id"],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        return time.perf_counter() - started


def main() -> None:
    unpaced = [family_run(False) for _ in range(RUNS)]
    paced = [family_run(True) for _ in range(RUNS)]
    cli = [cli_run() for _ in range(3)]
    print(f"ESP32 family identify + write + verify, unpaced: median {statistics.median(unpaced):.3f} s")
    print(f"ESP32 family identify + write + verify, paced at 115200: median {statistics.median(paced):.3f} s")
    print(f"esptool chip-id as a subprocess: median {statistics.median(cli):.3f} s")


if __name__ == "__main__":
    main()
