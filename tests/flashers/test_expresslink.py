"""AWS IoT ExpressLink: the shared flasher contract (fixtures only) plus the family's own protocol tests.

Everything runs over real ptys with the simulator (pyserial opens them like hardware). Covered: escaping round
trips, reply/event/state parsing, the three certificate reply formats (`OK<n> pem`, the older bare `OK pem`,
one escaped line), the birth identity (ThingName ↔ CN and serial, AWS acceptance, persisted flash), the
simulator's command rules as a raw serial client sees them (no echo, CR or LF, ERR codes), every ERR code and
ERR14 hint → operator error class, the module's back-off against a real refused connection, resync after a late
reply, timeouts, wipe semantics, `station sim expresslink` as a process, and — against the lab (control plane
+ data plane) — a full device-side verify that ends CUSTOMER, an unregistered certificate (ERR14 5), and
policies that refuse the subscription or the publish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from flasher_contract import FlasherContract
from hypothesis import given
from hypothesis import strategies as st

import flashers
from flashers.base import (
    DeviceCheckUnreachable,
    DeviceDisconnected,
    DeviceGarbage,
    DeviceNotAnswering,
    DeviceRejected,
    Flasher,
    NotSupported,
)
from flashers.expresslink import (
    ERROR_NAMES,
    QUICK,
    ConnectState,
    DeviceCheckDenied,
    DeviceConnectThrottled,
    DeviceLoginRefused,
    EscapeError,
    Event,
    ExpressLinkFlasher,
    Reply,
    Timing,
    command_error,
    connect_error,
    escape,
    format_reply,
    parse_connect_state,
    parse_event,
    parse_reply,
    unescape,
)
from flashers.serialio import wire_time
from flashers.simulators.expresslink import (
    DEFAULT_STAGING_ENDPOINT,
    ExpressLinkDevice,
    Faults,
    flash_path,
    serial_for,
    topic_matches,
)
from flashers.simulators.pty import Link, PtyDevice
from station.errors import StationFault, UnitFault
from station.identity import check_aws_acceptance
from station.model import Identity

# ------------------------------------------------------------------------------------------------ harness


def _faults(spec: dict[str, Any] | None) -> Faults:
    """The contract's shared fault vocabulary on this simulator."""
    spec = dict(spec or {})
    faults = Faults(seed=spec.pop("seed", None))
    if spec.pop("disconnect_mid_write", False):
        faults.disconnect_on = "CONF?"  # ExpressLink writes nothing: drop off the line mid-conversation
    for name, value in spec.items():
        if not hasattr(faults, name):
            raise AssertionError(f"the ExpressLink simulator has no fault {name!r}")
        setattr(faults, name, value)
    return faults


class ExpressLinkHandle:
    """One simulated module on a pty, as the contract sees it."""

    def __init__(
        self,
        state_dir: Path,
        faults: Faults,
        *,
        thing_name: str | None = None,
        pace: bool = False,
        registry: list[ExpressLinkHandle] | None = None,
        **options: Any,
    ) -> None:
        self.state_dir = state_dir
        self.options = options
        self.registry = registry if registry is not None else []
        self.model = ExpressLinkDevice(state_dir, thing_name=thing_name, faults=faults, **options)
        self.device_id: str | None = self.model.thing_name
        self.device = PtyDevice(self.model, pace=pace).start()
        self.port = self.device.port
        self.registry.append(self)

    def live(self) -> dict[str, str | None]:
        # Read the flash file as a test acting as the module would, not the model's memory.
        data = json.loads(self.model.flash_path.read_text(encoding="utf-8"))
        return {"cert": data["certificate"], "key": data["key"], "endpoint": data["endpoint"]}

    def staged(self) -> tuple[str, ...]:
        return ()  # nothing is ever staged on an ExpressLink module

    def set_faults(self, **faults: Any) -> None:
        self.model.faults = _faults(faults)

    def restart(self) -> ExpressLinkHandle:
        self.stop()
        return ExpressLinkHandle(
            self.state_dir, Faults(), thing_name=self.model.thing_name, registry=self.registry, **self.options
        )

    def stop(self) -> None:
        self.device.stop()
        self.model.close()


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[Callable[..., ExpressLinkHandle]]:
    handles: list[ExpressLinkHandle] = []

    def make(faults: dict[str, Any] | None = None, pace: bool = False, **options: Any) -> ExpressLinkHandle:
        return ExpressLinkHandle(tmp_path, _faults(faults), pace=pace, registry=handles, **options)

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def open_flasher() -> Iterator[Callable[..., ExpressLinkFlasher]]:
    opened: list[ExpressLinkFlasher] = []

    def open_(port: str, quick: bool = True, **kwargs: Any) -> ExpressLinkFlasher:
        flasher = ExpressLinkFlasher(port, timing=QUICK if quick else None, **kwargs)
        opened.append(flasher)
        return flasher

    yield open_
    for flasher in opened:
        flasher.close()


