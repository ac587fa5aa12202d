"""Figures for PROV/1 (a script, not a test): time to write a certificate + EC P-256 key through a real pty with
the simulator paced at the wire rate, against theory (every byte both ways at 10 bits a byte), clean and with
corrupted/lost frames. Default host timing (not the tests' short floor).

    uv run python tests/flashers/measure_prov1.py [--runs 20] [--baud 115200] [--loss 0.05] [--in-process]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from flashers.prov1 import Prov1Flasher
from flashers.serialio import wire_time
from flashers.simulators.prov1 import Faults, Prov1Device
from flashers.simulators.pty import PtyDevice
from station.identity import new_identity


@contextlib.contextmanager
def simulated_unit(
    state_dir: str, device_id: str, baud: int, faults: Faults | None, separate: bool
) -> Iterator[str]:
    """A paced simulated unit: in this process (a thread), or in its own process (`station sim prov1`),
    where it does not compete with the host for the interpreter lock, as real hardware would not."""
    if not separate:
        model = Prov1Device(state_dir, device_id=device_id, faults=faults)
        with PtyDevice(model, baudrate=baud, pace=True) as device:
            yield device.port
        return
    command = [sys.executable, "-m", "station.cli", "sim", "prov1", "--state-dir", state_dir]
    command += ["--device-id", device_id, "--baud", str(baud)]
    if faults is not None:
        command += ["--fault", f"corrupt={faults.corrupt}", "--fault", f"lose={faults.lose}"]
        command += ["--fault", f"seed={faults.seed}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def run(runs: int, baud: int, faults: Faults | None, state_dir: str, separate: bool) -> dict[str, float]:
    durations, theories, frames, retries, wire = [], [], [], [], []
    for i in range(runs):
        identity = new_identity(f"measure-{i:04d}")
        run_faults = Faults(corrupt=faults.corrupt, lose=faults.lose, seed=1000 + i) if faults else None
        with (
            simulated_unit(state_dir, f"M{i:04d}", baud, run_faults, separate) as port,
            Prov1Flasher(port, baudrate=baud) as flasher,
        ):
            flasher.identify()
            proof = flasher.write_identity(identity)
        durations.append(proof.duration_s)
        theories.append(wire_time(proof.wire_bytes, baud))
        frames.append(proof.frames)
        retries.append(proof.retries)
        wire.append(proof.wire_bytes)
    durations.sort()
    return {
        "median_ms": statistics.median(durations) * 1000,
        "p90_ms": durations[int(0.9 * (len(durations) - 1))] * 1000,
        "max_ms": durations[-1] * 1000,
        "theory_ms": statistics.median(theories) * 1000,
        "frames": statistics.median(frames),
        "retries_mean": statistics.mean(retries),
        "wire_bytes": statistics.median(wire),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--loss", type=float, default=0.05, help="corrupted and lost frame probability")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the simulator as a thread of this process (faster to start)",
    )
    args = parser.parse_args()
    sample = new_identity("measure-size")
    assert sample.private_key is not None
    cert_len, key_len = len(sample.certificate_pem), len(sample.private_key.reveal())
    print(
        f"identity: certificate {cert_len} B + EC P-256 key {key_len} B (PEM); baud {args.baud}; runs {args.runs}"
    )
    where = "a thread of this process" if args.in_process else "its own process (station sim prov1)"
    print(f"simulator in {where}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as state_dir:
        for label, faults in (
            ("clean", None),
            (f"{args.loss:.0%} corrupted + {args.loss:.0%} lost", Faults(corrupt=args.loss, lose=args.loss)),
        ):
            r = run(args.runs, args.baud, faults, state_dir, not args.in_process)
            print(
                f"{label:>26}: median {r['median_ms']:.0f} ms (p90 {r['p90_ms']:.0f}, max {r['max_ms']:.0f}); "
                f"theory {r['theory_ms']:.0f} ms for {r['wire_bytes']:.0f} B in {r['frames']:.0f} frames; "
                f"ratio {r['median_ms'] / r['theory_ms']:.2f}; retransmissions {r['retries_mean']:.1f}/write"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
