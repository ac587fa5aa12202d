"""The QA PIN: stored as a salted scrypt hash, checked with back-off, locked after repeated failures.

What it does:
- `hash_pin(pin)` makes the string station.toml keeps (`qa_pin_hash = "scrypt$16384$8$1$<salt>$<hash>"`,
  base64 salt and hash); `station pin-hash` prints one. `parse_pin_hash` checks such a string, including
  that its scrypt cost is one the station will compute (a config must not be able to stall a station).
- `PinGuard` checks a typed PIN against the stored form (a hash, or a plain `qa_pin`, which the lab and the
  demo still write) in constant time — or against several, one per person (`[people.NAME] qa_pin_hash`),
  answering whose PIN it was — and enforces the back-off: one wrong PIN (a typo) costs nothing, after
  k ≥ 2 wrong PINs the next try waits min(2^(k-2), 30) s; `MAX_FAILURES` wrong PINs within `LOCK_S` lock
  the PIN for `LOCK_S`. Every wrong PIN
  and every lock is a `note` event in the ledger (step `qa:pin_failed` / `qa:pin_locked`, serial
  `PIN_SERIAL`), and the guard reads its state back from there, so the QA desk and `station revoke`/
  `station transfer` share one count across processes.

What it must not do: keep, log, record or show a PIN (events carry only where the try came from), or
import textual, boto3 or cryptography.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from station.errors import InputError
from station.i18n import N_, _, ngettext
from station.model import Event

PIN_RE = re.compile(r"[0-9]{4,12}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # ~16 MiB and ~50 ms per check: slow to guess, quick to type
_MAX_N, _MAX_R, _MAX_P = 1 << 17, 16, 4  # the most a configured hash may ask the station to compute
_MAXMEM = 256 * 1024 * 1024
_HASH_RE = re.compile(
    r"scrypt\$(\d{1,7})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=]{16,88})\$([A-Za-z0-9+/=]{40,88})"
)

MAX_FAILURES = 5  # wrong PINs within LOCK_S that lock the PIN
LOCK_S = 15 * 60.0
MAX_BACKOFF_S = 30.0
PIN_SERIAL = "qa-pin"
_now = time.time  # the guard's default clock (tests replace it here, not in the time module)  # the ledger "serial" the PIN's events are filed under (`station show qa-pin`)

_FIX_HASH = N_(
    'Make a new one with `station pin-hash` and put the line it prints (qa_pin_hash = "…") in station.toml.'
)


@dataclass(frozen=True)
class PinHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def parse_pin_hash(text: str) -> PinHash:
    """The parts of a `scrypt$N$r$p$salt$hash` string; `InputError` saying what is wrong otherwise."""
    match = _HASH_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InputError(_("QA PIN hash not readable"), _("expected scrypt$N$r$p$salt$hash."), _(_FIX_HASH))
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise InputError(
            _("QA PIN hash not usable"),
            _(
                "its scrypt cost (N={n}, r={r}, p={p}) is outside what the station computes "
                "(N a power of two up to {MAX_N}, r up to {MAX_R}, p up to {MAX_P})."
            ).format(n=n, r=r, p=p, MAX_N=_MAX_N, MAX_R=_MAX_R, MAX_P=_MAX_P),
            _(_FIX_HASH),
        )
    try:
        salt = base64.b64decode(match.group(4), validate=True)
        digest = base64.b64decode(match.group(5), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            _("QA PIN hash not readable"), _("its salt or hash is not base64."), _(_FIX_HASH)
        ) from None
    if len(salt) < 16 or len(digest) < 32:
        raise InputError(_("QA PIN hash not usable"), _("its salt or hash is too short."), _(_FIX_HASH))
    return PinHash(n, r, p, salt, digest)


def _scrypt(pin: str, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    return hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=length)


def check_pin_format(pin: str) -> str:
    """The PIN if it is 4-12 digits; `InputError` otherwise (never echoing it)."""
    if not isinstance(pin, str) or not PIN_RE.fullmatch(pin):
        raise InputError(_("Not a QA PIN"), _("A QA PIN is 4 to 12 digits."), _("Type the PIN again."))
    return pin


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """The `qa_pin_hash` value for `pin` (4-12 digits), with a fresh random salt."""
    check_pin_format(pin)
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(pin, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, 32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def pin_matches(pin: str, stored: str) -> bool:
    """Does `pin` match the stored form: a `scrypt$…` hash, or a plain PIN (lab and demo configs)?"""
    if not isinstance(pin, str) or len(pin) > 64:
        return False
    if stored.startswith("scrypt$"):
        parsed = parse_pin_hash(stored)
        given = _scrypt(pin, parsed.n, parsed.r, parsed.p, parsed.salt, len(parsed.digest))
        return hmac.compare_digest(given, parsed.digest)
    return hmac.compare_digest(pin.encode("utf-8"), stored.encode("utf-8"))


def stored_pin(config: Any) -> str | None:
    """The configured PIN's stored form (`qa_pin_hash`, else a plain `qa_pin`), or None when there is none."""
    return getattr(config, "qa_pin_hash", None) or getattr(config, "qa_pin", None) or None


