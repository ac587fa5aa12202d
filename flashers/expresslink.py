"""AWS IoT ExpressLink: the AT codec and the host side (`ExpressLinkFlasher`).

An ExpressLink module keeps its own key and "birth" certificate in its secure element and never gives the key
out. The station reads the module's ThingName and certificate, registers the certificate (without CA) in the
target account, points the module at the target's endpoint and has the module prove its own MQTT round trip.
The family therefore declares `reads_certificate` and `device_verify`, and neither writes nor makes keys.

Wire format (AWS IoT ExpressLink Programmer's Guide, §4): 115200 8N1, no echo, no flow control. A command is
``AT+<command>[#][ <parameter>]`` ended by CR or LF (this host sends CR LF, as the vendors' own libraries do);
every response line ends in CR LF. A reply is ``OK[n] [detail]`` (n more lines follow) or ``ERR<n> [detail]``.
Parameters and details escape LF as ``\\A``, CR as ``\\D`` and a backslash as ``\\\\``. Commands used here::

    AT                          → OK
    AT+CONF? ThingName          → OK <ThingName>           (the device id)
    AT+CONF? Version / About    → OK <text>                (firmware)
    AT+CONF? Certificate pem    → OK<n> pem + n PEM lines  (older drafts: OK pem + lines up to -----END)
    AT+CONF? Endpoint           → OK <host>
    AT+CONF Endpoint=<host>     → OK
    AT+CONNECT                  → OK 1 CONNECTED | ERR14 <hint> UNABLE TO CONNECT [text]
    AT+CONNECT?                 → OK <0|1> <0|1> <DISCONNECTED|CONNECTED> <STAGING|CUSTOMER>
    AT+CONF Topic1=<topic>      → OK
    AT+SUBSCRIBE1               → OK            (event 8 SUBACK or 9 SUBNACK follows)
    AT+EVENT?                   → OK <id> <param> <mnemonic> [detail] | OK
    AT+SEND1 <message>          → OK
    AT+GET1                     → OK <message> | OK
    AT+DISCONNECT               → OK 0 DISCONNECTED        (event 3 CONLOST follows)
    AT+CONF HOTAcertificate=<pem, escaped>  → OK      (only when the product names one)
    AT+CONF? HOTAcertificate pem            → OK<n> pem + n PEM lines (read back, must be equal)

HOTA (host OTA) certificate: the guide has the OEM set `HOTAcertificate` at the end of the assembly line, so
the module can check the signature of host firmware updates. When the product names one
(`[products.NAME.options] hota_certificate = "hota.pem"`, a path relative to the station's working folder),
the station writes it after a successful check and reads it back; a module that keeps another one FAILs.

Long connects: the guide lets a CONNECT take up to 120 s, so the station waits that long by default
(`connect_timeout_s` option, at most 120). `ERR25 NOT ALLOWED` to CONNECT means one is already in progress
(an earlier, timed-out CONNECT, or `CONNECT!`): the station waits and asks again within its deadline. CONLOST
(event 3) during the check is a lost connection; the CONLOST raised by the station's own DISCONNECT is
drained before the next check.

Ports and trust: a real module always connects on 8883 (or 443 with ALPN, its own choice); the guide has no
setting for the port. `device_verify` therefore only sets the endpoint host; the lab's ExpressLink simulator
takes the lab port from its own configuration (`port` option / `station sim expresslink --port`). Likewise the
station does not write `RootCA`: a real module carries Amazon's root CA; the lab simulator is given the lab's
CA (`ca_file` / `--ca-file`), as if it were in its firmware.

"Wipe" for a module whose key cannot be removed: disconnect it and point it back at the endpoint it had
before this session (normally the vendor's staging account), so a failed unit never stays pointed at the
customer account. The rollback in AWS (the registered certificate deactivated and deleted) is what takes the
unit's access away; the birth identity itself stays, as it must. A failed `device_verify` does the same
restore by itself before raising, because the pipeline does not call `wipe` for units it wrote nothing to.

Fault rules: every command has a deadline (defaults far below the guide's 120 s, see `Timing`); a device that
stays silent is `DeviceNotAnswering`, one that answers lines that are not replies (or floods the line) is
`DeviceGarbage` after a bounded number of them; every `ERRn` and every ERR14 hint becomes an operator message.
What a hint means for the outcome (see `connect_error`): hint 5 (MQTT login refused) right after the station
registered that very certificate in that very account is a target problem (endpoint of another account or
region, policy or thing name), so it is a `StationFault`; a unit whose module does not use the certificate it
reports would look the same, which the message says.

This module must not import boto3 or awscrt, and must not put device bytes into an error message.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from flashers.base import (
    Capabilities,
    DeviceCheckUnreachable,
    DeviceDisconnected,
    DeviceGarbage,
    DeviceInfo,
    DeviceNotAnswering,
    DeviceRejected,
    NotSupported,
    WriteProof,
)
from flashers.serialio import OVERFLOW, LineFlasher, wire_time
from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.model import Identity

log = logging.getLogger(__name__)

FAMILY: Final = "expresslink"
BAUDRATE: Final = 115200  # fixed by the guide: not configurable on a module
STANDARD_PORT: Final = 8883
MAX_COMMAND: Final = 9 * 1024  # the guide's command buffer; longer commands get ERR1 OVERFLOW
MAX_TIMEOUT_S: Final = 120.0  # the guide: no command takes longer than this
MAX_TOPIC: Final = 16  # the guide requires at least 16 topic slots
VERIFY_TOPIC_INDEX: Final = 1  # Topic keys are not persistent, so using slot 1 leaves nothing behind

# Error codes (guide, Table 1). Unknown codes are shown by number.
ERR_OVERFLOW: Final = 1
ERR_PARSE: Final = 2
ERR_COMMAND_NOT_FOUND: Final = 3
ERR_PARAMETER: Final = 4
ERR_INVALID_ESCAPE: Final = 5
ERR_NO_CONNECTION: Final = 6
ERR_OUT_OF_RANGE: Final = 7
ERR_PARAMETER_UNDEFINED: Final = 8
ERR_INVALID_KEY_LENGTH: Final = 9
ERR_INVALID_KEY_NAME: Final = 10
ERR_UNKNOWN_KEY: Final = 11
ERR_KEY_READONLY: Final = 12
ERR_KEY_WRITEONLY: Final = 13
ERR_UNABLE_TO_CONNECT: Final = 14
ERR_ACTIVE_CONNECTION: Final = 18
ERR_INVALID_QUERY: Final = 22
ERR_NOT_ALLOWED: Final = 25
ERR_INVALID_CERTIFICATE: Final = 26
ERR_CONFIGURATION: Final = 28
ERROR_NAMES: Final = {
    ERR_OVERFLOW: "OVERFLOW",
    ERR_PARSE: "PARSE ERROR",
    ERR_COMMAND_NOT_FOUND: "COMMAND NOT FOUND",
    ERR_PARAMETER: "PARAMETER ERROR",
    ERR_INVALID_ESCAPE: "INVALID ESCAPE",
    ERR_NO_CONNECTION: "NO CONNECTION",
    ERR_OUT_OF_RANGE: "OUT OF RANGE",
    ERR_PARAMETER_UNDEFINED: "PARAMETER UNDEFINED",
    ERR_INVALID_KEY_LENGTH: "INVALID KEY LENGTH",
    ERR_INVALID_KEY_NAME: "INVALID KEY NAME",
    ERR_UNKNOWN_KEY: "UNKNOWN KEY",
    ERR_KEY_READONLY: "KEY READONLY",
    ERR_KEY_WRITEONLY: "KEY WRITEONLY",
    ERR_UNABLE_TO_CONNECT: "UNABLE TO CONNECT",
    ERR_ACTIVE_CONNECTION: "ACTIVE CONNECTION",
    ERR_INVALID_QUERY: "INVALID QUERY",
    ERR_NOT_ALLOWED: "NOT ALLOWED",
    ERR_INVALID_CERTIFICATE: "INVALID CERTIFICATE",
    ERR_CONFIGURATION: "CONFIGURATION ERROR",
}

# ERR14 connection hints.
HINT_BACKOFF: Final = 1  # CONNECT retried too soon after a failure: the module imposes a back-off
HINT_NETWORK: Final = 2  # no network (Wi-Fi / cellular)
HINT_ENDPOINT: Final = 3  # the endpoint does not resolve or does not answer
HINT_TLS: Final = 4  # TLS could not be completed
HINT_LOGIN: Final = 5  # the MQTT login was refused: certificate not registered/active there, or policy
HINT_SERVICES: Final = 6  # connected, but the AWS IoT services the module needs (Jobs) are not allowed
HINT_NAMES: Final = {
    HINT_BACKOFF: "back-off",
    HINT_NETWORK: "network",
    HINT_ENDPOINT: "endpoint",
    HINT_TLS: "TLS",
    HINT_LOGIN: "MQTT login",
    HINT_SERVICES: "AWS services",
}

# Events (guide, event handling): `AT+EVENT?` → OK <id> <param> <mnemonic> [detail].
EVENT_MSG: Final = 1
EVENT_STARTUP: Final = 2
EVENT_CONLOST: Final = 3
EVENT_OVERRUN: Final = 4
EVENT_OTA: Final = 5
EVENT_CONNECT: Final = 6
EVENT_CONFMODE: Final = 7
EVENT_SUBACK: Final = 8
EVENT_SUBNACK: Final = 9
EVENT_NAMES: Final = {
    EVENT_MSG: "MSG",
    EVENT_STARTUP: "STARTUP",
    EVENT_CONLOST: "CONLOST",
    EVENT_OVERRUN: "OVERRUN",
    EVENT_OTA: "OTA",
    EVENT_CONNECT: "CONNECT",
    EVENT_CONFMODE: "CONFMODE",
    EVENT_SUBACK: "SUBACK",
    EVENT_SUBNACK: "SUBNACK",
}

_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,126}[A-Za-z0-9])?")
_THING = re.compile(r"[A-Za-z0-9:_-]{1,128}")  # AWS IoT thing names
_OK = re.compile(r"OK(\d{0,4})(?: (.*))?")
_ERR = re.compile(r"ERR(\d{1,4})(?: (.*))?")
_PEM_LINE = re.compile(r"[A-Za-z0-9+/=]{1,76}")
MAX_CERT_LINES: Final = 256  # a ≥4 KB certificate buffer is ~70 PEM lines: anything far beyond is garbage

# ----------------------------------------------------------------------------------------------------------
# Codec (shared with the simulator)


class EscapeError(ValueError):
    """A backslash not followed by A, D or another backslash (the module answers ERR5 INVALID ESCAPE)."""


def escape(text: str) -> str:
    """ExpressLink escaping for parameters and response details: backslash first, then CR and LF."""
    return text.replace("\\", "\\\\").replace("\r", "\\D").replace("\n", "\\A")


def unescape(text: str) -> str:
    """Undo `escape`, left to right (so an escaped backslash before an `A` stays a backslash and an `A`)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = text[i + 1] if i + 1 < len(text) else ""
        if code == "A":
            out.append("\n")
        elif code == "D":
            out.append("\r")
        elif code == "\\":
            out.append("\\")
        else:
            raise EscapeError("invalid escape sequence")
        i += 2
    return "".join(out)


