"""One station process of a factory killed mid-run (SIGKILL, with units in flight): the other station keeps going
and passes every unit; `station reconcile` with the killed station's own station.toml (its station id) resolves
its journal entries and no other station's, while that other station is still running; afterwards AWS holds no
certificate the shared ledger does not hold live, no claim of the killed station is left, and the audit of each
station and of the whole factory passes.

Real parts only: `station lab`'s DynamoDB in its own process, separate `station demo --headless --lab` processes,
the `station reconcile` and `station audit` commands, the registry read with boto3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab

STATION = str(Path(sys.executable).with_name("station"))
VICTIM, SURVIVOR = "line1-st1", "line1-st2"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Any]:
    from station.lab import Lab

    with Lab(
        tmp_path / "lab", accounts=1, regions=["eu-west-1"], throttling=True, dynamodb_process=True
    ) as running:
        yield running


def _active(iot: Any) -> set[str]:
    return {
        c["certificateId"]
        for page in iot.get_paginator("list_certificates").paginate(pageSize=250)
        for c in page["certificates"]
        if c["status"] == "ACTIVE"
    }


def _station(lab: Any, name: str, units: int, state_dir: Path, ledger_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen(
        [
            STATION,
            "demo",
            "--headless",
            "--json",
            "--paced",  # units answer at wire speed: a unit is in flight long enough to be killed in it
            "--lab",
            str(lab.lab_json_path),
            "--station-id",
            name,
            "--slots",
            "2",
            "--units",
            str(units),
            "--state-dir",
            str(state_dir),
            "--ledger",
            ledger_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_station_killed_mid_run_is_reconciled_alone_while_the_other_finishes(
    lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY
    from station.ledger import open_ledger

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAB_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LAB_SECRET_ACCESS_KEY)
    dynamodb = json.loads(lab.lab_json_path.read_text())["dynamodb"]
    assert dynamodb["endpoint_url"] != lab.control.endpoint_url  # the lab's DynamoDB has its own process
    ledger_url = dynamodb["ledger_url"]
    iot = lab.iot()
    active_before = _active(iot)
    victim = _station(lab, VICTIM, 12, tmp_path / VICTIM, ledger_url)
    survivor = _station(lab, SURVIVOR, 6, tmp_path / SURVIVOR, ledger_url)
    try:
        # Kill the victim once it has a unit in flight (an open journal entry), after its first units.
        deadline = time.monotonic() + 120
        watcher = None
        while time.monotonic() < deadline and victim.poll() is None:
            try:
                watcher = watcher or open_ledger(ledger_url, create=False, station_id=VICTIM)
                if len(watcher.journal_pending()) >= 2:  # both of its slots mid-unit
                    victim.send_signal(signal.SIGKILL)
                    break
            except Exception:  # the table is made by the first station that opens it
                pass
            time.sleep(0.02)
        if watcher is not None:
            watcher.close()
        victim.wait(30)
        assert victim.returncode == -signal.SIGKILL, "the victim finished before it could be killed"
        with open_ledger(ledger_url, create=False, station_id=VICTIM) as ledger:
            left = {e.serial for e in ledger.journal_pending()}
        assert left, "killed between two units: nothing in flight to reconcile"
        assert survivor.poll() is None, "the other station should still be running"

        # Reconcile the killed station with its own station.toml while the other one keeps provisioning.
        done = subprocess.run(
            [STATION, "reconcile", "--config", str(tmp_path / VICTIM / "station.toml"), "--json"],
            capture_output=True,
            text=True,
            timeout=120,  # with the lab's keys (from the environment), as an operator would run it
        )
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        entries = json.loads(done.stdout)["entries"]
        assert {e["serial"] for e in entries} == left  # its own in-flight units, and only those
        assert all(e["action"] != "failed" for e in entries)

        out, err = survivor.communicate(timeout=240)
        assert survivor.returncode == 0, err[-2000:]
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
                process.wait(10)
    units = json.loads(out)["units"]
    assert len(units) == 6 and [u["outcome"] for u in units] == ["PASS"] * 6

    with open_ledger(ledger_url, create=False) as shared:
        for name in (VICTIM, SURVIVOR):
            with open_ledger(ledger_url, create=False, station_id=name) as own:
                assert own.journal_pending() == []
                result = own.audit()
                assert result.ok and result.station == name, result
        whole = shared.audit(all_stations=True)
        assert whole.ok and {s for s, _, _ in whole.stations} == {VICTIM, SURVIVOR}, whole
        # No orphan: every certificate AWS holds ACTIVE is a live identity in the ledger, and back.
        live = set()
        after = None
        while True:
            page = shared.unit_page(after=after, limit=500)
            live |= {i.certificate_id for u in page.units for i in u.live}
            after = page.next_cursor
            if not after:
                break
        assert _active(iot) - active_before == live
        # The reconciled units carry the killed station's ERROR record, and its claims are gone.
        for serial in left:
            records = shared.find(serial)
            assert records and records[-1].station_id == VICTIM
            if not any(r.outcome == "PASS" for r in records):
                assert records[-1].outcome == "ERROR"
    db = _lab_dynamodb(dynamodb)
    claims = db.query(
        TableName="station-ledger",
        KeyConditionExpression="pk = :c",
        ExpressionAttributeValues={":c": {"S": "claim"}},
        ConsistentRead=True,
    )["Items"]
    assert [c["sk"]["S"] for c in claims if c["station_id"]["S"] == VICTIM] == []
    # The command-line audit agrees (each station and the whole factory, with its anchor).
    for extra in (["--station", VICTIM], ["--station", SURVIVOR], ["--all-stations"]):
        checked = subprocess.run(
            [STATION, "audit", "verify", "--ledger", ledger_url, *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]


def _lab_dynamodb(dynamodb: dict[str, Any]) -> Any:
    import boto3

    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY

    return boto3.client(
        "dynamodb",
        region_name=dynamodb["region"],
        endpoint_url=dynamodb["endpoint_url"],
        aws_access_key_id=LAB_ACCESS_KEY_ID,
        aws_secret_access_key=LAB_SECRET_ACCESS_KEY,
    )
