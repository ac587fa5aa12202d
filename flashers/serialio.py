"""Line I/O over pyserial shared by the flashers: open a port, write, read bounded lines before a deadline.

- `open_port(url, ...)` opens hardware, a pty, `socket://` or any pyserial URL handler through
  `serial.serial_for_url`, with an exclusive (advisory) lock where the port type supports one, so two slots
  cannot share a port. A missing, taken or unreadable port becomes `PortUnavailable` (a station fault).
- `LineIO.read_line(deadline)` returns one line, `None` at the deadline, or `OVERFLOW` when the device sent
  more than `max_line` bytes without a line end. Reads poll in short slices, so a device that floods the line
  or never stops talking costs at most the deadline and `max_line` bytes of memory, never a hang.
- `wire_time(n, baud)` is the time n bytes take on a UART (10 bits a byte: start, 8 data, stop); flashers
  derive their timeouts from it.
- `LineFlasher` is the one constructor path of the line-protocol flashers (PROV/1, ExpressLink, nRF91 AT):
  port, baud rate, the family's timing, the opened `LineIO`, wire counters and the per-session unit state.

A port that hangs up mid-exchange (the unit dropped off the line) becomes `DeviceDisconnected`. This module
must not know any protocol, log line contents (they may carry key material) or import boto3/awscrt.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterator
from typing import Final, Generic, Protocol, TypeVar

import serial

from flashers.base import (
    DeviceDisconnected,
    DeviceInfo,
    DeviceNotAnswering,
    Flasher,
    PortUnavailable,
    WireStats,
)
from station.i18n import _

try:
    from termios import error as _TermiosError  # tcflush/tcsetattr on a hung-up tty raise this, not OSError
except ImportError:  # pragma: no cover - not POSIX

    class _TermiosError(Exception):  # type: ignore[no-redef]
        pass


# What a port raises when the unit (or its USB adapter) has gone away.
_PORT_ERRORS = (serial.SerialException, OSError, _TermiosError)

BITS_PER_BYTE: Final = 10  # 8N1: start bit + 8 data bits + stop bit
POLL_S: Final = 0.02  # read slice: bounds how far past a deadline a read can run
DEFAULT_WRITE_TIMEOUT_S: Final = 2.0


def wire_time(nbytes: int, baudrate: int) -> float:
    """Seconds `nbytes` take on a UART at `baudrate` (8N1)."""
    return nbytes * BITS_PER_BYTE / float(baudrate)


class Port(Protocol):
    """The part of a pyserial port the flashers use (hardware, pty, socket:// and loop:// all have it)."""

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def flush(self) -> None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


def open_port(
    url: str,
    *,
    baudrate: int = 115200,
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    exclusive: bool = True,
) -> Port:
    """Open `url` (a device path or a pyserial URL) for line I/O; raise `PortUnavailable` if it cannot be had."""
    port: Port
    try:
        try:
            port = serial.serial_for_url(
                url, baudrate=baudrate, timeout=POLL_S, write_timeout=write_timeout_s, exclusive=exclusive
            )
        except (TypeError, ValueError) as exc:
            # Some URL handlers do not take `exclusive`; an advisory lock is then not available anyway.
            if "exclusive" not in str(exc):
                raise
            port = serial.serial_for_url(
                url, baudrate=baudrate, timeout=POLL_S, write_timeout=write_timeout_s
            )
        return port
    except serial.SerialException as exc:
        raise PortUnavailable(url, _open_reason(exc)) from None
    except (OSError, ValueError, _TermiosError) as exc:
        raise PortUnavailable(url, _open_reason(exc)) from None


def _open_reason(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if "exclusively lock" in text or code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return "it is in use by another program or slot"
    if code == errno.ENOENT or "No such file" in text:
        return "no such port (is the jig's cable plugged in?)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (the station's user needs access to serial ports)"
    if isinstance(exc, ValueError):
        return "the port name is not valid"
    return "the operating system refused to open it"


class Overflow:
    """Marker returned by `LineIO.read_line` for a line longer than the limit (its bytes are dropped)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERFLOW"


OVERFLOW: Final = Overflow()


class LineIO:
    """Bounded, deadline-driven line reading and writing over an open pyserial port.

    Lines end in LF; a CR before it is dropped. Counters `bytes_in` / `bytes_out` count what crossed the line.
    """

    def __init__(self, port: Port, *, max_line: int = 256, name: str = "") -> None:
        self._port = port
        self.max_line = max_line
        self.name = name or str(getattr(port, "port", "") or "")
        self._buffer = bytearray()
        self._discarding = False  # inside an overlong line: drop bytes up to the next LF
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False

    # ----------------------------------------------------------------------------------------------- write
    def write(self, data: bytes) -> None:
        if self.closed:
            raise DeviceDisconnected(_("The port was already closed."))
        try:
            written = self._port.write(data)
            self._port.flush()
        except serial.SerialTimeoutException:
            # The device stopped reading (its input is full): it is as good as silent.
            raise DeviceNotAnswering(_("It stopped accepting data.")) from None
        except _PORT_ERRORS:
            raise DeviceDisconnected() from None
        self.bytes_out += written if isinstance(written, int) else len(data)

    # ------------------------------------------------------------------------------------------------ read
    def read_line(self, deadline: float) -> bytes | Overflow | None:
        """The next line (without its line end), `OVERFLOW`, or `None` when `deadline` (monotonic) passes."""
        while True:
            line = self._take_line()
            if line is not None:
                return line
            if len(self._buffer) > self.max_line:
                # Report the flood once per `max_line` bytes and keep memory bounded.
                self._buffer.clear()
                self._discarding = True
                return OVERFLOW
            if time.monotonic() >= deadline:
                return None
            chunk = self._read_some()
            if chunk:
                self.bytes_in += len(chunk)
                self._buffer += chunk

    def _take_line(self) -> bytes | Overflow | None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                # The tail of an overlong line: already reported, not a line of its own.
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                return OVERFLOW
            return line

    def _read_some(self) -> bytes:
        if self.closed:
            raise DeviceDisconnected(_("The port was already closed."))
        try:
            waiting = self._port.in_waiting
            # Never more than a line's worth at once: a flood is cut into bounded pieces.
            size = min(max(1, waiting), self.max_line + 1)
            return bytes(self._port.read(size))  # returns early with what arrived, or b"" after POLL_S
        except _PORT_ERRORS:
            raise DeviceDisconnected() from None

    def discard_input(self) -> None:
        """Drop whatever was received and not read yet (stale replies, noise) before a retransmission."""
        self._buffer.clear()
        self._discarding = False
        if self.closed:
            return
        try:
            self._port.reset_input_buffer()
        except _PORT_ERRORS:
            raise DeviceDisconnected() from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(*_PORT_ERRORS):  # the unit already hung up: nothing left to release
            self._port.close()


class _Timing(Protocol):
    """What `LineFlasher` reads of a family's timing (each family has its own `Timing` dataclass)."""

    @property
    def write_timeout_s(self) -> float: ...


T = TypeVar("T", bound=_Timing)


class LineFlasher(Flasher, Generic[T]):
    """A flasher that talks lines over one serial port. Its constructor opens the port (a `PortUnavailable`
    when it cannot be had) and sets what every line flasher keeps: `port`, `baudrate`, `timing`, `stats`, the
    `LineIO`, the unit's `DeviceInfo` once identified and whether the unit has answered in this session.

    A family checks its own options before calling it, so a bad option never leaves a port open.
    """

    def __init__(self, port: str, *, baudrate: int, timing: T, exclusive: bool, max_line: int) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timing = timing
        self._io = LineIO(
            open_port(port, baudrate=baudrate, write_timeout_s=timing.write_timeout_s, exclusive=exclusive),
            max_line=max_line,
            name=port,
        )
        self.stats = WireStats()
        self._info: DeviceInfo | None = None
        self._contact = False  # the unit has answered at least once in this session

    @contextlib.contextmanager
    def _sent(self, frame: bytes, *, retry: bool) -> Iterator[None]:
        """Send one frame (after dropping what the port held), counted in `stats` (a retry when `retry`);
        the bytes read until the block ends count as its reply's."""
        if retry:
            self.stats.retries += 1
        self._io.discard_input()
        before_in = self._io.bytes_in
        self._io.write(frame)
        self.stats.frames += 1
        self.stats.bytes_out += len(frame)
        try:
            yield
        finally:
            self.stats.bytes_in += self._io.bytes_in - before_in