@dataclass(frozen=True)
class Reply:
    """One response: `OK[n] [detail]` (ok, n more lines) or `ERR<code> [detail]`. `detail` is still escaped."""

    ok: bool
    detail: str = ""
    count: int = 0  # additional lines announced by OK<n>
    code: int = 0  # error code of ERR<code>
    lines: tuple[str, ...] = ()  # the additional lines, once read


def parse_reply(line: str) -> Reply | None:
    """A response line as a `Reply`, or None when the line is not a reply at all."""
    match = _OK.fullmatch(line)
    if match:
        return Reply(True, match.group(2) or "", int(match.group(1) or 0))
    match = _ERR.fullmatch(line)
    if match:
        return Reply(False, match.group(2) or "", code=int(match.group(1)))
    return None


def format_reply(reply: Reply) -> str:
    """The wire form of a reply's first line (the simulator's side of `parse_reply`)."""
    head = f"OK{reply.count or ''}" if reply.ok else f"ERR{reply.code}"
    return f"{head} {reply.detail}" if reply.detail else head


@dataclass(frozen=True)
class Event:
    """One entry of the module's event queue."""

    id: int
    param: int
    mnemonic: str
    detail: str = ""


def parse_event(detail: str) -> Event | None:
    """`<id> <param> <mnemonic> [detail]` from an `AT+EVENT?` reply; None when it is not one."""
    parts = detail.split(" ", 3)
    if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit() or not parts[2]:
        return None
    return Event(int(parts[0]), int(parts[1]), parts[2], parts[3] if len(parts) > 3 else "")


