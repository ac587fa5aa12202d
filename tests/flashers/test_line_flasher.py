"""The one constructor path of the line-protocol flashers (`flashers.serialio.LineFlasher`): every family opens
its port with its own baud rate, line limit and write timeout the same way, and refuses a bad option before
the port is opened."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from flashers.base import PortUnavailable
from flashers.expresslink import MAX_COMMAND, ExpressLinkFlasher
from flashers.expresslink import Timing as ElTiming
from flashers.nrf91 import MAX_LINE as NRF_MAX_LINE
from flashers.nrf91 import Nrf91Flasher
from flashers.nrf91 import Timing as NrfTiming
from flashers.prov1 import MAX_LINE as PROV1_MAX_LINE
from flashers.prov1 import Prov1Flasher
from flashers.prov1 import Timing as Prov1Timing
from flashers.serialio import LineFlasher
from station.errors import StationFault

FAMILIES: list[tuple[type[LineFlasher[Any]], Any, int]] = [
    (Prov1Flasher, Prov1Timing(), PROV1_MAX_LINE),
    (Nrf91Flasher, NrfTiming(), NRF_MAX_LINE),
    (ExpressLinkFlasher, ElTiming(), MAX_COMMAND + 1024),
]


@pytest.mark.parametrize(("cls", "timing", "max_line"), FAMILIES, ids=lambda v: getattr(v, "family", ""))
def test_the_port_is_opened_with_the_familys_rate_limit_and_write_timeout(
    cls: type[LineFlasher[Any]], timing: Any, max_line: int
) -> None:
    timing = replace(timing, write_timeout_s=0.75)
    with cls("loop://", baudrate=57600, timing=timing) as flasher:
        port = flasher._io._port
        assert (flasher.port, flasher.baudrate, flasher.timing) == ("loop://", 57600, timing)
        assert (port.baudrate, port.write_timeout) == (57600, 0.75)
        assert flasher._io.max_line == max_line and flasher._io.name == "loop://"
        assert flasher.stats.frames == 0 and flasher._info is None and flasher._contact is False


@pytest.mark.parametrize(("cls", "timing", "max_line"), FAMILIES, ids=lambda v: getattr(v, "family", ""))
def test_a_missing_port_is_a_station_fault_naming_it(
    cls: type[LineFlasher[Any]], timing: Any, max_line: int, tmp_path: Any
) -> None:
    missing = str(tmp_path / "ttyUSB-gone")
    with pytest.raises(PortUnavailable) as caught:
        cls(missing, timing=timing)
    assert missing in caught.value.message


def test_a_bad_option_is_refused_before_the_port_is_opened(tmp_path: Any) -> None:
    # A port that cannot be opened would say PortUnavailable: the option check comes first.
    with pytest.raises(StationFault) as caught:
        Nrf91Flasher(str(tmp_path / "never-opened"), sec_tag="not-a-tag")
    assert caught.value.title == "Bad security tag"
