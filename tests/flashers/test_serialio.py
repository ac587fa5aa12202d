"""Bounded line I/O over pyserial (`flashers.serialio`): deadlines, overlong lines, floods, port errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flashers.base import DeviceDisconnected, PortUnavailable
from flashers.serialio import OVERFLOW, LineIO, open_port, wire_time
from flashers.simulators.pty import LineModel, Link, PtyDevice


def loop_io(max_line: int = 32) -> LineIO:
    return LineIO(open_port("loop://"), max_line=max_line)


def test_wire_time_is_ten_bits_a_byte() -> None:
    assert wire_time(11520, 115200) == pytest.approx(1.0)
    assert wire_time(96, 9600) == pytest.approx(0.1)


def test_lines_are_split_and_cr_dropped() -> None:
    io = loop_io()
    io.write(b"one\r\ntwo\nthr")
    deadline = time.monotonic() + 1.0
    assert io.read_line(deadline) == b"one"
    assert io.read_line(deadline) == b"two"
    assert io.read_line(time.monotonic() + 0.05) is None  # no line end yet
    io.write(b"ee\n")
    assert io.read_line(time.monotonic() + 1.0) == b"three"
    assert io.bytes_out == io.bytes_in == 15
    io.close()
    io.close()


def test_read_ends_at_the_deadline() -> None:
    io = loop_io()
    started = time.monotonic()
    assert io.read_line(started + 0.1) is None
    assert 0.1 <= time.monotonic() - started < 0.3


def test_overlong_lines_are_reported_and_dropped() -> None:
    io = loop_io(max_line=16)
    io.write(b"x" * 40 + b"\nok\n")
    deadline = time.monotonic() + 0.3
    results = [io.read_line(deadline) for _ in range(4)]
    # Reported at least once per max_line bytes (a flood without line ends is seen as garbage, not silence),
    # and the tail of the long line is never returned as a line of its own.
    assert results[0] is OVERFLOW
    assert b"ok" in results
    assert all(r is OVERFLOW for r in results[: results.index(b"ok")])
    io.write(b"y" * 20 + b"\n")
    assert io.read_line(time.monotonic() + 1.0) is OVERFLOW


class Chatterbox(LineModel):
    """Never stops talking once spoken to: no line ends at all."""

    def handle_line(self, line: bytes, link: Link) -> None:
        while link.send(b"z" * 1024):
            pass


def test_a_flood_costs_at_most_the_deadline() -> None:
    with PtyDevice(Chatterbox()) as device:
        io = LineIO(open_port(device.port), max_line=160)
        try:
            io.write(b"hi\n")
            deadline = time.monotonic() + 0.5
            results = []
            while (line := io.read_line(deadline)) is not None:
                results.append(line)
            assert results and all(r is OVERFLOW for r in results)
            assert time.monotonic() < deadline + 0.2
            assert len(io._buffer) <= 2 * io.max_line + 2  # memory stays bounded
        finally:
            io.close()
        started = time.monotonic()
    assert time.monotonic() - started < 5.0  # the simulator stopped while flooding


def test_hang_up_is_a_disconnect() -> None:
    with PtyDevice(Chatterbox()) as device:
        io = LineIO(open_port(device.port))
        device.disconnect()
        with pytest.raises(DeviceDisconnected):
            io.write(b"hello\n")
            io.read_line(time.monotonic() + 1.0)
        io.close()


def test_missing_port_is_port_unavailable(tmp_path: Path) -> None:
    with pytest.raises(PortUnavailable) as caught:
        open_port(str(tmp_path / "ttyUSB9"))
    assert "no such port" in caught.value.message
    with pytest.raises(PortUnavailable):
        open_port("nosuchscheme://x")
