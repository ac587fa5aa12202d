"""The PROV/1 reference device, simulated: what our own firmware does on the other end of the line.

`Prov1Device` is a line model for `flashers.simulators.pty.PtyDevice`. It keeps:

- a flash: a JSON file under the state dir (`prov1-<device id>.json`) with the device id, firmware and the live
  `cert`, `key` and `ca` PEM strings. COMMIT replaces it atomically (temp file, fsync, rename), so a device that
  dies mid-write keeps its old credentials, and a test (or the awsiotsdk) can act as the device afterwards;
- staging in RAM: objects written with BEGIN/DATA/END, checked against their announced length and SHA-256;
- a one-entry replay cache: a frame identical to the last one executed (same seq, same bytes) is answered
  with the cached reply and not run again;
- a device-made key: KEYGEN makes a P-256 key that never leaves the device and answers its CSR (read with READ
  csr); COMMIT of a certificate without a staged key makes that key live with it;
- a device-side connectivity check: CHECK connects to the given MQTT endpoint with the live cert and key using
  the unmodified awsiotsdk (`mtls_from_bytes`, client id = thing name), subscribes to `things/<thing>/verify`,
  publishes a nonce and waits for it. The server CA comes from `ca_file` (the lab's CA; a real device has it in
  firmware) or the flash's `ca` slot, else the system trust store.

Fault injection (`Faults`, also `station sim prov1 --fault NAME[=VALUE]`): corrupted frames in either direction,
lost replies, a disconnect after N DATA frames, a slow device, a silent one, garbage replies, a flood that never
stops, and a store that corrupts what it keeps (so END's hash differs).

This is a simulator: it may import awscrt/awsiot, but nothing in the station's core may import it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flashers.prov1 import (
    CHUNK,
    ERR_CONNECT,
    ERR_CRC,
    ERR_FORBIDDEN,
    ERR_HASH_MISMATCH,
    ERR_OFFSET,
    ERR_STATE,
    ERR_SYNTAX,
    ERR_TOOBIG,
    ERROR_NAMES,
    MAX_LINE,
    MAX_OBJECT,
    PROTO,
    READABLE,
    SLOTS,
    FrameError,
    decode_frame,
    encode_frame,
    sha256_hex,
)
from flashers.simulators._common import flood, line_fault, line_noise, parse_faults, write_json_atomic
from flashers.simulators.pty import LineModel, Link

log = logging.getLogger(__name__)

FIRMWARE = "prov1-sim-1.0"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PRINTABLE = bytes(range(0x21, 0x7F))


@dataclass
class Faults:
    """What goes wrong on this device. Probabilities are per frame; `None`/0/False means never."""

    corrupt: float = 0.0  # each frame, in either direction, is damaged with this probability
    lose: float = 0.0  # each reply is lost with this probability (the command still ran)
    disconnect: int | None = (
        None  # drop off the line (pty closes) at this DATA frame of a session (since HELLO)
    )
    slow: float = 0.0  # seconds the device needs before answering a command it runs
    silent: bool = False  # reads everything, answers nothing
    garbage: bool = False  # answers every line with noise
    flood: bool = False  # on the first line, starts talking and never stops
    bad_store: bool = False  # keeps a damaged copy of each object (END's hash differs)
    seed: int | None = None  # for repeatable random faults

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Faults:
        """From `NAME[=VALUE]` strings, e.g. `corrupt=0.05`, `lose=0.05`, `disconnect=10`, `silent`."""
        return parse_faults(cls, specs, probabilities=("corrupt", "lose"))


class Flash:
    """The device's non-volatile store: one JSON file, replaced atomically on every change."""

    def __init__(self, path: Path, device_id: str, firmware: str) -> None:
        self.path = path
        self._data: dict[str, Any] = {
            "family": "prov1",
            "device_id": device_id,
            "firmware": firmware,
            "cert": None,
            "key": None,
            "ca": None,
            "generation": 0,
            "committed_at": None,
        }
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            self._data.update({k: v for k, v in stored.items() if k in self._data})
        else:
            self._write()

    def get(self, slot: str) -> str | None:
        value = self._data.get(slot)
        return value if isinstance(value, str) else None

    @property
    def device_id(self) -> str:
        return str(self._data["device_id"])

    def commit(self, updates: dict[str, str | None]) -> None:
        self._data.update(updates)
        self._data["generation"] = int(self._data.get("generation") or 0) + 1
        self._data["committed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._write()

    def snapshot(self) -> dict[str, Any]:
        return dict(self._data)

    def _write(self) -> None:
        write_json_atomic(self.path, self._data)


def flash_path(state_dir: str | os.PathLike[str], device_id: str) -> Path:
    return Path(state_dir) / f"prov1-{device_id}.json"


@dataclass
class _Object:
    slot: str
    length: int
    sha256: str
    data: bytearray


class Prov1Device(LineModel):
    """The PROV/1 device model. Thread-safe inspection (`staged_slots`, `flash`) for tests."""

    max_line = MAX_LINE

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        device_id: str | None = None,
        firmware: str = FIRMWARE,
        ca_file: str | os.PathLike[str] | None = None,
        faults: Faults | None = None,
        chunk: int = CHUNK,
        slot_size: int = MAX_OBJECT,
    ) -> None:
        super().__init__()
        # Digits only: the lab's products take serials SIM + 4-8 digits, and a PROV/1 unit's id is its serial.
        self.device_id = device_id or "SIM" + "".join(str(secrets.randbelow(10)) for _ in range(8))
        if not re.fullmatch(r"[!-~]{1,64}", self.device_id) or "*" in self.device_id:
            raise ValueError("a device id is 1-64 printable characters without spaces or '*'")
        self.firmware = firmware
        self.ca_file = Path(ca_file) if ca_file else None
        if self.ca_file is not None and not self.ca_file.is_file():
            raise FileNotFoundError(f"no CA file {self.ca_file}")
        self.faults = faults or Faults()
        self.chunk = chunk
        self.slot_size = slot_size
        self.flash = Flash(flash_path(state_dir, self.device_id), self.device_id, firmware)
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.RLock()
        self._current: _Object | None = None
        self._staged: dict[str, bytes] = {}
        self._pending_key: bytes | None = None  # made by KEYGEN; never leaves the device
        self._csr: bytes | None = None
        self._last: tuple[int | None, bytes, bytes] | None = None  # replay cache: seq, frame, reply
        self._data_frames = 0
        self._flooding = False
        self.counters = {"frames": 0, "replays": 0, "crc_errors": 0, "lost": 0, "corrupted": 0}

    # ---------------------------------------------------------------------------------------- inspection
    @property
    def flash_path(self) -> Path:
        return self.flash.path

    def staged_slots(self) -> tuple[str, ...]:
        with self._lock:
            slots = set(self._staged)
            if self._current is not None:
                slots.add(self._current.slot)
            if self._pending_key is not None:
                slots.add("device-key")
            return tuple(sorted(slots))

    def live(self) -> dict[str, str | None]:
        with self._lock:
            return {slot: self.flash.get(slot) for slot in SLOTS}

    # ------------------------------------------------------------------------------------------ the line
    def handle_overlong(self, link: Link) -> None:
        # A line longer than a frame can be is a damaged frame (or two run together): ask for it again.
        self._send(link, encode_frame(None, "ERR", str(ERR_CRC), ERROR_NAMES[ERR_CRC]))

    def handle_line(self, line: bytes, link: Link) -> None:
        faults = self.faults
        if line_fault(
            link, faults, flood=self._flood, noise=lambda: self._noise(self._rng.randint(8, 120)) + b"\n"
        ):
            return
        if faults.corrupt and self._rng.random() < faults.corrupt:
            line = self._damage(line)
            self.counters["corrupted"] += 1
        try:
            frame = decode_frame(line)
        except FrameError as err:
            # Whatever is not a valid frame is taken as damaged on the way: the host sends it again.
            self.counters["crc_errors"] += 1
            self._reply_raw(link, encode_frame(err.seq, "ERR", str(ERR_CRC), ERROR_NAMES[ERR_CRC]))
            return
        self.counters["frames"] += 1
        with self._lock:
            last = self._last
        if last is not None and last[0] == frame.seq and last[1] == line:
            self.counters["replays"] += 1
            self._reply_raw(link, last[2])
            return
        if faults.slow and not link.sleep(faults.slow):
            return
        try:
            with self._lock:
                words = self._execute(frame.words, link)
        except _Disconnected:
            return
        if words is None:
            return
        reply = encode_frame(frame.seq, *words)
        with self._lock:
            self._last = (frame.seq, line, reply)
        self._reply_raw(link, reply)

    def _reply_raw(self, link: Link, reply: bytes) -> None:
        faults = self.faults
        if faults.lose and self._rng.random() < faults.lose:
            self.counters["lost"] += 1
            return
        if faults.corrupt and self._rng.random() < faults.corrupt:
            reply = self._damage(reply[:-1]) + b"\n"
            self.counters["corrupted"] += 1
        self._send(link, reply)

    @staticmethod
    def _send(link: Link, data: bytes) -> None:
        link.send(data)

    # --------------------------------------------------------------------------------------------- verbs
    def _execute(self, words: tuple[str, ...], link: Link) -> tuple[str, ...] | None:
        verb, args = words[0], words[1:]
        handler = getattr(self, f"_verb_{verb.lower()}", None) if verb.isalpha() and verb.isupper() else None
        if handler is None:
            return _err(ERR_SYNTAX)
        try:
            result: tuple[str, ...] | None = handler(args, link)
        except _Syntax:
            return _err(ERR_SYNTAX)
        return result

    def _verb_hello(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        # A new session: whatever an earlier host left half-written must never be committed by this one.
        self._current = None
        self._staged.clear()
        self._data_frames = 0
        return (
            "OK",
            "HELLO",
            f"proto={PROTO}",
            f"maxline={MAX_LINE}",
            f"chunk={self.chunk}",
            f"id={self.device_id}",
            f"fw={self.firmware}",
        )

    def _verb_begin(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if len(args) != 3 or args[0] not in SLOTS or not args[1].isdigit() or not _SHA256.fullmatch(args[2]):
            raise _Syntax
        length = int(args[1])
        if length == 0:
            raise _Syntax
        if length > self.slot_size:
            return _err(ERR_TOOBIG)
        self._current = _Object(args[0], length, args[2], bytearray())
        return ("OK", "BEGIN")

    def _verb_data(self, args: tuple[str, ...], link: Link) -> tuple[str, ...] | None:
        if len(args) != 2 or not args[0].isdigit():
            raise _Syntax
        try:
            piece = base64.b64decode(args[1], validate=True)
        except (binascii.Error, ValueError):
            raise _Syntax from None
        self._data_frames += 1
        if self.faults.disconnect is not None and self._data_frames >= self.faults.disconnect:
            # Power lost / cable pulled mid-write: RAM (staging) is gone, the flash is untouched.
            self._current = None
            self._staged.clear()
            link.disconnect()
            raise _Disconnected
        obj = self._current
        if obj is None:
            return _err(ERR_STATE)
        if not piece or len(piece) > self.chunk:
            return _err(ERR_TOOBIG)
        offset, have = int(args[0]), len(obj.data)
        if offset == have:
            if have + len(piece) > obj.length:
                return _err(ERR_TOOBIG)
            obj.data += piece
        elif offset + len(piece) <= have and obj.data[offset : offset + len(piece)] == piece:
            pass  # a duplicate of what is already here: acknowledge again
        else:
            return (*_err(ERR_OFFSET), str(have))
        return ("OK", "DATA", str(len(obj.data)))

    def _verb_end(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        obj = self._current
        if obj is None:
            return _err(ERR_STATE)
        self._current = None
        data = bytes(obj.data)
        if self.faults.bad_store and data:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        digest = sha256_hex(data)
        if len(data) != obj.length or digest != obj.sha256:
            return _err(ERR_HASH_MISMATCH)
        self._staged[obj.slot] = data
        return ("OK", "END", digest)

    def _verb_commit(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if self._current is not None:
            return _err(ERR_STATE)
        staged = dict(self._staged)
        if "cert" in staged and "key" not in staged and self._pending_key is not None:
            staged["key"] = self._pending_key
        if not staged:
            return _err(ERR_STATE)
        self.flash.commit({slot: data.decode("ascii", "replace") for slot, data in staged.items()})
        if "key" in staged and staged["key"] is self._pending_key:
            self._pending_key = None
            self._csr = None
        self._staged.clear()
        return ("OK", "COMMIT")

    def _verb_hash(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if len(args) != 1 or args[0] not in SLOTS:
            raise _Syntax
        if args[0] == "key":
            return _err(ERR_FORBIDDEN)
        data = (self.flash.get(args[0]) or "").encode("ascii", "replace")
        return ("OK", "HASH", args[0], str(len(data)), sha256_hex(data))

    def _verb_read(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if len(args) != 2 or not args[1].isdigit():
            raise _Syntax
        slot, offset = args[0], int(args[1])
        if slot == "key":
            return _err(ERR_FORBIDDEN)
        if slot not in READABLE:
            raise _Syntax
        data = self._csr if slot == "csr" else (self.flash.get(slot) or "").encode("ascii", "replace")
        if not data or offset >= len(data):
            return _err(ERR_STATE)
        piece = data[offset : offset + self.chunk]
        return ("OK", "READ", slot, str(offset), base64.b64encode(piece).decode("ascii"))

    def _verb_keygen(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if len(args) != 1:
            raise _Syntax
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args[0])]))
            .sign(key, hashes.SHA256())
        )
        self._pending_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._csr = csr.public_bytes(serialization.Encoding.PEM)
        return ("OK", "KEYGEN", "csr", str(len(self._csr)), sha256_hex(self._csr))

    def _verb_wipe(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if args not in ((), ("live",)):
            raise _Syntax
        self._current = None
        self._staged.clear()
        self._pending_key = None
        self._csr = None
        if args == ("live",):
            self.flash.commit({"cert": None, "key": None, "ca": None})
        return ("OK", "WIPE")

    def _verb_check(self, args: tuple[str, ...], link: Link) -> tuple[str, ...]:
        if len(args) != 4 or not args[1].isdigit():
            raise _Syntax
        host, port, thing = args[0], int(args[1]), args[2]
        try:
            timeout_s = min(max(float(args[3]), 0.5), 120.0)
        except ValueError:
            raise _Syntax from None
        cert, key = self.flash.get("cert"), self.flash.get("key")
        if not cert or not key:
            return (*_err(ERR_CONNECT), "nocreds")
        ca: bytes | None = None
        if self.ca_file is not None:
            try:
                ca = self.ca_file.read_bytes()
            except OSError:
                return (*_err(ERR_CONNECT), "tls")  # no trust anchor: TLS cannot be set up
        elif self.flash.get("ca"):
            ca = (self.flash.get("ca") or "").encode("ascii")
        # The MQTT round trip runs without the lock: it takes a while and touches nothing of the device's state.
        self._lock.release()
        try:
            reason = check_connectivity(host, port, thing, cert.encode(), key.encode(), ca, timeout_s, link)
        finally:
            self._lock.acquire()
        if reason is None:
            return ("OK", "CHECK")
        return (*_err(ERR_CONNECT), reason)

    # ------------------------------------------------------------------------------------------- faults
    def _damage(self, data: bytes) -> bytes:
        if not data:
            return b"?"
        i = self._rng.randrange(len(data))
        replacement = data[i]
        while replacement == data[i]:
            replacement = self._rng.choice(_PRINTABLE)
        return data[:i] + bytes([replacement]) + data[i + 1 :]

    def _noise(self, n: int) -> bytes:
        return line_noise(self._rng, n, line_ends=b"\n")  # frames end at LF; a stray CR is fair noise

    def _flood(self, link: Link) -> None:
        """Talk forever (until stopped): log lines, binary noise and lines far longer than a frame."""
        self._flooding = True

        def chunk(counter: int) -> bytes:
            if counter % 5 == 0:
                return self._noise(700)  # no line end for a long stretch
            return b"[boot] %08d " % counter + self._rng.randbytes(24).hex().encode() + b"\n"

        flood(link, chunk)


class _Syntax(Exception):
    """A frame whose arguments do not fit its verb."""


class _Disconnected(Exception):
    """The device dropped off the line while running a command."""


def _err(code: int) -> tuple[str, ...]:
    return ("ERR", str(code), ERROR_NAMES[code])


# --------------------------------------------------------------------------------------------------------
# The device-side connectivity check (awsiotsdk, unmodified)


def check_connectivity(
    host: str,
    port: int,
    thing: str,
    cert: bytes,
    key: bytes,
    ca: bytes | None,
    timeout_s: float,
    link: Link | None = None,
) -> str | None:
    """Connect with mTLS as `thing`, subscribe to and publish a nonce on `things/<thing>/verify`, get it back.

    Returns None on success or one of `CHECK_REASONS`.
    """
    from concurrent.futures import TimeoutError as FutureTimeout

    from awscrt import mqtt
    from awscrt.exceptions import AwsCrtError
    from awsiot import mqtt_connection_builder

    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    topic = f"things/{thing}/verify"
    nonce = secrets.token_hex(12)
    echoed = threading.Event()

    def on_message(topic: str, payload: bytes, **kwargs: Any) -> None:
        if payload == nonce.encode():
            echoed.set()

    try:
        connection = mqtt_connection_builder.mtls_from_bytes(
            endpoint=host,
            port=port,
            cert_bytes=cert,
            pri_key_bytes=key,
            ca_bytes=ca,
            client_id=thing,
            clean_session=True,
            keep_alive_secs=30,
        )
    except (AwsCrtError, ValueError, RuntimeError):
        return "tls"  # the certificate, key or CA could not be loaded into a TLS context
    connected = False
    stage = "connect"
    try:
        connection.connect().result(left())
        connected = True
        stage = "subscribe"
        sub_future, _ = connection.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, on_message)
        granted = sub_future.result(left())
        if granted.get("qos") not in (mqtt.QoS.AT_MOST_ONCE, mqtt.QoS.AT_LEAST_ONCE, mqtt.QoS.EXACTLY_ONCE):
            return "denied"
        stage = "publish"
        pub_future, _ = connection.publish(topic, nonce, mqtt.QoS.AT_LEAST_ONCE)
        pub_future.result(left())
        while not echoed.wait(0.05):
            if time.monotonic() >= deadline or (link is not None and link.stopping):
                return "echo"
        return None
    except FutureTimeout:
        return "timeout"
    except mqtt.SubscribeError:
        return "denied"
    except AwsCrtError as exc:
        return _crt_reason(exc.name, stage)
    except Exception as exc:  # awscrt reports a refused CONNACK as a bare Exception(ConnectReturnCode)
        if exc.args and isinstance(exc.args[0], mqtt.ConnectReturnCode):
            return "rejected"
        return "unreachable"
    finally:
        if connected:
            with contextlib.suppress(Exception):
                connection.disconnect().result(2.0)


def _crt_reason(name: str, stage: str) -> str:
    if "HANGUP" in name or "NOT_AUTHORIZED" in name or ("MQTT" in name and "REFUSED" in name):
        # AWS IoT hangs up on an unknown or inactive certificate at CONNECT, and on a policy violation after.
        return "rejected" if stage == "connect" else "denied"
    if "TLS" in name:
        return "tls"
    if "TIMEOUT" in name or "TIMED_OUT" in name:
        return "timeout"
    return "unreachable"
