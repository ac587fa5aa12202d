"""A simulated device on a real pseudo-terminal: the host opens `PtyDevice.port` with pyserial like hardware.

`PtyDevice` owns one pty pair and a thread that serves the master side: bytes the host writes are handed to a
device model (`DeviceModel.on_receive(data, link)`), and the model answers through the link (`link.send`).
Facts this relies on (pyserial 3.5 on Linux):

- the slave is put in raw mode at once (a fresh pty echoes and maps CR/LF), and the simulator keeps its own slave
  fd open for its whole life: reading the master fails with EIO while nobody holds the slave;
- a pty ignores baud rates, so optional pacing (`pace=True`) holds each answer until the request would have fully
  arrived and the answer fully left at 10 bits a byte at `baudrate` — real wire time for benchmarks and timeout
  tests (the model reads a request as soon as it is there; only what it sends is held back);
- `disconnect()` closes both sides, so the host's next read or write fails as if the unit were unplugged;
- `stop()` ends the thread within a bounded time even while the model floods the line or waits: the master is
  non-blocking, writes wait for room in short slices, and `link.sleep` wakes on stop.

`LineModel` is a base for line-oriented device models (bounded line buffer). This module knows no protocol and
must not be imported by the station's core (simulators are for tests, the demo and training).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
import tty
from types import TracebackType
from typing import Protocol

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10
_READ_SIZE = 4096
_SLICE_S = 0.05  # how often a blocked write or an idle loop looks at the stop flag


class Link(Protocol):
    """What a device model sees of its line."""

    @property
    def baudrate(self) -> int: ...
    @property
    def stopping(self) -> bool: ...
    def send(self, data: bytes) -> bool: ...
    def sleep(self, seconds: float) -> bool: ...
    def disconnect(self) -> None: ...


class DeviceModel(Protocol):
    """A device's behaviour: called on the serving thread with each batch of bytes the host sent."""

    def on_receive(self, data: bytes, link: Link) -> None: ...


class LineModel:
    """Base for line-oriented models: collects LF-terminated lines up to `max_line` bytes.

    Subclasses implement `handle_line(line, link)` (the line without LF or a trailing CR) and may override
    `handle_overlong(link)`, called once for a line that grew past `max_line` (its bytes are dropped).
    """

    max_line = 512

    def __init__(self) -> None:
        self._rx = bytearray()
        self._overlong = False

    def on_receive(self, data: bytes, link: Link) -> None:
        self._rx += data
        while not link.stopping:
            end = self._rx.find(b"\n")
            if end < 0:
                if len(self._rx) > self.max_line:
                    self._rx.clear()
                    if not self._overlong:
                        self._overlong = True
                        self.handle_overlong(link)
                return
            line = bytes(self._rx[:end])
            del self._rx[: end + 1]
            if self._overlong or len(line) > self.max_line:
                self._overlong = False
                if len(line) > self.max_line:
                    self.handle_overlong(link)
                continue
            self.handle_line(line[:-1] if line.endswith(b"\r") else line, link)

    def handle_line(self, line: bytes, link: Link) -> None:
        raise NotImplementedError

    def handle_overlong(self, link: Link) -> None:
        """A line longer than the device accepts arrived (noise, or a host that ignores the limit)."""


class PtyDevice:
    """Serves one device model on a new pty. Use as a context manager, or `start()` / `stop()`."""

    def __init__(
        self, model: DeviceModel, *, baudrate: int = 115200, pace: bool = False, name: str = ""
    ) -> None:
        self.model = model
        self._baudrate = baudrate
        self.pace = pace
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # at once: until then the pty echoes and translates line ends
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.name = name or self.port
        self._stop = threading.Event()
        self._disconnect_requested = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._fd_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._rx_clock = 0.0
        self._tx_clock = 0.0
        self.connected = True
        self.error: BaseException | None = None  # an exception the model raised (the device keeps serving)
        self.bytes_in = 0
        self.bytes_out = 0

    # ---------------------------------------------------------------------------------------- lifecycle
    def start(self) -> PtyDevice:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"pty-device {self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the pty (the port disappears). Safe to call twice."""
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("simulated device on %s did not stop within %.1f s", self.port, timeout)
        self._close_fds()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> PtyDevice:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --------------------------------------------------------------------------------------------- link
    @property
    def baudrate(self) -> int:
        return self._baudrate

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or not self.connected

    def wire_time(self, nbytes: int) -> float:
        return nbytes * BITS_PER_BYTE / float(self._baudrate)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped first; False when the device is stopping."""
        if seconds > 0:
            self._stop.wait(seconds)
        return not self.stopping

    def send(self, data: bytes) -> bool:
        """Put `data` on the line (paced if asked); False when the device stopped or was disconnected."""
        if self.stopping:
            return False
        if self.pace:
            # An answer cannot start before the request has fully arrived (rx clock) nor before the previous
            # transmission ended (tx clock); its last byte leaves its wire time later. One sleep per answer,
            # not one per direction: each wake-up on a busy machine overshoots by up to a few milliseconds.
            start = max(self._tx_clock, self._rx_clock, time.monotonic())
            self._tx_clock = start + self.wire_time(len(data))
            if not self.sleep(self._tx_clock - time.monotonic()):
                return False
        view = memoryview(data)
        while view:
            if self.stopping:
                return False
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                # The host is not reading and the pty buffer is full: wait for room, a slice at a time.
                try:
                    select.select([], [self._master], [], _SLICE_S)
                except (OSError, ValueError):
                    return False
                continue
            except OSError:
                return False
            self.bytes_out += written
            view = view[written:]
        return True

    def disconnect(self) -> None:
        """Drop off the line like an unplugged unit: both pty ends close and the host's I/O fails."""
        if threading.current_thread() is self._thread or self._thread is None:
            self._close_fds()
            return
        self._disconnect_requested.set()
        self._wake()
        self._thread.join(5.0)

    # -------------------------------------------------------------------------------------------- serve
    def _serve(self) -> None:
        try:
            while not self._stop.is_set() and self.connected:
                if self._disconnect_requested.is_set():
                    self._close_fds()
                    break
                try:
                    ready, _, _ = select.select([self._master, self._wake_r], [], [], 0.5)
                except (OSError, ValueError):
                    break
                if self._wake_r in ready:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                    continue
                if self._master not in ready:
                    continue
                try:
                    data = os.read(self._master, _READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        # Nobody holds the slave (cannot happen while we keep ours): treat as unplugged.
                        break
                    raise
                if not data:
                    break
                self.bytes_in += len(data)
                if self.pace:
                    # When the last of these bytes would have arrived on a real wire; `send` waits for it.
                    self._rx_clock = max(self._rx_clock, time.monotonic()) + self.wire_time(len(data))
                try:
                    self.model.on_receive(data, self)
                except Exception as exc:  # a model bug must not take the line down silently
                    self.error = exc
                    log.exception("simulated device on %s failed handling input", self.port)
        finally:
            if self._disconnect_requested.is_set():
                self._close_fds()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _close_fds(self) -> None:
        with self._fd_lock:
            if not self.connected:
                return
            self.connected = False
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
