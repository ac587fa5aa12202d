"""The nRF91 modem behind an nRF Connect SDK AT host, simulated on a pty: what `flashers.nrf91` talks to.

`Nrf91Modem` is a device model for `flashers.simulators.pty.PtyDevice`. It follows Nordic's AT command reference
and the SDK's `lib/at_host` closely enough that Nordic's own host tools work against it unmodified (nrfcredstore
and nrfcloud-utils' device_credentials_installer, both run in tests/flashers/test_vendor_tools.py):

- the AT host: bytes collect in a 4096-byte buffer; CR/LF end a command only outside double quotes (so a PEM
  goes inside quotes as is); past the buffer, bytes are dropped (a command cut inside a quote leaves the host
  waiting for a closing quote that never fits: it stays wedged until the unit is restarted, as the real
  library does); termination CR LF by default (`term="cr"|"lf"|"crlf"`); no echo;
- answers: information lines, then `OK`, `ERROR` (syntax, unknown command) or, after `AT+CMEE=1`,
  `+CME ERROR: <n>` (with `AT+CMEE=0`, the power-on default, a plain `ERROR` instead);
- `AT+CFUN=<n>` / `AT+CFUN?` (power-on state 1: the application brought the modem online), `AT+CGSN[=1]`
  (IMEI with a valid Luhn digit), `AT+CGMR`, `AT+CGMM`, `AT+CGMI`, `AT%XMODEMUUID`, `AT+CMEE`;
- `AT%CMNG=<op>[,<sec_tag>[,<type>[,"<content>"]]]`: 0 write (overwrites), 1 list
  `%CMNG: <tag>,<type>,"<SHA-256 of the stored text, upper-case hex>"`, 2 read (not for private keys: 514),
  3 delete; 513 not found, 514 reserved tag (> 2147483647), 515 storage full, 518 write/delete/keygen while
  online (CFUN 1, 2 or 21);
- `AT%KEYGEN=<sec_tag>,2,<0|1>[,"<attributes>"]`: a P-256 key made "in the modem" replaces the tag's key, and
  the answer is `%KEYGEN: "<base64url(CSR DER)>.<base64url(COSE_Sign1)>"` (format 1: the public key DER
  instead of the CSR). The COSE part has a real modem's layout (COSE_Sign1, ES256, kid = identity key, payload
  [message type 9 CSR / 8 public key, device UUID, sec_tag, SHA-256 of the body, nonce]), so nrfcloud-utils'
  parser reads it; only its signing key is the simulator's own per-unit key, not a Nordic identity key.
- `AT%ATTESTTOKEN`: `%ATTESTTOKEN: "<base64url(token)>.<base64url(COSE_Sign1)>"`, the token a self-described
  CBOR array [1 (device identity message v1), device UUID (16 bytes), device type, firmware UUID (16 bytes)]
  and the COSE_Sign1 (ES256, kid = identity key) over it with the payload detached (nil), as nrfcloud-utils'
  `parse_attesttoken_output` reads it; the same per-unit signing key as %KEYGEN's.

Flash: a JSON file `nrf91-<imei>.json` under the state dir with the IMEI, firmware and credentials per tag
(rewritten atomically on each change, like the modem's NVM write per command), so a test can act as the
device afterwards and a restarted simulator keeps its credentials. The device-made key is in it too: the
simulator has to keep it somewhere; a real modem never lets it out.

Hello after provisioning (verify by observing): with `endpoint=(host, port)`, `AT+CFUN=1` from an offline
state makes the unit connect with the credentials in `hello_sec_tag` using the unmodified awsiotsdk (client id =
the certificate's CN, the thing name; server CA from `ca_file`, else the tag's CA) and publish
`{"imei", "certificate_id", "firmware"}` on `things/<thing>/hello` (QoS 1). Outcomes go to `hellos`.

Faults (`Faults`, also `station sim nrf91 --fault NAME[=VALUE]`): corrupt=P (a byte of a command or an answer
is damaged; never a quote or a line end, which the AT host could not recover from), lose=P (an answer is lost,
the command ran), disconnect=N (drop off the line when the Nth credential write arrives, before storing it),
slow=S, silent, garbage, flood, bad_store (keeps a damaged copy), keygen_fail (523), urc=P (an unsolicited
notification before an answer), seed.

This is a simulator: it may import awscrt/awsiot, but nothing in the station's core may import it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashers.nrf91 import DEFAULT_SEC_TAG, MAX_COMMAND, MAX_SEC_TAG, hello_topic, luhn_ok
from flashers.simulators._common import flood, line_fault, line_noise, parse_faults, write_json_atomic
from flashers.simulators.pty import Link

log = logging.getLogger(__name__)

FIRMWARE = "mfw_nrf9160_1.3.5"
MODEL = "nRF9160-SICA"
ACTIVE_MODES = (1, 2, 21)  # CFUN modes in which credentials cannot change
CFUN_MODES = (0, 1, 2, 4, 20, 21, 30, 31, 40, 41, 44)
DEFAULT_CAPACITY = 32 * 1024  # bytes of credential text the simulated modem keeps at most
_ATTRIBUTES = {"CN": "COMMON_NAME", "O": "ORGANIZATION_NAME", "OU": "ORGANIZATIONAL_UNIT_NAME",
               "L": "LOCALITY_NAME", "ST": "STATE_OR_PROVINCE_NAME", "C": "COUNTRY_NAME"}  # fmt: skip
_NOTIFICATIONS = ("+CEREG: 0", "%XMODEMSLEEP: 1,0", "+CSCON: 0", "%XSIM: 1")
_UNTOUCHABLE = b'"\r\n'  # bytes line noise in the simulator never hits (see the module docstring)
# The %KEYGEN attestation (what nrfcloud-utils' modem_credentials_parser reads): message types, kid, CBOR tags.
_MSG_PUBKEY = 8  # public key message v2 (<response_content> 1)
_MSG_CSR = 9  # CSR message v1 (<response_content> 0)
_KID_IDENTITY_KEY = -2
_MSG_IDENTITY = 1  # device identity message v1 (%ATTESTTOKEN)
_DEVICE_TYPE = 1  # nRF9160 SIAA in nrfcloud-utils' device type table
_CBOR_TAG_COSE_SIGN1 = b"\xd2"  # tag 18
_CBOR_SELF_DESCRIBED = b"\xd9\xd9\xf7"  # tag 55799


@dataclass
class Faults:
    """What goes wrong on this unit. Probabilities are per command; `None`/0/False means never."""

    corrupt: float = 0.0
    lose: float = 0.0
    disconnect: int | None = None
    slow: float = 0.0
    silent: bool = False
    garbage: bool = False
    flood: bool = False
    bad_store: bool = False
    keygen_fail: bool = False
    urc: float = 0.0
    seed: int | None = None

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Faults:
        """From `NAME[=VALUE]` strings, e.g. `corrupt=0.05`, `disconnect=2`, `silent`."""
        return parse_faults(cls, specs, probabilities=("corrupt", "lose", "urc"))


def new_imei(rng: random.Random | None = None) -> str:
    """A random 15-digit IMEI with a valid Luhn check digit."""
    rng = rng or random.Random(secrets.randbits(64))
    body = "35" + "".join(str(rng.randrange(10)) for _ in range(12))
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


def flash_path(state_dir: str | os.PathLike[str], imei: str) -> Path:
    return Path(state_dir) / f"nrf91-{imei}.json"


def sha256_upper(text: str) -> str:
    return hashlib.sha256(text.encode("latin-1")).hexdigest().upper()


class ModemFlash:
    """The modem's non-volatile credential store, as a JSON file rewritten atomically on every change."""

    def __init__(self, path: Path, imei: str, firmware: str) -> None:
        self.path = path
        self._data: dict[str, Any] = {
            "imei": imei,
            "firmware": firmware,
            "uuid": str(uuid.uuid4()),
            "credentials": {},
            "generation": 0,
        }
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            self._data.update({k: v for k, v in stored.items() if k in self._data})
        else:
            self._write()

    @property
    def uuid(self) -> str:
        return str(self._data["uuid"])

    def credentials(self) -> dict[int, dict[int, str]]:
        out: dict[int, dict[int, str]] = {}
        for tag, types in self._data["credentials"].items():
            out[int(tag)] = {int(t): str(v) for t, v in types.items()}
        return out

    def get(self, tag: int, cred_type: int) -> str | None:
        value = self._data["credentials"].get(str(tag), {}).get(str(cred_type))
        return value if isinstance(value, str) else None

    def put(self, tag: int, cred_type: int, text: str | None) -> None:
        creds = self._data["credentials"]
        types = creds.setdefault(str(tag), {})
        if text is None:
            types.pop(str(cred_type), None)
            if not types:
                creds.pop(str(tag), None)
        else:
            types[str(cred_type)] = text
        self._data["generation"] = int(self._data.get("generation") or 0) + 1
        self._write()

    def used_bytes(self) -> int:
        return sum(len(v) for types in self._data["credentials"].values() for v in types.values())

    def _write(self) -> None:
        write_json_atomic(self.path, self._data)


