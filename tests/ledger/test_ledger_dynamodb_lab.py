"""The per-station DynamoDB ledger through a real DynamoDB endpoint (the lab's, over HTTP, as station processes
use it): two stations append from threads to one table, each audits clean, the whole factory audits clean, and
the same serial becomes live at one station only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ledger_contract import make_record, note

from station.ledger import UnitAlreadyLive, open_ledger
from station.ledger.dynamodb import DynamoLedger

pytestmark = pytest.mark.lab

STATIONS = ("line1-st1", "line1-st2")


@pytest.fixture
def ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from station.lab import Lab
    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAB_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LAB_SECRET_ACCESS_KEY)
    with Lab(tmp_path) as lab:
        yield str(json.loads(lab.lab_json_path.read_text())["dynamodb"]["ledger_url"])


def test_two_stations_share_the_labs_ledger_table(ledger_url: str) -> None:
    per_station = 60
    errors: list[BaseException] = []
    start = threading.Barrier(len(STATIONS))

    def station(name: str) -> None:
        try:
            with open_ledger(ledger_url, station_id=name) as ledger:
                start.wait()
                for i in range(per_station):
                    serial = f"{name}-SN{i:04d}"
                    ledger.record_attempt(make_record(serial, station_id=name), events=[note(serial)])
        except BaseException as exc:  # any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=station, args=(name,)) for name in STATIONS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name in STATIONS:
        with open_ledger(ledger_url, create=False, station_id=name) as ledger:
            result = ledger.audit()
            assert result.ok and result.station == name and result.head_seq == 2 * per_station
    with open_ledger(ledger_url, create=False) as anyone:
        assert isinstance(anyone, DynamoLedger)
        whole = anyone.audit(all_stations=True)
        assert whole.ok and whole.units_checked == 2 * per_station
        assert {s: n for s, n, _ in whole.stations} == dict.fromkeys(STATIONS, 2 * per_station)
        assert anyone.factory_heads() == {s: (n, h) for s, n, h in whole.stations}


def test_a_serial_becomes_live_at_one_station_through_the_lab(ledger_url: str) -> None:
    one, two = (open_ledger(ledger_url, station_id=name) for name in STATIONS)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def race(ledger: Any, cert: str) -> None:
        record = make_record(
            "SN-BOTH", station_id=ledger.station_id, certificate_id=cert * 32, started_at=1.0
        )
        barrier.wait()
        try:
            ledger.record_attempt(record)
            outcomes.append("live")
        except UnitAlreadyLive as refused:
            outcomes.append("refused")
            assert "send it to QA" in refused.message

    threads = [threading.Thread(target=race, args=pair) for pair in ((one, "1a"), (two, "2b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["live", "refused"]
    state = one.unit("SN-BOTH")
    assert state is not None and len(state.live) == 1
    assert one.audit(all_stations=True).ok
    one.close()
    two.close()
