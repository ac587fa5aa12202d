"""Several station processes on one running lab: each joins it through lab.json (`station demo --headless
--lab`) and leases AWS send times from one shared budget in the lab's DynamoDB; each keeps its own ledger.

Checked with the real parts only: the station processes are separate `station` commands; the registry is read
with boto3; the budget's items are read from the lab's DynamoDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab

STATION = str(Path(sys.executable).with_name("station"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Any]:
    from station.lab import Lab

    with Lab(tmp_path / "lab", accounts=1, regions=["eu-west-1"], throttling=True) as running:
        yield running


def test_two_stations_join_one_lab_and_share_its_budget(lab: Any, tmp_path: Path) -> None:
    from station.ledger import open_ledger

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    stations = {}
    for name in ("line1-st1", "line1-st2"):
        stations[name] = subprocess.Popen(
            [
                STATION,
                "demo",
                "--headless",
                "--json",
                "--lab",
                str(lab.lab_json_path),
                "--station-id",
                name,
                "--slots",
                "2",
                "--units",
                "6",
                "--state-dir",
                str(tmp_path / name),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    documents = {}
    for name, process in stations.items():
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-2000:]
        documents[name] = json.loads(out)
    units = [u for doc in documents.values() for u in doc["units"]]
    assert len(units) == 12 and all(u["outcome"] == "PASS" for u in units)
    assert len({u["serial"] for u in units}) == 12

    # The registry holds exactly the twelve units' certificates, ACTIVE.
    iot = lab.iot()
    active = {
        c["certificateId"]
        for c in iot.list_certificates(pageSize=250)["certificates"]
        if c["status"] == "ACTIVE"
    }
    assert {u["certificate_id"] for u in units} == active

    # Each station recorded its own units under its own id.
    for name, doc in documents.items():
        with open_ledger(doc["ledger"], create=False) as ledger:
            for unit in doc["units"]:
                (record,) = ledger.find(unit["serial"])
                assert record.station_id == name
            assert ledger.audit().ok
    # Both stations drew from the one budget in the lab's DynamoDB.
    budget_items = lab.control.client("dynamodb", region="eu-west-1").scan(TableName="station-budget")[
        "Items"
    ]
    assert any(item["pk"]["S"].endswith("/RegisterCertificateWithoutCA") for item in budget_items)