@dataclass(frozen=True)
class ConnectState:
    """What `AT+CONNECT?` says: connected or not, and whether the endpoint is the customer's (onboarded)."""

    connected: bool
    customer: bool


def parse_connect_state(detail: str) -> ConnectState | None:
    parts = detail.split()
    if len(parts) < 4 or parts[0] not in ("0", "1") or parts[1] not in ("0", "1"):
        return None
    connected, customer = parts[0] == "1", parts[1] == "1"
    if parts[2] != ("CONNECTED" if connected else "DISCONNECTED"):
        return None
    if parts[3] != ("CUSTOMER" if customer else "STAGING"):
        return None
    return ConnectState(connected, customer)


def connect_hint(detail: str) -> int | None:
    """The hint of an `ERR14 <hint> UNABLE TO CONNECT [text]` detail."""
    head = detail.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


# ----------------------------------------------------------------------------------------------------------
# Operator messages

_REWORK = N_("Put the unit in the rework bin.")
_RESEAT = N_(
    "Reseat the unit in the jig, check its power, and try again; if it fails again, put it in the rework bin."
)
_FIRMWARE = N_("Update the module's firmware, or put the unit in the rework bin.")


class DeviceLoginRefused(StationFault):
    """ERR14 5: the module reached the endpoint but AWS IoT refused its MQTT login.

    The station registered the module's own certificate in the target a moment earlier, so the usual causes
    are the target's: an endpoint of another account or region, a policy that does not let the module's
    client id (its ThingName) connect, or a thing not named as the ThingName. Hence a StationFault. A module
    that authenticates with a different certificate than the one it reports would fail the same way; the
    next action covers that rare case.
    """

    def __init__(self, host: str, thing_name: str | None) -> None:
        client = f" as {thing_name}" if thing_name else ""
        super().__init__(
            _("Device login refused"),
            _(
                "The module reached {host}, but AWS IoT refused its MQTT login{client} (ERR14 5) although the "
                "station has just registered its certificate: the endpoint may belong to another account or "
                "region than the target, or the policy or thing name does not let it connect."
            ).format(host=host, client=client),
            _(
                "Call a technician to check the target's endpoint, account and policy; if only this unit fails "
                "like this, put it in the rework bin."
            ),
        )


class DeviceConnectThrottled(StationFault):
    """ERR14 1 that outlasted the verify's deadline: the module's back-off after an earlier failed attempt."""

    def __init__(self, host: str) -> None:
        super().__init__(
            _("Device connection on hold"),
            _(
                "The module kept refusing to connect to {host} because of its back-off (ERR14 1): it was asked to "
                "connect again too soon after a failed attempt."
            ).format(host=host),
            _("Wait a minute and scan the unit again; if it keeps happening, call a technician."),
        )


