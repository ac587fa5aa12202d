"""Print a factory's figures: N station processes × S slots on one lab, sharing AWS's quotas.

Usage:  uv run python benchmarks/bench_factory.py [--stations 1,2,4] [--slots 8] [--units-per-station 40]
        [--paced] [--no-shared-budget] [--ledger sqlite|dynamodb] [--kill-one SECONDS]

The acceptance run of the shared ledger:  --stations 4 --slots 8 --units-per-station 50 --ledger dynamodb

One `station lab` process (throttling at AWS's default quotas, its DynamoDB serving the shared budget and, with
`--ledger dynamodb`, the shared ledger), then for each station count N: N `station demo --headless --lab …`
processes started together, each with S slots of simulated PROV/1 units and its own station id. Figures per N:
- units/hour of the whole factory (units ÷ the window from the first unit's start to the last unit's end);
- share of the RegisterCertificateWithoutCA quota used (registrations ÷ window ÷ 10 TPS; goal ≥ 90 %);
- units not PASS and throttling answers the lab gave (goal 0 failures by throttling);
- DynamoDB writes per unit for the budget (leases: the version counter of each budget item);
- p50 / p99 of the `record` step (the ledger write of a unit) and of a `find` on each station's ledger;
- the station processes' CPU time per unit (user + system, of the processes waited for);
- with `--ledger dynamodb`: the lab's DynamoDB requests per unit (budget and ledger, counted by the lab), the
  registry's ACTIVE certificates against the shared ledger's live units (boto3), `audit verify` of each station
  and of the whole factory (`--all-stations`, which includes the factory anchor).

`--kill-one SECONDS` SIGKILLs the first station that long after the start, runs `station reconcile` with its
station.toml (its own station id) while the others are still running, and reports what reconcile resolved.

`--no-shared-budget` runs each station on its own in-process budget (what a factory had before): the lab then
throttles and units fail. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

STATION = str(Path(sys.executable).with_name("station"))
REGISTER_QUOTA = 10.0


def start_lab(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [
            STATION,
            "lab",
            "--state-dir",
            str(state_dir),
            "--accounts",
            "1",
            "--regions",
            "eu-west-1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit("station lab did not start")
    return process, json.loads(line)


def lab_status(described: dict[str, Any]) -> dict[str, Any]:
    url = described["control_plane"]["endpoint_url"] + "/lab-api/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        status: dict[str, Any] = json.loads(response.read())
        return status


def lab_dynamodb(described: dict[str, Any]) -> Any:
    import boto3

    control = described["control_plane"]
    return boto3.client(
        "dynamodb",
        region_name=described["dynamodb"]["region"],
        endpoint_url=described["dynamodb"]["endpoint_url"],
        aws_access_key_id=control["aws_access_key_id"],
        aws_secret_access_key=control["aws_secret_access_key"],
    )


def dynamodb_requests(described: dict[str, Any]) -> dict[str, int]:
    """The lab's DynamoDB requests so far, by operation (its own process, or the control plane's)."""
    url = described["dynamodb"]["endpoint_url"] + "/lab-api/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        counts: dict[str, int] = json.loads(response.read()).get("requests", {})
    return {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("dynamodb:")}


def active_certificates(described: dict[str, Any]) -> set[str]:
    """The registry's ACTIVE certificate ids (every account and region of the lab), read with boto3."""
    import boto3

    control = described["control_plane"]
    active: set[str] = set()
    for account in described["accounts"]:
        for region in account["regions"]:
            session = boto3.Session(
                aws_access_key_id=control["aws_access_key_id"],
                aws_secret_access_key=control["aws_secret_access_key"],
                region_name=region,
            )
            if account.get("role_arn") and account["account_id"] != "123456789012":
                sts = session.client("sts", endpoint_url=control["endpoint_url"])
                creds = sts.assume_role(RoleArn=account["role_arn"], RoleSessionName="bench")["Credentials"]
                session = boto3.Session(
                    aws_access_key_id=creds["AccessKeyId"],
                    aws_secret_access_key=creds["SecretAccessKey"],
                    aws_session_token=creds["SessionToken"],
                    region_name=region,
                )
            iot = session.client("iot", endpoint_url=control["endpoint_url"])
            for page in iot.get_paginator("list_certificates").paginate(pageSize=250):
                active |= {c["certificateId"] for c in page["certificates"] if c["status"] == "ACTIVE"}
    return active


def budget_leases(described: dict[str, Any]) -> int:
    client = lab_dynamodb(described)
    try:
        items = client.scan(TableName="station-budget")["Items"]
    except client.exceptions.ResourceNotFoundException:
        return 0
    return sum(int(item["v"]["N"]) for item in items)


