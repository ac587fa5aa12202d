"""PROV/1, the reference framed protocol for our own firmware: the frame codec and the host side (`Prov1Flasher`).

Wire format (ASCII lines, both directions)::

    frame := <seq:2 hex> SP <VERB> [SP arg]* "*" <crc16:4 hex> LF      (≤ 160 bytes with the LF)

The CRC is CRC-16/XMODEM (`binascii.crc_hqx(data, 0)`) over everything before the `*`. A reply carries the seq of
the frame it answers: `<seq> OK <VERB> [args]` or `<seq> ERR <code> <NAME> [args]`.

    HELLO                        → OK HELLO proto=1 maxline=160 chunk=64 id=<device id> fw=<firmware>
    BEGIN <slot> <len> <sha256>  → OK BEGIN                          (slot: key | cert | ca)
    DATA <offset> <base64>       → OK DATA <next>                    (≤ chunk raw bytes; duplicates re-acked)
    END                          → OK END <sha256>                   (device checks length and hash)
    COMMIT                       → OK COMMIT                         (every staged slot goes live atomically)
    HASH <slot>                  → OK HASH <slot> <len> <sha256>     (read-back proof; never for the key)
    READ <slot> <offset>         → OK READ <slot> <offset> <base64>  (cert | ca | csr; never the key)
    KEYGEN <common name>         → OK KEYGEN csr <len> <sha256>      (P-256 key made and kept on the device)
    WIPE [live]                  → OK WIPE                           (drop staged; with `live` the live ones too)
    CHECK <host> <port> <thing> <timeout s> → OK CHECK               (device-side MQTT round trip)
    errors: ERR 1 CRC, 2 SYNTAX, 3 HASH_MISMATCH, 4 OFFSET <expected>, 5 FORBIDDEN, 6 STATE, 7 TOOBIG,
            8 CONNECT <reason> (reason: nocreds | rejected | denied | tls | unreachable | timeout | echo)

Host rules: one frame in flight; a retransmission reuses the seq and the exact bytes, and the device's one-entry
replay cache answers it without running it twice (so a lost `OK END`/`OK COMMIT` is harmless); whole-object
SHA-256 before COMMIT and HASH read-back after; timeouts are the frame's round trip on the wire at the port's
baud rate with a floor, plus what the device has been measured to need (Karn's rule: only first-attempt
replies are measured; back off on timeouts); bounded attempts per frame and per operation.

This module must not import boto3 or awscrt, log frame contents (DATA frames carry key bytes) or put device
bytes in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Final

from flashers.base import (
    PROOF_DEVICE_HASH,
    PROOF_READ_BACK,
    Capabilities,
    DeviceCheckFailed,
    DeviceCheckUnreachable,
    DeviceDisconnected,
    DeviceGarbage,
    DeviceInfo,
    DeviceNotAnswering,
    DeviceRejected,
    LineTooNoisy,
    ObjectProof,
    ProofMismatch,
    WriteProof,
    check_certificate_fits_csr,
)
from flashers.serialio import OVERFLOW, LineFlasher, wire_time
from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.model import Identity

PROTO: Final = 1
MAX_LINE: Final = 160  # bytes per frame, LF included
CHUNK: Final = 64  # raw bytes per DATA / READ frame
SLOTS: Final = ("key", "cert", "ca")
READABLE: Final = ("cert", "ca", "csr")
MAX_OBJECT: Final = 8192  # a slot's capacity on the reference device

ERR_CRC: Final = 1
ERR_SYNTAX: Final = 2
ERR_HASH_MISMATCH: Final = 3
ERR_OFFSET: Final = 4
ERR_FORBIDDEN: Final = 5
ERR_STATE: Final = 6
ERR_TOOBIG: Final = 7
ERR_CONNECT: Final = 8
ERROR_NAMES: Final = {
    ERR_CRC: "CRC",
    ERR_SYNTAX: "SYNTAX",
    ERR_HASH_MISMATCH: "HASH_MISMATCH",
    ERR_OFFSET: "OFFSET",
    ERR_FORBIDDEN: "FORBIDDEN",
    ERR_STATE: "STATE",
    ERR_TOOBIG: "TOOBIG",
    ERR_CONNECT: "CONNECT",
}
CHECK_REASONS: Final = ("nocreds", "rejected", "denied", "tls", "unreachable", "timeout", "echo")

_HEX = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN = re.compile(r"[!-~]+")  # printable ASCII without spaces: what an argument may be
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ----------------------------------------------------------------------------------------------------------
# Frame codec (shared with the simulator)


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0)."""
    return binascii.crc_hqx(data, 0)


