"""Nordic nRF91 modem over its AT command interface: credentials in a security tag with `%CMNG`, or a device-made
key with `%KEYGEN`.

The unit runs an nRF Connect SDK application with the AT host library on its UART (115200 8N1, no echo). The
station speaks plain AT commands, one at a time, each answered by zero or more information lines and one final
result line: `OK`, `ERROR` or `+CME ERROR: <n>` (after `AT+CMEE=1`). Sources: Nordic's nRF91 AT command
reference (%CMNG, %KEYGEN, +CFUN, +CGSN, +CGMR, +CMEE), the SDK's `lib/at_host`, and nrfcloud-utils/nrfcredstore.

Session start (`identify`, or the first operation): `AT` (is anybody there?), `AT+CMEE=1` (numbered errors),
`AT+CFUN=4` (modem offline: credentials cannot change while it is online, `+CME ERROR: 518`), `AT+CGSN` → the
IMEI is the device id (15 digits, Luhn-checked, so a damaged line is asked again rather than believed),
`AT+CGMR` → modem firmware.

Host-made key (`write_identity` with a key):

    AT%CMNG=0,<sec_tag>,0,"<CA PEM>"      (only when a CA is given)
    AT%CMNG=0,<sec_tag>,1,"<certificate PEM>"
    AT%CMNG=0,<sec_tag>,2,"<private key PEM>"
    AT%CMNG=1,<sec_tag>                   → %CMNG: <sec_tag>,<type>,"<SHA-256 of the stored text>" per type

Each object is proven by the SHA-256 the modem lists, compared with the SHA-256 of exactly the text sent
(line endings included). The key cannot be read back; its listed hash is its proof. A write whose listed hash
differs is sent again (line noise), at most `Timing.proof_rounds` times; then the objects this call wrote are
deleted (a modem must not keep a credential that differs from what the station sent) and `ProofMismatch` is
raised.

Device-made key: `keygen(cn)` sends `AT%KEYGEN=<sec_tag>,2,0,"CN=<cn>"` and gets
`%KEYGEN: "<base64url(CSR DER)>.<base64url(COSE attestation)>"`; the key stays in the modem (it replaces the
tag's key at once). The CSR is returned as PEM; the station signs it and `install_certificate` (or
`write_identity` with a key-less identity) writes and proves the certificate. KEYGEN is never retried
automatically: a second KEYGEN makes a second key, and a late answer to the first could not be told from the
second's, so an unanswered KEYGEN fails the unit instead.

Verify: `device_verify` is not supported (the station cannot connect as a unit whose key it never held, and
the modem has no "check your connection" command). Verify by observing instead: (1) the station subscribes,
with its own identity, to `hello_topic(thing)` (`things/<thing>/hello`) on the target's endpoint; (2) it calls
`go_online()` (`AT+CFUN=1`), after which the unit's application connects with the tag's credentials (client id =
thing name) and publishes one hello, JSON `{"imei", "certificate_id", "firmware"}`; (3) the station waits a
bounded time for a hello whose `certificate_id` is the one it registered (`parse_hello`) and FAILs the unit if
none comes. The station's observer needs `iot:Subscribe`/`iot:Receive` on `things/*/hello` (not the device
policy). The simulator (`flashers.simulators.nrf91`) implements the unit's side with the unmodified awsiotsdk.

Line rules: result codes are matched only as whole lines and never inside a quoted string that spans lines
(base64 contains "OK"); `+CME ERROR` is final and never retried (except 518: the station sends `AT+CFUN=4` once
more and retries); a plain `ERROR` (command not understood, e.g. a byte damaged on the way) is retried;
unsolicited notifications between commands are ignored. A command is at most 4096 bytes with its CR LF (the AT
host's buffer; past it the host drops bytes and can wedge inside a quote until reset), and a credential may
not contain `"`: both are refused before anything is sent.

Wipe deletes (`AT%CMNG=3`) the types this session wrote or made in the tag. There is no staging on this modem:
each write is live at once, so a unit that drops off the line mid-write may hold a mix of old and new
credentials; the operator is told to provision it again.

This module must not import boto3 or awscrt, log command contents (they carry key material) or put device bytes
or key text in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from flashers.base import (
    PROOF_DEVICE_HASH,
    PROOF_READ_BACK,
    Capabilities,
    DeviceDisconnected,
    DeviceGarbage,
    DeviceInfo,
    DeviceNotAnswering,
    DeviceRejected,
    ObjectProof,
    ProofMismatch,
    WriteProof,
    check_certificate_fits_csr,
)
from flashers.serialio import OVERFLOW, LineFlasher, wire_time
from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.model import Identity

DEFAULT_SEC_TAG: Final = 16842753
MAX_SEC_TAG: Final = 2147483647  # higher tags are the modem's own
MAX_COMMAND: Final = 4096  # bytes of one command, CR LF included (the AT host's buffer)
MAX_LINE: Final = MAX_COMMAND + 64  # longest answer line the station reads

TYPE_CA: Final = 0
TYPE_CERT: Final = 1
TYPE_KEY: Final = 2
SLOT_OF_TYPE: Final = {TYPE_CA: "ca", TYPE_CERT: "cert", TYPE_KEY: "key"}

CME_NOT_FOUND: Final = 513
CME_NO_ACCESS: Final = 514
CME_MEMORY_FULL: Final = 515
CME_ACTIVE: Final = 518
CME_EXISTS: Final = 519
CME_KEYGEN_FAILED: Final = 523

HELLO_TOPIC: Final = "things/{thing}/hello"

_FINAL_OK = "OK"
_FINAL_ERROR = "ERROR"
_CME = re.compile(r"\+CM[ES] ERROR: ?(\d{1,5})")
_LIST_LINE = re.compile(r'%CMNG: ?(\d+),(\d+)(?:,"([0-9A-Fa-f]{64})")?')
_ATTEST_LINE = re.compile(r'%ATTESTTOKEN: ?"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)"')
_KEYGEN_LINE = re.compile(r'%KEYGEN: ?"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)"')
_IMEI = re.compile(r"\d{15}")
_FIRMWARE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
_CN = re.compile(r"[A-Za-z0-9:_.@\-]{1,64}")  # what fits in "CN=<name>" without quoting or separators
_GARBAGE_LINES = 16  # lines that are not AT answers before an attempt is given up as garbage
_GARBAGE_BYTES = 16384  # bytes without a final result before an attempt is given up as garbage


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def luhn_ok(digits: str) -> bool:
    """The IMEI check digit (Luhn): catches any single damaged digit."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def hello_topic(thing_name: str) -> str:
    """The topic a provisioned unit publishes its one hello on after `go_online()`."""
    return HELLO_TOPIC.format(thing=thing_name)


