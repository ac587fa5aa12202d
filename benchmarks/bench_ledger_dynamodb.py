"""Print what the shared DynamoDB ledger costs per unit: requests, capacity units, and append/lookup latency.

Usage:  uv run python benchmarks/bench_ledger_dynamodb.py [--stations 4] [--units 100] [--endpoint URL]
        [--in-process]

Each station is a thread with its own `DynamoLedger` handle (its own station id, its own boto3 client) that
writes a unit's ledger traffic as the pipeline does: claim the serial, open the journal, four journal updates
(thing, attached, verified, …), the record, close the journal. Figures:
- DynamoDB requests per unit, by operation (counted on each client);
- capacity units per unit, computed from the request and answer items by DynamoDB's rules (1 WCU per 1 KB
  written, 2 in a transaction, +1 per GSI the written item lands in; 1 RCU per 4 KB read consistently, 0.5
  eventually; a ConditionCheck 2) — the lab's moto answers a constant ConsumedCapacity, so it is not used;
- p50/p99 of one append (`journal_update`), of `record_attempt` and of `find` (serial lookup on a GSI).

Against the lab's DynamoDB: by default a `station lab`-style DynamoDB server in its own process
(`station.lab.dynamodb`); `--in-process` serves it from a control plane in this process (as before);
`--endpoint URL` uses one already running. With its own process it also prints that process's CPU time per unit
(load-independent; STATION_LAB_MOTO_PLAIN=1 serves moto as it is, to compare). It prints figures; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import secrets
import sys
import threading
import time
import uuid
from typing import Any

GSI_KEYS = ("r_serial", "r_thing", "r_cp", "r_all", "u_fold", "u_all", "u_state")


def attr_size(value: dict[str, Any]) -> int:
    """An attribute value's size as DynamoDB counts it (close enough for capacity units)."""
    (kind, v), *_ = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return len(str(v).lstrip("-").replace(".", "")) // 2 + 2
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + attr_size(x) for k, x in v.items())
    if kind == "L":
        return 3 + sum(1 + attr_size(x) for x in v)
    return len(str(v))


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + attr_size(value) for name, value in item.items())