@pytest.fixture
def flasher_class() -> type[Flasher]:
    return ExpressLinkFlasher


@pytest.fixture(name="sign_csr")
def _sign_csr() -> Callable[[str], str]:
    def sign(csr: str) -> str:
        raise AssertionError("an ExpressLink module makes no certificate requests")

    return sign


class TestExpressLinkContract(FlasherContract):
    """ExpressLink passes the shared contract (the read-certificate flavour)."""


# ------------------------------------------------------------------------------------------------ codec


@given(st.text())
def test_escape_round_trips_any_text(text: str) -> None:
    escaped = escape(text)
    assert "\r" not in escaped and "\n" not in escaped
    assert unescape(escaped) == text


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        ("a\nb", "a\\Ab"),
        ("a\r\nb", "a\\D\\Ab"),
        ("back\\slash", "back\\\\slash"),
        ("\\A is not a newline", "\\\\A is not a newline"),
        ("plain", "plain"),
    ],
)
def test_escape_known_vectors(raw: str, wire: str) -> None:
    assert escape(raw) == wire
    assert unescape(wire) == raw


@pytest.mark.parametrize("bad", ["\\", "end\\", "\\x", "\\a", "ok\\Q"])
def test_unescape_rejects_invalid_escapes(bad: str) -> None:
    with pytest.raises(EscapeError):
        unescape(bad)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("OK", Reply(True)),
        ("OK 1 CONNECTED", Reply(True, "1 CONNECTED")),
        ("OK21 pem", Reply(True, "pem", count=21)),
        ("ERR3 COMMAND NOT FOUND", Reply(False, "COMMAND NOT FOUND", code=3)),
        (
            "ERR14 5 UNABLE TO CONNECT Failed to login AWS (MQTT) broker",
            Reply(False, "5 UNABLE TO CONNECT Failed to login AWS (MQTT) broker", code=14),
        ),
        ("OKAY", None),
        ("ERR", None),
        ("[boot] hello", None),
        ("", None),
    ],
)
def test_parse_reply(line: str, expected: Reply | None) -> None:
    assert parse_reply(line) == expected
    if expected is not None:
        assert format_reply(expected) == line


def test_parse_event_and_connect_state() -> None:
    assert parse_event("8 1 SUBACK") == Event(8, 1, "SUBACK")
    assert parse_event("1 2 MSG extra words") == Event(1, 2, "MSG", "extra words")
    assert parse_event("SUBACK") is None
    assert parse_connect_state("1 1 CONNECTED CUSTOMER") == ConnectState(True, True)
    assert parse_connect_state("0 0 DISCONNECTED STAGING") == ConnectState(False, False)
    # The words must agree with the flags: a contradiction is garbage, not a state.
    assert parse_connect_state("1 0 DISCONNECTED STAGING") is None
    assert parse_connect_state("0 1 DISCONNECTED STAGING") is None
    assert parse_connect_state("1 1") is None


def test_topic_filter_matching() -> None:
    assert topic_matches("things/a/verify", "things/a/verify")
    assert topic_matches("things/+/verify", "things/a/verify")
    assert topic_matches("things/#", "things/a/verify")
    assert not topic_matches("things/+", "things/a/verify")
    assert not topic_matches("things/a/verify", "things/b/verify")


# ------------------------------------------------------------------------------------ operator messages

_HINT_ERRORS: list[tuple[int | None, type[Exception]]] = [
    (1, DeviceConnectThrottled),
    (2, DeviceCheckUnreachable),
    (3, DeviceCheckUnreachable),
    (4, DeviceCheckUnreachable),
    (5, DeviceLoginRefused),
    (6, DeviceCheckDenied),
    (9, DeviceCheckUnreachable),
    (None, DeviceCheckUnreachable),
]


@pytest.mark.parametrize(("hint", "kind"), _HINT_ERRORS)
def test_every_connect_hint_becomes_a_station_fault_naming_the_endpoint(
    hint: int | None, kind: type[Exception]
) -> None:
    error = connect_error(hint, "abc-ats.iot.example.com", "thing-1")
    assert type(error) is kind
    # Every hint is about the target, the network or the module's pacing: the unit is not condemned for it.
    assert isinstance(error, StationFault)
    assert "abc-ats.iot.example.com" in error.message or hint == 2
    if hint is not None and hint != 1:
        assert f"ERR14 {hint}" in error.message
    assert error.next_action


_UNIT_CODES = {1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 18, 22, 25, 26}
_STATION_CODES = {6, 28}