class PinGuard:
    """Checks PINs for one place (`where`: "QA desk", "station revoke", …) with back-off and lock-out.

    `stored` is one PIN's stored form, or stored forms by whose they are (person's name; "" for the station's
    shared PIN). `ledger` (optional) keeps the count across processes; without one the count lives in this
    object. The count is the station's, not a person's: wrong PINs lock every PIN alike.
    """

    def __init__(
        self,
        stored: str | Mapping[str, str],
        *,
        ledger: Any = None,
        where: str = "QA desk",
        operator: str = "",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._stored = {"": stored} if isinstance(stored, str) else dict(stored)
        self._ledger = ledger
        self.where = where
        self.operator = operator
        self._clock_fn = clock
        self._failures: list[float] = []  # used only without a ledger

    # -- state -------------------------------------------------------------------------------------------
    def _clock(self) -> float:
        return (self._clock_fn or _now)()

    def _recent_failures(self, now: float) -> list[float]:
        if self._ledger is None:
            times = self._failures
        else:
            times = [e.event.at for e in self._ledger.events(PIN_SERIAL) if e.event.step == "qa:pin_failed"]
        return sorted(t for t in times if now - LOCK_S < t <= now + 1.0)

    def wait_s(self) -> tuple[float, bool]:
        """(seconds before the next try is allowed, whether that is a lock rather than a back-off)."""
        now = self._clock()
        failures = self._recent_failures(now)
        if not failures:
            return 0.0, False
        if len(failures) >= MAX_FAILURES:
            until = failures[-MAX_FAILURES] + LOCK_S
            return max(0.0, until - now), True
        if len(failures) == 1:
            return 0.0, False  # one typo costs nothing
        backoff = min(2.0 ** (len(failures) - 2), MAX_BACKOFF_S)
        return max(0.0, failures[-1] + backoff - now), False

    def tries_left(self) -> int:
        return max(0, MAX_FAILURES - len(self._recent_failures(self._clock())))

    # -- checking ----------------------------------------------------------------------------------------
    def check(self, pin: str) -> str:
        """Whose PIN `pin` is (a person's name, or "" for the shared PIN) if it is right and a try is allowed
        now; `InputError` (what happened, what to do) if not."""
        wait, locked = self.wait_s()
        if wait > 0:
            raise self._refusal(wait, locked)
        # Every stored form is tried (no early return), so the time taken does not say whose PIN matched.
        matched = [who for who, form in self._stored.items() if pin_matches(pin, form)]
        if matched:
            return matched[0]
        self._record("qa:pin_failed", "Wrong QA PIN", f"A wrong QA PIN was typed at the {self.where}.")
        wait, locked = self.wait_s()
        if locked:
            self._record(
                "qa:pin_locked",
                "QA PIN locked",
                f"{MAX_FAILURES} wrong QA PINs within {LOCK_S / 60:.0f} minutes; the PIN is locked.",
            )
            raise self._refusal(wait, True)
        left = self.tries_left()
        raise InputError(
            _("Wrong PIN"),
            ngettext(
                "That is not the QA PIN; {left} more wrong PIN locks it for {minutes:.0f} minutes.",
                "That is not the QA PIN; {left} more wrong PINs lock it for {minutes:.0f} minutes.",
                left,
            ).format(left=left, minutes=LOCK_S / 60),
            _("Type the PIN again (after {wait:.0f} s).").format(wait=wait)
            if wait >= 1
            else _("Type the PIN again."),
        )

    def _refusal(self, wait: float, locked: bool) -> InputError:
        if locked:
            until = time.strftime("%H:%M", time.localtime(self._clock() + wait))
            return InputError(
                _("QA PIN locked"),
                _("Too many wrong QA PINs; the PIN is locked until {until} (recorded in the ledger).").format(
                    until=until
                ),
                _("Wait until then, or ask the QA lead; the lock cannot be lifted from here."),
            )
        return InputError(
            _("Too soon"),
            _("After a wrong PIN the next try waits; {wait} s to go.").format(wait=max(1, round(wait))),
            _("Wait a moment and type the PIN again."),
        )

    def _record(self, step: str, title: str, message: str) -> None:
        now = self._clock()
        if self._ledger is None:
            if step == "qa:pin_failed":
                self._failures.append(now)
            return
        data = {"where": self.where}
        if self.operator:
            data["operator"] = self.operator
        self._ledger.append_event(
            Event("note", PIN_SERIAL, step=step, title=title, message=message, data=data, at=now)
        )
