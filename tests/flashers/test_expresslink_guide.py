"""The ExpressLink simulator and the station's ExpressLink family against the programmer's guide (v1.2).

One test per point where the simulator used to differ from the guide (issue 11): HOTAcertificate (set, read
back as pem, cleared by a factory reset while RootCA survives), DISCONNECT → CONLOST, a CONNECT while one is in
progress → ERR25 NOT ALLOWED, `OTA?` → `OK 0 IDLE`, GET0 and messages matching no topic, characters before `AT`
ignored, an over-long Endpoint → ERR4, the KeepAlive / LWT* / DefenderPeriod / ShadowToken / EnableShadow keys,
and the connect-time model (delay and the slow_connect / connect_hint faults). Then the station side: it writes
the product's HOTA certificate and reads it back equal, waits out ERR25, drains its own CONLOST, and bounds a
long CONNECT by its `connect_timeout_s`.

The MQTT side of the module is replaced here by an in-memory echo connection (`EchoModule`): these tests are
about the AT layer. The real connection is covered against the lab in test_expresslink.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import serial

from flashers.base import DeviceCheckUnreachable
from flashers.expresslink import QUICK, ExpressLinkFlasher
from flashers.simulators.expresslink import DEFAULT_STAGING_ENDPOINT, ExpressLinkDevice, Faults
from flashers.simulators.pty import Link, PtyDevice
from station.errors import StationFault
from station.identity import new_identity


class EchoConnection:
    """Stands in for the awscrt connection: SUBACK granted, every publish comes straight back."""

    def __init__(self, model: ExpressLinkDevice) -> None:
        self.model = model

    @staticmethod
    def _done(value: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(value)
        return future

    def subscribe(self, topic: str, qos: Any, callback: Any) -> tuple[Future[Any], int]:
        return self._done({"qos": qos}), 1

    def publish(self, topic: str, payload: bytes, qos: Any) -> tuple[Future[Any], int]:
        self.model._on_message(topic, payload)
        return self._done({}), 2

    def unsubscribe(self, topic: str) -> tuple[Future[Any], int]:
        return self._done({}), 3

    def disconnect(self) -> Future[Any]:
        return self._done({})


class EchoModule(ExpressLinkDevice):
    """The simulator with its network replaced by `EchoConnection` (its delay and faults still apply)."""

    def _open(self, link: Link) -> tuple[int, str]:
        with self._lock:
            self._conn, self._connected = EchoConnection(self), True
        return 0, ""


class Raw:
    """A bare serial client, as a terminal program sees the module."""

    def __init__(self, port: str) -> None:
        self.serial = serial.serial_for_url(port, baudrate=115200, timeout=0.05)
        self.buffer = b""

    def lines(self, count: int, timeout: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\r\n") < count and time.monotonic() < deadline:
            self.buffer += self.serial.read(4096)
        parts = self.buffer.split(b"\r\n", count)
        assert len(parts) > count, f"expected {count} lines, got {self.buffer!r}"
        self.buffer = parts[count]
        return [part.decode() for part in parts[:count]]

    def ask(self, command: str | bytes, count: int = 1, timeout: float = 3.0) -> list[str]:
        self.serial.write((command.encode() if isinstance(command, str) else command) + b"\r\n")
        return self.lines(count, timeout)

    def one(self, command: str | bytes, timeout: float = 3.0) -> str:
        return self.ask(command, 1, timeout)[0]

    def event(self) -> str:
        return self.one("AT+EVENT?")

    def close(self) -> None:
        self.serial.close()


@pytest.fixture
def module(tmp_path: Path) -> Iterator[tuple[Raw, EchoModule]]:
    model = EchoModule(tmp_path, thing_name="feedc0de")
    with PtyDevice(model) as device:
        raw = Raw(device.port)
        try:
            assert raw.event() == "OK 2 0 STARTUP"
            yield raw, model
        finally:
            raw.close()
            model.close()


def _pem() -> str:
    return new_identity("hota-signer").certificate_pem


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\A").replace("\r", "\\D")


# ------------------------------------------------------------------------------------------- configuration


def test_hota_certificate_is_set_read_back_as_pem_and_cleared_by_factory_reset(
    module: tuple[Raw, EchoModule],
) -> None:
    raw, model = module
    pem = _pem()
    assert raw.one("AT+CONF? HOTAcertificate pem") == "OK"  # none yet
    assert raw.one("AT+CONF HOTAcertificate=" + _escaped(pem)) == "OK"
    lines = pem.strip().splitlines()
    assert raw.ask("AT+CONF? HOTAcertificate pem", 1 + len(lines)) == [f"OK{len(lines)} pem", *lines]
    root = _pem()
    assert raw.one("AT+CONF RootCA=" + _escaped(root)) == "OK"
    assert raw.one("AT+FACTORY_RESET") == "OK"
    assert raw.one("AT+CONF? HOTAcertificate pem") == "OK"  # cleared
    root_lines = root.strip().splitlines()
    assert raw.ask("AT+CONF? RootCA pem", 1 + len(root_lines))[1:] == root_lines  # survives
    assert model.flash.get("root_ca") == root


@pytest.mark.parametrize(
    ("key", "good", "bad", "bad_reply"),
    [
        ("KeepAlive", "120", "5", "ERR7 OUT OF RANGE"),
        ("LWTTopic", "things/feedc0de/gone", None, None),
        ("LWTMessage", "bye", None, None),
        ("LWTQoS", "1", "2", "ERR7 OUT OF RANGE"),
        ("DefenderPeriod", "300", "soon", "ERR4 PARAMETER ERROR"),
        ("ShadowToken", "line1", None, None),
        ("EnableShadow", "1", "7", "ERR7 OUT OF RANGE"),
    ],
)
def test_keys_the_guide_defines_are_accepted_and_kept(
    module: tuple[Raw, EchoModule], key: str, good: str, bad: str | None, bad_reply: str | None
) -> None:
    raw, _ = module
    assert raw.one(f"AT+CONF {key}={good}") == "OK"
    assert raw.one(f"AT+CONF? {key}") == f"OK {good}"
    if bad is not None:
        assert raw.one(f"AT+CONF {key}={bad}") == bad_reply
        assert raw.one(f"AT+CONF? {key}") == f"OK {good}"


def test_factory_defaults_of_the_new_keys(module: tuple[Raw, EchoModule]) -> None:
    raw, _ = module
    assert raw.one("AT+CONF? KeepAlive") == "OK 60"
    assert raw.one("AT+CONF? ShadowToken") == "OK ExpressLink"
    assert raw.one("AT+CONF? EnableShadow") == "OK 0"


def test_an_endpoint_longer_than_its_buffer_is_a_parameter_error(module: tuple[Raw, EchoModule]) -> None:
    raw, model = module
    assert raw.one("AT+CONF Endpoint=" + "a" * 120 + ".example.com") == "ERR4 PARAMETER ERROR"
    assert model.endpoint == DEFAULT_STAGING_ENDPOINT


def test_characters_before_at_are_ignored(module: tuple[Raw, EchoModule]) -> None:
    raw, _ = module
    assert raw.one(b"\x00\xffnoise AT+CONF? ThingName") == "OK feedc0de"
    assert raw.one(b"~~AT") == "OK"
    assert raw.one("HELLO") == "ERR2 PARSE ERROR"  # no AT at all is still not a command


def test_ota_query_without_an_update_is_idle(module: tuple[Raw, EchoModule]) -> None:
    raw, _ = module
    assert raw.one("AT+OTA?") == "OK 0 IDLE"


# ------------------------------------------------------------------------------------------ connection


def test_disconnect_raises_conlost(module: tuple[Raw, EchoModule]) -> None:
    raw, _ = module
    assert raw.one("AT+CONNECT") == "OK 1 CONNECTED"
    assert raw.one("AT+DISCONNECT") == "OK 0 DISCONNECTED"
    assert raw.event() == "OK 3 0 CONLOST"
    assert raw.one("AT+DISCONNECT") == "OK 0 DISCONNECTED"
    assert raw.event() == "OK"  # nothing was lost the second time


def test_a_connect_while_one_is_in_progress_is_not_allowed(module: tuple[Raw, EchoModule]) -> None:
    raw, model = module
    model.connect_delay_s = 0.6
    assert raw.one("AT+CONNECT!") == "OK"
    assert raw.one("AT+CONNECT") == "ERR25 NOT ALLOWED"
    assert raw.one("AT+CONNECT!") == "ERR25 NOT ALLOWED"
    deadline = time.monotonic() + 3.0
    events: list[str] = []
    while "OK 6 0 CONNECT" not in events and time.monotonic() < deadline:
        events.append(raw.event())
        time.sleep(0.05)
    assert "OK 6 0 CONNECT" in events
    assert raw.one("AT+CONNECT") == "OK 1 CONNECTED"


def test_connect_takes_the_modelled_time_and_the_slow_connect_fault_adds_to_it(
    module: tuple[Raw, EchoModule],
) -> None:
    raw, model = module
    model.connect_delay_s = 0.3
    started = time.monotonic()
    assert raw.one("AT+CONNECT", timeout=5) == "OK 1 CONNECTED"
    assert 0.3 <= time.monotonic() - started < 2.0
    assert raw.one("AT+DISCONNECT") == "OK 0 DISCONNECTED"
    model.faults = Faults(slow_connect=0.5)
    started = time.monotonic()
    assert raw.one("AT+CONNECT", timeout=5) == "OK 1 CONNECTED"
    assert 0.8 <= time.monotonic() - started < 3.0


def test_a_failed_connect_fault_answers_err14_after_the_delay(module: tuple[Raw, EchoModule]) -> None:
    raw, model = module
    model.connect_delay_s = 0.2
    model.faults = Faults(connect_hint=3)
    assert raw.one("AT+CONNECT").startswith("ERR14 3 UNABLE TO CONNECT")


def test_faults_parse_slow_connect() -> None:
    assert Faults.parse(["slow_connect=2.5"]).slow_connect == 2.5


# --------------------------------------------------------------------------------------------- messages


def test_messages_matching_no_topic_go_to_get0_with_their_topic(module: tuple[Raw, EchoModule]) -> None:
    raw, model = module
    assert raw.one("AT+CONF Topic1=things/feedc0de/in") == "OK"
    assert raw.one("AT+CONNECT") == "OK 1 CONNECTED"
    assert raw.one("AT+GET0") == "OK"  # nothing yet
    model._on_message("things/feedc0de/in", b"matched")
    model._on_message("elsewhere/news", b"line1\nline2")
    assert raw.event() == "OK 1 1 MSG"
    assert raw.event() == "OK 1 0 MSG"
    assert raw.ask("AT+GET0", 2) == ["OK1 elsewhere/news", "line1\\Aline2"]
    assert raw.one("AT+GET0") == "OK"
    assert raw.one("AT+GET1") == "OK matched"
    assert raw.one("AT+SEND0 x") == "ERR7 OUT OF RANGE"  # index 0 is receive-only


# ------------------------------------------------------------------------------------------ the station


def _flasher(port: str, **options: Any) -> ExpressLinkFlasher:
    return ExpressLinkFlasher(port, timing=QUICK, **options)


def test_station_writes_the_hota_certificate_and_it_reads_back_equal(tmp_path: Path) -> None:
    pem = _pem()
    hota_file = tmp_path / "hota.pem"
    hota_file.write_text(pem)
    model = EchoModule(tmp_path)
    with PtyDevice(model) as device, _flasher(device.port, hota_certificate=str(hota_file)) as flasher:
        thing = str(flasher.identify().device_id)
        assert flasher.hota_certificate() == ""
        flasher.device_verify("customer-ats.iot.example.com", 8883, thing, timeout_s=10)
        assert flasher.hota_certificate() == pem
        # Its own DISCONNECT left a CONLOST in the queue: the next check drains it and passes again.
        assert any(event[2] == "CONLOST" for event in model.events())
        flasher.device_verify("customer-ats.iot.example.com", 8883, thing, timeout_s=10)
    model.close()
    assert model.flash.get("hota_certificate").strip() == pem.strip()


@pytest.mark.parametrize(
    ("content", "title"),
    [(None, "HOTA certificate unreadable"), ("not a certificate\n", "HOTA certificate not usable")],
)
def test_an_unusable_hota_certificate_option_is_a_station_fault(
    tmp_path: Path, content: str | None, title: str
) -> None:
    path = tmp_path / "hota.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StationFault) as caught:
        ExpressLinkFlasher("/dev/null-not-opened", hota_certificate=str(path))
    assert caught.value.title == title
    assert "hota_certificate" in caught.value.next_action


def test_station_waits_out_err25_from_a_connect_in_progress(tmp_path: Path) -> None:
    model = EchoModule(tmp_path, connect_delay_s=0.8)
    with PtyDevice(model) as device:
        raw = Raw(device.port)
        assert raw.one("AT+CONNECT!") == "OK"
        raw.close()
        with _flasher(device.port) as flasher:
            thing = str(flasher.identify().device_id)
            flasher.device_verify("customer-ats.iot.example.com", 8883, thing, timeout_s=10)
    model.close()
    assert model.counters["connects"] >= 1


def test_a_long_connect_within_the_allowance_passes(tmp_path: Path) -> None:
    model = EchoModule(tmp_path, connect_delay_s=1.5)  # longer than QUICK's 0.3 s per ordinary command
    with PtyDevice(model) as device, _flasher(device.port, connect_timeout_s=5) as flasher:
        thing = str(flasher.identify().device_id)
        flasher.device_verify("customer-ats.iot.example.com", 8883, thing)
    model.close()


def test_a_connect_longer_than_the_allowance_is_reported_in_bounded_time(tmp_path: Path) -> None:
    model = EchoModule(tmp_path, connect_delay_s=4.0)
    with PtyDevice(model) as device, _flasher(device.port, connect_timeout_s=1) as flasher:
        thing = str(flasher.identify().device_id)
        started = time.monotonic()
        with pytest.raises(DeviceCheckUnreachable) as caught:
            flasher.device_verify("customer-ats.iot.example.com", 8883, thing)
        assert time.monotonic() - started < 3.5
        assert "did not finish connecting" in caught.value.message
    model.close()


@pytest.mark.parametrize("value", ["0", "121", "soon"])
def test_connect_timeout_option_is_held_to_the_guides_limit(value: str) -> None:
    with pytest.raises(StationFault) as caught:
        ExpressLinkFlasher("/dev/null-not-opened", connect_timeout_s=value)
    assert "120" in caught.value.message