def parse_hello(payload: bytes) -> dict[str, str] | None:
    """A unit's hello as a dict (`imei`, `certificate_id`, `firmware`), or None if it is not one."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("certificate_id"), str):
        return None
    return {k: str(v) for k, v in data.items() if k in ("imei", "certificate_id", "firmware")}


def b64url_decode(text: str) -> bytes:
    """Base64url without padding (what %KEYGEN answers)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Timing:
    """How the host times commands. Defaults suit hardware and a pty alike; tests may shorten the floor."""

    floor_s: float = 0.4  # smallest wait for an answer: USB-serial latency, the modem's own scheduling
    wire_factor: float = 2.0  # wait at least this many times the command's and answer's wire time
    max_backoff: int = 4  # timeouts double on each retry up to this factor
    attempts: int = 5  # sends of one (idempotent) command at most
    first_contact_attempts: int = 3  # fewer for the very first command: a silent unit is reported sooner
    proof_rounds: int = 3  # writes of one object whose listed hash keeps differing
    allowance_scale: float = 1.0  # scales what slow commands (CFUN, writes, KEYGEN) are allowed beyond that
    write_timeout_s: float = 2.0


# What the modem may need beyond the wire time, in seconds (Nordic tools wait up to 15 s for any answer).
_ALLOWANCE: Final = {
    "AT+CFUN": 10.0,  # going offline detaches from the network first
    "AT%CMNG=0": 1.0,  # a write goes to NVM at once
    "AT%CMNG=3": 1.0,
    "AT%KEYGEN": 15.0,  # key generation in the modem's secure domain
}