class DeviceCheckDenied(StationFault):
    """The module connected, but the target's policy stopped the check (subscribe, publish or services)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            _("Device check not allowed"), message, _("Call a technician to check the target's policy.")
        )


def connect_error(hint: int | None, host: str, thing_name: str | None = None) -> StationError:
    """The operator error for `ERR14 <hint> UNABLE TO CONNECT` while connecting to `host`."""
    if hint == HINT_BACKOFF:
        return DeviceConnectThrottled(host)
    if hint == HINT_NETWORK:
        return DeviceCheckUnreachable(
            _(
                "The module could not reach the network (ERR14 2). If other units connect from this jig, this "
                "unit's radio may be faulty."
            )
        )
    if hint == HINT_ENDPOINT:
        return DeviceCheckUnreachable(
            _(
                "The module could not reach the endpoint {host} (ERR14 3): the name does not resolve or the "
                "host does not answer."
            ).format(host=host)
        )
    if hint == HINT_TLS:
        return DeviceCheckUnreachable(
            _(
                "The module could not complete TLS with {host} (ERR14 4): it does not trust the server's "
                "certificate, its clock is wrong, or the endpoint refused its certificate in the handshake."
            ).format(host=host)
        )
    if hint == HINT_LOGIN:
        return DeviceLoginRefused(host, thing_name)
    if hint == HINT_SERVICES:
        return DeviceCheckDenied(
            _(
                "The module connected to {host} but may not use the AWS IoT services it needs (ERR14 6): the "
                "policy does not allow them (for example Jobs)."
            ).format(host=host)
        )
    shown = "?" if hint is None else str(hint)
    return DeviceCheckUnreachable(
        _("The module could not connect to {host} (ERR14 {shown}).").format(host=host, shown=shown)
    )


def command_error(command: str, code: int) -> StationError:
    """The operator error for an `ERR<code>` reply to `command` (ERR14 has `connect_error`)."""
    name = ERROR_NAMES.get(code, "")
    what = f"{command} (ERR{code}{' ' + name if name else ''})"
    if code in (
        ERR_PARSE,
        ERR_COMMAND_NOT_FOUND,
        ERR_PARAMETER,
        ERR_INVALID_ESCAPE,
        ERR_INVALID_KEY_LENGTH,
        ERR_INVALID_KEY_NAME,
        ERR_UNKNOWN_KEY,
        ERR_INVALID_QUERY,
    ):
        return DeviceRejected(
            _(
                "The module does not understand {what}: it may not be an ExpressLink module, or its firmware "
                "is too old."
            ).format(what=what),
            _(_FIRMWARE),
        )
    if code == ERR_OVERFLOW:
        return DeviceRejected(
            _("The module's command buffer overflowed on {what}.").format(what=what), _(_FIRMWARE)
        )
    if code == ERR_NO_CONNECTION:
        return DeviceCheckUnreachable(_("The module lost its connection during {what}.").format(what=what))
    if code in (ERR_OUT_OF_RANGE, ERR_PARAMETER_UNDEFINED):
        return DeviceRejected(
            _(
                "The module refused the topic in {what}: it does not offer the topics ExpressLink requires."
            ).format(what=what),
            _(_FIRMWARE),
        )
    if code == ERR_KEY_READONLY:
        return DeviceRejected(
            _(
                "The module will not change a setting the station needs ({what}): its vendor may have locked it."
            ).format(what=what)
        )
    if code == ERR_KEY_WRITEONLY:
        return DeviceRejected(
            _("The module will not reveal a setting the station needs ({what}).").format(what=what)
        )
    if code == ERR_ACTIVE_CONNECTION:
        return DeviceRejected(
            _("The module refused {what} because it is still connected.").format(what=what), _(_RESEAT)
        )
    if code == ERR_INVALID_CERTIFICATE:
        return UnitFault(
            _("Device certificate unusable"),
            _("The module reports its certificate as invalid ({what}).").format(what=what),
            _(_REWORK),
        )
    if code == ERR_CONFIGURATION:
        return StationFault(
            _("Module not configured"),
            _(
                "The module says its configuration is incomplete ({what}), for example the line's network "
                "name and passphrase were never set."
            ).format(what=what),
            _("Call a technician to check the jig's network settings for the module."),
        )
    if code == ERR_NOT_ALLOWED:
        return DeviceRejected(
            _("The module does not allow {what} in its current state.").format(what=what), _(_RESEAT)
        )
    return DeviceRejected(_("The module refused {what}.").format(what=what))


# ----------------------------------------------------------------------------------------------------------
# Host side


@dataclass(frozen=True)
class Timing:
    """Deadlines and pacing. Every command is bounded; defaults are far below the guide's 120 s."""

    command_s: float = 1.0  # reply to an ordinary command (a module answers these in milliseconds)
    connect_s: float = MAX_TIMEOUT_S  # reply to AT+CONNECT: the guide allows a module up to 120 s
    attempts: int = 2  # sends of an idempotent command (queries, settings) before giving up
    poll_s: float = 0.05  # between AT+EVENT? / AT+GET polls
    backoff_wait_s: float = 1.0  # first wait after ERR14 1; doubles each time, within the verify's deadline
    login_retries: int = 1  # ERR14 5 right after registration: AWS may need a moment, so retry this often
    login_retry_wait_s: float = 1.0
    max_junk: int = 8  # lines that are not replies before the device counts as answering garbage
    write_timeout_s: float = 2.0


QUICK = Timing(command_s=0.3, backoff_wait_s=0.2, login_retry_wait_s=0.2)  # for tests on a pty


class _Timeout(Exception):
    """No reply before the deadline (internal: each caller decides what that means)."""

    def __init__(self, junk: int) -> None:
        super().__init__("timeout")
        self.junk = junk


