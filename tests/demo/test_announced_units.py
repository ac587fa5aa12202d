"""The interactive demo's promise, without a screen: the units it announces (`DemoLine.jig_units`) are the
units in the jigs, scanning an announced serial without a slot reaches the jig holding that unit, and the
units it marks faulty are exactly the ones that FAIL (issue 12: "every 3rd unit is faulty", FAILs on 8, 10, 17).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from station.errors import InputError
from station.lab.demo import DemoLine
from station.model import Outcome


def test_the_announced_faulty_units_are_exactly_the_ones_that_fail(tmp_path: Path) -> None:
    # Two PROV/1 jigs (slot-1, slot-3) and an nRF91 one (slot-2): PROV/1 scans are routed by the unit's id,
    # the nRF91 ones go to the family's jig. As `station demo` runs it: a fresh unit after each, every 3rd
    # unit put in a jig is faulty, counting from the first.
    demo = DemoLine(
        tmp_path, slots=3, families=["prov1", "nrf91"], auto_replace=True, routed=True, fault_every=3
    )
    announced: dict[str, Outcome] = {}
    with demo:
        for _round in range(4):
            units = demo.jig_units()
            assert [u.slot for u in units] == demo.slot_names
            assert all(u.serial == demo.devices[u.slot].serial for u in units)
            # Last slot first: the plain "next free jig" rule would put slot-3's PROV/1 unit on slot-1.
            for unit in reversed(units):
                announced[unit.serial] = unit.expected
                assert demo.line.scan(unit.serial) == unit.slot
            assert demo.line.wait_idle(60)
        with pytest.raises(InputError) as refused:
            demo.line.scan("SIM12345678")  # a label no unit in a jig carries
        results = {r.serial: r.outcome for r in demo.line.results()}
        assert demo.ledger.find("SIM12345678") == []
    assert len(results) == 12
    assert results == announced
    faulty = {serial for serial, expected in announced.items() if expected == Outcome.FAIL}
    assert faulty == {serial for serial, outcome in results.items() if outcome == Outcome.FAIL}
    assert len(faulty) == 4  # units 3, 6, 9 and 12 put in a jig
    assert refused.value.title == "Unit not in a free jig" and "SIM12345678" in refused.value.message