class _Error(Exception):
    """A command's final error: `code` None is a plain ERROR, else a CME code."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(code)
        self.code = code


class _Disconnected(Exception):
    pass


class Nrf91Modem:
    """The modem model. Thread-safe inspection (`live`, `flash`, `cfun`) for tests."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        imei: str | None = None,
        firmware: str = FIRMWARE,
        faults: Faults | None = None,
        endpoint: tuple[str, int] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        hello_sec_tag: int = DEFAULT_SEC_TAG,
        term: str = "crlf",
        capacity: int = DEFAULT_CAPACITY,
        initial_cfun: int = 1,
        max_command: int = MAX_COMMAND,
    ) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.imei = imei or new_imei(self._rng)
        if not (re.fullmatch(r"\d{15}", self.imei) and luhn_ok(self.imei)):
            raise ValueError("an IMEI is 15 digits with a valid Luhn check digit")
        if term not in ("cr", "lf", "crlf"):
            raise ValueError("term is cr, lf or crlf")
        self.firmware = firmware
        self.endpoint = endpoint
        self.ca_file = Path(ca_file) if ca_file else None
        if self.ca_file is not None and not self.ca_file.is_file():
            raise FileNotFoundError(f"no CA file {self.ca_file}")
        self.hello_sec_tag = hello_sec_tag
        self.term = term
        self.capacity = capacity
        self.cfun = initial_cfun
        self.cmee = 0
        self.flash = ModemFlash(flash_path(state_dir, self.imei), self.imei, firmware)
        self._buffer = bytearray()
        self._buffer_size = max_command  # the AT host's buffer, its NUL included
        self._in_quotes = False
        self._writes = 0
        self._flooding = False
        self._lock = threading.RLock()
        self._attestation_key: Any = None
        self.hellos: list[str] = []  # outcome of each hello: "sent" or why not
        self.hello_done = threading.Event()
        self.counters = {"commands": 0, "lost": 0, "corrupted": 0, "dropped_bytes": 0}

    # ---------------------------------------------------------------------------------------- inspection
    @property
    def flash_path(self) -> Path:
        return self.flash.path

    def live(self, sec_tag: int = DEFAULT_SEC_TAG) -> dict[str, str | None]:
        with self._lock:
            return {
                "ca": self.flash.get(sec_tag, 0),
                "cert": self.flash.get(sec_tag, 1),
                "key": self.flash.get(sec_tag, 2),
            }

    # ------------------------------------------------------------------------------------------- AT host
    def on_receive(self, data: bytes, link: Link) -> None:
        for byte in data:
            if link.stopping:
                return
            command = self._take(byte)
            if command is not None:
                self._dispatch(command, link)

    def _take(self, byte: int) -> bytes | None:
        """One byte into the AT host's buffer; a finished command when a terminator arrives outside quotes."""
        if byte in (0x08, 0x7F):  # backspace / DEL edit the buffer
            if self._buffer:
                self._buffer.pop()
            return None
        if not self._in_quotes:
            if byte == 0x00:
                return None  # the NUL terminator is not configured: ignored
            if (byte == 0x0D and self.term == "cr") or (byte == 0x0A and self.term == "lf"):
                return self._finish()
            if byte == 0x0A and self.term == "crlf" and self._buffer.endswith(b"\r"):
                return self._finish()
        if len(self._buffer) + 1 > self._buffer_size - 1:
            self.counters["dropped_bytes"] += 1  # buffer full: the real host logs and drops it, quotes too
            return None
        self._buffer.append(byte)
        if byte == 0x22:
            self._in_quotes = not self._in_quotes
        return None

    def _finish(self) -> bytes | None:
        command = bytes(self._buffer).rstrip(b"\r")
        self._buffer.clear()
        self._in_quotes = False
        if not any(b > 0x20 for b in command):
            return None  # nothing printable: dropped
        return command

    def _dispatch(self, command: bytes, link: Link) -> None:
        faults = self.faults
        if line_fault(
            link,
            faults,
            flood=self._flood,
            noise=lambda: self._noise(self._rng.randint(8, 80)) + b"\r\n" + self._noise(40) + b"\r\n",
        ):
            return
        if faults.corrupt and self._rng.random() < faults.corrupt:
            command = self._damage(command)
            self.counters["corrupted"] += 1
        self.counters["commands"] += 1
        if faults.slow and not link.sleep(faults.slow):
            return
        try:
            with self._lock:
                lines = self._execute(command.decode("latin-1"), link)
            answer = "".join(line + "\r\n" for line in lines) + "OK\r\n"
        except _Error as err:
            answer = "ERROR\r\n" if err.code is None or self.cmee == 0 else f"+CME ERROR: {err.code}\r\n"
        except _Disconnected:
            return
        self._answer(answer.encode("latin-1"), link)

    def _answer(self, answer: bytes, link: Link) -> None:
        faults = self.faults
        if faults.urc and self._rng.random() < faults.urc:
            link.send(self._rng.choice(_NOTIFICATIONS).encode() + b"\r\n")
        if faults.lose and self._rng.random() < faults.lose:
            self.counters["lost"] += 1
            return
        if faults.corrupt and self._rng.random() < faults.corrupt:
            answer = self._damage(answer)
            self.counters["corrupted"] += 1
        link.send(answer)

    # ------------------------------------------------------------------------------------------ commands
    def _execute(self, command: str, link: Link) -> list[str]:
        text = command.strip()
        if text[:2].upper() != "AT":
            raise _Error()
        body = text[2:]
        if not body:
            return []
        name, eq, params = body.partition("=")
        name = name.upper()
        if name.endswith("?"):
            return self._read_command(name[:-1])
        if eq and params == "?":
            return self._test_command(name)
        args = _split_params(params) if eq else []
        handlers = {
            "+CMEE": self._cmee,
            "+CFUN": self._cfun,
            "+CGSN": self._cgsn,
            "+CGMR": lambda a, lk: [self.firmware],
            "+CGMM": lambda a, lk: [MODEL],
            "+CGMI": lambda a, lk: ["Nordic Semiconductor ASA"],
            "%XMODEMUUID": lambda a, lk: [f"%XMODEMUUID: {self.flash.uuid}"],
            "%CMNG": self._cmng,
            "%KEYGEN": self._keygen,
            "%ATTESTTOKEN": self._attesttoken,
        }
        handler = handlers.get(name)
        if handler is None:
            raise _Error()
        result: list[str] = handler(args, link)
        return result

    def _read_command(self, name: str) -> list[str]:
        if name == "+CFUN":
            return [f"+CFUN: {self.cfun}"]
        if name == "+CMEE":
            return [f"+CMEE: {self.cmee}"]
        raise _Error()

    def _test_command(self, name: str) -> list[str]:
        if name == "+CFUN":
            return ["+CFUN: (0,1,4,20,21,30,31,40,41,44)"]
        if name == "+CMEE":
            return ["+CMEE: (0,1)"]
        raise _Error()

    def _cmee(self, args: list[_Param], link: Link) -> list[str]:
        if len(args) != 1 or args[0].value not in ("0", "1") or args[0].quoted:
            raise _Error()
        self.cmee = int(args[0].value)
        return []

    def _cfun(self, args: list[_Param], link: Link) -> list[str]:
        if len(args) not in (1, 2) or args[0].number() not in CFUN_MODES:
            raise _Error()
        mode = args[0].number()
        was = self.cfun
        self.cfun = mode
        if mode == 1 and was != 1 and self.endpoint is not None:
            self._start_hello(link)
        return []

    def _cgsn(self, args: list[_Param], link: Link) -> list[str]:
        if not args or args[0].value == "0":
            return [self.imei]
        if args[0].value == "1":
            return [f'+CGSN: "{self.imei}"']
        raise _Error()

    def _cmng(self, args: list[_Param], link: Link) -> list[str]:
        if not args or args[0].quoted:
            raise _Error()
        op = args[0].number()
        if op == 1:
            return self._cmng_list(args[1:])
        if op not in (0, 2, 3) or len(args) < 3:
            raise _Error()
        tag, cred_type = args[1].number(), args[2].number()
        if tag < 0 or not 0 <= cred_type <= 11:
            raise _Error()
        if op == 0:
            if len(args) < 4 or not args[3].quoted or not args[3].value:
                raise _Error()
            return self._cmng_write(tag, cred_type, args[3].value, link)
        if op == 2:
            if tag > MAX_SEC_TAG or cred_type == 2:
                raise _Error(514)
            stored = self.flash.get(tag, cred_type)
            if stored is None:
                raise _Error(513)
            return [f'%CMNG: {tag},{cred_type},"{sha256_upper(stored)}","{stored}"']
        # op 3: delete
        if tag > MAX_SEC_TAG:
            raise _Error(514)
        if self.cfun in ACTIVE_MODES:
            raise _Error(518)
        if self.flash.get(tag, cred_type) is None:
            raise _Error(513)
        self.flash.put(tag, cred_type, None)
        return []

    def _cmng_list(self, args: list[_Param]) -> list[str]:
        tag = args[0].number() if args else None
        cred_type = args[1].number() if len(args) > 1 else None
        lines = []
        for t, types in sorted(self.flash.credentials().items()):
            if tag is not None and t != tag:
                continue
            for ct, text in sorted(types.items()):
                if cred_type is None or ct == cred_type:
                    lines.append(f'%CMNG: {t},{ct},"{sha256_upper(text)}"')
        return lines

    def _cmng_write(self, tag: int, cred_type: int, content: str, link: Link) -> list[str]:
        if tag > MAX_SEC_TAG:
            raise _Error(514)
        if self.cfun in ACTIVE_MODES:
            raise _Error(518)
        self._writes += 1
        if self.faults.disconnect is not None and self._writes >= self.faults.disconnect:
            # Power lost / cable pulled as the write arrives: the NVM keeps what it had.
            link.disconnect()
            raise _Disconnected
        old = self.flash.get(tag, cred_type)
        if self.flash.used_bytes() - len(old or "") + len(content) > self.capacity:
            raise _Error(515)
        if self.faults.bad_store:
            middle = len(content) // 2
            content = content[:middle] + ("A" if content[middle] != "A" else "B") + content[middle + 1 :]
        self.flash.put(tag, cred_type, content)
        return []

    def _keygen(self, args: list[_Param], link: Link) -> list[str]:
        if len(args) < 3 or any(a.quoted for a in args[:3]):
            raise _Error()
        tag, key_type, form = args[0].number(), args[1].number(), args[2].number()
        if key_type != 2 or form not in (0, 1) or tag < 0:
            raise _Error()
        if tag > MAX_SEC_TAG:
            raise _Error(514)
        if self.cfun in ACTIVE_MODES:
            raise _Error(518)
        if self.faults.keygen_fail:
            raise _Error(523)
        subject = _subject(args[3].value if len(args) > 3 and args[3].quoted else f"CN={self.flash.uuid}")
        if subject is None:
            raise _Error()
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        old = self.flash.get(tag, 2)
        if self.flash.used_bytes() - len(old or "") + len(pem) > self.capacity:
            raise _Error(515)
        if form == 0:
            body = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(subject)
                .sign(key, hashes.SHA256())
                .public_bytes(serialization.Encoding.DER)
            )
        else:
            body = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        self.flash.put(tag, 2, pem)  # the new key replaces the tag's old one at once
        cose = self._cose_sign1(body, tag, _MSG_CSR if form == 0 else _MSG_PUBKEY)
        return [f'%KEYGEN: "{_b64url(body)}.{_b64url(cose)}"']

    def _attesttoken(self, args: list[_Param], link: Link) -> list[str]:
        """`AT%ATTESTTOKEN`: the device identity token and its COSE signature (payload detached)."""
        if args:
            raise _Error()
        token = _CBOR_SELF_DESCRIBED + _cbor(
            [_MSG_IDENTITY, uuid.UUID(self.flash.uuid).bytes, _DEVICE_TYPE, self._firmware_uuid()]
        )
        return [f'%ATTESTTOKEN: "{_b64url(token)}.{_b64url(self._cose_sign1(token, 0, 0, detached=True))}"']

    def _firmware_uuid(self) -> bytes:
        """A stable 16-byte id of the modem firmware (a real modem reports its firmware image's UUID)."""
        return hashlib.sha256(self.firmware.encode("utf-8")).digest()[:16]

    def _cose_sign1(self, body: bytes, sec_tag: int, message_type: int, *, detached: bool = False) -> bytes:
        """The attestation COSE_Sign1 (tag 18) laid out as a real modem's: protected {alg: ES256},
        unprotected {kid: the identity key}, payload a self-described CBOR array [message type, device UUID
        (16 bytes), CBOR-encoded sec_tag, SHA-256(body), 16-byte nonce], signature r||s over the COSE
        Sig_structure. Only the signing key is the simulator's own (per unit, not Nordic's identity key)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        if self._attestation_key is None:
            self._attestation_key = ec.generate_private_key(ec.SECP256R1())
        protected = _cbor({1: -7})
        if detached:  # %ATTESTTOKEN: the signature covers the token itself, carried outside the COSE object
            to_sign = _cbor(["Signature1", protected, b"", body])
            r, s = decode_dss_signature(self._attestation_key.sign(to_sign, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
            return _CBOR_TAG_COSE_SIGN1 + _cbor([protected, {4: _cbor(_KID_IDENTITY_KEY)}, None, signature])
        payload = _CBOR_SELF_DESCRIBED + _cbor(
            [
                message_type,
                uuid.UUID(self.flash.uuid).bytes,
                _cbor(sec_tag),
                hashlib.sha256(body).digest(),
                secrets.token_bytes(16),
            ]
        )
        to_sign = _cbor(["Signature1", protected, b"", payload])
        r, s = decode_dss_signature(self._attestation_key.sign(to_sign, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return _CBOR_TAG_COSE_SIGN1 + _cbor([protected, {4: _cbor(_KID_IDENTITY_KEY)}, payload, signature])

    # --------------------------------------------------------------------------------------------- hello
    def _start_hello(self, link: Link) -> None:
        creds = {t: self.flash.get(self.hello_sec_tag, t) for t in (0, 1, 2)}
        ca = self.ca_file.read_bytes() if self.ca_file is not None else None
        if ca is None and creds[0]:
            ca = (creds[0] or "").encode("ascii")
        endpoint = self.endpoint
        assert endpoint is not None
        thread = threading.Thread(
            target=self._hello,
            args=(endpoint, creds[1], creds[2], ca, link),
            name=f"nrf91-hello-{self.imei}",
            daemon=True,
        )
        thread.start()

    def _hello(
        self, endpoint: tuple[str, int], cert: str | None, key: str | None, ca: bytes | None, link: Link
    ) -> None:
        try:
            outcome = publish_hello(
                endpoint, cert, key, ca, imei=self.imei, firmware=self.firmware, link=link
            )
        except Exception as exc:  # a simulator bug must not go unnoticed, nor kill the line
            outcome = f"error {type(exc).__name__}"
        with self._lock:
            self.hellos.append(outcome)
        self.hello_done.set()

    # -------------------------------------------------------------------------------------------- faults
    def _damage(self, data: bytes) -> bytes:
        spots = [i for i, b in enumerate(data) if b not in _UNTOUCHABLE]
        if not spots:
            return data
        i = self._rng.choice(spots)
        replacement = data[i]
        while replacement == data[i] or replacement in _UNTOUCHABLE:
            replacement = self._rng.randrange(0x21, 0x7F)
        return data[:i] + bytes([replacement]) + data[i + 1 :]

    def _noise(self, n: int) -> bytes:
        return line_noise(self._rng, n)

    def _flood(self, link: Link) -> None:
        """Talk forever (until stopped): application log lines, binary noise, lines longer than any answer."""
        self._flooding = True

        def chunk(counter: int) -> bytes:
            if counter % 5 == 0:
                return self._noise(5000)
            return b"[00:00:%02d.%03d] <inf> app: OK %d\r\n" % (counter % 60, counter % 1000, counter)

        flood(link, chunk)


# ------------------------------------------------------------------------------------------------ params


@dataclass(frozen=True)
class _Param:
    value: str
    quoted: bool

    def number(self) -> int:
        if self.quoted or not self.value.isdigit():
            raise _Error()
        return int(self.value)


def _split_params(text: str) -> list[_Param]:
    """Comma-separated parameters; a double-quoted one may hold commas and line ends. Unbalanced → ERROR."""
    params: list[_Param] = []
    i = 0
    while True:
        if i < len(text) and text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise _Error()
            params.append(_Param(text[i + 1 : end], True))
            i = end + 1
            if i < len(text) and text[i] != ",":
                raise _Error()
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            token = text[i:end].strip()
            if '"' in token:
                raise _Error()
            params.append(_Param(token, False))
            i = end
        if i >= len(text):
            return params
        i += 1  # past the comma


def _subject(attributes: str) -> Any:
    """`CN=x,O=y` → an x509.Name, or None if an attribute is unknown or malformed."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = []
    for part in attributes.split(","):
        key, eq, value = part.partition("=")
        oid_name = _ATTRIBUTES.get(key.strip().upper())
        if not eq or oid_name is None or not value or len(value) > 64:
            return None
        names.append(x509.NameAttribute(getattr(NameOID, oid_name), value))
    return x509.Name(names)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _cbor(value: int | bytes | str | list[Any] | dict[int, Any] | None) -> bytes:
    """CBOR (RFC 8949, shortest heads) of the few types the attestation needs: ints, byte and text strings,
    arrays, maps with int keys (in the order given)."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if n < 1 << (8 * size):
                return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
        raise ValueError("CBOR integer too large")

    if value is None:
        return b"\xf6"  # null (a detached COSE payload)
    if isinstance(value, bool):
        raise TypeError("no booleans in the attestation")
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return head(3, len(raw)) + raw
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(_cbor(item) for item in value)
    if isinstance(value, dict):
        return head(5, len(value)) + b"".join(_cbor(k) + _cbor(v) for k, v in value.items())
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


# ------------------------------------------------------------------------------- the unit's own hello


def publish_hello(
    endpoint: tuple[str, int],
    cert: str | None,
    key: str | None,
    ca: bytes | None,
    *,
    imei: str,
    firmware: str,
    link: Link | None = None,
    timeout_s: float = 10.0,
) -> str:
    """Connect as the certificate's CN with mTLS (awsiotsdk, unmodified) and publish one hello; return
    "sent", or why not: nocreds, badcert, tls, rejected, timeout, unreachable."""
    import time
    from concurrent.futures import TimeoutError as FutureTimeout

    from awscrt import mqtt
    from awscrt.exceptions import AwsCrtError
    from awsiot import mqtt_connection_builder
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    if not cert or not key:
        return "nocreds"
    try:
        parsed = x509.load_pem_x509_certificate(cert.encode("ascii"))
        thing = str(parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    except (ValueError, IndexError, UnicodeEncodeError):
        return "badcert"
    certificate_id = hashlib.sha256(parsed.public_bytes(serialization.Encoding.DER)).hexdigest()
    payload = json.dumps({"imei": imei, "certificate_id": certificate_id, "firmware": firmware})
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    host, port = endpoint
    try:
        connection = mqtt_connection_builder.mtls_from_bytes(
            endpoint=host,
            port=port,
            cert_bytes=cert.encode("ascii"),
            pri_key_bytes=key.encode("ascii"),
            ca_bytes=ca,
            client_id=thing,
            clean_session=True,
            keep_alive_secs=30,
        )
    except (AwsCrtError, ValueError, RuntimeError):
        return "tls"
    connected = False
    try:
        connection.connect().result(left())
        connected = True
        if link is not None and link.stopping:
            return "stopped"
        future, _ = connection.publish(hello_topic(thing), payload, mqtt.QoS.AT_LEAST_ONCE)
        future.result(left())
        return "sent"
    except FutureTimeout:
        return "timeout"
    except AwsCrtError as exc:
        if "HANGUP" in exc.name or "REFUSED" in exc.name or "NOT_AUTHORIZED" in exc.name:
            return "rejected"
        return "tls" if "TLS" in exc.name else "unreachable"
    except Exception as exc:  # awscrt reports a refused CONNACK as a bare Exception(ConnectReturnCode)
        if exc.args and isinstance(exc.args[0], mqtt.ConnectReturnCode):
            return "rejected"
        return "unreachable"
    finally:
        if connected:
            with contextlib.suppress(Exception):
                connection.disconnect().result(2.0)


# -------------------------------------------------------------------------------------- `station sim`


def add_sim_arguments(parser: Any) -> None:
    """The options of `station sim nrf91` (argparse)."""
    parser.add_argument(
        "--baud", type=int, default=115200, help="baud rate to pace the line at (default 115200)"
    )
    parser.add_argument("--no-pace", action="store_true", help="answer at pty speed instead of wire speed")
    parser.add_argument("--state-dir", default="sim-state", help="where the modem's flash file lives")
    parser.add_argument("--imei", help="the unit's IMEI (default: a random valid one)")
    parser.add_argument("--firmware", default=FIRMWARE, help=f"modem firmware (default {FIRMWARE})")
    parser.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="connect there and publish a hello after AT+CFUN=1 (the lab's)",
    )
    parser.add_argument("--ca-file", help="server CA (PEM) for that connection (the lab's CA)")
    parser.add_argument(
        "--sec-tag", type=int, default=DEFAULT_SEC_TAG, help="the tag the hello connects with"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="inject a fault (repeatable): corrupt=P lose=P disconnect=N slow=S silent garbage flood "
        "bad_store keygen_fail urc=P seed=N",
    )


def build_sim(args: Any) -> tuple[Any, str]:
    """The simulated unit on a new pty (not started) and its flash file, from `add_sim_arguments` options.
    Raises ValueError for a bad option, OSError for an unusable state dir."""
    from flashers.simulators.pty import PtyDevice

    faults = Faults.parse(args.fault)
    if args.baud <= 0:
        raise ValueError(f"{args.baud} is not a baud rate")
    endpoint: tuple[str, int] | None = None
    if args.endpoint:
        host, sep, port = str(args.endpoint).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--endpoint {args.endpoint!r} is not HOST:PORT")
        endpoint = (host, int(port))
    model = Nrf91Modem(
        args.state_dir,
        imei=args.imei,
        firmware=args.firmware,
        faults=faults,
        endpoint=endpoint,
        ca_file=args.ca_file,
        hello_sec_tag=args.sec_tag,
    )
    return PtyDevice(model, baudrate=args.baud, pace=not args.no_pace), str(model.flash_path)
