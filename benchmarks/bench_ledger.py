"""Ledger throughput on this machine: events/s and records/s appended with the hash chain, journal round
trips/s (fsynced) and audit rows/s. Prints figures; it is a measurement, not a test.

    uv run python benchmarks/bench_ledger.py [--events 5000] [--records 2000] [--threads 8] [--dir DIR]

Each figure is on a fresh SQLite ledger (WAL) in a temporary folder (or --dir, to measure a particular disk).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from station.ledger.base import AttemptRecord
from station.ledger.sqlite import SqliteLedger
from station.model import Event

CERT_PEM = "-----BEGIN CERTIFICATE-----\n" + "MIIB" * 150 + "\n-----END CERTIFICATE-----\n"


def event(serial: str, i: int) -> Event:
    return Event(
        kind="step_finished",
        serial=serial,
        slot="s1",
        step="register",
        outcome="ok",
        duration_ms=123.4,
        message="registered",
        data={"i": i, "certificate_id": "ab" * 32, "thing_name": f"prov1-{serial}"},
    )


def record(serial: str) -> AttemptRecord:
    return AttemptRecord(
        attempt_id=str(uuid.uuid4()),
        serial=serial,
        outcome="PASS",
        device_id="dev-" + serial,
        product="prov1",
        thing_name="prov1-" + serial,
        certificate_id="ab" * 32,
        certificate_pem=CERT_PEM,
        target="lab-eu",
        account_id="123456789012",
        region="eu-west-1",
        station_id="st1",
        slot="s1",
        timings_ms={"identify": 10.0, "identity": 2.0, "write": 900.0, "register": 300.0, "verify": 700.0},
        started_at=time.time(),
        finished_at=time.time(),
    )


def rate(label: str, count: int, seconds: float, unit: str) -> None:
    print(f"{label:<44} {count / seconds:>10,.0f} {unit}/s   ({count} in {seconds:.2f} s)")


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--journal", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--dir", help="folder for the ledger files (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        base = Path(folder)
        print(f"ledger folder: {base} · CPUs: {os.cpu_count()}")

        with SqliteLedger(base / "events.sqlite") as ledger:
            n = args.events
            seconds = timed(lambda: [ledger.append_event(event("SN1", i)) for i in range(n)])
            rate("events, 1 thread", n, seconds, "events")

        with SqliteLedger(base / "threads.sqlite") as ledger:
            per = max(1, args.events // args.threads)

            def worker(t: int) -> None:
                for i in range(per):
                    ledger.append_event(event(f"SLOT{t}", i))

            def run_threads() -> None:
                threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()

            seconds = timed(run_threads)
            rate(f"events, {args.threads} threads on one ledger", per * args.threads, seconds, "events")

        with SqliteLedger(base / "records.sqlite") as ledger:
            batch = [record(f"SN{i:06d}") for i in range(args.records)]
            seconds = timed(lambda: [ledger.record_attempt(r) for r in batch])
            rate("records (row + chained record event)", len(batch), seconds, "records")

            def journal_cycle() -> None:
                for i in range(args.journal):
                    jid = ledger.journal_open(serial=f"J{i}", certificate_id="ab" * 32, state="registering")
                    ledger.journal_update(jid, state="registered", certificate_created=True)
                    ledger.journal_close(jid, "PASS")

            seconds = timed(journal_cycle)
            rate("journal open+update+close (fsynced)", args.journal, seconds, "attempts")

            result = ledger.audit()
            seconds = timed(ledger.audit)
            rate("audit (events + records checked)", result.checked, seconds, "rows")

        # What a unit costs the ledger: ~12 events (step started/finished ×6), 1 record, 1 journal cycle.
        with SqliteLedger(base / "unit.sqlite") as ledger:
            units = max(1, args.records // 4)

            def one_unit(i: int) -> None:
                serial = f"U{i:06d}"
                jid = ledger.journal_open(serial=serial, certificate_id="ab" * 32, state="registering")
                for k in range(12):
                    ledger.append_event(event(serial, k))
                for stage in ("registered", "thing", "attached", "verified"):
                    ledger.journal_update(jid, state=stage)
                ledger.record_attempt(record(serial))
                ledger.journal_close(jid)

            def all_units() -> None:
                for i in range(units):
                    one_unit(i)

            seconds = timed(all_units)
            print(
                f"{'a whole unit (12 events, 1 record, journal)':<44} {seconds / units * 1000:>10.2f} ms/unit"
                f"   ({units} units)"
            )


if __name__ == "__main__":
    main()