class Meter:
    """Counts requests and capacity units of the clients it is attached to (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.wcu = 0.0
        self.rcu = 0.0

    def attach(self, client: Any) -> None:
        client.meta.events.register("after-call.dynamodb", self._after)

    def _after(self, http_response: Any, parsed: dict[str, Any], model: Any, context: Any, **_: Any) -> None:
        op = model.name
        params = context.get("bench_params") or {}
        wcu = rcu = 0.0
        if op == "TransactWriteItems":
            for entry in params.get("TransactItems", []):
                (kind, body), *_ = entry.items()
                size = item_size(body.get("Item") or body.get("Key") or {})
                units = max(1, math.ceil(size / 1024))
                wcu += 2 * units
                if kind == "Put":
                    wcu += 2 * units * sum(1 for k in GSI_KEYS if k in body["Item"])
        elif op in ("PutItem", "UpdateItem", "DeleteItem"):
            item = params.get("Item") or params.get("Key") or {}
            units = max(1, math.ceil(item_size(item) / 1024))
            wcu += units * (1 + sum(1 for k in GSI_KEYS if k in item))
        elif op == "GetItem":
            size = item_size(parsed.get("Item") or {})
            rcu += max(1, math.ceil(size / 4096)) * (1 if params.get("ConsistentRead") else 0.5)
        elif op in ("Query", "Scan"):
            size = sum(item_size(i) for i in parsed.get("Items", []))
            rcu += max(1, math.ceil(size / 4096)) * (1 if params.get("ConsistentRead") else 0.5)
        elif op == "BatchGetItem":
            for items in parsed.get("Responses", {}).values():
                rcu += sum(max(1, math.ceil(item_size(i) / 4096)) for i in items)
        with self.lock:
            self.requests[op] += 1
            self.wcu += wcu
            self.rcu += rcu


def keep_params(
    params: dict[str, Any], context: dict[str, Any], **_: Any
) -> None:  # the API call's own params
    context["bench_params"] = params


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else 0.0


def main() -> int:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "ledger"))
    from ledger_contract import make_record

    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY
    from station.ledger.dynamodb import DynamoLedger

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=4)
    parser.add_argument("--units", type=int, default=100, help="units per station")
    parser.add_argument("--endpoint", help="a running DynamoDB endpoint (the lab's)")
    parser.add_argument("--in-process", action="store_true", help="serve DynamoDB from this process")
    args = parser.parse_args()
    os.environ["AWS_ACCESS_KEY_ID"] = LAB_ACCESS_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = LAB_SECRET_ACCESS_KEY
    server: Any = None
    if args.endpoint:
        endpoint = args.endpoint
    elif args.in_process:
        from station.lab.control import ControlPlane

        server = ControlPlane(throttling=False).start()
        endpoint = server.endpoint_url
    else:
        from station.lab.dynamodb import DynamoServer

        server = DynamoServer().start()
        endpoint = server.endpoint_url
    url = f"dynamodb://bench-{secrets.token_hex(3)}?region=eu-west-1&endpoint_url={endpoint}"
    meter = Meter()
    appends: list[float] = []
    records: list[float] = []
    errors: list[BaseException] = []
    DynamoLedger.from_url(url).close()  # the table, made once
    before = dict(meter.requests)
    cpu_before = server.cpu_seconds() if hasattr(server, "cpu_seconds") else 0.0

    def station(name: str) -> None:
        try:
            ledger = DynamoLedger.from_url(url, station_id=name)
            ledger._client.meta.events.register("before-parameter-build.dynamodb", keep_params)
            meter.attach(ledger._client)
            for i in range(args.units):
                serial = f"{name}-SN{i:05d}"
                rec = make_record(serial, station_id=name, attempt_id=str(uuid.uuid4()))
                ledger.claim_unit(serial, rec.attempt_id, station_id=name, slot="s1")
                jid = ledger.journal_open(
                    attempt_id=rec.attempt_id, serial=serial, slot="s1", state="registering"
                )
                for state in ("registered", "thing", "attached", "verified"):
                    t0 = time.perf_counter()
                    ledger.journal_update(jid, state=state)
                    appends.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ledger.record_attempt(rec)
                records.append(time.perf_counter() - t0)
                ledger.journal_close(jid, "PASS")
            ledger.close()
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=station, args=(f"bench-st{n + 1}",)) for n in range(args.stations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    units = args.stations * args.units
    server_cpu = (server.cpu_seconds() - cpu_before) if hasattr(server, "cpu_seconds") else 0.0
    finds = []
    reader = DynamoLedger.from_url(url, create=False)
    for n in range(min(50, units)):
        t0 = time.perf_counter()
        found = reader.find(f"bench-st{n % args.stations + 1}-SN{n // args.stations:05d}")
        finds.append(time.perf_counter() - t0)
        assert found, "a recorded unit was not found"
    t0 = time.perf_counter()
    verdict = reader.audit(all_stations=True)
    audit_s = time.perf_counter() - t0
    if server is not None:
        server.stop()
    requests = collections.Counter({k: v - before.get(k, 0) for k, v in meter.requests.items()})
    print(f"DynamoDB ledger at {endpoint}: {args.stations} stations × {args.units} units, {elapsed:.1f} s")
    if server_cpu:
        print(f"  lab DynamoDB process CPU per unit: {server_cpu / units * 1000:.1f} ms")
    print(f"  errors: {len(errors)} {[type(e).__name__ + ': ' + str(e)[:80] for e in errors[:3]]}")
    print(f"  units/h (ledger traffic only): {units / elapsed * 3600:,.0f}")
    print(
        f"  requests/unit: {sum(requests.values()) / units:.1f}  "
        + ", ".join(f"{op} {count / units:.1f}" for op, count in requests.most_common())
    )
    print(
        f"  capacity/unit: {meter.wcu / units:.1f} WCU, {meter.rcu / units:.1f} RCU (computed, see docstring)"
    )
    print(
        f"  append (journal_update) p50/p99 ms: {percentile(appends, 0.5) * 1000:.1f}/{percentile(appends, 0.99) * 1000:.1f}"
    )
    print(
        f"  record_attempt p50/p99 ms: {percentile(records, 0.5) * 1000:.1f}/{percentile(records, 0.99) * 1000:.1f}"
    )
    print(f"  find p50/p99 ms: {percentile(finds, 0.5) * 1000:.1f}/{percentile(finds, 0.99) * 1000:.1f}")
    print(
        f"  audit --all-stations: {'intact' if verdict.ok else 'FAILED ' + verdict.reason}, {audit_s:.1f} s"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
