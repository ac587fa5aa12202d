"""The lab's MQTT broker: amqtt 0.12 (MQTT 3.1.1) on plain TCP 127.0.0.1, in its own thread and event loop.

Only the data plane's TLS fronts talk to it: they terminate TLS, authorize with AWS IoT policies and pipe the
bytes here. The broker itself therefore allows anonymous clients and checks nothing; it must never listen on
anything but loopback. `start()` returns once a real MQTT CONNECT → CONNACK round trip succeeds (the ready
check), `stop()` shuts the broker down and joins its thread within a bounded time.

amqtt is MQTT 3.1.1 only: an MQTT 5 client (awscrt's Mqtt5Client) gets no CONNACK from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from station.errors import InputError, StationFault

log = logging.getLogger(__name__)

_READY_CLIENT_PREFIX = "lab-ready-check-"


class LabBroker:
    """amqtt broker on `host:port` (port 0 = pick a free one), usable as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 10.0) -> None:
        self.host = host
        self._requested_port = port
        self._start_timeout = start_timeout
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the lab broker is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def __enter__(self) -> LabBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the lab broker is already started")
        self._started.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name="lab-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(self._start_timeout):
            self.stop()
            raise StationFault(
                "Lab broker did not start",
                f"The lab's MQTT broker did not start within {self._start_timeout:.0f} s.",
                "Retry; if it persists, run the lab with debug logging and report the log.",
            )
        if self._startup_error is not None:
            error = self._startup_error
            self._thread.join(self._start_timeout)
            self._thread = None
            if _is_address_in_use(error):
                raise InputError(
                    "Lab broker port in use",
                    f"The lab's MQTT broker cannot listen on {self.host}:{self._requested_port}: "
                    "the port is already in use.",
                    "Choose another broker port (0 picks a free one) or stop the program using it.",
                ) from error
            raise StationFault(
                "Lab broker did not start",
                f"The lab's MQTT broker failed to start: {error}",
                "Retry; if it persists, run the lab with debug logging and report the log.",
            ) from error
        try:
            self._ready_check(deadline=time.monotonic() + self._start_timeout)
        except OSError as exc:
            self.stop()
            raise StationFault(
                "Lab broker not answering",
                f"The lab's MQTT broker started but did not answer an MQTT CONNECT ({exc}).",
                "Retry; if it persists, run the lab with debug logging and report the log.",
            ) from exc

    def stop(self, timeout: float = 5.0) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just closed by itself
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "the lab broker did not stop within %.1f s; leaving its daemon thread behind", timeout
            )
        self._thread = None
        self._port = None

    # --- broker thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread must end cleanly
            if not self._started.is_set():
                self._startup_error = exc
                self._started.set()
            else:
                log.exception("the lab broker stopped with an error")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        self._stop_event = asyncio.Event()
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self._requested_port}"}},
            # No $SYS publisher, no packet logger: the fronts are the only clients and they authorize.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config, loop=asyncio.get_running_loop())
        await broker.start()
        try:
            self._port = _bound_port(broker)
            self._started.set()
            await self._stop_event.wait()
        finally:
            await asyncio.wait_for(broker.shutdown(), timeout=5.0)

    # --- ready check --------------------------------------------------------------------------------------

    def _ready_check(self, deadline: float) -> None:
        client_id = f"{_READY_CLIENT_PREFIX}{os.getpid()}-{threading.get_ident()}"
        remaining = max(0.1, deadline - time.monotonic())
        with socket.create_connection(self.address, timeout=remaining) as sock:
            sock.sendall(_connect_packet(client_id))
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    raise ConnectionError("the broker closed the connection before CONNACK")
                reply += chunk
            if reply != b"\x20\x02\x00\x00":
                raise ConnectionError(f"unexpected CONNACK {reply.hex()}")
            sock.sendall(b"\xe0\x00")  # DISCONNECT


def _bound_port(broker: Any) -> int:
    # amqtt 0.12 exposes no public accessor for the bound port of a listener started on port 0.
    server = broker._servers["default"].instance
    return int(server.sockets[0].getsockname()[1])


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # level 4, clean session, keep-alive 60 s
    payload = len(cid).to_bytes(2, "big") + cid
    body = variable + payload
    return bytes([0x10, len(body)]) + body  # body is < 128 bytes, so a one-byte remaining length


def _is_address_in_use(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (98, 48, 10048):  # EADDRINUSE on Linux/macOS/Windows
            return True
        seen = seen.__cause__ or seen.__context__
    return False