class ExpressLinkFlasher(LineFlasher[Timing]):
    """Host side of an AWS IoT ExpressLink module on one port (hardware path or any pyserial URL)."""

    family = FAMILY
    capabilities = Capabilities(
        writes_key=False, device_keygen=False, device_verify=True, reads_certificate=True
    )

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = BAUDRATE,
        timing: Timing | None = None,
        exclusive: bool = True,
        hota_certificate: str | None = None,
        connect_timeout_s: float | str | None = None,
    ) -> None:
        timing = timing or Timing()
        if connect_timeout_s is not None:
            timing = replace(timing, connect_s=_connect_timeout(connect_timeout_s))
        self.hota_pem = _load_hota_certificate(hota_certificate) if hota_certificate else None
        super().__init__(
            port,
            baudrate=baudrate,
            timing=timing,
            exclusive=exclusive,
            # Room for a full command's worth of reply (an escaped certificate on one line); a flood still
            # costs at most this much memory per line.
            max_line=MAX_COMMAND + 1024,
        )
        self.about: str | None = None
        self._stale = False  # a reply may still be on its way (a command timed out): resync before the next
        self._original_endpoint: str | None = None  # the endpoint before this session changed it

    # ------------------------------------------------------------------------------------------ public
    def identify(self) -> DeviceInfo:
        self._probe()
        thing = self._conf_get("ThingName")
        if not _THING.fullmatch(thing):
            raise UnitFault(
                _("Device name not usable"),
                _("The module's ThingName is empty or not a valid AWS IoT thing name."),
                _(_REWORK),
            )
        version = self._conf_get("Version")
        about = self._conf_get("About", optional=True)
        self.about = about or None
        firmware = " ".join(part for part in (about, version) if part) or None
        self._info = DeviceInfo(device_id=thing, firmware=firmware, family=self.family)
        return self._info

    def read_unit_id(self) -> str | None:
        # The ThingName alone (identify also reads the version and the about text).
        self._probe()
        thing = self._conf_get("ThingName")
        return thing if _THING.fullmatch(thing) else None

    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> WriteProof:
        raise NotSupported(self.family, _("store a key made by the station (the module keeps its own)"))

    def read_certificate(self) -> str:
        self._ensure_contact()
        reply = self._command("CONF? Certificate pem", attempts=self.timing.attempts, multiline=True)
        if not reply.ok:
            raise command_error("AT+CONF? Certificate", reply.code)
        detail = reply.detail.strip()
        if reply.count:
            lines = list(reply.lines)
        elif detail == "pem":
            lines = self._read_pem_to_end()
        elif detail.startswith("-----BEGIN"):
            try:
                lines = unescape(detail).splitlines()
            except EscapeError:
                raise DeviceGarbage(_("Its certificate has a broken escape sequence.")) from None
        else:
            raise DeviceGarbage(_("Its answer to AT+CONF? Certificate is not a certificate."))
        return _certificate_from_lines(lines)

    def connect_state(self) -> ConnectState:
        """`AT+CONNECT?`: whether the module is connected, and whether it is on a customer endpoint."""
        self._ensure_contact()
        reply = self._command("CONNECT?", attempts=self.timing.attempts)
        if not reply.ok:
            raise command_error("AT+CONNECT?", reply.code)
        state = parse_connect_state(reply.detail)
        if state is None:
            raise DeviceGarbage(_("Its answer to AT+CONNECT? is malformed."))
        return state

    def endpoint(self) -> str:
        """The endpoint the module is configured for now (`AT+CONF? Endpoint`)."""
        self._ensure_contact()
        return self._conf_get("Endpoint")

    def set_endpoint(self, host: str) -> None:
        """Point the module at `host` (`AT+CONF Endpoint=`), remembering what it had for `wipe`.

        The module is disconnected first (a module may refuse to change its endpoint while connected), and the
        new value is read back. The port cannot be set: see the module docstring.
        """
        if not _HOST.fullmatch(host):
            raise StationFault(
                _("Endpoint not usable"),
                _("The target's endpoint is not a host name an ExpressLink module can take."),
                _("Call a technician to fix the target's endpoint."),
            )
        self._ensure_contact()
        if self.connect_state().connected:
            self._disconnect()
        current = self._conf_get("Endpoint")
        if self._original_endpoint is None:
            self._original_endpoint = current
        if current != host:
            self._conf_set("Endpoint", host)
        if self._conf_get("Endpoint") != host:
            raise UnitFault(
                _("Device kept its old endpoint"),
                _("The module accepted the new endpoint but reports a different one afterwards."),
                _(_REWORK),
            )

    def device_verify(self, host: str, port: int, thing_name: str, timeout_s: float | None = None) -> None:
        """Point the module at `host`, connect, subscribe/send/get a nonce on `things/<thing>/verify`, check
        that `AT+CONNECT?` says CUSTOMER, disconnect, then write the product's HOTA certificate (if any) and read
        it back. On any failure the previous endpoint is restored.

        The deadline (default: the CONNECT allowance plus 30 s for the round trip) bounds the whole check."""
        if timeout_s is None:
            timeout_s = self.timing.connect_s + 30.0
        if not _THING.fullmatch(thing_name):
            raise StationFault(
                _("Thing name not usable"),
                _("The thing name is not a valid AWS IoT thing name, so it cannot be used in a topic."),
                _("Call a technician to fix the thing name template."),
            )
        if int(port) not in (STANDARD_PORT, 443):
            # Not an error: the lab's simulator is configured with the lab's port itself (module docstring).
            log.info("expresslink: port %s cannot be set on a module; only the endpoint host is sent", port)
        deadline = time.monotonic() + max(1.0, float(timeout_s))
        client = self._info.device_id if self._info else None
        try:
            self.set_endpoint(host)
            self._drain_events()
            self._connect(host, client, deadline)
            topic = f"things/{thing_name}/verify"
            self._conf_set(f"Topic{VERIFY_TOPIC_INDEX}", topic)
            self._subscribe(host, topic, deadline)
            nonce = secrets.token_hex(12)
            reply = self._command(f"SEND{VERIFY_TOPIC_INDEX}", param=nonce)
            if not reply.ok:
                if reply.code == ERR_NO_CONNECTION:
                    raise self._lost(host, _("publishing to {topic}").format(topic=topic))
                raise command_error(f"AT+SEND{VERIFY_TOPIC_INDEX}", reply.code)
            self._await_echo(host, topic, nonce, deadline)
            state = self.connect_state()
            if not state.connected:
                raise self._lost(host, _("the check"))
            if not state.customer:
                raise StationFault(
                    _("Device still on staging"),
                    _(
                        "The module connected to {host} but calls it its staging endpoint, not a customer one: "
                        "the target's endpoint is the module vendor's staging account."
                    ).format(host=host),
                    _("Call a technician to fix the target's endpoint."),
                )
            self._disconnect()
            if self.hota_pem is not None:
                self.set_hota_certificate(self.hota_pem)
        except BaseException as exc:
            self._restore_after_failure(exc)
            raise

    def set_hota_certificate(self, pem: str) -> None:
        """Write `HOTAcertificate` (escaped, one line) and prove it by reading it back (`pem` format)."""
        self._ensure_contact()
        self._conf_set("HOTAcertificate", pem)
        if self._read_pem("HOTAcertificate") != _normal_pem(pem):
            raise UnitFault(
                _("HOTA certificate not kept"),
                _("The module accepted the host-update (HOTA) certificate but reads back a different one."),
                _(_REWORK),
            )

    def hota_certificate(self) -> str:
        """The module's `HOTAcertificate` (PEM), or "" when none is set."""
        self._ensure_contact()
        return self._read_pem("HOTAcertificate", optional=True)

    def _read_pem(self, key: str, *, optional: bool = False) -> str:
        reply = self._command(f"CONF? {key} pem", attempts=self.timing.attempts, multiline=True)
        if not reply.ok:
            raise command_error(f"AT+CONF? {key}", reply.code)
        detail = reply.detail.strip()
        if reply.count:
            lines = list(reply.lines)
        elif detail == "pem":
            lines = self._read_pem_to_end()
        elif not detail and optional:
            return ""
        elif detail.startswith("-----BEGIN"):
            try:
                lines = unescape(detail).splitlines()
            except EscapeError:
                raise DeviceGarbage(_("Its {key} has a broken escape sequence.").format(key=key)) from None
        else:
            raise DeviceGarbage(_("Its answer to AT+CONF? {key} is not a certificate.").format(key=key))
        return _certificate_from_lines(lines)

    def wipe(self, *, factory_reset: bool = False) -> None:
        """Disconnect and point the module back at the endpoint it had before this session changed it.

        The module's key and birth certificate cannot (and need not) be removed. Without a change in this
        session the endpoint is left as it is: it may be an earlier PASS's customer endpoint. With
        `factory_reset=True` the module is reset to its factory settings (`AT+FACTORY_RESET`), which also
        drops settings the line may rely on (for example network credentials).
        """
        self._ensure_contact()
        if factory_reset:
            reply = self._command("FACTORY_RESET", timeout_s=self.timing.connect_s)
            if not reply.ok:
                raise command_error("AT+FACTORY_RESET", reply.code)
            return
        if self.connect_state().connected:
            self._disconnect()
        original = self._original_endpoint
        if original is None:
            return
        if not original:
            # The module had no endpoint before (unusual: modules ship with their staging one). An empty
            # endpoint cannot be written back; AWS's rollback is what takes the unit's access away then.
            log.warning("expresslink: the module had no endpoint before this session; leaving the new one")
            return
        if self._conf_get("Endpoint") != original:
            self._conf_set("Endpoint", original)
            if self._conf_get("Endpoint") != original:
                raise UnitFault(
                    _("Device kept the customer endpoint"),
                    _("The module did not take its previous endpoint back."),
                    _(_REWORK),
                )

    def close(self) -> None:
        self._io.close()

    # ------------------------------------------------------------------------------------------ verify
    def _connect(self, host: str, client: str | None, deadline: float) -> None:
        wait = self.timing.backoff_wait_s
        login_retries = self.timing.login_retries
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceCheckUnreachable(
                    _("The module did not connect to {host} within the deadline.").format(host=host)
                )
            reply, _status = self._exchange("CONNECT", None, min(self.timing.connect_s, remaining), 1, False)
            if reply is None:
                raise DeviceCheckUnreachable(
                    _("The module did not finish connecting to {host} within {remaining:.0f} s.").format(
                        host=host, remaining=min(self.timing.connect_s, remaining)
                    )
                )
            if reply.ok:
                if not reply.detail.startswith("1"):
                    raise DeviceGarbage(_("Its answer to AT+CONNECT is malformed."))
                return
            if reply.code == ERR_NOT_ALLOWED and deadline - time.monotonic() > self.timing.poll_s:
                # A CONNECT is already in progress (an earlier one that timed out here, or CONNECT!): its
                # outcome is what the next CONNECT answers, so ask again a little later.
                time.sleep(max(self.timing.poll_s, 0.2))
                continue
            if reply.code != ERR_UNABLE_TO_CONNECT:
                raise command_error("AT+CONNECT", reply.code)
            hint = connect_hint(reply.detail)
            if hint == HINT_BACKOFF and deadline - time.monotonic() > wait:
                # The module's own back-off after an earlier failure: wait it out, within the deadline.
                time.sleep(wait)
                wait *= 2
                continue
            if (
                hint == HINT_LOGIN
                and login_retries > 0
                and deadline - time.monotonic() > 2 * self.timing.login_retry_wait_s
            ):
                # Registration and policy may need a moment to reach the data plane: one more try.
                login_retries -= 1
                time.sleep(self.timing.login_retry_wait_s)
                continue
            raise connect_error(hint, host, client)

    def _subscribe(self, host: str, topic: str, deadline: float) -> None:
        index = VERIFY_TOPIC_INDEX
        reply = self._command(f"SUBSCRIBE{index}")
        if not reply.ok:
            if reply.code == ERR_NO_CONNECTION:
                raise self._lost(host, _("subscribing to {topic}").format(topic=topic))
            raise command_error(f"AT+SUBSCRIBE{index}", reply.code)
        while True:
            event = self._next_event()
            if event is None:
                if time.monotonic() >= deadline:
                    raise DeviceCheckUnreachable(
                        _("The module's subscription to {topic} was never acknowledged.").format(topic=topic)
                    )
                time.sleep(self.timing.poll_s)
                continue
            if event.id == EVENT_SUBACK and event.param == index:
                return
            if event.id == EVENT_SUBNACK and event.param == index:
                raise DeviceCheckDenied(
                    _(
                        "The module connected to {host}, but the policy does not let it subscribe to {topic}."
                    ).format(host=host, topic=topic)
                )
            if event.id == EVENT_CONLOST:
                raise self._lost(host, _("subscribing to {topic}").format(topic=topic))

    def _await_echo(self, host: str, topic: str, nonce: str, deadline: float) -> None:
        index = VERIFY_TOPIC_INDEX
        while True:
            reply = self._command(f"GET{index}")
            if not reply.ok:
                raise command_error(f"AT+GET{index}", reply.code)
            if reply.detail:
                try:
                    if unescape(reply.detail) == nonce:
                        return
                except EscapeError:
                    raise DeviceGarbage(_("A message it returned has a broken escape sequence.")) from None
                continue  # another message on the topic: not ours
            event = self._next_event()
            if event is not None and event.id == EVENT_CONLOST:
                raise self._lost(host, _("publishing to {topic}").format(topic=topic))
            if time.monotonic() >= deadline:
                raise DeviceCheckDenied(
                    _(
                        "The module connected to {host} and published on {topic}, but its message did not come "
                        "back: the policy may not let it publish or receive there."
                    ).format(host=host, topic=topic)
                )
            if event is None:
                time.sleep(self.timing.poll_s)

    def _lost(self, host: str, during: str) -> StationError:
        return DeviceCheckDenied(
            _(
                "The module's connection to {host} was closed while {during}: the policy probably does not "
                "allow it (AWS IoT closes the connection on a publish it does not allow)."
            ).format(host=host, during=during)
        )

    def _next_event(self) -> Event | None:
        reply = self._command("EVENT?")
        if not reply.ok:
            raise command_error("AT+EVENT?", reply.code)
        if not reply.detail:
            return None
        event = parse_event(reply.detail)
        if event is None:
            raise DeviceGarbage(_("Its answer to AT+EVENT? is malformed."))
        return event

    def _drain_events(self, limit: int = 64) -> None:
        """Drop events from before this check (an old SUBACK must not acknowledge the new subscription)."""
        for _attempt in range(limit):
            if self._next_event() is None:
                return
        raise DeviceGarbage(_("Its event queue never empties."))

    def _disconnect(self) -> None:
        reply = self._command("DISCONNECT", attempts=self.timing.attempts)
        if not reply.ok:
            raise command_error("AT+DISCONNECT", reply.code)

    def _restore_after_failure(self, exc: BaseException) -> None:
        """Best effort after a failed check: disconnect and put the old endpoint back; keep the original error."""
        if self._io.closed or self._original_endpoint is None:
            return
        if isinstance(exc, DeviceNotAnswering | DeviceGarbage | DeviceDisconnected) or not isinstance(
            exc, StationError
        ):
            return  # the unit cannot be talked to (or we were interrupted): more commands only cost time
        try:
            self.wipe()
        except StationError as cleanup:
            log.warning(
                "expresslink: could not restore the module's endpoint after a failed check: %s", cleanup
            )

    # ----------------------------------------------------------------------------------------- session
    def _probe(self) -> None:
        """`AT` → `OK`. A first ERR may be the module's reaction to noise left in its buffer: try once more."""
        for attempt in range(2):
            reply = self._command("", attempts=self.timing.attempts)
            if reply.ok:
                self._contact = True
                return
            if attempt == 0:
                continue
            raise command_error("AT", reply.code)

    def _ensure_contact(self) -> None:
        if not self._contact:
            self._probe()

    def _conf_get(self, key: str, *, optional: bool = False) -> str:
        reply = self._command(f"CONF? {key}", attempts=self.timing.attempts)
        if not reply.ok:
            if optional and reply.code in (ERR_UNKNOWN_KEY, ERR_KEY_WRITEONLY):
                return ""
            raise command_error(f"AT+CONF? {key}", reply.code)
        try:
            return unescape(reply.detail).strip()
        except EscapeError:
            raise DeviceGarbage(
                _("Its answer to AT+CONF? {key} has a broken escape sequence.").format(key=key)
            ) from None

    def _conf_set(self, key: str, value: str) -> None:
        reply = self._command("CONF", param=f"{key}={value}", attempts=self.timing.attempts)
        if not reply.ok:
            raise command_error(f"AT+CONF {key}", reply.code)

    # ------------------------------------------------------------------------------------------- lines
    def _command(
        self,
        command: str,
        *,
        param: str | None = None,
        timeout_s: float | None = None,
        attempts: int = 1,
        multiline: bool = False,
    ) -> Reply:
        """Send `AT[+command][ param]` and return its reply (with its extra lines when `multiline`).

        Only idempotent commands get `attempts > 1`. No reply in time raises `DeviceNotAnswering`, or
        `DeviceGarbage` when lines that are not replies came instead.
        """
        reply, junk = self._exchange(command, param, timeout_s, attempts, multiline)
        if reply is not None:
            return reply
        self._contact = False
        if junk:
            raise DeviceGarbage(_("No valid answer to AT+{split}.").format(split=command.split(" ")[0]))
        raise DeviceNotAnswering()

    def _exchange(
        self, command: str, param: str | None, timeout_s: float | None, attempts: int, multiline: bool
    ) -> tuple[Reply | None, int]:
        """`_command` without the verdict: (reply or None at the deadline, lines that were not replies)."""
        text = "AT" if not command else f"AT+{command}"
        if param is not None:
            text += " " + escape(param)
        wire = (text + "\r\n").encode("ascii")
        if len(wire) > MAX_COMMAND:
            raise StationFault(
                _("Command too long"),
                _("A command for the module is longer than its command buffer."),
                _("Call a technician: the endpoint or thing name is far too long."),
            )
        timeout = min(MAX_TIMEOUT_S, timeout_s if timeout_s is not None else self.timing.command_s)
        junk = 0
        if self._stale and not self._resync():
            return None, 0  # still busy with (or stuck in) an earlier command: do not stack another one
        for attempt in range(max(1, attempts)):
            # A retry sends the same idempotent command again: a late reply to the first try answers it as
            # well, so no resync in between (the extra reply in flight leaves `_stale` set for the next one).
            with self._sent(wire, retry=attempt > 0):
                deadline = time.monotonic() + timeout + wire_time(len(wire) + 256, self.baudrate)
                try:
                    reply = self._read_reply(text, deadline)
                    if multiline and reply.ok:
                        reply = self._read_more(reply)
                except _Timeout as timeout_exc:
                    junk += timeout_exc.junk
                    self._stale = True
                    continue
            self._contact = True
            if reply.ok or reply.code not in (ERR_PARSE, ERR_COMMAND_NOT_FOUND) or attempt + 1 >= attempts:
                return reply, junk
            # ERR2/ERR3 to a command the module knows: noise damaged it on the way. Idempotent: send again.
        return None, junk

    def _read_reply(self, sent: str, deadline: float) -> Reply:
        junk = 0
        while True:
            line = self._io.read_line(deadline)
            if line is None:
                raise _Timeout(junk)
            if line is OVERFLOW:
                junk += 1
            else:
                assert isinstance(line, bytes)
                try:
                    text = line.decode("ascii")
                except UnicodeDecodeError:
                    text = None
                if text is not None:
                    if not text.strip() or text == sent:
                        continue  # an empty line, or an echo from a module left with echo on
                    reply = parse_reply(text)
                    if reply is not None:
                        return reply
                junk += 1
            if junk >= self.timing.max_junk:
                self._stale = True
                raise DeviceGarbage(
                    _("It sent {junk} lines that are not ExpressLink replies.").format(junk=junk)
                )
            if time.monotonic() >= deadline:  # a flood never lets read_line see its deadline
                raise _Timeout(junk)

    def _read_more(self, reply: Reply) -> Reply:
        if reply.count > MAX_CERT_LINES:
            raise DeviceGarbage(_("It announced an impossible number of lines."))
        deadline = time.monotonic() + self.timing.command_s + wire_time(80 * reply.count, self.baudrate)
        lines: list[str] = []
        while len(lines) < reply.count:
            line = self._io.read_line(deadline)
            if line is None:
                raise DeviceGarbage(_("It sent fewer lines than it announced."))
            if line is OVERFLOW:
                raise DeviceGarbage(_("It sent a line far too long for its answer."))
            assert isinstance(line, bytes)
            try:
                lines.append(line.decode("ascii"))
            except UnicodeDecodeError:
                raise DeviceGarbage(_("Its answer is not text.")) from None
        return Reply(reply.ok, reply.detail, reply.count, reply.code, tuple(lines))

    def _read_pem_to_end(self) -> list[str]:
        """The older drafts' bare `OK pem`: PEM lines follow, up to and including the `-----END` line."""
        deadline = time.monotonic() + self.timing.command_s + wire_time(80 * 64, self.baudrate)
        lines: list[str] = []
        while len(lines) < MAX_CERT_LINES:
            line = self._io.read_line(deadline)
            if line is None:
                raise DeviceGarbage(_("Its certificate ended before its END line."))
            if line is OVERFLOW:
                raise DeviceGarbage(_("It sent a line far too long for a certificate."))
            assert isinstance(line, bytes)
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                raise DeviceGarbage(_("Its certificate is not text.")) from None
            lines.append(text)
            if text.startswith("-----END"):
                return lines
        raise DeviceGarbage(_("Its certificate never ends."))

    def _resync(self) -> bool:
        """After a timed-out command a late reply may still come: consume it with an `AT` round trip.

        The lines read up to our `OK` are dropped; a short quiet period then catches the case where the late
        reply was itself a bare `OK` (our own `OK` follows it). False when no `OK` came: the module is still
        busy with the earlier command, and a new command would only have its reply taken for the old one's.
        """
        self._io.discard_input()
        self._io.write(b"AT\r\n")
        deadline = time.monotonic() + self.timing.command_s
        while True:
            line = self._io.read_line(deadline)
            if line is None or time.monotonic() >= deadline:  # silent, or a flood that never lets up
                return False
            if line == b"OK":
                break
        quiet = time.monotonic() + 0.05
        while self._io.read_line(quiet) is not None and time.monotonic() < deadline + 0.5:
            quiet = time.monotonic() + 0.05
        self._io.discard_input()
        self._stale = False
        return True