def encode_frame(seq: int | None, *words: str) -> bytes:
    """One frame: `<seq> word word ...*<crc>\\n`. `seq=None` writes `--` (a reply to an unreadable frame)."""
    head = "--" if seq is None else f"{seq & 0xFF:02x}"
    for word in words:
        if not word or not _TOKEN.fullmatch(word) or "*" in word:
            raise ValueError("a PROV/1 argument must be printable ASCII without spaces or '*'")
    body = " ".join((head, *words)).encode("ascii")
    return body + b"*%04x\n" % crc16(body)


class FrameError(Exception):
    """A line that is not a valid frame. `kind` is "crc" (well formed, bad checksum) or "syntax"."""

    def __init__(self, kind: str, seq: int | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.seq = seq


@dataclass(frozen=True)
class Frame:
    seq: int | None
    words: tuple[str, ...]

    @property
    def verb(self) -> str:
        return self.words[0] if self.words else ""


def decode_frame(line: bytes) -> Frame:
    """Parse one line (without its LF); raise `FrameError` for anything that is not a valid frame."""
    if line.endswith(b"\r"):
        line = line[:-1]
    body, star, crc_text = line.rpartition(b"*")
    if not star or len(crc_text) != 4:
        raise FrameError("syntax")
    seq = _parse_seq(body[:2])
    if not _HEX.fullmatch(crc_text):
        raise FrameError("crc", seq)  # shaped like a frame, damaged in its checksum: line noise
    if crc16(body) != int(crc_text, 16):
        raise FrameError("crc", seq)
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("syntax", seq) from None
    parts = text.split(" ")
    if len(parts) < 2 or len(parts[0]) != 2 or (seq is None and parts[0] != "--") or "" in parts[1:]:
        raise FrameError("syntax", seq)
    return Frame(seq, tuple(parts[1:]))


def _parse_seq(head: bytes) -> int | None:
    if len(head) == 2 and _HEX.fullmatch(head):
        return int(head, 16)
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Host side


class _DeviceError(Exception):
    """An `ERR` reply, handled by the operation that sent the frame (never shown to a person as is)."""

    def __init__(self, verb: str, code: int, args: tuple[str, ...]) -> None:
        super().__init__(f"{verb}: ERR {code}")
        self.verb = verb
        self.code = code
        self.args_ = args


@dataclass(frozen=True)
class Timing:
    """How the host times frames. Defaults suit hardware and a pty alike; tests may shorten the floor."""

    floor_s: float = (
        0.1  # smallest wait for a reply: USB-serial latency timers (≤ 16 ms), OS scheduling spikes
    )
    wire_factor: float = 2.0  # wait at least this many round trips on the wire
    max_backoff: int = 4  # timeouts double on each retransmission up to this factor
    attempts: int = 5  # sends of one frame at most (5 % loss each way: 5 failures in a row ~ 1e-6)
    first_contact_attempts: int = 4  # fewer for the very first frame: a silent unit is reported sooner
    write_timeout_s: float = 2.0


# What the reference device may need beyond the wire time for a verb, in seconds (flash writes, key making).
_ALLOWANCE: Final = {
    "BEGIN": 0.1,
    "END": 0.1,
    "COMMIT": 0.5,
    "HASH": 0.1,
    "WIPE": 0.5,
    "KEYGEN": 3.0,
}

_NEXT_RESEAT = N_(
    "Reseat the unit in the jig, check its power, and try again; if it fails again, put it in the rework bin."
)


class Prov1Flasher(LineFlasher[Timing]):
    """Host side of PROV/1 on one port (hardware path or any pyserial URL)."""

    family = "prov1"
    capabilities = Capabilities(
        writes_key=True,
        device_keygen=True,
        device_verify=True,
        reads_certificate=True,
        atomic_commit=True,  # COMMIT makes every staged slot live at once
    )

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        timing: Timing | None = None,
        exclusive: bool = True,
    ) -> None:
        super().__init__(
            port, baudrate=baudrate, timing=timing or Timing(), exclusive=exclusive, max_line=MAX_LINE
        )
        self._seq = random.randrange(256)  # a fresh start per session: a stale cached answer cannot match
        self._maxline = MAX_LINE
        self._chunk = CHUNK
        self._srtt: float | None = None  # smoothed device service time (round trip minus wire time)
        self._backoff = 1
        self._budget = 0  # retransmissions left for the current operation
        self._device_key_pending = False  # KEYGEN made a key on the device in this session
        self._csr_pem: str | None = None
        self._written_cert_sha: str | None = None  # the certificate this session sent a COMMIT for

    # ------------------------------------------------------------------------------------------ public
    def identify(self) -> DeviceInfo:
        self._start_op(2)
        self._hello()
        assert self._info is not None
        return self._info

    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> WriteProof:
        objects: list[tuple[str, bytes]] = []
        if identity.private_key is not None:
            objects.append(("key", identity.private_key.reveal()))
        elif not self._device_key_pending:
            raise StationFault(
                _("No key to install"),
                _("The identity has no private key and the device made none in this session."),
                _("Call a technician: the pipeline must run keygen before installing a certificate."),
            )
        objects.append(("cert", identity.certificate_pem.encode("ascii")))
        if ca_pem:
            objects.append(("ca", ca_pem.encode("ascii")))
        return self._write_objects(objects)

    def install_certificate(self, cert_pem: str) -> WriteProof:
        if not self._device_key_pending:
            raise StationFault(
                _("No device key"),
                _(
                    "The device has not made a key in this session, so there is nothing to install a certificate for."
                ),
                _("Call a technician: run keygen first."),
            )
        self._check_matches_csr(cert_pem)
        return self._write_objects([("cert", cert_pem.encode("ascii"))])

    def keygen(self, common_name: str) -> str:
        if not _TOKEN.fullmatch(common_name) or "*" in common_name or len(common_name) > 64:
            raise StationFault(
                _("Name not usable"),
                _("The common name for the device's key must be 1–64 printable characters without spaces."),
                _("Call a technician to fix the thing name template."),
            )
        self._start_op(4 + 2 * math.ceil(1024 / CHUNK))
        self._ensure_session()
        reply = self._transact("KEYGEN", common_name)
        if len(reply) < 3 or reply[0] != "csr":
            raise DeviceGarbage(_("Its answer to KEYGEN was malformed."))
        length, digest = self._int(reply[1]), reply[2]
        data = self._read_object("csr", length)
        if sha256_hex(data) != digest:
            raise ProofMismatch(_("certificate request"), _("It changed between the device and the station."))
        self._device_key_pending = True
        try:
            pem = data.decode("ascii")
        except UnicodeDecodeError:
            raise DeviceGarbage(_("Its certificate request is not text.")) from None
        self._csr_pem = pem
        return pem

    def read_certificate(self) -> str:
        self._start_op(4 + 2 * math.ceil(4096 / CHUNK))
        self._ensure_session()
        length, digest = self._hash("cert")
        if length == 0:
            raise UnitFault(
                _("No certificate on the device"),
                _("The device holds no certificate to read."),
                _("Put the unit in the rework bin (or provision it with a station-made key)."),
            )
        data = self._read_object("cert", length)
        if sha256_hex(data) != digest:
            raise ProofMismatch(
                _("certificate"), _("The certificate read differs from the device's own hash of it.")
            )
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise DeviceGarbage(_("Its certificate is not text.")) from None

    def device_verify(self, host: str, port: int, thing_name: str, timeout_s: float = 20.0) -> None:
        self._start_op(4)
        self._ensure_session()
        args = (host, str(int(port)), thing_name, f"{timeout_s:g}")
        try:
            frame = encode_frame(0, "CHECK", *args)
        except ValueError:
            frame = b""
        if not frame or len(frame) > self._maxline:
            raise StationFault(
                _("Endpoint name too long"),
                _("The endpoint host and thing name do not fit in one PROV/1 frame."),
                _("Call a technician: use a shorter thing name for this family."),
            )
        try:
            self._transact("CHECK", *args, allowance_s=timeout_s + 5.0)
        except _DeviceError as err:
            if err.code != ERR_CONNECT:
                raise self._rejected(err) from None
            reason = err.args_[0] if err.args_ else ""
            raise _check_error(reason, host, port) from None

    def wipe(self, *, live: bool | None = None) -> None:
        """Drop what this station staged, and the live credentials if they are the ones this session wrote.

        After a failed unit the pipeline rolls the certificate back in AWS: credentials this session made live
        are useless then, so they go too. Whether they did go live is asked, not guessed (a COMMIT whose answer
        was lost may or may not have happened): the device's hash of its live certificate decides. Credentials
        from before this session stay. `live=True` / `live=False` force the choice.
        """
        self._start_op(4)
        self._ensure_session()
        try:
            drop_live = live
            if drop_live is None:
                drop_live = False
                if self._written_cert_sha is not None:
                    drop_live = self._hash("cert")[1] == self._written_cert_sha
            self._transact("WIPE", *(("live",) if drop_live else ()))
        except _DeviceError as err:
            raise self._rejected(err) from None
        if drop_live:
            self._written_cert_sha = None
        self._device_key_pending = False
        self._csr_pem = None

    def close(self) -> None:
        self._io.close()

    # -------------------------------------------------------------------------------------- operations
    def _write_objects(self, objects: list[tuple[str, bytes]]) -> WriteProof:
        started = time.perf_counter()
        before = (self.stats.frames, self.stats.retries, self.stats.wire_bytes)
        planned = 4 + sum(math.ceil(len(data) / CHUNK) + 3 for _, data in objects)
        self._start_op(planned)
        self._ensure_session()
        end_hashes: dict[str, str] = {}
        commit_sent = False
        try:
            for slot, data in objects:
                end_hashes[slot] = self._send_object(slot, data)
            commit_sent = True
            self._written_cert_sha = end_hashes.get("cert")
            self._transact("COMMIT")
        except DeviceDisconnected:
            if commit_sent:
                raise DeviceDisconnected(
                    _("It dropped off during the commit: it keeps either its old or its new credentials.")
                ) from None
            raise DeviceDisconnected(
                _("Nothing was committed: the device keeps its previous credentials.")
            ) from None
        except _DeviceError as err:
            self._abandon_staged()
            raise self._rejected(err) from None
        except (DeviceNotAnswering, DeviceGarbage, LineTooNoisy):
            # The unit cannot be talked to now: asking it to drop its staging would only cost more time.
            # Its staging cannot go live anyway: the next session's HELLO drops it.
            raise
        except StationError:
            if not commit_sent:
                self._abandon_staged()
            raise
        self._device_key_pending = False
        proofs: list[ObjectProof] = []
        for slot, data in objects:
            if slot == "key":
                proofs.append(ObjectProof(slot, len(data), end_hashes[slot], PROOF_DEVICE_HASH))
                continue
            length, digest = self._hash(slot)
            if length != len(data) or digest != sha256_hex(data):
                raise ProofMismatch(slot, _("Its read-back after commit differs."))
            proofs.append(ObjectProof(slot, length, digest, PROOF_READ_BACK))
        frames, retries, wire = before
        return WriteProof(
            family=self.family,
            device_id=self._info.device_id if self._info else None,
            objects=tuple(proofs),
            duration_s=time.perf_counter() - started,
            frames=self.stats.frames - frames,
            retries=self.stats.retries - retries,
            wire_bytes=self.stats.wire_bytes - wire,
        )

    def _send_object(self, slot: str, data: bytes) -> str:
        """BEGIN, DATA…, END for one object; return the device's hash (equal to ours, or ProofMismatch)."""
        digest = sha256_hex(data)
        for round_ in range(2):
            self._transact("BEGIN", slot, str(len(data)), digest)
            offset, resyncs = 0, 0
            while offset < len(data):
                piece = data[offset : offset + self._chunk]
                try:
                    reply = self._transact("DATA", str(offset), base64.b64encode(piece).decode("ascii"))
                except _DeviceError as err:
                    expected = self._int(err.args_[0]) if err.code == ERR_OFFSET and err.args_ else -1
                    if 0 <= expected <= len(data) and resyncs < 3:
                        # The device holds a different amount than we think (it restarted the object, or
                        # took a frame whose answer we lost): carry on from where it stands.
                        resyncs += 1
                        offset = expected
                        continue
                    raise
                next_offset = self._int(reply[0]) if reply else -1
                if next_offset != offset + len(piece):
                    raise DeviceGarbage(_("Its DATA acknowledgement points at the wrong offset."))
                offset = next_offset
            try:
                reply = self._transact("END")
            except _DeviceError as err:
                if err.code == ERR_HASH_MISMATCH and round_ == 0:
                    continue  # what arrived differs from what was sent despite the CRCs: send it once more
                if err.code == ERR_HASH_MISMATCH:
                    raise ProofMismatch(slot, _("The device computed a different hash twice.")) from None
                raise
            if not reply or reply[0] != digest:
                raise ProofMismatch(slot, _("The device's hash at END differs from the station's."))
            return digest
        raise ProofMismatch(slot)  # not reached: the loop returns or raises

    def _read_object(self, slot: str, length: int) -> bytes:
        if length < 0 or length > MAX_OBJECT:
            raise DeviceGarbage(_("It announced an impossible object length."))
        data = bytearray()
        while len(data) < length:
            reply = self._transact("READ", slot, str(len(data)))
            if len(reply) < 3 or reply[0] != slot or self._int(reply[1]) != len(data):
                raise DeviceGarbage(_("Its READ answer is for a different place."))
            try:
                piece = base64.b64decode(reply[2], validate=True)
            except (binascii.Error, ValueError):
                raise DeviceGarbage(_("Its READ answer is not base64.")) from None
            if not piece or len(piece) > self._chunk:
                raise DeviceGarbage(_("Its READ answer has the wrong size."))
            data += piece
        if len(data) != length:
            raise DeviceGarbage(_("It sent more than it announced."))
        return bytes(data)

    def _hash(self, slot: str) -> tuple[int, str]:
        reply = self._transact("HASH", slot)
        if len(reply) < 3 or reply[0] != slot or not _SHA256.fullmatch(reply[2]):
            raise DeviceGarbage(_("Its HASH answer is malformed."))
        return self._int(reply[1]), reply[2]

    def _abandon_staged(self) -> None:
        """Best effort after a failed write: drop the half-written objects so nothing stale can be committed."""
        if self._io.closed:
            return
        try:
            self._budget = max(self._budget, 2)
            self._transact("WIPE")
        except (StationError, _DeviceError):
            pass  # the original failure is what the operator needs to see

    def _check_matches_csr(self, cert_pem: str) -> None:
        check_certificate_fits_csr(cert_pem, self._csr_pem, device="device")

    # ---------------------------------------------------------------------------------------- session
    def _ensure_session(self) -> None:
        if self._info is None:
            self._hello()

    def _hello(self) -> None:
        reply = self._transact("HELLO")
        fields: dict[str, str] = {}
        for word in reply:
            name, eq, value = word.partition("=")
            if eq:
                fields[name] = value
        if fields.get("proto") != str(PROTO):
            raise DeviceRejected(
                _("The device speaks PROV/{proto}, the station PROV/{PROTO}.").format(
                    proto=fields.get("proto", "?"), PROTO=PROTO
                ),
                _("Update the unit's firmware, or put it in the rework bin."),
            )
        maxline = self._int(fields.get("maxline", str(MAX_LINE)))
        chunk = self._int(fields.get("chunk", str(CHUNK)))
        # A DATA frame is ~4/3 of its chunk plus ~24 bytes of framing: keep within what the device can take.
        self._maxline = min(MAX_LINE, maxline) if maxline >= 64 else MAX_LINE
        self._chunk = max(1, min(chunk, CHUNK, (self._maxline - 32) * 3 // 4))
        self._info = DeviceInfo(
            device_id=fields.get("id") or None, firmware=fields.get("fw") or None, family=self.family
        )

    def _start_op(self, planned_frames: int) -> None:
        # Bounded total retransmissions per operation: enough for a noisy line, not for a broken one.
        self._budget = 10 + planned_frames // 2

    # ------------------------------------------------------------------------------------------- frames
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _timeout(self, frame_len: int, allowance_s: float) -> float:
        t = self.timing
        wire = wire_time(frame_len + self._maxline, self.baudrate)
        service = 3.0 * self._srtt if self._srtt is not None else 0.0
        return (max(t.floor_s, t.wire_factor * wire) + service) * self._backoff + allowance_s

    def _transact(self, verb: str, *args: str, allowance_s: float | None = None) -> tuple[str, ...]:
        """Send one frame and return the arguments of its `OK <verb>` reply; retransmit on loss or damage."""
        seq = self._next_seq()
        frame = encode_frame(seq, verb, *args)
        if len(frame) > self._maxline:
            raise StationFault(
                _("Frame too long"),
                _("A {verb} frame does not fit the device's line length.").format(verb=verb),
                _("Call a technician."),
            )
        allowance = _ALLOWANCE.get(verb, 0.0) if allowance_s is None else allowance_s
        attempts = self.timing.attempts if self._contact else self.timing.first_contact_attempts
        silent = garbage = noise = 0
        for attempt in range(attempts):
            if attempt:
                if self._budget <= 0:
                    break
                self._budget -= 1
            with self._sent(frame, retry=attempt > 0):
                sent = time.monotonic()
                deadline = sent + self._timeout(len(frame), allowance)
                outcome, reply = self._await(seq, verb, deadline)
            if outcome == "ok":
                self._contact = True
                if attempt == 0:
                    # Karn: only a reply to a frame sent once tells how long the device takes. Verbs with a
                    # long allowance (commit, keygen, check) say nothing about ordinary frames.
                    self._backoff = 1
                    if allowance <= 0.1:
                        rtt = time.monotonic() - sent
                        sample = max(0.0, rtt - wire_time(len(frame) + 40, self.baudrate))
                        self._srtt = sample if self._srtt is None else 0.875 * self._srtt + 0.125 * sample
                return reply
            if outcome == "timeout":
                silent += 1
                self._backoff = min(self._backoff * 2, self.timing.max_backoff)
            elif outcome == "garbage":
                garbage += 1
            else:
                noise += 1
        # The unit stopped talking sense: a later call (the pipeline's wipe) gets a short first-contact chance,
        # not the backed-off timeouts of this one.
        self._contact = False
        self._backoff = 1
        detail = f"No valid answer to {verb} after {silent + garbage + noise} tries."
        if garbage and garbage >= noise:
            raise DeviceGarbage(detail)
        if noise:
            raise LineTooNoisy(detail)
        raise DeviceNotAnswering()

    def _await(self, seq: int, verb: str, deadline: float) -> tuple[str, tuple[str, ...]]:
        """Read until the reply to `seq` or the deadline. Returns (outcome, reply args); outcome is one of
        ok, timeout, garbage (not a frame at all), noise (a damaged frame or the device's CRC complaint)."""
        while True:
            line = self._io.read_line(deadline)
            if line is None:
                return "timeout", ()
            if line is OVERFLOW:
                return "garbage", ()
            assert isinstance(line, bytes)
            try:
                frame = decode_frame(line)
            except FrameError as err:
                return ("noise" if err.kind == "crc" else "garbage"), ()
            words = frame.words
            if words[:2] == ("ERR", str(ERR_CRC)):
                return "noise", ()  # the device got our frame damaged (its seq may be damaged too): resend
            if frame.seq != seq:
                continue  # a late answer to an earlier frame (or a replay of one): not ours
            if len(words) >= 2 and words[0] == "OK" and words[1] == verb:
                return "ok", words[2:]
            if len(words) >= 2 and words[0] == "ERR":
                code = self._int(words[1]) if words[1].isdigit() else -1
                if code <= 0:
                    return "garbage", ()
                raise _DeviceError(verb, code, words[3:])
            return "garbage", ()

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _int(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise DeviceGarbage(_("It answered a number that is not one.")) from None

    def _rejected(self, err: _DeviceError) -> StationError:
        name = ERROR_NAMES.get(err.code, str(err.code))
        if err.code == ERR_TOOBIG:
            return StationFault(
                _("Credential too big for the device"),
                _("The device has no room for what {verb} sends (error {name}).").format(
                    verb=err.verb, name=name
                ),
                _("Call a technician: use a smaller key type (EC P-256) for this product."),
            )
        if err.code == ERR_SYNTAX:
            return DeviceRejected(
                _(
                    "The device does not understand {verb} (error {name}): its firmware may be too old."
                ).format(verb=err.verb, name=name),
                _("Update the unit's firmware, or put it in the rework bin."),
            )
        if err.code == ERR_STATE:
            return DeviceRejected(
                _("The device lost its place during {verb} (error {name}): it may have restarted.").format(
                    verb=err.verb, name=name
                ),
                _(_NEXT_RESEAT),
            )
        return DeviceRejected(
            _("The device refused {verb} with error {name}.").format(verb=err.verb, name=name)
        )


def _check_error(reason: str, host: str, port: int) -> StationError:
    where = f"{host}:{port}"
    if reason == "nocreds":
        return UnitFault(
            _("Device has no credentials"),
            _("The device has no certificate and key to connect with."),
            _("Provision the unit again; if it fails again, put it in the rework bin."),
        )
    if reason == "rejected":
        return DeviceCheckFailed(
            _("The endpoint {where} did not accept the device's certificate.").format(where=where)
        )
    if reason == "denied":
        return StationFault(
            _("Device check not allowed"),
            _("The device connected to {where}, but the policy did not let it subscribe and publish.").format(
                where=where
            ),
            _("Call a technician to check the target's policy."),
        )
    if reason == "echo":
        return StationFault(
            _("Device check got no echo"),
            _("The device connected to {where}, but its test message did not come back.").format(where=where),
            _("Call a technician to check the target's policy and broker."),
        )
    if reason == "tls":
        return DeviceCheckUnreachable(
            _("The device could not complete TLS with {where} (server certificate not trusted?).").format(
                where=where
            )
        )
    if reason == "timeout":
        return DeviceCheckUnreachable(_("The device's connection to {where} timed out.").format(where=where))
    return DeviceCheckUnreachable(_("The device could not reach {where}.").format(where=where))