@pytest.mark.parametrize("code", sorted(set(ERROR_NAMES) - {14}))
def test_every_error_code_becomes_an_operator_message(code: int) -> None:
    error = command_error("AT+CONF? ThingName", code)
    assert f"ERR{code} {ERROR_NAMES[code]}" in error.message
    assert "AT+CONF? ThingName" in error.message
    if code in _UNIT_CODES:
        assert isinstance(error, UnitFault), code
    else:
        assert code in _STATION_CODES
        assert isinstance(error, StationFault), code
    assert error.title and error.next_action


def test_unknown_error_code_is_shown_by_number() -> None:
    error = command_error("AT+SEND1", 99)
    assert isinstance(error, DeviceRejected)
    assert "ERR99" in error.message


# ------------------------------------------------------------------------------------ birth identity


def test_birth_certificate_is_consistent_with_the_thing_name(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    model = ExpressLinkDevice(tmp_path)
    thing = model.thing_name
    cert = x509.load_pem_x509_certificate(str(model.live()["cert"]).encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == thing
    assert cert.serial_number == int(thing, 16) == serial_for(thing)
    assert cert.issuer == cert.subject  # self-signed birth certificate
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    check_aws_acceptance(str(model.live()["cert"]))  # AWS would register it without CA


def test_flash_persists_identity_and_endpoint_across_power_cycles(tmp_path: Path) -> None:
    first = ExpressLinkDevice(tmp_path, thing_name="0a1b2c3d4e5f")
    assert first.endpoint == DEFAULT_STAGING_ENDPOINT
    with PtyDevice(first) as device, ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        flasher.set_endpoint("customer-ats.iot.example.com")
    again = ExpressLinkDevice(tmp_path, thing_name="0a1b2c3d4e5f")
    assert again.live() == first.live()
    assert again.endpoint == "customer-ats.iot.example.com"
    assert flash_path(tmp_path, "0a1b2c3d4e5f") == again.flash_path
    assert oct(again.flash_path.stat().st_mode & 0o777) == "0o600"  # the simulated secure element


def test_non_hex_thing_names_still_get_a_stable_serial() -> None:
    assert serial_for("unit-7") == serial_for("unit-7") > 0
    assert serial_for("ABCDEF") == 0xABCDEF


# ---------------------------------------------------------------------------------- raw serial client


class RawClient:
    """A bare pyserial client: what any terminal program or vendor tool would see."""

    def __init__(self, port: str) -> None:
        self.serial = serial.serial_for_url(port, baudrate=115200, timeout=0.05)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.serial.write(data)
        self.serial.flush()

    def lines(self, count: int, timeout: float = 2.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\r\n") < count and time.monotonic() < deadline:
            self.buffer += self.serial.read(4096)
        parts = self.buffer.split(b"\r\n", count)
        assert len(parts) > count, f"expected {count} CRLF lines, got {self.buffer!r}"
        self.buffer = parts[count]
        return [p.decode() for p in parts[:count]]

    def ask(self, command: str, eol: bytes = b"\r\n") -> str:
        self.send(command.encode() + eol)
        return self.lines(1)[0]

    def quiet(self, seconds: float = 0.15) -> bytes:
        """Whatever else arrives within `seconds` (b"" for a module that said exactly what was asked)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.buffer += self.serial.read(4096)
        extra, self.buffer = self.buffer, b""
        return extra

    def close(self) -> None:
        self.serial.close()


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[tuple[RawClient, ExpressLinkDevice]]:
    model = ExpressLinkDevice(tmp_path, thing_name="feedc0de")
    with PtyDevice(model) as device:
        client = RawClient(device.port)
        try:
            yield client, model
        finally:
            client.close()
            model.close()


def test_line_rules_no_echo_cr_or_lf_and_crlf_replies(raw: tuple[RawClient, ExpressLinkDevice]) -> None:
    client, _ = raw
    for eol in (b"\r\n", b"\r", b"\n"):
        assert client.ask("AT", eol) == "OK"
        assert client.quiet() == b""  # one reply per command, no echo, CR LF counted once
    assert client.ask("at+conf? ThingName") == "OK feedc0de"  # commands are not case sensitive


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("AT+BOGUS", "ERR3 COMMAND NOT FOUND"),
        ("HELLO", "ERR2 PARSE ERROR"),
        ("AT+CONF CustomName=bad\\qescape", "ERR5 INVALID ESCAPE"),
        ("AT+CONF ThingName=x", "ERR12 KEY READONLY"),
        ("AT+CONF? Passphrase", "ERR13 KEY WRITEONLY"),
        ("AT+CONF? NoSuchKey", "ERR11 UNKNOWN KEY"),
        ("AT+CONF? AVeryLongKeyNameIndeed", "ERR9 INVALID KEY LENGTH"),
        ("AT+CONF? Topic-1", "ERR10 INVALID KEY NAME"),
        ("AT+SEND hello", "ERR4 PARAMETER ERROR"),
        ("AT+SEND99 hello", "ERR7 OUT OF RANGE"),
        ("AT+SUBSCRIBE2", "ERR8 PARAMETER UNDEFINED"),
        ("AT+CONNECT5", "ERR4 PARAMETER ERROR"),
        ("AT+CONF QoS=7", "ERR7 OUT OF RANGE"),
    ],
)
def test_error_replies(raw: tuple[RawClient, ExpressLinkDevice], command: str, reply: str) -> None:
    client, _ = raw
    assert client.ask(command) == reply


def test_send_without_connection_and_overflow(raw: tuple[RawClient, ExpressLinkDevice]) -> None:
    client, _ = raw
    assert client.ask("AT+CONF Topic1=things/x/verify") == "OK"
    assert client.ask("AT+SEND1 hello") == "ERR6 NO CONNECTION"
    client.send(b"AT+SEND1 " + b"x" * (10 * 1024) + b"\r\n")
    assert client.lines(1) == ["ERR1 OVERFLOW"]
    assert client.quiet() == b""  # the overlong command's tail is not a second command
    assert client.ask("AT") == "OK"


def test_configuration_values_are_escaped_both_ways(raw: tuple[RawClient, ExpressLinkDevice]) -> None:
    client, model = raw
    assert client.ask("AT+CONF CustomName=line1\\Aline2 \\\\ end") == "OK"
    assert model.flash.get("custom_name") == "line1\nline2 \\ end"
    assert client.ask("AT+CONF? CustomName") == "OK line1\\Aline2 \\\\ end"


def test_events_and_state_after_power_up(raw: tuple[RawClient, ExpressLinkDevice]) -> None:
    client, _ = raw
    assert client.ask("AT+EVENT?") == "OK 2 0 STARTUP"
    assert client.ask("AT+EVENT?") == "OK"
    assert client.ask("AT+CONNECT?") == "OK 0 0 DISCONNECTED STAGING"
    assert client.ask("AT+CONF Endpoint=customer-ats.iot.example.com") == "OK"
    assert client.ask("AT+CONNECT?") == "OK 0 1 DISCONNECTED CUSTOMER"
    assert client.ask("AT+FACTORY_RESET") == "OK"
    assert client.ask("AT+CONNECT?") == "OK 0 0 DISCONNECTED STAGING"
    assert client.ask("AT+EVENT?") == "OK 2 0 STARTUP"


def test_certificate_reply_formats_on_the_wire(tmp_path: Path) -> None:
    for cert_format in ("counted", "bare", "escaped"):
        model = ExpressLinkDevice(tmp_path / cert_format, cert_format=cert_format)
        pem = str(model.live()["cert"])
        lines = pem.strip().splitlines()
        with PtyDevice(model) as device:
            client = RawClient(device.port)
            try:
                first = client.ask("AT+CONF? Certificate pem")
                if cert_format == "counted":
                    assert first == f"OK{len(lines)} pem"
                    assert client.lines(len(lines)) == lines
                elif cert_format == "bare":
                    assert first == "OK pem"
                    assert client.lines(len(lines)) == lines
                else:
                    assert first == "OK " + escape(pem)
                assert client.quiet() == b""
            finally:
                client.close()


# ----------------------------------------------------------------------------------------- host side


@pytest.mark.parametrize("cert_format", ["counted", "bare", "escaped"])
def test_read_certificate_in_every_reply_format(
    cert_format: str, make_device: Callable[..., ExpressLinkHandle], open_flasher: Callable[..., Any]
) -> None:
    device = make_device(cert_format=cert_format)
    with open_flasher(device.port) as flasher:
        info = flasher.identify()
        pem = flasher.read_certificate()
    assert pem == device.live()["cert"]
    assert info.device_id == device.device_id
    assert info.firmware and "1.2.0" in info.firmware


class Scripted:
    """A module that answers listed commands with fixed lines (anything else: the real simulator)."""

    def __init__(self, model: ExpressLinkDevice, answers: dict[str, list[str]]) -> None:
        self.model = model
        self.answers = answers
        self._rx = bytearray()

    def on_receive(self, data: bytes, link: Link) -> None:
        self._rx += data
        while b"\n" in self._rx:
            end = self._rx.index(b"\n")
            line = bytes(self._rx[:end]).rstrip(b"\r").decode()
            del self._rx[: end + 1]
            if line in self.answers:
                link.send("".join(f"{text}\r\n" for text in self.answers[line]).encode())
            else:
                self.model.on_receive(line.encode() + b"\r\n", link)


@pytest.mark.parametrize(
    "answers",
    [
        {"AT+CONF? Certificate pem": ["OK3 pem", "-----BEGIN CERTIFICATE-----", "bm90IGEgY2VydA=="]},
        {"AT+CONF? Certificate pem": ["OK3 pem", "-----BEGIN CERTIFICATE-----", "bm90IGEgY2VydA==", "x"]},
        {"AT+CONF? Certificate pem": ["OK pem", "-----BEGIN CERTIFICATE-----", "bm90IGEgY2VydA=="]},
        {"AT+CONF? Certificate pem": ["OK hello"]},
        {"AT+CONF? Certificate pem": ["OK999 pem"]},
    ],
)
def test_broken_certificate_replies_are_garbage_in_bounded_time(
    tmp_path: Path, answers: dict[str, list[str]]
) -> None:
    model = ExpressLinkDevice(tmp_path)
    with (
        PtyDevice(Scripted(model, answers)) as device,
        ExpressLinkFlasher(device.port, timing=QUICK) as flasher,
    ):
        started = time.monotonic()
        with pytest.raises(DeviceGarbage):
            flasher.read_certificate()
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        ({"AT+CONF? ThingName": ["OK"]}, UnitFault),  # empty ThingName
        ({"AT+CONF? ThingName": ["OK not a thing name"]}, UnitFault),
        ({"AT+CONF? ThingName": ["ERR11 UNKNOWN KEY"]}, DeviceRejected),
        ({"AT+CONF? Version": ["OK broken\\qescape"]}, DeviceGarbage),
    ],
)
def test_identify_rejects_unusable_answers(
    tmp_path: Path, answers: dict[str, list[str]], error: type[Exception]
) -> None:
    model = ExpressLinkDevice(tmp_path)
    with (
        PtyDevice(Scripted(model, answers)) as device,
        ExpressLinkFlasher(device.port, timing=QUICK) as flasher,
        pytest.raises(error) as caught,
    ):
        flasher.identify()
    assert isinstance(caught.value, UnitFault)


def test_garbled_state_reply_is_garbage(tmp_path: Path) -> None:
    model = ExpressLinkDevice(tmp_path)
    answers = {"AT+CONNECT?": ["OK 1 0 DISCONNECTED CUSTOMER"]}
    with (
        PtyDevice(Scripted(model, answers)) as device,
        ExpressLinkFlasher(device.port, timing=QUICK) as flasher,
        pytest.raises(DeviceGarbage),
    ):
        flasher.connect_state()


def test_family_flows_it_does_not_have(
    make_device: Callable[..., ExpressLinkHandle], identity: Identity
) -> None:
    device = make_device()
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        with pytest.raises(NotSupported):
            flasher.write_identity(identity)
        with pytest.raises(NotSupported):
            flasher.keygen("unit")
        with pytest.raises(NotSupported):
            flasher.install_certificate(identity.certificate_pem)
    assert "expresslink" in flashers.available()


class LateOnce(ExpressLinkDevice):
    """Answers the first `AT+CONF? Version` only after `delay` (a busy module): its reply comes late."""

    def __init__(self, *args: Any, delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.delayed = False

    def _handle(self, line: bytes, link: Link) -> None:
        if line == b"AT+CONF? Version" and not self.delayed:
            self.delayed = True
            link.sleep(self.delay)
        super()._handle(line, link)


def test_a_late_reply_does_not_desynchronise_later_commands(tmp_path: Path) -> None:
    model = LateOnce(tmp_path, delay=QUICK.command_s * 1.5)
    with PtyDevice(model) as device, ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        info = flasher.identify()  # the first Version reply comes late, the second attempt gets one
        assert info.firmware and "1.2.0" in info.firmware
        assert flasher.stats.retries == 1
        # Two Version replies are now in flight for one question: the next commands must not take them.
        assert flasher.endpoint() == DEFAULT_STAGING_ENDPOINT
        assert flasher.read_certificate() == model.live()["cert"]
        assert flasher.connect_state() == ConnectState(False, False)


def test_silent_module_with_default_timing_is_reported_in_bounded_time(
    make_device: Callable[..., ExpressLinkHandle],
) -> None:
    device = make_device(faults={"silent": True})
    with ExpressLinkFlasher(device.port) as flasher:
        started = time.monotonic()
        with pytest.raises(DeviceNotAnswering):
            flasher.identify()
        elapsed = time.monotonic() - started
    timing = Timing()
    expected = timing.attempts * timing.command_s  # AT, sent twice, each waits one command timeout
    assert expected * 0.95 <= elapsed <= expected + 1.0


def test_module_dropping_off_the_line_mid_check(make_device: Callable[..., ExpressLinkHandle]) -> None:
    device = make_device(faults={"disconnect_on": "CONNECT"})
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        flasher.identify()
        started = time.monotonic()
        with pytest.raises(DeviceDisconnected):
            flasher.device_verify("localhost", 8883, str(device.device_id), timeout_s=5)
        assert time.monotonic() - started < 2.0


def test_paced_certificate_read_takes_wire_time(make_device: Callable[..., ExpressLinkHandle]) -> None:
    device = make_device(pace=True)
    with ExpressLinkFlasher(device.port) as flasher:
        flasher.identify()
        before = flasher.stats.wire_bytes
        started = time.perf_counter()
        pem = flasher.read_certificate()
        elapsed = time.perf_counter() - started
    wire = flasher.stats.wire_bytes - before
    assert wire > len(pem)  # the whole certificate crossed the line
    theory = wire_time(wire, 115200)
    assert 0.95 * theory <= elapsed <= 2.0 * theory + 0.3


# ------------------------------------------------------------------------------- connect and wipe


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("hint", "error"),
    [
        (2, DeviceCheckUnreachable),
        (3, DeviceCheckUnreachable),
        (4, DeviceCheckUnreachable),
        (5, DeviceLoginRefused),
        (6, DeviceCheckDenied),
    ],
)
def test_connect_hints_from_the_module_become_errors_and_the_endpoint_is_restored(
    hint: int, error: type[Exception], make_device: Callable[..., ExpressLinkHandle]
) -> None:
    device = make_device(faults={"connect_hint": hint}, backoff_s=0.0)
    timing = Timing(command_s=0.3, login_retries=0)
    with ExpressLinkFlasher(device.port, timing=timing) as flasher:
        flasher.identify()
        with pytest.raises(error) as caught:
            flasher.device_verify("customer-ats.iot.example.com", 8883, str(device.device_id), timeout_s=5)
    assert f"ERR14 {hint}" in caught.value.message  # type: ignore[attr-defined]
    # A failed check never leaves the module pointed at the customer account.
    assert device.model.endpoint == DEFAULT_STAGING_ENDPOINT
    assert device.model.counters["connects"] == 1


def test_login_refused_is_retried_once_after_registration_delay(
    make_device: Callable[..., ExpressLinkHandle],
) -> None:
    device = make_device(faults={"connect_hint": 5}, backoff_s=0.05)
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher, pytest.raises(DeviceLoginRefused):
        flasher.device_verify("customer-ats.iot.example.com", 8883, str(device.device_id), timeout_s=5)
    assert device.model.counters["connects"] == 2


def test_back_off_is_waited_out_and_a_persisting_back_off_is_reported(
    make_device: Callable[..., ExpressLinkHandle],
) -> None:
    device = make_device(faults={"connect_hint": 1})
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        started = time.monotonic()
        with pytest.raises(DeviceConnectThrottled):
            flasher.device_verify("customer-ats.iot.example.com", 8883, str(device.device_id), timeout_s=1.5)
        assert time.monotonic() - started < 1.5 + 1.0
    # Waits of 0.2, 0.4 and 0.8 s fit into 1.5 s: the flasher asked again after each, not in a tight loop.
    assert 3 <= device.model.commands.count("CONNECT") <= 5


def test_real_refused_connection_then_module_back_off(make_device: Callable[..., ExpressLinkHandle]) -> None:
    """The simulator really dials the endpoint: a closed port is ERR14 3, and a CONNECT right after a failure
    meets the module's back-off (ERR14 1), which the flasher waits out before trying again."""
    device = make_device(port=_closed_port(), backoff_s=0.3)
    thing = str(device.device_id)
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        with pytest.raises(DeviceCheckUnreachable) as first:
            flasher.device_verify("localhost", 8883, thing, timeout_s=5)
        assert "ERR14 3" in first.value.message
        assert device.model.counters == {**device.model.counters, "connects": 1, "backoffs": 0}
        with pytest.raises(DeviceCheckUnreachable) as second:
            flasher.device_verify("localhost", 8883, thing, timeout_s=5)
        assert "ERR14 3" in second.value.message
    assert device.model.counters["connects"] == 2
    assert device.model.counters["backoffs"] >= 1  # the second check met the back-off first
    assert device.model.endpoint == DEFAULT_STAGING_ENDPOINT


class SlowConnect(ExpressLinkDevice):
    """A module whose AT+CONNECT takes `delay` seconds to answer (stuck in its network stack)."""

    delay = 1.0

    def _cmd_connect(self, suffix: str, param: str | None, link: Link) -> list[str]:
        link.sleep(self.delay)
        return ["OK 1 CONNECTED"]


def test_connect_timeout_is_bounded_and_the_line_gets_back_in_step(tmp_path: Path) -> None:
    model = SlowConnect(tmp_path)
    timing = Timing(command_s=0.3, connect_s=0.5)
    with PtyDevice(model) as device, ExpressLinkFlasher(device.port, timing=timing) as flasher:
        started = time.monotonic()
        with pytest.raises(DeviceCheckUnreachable) as caught:
            flasher.device_verify("customer-ats.iot.example.com", 8883, model.thing_name, timeout_s=10)
        assert time.monotonic() - started < 2.0
        assert "did not finish connecting" in caught.value.message
        # While the module is still busy, the flasher does not stack commands behind the late CONNECT; once
        # it answers again, its late "OK 1 CONNECTED" is not taken for the reply to anything else.
        state = None
        deadline = time.monotonic() + 5.0
        while state is None and time.monotonic() < deadline:
            try:
                state = flasher.connect_state()
            except DeviceNotAnswering:
                continue
        assert state == ConnectState(connected=False, customer=True)
        flasher.wipe()
    assert model.endpoint == DEFAULT_STAGING_ENDPOINT


def test_wipe_restores_only_what_this_session_changed(make_device: Callable[..., ExpressLinkHandle]) -> None:
    device = make_device()
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        flasher.set_endpoint("first-ats.iot.example.com")
        flasher.set_endpoint("second-ats.iot.example.com")
        assert flasher.connect_state().customer
        flasher.wipe()
        assert device.model.endpoint == DEFAULT_STAGING_ENDPOINT  # the endpoint before the session
        flasher.wipe()  # idempotent
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        flasher.set_endpoint("customer-ats.iot.example.com")
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        flasher.wipe()  # a new session changed nothing: an earlier PASS keeps its customer endpoint
        assert device.model.endpoint == "customer-ats.iot.example.com"
        flasher.wipe(factory_reset=True)
    assert device.model.endpoint == DEFAULT_STAGING_ENDPOINT


def test_endpoint_and_thing_name_are_checked_before_sending(
    make_device: Callable[..., ExpressLinkHandle],
) -> None:
    device = make_device()
    with ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        with pytest.raises(StationFault):
            flasher.set_endpoint("bad host\\Aname")
        with pytest.raises(StationFault):
            flasher.device_verify("localhost", 8883, "things/with/slashes", timeout_s=2)
    assert "CONF" not in device.model.commands


# ----------------------------------------------------------------------------------------- station sim


def test_faults_parse() -> None:
    faults = Faults.parse(
        ["silent", "slow=0.2", "lose=0.1", "disconnect_on=connect", "connect_hint=5", "seed=3"]
    )
    assert (
        faults.silent,
        faults.slow,
        faults.lose,
        faults.disconnect_on,
        faults.connect_hint,
        faults.seed,
    ) == (
        True,
        0.2,
        0.1,
        "CONNECT",
        5,
        3,
    )
    for bad in (["bogus"], ["lose=2"], ["slow"], ["connect_hint=0"], ["seed=x"]):
        with pytest.raises(ValueError):
            Faults.parse(bad)


def test_station_sim_expresslink_prints_the_port_first_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "station.cli",
            "sim",
            "expresslink",
            "--state-dir",
            str(tmp_path),
            "--thing-name",
            "cafe0001",
            "--no-pace",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), port
        with ExpressLinkFlasher(port, timing=QUICK) as flasher:
            assert flasher.identify().device_id == "cafe0001"
            assert "BEGIN CERTIFICATE" in flasher.read_certificate()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert (tmp_path / "expresslink-cafe0001.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_station_sim_expresslink_rejects_an_unknown_fault(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "station.cli",
            "sim",
            "expresslink",
            "--state-dir",
            str(tmp_path),
            "--fault",
            "bogus",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "bogus" in done.stderr


# ------------------------------------------------------------------------------------------ the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    control = pytest.importorskip("station.lab.control")
    dataplane = pytest.importorskip("station.lab.dataplane")
    plane = control.ControlPlane(throttling=False).start()
    data = None
    try:
        data = dataplane.DataPlane(
            {(control.DEFAULT_ACCOUNT_ID, control.DEFAULT_REGION): 0}, tmp_path_factory.mktemp("lab")
        )
        data.start()
        yield plane, data, data.port_for(control.DEFAULT_ACCOUNT_ID, control.DEFAULT_REGION)
    finally:
        if data is not None:
            data.stop()
        plane.stop()


_ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}


def _register(plane: Any, cert_pem: str, thing: str, policy_document: dict[str, Any]) -> None:
    """What the station's registry does for an ExpressLink unit: register without CA, policy, thing."""
    iot = plane.client("iot")
    registered = iot.register_certificate_without_ca(certificatePem=cert_pem, status="ACTIVE")
    policy = f"el-{uuid.uuid4().hex[:8]}"
    iot.create_policy(policyName=policy, policyDocument=json.dumps(policy_document))
    iot.attach_policy(policyName=policy, target=registered["certificateArn"])
    iot.create_thing(thingName=thing)
    iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])


