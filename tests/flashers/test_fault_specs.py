"""The one fault-spec reader every simulator uses (`flashers.simulators._common.parse_faults`): what a value may
be follows the field's type, and each family's `Faults.parse` adds only its own limits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from flashers.simulators import esp32rom, expresslink, nrf91, prov1
from flashers.simulators._common import parse_faults


@dataclass
class Sample:
    silent: bool = False
    lose: float = 0.0
    slow: float = 0.0
    disconnect: int | None = None
    hint: int | None = None
    on: str | None = None


def test_each_field_reads_as_its_type() -> None:
    faults = parse_faults(
        Sample,
        ["silent", "lose=0.25", "slow=1.5", "disconnect=7", "hint=3", "on= conf? "],
        probabilities=("lose",),
        ranges={"hint": (1, 9)},
    )
    assert faults == Sample(silent=True, lose=0.25, slow=1.5, disconnect=7, hint=3, on="conf?")
    assert isinstance(faults.disconnect, int) and isinstance(faults.slow, float)


@pytest.mark.parametrize("off", ["silent=off", "silent=0", "silent=false", "silent=No"])
def test_a_flag_can_be_turned_off(off: str) -> None:
    assert parse_faults(Sample, ["silent", off]).silent is False


def test_a_dash_in_a_name_reads_as_an_underscore() -> None:
    assert prov1.Faults.parse(["bad-store"]).bad_store is True


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("bogus=1", "unknown fault 'bogus'; known: disconnect, hint, lose, on, silent, slow"),
        ("slow", "fault slow needs a value: slow=X"),
        ("on=", "fault on needs a value: on=X"),
        ("disconnect=2.5", "fault disconnect needs a whole number, not '2.5'"),
        ("slow=fast", "fault slow needs a number, not 'fast'"),
        ("lose=1.5", "fault lose=1.5 is out of range (a number from 0 to 1)"),
        ("slow=-1", "fault slow=-1 is out of range (a number of at least 0)"),
        ("hint=0", "fault hint=0 is out of range (a number from 1 to 9)"),
    ],
)
def test_a_bad_spec_names_the_fault(spec: str, says: str) -> None:
    with pytest.raises(ValueError) as bad:
        parse_faults(Sample, [spec], probabilities=("lose",), ranges={"hint": (1, 9)})
    assert str(bad.value) == says


def test_the_families_keep_their_own_limits() -> None:
    assert nrf91.Faults.parse(["urc=0.5"]).urc == 0.5
    with pytest.raises(ValueError, match="urc=2"):
        nrf91.Faults.parse(["urc=2"])
    assert expresslink.Faults.parse(["disconnect-on=conf?"]).disconnect_on == "CONF?"
    with pytest.raises(ValueError, match="connect_hint=100"):
        expresslink.Faults.parse(["connect_hint=100"])
    assert esp32rom.Faults.parse(["disconnect_on_write=1"]).disconnect_on_write == 1
    with pytest.raises(ValueError, match="disconnect_on_write=0"):
        esp32rom.Faults.parse(["disconnect_on_write=0"])