def _normal_pem(pem: str) -> str:
    return "\n".join(line.strip() for line in pem.strip().splitlines() if line.strip()) + "\n"


def _connect_timeout(value: float | str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 1.0 <= seconds <= MAX_TIMEOUT_S:
        raise StationFault(
            _("Bad ExpressLink option"),
            _(
                "connect_timeout_s must be a number of seconds from 1 to {MAX_TIMEOUT_S:.0f} (the guide's limit for "
                "any command), not {value!r}."
            ).format(MAX_TIMEOUT_S=MAX_TIMEOUT_S, value=value),
            _("Call a technician to fix connect_timeout_s in the product's options."),
        )
    return seconds


def _load_hota_certificate(path: str) -> str:
    """The product's HOTA certificate file, checked to be one PEM certificate that fits one command."""
    try:
        text = Path(path).expanduser().read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise StationFault(
            _("HOTA certificate unreadable"),
            _("The product's hota_certificate {path!r} cannot be read ({error}).").format(
                path=path, error=getattr(error, "strerror", None) or error
            ),
            _(
                "Call a technician to fix hota_certificate in the product's options (a PEM file, relative to the "
                "station's working folder)."
            ),
        ) from None
    try:
        pem = _certificate_from_lines(text.splitlines())
    except DeviceGarbage:
        raise StationFault(
            _("HOTA certificate not usable"),
            _("The product's hota_certificate {path!r} is not one PEM certificate.").format(path=path),
            _(
                "Call a technician to give hota_certificate a PEM certificate file (-----BEGIN CERTIFICATE-----)."
            ),
        ) from None
    if len(escape(pem)) + 40 > MAX_COMMAND:
        raise StationFault(
            _("HOTA certificate too long"),
            _(
                "The product's hota_certificate {path!r} does not fit in one ExpressLink command (9 KB)."
            ).format(path=path),
            _("Call a technician: use a shorter certificate (an EC one, or without extra text)."),
        )
    return pem


def _certificate_from_lines(lines: list[str]) -> str:
    """Check the PEM lines are one certificate (structure, then X.509) and return it with LF line ends."""
    lines = [line.strip() for line in lines if line.strip()]
    if (
        len(lines) < 3
        or lines[0] != "-----BEGIN CERTIFICATE-----"
        or lines[-1] != "-----END CERTIFICATE-----"
        or not all(_PEM_LINE.fullmatch(line) for line in lines[1:-1])
    ):
        raise DeviceGarbage(_("Its certificate is not a PEM certificate."))
    pem = "\n".join(lines) + "\n"
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        raise DeviceGarbage(_("Its certificate is not a valid X.509 certificate.")) from None
    return pem