_RESEAT = N_(
    "Reseat the unit in the jig, check its power, and try again; if it fails again, put it in the rework bin."
)


@dataclass(frozen=True)
class AttestationToken:
    """What `AT%ATTESTTOKEN` says: the whole answer (token.COSE, base64url) and the token's fields."""

    text: str
    device_uuid: str
    device_type: int
    firmware_uuid: str


def _cbor_array(data: bytes) -> list[int | bytes]:
    """The flat CBOR array of ints and byte strings an attestation token is (a leading self-describe tag
    55799 allowed); ValueError for anything else."""
    if data.startswith(b"\xd9\xd9\xf7"):
        data = data[3:]
    pos = 0

    def head() -> tuple[int, int]:
        nonlocal pos
        if pos >= len(data):
            raise ValueError("truncated CBOR")
        first = data[pos]
        pos += 1
        major, info = first >> 5, first & 0x1F
        if info < 24:
            return major, info
        size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
        if size is None or pos + size > len(data):
            raise ValueError("unsupported CBOR length")
        value = int.from_bytes(data[pos : pos + size], "big")
        pos += size
        return major, value

    major, count = head()
    if major != 4 or count > 16:
        raise ValueError("not a CBOR array")
    items: list[int | bytes] = []
    for _attempt in range(count):
        major, value = head()
        if major == 0:
            items.append(value)
        elif major == 1:
            items.append(-1 - value)
        elif major == 2 and pos + value <= len(data):
            items.append(data[pos : pos + value])
            pos += value
        else:
            raise ValueError("unexpected CBOR item")
    if pos != len(data):
        raise ValueError("trailing bytes after the CBOR array")
    return items


class _CmeError(Exception):
    """A `+CME ERROR: <n>` final result: handled by the operation that sent the command."""

    def __init__(self, command: str, code: int) -> None:
        super().__init__(f"{command}: +CME ERROR {code}")
        self.command = command
        self.code = code