def _lab_module(tmp_path: Path, lab: Any, **options: Any) -> ExpressLinkDevice:
    _, data, port = lab
    return ExpressLinkDevice(tmp_path, ca_file=data.ca_file, port=port, backoff_s=0.1, **options)


@pytest.mark.lab
def test_onboarding_against_the_lab(lab: Any, tmp_path: Path) -> None:
    """Read ThingName + certificate, register it without CA, point the module at the lab, verify from the
    module's side: CONNECT, subscribe, send, get the nonce back, CUSTOMER."""
    plane, _, port = lab
    model = _lab_module(tmp_path, lab)
    with PtyDevice(model) as device, ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        thing = str(flasher.identify().device_id)
        pem = flasher.read_certificate()
        _register(plane, pem, thing, _ALLOW_ALL)
        flasher.device_verify("localhost", port, thing, timeout_s=10)
        assert flasher.connect_state() == ConnectState(connected=False, customer=True)
    model.close()
    assert model.endpoint == "localhost"  # the PASS leaves the module onboarded
    assert model.commands.count("CONNECT") == 1
    assert "SEND" in model.commands and "GET" in model.commands


@pytest.mark.lab
def test_unregistered_certificate_is_a_refused_login_and_the_module_goes_back_to_staging(
    lab: Any, tmp_path: Path
) -> None:
    _, _, port = lab
    model = _lab_module(tmp_path, lab)
    with PtyDevice(model) as device, ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        thing = str(flasher.identify().device_id)
        with pytest.raises(DeviceLoginRefused) as caught:
            flasher.device_verify("localhost", port, thing, timeout_s=10)
        assert "ERR14 5" in caught.value.message
        assert flasher.connect_state() == ConnectState(connected=False, customer=False)
    model.close()
    assert model.counters["connects"] == 2  # once more after a short wait: registration may be in flight
    assert model.endpoint == DEFAULT_STAGING_ENDPOINT


