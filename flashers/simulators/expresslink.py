"""An AWS IoT ExpressLink module, simulated: the AT command set a station meets, over a real pty.

`ExpressLinkDevice` is a device model for `flashers.simulators.pty.PtyDevice`, following the ExpressLink
Programmer's Guide where a station can tell: no echo; a command ends at CR or LF (an empty command, such as the
LF of a CR LF, is ignored); responses end in CR LF; parameters and details are escaped (LF `\\A`, CR `\\D`,
backslash `\\\\`; a bad escape is ERR5); `OK[n] [detail]` / `ERR<n> <NAME>` replies; a command longer than
9 KB is ERR1 OVERFLOW; unknown commands ERR3; numeric suffixes checked (ERR4 missing/unexpected, ERR7 out of
range); configuration keys checked (ERR9 length, ERR10 name, ERR11 unknown, ERR12 read-only, ERR13
write-only); an event queue (STARTUP at power-up, SUBACK/SUBNACK, MSG, CONLOST, OVERRUN) read with
`AT+EVENT?`; per-topic message queues read with `AT+GET#`.

The module's identity: its own EC P-256 key and a self-signed "birth" certificate (clientAuth) whose subject CN
is the ThingName and whose serial number is the ThingName read as hex (a random 32-hex-digit UID by default).
Both live in a "flash": a JSON file `expresslink-<ThingName>.json` under the state dir, replaced atomically, with
the persistent configuration (Endpoint, RootCA, CustomName, network keys). The key never crosses the line.

Connecting is real: `AT+CONNECT` opens an MQTT 3.1.1 connection with the unmodified awsiotsdk
(`mtls_from_bytes`, client id = ThingName) to the configured Endpoint on `port` (a real module always uses
8883; the lab gives its own port here), trusting `RootCA` if the host set one, else `ca_file` (the lab's CA,
as if it were in firmware), else the system store. Failures become ERR14 hints: a hang-up at CONNECT
(AWS_ERROR_MQTT_UNEXPECTED_HANGUP, 5134) or a refused CONNACK → 5, TLS → 4, DNS/refused/timeout → 3, no network
→ 2. awscrt's TLS (s2n) reports a distrusted server only after a 10-30 s blinding delay, where a module's TLS
stack answers at once: a CONNECT still pending after a second gets the server's certificate checked with
Python's ssl (`server_untrusted`), and answers ERR14 4 at once if it is not trusted. A CONNECT sooner than the back-off after a failed one → `ERR14 1` (back-off doubling from `backoff_s`).
A lost connection is not re-established (as on a module): event CONLOST. `AT+CONNECT?` says CUSTOMER when the
Endpoint is not the factory (staging) endpoint. The staging endpoint defaults to a `.invalid` host.

Where the guide says so (v1.2; each point has a test in tests/flashers/test_expresslink_guide.py): characters
before `AT` on a line are ignored; `HOTAcertificate` is a persistent key that a factory reset clears, while the
root certificate (`RootCA`) survives it; `KeepAlive`, `LWTTopic`/`LWTMessage`/`LWTQoS`, `DefenderPeriod`,
`ShadowToken` and `EnableShadow` are accepted and kept; an Endpoint longer than its buffer is ERR4; `DISCONNECT`
raises the CONLOST event; a `CONNECT` while another is in progress is `ERR25 NOT ALLOWED`; a message on a topic
that no Topic# matches goes to the catch-all index 0 (`AT+GET0` → `OK1 <topic>` + the message); `OTA?` with no
update pending is `OK 0 IDLE`.

Connecting takes time as on a module: `connect_delay_s` (default 0 for unit tests; `station sim expresslink`
uses 3 s, `--connect-delay`) is spent before the network attempt, and the `slow_connect=S` fault adds S seconds
(up to the guide's 120 s per command), so a station's CONNECT deadline is really exercised.

Simplifications, on purpose: `CONF <key>=pem` multi-line input is not offered (ERR4; escaped values work),
OTA transfers, shadow, Defender reporting and LWT publication do not happen (their settings are only stored),
and CONFMODE, DIAG, TIME?, WHERE? and SLEEP are unknown commands (ERR3).

Fault injection (`Faults`, also `station sim expresslink --fault NAME[=VALUE]`): silence, garbage replies, a
flood that never stops, a slow module, lost or corrupted replies, dropping off the line on a given command, and
a forced CONNECT failure hint.

This is a simulator: it may import awscrt/awsiot; nothing in the station's core may import it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from flashers.expresslink import (
    ERR_ACTIVE_CONNECTION,
    ERR_COMMAND_NOT_FOUND,
    ERR_INVALID_ESCAPE,
    ERR_INVALID_KEY_LENGTH,
    ERR_INVALID_KEY_NAME,
    ERR_KEY_READONLY,
    ERR_KEY_WRITEONLY,
    ERR_NO_CONNECTION,
    ERR_NOT_ALLOWED,
    ERR_OUT_OF_RANGE,
    ERR_OVERFLOW,
    ERR_PARAMETER,
    ERR_PARAMETER_UNDEFINED,
    ERR_PARSE,
    ERR_UNABLE_TO_CONNECT,
    ERR_UNKNOWN_KEY,
    ERROR_NAMES,
    EVENT_CONLOST,
    EVENT_CONNECT,
    EVENT_MSG,
    EVENT_NAMES,
    EVENT_OVERRUN,
    EVENT_STARTUP,
    EVENT_SUBACK,
    EVENT_SUBNACK,
    HINT_BACKOFF,
    HINT_ENDPOINT,
    HINT_LOGIN,
    HINT_NETWORK,
    HINT_TLS,
    MAX_COMMAND,
    MAX_TOPIC,
    STANDARD_PORT,
    EscapeError,
    escape,
    unescape,
)
from flashers.simulators._common import flood, line_fault, line_noise, parse_faults, write_json_atomic
from flashers.simulators.pty import Link

log = logging.getLogger(__name__)

ABOUT: Final = "StationLab ExpressLink-Sim"
VERSION: Final = "1.2.0 sim"
TECHSPEC: Final = "v1.2"
DEFAULT_STAGING_ENDPOINT: Final = "expresslink-staging-ats.iot.invalid"  # `.invalid` never resolves
CERT_FORMATS: Final = ("counted", "bare", "escaped")  # OK<n> pem | OK pem (older drafts) | one escaped line
EVENT_QUEUE: Final = 64
MESSAGE_QUEUE: Final = 16
MAX_KEY_LENGTH: Final = 16
MAX_BACKOFF_S: Final = 60.0
HANGUP: Final = "AWS_ERROR_MQTT_UNEXPECTED_HANGUP"
TLS_PROBE_AFTER_S: Final = 1.0  # a CONNECT still pending after this long gets its server certificate checked

_COMMAND = re.compile(r"([A-Za-z_]+?)(\d*)([?!]?)(?: (.*))?", re.DOTALL)
_THING = re.compile(r"[A-Za-z0-9:_-]{1,64}")
_PRINTABLE = bytes(range(0x21, 0x7F))

# Configuration keys: access, and whether they live in flash (persistent) or RAM.
_READ_ONLY = ("About", "Version", "TechSpec", "ThingName", "Certificate")
_PERSISTENT = (
    "CustomName",
    "Endpoint",
    "RootCA",
    "HOTAcertificate",
    "SSID",
    "Passphrase",
    "APN",
    "KeepAlive",
    "LWTTopic",
    "LWTMessage",
    "LWTQoS",
    "DefenderPeriod",
    "ShadowToken",
    "EnableShadow",
)
# Flash field per persistent key (the rest: the key in lower case).
_FIELDS = {
    "CustomName": "custom_name",
    "RootCA": "root_ca",
    "HOTAcertificate": "hota_certificate",
    "KeepAlive": "keep_alive",
    "LWTTopic": "lwt_topic",
    "LWTMessage": "lwt_message",
    "LWTQoS": "lwt_qos",
    "DefenderPeriod": "defender_period",
    "ShadowToken": "shadow_token",
    "EnableShadow": "enable_shadow",
}
# Numeric settings: (smallest, largest) accepted value.
_RANGES = {"KeepAlive": (30, 1200), "LWTQoS": (0, 1), "DefenderPeriod": (0, 86400), "EnableShadow": (0, 1)}
MAX_ENDPOINT: Final = 128  # the guide's Endpoint buffer
_WRITE_ONLY = ("Passphrase",)
_VOLATILE = ("QoS", *(f"Topic{i}" for i in range(1, MAX_TOPIC + 1)))
_CERTIFICATE_KEYS = ("Certificate", "RootCA", "HOTAcertificate")


@dataclass
class Faults:
    """What goes wrong on this module. Probabilities are per reply; `None`/0/False means never."""

    silent: bool = False  # reads everything, answers nothing
    garbage: bool = False  # answers every command with noise
    flood: bool = False  # on the first command, starts talking and never stops
    slow: float = 0.0  # seconds before each reply
    lose: float = 0.0  # each reply is lost with this probability (the command still ran)
    corrupt: float = 0.0  # each reply is damaged with this probability
    disconnect_on: str | None = None  # drop off the line when this command arrives (e.g. CONNECT, CONF?)
    connect_hint: int | None = None  # every CONNECT fails with ERR14 <hint> without touching the network
    slow_connect: float = 0.0  # seconds added to every CONNECT (on top of the module's connect_delay_s)
    seed: int | None = None  # for repeatable random faults

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Faults:
        """From `NAME[=VALUE]` strings, e.g. `silent`, `slow=0.5`, `lose=0.1`, `disconnect_on=CONNECT`."""
        faults = parse_faults(cls, specs, probabilities=("lose", "corrupt"), ranges={"connect_hint": (1, 99)})
        if faults.disconnect_on is not None:
            faults.disconnect_on = faults.disconnect_on.upper()  # a command name, as the module reads it
        return faults


# ----------------------------------------------------------------------------------------------------------
# The module's identity and flash


def new_thing_name() -> str:
    """A random 128-bit UID as 32 lowercase hex digits (what a module's root of trust would give)."""
    return secrets.token_hex(16)


def serial_for(thing_name: str) -> int:
    """The birth certificate's serial number for a ThingName: the name as hex, or a hash of it otherwise."""
    if re.fullmatch(r"[0-9A-Fa-f]{1,38}", thing_name) and int(thing_name, 16) > 0:
        return int(thing_name, 16)
    import hashlib

    return int.from_bytes(hashlib.sha256(thing_name.encode()).digest()[:16], "big") | 1


def make_birth_identity(thing_name: str) -> tuple[str, str]:
    """(certificate PEM, key PEM): EC P-256, self-signed, CN = ThingName, serial from the ThingName."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "StationLab ExpressLink-Sim"),
            x509.NameAttribute(NameOID.COMMON_NAME, thing_name),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial_for(thing_name))
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return cert_pem, key_pem


def flash_path(state_dir: str | os.PathLike[str], thing_name: str) -> Path:
    return Path(state_dir) / f"expresslink-{thing_name}.json"


class Flash:
    """The module's non-volatile store: one JSON file (mode 0600), replaced atomically on every change."""

    def __init__(self, path: Path, thing_name: str, staging_endpoint: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path.exists():
            self._data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if self._data.get("thing_name") != thing_name:
                raise ValueError(f"{path} belongs to another module")
            return
        cert, key = make_birth_identity(thing_name)
        self._data = {
            "family": "expresslink",
            "thing_name": thing_name,
            "about": ABOUT,
            "version": VERSION,
            "techspec": TECHSPEC,
            "certificate": cert,
            "key": key,
            "staging_endpoint": staging_endpoint,
            "generation": 0,
            "updated_at": None,
        }
        self._data["root_ca"] = None
        self._data.update(self.factory_settings())
        self._write()

    def factory_settings(self) -> dict[str, Any]:
        """What AT+FACTORY_RESET puts back. The root certificate is not among them: it survives (guide §6)."""
        return {
            "endpoint": self._data["staging_endpoint"],
            "hota_certificate": None,
            "custom_name": "",
            "ssid": "",
            "passphrase": "",
            "apn": "",
            "keep_alive": "60",
            "lwt_topic": "",
            "lwt_message": "",
            "lwt_qos": "0",
            "defender_period": "0",
            "shadow_token": "ExpressLink",
            "enable_shadow": "0",
        }

    def get(self, name: str) -> Any:
        with self._lock:
            return self._data.get(name)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._data)

    def update(self, **values: Any) -> None:
        with self._lock:
            self._data.update(values)
            self._data["generation"] = int(self._data.get("generation") or 0) + 1
            self._data["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, self._data)


# ----------------------------------------------------------------------------------------------------------
# The module


class _Err(Exception):
    """An ERR reply from a command handler."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _err_line(code: int) -> str:
    return f"ERR{code} {ERROR_NAMES.get(code, 'ERROR')}"


def _from_at(line: bytes) -> bytes:
    """The command part of a line: the guide has the module ignore whatever comes before `AT`."""
    start = line.upper().find(b"AT")
    return line[start:] if start > 0 else line


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (`+` one level, `#` the rest)."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(want):
        if part == "#":
            return True
        if i >= len(have) or (part != "+" and part != have[i]):
            return False
    return len(want) == len(have)


class ExpressLinkDevice:
    """The ExpressLink module model. Thread-safe inspection for tests (`live`, `connected`, `events`)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        thing_name: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        port: int = STANDARD_PORT,
        staging_endpoint: str = DEFAULT_STAGING_ENDPOINT,
        faults: Faults | None = None,
        backoff_s: float = 1.0,
        connect_timeout_s: float = 10.0,
        cert_format: str = "counted",
        connect_delay_s: float = 0.0,
    ) -> None:
        self.thing_name = thing_name or new_thing_name()
        if not _THING.fullmatch(self.thing_name):
            raise ValueError("a ThingName is 1-64 letters, digits, ':', '_' or '-'")
        if cert_format not in CERT_FORMATS:
            raise ValueError(f"cert_format must be one of {', '.join(CERT_FORMATS)}")
        self.ca_file = Path(ca_file) if ca_file else None
        self.port = int(port)
        self.faults = faults or Faults()
        self.backoff_s = max(0.0, float(backoff_s))
        self.connect_timeout_s = min(120.0, max(0.5, float(connect_timeout_s)))
        self.cert_format = cert_format
        self.connect_delay_s = min(120.0, max(0.0, float(connect_delay_s)))
        self._connecting = False  # a CONNECT (or CONNECT!) is in progress
        self.flash = Flash(flash_path(state_dir, self.thing_name), self.thing_name, staging_endpoint)
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.RLock()
        self._connect_lock = threading.Lock()
        self._rx = bytearray()
        self._overflowing = False
        self._events: deque[tuple[int, int, str]] = deque()
        self._messages: dict[int, deque[tuple[str, str]]] = {}  # index → (topic, message); 0 = catch-all
        self._config: dict[str, str] = {"QoS": "0"}  # RAM keys (Topic#, QoS): gone on reset
        self._conn: Any = None  # the awscrt connection while connected
        self._connected = False
        self._failures = 0  # failed CONNECTs in a row (drives the back-off)
        self._hold_until = 0.0  # no CONNECT before this (monotonic)
        self._flooding = False
        self.commands: list[str] = []  # command names in order of arrival (for tests)
        self.counters = {"commands": 0, "connects": 0, "backoffs": 0, "lost": 0, "corrupted": 0}
        self._event(EVENT_STARTUP, 0)

    # ---------------------------------------------------------------------------------------- inspection
    @property
    def flash_path(self) -> Path:
        return self.flash.path

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def endpoint(self) -> str:
        return str(self.flash.get("endpoint"))

    @property
    def staging_endpoint(self) -> str:
        return str(self.flash.get("staging_endpoint"))

    def live(self) -> dict[str, str | None]:
        """What the module would connect with now (read from its flash)."""
        data = self.flash.snapshot()
        return {
            "cert": data["certificate"],
            "key": data["key"],
            "ca": data.get("root_ca"),
            "endpoint": data["endpoint"],
        }

    def events(self) -> list[tuple[int, int, str]]:
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        """Power off: drop the MQTT connection (bounded wait)."""
        self._drop_connection(wait_s=2.0)

    # ------------------------------------------------------------------------------------------ the line
    def on_receive(self, data: bytes, link: Link) -> None:
        self._rx += data
        while not link.stopping:
            match = re.search(rb"[\r\n]", self._rx)
            if match is None:
                if len(self._rx) > MAX_COMMAND:
                    self._rx.clear()
                    if not self._overflowing:
                        self._overflowing = True
                        self._send(link, [_err_line(ERR_OVERFLOW)])
                return
            end = match.start()
            line = bytes(self._rx[:end])
            del self._rx[: end + 1]
            if self._overflowing:
                self._overflowing = False  # the tail of the overlong command: already answered
                continue
            if len(line) > MAX_COMMAND:  # arrived whole in one read: still too long for the buffer
                self._send(link, [_err_line(ERR_OVERFLOW)])
                continue
            line = _from_at(line)
            if not line:
                continue  # the LF of a CR LF, or a blank line: not a command
            self._handle(line, link)

    def _handle(self, line: bytes, link: Link) -> None:
        faults = self.faults
        name = self._command_name(line)
        self.commands.append(name)
        self.counters["commands"] += 1
        if faults.disconnect_on and name == faults.disconnect_on:
            link.disconnect()  # power lost / cable pulled: RAM state goes, the flash stays
            self._drop_connection(wait_s=0.0)
            return
        if line_fault(
            link, faults, flood=self._flood, noise=lambda: self._noise(self._rng.randint(8, 120)) + b"\r\n"
        ):
            return
        if faults.slow and not link.sleep(faults.slow):
            return
        reply = self._execute(line, link)
        if faults.lose and self._rng.random() < faults.lose:
            self.counters["lost"] += 1
            return
        if faults.corrupt and self._rng.random() < faults.corrupt:
            self.counters["corrupted"] += 1
            reply[0] = self._damage(reply[0])
        self._send(link, reply)

    @staticmethod
    def _send(link: Link, lines: list[str]) -> None:
        link.send("".join(line + "\r\n" for line in lines).encode("ascii", "replace"))

    @staticmethod
    def _command_name(line: bytes) -> str:
        text = line.decode("ascii", "replace")
        if text.upper() == "AT":
            return "AT"
        match = _COMMAND.fullmatch(text[3:]) if text[:3].upper() == "AT+" else None
        return (match.group(1).upper() + match.group(3)) if match else "?"

    # -------------------------------------------------------------------------------------------- commands
    def _execute(self, line: bytes, link: Link) -> list[str]:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return [_err_line(ERR_PARSE)]
        if text.upper() == "AT":
            return ["OK"]
        if text[:3].upper() != "AT+":
            return [_err_line(ERR_PARSE)]
        match = _COMMAND.fullmatch(text[3:])
        if match is None:
            return [_err_line(ERR_PARSE)]
        name = match.group(1).upper() + match.group(3)
        handler: Callable[[str, str | None, Link], list[str]] | None = getattr(
            self, "_cmd_" + name.lower().replace("?", "_query").replace("!", "_async"), None
        )
        if handler is None:
            return [_err_line(ERR_COMMAND_NOT_FOUND)]
        try:
            # Handlers run on the line's thread, one at a time, without `_lock`: a CONNECT waits for awscrt,
            # whose callbacks take `_lock` (shared state: events, messages, the connection).
            return handler(match.group(2), match.group(4), link)
        except _Err as err:
            return [_err_line(err.code)]

    @staticmethod
    def _no_suffix(suffix: str) -> None:
        if suffix:
            raise _Err(ERR_PARAMETER)

    def _topic(self, suffix: str) -> tuple[int, str]:
        """The topic index a command names and the topic configured there (`ERR_PARAMETER_UNDEFINED` if none)."""
        index = self._topic_index(suffix)
        topic = self._config.get(f"Topic{index}")
        if not topic:
            raise _Err(ERR_PARAMETER_UNDEFINED)
        return index, topic

    def _connection(self) -> Any:
        """The module's live MQTT connection (`ERR_NO_CONNECTION` when it is not connected)."""
        conn = self._conn
        if conn is None:
            raise _Err(ERR_NO_CONNECTION)
        return conn

    @staticmethod
    def _topic_index(suffix: str, *, required: bool = True) -> int:
        if not suffix:
            if required:
                raise _Err(ERR_PARAMETER)
            return 0
        index = int(suffix)
        if not 1 <= index <= MAX_TOPIC:
            raise _Err(ERR_OUT_OF_RANGE)
        return index

    @staticmethod
    def _unescaped(param: str) -> str:
        try:
            return unescape(param)
        except EscapeError:
            raise _Err(ERR_INVALID_ESCAPE) from None

    def _check_key(self, key: str) -> None:
        if len(key) > MAX_KEY_LENGTH:
            raise _Err(ERR_INVALID_KEY_LENGTH)
        if not key.isalnum() or not key.isascii():
            raise _Err(ERR_INVALID_KEY_NAME)
        if key not in _READ_ONLY and key not in _PERSISTENT and key not in _VOLATILE:
            raise _Err(ERR_UNKNOWN_KEY)

    def _cmd_conf(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        if not param or "=" not in param:
            raise _Err(ERR_PARAMETER)
        key, _, raw = param.partition("=")
        self._check_key(key)
        if key in _READ_ONLY:
            raise _Err(ERR_KEY_READONLY)
        value = self._unescaped(raw)
        if key in _CERTIFICATE_KEYS and value == "pem":
            raise _Err(ERR_PARAMETER)  # multi-line certificate input is not simulated
        if key in _VOLATILE:
            if key == "QoS" and value not in ("0", "1"):
                raise _Err(ERR_OUT_OF_RANGE)
            with self._lock:
                self._config[key] = value
            return ["OK"]
        if key in ("Endpoint", "RootCA") and self._connected:
            raise _Err(ERR_ACTIVE_CONNECTION)
        if key == "Endpoint" and (not value or len(value) > MAX_ENDPOINT):
            raise _Err(ERR_PARAMETER)  # longer than the Endpoint buffer (guide: ERR4)
        if key in _RANGES:
            if not value.isdigit():
                raise _Err(ERR_PARAMETER)
            low, high = _RANGES[key]
            if not low <= int(value) <= high:
                raise _Err(ERR_OUT_OF_RANGE)
            value = str(int(value))
        field = _FIELDS.get(key, key.lower())
        if key in ("RootCA", "HOTAcertificate") and not value:
            self.flash.update(**{field: None})  # RootCA: back to the CA in "firmware"
        else:
            self.flash.update(**{field: value})
        return ["OK"]

    def _cmd_conf_query(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        if not param:
            raise _Err(ERR_PARAMETER)
        key, _, option = param.partition(" ")
        self._check_key(key)
        if key in _WRITE_ONLY:
            raise _Err(ERR_KEY_WRITEONLY)
        value = self._value(key)
        if option:
            if option != "pem" or key not in _CERTIFICATE_KEYS:
                raise _Err(ERR_PARAMETER)
            return self._pem_reply(value)
        return [f"OK {escape(value)}" if value else "OK"]

    def _value(self, key: str) -> str:
        if key in _VOLATILE:
            return self._config.get(key, "")
        if key == "RootCA":
            root = self.flash.get("root_ca")
            if root:
                return str(root)
            return self.ca_file.read_text(encoding="ascii") if self.ca_file else ""
        field = {**_FIELDS, "ThingName": "thing_name"}.get(key, key.lower())
        value = self.flash.get(field)
        if value is None and field in self.flash.factory_settings():  # a flash file from an older simulator
            value = self.flash.factory_settings()[field]
        return str(value or "")

    def _pem_reply(self, pem: str) -> list[str]:
        lines = pem.strip().splitlines()
        if not lines:
            return ["OK"]  # nothing stored (a HOTAcertificate never set)
        if self.cert_format == "escaped":
            return [f"OK {escape(pem)}" if pem else "OK"]
        if self.cert_format == "bare":
            return ["OK pem", *lines]
        return [f"OK{len(lines)} pem" if lines else "OK pem", *lines]

    def _cmd_connect_query(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        onboarded = self.endpoint != self.staging_endpoint
        state = "CONNECTED" if self._connected else "DISCONNECTED"
        account = "CUSTOMER" if onboarded else "STAGING"
        return [f"OK {int(self._connected)} {int(onboarded)} {state} {account}"]

    def _cmd_connect(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        if self._connected:
            return ["OK 1 CONNECTED"]
        if self._connecting:
            raise _Err(ERR_NOT_ALLOWED)  # guide: a CONNECT while one is in progress
        hint, text = self._attempt(link)
        if hint == 0:
            return ["OK 1 CONNECTED"]
        return [f"ERR{ERR_UNABLE_TO_CONNECT} {hint} {ERROR_NAMES[ERR_UNABLE_TO_CONNECT]} {text}"]

    def _cmd_connect_async(self, suffix: str, param: str | None, link: Link) -> list[str]:
        """`AT+CONNECT!`: answer at once; the outcome arrives as event 6 CONNECT <hint> (0 = connected)."""
        self._no_suffix(suffix)
        if self._connected:
            self._event(EVENT_CONNECT, 0)
            return ["OK"]
        if self._connecting:
            raise _Err(ERR_NOT_ALLOWED)
        self._connecting = True  # before the thread starts, so the next command already sees it

        def run() -> None:
            hint, _ = self._attempt(link)
            self._event(EVENT_CONNECT, hint)

        threading.Thread(target=run, name=f"expresslink-connect {self.thing_name}", daemon=True).start()
        return ["OK"]

    def _cmd_disconnect(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        was_connected = self.connected
        self._drop_connection(wait_s=5.0)
        if was_connected:
            self._event(EVENT_CONLOST, 0)  # guide: a disconnect the host asked for raises CONLOST too
        return ["OK 0 DISCONNECTED"]

    def _cmd_ota_query(self, suffix: str, param: str | None, link: Link) -> list[str]:
        """`AT+OTA?`: no update is ever offered to the simulated module (guide §9: state 0 = no OTA)."""
        self._no_suffix(suffix)
        return ["OK 0 IDLE"]

    def _cmd_subscribe(self, suffix: str, param: str | None, link: Link) -> list[str]:
        index, topic = self._topic(suffix)
        conn = self._connection()
        from awscrt import mqtt

        try:
            future, _ = conn.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, self._on_message)
        except Exception:
            raise _Err(ERR_NO_CONNECTION) from None

        def done(result: Any) -> None:
            granted = None
            with contextlib.suppress(Exception):
                granted = (result.result() or {}).get("qos")
            ok = granted in (mqtt.QoS.AT_MOST_ONCE, mqtt.QoS.AT_LEAST_ONCE, mqtt.QoS.EXACTLY_ONCE)
            with self._lock:
                if self._conn is conn:
                    self._event(EVENT_SUBACK if ok else EVENT_SUBNACK, index)

        future.add_done_callback(done)
        return ["OK"]

    def _cmd_unsubscribe(self, suffix: str, param: str | None, link: Link) -> list[str]:
        _, topic = self._topic(suffix)
        conn = self._connection()
        with contextlib.suppress(Exception):
            conn.unsubscribe(topic)
        return ["OK"]

    def _cmd_send(self, suffix: str, param: str | None, link: Link) -> list[str]:
        _, topic = self._topic(suffix)
        message = self._unescaped(param or "")
        conn = self._connection()
        from awscrt import mqtt

        qos = mqtt.QoS.AT_LEAST_ONCE if self._config.get("QoS") == "1" else mqtt.QoS.AT_MOST_ONCE
        try:
            future, _ = conn.publish(topic, message.encode("utf-8"), qos)
            if qos is mqtt.QoS.AT_LEAST_ONCE:
                future.result(10.0)
        except Exception:
            raise _Err(ERR_NO_CONNECTION) from None
        return ["OK"]

    def _cmd_get(self, suffix: str, param: str | None, link: Link) -> list[str]:
        if param:
            raise _Err(ERR_PARAMETER)
        with self._lock:
            if suffix and int(suffix) == 0:  # GET0: the catch-all queue, topic first (guide §5)
                queue = self._messages.get(0)
                if not queue:
                    return ["OK"]
                topic, text = queue.popleft()
                return [f"OK1 {escape(topic)}", escape(text)]
            index = self._topic_index(suffix, required=False)
            if index:
                queue = self._messages.get(index)
                return [f"OK {escape(queue.popleft()[1])}" if queue else "OK"]
            for i in sorted(self._messages):  # GET without a suffix: the next message of any topic
                queue = self._messages[i]
                if queue:
                    topic, text = queue.popleft()
                    return [f"OK1 {escape(topic)}", escape(text)]
        return ["OK"]

    def _cmd_event_query(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        with self._lock:
            if not self._events:
                return ["OK"]
            event_id, param_value, mnemonic = self._events.popleft()
        return [f"OK {event_id} {param_value} {mnemonic}"]

    def _cmd_reset(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        self._reset()
        return ["OK"]

    def _cmd_factory_reset(self, suffix: str, param: str | None, link: Link) -> list[str]:
        self._no_suffix(suffix)
        self._reset()
        self.flash.update(**self.flash.factory_settings())
        return ["OK"]

    def _reset(self) -> None:
        self._drop_connection(wait_s=5.0)
        with self._lock:
            self._events.clear()
            self._messages.clear()
            self._config = {"QoS": "0"}
            self._failures, self._hold_until = 0, 0.0
        self._event(EVENT_STARTUP, 0)

    # ---------------------------------------------------------------------------------------------- events
    def _event(self, event_id: int, param: int) -> None:
        with self._lock:
            if len(self._events) >= EVENT_QUEUE:
                return  # a full queue drops new events (the host polls too rarely)
            self._events.append((event_id, param, EVENT_NAMES.get(event_id, "EVENT")))

    def _on_message(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        text = payload.decode("utf-8", "replace")
        with self._lock:
            matched = [
                index
                for index in range(1, MAX_TOPIC + 1)
                if self._config.get(f"Topic{index}") and topic_matches(self._config[f"Topic{index}"], topic)
            ]
            for index in matched or [0]:  # no Topic# matches (any more): the catch-all index 0
                queue = self._messages.setdefault(index, deque())
                if len(queue) >= MESSAGE_QUEUE:
                    self._event(EVENT_OVERRUN, index)
                    continue
                queue.append((topic, text))
                self._event(EVENT_MSG, index)

    # -------------------------------------------------------------------------------------------- connect
    def _attempt(self, link: Link) -> tuple[int, str]:
        """One CONNECT: (0, "") when connected, else (hint, text). Applies and updates the back-off."""
        with self._connect_lock:  # AT+CONNECT! runs on its own thread: one attempt at a time
            self._connecting = True
            try:
                return self._attempt_locked(link)
            finally:
                self._connecting = False

    def _attempt_locked(self, link: Link) -> tuple[int, str]:
        if self.connected:
            return 0, ""
        now = time.monotonic()
        if now < self._hold_until:
            self.counters["backoffs"] += 1
            return HINT_BACKOFF, "Back-off in effect, retry later"
        self.counters["connects"] += 1
        # A module spends seconds on DNS, TCP, TLS and MQTT; the guide bounds every command at 120 s.
        delay = min(120.0, self.connect_delay_s + self.faults.slow_connect)
        if delay and not link.sleep(delay):
            return HINT_ENDPOINT, "Timed out connecting to the endpoint"
        if self.faults.connect_hint is not None:
            hint, text = self.faults.connect_hint, "Simulated failure"
        else:
            hint, text = self._open(link)
        if hint == 0:
            self._failures, self._hold_until = 0, 0.0
            return 0, ""
        self._failures += 1
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** min(self._failures - 1, 10))
        self._hold_until = time.monotonic() + delay
        return hint, text

    def _open(self, link: Link) -> tuple[int, str]:
        from concurrent.futures import TimeoutError as FutureTimeout

        from awscrt.exceptions import AwsCrtError
        from awsiot import mqtt_connection_builder

        host = self.endpoint
        ca = self._value("RootCA").encode("ascii") or None
        data = self.flash.snapshot()
        try:
            conn = mqtt_connection_builder.mtls_from_bytes(
                endpoint=host,
                port=self.port,
                cert_bytes=data["certificate"].encode("ascii"),
                pri_key_bytes=data["key"].encode("ascii"),
                ca_bytes=ca,
                client_id=self.thing_name,
                clean_session=True,
                keep_alive_secs=60,
                on_connection_interrupted=self._on_interrupted,
            )
        except (AwsCrtError, ValueError, RuntimeError):
            return HINT_TLS, "Failed to set up TLS"
        future = conn.connect()
        started = time.monotonic()
        deadline = started + self.connect_timeout_s
        probed = False
        while True:
            try:
                future.result(0.05)
                break
            except FutureTimeout:
                if time.monotonic() >= deadline or link.stopping:
                    self._stop(conn)
                    return HINT_ENDPOINT, "Timed out connecting to the endpoint"
                if not probed and time.monotonic() - started >= TLS_PROBE_AFTER_S:
                    # s2n (awscrt's TLS on Linux) reports a distrusted server only after its blinding delay
                    # of 10-30 s; a module's TLS stack says so at once. Ask Python's ssl instead.
                    probed = True
                    if server_untrusted(host, self.port, ca, timeout_s=2.0):
                        self._stop(conn)
                        return HINT_TLS, "Failed to securely authenticate with AWS (server not trusted)"
            except AwsCrtError as exc:
                self._stop(conn)
                return _hint_for(exc.name)
            except Exception as exc:  # a refused CONNACK arrives as Exception(ConnectReturnCode)
                self._stop(conn)
                return HINT_LOGIN, f"Failed to login AWS (MQTT) broker ({type(exc).__name__})"
        with self._lock:
            self._conn, self._connected = conn, True
        return 0, ""

    def _on_interrupted(self, connection: Any, error: Any, **kwargs: Any) -> None:
        """The connection dropped (hang-up, network): a module does not reconnect by itself."""
        with self._lock:
            if connection is not self._conn:
                return
            self._conn, self._connected = None, False
            self._event(EVENT_CONLOST, 0)
        self._stop(connection)

    @staticmethod
    def _stop(connection: Any) -> None:
        """Stop awscrt's own reconnect attempts; do not wait (this may run on awscrt's event thread)."""
        with contextlib.suppress(Exception):
            connection.disconnect()

    def _drop_connection(self, *, wait_s: float) -> None:
        with self._lock:
            conn, self._conn, self._connected = self._conn, None, False
        if conn is None:
            return
        with contextlib.suppress(Exception):
            future = conn.disconnect()
            if wait_s > 0:
                future.result(wait_s)

    # ---------------------------------------------------------------------------------------------- faults
    def _damage(self, text: str) -> str:
        if not text:
            return "?"
        i = self._rng.randrange(len(text))
        replacement = text[i]
        while replacement == text[i]:
            replacement = chr(self._rng.choice(_PRINTABLE))
        return text[:i] + replacement + text[i + 1 :]

    def _noise(self, n: int) -> bytes:
        return line_noise(self._rng, n)

    def _flood(self, link: Link) -> None:
        """Talk forever (until stopped): boot-log lines, binary noise and lines far longer than a reply."""
        self._flooding = True

        def chunk(counter: int) -> bytes:
            if counter % 5 == 0:
                return self._noise(700)
            return b"[boot] %08d " % counter + self._rng.randbytes(24).hex().encode() + b"\r\n"

        flood(link, chunk)


def server_untrusted(host: str, port: int, ca: bytes | None, *, timeout_s: float) -> bool:
    """True when a TLS handshake with `host:port` fails because its certificate is not trusted by `ca` (or
    the system store when None). Anything else (trusted, refused, no answer) is False: not this question."""
    import socket
    import ssl

    context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            context.wrap_socket(sock, server_hostname=host),
        ):
            return False
    except ssl.SSLCertVerificationError:
        return True
    except (OSError, ValueError):
        return False


def _hint_for(name: str) -> tuple[int, str]:
    """awscrt's error name at CONNECT → (ERR14 hint, the module's text)."""
    if name == HANGUP or ("MQTT" in name and ("REFUSED" in name or "NOT_AUTHORIZED" in name)):
        return HINT_LOGIN, "Failed to login AWS (MQTT) broker"
    if "TLS" in name or "PKCS" in name or "X509" in name or "CERT" in name:
        return HINT_TLS, "Failed to securely authenticate with AWS"
    if "NETWORK_DOWN" in name or "NO_ROUTE" in name:
        return HINT_NETWORK, "Failed to access network"
    return HINT_ENDPOINT, "Failed to connect to endpoint"


# ----------------------------------------------------------------------------------------------------------
# `station sim expresslink`


def add_sim_arguments(parser: Any) -> None:
    """The options of `station sim expresslink` (the command itself lives in station.commands.sim)."""
    parser.add_argument(
        "--baud", type=int, default=115200, help="baud rate to pace the line at (default 115200)"
    )
    parser.add_argument("--no-pace", action="store_true", help="answer at pty speed instead of wire speed")
    parser.add_argument(
        "--state-dir", default="sim-state", help="where the module's flash file lives (default ./sim-state)"
    )
    parser.add_argument("--thing-name", help="the module's ThingName (default: a new random UID)")
    parser.add_argument(
        "--ca-file", help="server CA (PEM) the module trusts, as if in firmware (the lab's CA)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=STANDARD_PORT,
        help="MQTT port to connect to (a real module always uses 8883; give the lab's port here)",
    )
    parser.add_argument(
        "--staging-endpoint",
        default=DEFAULT_STAGING_ENDPOINT,
        help=f"factory (staging) endpoint of a new module (default {DEFAULT_STAGING_ENDPOINT})",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="first back-off after a failed CONNECT, seconds (default 1)",
    )
    parser.add_argument(
        "--connect-delay",
        type=float,
        default=3.0,
        help="seconds a CONNECT takes before the network attempt, as on a module (default 3; at most 120)",
    )
    parser.add_argument(
        "--cert-format",
        choices=CERT_FORMATS,
        default="counted",
        help="how AT+CONF? Certificate pem answers: OK<n> pem (default), bare OK pem, or one escaped line",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="inject a fault (repeatable): silent garbage flood slow=S lose=P corrupt=P disconnect_on=COMMAND "
        "connect_hint=N slow_connect=S seed=N",
    )


def build_sim(args: Any) -> tuple[Any, str]:
    """(PtyDevice, flash file) for `station sim expresslink`; ValueError/OSError for unusable options."""
    from flashers.simulators.pty import PtyDevice

    if args.baud <= 0:
        raise ValueError(f"{args.baud} is not a baud rate")
    if not 0 < args.port < 65536:
        raise ValueError(f"{args.port} is not a port number")
    model = ExpressLinkDevice(
        args.state_dir,
        thing_name=args.thing_name,
        ca_file=args.ca_file,
        port=args.port,
        staging_endpoint=args.staging_endpoint,
        faults=Faults.parse(args.fault),
        backoff_s=args.backoff,
        cert_format=args.cert_format,
        connect_delay_s=args.connect_delay,
    )
    return PtyDevice(model, baudrate=args.baud, pace=not args.no_pace), str(model.flash_path)
