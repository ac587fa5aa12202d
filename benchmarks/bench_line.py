"""Print the line's figures: per-unit wall time against its floor, station CPU per unit, units/hour with 1, 4
and 8 slots, the share of the register quota reached, and failures caused by throttling.

Usage:  uv run python benchmarks/bench_line.py [--slots 1,4,8] [--units-per-slot 10] [--baud 115200]
  --cpu-breakdown     also time the station's CPU inside each part (flasher, registry, verify, ledger, …)
  --cprofile FILE     cProfile (CPU clock) every station thread of the first run; prints the top functions
  --py-spy FILE       sample the station process with py-spy (raw collapsed stacks)
  --switch-interval S the station process's GIL switch interval, to try its effect
The three diagnostic options add overhead: take the headline figures from a run without them.

Three processes, so that only the station's own CPU is measured:
- the lab: `station lab` (moto control plane + TLS data plane), throttling at AWS's default quotas;
- the simulated units: this script with `--farm`, running `station.lab.demo.Jigs` — one paced PROV/1 device per
  slot on a real pty at `--baud` (wire time: 10 bits a byte), a fresh device (new id, new flash) per unit;
- the station: this process — the real `StationContext` + `Line` over a station.toml pointing at both.
  Its CPU (user + system, every thread, awscrt's native ones included) is read with `time.process_time()`
  around the measured run only; a warm-up round (one unit per slot) comes first.

Targets (issue 4): wall ≤ 1.15 × floor, floor = max(serial write, cloud registration) + verify of that unit;
station CPU < 5 ms per unit (EC P-256); with 8 slots ≥ 90 % of the register quota (10 TPS) and no failure
caused by throttling. It prints figures; it asserts nothing.

Figures (2 CPUs shared with other work, load average 2-5; 115200 baud; EC P-256; several runs):
- 1 slot: unit 440-447 ms = identify 20 + identity 1 + max(write 378, register 60-70) + verify 33-38 + record 1;
  wall / floor 1.065-1.07 (p90 ≤ 1.11). 4 slots: 1.11-1.13 (p90 1.17-1.20). 8 slots: 1.05-1.19 (p90 1.09-1.33):
  under CPU contention identify, write and verify stretch (GIL hand-offs, 2 cores for 3 busy processes).
- Station CPU 65-80 ms per unit (target < 5 ms): verify ≈ 15.5 (awscrt's TLS context alone ≈ 10-12 native,
  ≈ 25 with the system trust store), flasher open ≈ 11 (flashers.load scans the entry points per unit ≈ 10),
  serial write 10-16, boto3 ≈ 19 (5 calls), ledger ≈ 9 (≈ 20 SQLite writes), new identity ≈ 1.1, rest ≈ 7.
- Units/hour: 1 slot ≈ 7,700-8,400; 4 slots ≈ 19,000-24,400; 8 slots ≈ 29,000-36,000.
- 8 slots: 85-100 % of the 10 TPS register quota (median of 7 runs ≈ 87 %); 0 throttling answers from the lab
  and 0 units failed by throttling in every run (the shared client-side budget keeps under the quota).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGISTER_QUOTA_TPS = 10.0  # RegisterCertificateWithoutCA, AWS's default per account and region
STEPS = ("identify", "identity", "write", "register", "verify", "record")
BITS_PER_BYTE = 10


# --------------------------------------------------------------------------------------------------- farm


def farm_main(args: argparse.Namespace) -> int:
    """The simulated units, in their own process: commands on stdin, one JSON line per answer on stdout."""
    from station.lab.demo import Jigs

    slots = [f"slot-{i + 1}" for i in range(args.slots)]
    jigs = Jigs(args.farm, slots, ca_file=args.ca_file, paced=True, baud=args.baud)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for slot in slots:
            jigs.insert_unit(slot)
        print(json.dumps({"ports": {s: str(jigs.port(s)) for s in slots}}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "put":
                unit = jigs.insert_unit(words[1])
                print(json.dumps({"serial": unit.serial, "flash": str(unit.flash_path)}), flush=True)
        stats = {u.serial: [u.pty.bytes_in, u.pty.bytes_out] for u in jigs.units}
        print(json.dumps({"stats": stats}), flush=True)
    finally:
        jigs.stop()
    return 0


@dataclass
class FarmUnit:
    serial: str
    flash: str


class Farm:
    """The farm process, seen from the station's side."""

    def __init__(self, state_dir: Path, slots: int, baud: int, ca_file: str) -> None:
        cmd = [sys.executable, __file__, "--farm", str(state_dir), "--slots", str(slots), "--baud", str(baud)]
        self.proc = subprocess.Popen(
            [*cmd, "--ca-file", ca_file], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ports: dict[str, str] = self._read()["ports"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulated units' process ended")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def put(self, slot: str) -> FarmUnit:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"put {slot}\n")
        self.proc.stdin.flush()
        answer = self._read()
        return FarmUnit(answer["serial"], answer["flash"])

    def quit(self) -> dict[str, list[int]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        stats: dict[str, list[int]] = self._read()["stats"]
        self.proc.wait(30)
        return stats


# ---------------------------------------------------------------------------------------------------- lab


class LabProcess:
    """`station lab` in its own process; lab.json tells where it is."""

    def __init__(self, state_dir: Path) -> None:
        cmd = [sys.executable, "-m", "station.cli", "lab", "--state-dir", str(state_dir)]
        self.proc = subprocess.Popen(
            [*cmd, "--accounts", "1", "--regions", "ap-northeast-1", "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("station lab did not start")
        self.description = json.loads(line)
        self.endpoint_url = self.description["control_plane"]["endpoint_url"]
        self.ca_file = self.description["ca_file"]
        self.station_toml = (state_dir / "station.toml").read_text()

    def status(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.endpoint_url + "/lab-api/status", timeout=5) as response:
            status: dict[str, Any] = json.loads(response.read())
            return status

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads, summed by kind of thread (Linux /proc; native threads,
    such as awscrt's event loop, by their OS name)."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    by_name: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = python_names.get(int(tid)) or stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        # One entry per kind: slot-slot-1 … → "slot-slot", "AwsEventLoop 3" → "AwsEventLoop".
        key = name.rstrip("0123456789").rstrip(" -") or name
        by_name[key] = by_name.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return by_name


class CpuMeter:
    """Thread CPU time (time.thread_time) spent inside the station's parts, by part. Thread-safe.

    The parts are the ones `StationContext` lets a caller inject (flasher factory, registry factory,
    verifier) plus the ledger and the identity maker, each wrapped in a thin timing proxy: no profiler, so
    the figures are the real costs (what runs on awscrt's native threads is not in them; see by thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    def timed(self, label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, time.thread_time() - start)

        return wrapper

    def proxy(self, obj: Any, prefix: str, methods: tuple[str, ...]) -> Any:
        meter = self

        class Proxy:
            def __getattr__(self, name: str) -> Any:
                value = getattr(obj, name)
                return meter.timed(f"{prefix}.{name}", value) if name in methods else value

        return Proxy()

    def reset(self) -> None:
        with self._lock:
            self.seconds.clear()


class ThreadProfiles:
    """cProfile in every thread started while installed, timing CPU (time.thread_time), not wall time."""

    def __init__(self) -> None:
        import cProfile

        self._cls = cProfile.Profile
        self.profiles: list[Any] = []

    def _hook(self, *_: Any) -> None:
        profile = self._cls(time.thread_time)
        self.profiles.append(profile)
        profile.enable()  # replaces this hook in the new thread

    def install(self) -> None:
        threading.setprofile(self._hook)
        self._hook()  # the calling thread too

    def uninstall(self) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]

    def dump(self, path: str, top: int = 30) -> None:
        import pstats

        for profile in self.profiles:
            profile.disable()
        stats = pstats.Stats(*self.profiles)
        stats.dump_stats(path)
        print(f"\ncProfile (CPU time, every station thread) → {path}; top {top} by own time:")
        stats.sort_stats("tottime").print_stats(top)


# ------------------------------------------------------------------------------------------------ station


@dataclass
class Run:
    slots: int
    units: int
    wall_s: float
    cpu_s: float
    lab_cpu_s: float
    farm_cpu_s: float
    results: list[Any]
    wire_bytes: dict[str, int]
    register_done_at: list[float] = field(default_factory=list)
    lab_throttled: int = 0
    thread_cpu_s: dict[str, float] = field(default_factory=dict)
    part_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def units_per_hour(self) -> float:
        return self.units / self.wall_s * 3600.0

    @property
    def cpu_ms_per_unit(self) -> float:
        return self.cpu_s / self.units * 1000.0

    def register_rate(self) -> float:
        """Registrations per second in the steady state (first to last registration)."""
        done = sorted(self.register_done_at)
        if len(done) < 2 or done[-1] <= done[0]:
            return 0.0
        return (len(done) - 1) / (done[-1] - done[0])


def run_line(
    lab: LabProcess,
    workdir: Path,
    slots: int,
    units: int,
    baud: int,
    profiles: ThreadProfiles | None = None,
    meter: CpuMeter | None = None,
) -> Run:
    from station.config import load_config
    from station.context import StationContext
    from station.lab.demo import Feeder
    from station.ledger import open_ledger
    from station.line import Line
    from station.model import Event

    run_dir = workdir / f"slots-{slots}"
    run_dir.mkdir()
    farm = Farm(run_dir / "farm", slots, baud, lab.ca_file)
    config_path = run_dir / "station.toml"
    tables = "".join(
        f'\n[slots.{name}]\nport = "{port}"\nbaud = {baud}\nproduct = "sim"\n'
        for name, port in farm.ports.items()
    )
    config_path.write_text(lab.station_toml + "\n" + tables)
    config = load_config(config_path)
    feeder: Feeder[FarmUnit] = Feeder()
    register_done: list[float] = []
    measuring = threading.Event()

    def on_event(event: Event) -> None:
        feeder.on_event(event)
        if measuring.is_set() and event.kind == "step_finished" and event.step == "register":
            register_done.append(event.at)

    names = list(farm.ports)
    if profiles is not None:
        profiles.install()  # before the line starts its workers
    with open_ledger(config.ledger_path) as real_ledger:
        ledger: Any = real_ledger
        parts: dict[str, Any] = {}
        if meter is not None:
            parts = metered_parts(meter)
            ledger = meter.proxy(
                real_ledger,
                "ledger",
                ("append_event", "journal_open", "journal_update", "journal_close", "record_attempt"),
            )
        context = StationContext(config, ledger=ledger, **parts)
        line = Line.from_context(context, on_event=on_event)
        try:
            feeder.run(line, names, len(names), farm.put)  # warm-up: clients, TLS, imports
            time.sleep(1.5)  # the lab's buckets refill: the measured run starts like a fresh shift
            throttled0 = lab.status()["throttling"]["throttled"]
            lab_cpu0, farm_cpu0 = lab.cpu_seconds(), _proc_cpu(farm.proc.pid)
            measuring.set()
            if meter is not None:
                meter.reset()
            threads0 = _thread_cpu()
            cpu0 = time.process_time()
            done, wall = feeder.run(line, names, units, farm.put)
            cpu1 = time.process_time()
            threads1 = _thread_cpu()
            measuring.clear()
            lab_cpu1, farm_cpu1 = lab.cpu_seconds(), _proc_cpu(farm.proc.pid)
            throttled1 = lab.status()["throttling"]["throttled"]
        finally:
            line.stop(60)
            if profiles is not None:
                profiles.uninstall()
    stats = farm.quit()
    thread_cpu = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
    thread_cpu["(threads that ended: register helpers …)"] = (cpu1 - cpu0) - sum(thread_cpu.values())
    return Run(
        slots=slots,
        units=units,
        wall_s=wall,
        cpu_s=cpu1 - cpu0,
        lab_cpu_s=lab_cpu1 - lab_cpu0,
        farm_cpu_s=farm_cpu1 - farm_cpu0,
        results=[r for _, r in done],
        wire_bytes={serial: sum(v) for serial, v in stats.items()},
        register_done_at=register_done,
        lab_throttled=throttled1 - throttled0,
        thread_cpu_s=thread_cpu,
        part_cpu_s=dict(meter.seconds) if meter is not None else {},
    )


def metered_parts(meter: CpuMeter) -> dict[str, Any]:
    """The real flasher factory, registry factory and verifier, each call timed by `meter`."""
    import station.identity
    from station import context as context_mod

    # StationContext hands the pipeline station.identity.new_identity when it is built: time that too.
    original = getattr(station.identity.new_identity, "__wrapped_by_meter__", station.identity.new_identity)
    timed_identity = meter.timed("identity.new_identity", original)
    timed_identity.__wrapped_by_meter__ = original
    station.identity.new_identity = timed_identity

    def flasher_factory(port: str, **kwargs: Any) -> Any:
        start = time.thread_time()
        flasher = context_mod.default_flasher_factory(port, **kwargs)
        meter.add("flasher.open (flashers.load + open port)", time.thread_time() - start)
        return meter.proxy(flasher, "flasher", ("identify", "write_identity", "wipe", "close"))

    def registry_factory(target: Any) -> Any:
        registry = context_mod.default_registry_factory(target, station_id="bench")
        methods = ("register", "create_thing", "attach", "rollback", "data_endpoint")
        return meter.proxy(registry, "registry", methods)

    return {
        "flasher_factory": flasher_factory,
        "registry_factory": registry_factory,
        "verifier": meter.timed("verify (awsiotsdk, Python side)", context_mod.default_verifier),
    }


# ------------------------------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report_steps(runs: list[Run], baud: int) -> None:
    print(f"\nPer unit (PASS units), devices paced at {baud} baud: median ms (p90) of each step")
    print("  " + f"{'step':<16}" + "".join(f"{f'{run.slots} slot(s)':>20}" for run in runs))
    passed = {run.slots: [r for r in run.results if str(r.outcome) == "PASS"] for run in runs}
    for step in (*STEPS, "write_register", "total"):
        cells = []
        for run in runs:
            values = [r.timings_ms[step] for r in passed[run.slots] if step in r.timings_ms]
            cells.append(f"{statistics.median(values):9.1f} ({pct(values, 0.9):6.1f})" if values else "")
        print("  " + f"{step:<16}" + "".join(f"{c:>20}" for c in cells))
    rows: dict[str, list[str]] = {"floor": [], "wall / floor": [], "wire time": []}
    for run in runs:
        floors, ratios, wires = [], [], []
        for r in passed[run.slots]:
            t = r.timings_ms
            floor = max(t["write"], t["register"]) + t["verify"]
            floors.append(floor)
            ratios.append(t["total"] / floor)
            wires.append(run.wire_bytes.get(r.serial, 0) * BITS_PER_BYTE / baud * 1000.0)
        if not floors:
            for row in rows.values():
                row.append("")
            continue
        rows["floor"].append(f"{statistics.median(floors):9.1f} ({pct(floors, 0.9):6.1f})")
        rows["wall / floor"].append(f"{statistics.median(ratios):9.3f} ({pct(ratios, 0.9):6.3f})")
        rows["wire time"].append(f"{statistics.median(wires):9.1f} ({pct(wires, 0.9):6.1f})")
    for name, cells in rows.items():
        print("  " + f"{name:<16}" + "".join(f"{c:>20}" for c in cells))
    print(
        "  floor = max(write, register) + verify of the same unit (target: wall ≤ 1.15 × floor);\n"
        f"  wire time = every byte the unit's line carried, both ways, at {baud} baud (part of identify + write)."
    )


def report_runs(runs: list[Run]) -> None:
    print("\nThroughput, lab throttling on (AWS default quotas):")
    print(
        f"  {'slots':>5}{'units':>7}{'wall s':>9}{'units/h':>10}{'reg/s':>8}{'quota':>8}"
        f"{'CPU ms/unit':>13}{'lab CPU':>9}{'sims CPU':>9}{'throttled':>10}{'not PASS':>9}"
    )
    for run in runs:
        rate = run.register_rate()
        not_pass = sum(1 for r in run.results if str(r.outcome) != "PASS")
        print(
            f"  {run.slots:>5}{run.units:>7}{run.wall_s:>9.2f}{run.units_per_hour:>10.0f}{rate:>8.2f}"
            f"{rate / REGISTER_QUOTA_TPS:>8.0%}{run.cpu_ms_per_unit:>13.1f}"
            f"{run.lab_cpu_s / run.units * 1000:>9.1f}{run.farm_cpu_s / run.units * 1000:>9.1f}"
            f"{run.lab_throttled:>10}{not_pass:>9}"
        )
    print(
        "  reg/s: registrations per second from the first to the last of the run; quota: that / 10 TPS;\n"
        "  CPU ms/unit: the station process (all its threads); lab / sims CPU: the other two processes, ms per\n"
        "  unit; throttled: ThrottlingException answers the lab gave; not PASS: units that did not pass."
    )
    for run in runs:
        parts = sorted(run.thread_cpu_s.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {sec / run.units * 1000:.1f}" for name, sec in parts if sec > 0)
        print(f"  station CPU by thread, {run.slots} slot(s), ms/unit: {shown}")
        if run.part_cpu_s:
            print(f"  station CPU by part, {run.slots} slot(s), ms/unit (thread CPU inside each call):")
            for name, sec in sorted(run.part_cpu_s.items(), key=lambda kv: -kv[1]):
                print(f"    {sec / run.units * 1000:7.2f}  {name}")
            rest = run.cpu_s - sum(run.part_cpu_s.values())
            print(
                f"    {rest / run.units * 1000:7.2f}  everything else (pipeline, line, events, native threads)"
            )
    for run in runs:
        for r in run.results:
            if str(r.outcome) != "PASS":
                print(f"  {run.slots} slots: {r.serial} {r.outcome} {r.title}: {r.message}")


# --------------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", default="1,4,8", help="slot counts to run (default 1,4,8)")
    parser.add_argument("--units-per-slot", type=int, default=10, help="measured units per slot (default 10)")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument(
        "--py-spy", metavar="FILE", help="sample the station process with py-spy (raw output)"
    )
    parser.add_argument(
        "--cprofile", metavar="FILE", help="cProfile (CPU time) every station thread of the first run"
    )
    parser.add_argument(
        "--cpu-breakdown", action="store_true", help="time the station's CPU inside each part (no profiler)"
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="S",
        help="set the station process's GIL switch interval (sys.setswitchinterval; Python's default 0.005)",
    )
    parser.add_argument("--farm", help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.farm:
        args.slots = int(args.slots)
        return farm_main(args)

    counts = [int(n) for n in args.slots.split(",") if n.strip()]
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    workdir = Path(tempfile.mkdtemp(prefix="bench-line-"))
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}; "
        f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms; work dir {workdir}"
    )
    spy = None
    if args.py_spy:
        # py-spy from PATH, else through uv's tool runner (a binary wheel from PyPI).
        found = shutil.which("py-spy")
        command = [found] if found else ["uvx", "py-spy"]
        spy = subprocess.Popen(
            [
                *command,
                "record",
                "--pid",
                str(os.getpid()),
                "--format",
                "raw",
                "--threads",
                "-r",
                "200",
                "-o",
                args.py_spy,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    lab = LabProcess(workdir / "lab")
    runs: list[Run] = []
    try:
        for i, slots in enumerate(counts):
            profiles = ThreadProfiles() if args.cprofile and i == 0 else None
            meter = CpuMeter() if args.cpu_breakdown else None
            run = run_line(lab, workdir, slots, slots * args.units_per_slot, args.baud, profiles, meter)
            if profiles is not None:
                profiles.dump(args.cprofile)
            runs.append(run)
            print(
                f"{slots} slot(s): {run.units} units in {run.wall_s:.2f} s, station CPU "
                f"{run.cpu_ms_per_unit:.1f} ms/unit",
                flush=True,
            )
    finally:
        lab.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    if runs:
        report_steps(runs, args.baud)
        report_runs(runs)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
