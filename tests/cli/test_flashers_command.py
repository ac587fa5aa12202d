"""`station flashers` lists what the entry-point group really holds, with each family's capabilities."""

from __future__ import annotations

import json

import pytest

import flashers
from station.cli import main


def test_flashers_lists_installed_families_with_capabilities(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flashers", "--json"]) == 0
    rows = {row["family"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(flashers.available())
    assert {"prov1", "expresslink"} <= set(rows)
    assert rows["prov1"]["writes_key"] is True
    # ExpressLink keeps its own key: the station reads its certificate and verifies from the device side.
    assert rows["expresslink"]["writes_key"] is False
    assert rows["expresslink"]["reads_certificate"] is True
    assert rows["expresslink"]["device_verify"] is True
    # Only PROV/1 commits atomically; only nRF91 announces itself with a hello the station can observe.
    assert [f for f, r in rows.items() if r["atomic_commit"]] == ["prov1"]
    assert [f for f, r in rows.items() if r["observable"]] == ["nrf91"]


def test_the_default_flasher_factory_resolves_families_through_entry_points() -> None:
    from station.context import default_flasher_factory
    from station.errors import StationFault

    with pytest.raises(StationFault) as error:
        default_flasher_factory("loop://", family="no-such-family", baud=115200, options={})
    assert "no-such-family" in error.value.message