def _policy(actions: list[str]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}


@pytest.mark.lab
@pytest.mark.parametrize(
    ("actions", "words"),
    [
        (["iot:Connect"], "subscribe"),  # SUBACK 0x80 → event 9 SUBNACK
        (["iot:Connect", "iot:Subscribe", "iot:Receive"], "closed"),  # publish refused → hang-up → CONLOST
    ],
)
def test_policy_refusals_are_reported_as_policy_problems(
    lab: Any, tmp_path: Path, actions: list[str], words: str
) -> None:
    plane, _, port = lab
    model = _lab_module(tmp_path, lab)
    with PtyDevice(model) as device, ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        thing = str(flasher.identify().device_id)
        _register(plane, flasher.read_certificate(), thing, _policy(actions))
        with pytest.raises(DeviceCheckDenied) as caught:
            flasher.device_verify("localhost", port, thing, timeout_s=10)
    model.close()
    assert words in caught.value.message
    assert model.endpoint == DEFAULT_STAGING_ENDPOINT


@pytest.mark.lab
def test_module_without_the_lab_ca_fails_tls(lab: Any, tmp_path: Path) -> None:
    """A module that does not trust the server (no lab CA, as a real module with only Amazon's root would be):
    ERR14 4 → a station fault about TLS, not the unit's."""
    _, _, port = lab
    model = ExpressLinkDevice(tmp_path, port=port, backoff_s=0.1)  # no ca_file: the system trust store
    with PtyDevice(model) as device, ExpressLinkFlasher(device.port, timing=QUICK) as flasher:
        thing = str(flasher.identify().device_id)
        with pytest.raises(DeviceCheckUnreachable) as caught:
            flasher.device_verify("localhost", port, thing, timeout_s=10)
    model.close()
    assert "ERR14 4" in caught.value.message
    assert model.endpoint == DEFAULT_STAGING_ENDPOINT


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("AWS_ERROR_MQTT_UNEXPECTED_HANGUP", 5),
        ("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", 4),
        ("AWS_IO_SOCKET_CONNECTION_REFUSED", 3),
        ("AWS_IO_DNS_INVALID_NAME", 3),
        ("AWS_IO_SOCKET_TIMEOUT", 3),
        ("AWS_IO_SOCKET_NETWORK_DOWN", 2),
        ("AWS_IO_SOCKET_NO_ROUTE_TO_HOST", 2),
    ],
)
def test_awscrt_errors_map_to_the_modules_connection_hints(name: str, hint: int) -> None:
    from flashers.simulators.expresslink import _hint_for

    assert _hint_for(name)[0] == hint