class Nrf91Flasher(LineFlasher[Timing]):
    """Host side of the nRF91 AT interface on one port (hardware path or any pyserial URL).

    Product options (`[products.NAME.options]`): `sec_tag` (default 16842753), `read_attestation` (false: when
    true, `identify` also reads the modem's `AT%ATTESTTOKEN` into `self.attestation`, for the record).
    """

    family = "nrf91"
    capabilities = Capabilities(
        writes_key=True,
        device_keygen=True,
        device_verify=False,
        reads_certificate=False,
        observable=True,  # go_online() + a hello on things/<thing>/hello (see the module docstring)
    )

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        sec_tag: int | str = DEFAULT_SEC_TAG,
        timing: Timing | None = None,
        exclusive: bool = True,
        read_attestation: bool = False,
    ) -> None:
        self.read_attestation = bool(read_attestation)
        self.attestation: AttestationToken | None = None
        try:
            tag = int(sec_tag)
        except (TypeError, ValueError):
            tag = -1
        if not 0 <= tag <= MAX_SEC_TAG:
            raise StationFault(
                _("Bad security tag"),
                _("The nRF91 security tag must be a number from 0 to {MAX_SEC_TAG}.").format(
                    MAX_SEC_TAG=MAX_SEC_TAG
                ),
                _("Call a technician to fix sec_tag in the product's options."),
            )
        self.sec_tag = tag
        super().__init__(
            port, baudrate=baudrate, timing=timing or Timing(), exclusive=exclusive, max_line=MAX_LINE
        )
        self._backoff = 1
        self._srtt: float | None = (
            None  # smoothed time the modem takes beyond the wire (Karn: first tries only)
        )
        self._touched: set[int] = set()  # credential types this session wrote or made in the tag
        self._device_key_pending = False
        self._csr_pem: str | None = None

    # ------------------------------------------------------------------------------------------ public
    def identify(self) -> DeviceInfo:
        self._contact = False
        self._command("AT")
        self._command("AT+CMEE=1")
        self._offline()
        imei = self._imei()
        firmware = self._firmware()
        evidence: dict[str, str] = {}
        if self.read_attestation:
            self.attestation = self.attestation_token()
            evidence = {
                "attestation": self.attestation.text,
                "device_uuid": self.attestation.device_uuid,
                "firmware_uuid": self.attestation.firmware_uuid,
            }
        self._info = DeviceInfo(device_id=imei, firmware=firmware, family=self.family, evidence=evidence)
        return self._info

    def read_unit_id(self) -> str | None:
        # The IMEI alone: identify also takes the modem offline (and may read the attestation token), which a
        # look at which unit sits in the jig must not do.
        self._contact = False
        self._command("AT")
        self._command("AT+CMEE=1")
        return self._imei()

    def attestation_token(self) -> AttestationToken:
        """`AT%ATTESTTOKEN`: the modem's device identity token (device UUID, type, firmware UUID) and its COSE
        signature, as nRF Cloud onboarding takes it. The station keeps the text; it does not check the signature
        (Nordic's identity key is nRF Cloud's to check)."""
        try:
            lines = self._command("AT%ATTESTTOKEN", reply_bytes=512)
        except _CmeError as err:
            raise self._cme(err, "reading its attestation token") from None
        found = [m for m in (_ATTEST_LINE.fullmatch(line) for line in lines) if m]
        if len(found) != 1:
            raise DeviceGarbage(_("Its answer to ATTESTTOKEN has no attestation token."))
        token, cose = found[0].group(1), found[0].group(2)
        try:
            fields = _cbor_array(b64url_decode(token))
            message, device_uuid, device_type, firmware_uuid = fields
        except (ValueError, TypeError):
            raise DeviceGarbage(_("Its attestation token is not the modem's identity message.")) from None
        if message != 1 or not isinstance(device_uuid, bytes) or len(device_uuid) != 16:
            raise DeviceGarbage(_("Its attestation token is not the modem's identity message."))
        return AttestationToken(
            text=f"{token}.{cose}",
            device_uuid=str(uuid.UUID(bytes=device_uuid)),
            device_type=int(device_type) if isinstance(device_type, int) else -1,
            firmware_uuid=firmware_uuid.hex() if isinstance(firmware_uuid, bytes) else "",
        )

    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> WriteProof:
        objects: list[tuple[int, str]] = []
        if ca_pem:
            objects.append((TYPE_CA, ca_pem))
        if identity.private_key is None:
            if not self._device_key_pending:
                raise StationFault(
                    _("No key to install"),
                    _("The identity has no private key and the modem made none in this session."),
                    _("Call a technician: the pipeline must run keygen before installing a certificate."),
                )
            self._check_matches_csr(identity.certificate_pem)
            objects.append((TYPE_CERT, identity.certificate_pem))
        else:
            objects.append((TYPE_CERT, identity.certificate_pem))
            key = identity.private_key.reveal()
            try:
                objects.append((TYPE_KEY, key.decode("ascii")))
            except UnicodeDecodeError:
                raise StationFault(
                    _("Key not writable"),
                    _("The private key is not PEM text, which the modem needs."),
                    _("Call a technician: the identity's key must be PEM."),
                ) from None
        proof = self._write_objects(objects)
        self._device_key_pending = False
        return proof

    def install_certificate(self, cert_pem: str) -> WriteProof:
        if not self._device_key_pending:
            raise StationFault(
                _("No device key"),
                _(
                    "The modem has not made a key in this session, so there is nothing to install a certificate for."
                ),
                _("Call a technician: run keygen first."),
            )
        self._check_matches_csr(cert_pem)
        proof = self._write_objects([(TYPE_CERT, cert_pem)])
        self._device_key_pending = False
        return proof

    def keygen(self, common_name: str) -> str:
        if not _CN.fullmatch(common_name):
            raise StationFault(
                _("Name not usable"),
                _(
                    "The common name for the modem's key must be 1–64 letters, digits or : _ . @ - characters."
                ),
                _("Call a technician to fix the thing name template."),
            )
        self._ensure_session()
        command = f'AT%KEYGEN={self.sec_tag},2,0,"CN={common_name}"'
        self._touched.add(TYPE_KEY)  # from the moment it is sent, the tag's old key may be gone
        try:
            lines = self._offline_retry(lambda: self._command(command, idempotent=False, reply_bytes=1200))
        except _CmeError as err:
            raise self._cme(err, "make a key") from None
        found = [m for m in (_KEYGEN_LINE.fullmatch(line) for line in lines) if m]
        if len(found) != 1:
            raise DeviceGarbage(_("Its answer to KEYGEN has no certificate request."))
        try:
            der = b64url_decode(found[0].group(1))
        except (binascii.Error, ValueError):
            raise DeviceGarbage(_("Its certificate request is not base64url.")) from None
        pem = _csr_pem(der, common_name)
        self._device_key_pending = True
        self._csr_pem = pem
        return pem

    def go_online(self) -> None:
        """`AT+CFUN=1`: the modem goes online and the unit's application connects with the tag's credentials.

        The first step of verify-by-observing (see the module docstring): subscribe to `hello_topic(thing)`
        first, then call this, then wait for the hello.
        """
        self._ensure_session()
        self._command("AT+CFUN=1")

    def wipe(self) -> None:
        """Delete the credential types this session wrote or made in the tag (a not-found one is fine)."""
        if not self._touched:
            return
        self._ensure_session()
        for cred_type in sorted(self._touched):
            self._delete(cred_type)
        self._touched.clear()
        self._device_key_pending = False
        self._csr_pem = None

    def close(self) -> None:
        self._io.close()

    # ------------------------------------------------------------------------------------------ write
    def _write_objects(self, objects: list[tuple[int, str]]) -> WriteProof:
        commands = [(t, text, self._write_command(t, text)) for t, text in objects]
        self._ensure_session()
        started = time.perf_counter()
        before = (self.stats.frames, self.stats.retries, self.stats.wire_bytes)
        want = {t: sha256_hex(text) for t, text, _ in commands}
        try:
            pending = [t for t, _, _ in commands]
            for round_ in range(self.timing.proof_rounds):
                for t, _text, command in commands:
                    if t in pending:
                        self._touched.add(t)
                        self._write_one(t, command)
                pending = self._unproven(pending, want)
                if not pending:
                    break
                if round_ == self.timing.proof_rounds - 1:
                    self._abandon([t for t, _, _ in commands])
                    slots = ", ".join(SLOT_OF_TYPE.get(t, str(t)) for t in pending)
                    raise ProofMismatch(
                        slots,
                        _(
                            "The hash the modem lists differs from the station's after "
                            "{proof_rounds} writes; what was written has been deleted."
                        ).format(proof_rounds=self.timing.proof_rounds),
                    )
        except DeviceDisconnected:
            raise DeviceDisconnected(
                _(
                    "Its credentials in security tag {sec_tag} may be partly overwritten: "
                    "provision the unit again once it is back."
                ).format(sec_tag=self.sec_tag)
            ) from None
        proofs = tuple(
            ObjectProof(
                SLOT_OF_TYPE[t],
                len(text.encode("ascii")),
                want[t],
                PROOF_DEVICE_HASH if t == TYPE_KEY else PROOF_READ_BACK,
            )
            for t, text, _ in commands
        )
        frames, retries, wire = before
        return WriteProof(
            family=self.family,
            device_id=self._info.device_id if self._info else None,
            objects=proofs,
            duration_s=time.perf_counter() - started,
            frames=self.stats.frames - frames,
            retries=self.stats.retries - retries,
            wire_bytes=self.stats.wire_bytes - wire,
        )

    def _write_command(self, cred_type: int, text: str) -> str:
        what = SLOT_OF_TYPE.get(cred_type, "credential")
        if not text or '"' in text or not text.isascii():
            raise StationFault(
                _("Credential not writable"),
                _(
                    "The {what} is empty, not ASCII or contains a double quote, which an AT command cannot carry."
                ).format(what=what),
                _("Call a technician: the credential must be plain PEM."),
            )
        command = f'AT%CMNG=0,{self.sec_tag},{cred_type},"{text}"'
        if len(command) + 2 > MAX_COMMAND:
            raise StationFault(
                _("Credential too big for the modem"),
                _(
                    "The {what} makes an AT command of {command} bytes; the modem takes at most {MAX_COMMAND}."
                ).format(what=what, command=len(command) + 2, MAX_COMMAND=MAX_COMMAND),
                _(
                    "Call a technician: use a smaller key type (EC P-256) or a shorter CA chain for this product."
                ),
            )
        return command

    def _write_one(self, cred_type: int, command: str) -> None:
        try:
            self._offline_retry(lambda: self._command(command, reply_bytes=32))
        except _CmeError as err:
            raise self._cme(err, f"store the {SLOT_OF_TYPE.get(cred_type, 'credential')}") from None

    def _unproven(self, types: list[int], want: dict[int, str]) -> list[int]:
        """The types whose stored hash is not the station's, as the modem's listing says.

        Damage on the way cannot turn a hash into the right one, so one listing that shows it is proof. A
        wrong or missing hash may be a listing damaged on the way, not a damaged store, so it counts only
        when two listings agree on it (at most four listings): re-listing is cheaper than rewriting.
        """
        seen: dict[int, list[str | None]] = {t: [] for t in types}
        pending = list(types)
        for _attempt in range(4):
            listed = self._list()
            for t in pending:
                seen[t].append(listed.get(t))
            pending = [t for t in pending if want[t] not in seen[t]]
            if all(len(seen[t]) != len(set(seen[t])) for t in pending):
                break  # each remaining type was listed the same wrong way twice: it is stored wrong
        return pending

    def _list(self) -> dict[int, str]:
        """`AT%CMNG=1,<tag>` → {type: lowercase SHA-256} for this tag (damaged lines are simply absent)."""
        try:
            lines = self._command(f"AT%CMNG=1,{self.sec_tag}", reply_bytes=400)
        except _CmeError as err:
            raise self._cme(err, "list its credentials") from None
        found: dict[int, str] = {}
        for line in lines:
            match = _LIST_LINE.fullmatch(line)
            if match and int(match.group(1)) == self.sec_tag and match.group(3):
                found[int(match.group(2))] = match.group(3).lower()
        return found

    def _delete(self, cred_type: int) -> None:
        try:
            self._offline_retry(lambda: self._command(f"AT%CMNG=3,{self.sec_tag},{cred_type}"))
        except _CmeError as err:
            if err.code != CME_NOT_FOUND:  # already gone (or a retried delete that had worked): fine
                raise self._cme(err, "delete a credential") from None

    def _abandon(self, types: list[int]) -> None:
        """Best effort after a failed proof: delete what this call wrote; the proof failure is what counts."""
        for cred_type in types:
            try:
                self._delete(cred_type)
            except StationError:
                return

    def _check_matches_csr(self, cert_pem: str) -> None:
        check_certificate_fits_csr(cert_pem, self._csr_pem, device="modem")

    # --------------------------------------------------------------------------------------- session
    def _ensure_session(self) -> None:
        if self._info is None:
            self.identify()

    def _offline(self) -> None:
        try:
            self._command("AT+CFUN=4")
        except _CmeError as err:
            raise self._cme(err, "go offline") from None

    def _offline_retry(self, run: Any) -> list[str]:
        """Run a credential command; on 518 (modem online) take it offline once more and run it again."""
        try:
            result: list[str] = run()
            return result
        except _CmeError as err:
            if err.code != CME_ACTIVE:
                raise
        self._offline()
        result = run()
        return result

    def _imei(self) -> str:
        for _attempt in range(3):
            lines = self._command("AT+CGSN")
            candidates = [line for line in lines if _IMEI.fullmatch(line)]
            if len(candidates) == 1 and luhn_ok(candidates[0]):
                return candidates[0]
        raise DeviceGarbage(_("It did not give a valid IMEI."))

    def _firmware(self) -> str | None:
        lines = [line for line in self._command("AT+CGMR") if not _is_notification(line)]
        return lines[-1] if lines and _FIRMWARE.fullmatch(lines[-1]) else None

    # -------------------------------------------------------------------------------------- commands
    def _timeout(self, nbytes: int, allowance: float) -> float:
        t = self.timing
        wire = wire_time(nbytes, self.baudrate)
        service = 3.0 * self._srtt if self._srtt is not None else 0.0
        return (max(t.floor_s, t.wire_factor * wire) + service) * self._backoff + allowance

    def _command(self, command: str, *, idempotent: bool = True, reply_bytes: int = 64) -> list[str]:
        """Send one command; return its information lines on OK. Raises `_CmeError` on `+CME ERROR`."""
        data = command.encode("ascii") + b"\r\n"
        if len(data) > MAX_COMMAND:
            raise StationFault(
                _("Command too long"),
                _("An AT command does not fit the modem's buffer."),
                _("Call a technician."),
            )
        name = _command_name(command)
        allowance = next((v for k, v in _ALLOWANCE.items() if command.startswith(k)), 0.0)
        allowance *= self.timing.allowance_scale
        attempts = self.timing.attempts if self._contact else self.timing.first_contact_attempts
        if not idempotent:
            attempts = 1
        silent = garbage = errors = 0
        for attempt in range(attempts):
            with self._sent(data, retry=attempt > 0):
                sent = time.monotonic()
                deadline = sent + self._timeout(len(data) + reply_bytes, allowance)
                outcome, lines, code = self._await_final(deadline)
            if outcome in ("ok", "cme"):
                self._contact = True
                if attempt:
                    # An earlier send may still be answered late; that answer must not be taken for the
                    # next command's (AT answers carry no sequence number).
                    self._drain(self._timeout(len(data) + reply_bytes, 0.0))
                if attempt == 0:
                    self._backoff = 1
                    if allowance == 0.0:
                        sample = max(0.0, time.monotonic() - sent - wire_time(len(data) + 16, self.baudrate))
                        self._srtt = sample if self._srtt is None else 0.875 * self._srtt + 0.125 * sample
                if outcome == "cme":
                    raise _CmeError(name, code)
                return lines
            if outcome == "error":
                errors += 1  # not understood: a damaged byte, most likely; the same command again
            elif outcome == "garbage":
                garbage += 1
            else:
                silent += 1
                self._backoff = min(self._backoff * 2, self.timing.max_backoff)
        # The unit stopped talking sense: a later call (the pipeline's wipe) starts with a short first contact.
        self._contact = False
        self._backoff = 1
        if not idempotent and attempts == 1 and silent:
            raise DeviceNotAnswering(
                _("No answer to {name}; it is not repeated, as it would make a new key.").format(name=name)
            )
        if garbage and garbage >= silent:
            raise DeviceGarbage(
                _("No valid answer to {name} after {attempts} tries.").format(name=name, attempts=attempts)
            )
        if errors and not silent and not garbage:
            raise DeviceRejected(
                _("The modem does not understand {name} (ERROR): its firmware may lack the command.").format(
                    name=name
                ),
                _("Update the unit's modem firmware, or put it in the rework bin."),
            )
        raise DeviceNotAnswering()

    def _await_final(self, deadline: float) -> tuple[str, list[str], int]:
        """Read lines until a final result outside quotes, too much garbage, or the deadline.

        Returns (outcome, information lines, CME code); outcome: ok, cme, error, garbage, timeout.
        """
        lines: list[str] = []
        in_quotes = False
        bad_lines = 0
        start_in = self._io.bytes_in
        while True:
            raw = self._io.read_line(deadline)
            if raw is None:
                # Talk without a final result is garbage; nothing at all is silence.
                return ("garbage" if bad_lines or lines else "timeout"), lines, 0
            if raw is OVERFLOW:
                bad_lines += 1
            else:
                assert isinstance(raw, bytes)
                text = _printable(raw)
                if text is None:
                    bad_lines += 1
                else:
                    if not in_quotes:
                        stripped = text.strip()
                        if stripped == _FINAL_OK:
                            return "ok", lines, 0
                        if stripped == _FINAL_ERROR:
                            return "error", lines, 0
                        cme = _CME.fullmatch(stripped)
                        if cme:
                            return "cme", lines, int(cme.group(1))
                    if text.count('"') % 2:
                        in_quotes = not in_quotes
                    if text.strip():
                        lines.append(text.strip())
            if bad_lines > _GARBAGE_LINES or self._io.bytes_in - start_in > _GARBAGE_BYTES:
                return "garbage", lines, 0

    def _drain(self, quiet_s: float) -> None:
        """Discard input until the line has been quiet for `quiet_s` (bounded: at most 4 × `quiet_s`)."""
        end = time.monotonic() + 4 * quiet_s
        while True:
            now = time.monotonic()
            if now >= end:
                break
            raw = self._io.read_line(min(end, now + quiet_s))
            if raw is None:
                break
        self._io.discard_input()

    # ------------------------------------------------------------------------------------------ errors
    def _cme(self, err: _CmeError, what: str) -> StationError:
        code = err.code
        if code == CME_NOT_FOUND:
            return DeviceRejected(_("The modem could not {what}: not found (error 513).").format(what=what))
        if code == CME_NO_ACCESS:
            return DeviceRejected(
                _("The modem refused access to security tag {sec_tag} (error 514): it may be locked.").format(
                    sec_tag=self.sec_tag
                ),
                _(
                    "Put the unit in the rework bin; if every unit says this, call a technician to check sec_tag."
                ),
            )
        if code == CME_MEMORY_FULL:
            return DeviceRejected(
                _("The modem's credential storage is full (error 515)."),
                _("Put the unit in the rework bin to have unused credentials deleted."),
            )
        if code == CME_ACTIVE:
            return DeviceRejected(
                _(
                    "The modem stayed online and would not change credentials (error 518), even after AT+CFUN=4."
                ),
                _(_RESEAT),
            )
        if code == CME_EXISTS:
            return DeviceRejected(
                _("The modem could not {what}: it already exists (error 519).").format(what=what)
            )
        if code == CME_KEYGEN_FAILED:
            return DeviceRejected(_("The modem failed to generate a key (error 523)."), _(_RESEAT))
        return DeviceRejected(_("The modem could not {what} (error {code}).").format(what=what, code=code))


# ----------------------------------------------------------------------------------------------- helpers


def _command_name(command: str) -> str:
    """The command without parameters, for messages (`AT%CMNG=0`), never its content."""
    head = command.split('"', 1)[0]
    if head.startswith("AT%CMNG="):
        return head[:9]
    return head.split("=", 1)[0]


def _is_notification(line: str) -> bool:
    return line[:1] in ("+", "%", "#") and ":" in line


def _printable(raw: bytes) -> str | None:
    """The line as text if it is printable ASCII (tabs allowed), else None (noise)."""
    if not raw.isascii():
        return None
    text = raw.decode("ascii")
    if any((ch < " " and ch != "\t") or ch == "\x7f" for ch in text):
        return None
    return text


def _csr_pem(der: bytes, common_name: str) -> str:
    """Check the modem's CSR (parses, self-signature holds, CN as asked) and return it as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise DeviceGarbage(_("Its certificate request does not parse.")) from None
    if not csr.is_signature_valid:
        raise UnitFault(
            _("Bad certificate request"),
            _("The modem's certificate request is not signed by its own key."),
            _("Put the unit in the rework bin."),
        )
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [common_name]:
        raise DeviceGarbage(_("Its certificate request names a different unit."))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
