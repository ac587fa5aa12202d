"""A ledger at factory scale: build (or extend) a synthetic SQLite ledger of N units through the ledger's public
API, then time what people wait for. Prints figures; it is a measurement, not a test.

    uv run python benchmarks/bench_ledger_scale.py --units 1000000 --ledger /tmp/scale.sqlite

Each unit is one provision attempt (90% PASS, 8% FAIL, 2% ERROR; two stations, two targets) written with its
six step events by one `record_attempt(record, events=...)` — one transaction per unit, as the line does.
Serials are `BN00000000`, `BN00000001`, … so calling again with the same --ledger reuses the file and adds
only the units that are missing (found by a binary search over `ledger.unit(serial)`).

Figures: fill rate (units/s), file size, `find`/`find_units` (median and worst of many random lookups),
first page of `unit_page` (plain, filtered, and the next page by cursor), export rate and audit rate (full,
and incremental from the last signed checkpoint). Add --skip-export/--skip-audit to leave out the slow ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from station.ledger import open_ledger
from station.ledger.base import AttemptRecord, Ledger
from station.model import Event

T0 = 1_780_000_000.0  # the first unit's finish time; one unit per second after it
STEPS = ("identify", "keygen", "register", "thing", "attach", "verify")
PEM = "-----BEGIN CERTIFICATE-----\n" + "\n".join(["MIIC" + "A" * 60] * 10) + "\n-----END CERTIFICATE-----\n"


def serial(i: int) -> str:
    return f"BN{i:08d}"


def cert_id(i: int) -> str:
    return hashlib.sha256(f"cert-{i}".encode()).hexdigest()


def outcome(i: int) -> str:
    r = i % 50
    return "ERROR" if r == 49 else "FAIL" if r >= 45 else "PASS"


def unit(i: int) -> tuple[AttemptRecord, list[Event]]:
    sn, cid, result = serial(i), cert_id(i), outcome(i)
    at = T0 + i
    record = AttemptRecord(
        attempt_id=f"a-{i:08d}",
        serial=sn,
        outcome=result,
        device_id=f"dev-{i:08x}",
        product="prov1",
        thing_name=f"prov1-{sn}",
        certificate_id=cid,
        certificate_pem=PEM,
        certificate_arn=f"arn:aws:iot:eu-west-1:123456789012:cert/{cid}",
        target="lab-eu" if i % 3 else "prod-us",
        account_id="123456789012",
        region="eu-west-1",
        station_id=f"line1-st{i % 2 + 1}",
        slot=f"s{i % 4 + 1}",
        operator="ana",
        title="Passed" if result == "PASS" else "Verify failed",
        message="ok" if result == "PASS" else "certificate not accepted",
        timings_ms={step: 100.0 + k for k, step in enumerate(STEPS)},
        started_at=at - 9.5,
        finished_at=at,
    )
    events = [
        Event(
            kind="step_finished",
            serial=sn,
            slot=record.slot,
            step=step,
            outcome="ok",
            duration_ms=100.0 + k,
            message=step,
            data={"certificate_id": cid} if step == "register" else {},
            at=at - 9.0 + k,
        )
        for k, step in enumerate(STEPS)
    ]
    return record, events


def existing_units(ledger: Ledger, wanted: int) -> int:
    """How many of BN0…BN(wanted-1) are already there (they are written in order: a binary search)."""
    lo, hi = 0, wanted
    while lo < hi:
        mid = (lo + hi) // 2
        if ledger.unit(serial(mid)) is None:
            hi = mid
        else:
            lo = mid + 1
    return lo


def timed_ms(work: Callable[[], Any], repeat: int = 1) -> tuple[float, float]:
    """(median, worst) milliseconds of `repeat` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def size_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return total / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, required=True)
    parser.add_argument("--ledger", required=True, type=Path)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-audit", action="store_true")
    args = parser.parse_args()
    n = args.units

    with open_ledger(args.ledger) as ledger:
        have = existing_units(ledger, n)
        print(f"ledger {args.ledger}: {have} of {n} units already there", flush=True)
        start = time.perf_counter()
        last = start
        for i in range(have, n):
            record, events = unit(i)
            ledger.record_attempt(record, events=events)
            if (i + 1) % 20_000 == 0:
                now = time.perf_counter()
                print(f"  {i + 1} units, {20_000 / (now - last):.0f} units/s", file=sys.stderr, flush=True)
                last = now
        if n > have:
            took = time.perf_counter() - start
            print(f"fill: {n - have} units in {took:.1f} s = {(n - have) / took:.0f} units/s")
    print(f"file: {size_mb(args.ledger):.0f} MB for {n} units ({size_mb(args.ledger) * 1e6 / max(n, 1):.0f} B/unit)")

    with open_ledger(args.ledger, create=False) as ledger:
        rng = random.Random(9)
        picks = [rng.randrange(n) for _ in range(args.lookups)]
        queries = {
            "serial": [serial(i) for i in picks],
            "thing name": [f"prov1-{serial(i)}" for i in picks],
            "certificate id prefix (8 hex)": [cert_id(i)[:8] for i in picks],
        }
        for what, qs in queries.items():
            found = iter(qs)
            median, worst = timed_ms(lambda found=found: ledger.find(next(found)), len(qs))  # type: ignore[misc]
            units = iter(qs)
            u_median, u_worst = timed_ms(lambda units=units: ledger.find_units(next(units)), len(qs))  # type: ignore[misc]
            print(
                f"find by {what}: median {median:.3f} ms, worst {worst:.3f} ms; "
                f"find_units: median {u_median:.3f} ms, worst {u_worst:.3f} ms"
            )
        pages: dict[str, dict[str, Any]] = {
            "first page (limit 50)": {},
            "state=failed": {"state": "failed"},
            "outcome=ERROR": {"outcome": "ERROR"},
            "target=prod-us, station=line1-st2": {"target": "prod-us", "station": "line1-st2"},
            "since (last 24 h)": {"since": T0 + n - 86_400},
            "until (the oldest 10%)": {"until": T0 + n / 10},
        }
        for what, filters in pages.items():
            median, worst = timed_ms(lambda f=filters: ledger.unit_page(limit=50, **f), 20)  # type: ignore[misc]
            print(f"units {what}: median {median:.2f} ms, worst {worst:.2f} ms")
        page = ledger.unit_page(limit=50)
        cursor = page.next_cursor
        median, worst = timed_ms(lambda: ledger.unit_page(limit=50, after=cursor), 20)
        print(f"units next page by cursor: median {median:.2f} ms, worst {worst:.2f} ms")

        if not args.skip_export:
            start = time.perf_counter()
            with open(os.devnull, "w", encoding="utf-8") as out:
                count = ledger.export("csv", out)
            took = time.perf_counter() - start
            print(f"export csv: {count} rows in {took:.1f} s = {count / took:.0f} rows/s")
        if not args.skip_audit:
            start = time.perf_counter()
            result = ledger.audit()
            took = time.perf_counter() - start
            print(
                f"audit (full): ok={result.ok} {result.checked} rows + {result.units_checked} units in {took:.1f} s"
                f" = {result.checked / took:.0f} rows/s {result.reason}"
            )
            start = time.perf_counter()
            result = ledger.audit(since_checkpoint=True)
            took = time.perf_counter() - start
            print(
                f"audit (since checkpoint at {result.since_seq}): ok={result.ok} {result.checked} rows, "
                f"{result.units_checked} units in {took:.2f} s {result.reason}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