def run_factory(
    args: argparse.Namespace, described: dict[str, Any], lab_json: Path, stations: int, work: Path
) -> dict[str, Any]:
    from station.ledger import open_ledger

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    throttled_before = lab_status(described)["throttling"]["throttled"]
    leases_before = budget_leases(described)
    requests_before = dynamodb_requests(described)
    active_before = active_certificates(described)
    processes = {}
    configs = {}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ledger_url = described["dynamodb"]["ledger_url"].replace("station-ledger", f"ledger-{stations}")
    for n in range(stations):
        name = f"factory-st{n + 1}"
        cmd = [
            STATION,
            "demo",
            "--headless",
            "--json",
            "--lab",
            str(lab_json),
            "--station-id",
            name,
            "--slots",
            str(args.slots),
            "--units",
            str(args.units_per_station),
            "--state-dir",
            str(work / f"{stations}-{name}"),
        ]
        if args.paced:
            cmd.append("--paced")
        if args.no_shared_budget:
            cmd += ["--budget-store", "none"]
        if args.ledger == "dynamodb":
            cmd += ["--ledger", ledger_url]
        processes[name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        configs[name] = work / f"{stations}-{name}" / "station.toml"
    killed: dict[str, Any] = {}
    if args.kill_one:
        victim, process = next(iter(processes.items()))
        time.sleep(args.kill_one)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        # Its reconcile, with its own station.toml (its station id), while the other stations keep going.
        t0 = time.perf_counter()
        control = described["control_plane"]
        keys = {  # as an operator would run it: with credentials for the shared ledger
            "AWS_ACCESS_KEY_ID": str(control["aws_access_key_id"]),
            "AWS_SECRET_ACCESS_KEY": str(control["aws_secret_access_key"]),
        }
        done = subprocess.run(
            [STATION, "reconcile", "--config", str(configs[victim]), "--json"],
            capture_output=True,
            text=True,
            env={**env, **keys},
            timeout=600,
        )
        try:
            entries = json.loads(done.stdout)["entries"]
        except (ValueError, KeyError):
            entries = []
        pending_after = -1
        if args.ledger == "dynamodb":
            os.environ.update(keys)
            with open_ledger(ledger_url, create=False, station_id=victim) as own:
                pending_after = len(own.journal_pending())
        killed = {
            "station": victim,
            "pending_after_reconcile": pending_after,
            "reconcile_exit": done.returncode,
            "reconcile_s": time.perf_counter() - t0,
            "entries": [(e.get("serial"), e.get("action")) for e in entries],
            "err": (done.stderr[-300:] + done.stdout[-300:]) if done.returncode else "",
        }
    documents: dict[str, Any] = {}
    failed_stations = []
    for name, process in processes.items():
        if name == killed.get("station"):
            continue
        out, err = process.communicate(timeout=3600)
        try:
            documents[name] = json.loads(out)
        except ValueError:
            failed_stations.append((name, process.returncode, err[-500:]))
    requests = dynamodb_requests(described)  # before the bench's own reads below
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    station_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    units = [u for doc in documents.values() for u in doc["units"]]
    starts, ends, finds = [], [], []
    unit_reads: list[float] = []
    # The shared ledger takes the lab's keys (as the station processes do); read each ledger once.
    control = described["control_plane"]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", str(control["aws_access_key_id"]))
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", str(control["aws_secret_access_key"]))
    audits = []
    live_certificates: set[str] = set()
    records_written = 0
    for location in dict.fromkeys(doc["ledger"] for doc in documents.values()):
        with open_ledger(location, create=False) as ledger:
            t0 = time.perf_counter()
            verdict = ledger.audit(all_stations=True)
            audits.append(
                ("--all-stations", verdict.ok, len(verdict.stations) or 1, time.perf_counter() - t0)
            )
            if location.startswith("dynamodb://"):
                for name in processes:
                    with open_ledger(location, create=False, station_id=name) as own:
                        t0 = time.perf_counter()
                        one = own.audit()
                        audits.append((name, one.ok, 1, time.perf_counter() - t0))
            for record in ledger.records():
                records_written += 1
                if record.station_id == killed.get("station"):
                    continue  # the killed station's window is not the factory's
                starts.append(record.started_at)
                ends.append(record.finished_at)
            after: str | None = None
            while True:
                page = ledger.unit_page(after=after, limit=500)
                for unit in page.units:
                    live_certificates |= {i.certificate_id for i in unit.live}
                after = page.next_cursor
                if not after:
                    break
            for unit in [u for d in documents.values() if d["ledger"] == location for u in d["units"][:25]]:
                t0 = time.perf_counter()
                ledger.find(unit["serial"])
                finds.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                ledger.unit(unit["serial"])
                unit_reads.append((time.perf_counter() - t0) * 1000)
    active_new = active_certificates(described) - active_before
    requests_used = {k: v - requests_before.get(k, 0) for k, v in requests.items()}
    window = max(ends) - min(starts) if starts else float("nan")
    record_ms = sorted(u["timings_ms"].get("record", 0.0) for u in units)
    not_pass = [u for u in units if u["outcome"] != "PASS"]
    throttled_units = [
        u for u in not_pass if "throttl" in (u.get("title", "") + u.get("message", "")).lower()
    ]
    return {
        "stations": stations,
        "units": len(units),
        "window_s": window,
        "units_per_hour": len(units) / window * 3600 if window else 0.0,
        "quota_share": len(units) / window / REGISTER_QUOTA if window else 0.0,
        "not_pass": len(not_pass),
        "throttled_units": len(throttled_units),
        "throttled_answers": lab_status(described)["throttling"]["throttled"] - throttled_before,
        "budget_writes_per_unit": (budget_leases(described) - leases_before) / max(1, len(units)),
        "record_p50_ms": statistics.median(record_ms) if record_ms else 0.0,
        "record_p99_ms": record_ms[int(0.99 * (len(record_ms) - 1))] if record_ms else 0.0,
        "find_p99_ms": sorted(finds)[int(0.99 * (len(finds) - 1))] if finds else 0.0,
        "unit_p99_ms": percentile(unit_reads, 0.99),
        "station_cpu_ms_per_unit": station_cpu / max(1, len(units)) * 1000,
        "dynamodb_requests_per_unit": sum(requests_used.values()) / max(1, records_written),
        "dynamodb_requests_by_op": {
            k: round(v / max(1, records_written), 2) for k, v in requests_used.items() if v
        },
        "active_equals_live": active_new == live_certificates,
        "active_new": len(active_new),
        "live_units_certificates": len(live_certificates),
        "killed": killed,
        "failed_stations": failed_stations,
        "audits": audits,
        "not_pass_titles": sorted({f"{u['outcome']}: {u.get('title', '')}" for u in not_pass}),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", default="1,2,4")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--units-per-station", type=int, default=40)
    parser.add_argument(
        "--paced", action="store_true", help="simulated units answer at 115200 baud wire time"
    )
    parser.add_argument("--no-shared-budget", action="store_true", help="each station on its own budget")
    parser.add_argument("--ledger", choices=("sqlite", "dynamodb"), default="sqlite")
    parser.add_argument(
        "--kill-one", type=float, default=0.0, metavar="SECONDS", help="SIGKILL station 1 then"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-factory-"))
    lab, described = start_lab(work / "lab")
    rows = []
    try:
        for count in [int(n) for n in args.stations.split(",")]:
            rows.append(run_factory(args, described, work / "lab" / "lab.json", count, work))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # kept even if stopping the lab fails
    finally:
        lab.send_signal(signal.SIGINT)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"Factory on one lab, {args.slots} slots per station, {args.units_per_station} units per station, "
        f"{'paced' if args.paced else 'unpaced'} units, budget {'per station' if args.no_shared_budget else 'shared'}, "
        f"ledger {args.ledger}; lab throttling at AWS's default quotas"
    )
    print(
        "  stations  units  window s   units/h  quota  not PASS  by throttle  throttled answers  "
        "budget writes/unit  record p50/p99 ms  find p99 ms"
    )
    for r in rows:
        print(
            f"  {r['stations']:>8} {r['units']:>6} {r['window_s']:>9.2f} {r['units_per_hour']:>9.0f} "
            f"{r['quota_share']:>6.0%} {r['not_pass']:>9} {r['throttled_units']:>12} {r['throttled_answers']:>18} "
            f"{r['budget_writes_per_unit']:>19.2f} {r['record_p50_ms']:>8.1f}/{r['record_p99_ms']:<8.1f} "
            f"{r['find_p99_ms']:>11.2f}"
        )
        for which, ok, chains, seconds in r["audits"]:
            print(f"    audit {which}: {'intact' if ok else 'FAILED'}, {chains} chain(s), {seconds:.1f} s")
        print(
            f"    registry ACTIVE (new) {r['active_new']} vs ledger live {r['live_units_certificates']}: "
            f"{'equal' if r['active_equals_live'] else 'DIFFERENT'}; unit() p99 {r['unit_p99_ms']:.1f} ms; "
            f"station processes' CPU {r['station_cpu_ms_per_unit']:.0f} ms/unit"
        )
        print(
            f"    lab DynamoDB requests per record: {r['dynamodb_requests_per_unit']:.1f} "
            f"{r['dynamodb_requests_by_op']}"
        )
        if r["killed"]:
            print(f"    killed {r['killed']}")
        for name, code, err in r["failed_stations"]:
            print(f"    station {name} exited {code}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
