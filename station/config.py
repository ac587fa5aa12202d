"""`station.toml` → validated, typed configuration: the station, its targets, products and slots.

What it does: reads the file with tomllib, refuses unknown keys (a typo must not pass silently), checks
every value and every cross-reference (product → target, slot → product), resolves relative paths against
the config file's folder, reads policy documents given as files, and returns a `StationConfig`. Every
problem is reported in one `ConfigError` whose message names the file, the line (found by a small
best-effort locator, since tomllib gives no positions) and the field, and says what is expected.

It also renders a target's policy document (`render_policy`) and tells whether a policy is over-broad
(`is_over_broad`), which preflight uses to refuse `iot:*` on `*` for any target not marked as lab.

What it must not do: talk to AWS, open serial ports, read keys or passphrases (a factory CA's passphrase
stays in the environment variable the config names), or write anything.

Layout (every table is keyed by name; see fixtures/configs/station.toml):

    [station]            id, ledger, operator?, qa_pin_hash? (or a plain qa_pin: lab and demo),
                         cleanup_interval_s?, cleanup_max_interval_s?, sign_in?, [station.labels]
    [people.NAME]        badge?, qa_pin_hash? (who may work here; a listed person signs in by name or badge,
                         and a QA PIN of their own names them on every QA action)
    [targets.NAME]       region, policy_name, policy_document | policy_file, profile? role_arn? …
    [targets.NAME.issuer] certificate_file, key_file, passphrase_env?
    [products.NAME]      serial_pattern, flasher, target, on_reprovision ("refuse" | "replace"),
                         [products.NAME.options] (per-family, free-form)
    [slots.NAME]         port, baud?, product?
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flashers as flasher_plugins
from station import naming
from station.errors import ConfigError, InputError
from station.identity import KEY_TYPES, MAX_DAYS
from station.model import Issuer, Target

DEFAULT_BAUD = 115200

# The least-privilege device policy (docs: aws-iot.md): one shared policy; thing policy variables tie each
# client to its own thing name and topics. REGION and ACCOUNT are filled in per target by render_policy.
LEAST_PRIVILEGE_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:REGION:ACCOUNT:client/${iot:Connection.Thing.ThingName}",
            "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:REGION:ACCOUNT:topic/things/${iot:Connection.Thing.ThingName}/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:REGION:ACCOUNT:topicfilter/things/${iot:Connection.Thing.ThingName}/*",
        },
    ],
}
LEAST_PRIVILEGE_POLICY_JSON = json.dumps(LEAST_PRIVILEGE_POLICY, indent=2) + "\n"

_REGION_RE = re.compile(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d{1,2}")
_ACCOUNT_RE = re.compile(r"\d{12}")
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
_STATION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POLICY_NAME_RE = re.compile(r"[\w+=,.@-]{1,128}")
_HOST_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_URL_RE = re.compile(r"https?://[^\s/]+(/\S*)?")
_PIN_RE = re.compile(r"\d{4,12}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_THING_TYPE_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
# Any rate a USB-serial adapter can do; devices use odd ones (74880, 250000), so no fixed list.
_BAUD_MIN, _BAUD_MAX = 50, 12_000_000
_PLACEHOLDER_RE = re.compile(r"\b(REGION|ACCOUNT)\b")

_FIX = "Fix station.toml and run the command again."
MAX_CONFIG_BYTES = 256 * 1024  # a station.toml is a few kilobytes, even with dozens of slots
MAX_POLICY_BYTES = 64 * 1024  # AWS IoT allows 2,048 characters of policy (whitespace aside)
MAX_PROBLEMS_SHOWN = 25  # a wrong file (not a config) must not turn into a message of thousands of lines


# --------------------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class Product:
    """A kind of unit: how its serial looks, which flasher talks to it, which target it goes to."""

    name: str
    serial_pattern: str
    flasher: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)  # per-family flasher options, passed through
    # A scan of a serial that already has a live identity: "refuse" (FAIL at once, nothing touched, send it to
    # QA) or "replace" (provision and verify a new identity, then revoke the old certificate).
    on_reprovision: str = "refuse"

    @property
    def pattern(self) -> re.Pattern[str]:
        return naming.compile_serial_pattern(self.serial_pattern)

    def validate_serial(self, raw: str) -> str:
        """The scanned serial, trimmed, if it matches this product's pattern; else `InputError`."""
        return naming.validate_serial(raw, self.serial_pattern, product=self.name)


REPROVISION_POLICIES = ("refuse", "replace")


@dataclass(frozen=True)
class Slot:
    """One position on the station: a serial port URL (pyserial `serial_for_url`) and, optionally, a product."""

    name: str
    port: str
    baud: int = DEFAULT_BAUD
    product: str | None = None


@dataclass(frozen=True)
class StationConfig:
    """A loaded, validated station.toml. Paths are absolute (resolved against the config's folder)."""

    path: Path
    station_id: str
    ledger_path: Path | str  # a file, or a shared ledger's URL (dynamodb://TABLE?region=…)
    operator: str | None = None
    qa_pin: str | None = field(default=None, repr=False)  # not a key, but no reason to print it
    # The line's cleaner (station.cleanup): first retry after this, backing off up to the maximum.
    cleanup_interval_s: float = 10.0
    cleanup_max_interval_s: float = 30.0
    targets: dict[str, Target] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    slots: dict[str, Slot] = field(default_factory=dict)
    budget: BudgetSettings | None = None
    labels: LabelSettings | None = None
    # The QA PIN as a salted scrypt hash (station.qapin); production stations keep only this.
    qa_pin_hash: str | None = field(default=None, repr=False)
    # Who may work at the station ([people.NAME]); the operator screen asks who is there when this lists
    # anyone or `sign_in` is set (station.people).
    sign_in: bool = False
    people: dict[str, Person] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise InputError(
                "Unknown target",
                f"There is no target {name!r} in {self.path}; known: {', '.join(self.targets) or 'none'}.",
                "Use one of the known target names, or add it to station.toml.",
            ) from None

    def product(self, name: str) -> Product:
        try:
            return self.products[name]
        except KeyError:
            raise InputError(
                "Unknown product",
                f"There is no product {name!r} in {self.path}; known: {', '.join(self.products) or 'none'}.",
                "Use one of the known product names, or add it to station.toml.",
            ) from None

    def target_for(self, product: str) -> Target:
        return self.target(self.product(product).target)


# --------------------------------------------------------------------------------------------------------
# Locating a key in the source text (tomllib gives no positions)

_BARE_KEY = r"[A-Za-z0-9_-]+"
_QUOTED_KEY = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE_KEY}|{_QUOTED_KEY})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_KEY_PART_RE = re.compile(_KEY)


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART_RE.finditer(text):
        part = match.group(0)
        if part[:1] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


class SourceLocator:
    """Best-effort line numbers for dotted key paths, from the TOML text.

    Understands table headers (`[a.b]`, `[[a]]`, quoted parts), `key = value` and dotted keys, and skips
    multi-line strings. Inline tables and arrays-of-tables are located at their nearest enclosing line.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER_RE.match(line)
            if header:
                table = _split_dotted(header.group(2))
                self._lines.setdefault(table, number)
                continue
            assign = _ASSIGN_RE.match(line)
            if assign:
                self._lines.setdefault(table + _split_dotted(assign.group(1)), number)
                rest = line[assign.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def line_of(self, path: tuple[str, ...]) -> int | None:
        """The line of `path`, or of its nearest ancestor that appears in the text; None if none does."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        # A table implied only by its sub-tables ([targets.x] never written, [targets.x.issuer] is).
        candidates = [line for key, line in self._lines.items() if key[: len(path)] == path]
        return min(candidates) if candidates else None


# --------------------------------------------------------------------------------------------------------
# Validation


def _toml_key(part: str) -> str:
    return part if re.fullmatch(_BARE_KEY, part) else json.dumps(part)


def _where(path: tuple[str, ...]) -> str:
    """`[targets.prod] region` style name for a key path, quoting parts as TOML would."""
    if not path:
        return "the file"
    table, key = path[:-1], path[-1]
    return f"[{'.'.join(map(_toml_key, table))}] {_toml_key(key)}" if table else _toml_key(key)


class _Checker:
    """Collects problems while walking the parsed TOML; raises them all at the end."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = path.parent
        self.locator = SourceLocator(text)
        self.problems: list[tuple[int, str]] = []

    def problem(self, keypath: tuple[str, ...], expected: str) -> None:
        if len(self.problems) > MAX_PROBLEMS_SHOWN:  # counted, not located: the message shows only the first
            self.problems.append((1 << 62, ""))
            return
        line = self.locator.line_of(keypath)
        at = f"{self.path}:{line}" if line else f"{self.path}"
        self.problems.append((line or 0, f"{at}: {_where(keypath)}: {expected}"))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        count = len(self.problems)
        title = "Invalid station configuration" + (f" ({count} problems)" if count > 1 else "")
        # In file order, so the person fixing them can walk down the file.
        ordered = [text for _, text in sorted(self.problems, key=lambda item: item[0])]
        if count > MAX_PROBLEMS_SHOWN:
            ordered = [*ordered[:MAX_PROBLEMS_SHOWN], f"… and {count - MAX_PROBLEMS_SHOWN} more problems."]
        raise ConfigError(title, "\n".join(ordered), _FIX)

    # -- table and key helpers ------------------------------------------------------------------------

    def table(self, data: Mapping[str, Any], keypath: tuple[str, ...], *, required: bool) -> dict[str, Any]:
        value = data.get(keypath[-1]) if keypath else data
        if value is None:
            if required:
                self.problem(keypath, f"missing table; add a [{'.'.join(keypath)}] section.")
            return {}
        if not isinstance(value, dict):
            self.problem(keypath, f"expected a table ([{'.'.join(keypath)}]), got {_kind(value)}.")
            return {}
        return value

    def unknown_keys(
        self, table: Mapping[str, Any], keypath: tuple[str, ...], allowed: tuple[str, ...]
    ) -> None:
        for key in table:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Allowed: {', '.join(allowed)}."
            self.problem((*keypath, key), f"unknown key.{hint}")

    def get(
        self,
        table: Mapping[str, Any],
        keypath: tuple[str, ...],
        kind: type | tuple[type, ...],
        *,
        required: bool = False,
        default: Any = None,
        check: Callable[[Any], str | None] | None = None,
        what: str = "",
    ) -> Any:
        key = keypath[-1]
        if key not in table:
            if required:
                self.problem(keypath, f"missing; expected {what or _type_name(kind)}.")
            return default
        value = table[key]
        # TOML booleans are not integers here, even though bool is a subclass of int in Python.
        wrong_type = not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind))
        if wrong_type:
            self.problem(keypath, f"expected {what or _type_name(kind)}, got {_kind(value)}.")
            return default
        if isinstance(value, str) and "\x00" in value:
            # A NUL cannot be in a path, a port, a name or a pattern; Python's path calls raise on it.
            self.problem(keypath, "contains a NUL character (\\0); expected plain text.")
            return default
        if check is not None:
            reason = check(value)
            if reason:
                self.problem(keypath, reason)
                return default
        return value

    def existing_file(self, value: str, keypath: tuple[str, ...]) -> str | None:
        resolved = (self.base / value).resolve() if value else self.base
        if not value or not resolved.is_file():
            self.problem(
                keypath, f"expected an existing file (relative to {self.base}); {resolved} does not exist."
            )
            return None
        return str(resolved)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", dict: "a table", list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"{shown!r} (a string)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _pattern_check(regex: re.Pattern[str], expected: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if regex.fullmatch(value):
            return None
        return f"expected {expected}, got {_kind(value)}."

    return check


def _range_check(low: int, high: int, expected: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"expected {expected}, got {value}."

    return check


def _station_section(c: _Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    keypath = ("station",)
    table = c.table(data, keypath, required=True)
    c.unknown_keys(
        table,
        keypath,
        (
            "id",
            "operator",
            "ledger",
            "qa_pin",
            "qa_pin_hash",
            "labels",
            "cleanup_interval_s",
            "cleanup_max_interval_s",
            "sign_in",
        ),
    )
    station_id = c.get(
        table,
        (*keypath, "id"),
        str,
        required=True,
        check=_pattern_check(_STATION_ID_RE, "a station id of letters, digits, '.', '_' or '-' (1-64)"),
        what="a station id such as 'line1-station3'",
    )
    operator = c.get(table, (*keypath, "operator"), str)
    ledger = c.get(
        table,
        (*keypath, "ledger"),
        str,
        required=True,
        check=lambda v: None if v.strip() else "expected a path to the ledger file, got an empty string.",
        what="the ledger file's path, e.g. 'ledger.sqlite'",
    )
    pin_path = (*keypath, "qa_pin")
    qa_pin = None
    if isinstance(table.get("qa_pin"), int) and not isinstance(table.get("qa_pin"), bool):
        # A PIN written as a number loses leading zeros ("0042" → 42): insist on a string.
        c.problem(
            pin_path,
            f'expected the PIN as a quoted string of 4-12 digits, e.g. qa_pin = "{table["qa_pin"]:04d}".',
        )
    else:
        qa_pin = c.get(
            table,
            pin_path,
            str,
            check=_pattern_check(_PIN_RE, "a string of 4-12 digits"),
            what="a string of 4-12 digits",
        )
    hash_path = (*keypath, "qa_pin_hash")
    qa_pin_hash = c.get(
        table, hash_path, str, check=_pin_hash_check, what="the line `station pin-hash` prints"
    )
    if qa_pin is not None and qa_pin_hash is not None:
        c.problem(pin_path, "give qa_pin_hash only (the plain qa_pin is for the lab and the demo), not both.")
    seconds = _seconds_check(0.1, 3600.0)
    interval = c.get(
        table, (*keypath, "cleanup_interval_s"), (int, float), default=10.0, check=seconds, what="seconds"
    )
    longest = c.get(
        table, (*keypath, "cleanup_max_interval_s"), (int, float), default=None, check=seconds, what="seconds"
    )
    if longest is None:
        longest = max(30.0, float(interval))
    elif longest < interval:
        c.problem(
            (*keypath, "cleanup_max_interval_s"),
            f"expected at least cleanup_interval_s ({interval:g} s), got {longest:g}.",
        )
        longest = interval
    return {
        "station_id": station_id,
        "operator": operator,
        # A shared ledger (several stations) is a URL and stays one; a file is resolved against the config.
        "ledger_path": (
            ledger
            if ledger and ledger.startswith("dynamodb://")
            else (c.base / ledger).resolve()
            if ledger
            else None
        ),
        "qa_pin": qa_pin,
        "qa_pin_hash": qa_pin_hash,
        "cleanup_interval_s": float(interval),
        "cleanup_max_interval_s": float(longest),
        "sign_in": bool(c.get(table, (*keypath, "sign_in"), bool, default=False, what="true or false")),
    }


def _pin_hash_check(value: str) -> str | None:
    from station.qapin import parse_pin_hash

    try:
        parse_pin_hash(value)
    except InputError as error:
        return f"{error.message} {error.next_action}"
    return None


def _seconds_check(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"expected {low:g}–{high:g} seconds, got {value}."

    return check


_TARGET_KEYS = (
    "region",
    "policy_name",
    "policy_document",
    "policy_file",
    "thing_name_template",
    "account_id",
    "profile",
    "role_arn",
    "endpoint",
    "port",
    "ca_file",
    "endpoint_url",
    "aws_access_key_id",
    "aws_secret_access_key",
    "thing_type",
    "thing_group",
    "key_type",
    "certificate_days",
    "issuer",
    "lab",
)
_ISSUER_KEYS = ("certificate_file", "key_file", "passphrase_env")


def _template_check(value: str) -> str | None:
    try:
        naming.validate_template(value)
    except InputError as error:
        return f"{error.message} Expected a template such as '{{product}}-{{serial}}'."
    return None


def _policy_text_problem(text: str) -> str | None:
    try:
        document = json.loads(text)
    except ValueError as error:
        return f"expected a JSON policy document; it is not valid JSON ({error})."
    statements = document.get("Statement") if isinstance(document, dict) else None
    if not isinstance(statements, list | dict) or not statements:
        return 'expected a JSON policy document with a "Statement" list.'
    return None


def _target(c: _Checker, name: str, table: dict[str, Any]) -> Target | None:
    kp = ("targets", name)
    c.unknown_keys(table, kp, _TARGET_KEYS)
    before = len(c.problems)
    if not _NAME_RE.fullmatch(name):
        c.problem(kp, "expected a target name of letters, digits, '.', '_' or '-'.")
    region = c.get(
        table,
        (*kp, "region"),
        str,
        required=True,
        check=_pattern_check(_REGION_RE, "an AWS region such as 'eu-west-1'"),
        what="an AWS region such as 'eu-west-1'",
    )
    policy_name = c.get(
        table,
        (*kp, "policy_name"),
        str,
        required=True,
        check=_pattern_check(
            _POLICY_NAME_RE, "an AWS IoT policy name (letters, digits, '_+=,.@-', up to 128)"
        ),
        what="the AWS IoT policy name to attach, e.g. 'station-device'",
    )
    policy_document: str | None = None
    inline = c.get(table, (*kp, "policy_document"), str)
    policy_file = c.get(table, (*kp, "policy_file"), str)
    if inline is not None and policy_file is not None:
        c.problem((*kp, "policy_file"), "give either policy_document (inline) or policy_file, not both.")
    elif inline is not None:
        reason = _policy_text_problem(inline)
        if reason:
            c.problem((*kp, "policy_document"), reason)
        policy_document = inline
    elif policy_file is not None:
        resolved = c.existing_file(policy_file, (*kp, "policy_file"))
        if resolved:
            try:
                with Path(resolved).open("rb") as handle:
                    raw_policy = handle.read(MAX_POLICY_BYTES + 1)
                if len(raw_policy) > MAX_POLICY_BYTES:
                    raise ValueError(f"it is larger than {MAX_POLICY_BYTES:,} bytes")
                policy_document = raw_policy.decode("utf-8")
            except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
                c.problem((*kp, "policy_file"), f"expected a readable UTF-8 JSON file ({error}).")
            else:
                reason = _policy_text_problem(policy_document)
                if reason:
                    c.problem((*kp, "policy_file"), f"{resolved}: {reason}")
    else:
        policy_document = LEAST_PRIVILEGE_POLICY_JSON  # safe default: the least-privilege policy
    template = c.get(
        table,
        (*kp, "thing_name_template"),
        str,
        default=naming.DEFAULT_TEMPLATE,
        check=_template_check,
    )
    account_id = c.get(
        table,
        (*kp, "account_id"),
        str,
        check=_pattern_check(_ACCOUNT_RE, "a 12-digit AWS account id as a string"),
    )
    profile = c.get(
        table, (*kp, "profile"), str, check=lambda v: None if v.strip() else "expected a profile name."
    )
    role_arn = c.get(
        table,
        (*kp, "role_arn"),
        str,
        check=_pattern_check(
            _ROLE_ARN_RE, "an IAM role ARN such as 'arn:aws:iam::123456789012:role/station'"
        ),
    )
    if role_arn:
        role_account = _ROLE_ARN_RE.fullmatch(role_arn).group(1)  # type: ignore[union-attr]
        if account_id and account_id != role_account:
            c.problem((*kp, "account_id"), f"is {account_id}, but role_arn is in account {role_account}.")
        account_id = account_id or role_account
    endpoint = c.get(
        table,
        (*kp, "endpoint"),
        str,
        check=_pattern_check(
            _HOST_RE, "a host name without scheme or port, e.g. 'abc123-ats.iot.eu-west-1.amazonaws.com'"
        ),
    )
    port = c.get(
        table,
        (*kp, "port"),
        int,
        default=8883,
        check=_range_check(1, 65535, "a TCP port 1-65535 (8883 or 443)"),
    )
    ca_file = c.get(table, (*kp, "ca_file"), str)
    if ca_file is not None:
        ca_file = c.existing_file(ca_file, (*kp, "ca_file"))
    endpoint_url = c.get(
        table,
        (*kp, "endpoint_url"),
        str,
        check=_pattern_check(_URL_RE, "an http(s) URL such as 'http://127.0.0.1:5000'"),
    )
    key_id = c.get(table, (*kp, "aws_access_key_id"), str)
    secret = c.get(table, (*kp, "aws_secret_access_key"), str)
    lab = c.get(table, (*kp, "lab"), bool, default=False)
    if (key_id is None) != (secret is None):
        missing = "aws_secret_access_key" if secret is None else "aws_access_key_id"
        c.problem(
            (*kp, missing),
            "missing; static credentials need both aws_access_key_id and aws_secret_access_key.",
        )
    if (key_id is not None or secret is not None) and not lab:
        which = "aws_access_key_id" if key_id is not None else "aws_secret_access_key"
        c.problem(
            (*kp, which),
            "static credentials in station.toml are for lab targets only (lab = true); use profile or role_arn.",
        )
    thing_type = c.get(
        table,
        (*kp, "thing_type"),
        str,
        check=_pattern_check(_THING_TYPE_RE, "a thing type name ([a-zA-Z0-9:_-], up to 128)"),
    )
    thing_group = c.get(
        table,
        (*kp, "thing_group"),
        str,
        check=_pattern_check(_THING_TYPE_RE, "a thing group name ([a-zA-Z0-9:_-], up to 128)"),
    )
    key_type = c.get(
        table,
        (*kp, "key_type"),
        str,
        default="ec-p256",
        check=lambda v: None if v in KEY_TYPES else f"expected one of {', '.join(KEY_TYPES)}, got {v!r}.",
    )
    days = c.get(
        table,
        (*kp, "certificate_days"),
        int,
        default=3650,
        check=_range_check(1, MAX_DAYS, f"1 to {MAX_DAYS} days"),
    )
    issuer = _issuer(c, table, (*kp, "issuer"))
    if len(c.problems) > before:
        return None
    return Target(
        name=name,
        region=region,
        policy_name=policy_name,
        policy_document=policy_document or "",
        thing_name_template=template,
        account_id=account_id,
        profile=profile,
        role_arn=role_arn,
        endpoint=endpoint,
        port=port,
        ca_file=ca_file,
        endpoint_url=endpoint_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        thing_type=thing_type,
        thing_group=thing_group,
        key_type=key_type,
        certificate_days=days,
        issuer=issuer,
        lab=lab,
    )


def _issuer(c: _Checker, target_table: Mapping[str, Any], kp: tuple[str, ...]) -> Issuer | None:
    if "issuer" not in target_table:
        return None
    table = c.table(target_table, kp, required=False)
    if not table:
        if isinstance(target_table.get("issuer"), dict):
            c.problem(kp, "empty; expected certificate_file and key_file.")
        return None
    c.unknown_keys(table, kp, _ISSUER_KEYS)
    cert = c.get(
        table, (*kp, "certificate_file"), str, required=True, what="the factory CA certificate's path"
    )
    key = c.get(table, (*kp, "key_file"), str, required=True, what="the factory CA key's path")
    env = c.get(
        table,
        (*kp, "passphrase_env"),
        str,
        check=_pattern_check(
            _ENV_RE, "the NAME of an environment variable (the passphrase itself never goes here)"
        ),
    )
    cert_path = c.existing_file(cert, (*kp, "certificate_file")) if cert is not None else None
    key_path = c.existing_file(key, (*kp, "key_file")) if key is not None else None
    if cert_path is None or key_path is None:
        return None
    return Issuer(certificate_file=cert_path, key_file=key_path, passphrase_env=env)


def _product(c: _Checker, name: str, table: dict[str, Any]) -> Product | None:
    kp = ("products", name)
    c.unknown_keys(table, kp, ("serial_pattern", "flasher", "target", "options", "on_reprovision"))
    before = len(c.problems)
    if not _NAME_RE.fullmatch(name) or naming.THING_NAME_RE.fullmatch(name) is None:
        c.problem(
            kp, "expected a product name of letters, digits, '_' or '-' (it may appear in thing names)."
        )

    def pattern_check(value: str) -> str | None:
        try:
            naming.compile_serial_pattern(value)
        except InputError as error:
            return f"expected a regular expression for the whole serial, e.g. 'SN[0-9]{{8}}': {error.message}"
        return None

    pattern = c.get(
        table,
        (*kp, "serial_pattern"),
        str,
        required=True,
        check=pattern_check,
        what="a regular expression such as 'SN[0-9]{8}'",
    )
    # Families are whatever is installed in the `station.flashers` entry-point group (the built-in ones
    # register exactly like a third party's), checked at load so a misspelt family is caught before the
    # first unit is in the jig.
    families = flasher_plugins.available()
    flasher = c.get(
        table,
        (*kp, "flasher"),
        str,
        required=True,
        check=lambda v: None if v in families else f"expected one of {', '.join(families)}, got {v!r}.",
        what=f"an installed flasher family ({', '.join(families)})",
    )
    target = c.get(table, (*kp, "target"), str, required=True, what="the name of a [targets.NAME] table")
    options = c.get(table, (*kp, "options"), dict, default={})
    on_reprovision = c.get(
        table,
        (*kp, "on_reprovision"),
        str,
        default="refuse",
        check=lambda v: None if v in REPROVISION_POLICIES else f"expected 'refuse' or 'replace', got {v!r}.",
        what="'refuse' or 'replace'",
    )
    if len(c.problems) > before:
        return None
    return Product(
        name=name,
        serial_pattern=pattern,
        flasher=flasher,
        target=target,
        options=dict(options),
        on_reprovision=on_reprovision,
    )


def _slot(c: _Checker, name: str, table: dict[str, Any]) -> Slot | None:
    kp = ("slots", name)
    c.unknown_keys(table, kp, ("port", "baud", "product"))
    before = len(c.problems)
    if not _NAME_RE.fullmatch(name):
        c.problem(kp, "expected a slot name of letters, digits, '.', '_' or '-'.")
    port = c.get(
        table,
        (*kp, "port"),
        str,
        required=True,
        check=lambda v: (
            None
            if v.strip()
            else "expected a serial port or URL such as '/dev/ttyUSB0' or 'socket://host:port'."
        ),
        what="a serial port or URL such as '/dev/ttyUSB0'",
    )
    baud = c.get(
        table,
        (*kp, "baud"),
        int,
        default=DEFAULT_BAUD,
        check=_range_check(_BAUD_MIN, _BAUD_MAX, f"a baud rate from {_BAUD_MIN} to {_BAUD_MAX}, e.g. 115200"),
    )
    product = c.get(table, (*kp, "product"), str)
    if len(c.problems) > before:
        return None
    return Slot(name=name, port=port, baud=baud, product=product)


def _named_tables(
    c: _Checker, data: Mapping[str, Any], section: str, *, required: bool
) -> dict[str, dict[str, Any]]:
    tables = c.table(data, (section,), required=required)
    out: dict[str, dict[str, Any]] = {}
    for name, value in tables.items():
        if not isinstance(value, dict):
            c.problem((section, name), f"expected a table [{section}.{name}], got {_kind(value)}.")
            continue
        out[name] = value
    if required and isinstance(data.get(section), dict) and not out:
        c.problem((section,), f"expected at least one [{section}.NAME] table.")
    return out


def _declared(data: Mapping[str, Any], section: str) -> set[str]:
    tables = data.get(section)
    return (
        {name for name, value in tables.items() if isinstance(value, dict)}
        if isinstance(tables, dict)
        else set()
    )


def _parse_error_line(error: tomllib.TOMLDecodeError) -> int | None:
    lineno = getattr(error, "lineno", None)  # Python 3.14 adds positions; older ones only have the text
    if isinstance(lineno, int):
        return lineno
    match = re.search(r"line (\d+)", str(error))
    return int(match.group(1)) if match else None


def load_config(path: str | Path) -> StationConfig:
    """Read and validate station.toml; `ConfigError` (file, line, field, what is expected) otherwise."""
    if "\x00" in str(path):
        raise ConfigError(
            "Configuration path not usable",
            f"The path {str(path)!r} contains a NUL character.",
            "Give the path of station.toml (--config) again.",
        )
    path = Path(path).expanduser().resolve()
    try:
        with path.open("rb") as handle:  # at most one byte past the limit (a pipe or device has no size)
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            "Configuration not found",
            f"There is no file {path}.",
            "Give the path of station.toml (--config).",
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            "Configuration is a folder", f"{path} is a folder.", "Give the path of station.toml."
        ) from None
    except OSError as error:
        raise ConfigError(
            "Configuration not readable",
            f"{path} cannot be read ({error.strerror}).",
            "Check the file's permissions.",
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "Configuration too large",
            f"{path} is larger than {MAX_CONFIG_BYTES:,} bytes, the most the station reads as station.toml.",
            "Check that --config names the station's station.toml.",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            "Invalid station configuration",
            f"{path}:{line}: the file is not UTF-8 text.",
            "Save the file as UTF-8.",
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        parse_line = _parse_error_line(error)
        at = f"{path}:{parse_line}" if parse_line else str(path)
        raise ConfigError("Invalid station configuration", f"{at}: not valid TOML: {error}.", _FIX) from None
    except RecursionError:  # tomllib recurses once per nesting level: [[[[…]]]] thousands deep
        raise ConfigError(
            "Invalid station configuration",
            f"{path}: arrays or tables nested too deeply to read (a station.toml nests at most a few levels).",
            _FIX,
        ) from None
    return validate_config(data, path=path, text=text)


@dataclass(frozen=True)
class LabelSettings:
    """`[station.labels]`: the label printed for every PASS (see station/labels.py)."""

    printer: str  # tcp://host:9100, lp://QUEUE, file:PATH or a path
    qr_payload: str = "{thing_name}"
    timeout_s: float = 5.0


def _labels_section(c: _Checker, data: Mapping[str, Any]) -> LabelSettings | None:
    station = data.get("station")
    if not isinstance(station, Mapping) or "labels" not in station:
        return None
    keypath = ("station", "labels")
    table = c.table(station, keypath, required=True)
    c.unknown_keys(table, keypath, ("printer", "qr_payload", "timeout_s"))
    from station.labels import check_payload_template

    printer = c.get(
        table,
        (*keypath, "printer"),
        str,
        required=True,
        check=lambda v: None if v.strip() else "expected where labels go, got an empty string.",
        what="'tcp://HOST:9100', 'lp://QUEUE' or a file path",
    )
    payload = c.get(
        table,
        (*keypath, "qr_payload"),
        str,
        default="{thing_name}",
        check=check_payload_template,
        what="a template such as '{thing_name}' or 'https://example.com/u/{serial}'",
    )
    timeout = c.get(
        table,
        (*keypath, "timeout_s"),
        (int, float),
        default=5.0,
        check=lambda v: None if 0 < v <= 60 else f"expected 0-60 seconds, got {v}.",
        what="seconds to wait for the printer",
    )
    if printer is None:
        return None
    return LabelSettings(printer=printer, qr_payload=payload or "{thing_name}", timeout_s=float(timeout))


@dataclass(frozen=True)
class Person:
    """`[people.NAME]`: someone who works at the station. `badge` is what their badge scans as; a
    `qa_pin_hash` (from `station pin-hash --person NAME`, never a plain PIN) lets them open the QA desk, and
    names them on what they do there."""

    name: str
    badge: str | None = None
    qa_pin_hash: str | None = field(default=None, repr=False)


_PERSON_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


def _people_section(c: _Checker, data: Mapping[str, Any]) -> dict[str, Person]:
    people: dict[str, Person] = {}
    badges: dict[str, str] = {}
    for name, table in _named_tables(c, data, "people", required=False).items():
        keypath = ("people", name)
        c.unknown_keys(table, keypath, ("badge", "qa_pin_hash", "qa_pin"))
        if not _PERSON_RE.fullmatch(name) or not name.strip():
            c.problem(keypath, "expected a person's name of 1-64 printable characters.")
            continue
        if "qa_pin" in table:
            # A person's PIN is kept only as a salted hash, even in the lab.
            c.problem(
                (*keypath, "qa_pin"),
                f"a person's PIN is kept only as a hash: put the line `station pin-hash --person {name}` "
                "prints here (qa_pin_hash = ...).",
            )
        badge = c.get(
            table,
            (*keypath, "badge"),
            str,
            check=lambda v: None if v.strip() else "expected what the badge scans as, got an empty string.",
            what="what the person's badge scans as",
        )
        pin_hash = c.get(
            table,
            (*keypath, "qa_pin_hash"),
            str,
            check=_pin_hash_check,
            what="the line `station pin-hash` prints",
        )
        if badge is not None:
            badge = badge.strip()
            if badge in badges:
                c.problem(
                    (*keypath, "badge"), f"is also the badge of {badges[badge]!r}; one badge per person."
                )
                continue
            badges[badge] = name
        people[name] = Person(name=name, badge=badge, qa_pin_hash=pin_hash)
    return people


@dataclass(frozen=True)
class BudgetSettings:
    """`[budget]`: where the AWS rate budget shared by several stations lives (none: this station alone)."""

    store: str  # dynamodb://TABLE?region=R[&endpoint_url=URL][&profile=P]
    fallback_share: float = 0.25  # of each quota, used alone while the store does not answer


def _budget_section(c: _Checker, data: Mapping[str, Any]) -> BudgetSettings | None:
    keypath = ("budget",)
    if "budget" not in data:
        return None
    table = c.table(data, keypath, required=True)
    c.unknown_keys(table, keypath, ("store", "fallback_share"))
    store = c.get(
        table,
        (*keypath, "store"),
        str,
        required=True,
        check=lambda v: (
            None
            if v.startswith("dynamodb://") and "region=" in v
            else f"expected 'dynamodb://TABLE?region=REGION', got {v!r}."
        ),
        what="a shared store such as 'dynamodb://station-budget?region=eu-west-1'",
    )
    share = c.get(
        table,
        (*keypath, "fallback_share"),
        (int, float),
        default=0.25,
        check=lambda v: None if 0 < v <= 1 else f"expected a share of the quota between 0 and 1, got {v}.",
        what="a number between 0 and 1 (e.g. 1/number of stations)",
    )
    if store is None:
        return None
    return BudgetSettings(store=store, fallback_share=float(share))


def validate_config(data: Mapping[str, Any], *, path: Path, text: str = "") -> StationConfig:
    """Validate already-parsed TOML data (`text` is the source, used only to find line numbers)."""
    c = _Checker(path, text)
    c.unknown_keys(data, (), ("station", "targets", "products", "slots", "budget", "people"))
    station = _station_section(c, data)
    budget = _budget_section(c, data)
    labels = _labels_section(c, data)
    people = _people_section(c, data)

    targets: dict[str, Target] = {}
    for name, table in _named_tables(c, data, "targets", required=True).items():
        target = _target(c, name, table)
        if target is not None:
            targets[name] = target
    # Cross-references are checked against every declared name, valid or not, so one mistake in a target
    # does not also show up as a dangling reference in each product that uses it.
    target_names = _declared(data, "targets")

    products: dict[str, Product] = {}
    for name, table in _named_tables(c, data, "products", required=False).items():
        product = _product(c, name, table)
        if product is None:
            continue
        if product.target not in target_names:
            known = ", ".join(sorted(target_names)) or "none"
            c.problem(
                ("products", name, "target"),
                f"names target {product.target!r}, which is not defined (known: {known}).",
            )
            continue
        products[name] = product
    product_names = _declared(data, "products")

    slots: dict[str, Slot] = {}
    ports: dict[str, str] = {}
    for name, table in _named_tables(c, data, "slots", required=False).items():
        slot = _slot(c, name, table)
        if slot is None:
            continue
        if slot.product is not None and slot.product not in product_names:
            known = ", ".join(sorted(product_names)) or "none"
            c.problem(
                ("slots", name, "product"),
                f"names product {slot.product!r}, which is not defined (known: {known}).",
            )
            continue
        if slot.port in ports:
            c.problem(
                ("slots", name, "port"),
                f"{slot.port!r} is already used by slot {ports[slot.port]!r}; one unit per port.",
            )
            continue
        ports[slot.port] = name
        slots[name] = slot

    c.raise_if_any()
    return StationConfig(
        path=path,
        station_id=station["station_id"],
        ledger_path=station["ledger_path"],
        operator=station["operator"],
        qa_pin=station["qa_pin"],
        cleanup_interval_s=station["cleanup_interval_s"],
        cleanup_max_interval_s=station["cleanup_max_interval_s"],
        budget=budget,
        labels=labels,
        qa_pin_hash=station["qa_pin_hash"],
        sign_in=station["sign_in"],
        people=people,
        targets=targets,
        products=products,
        slots=slots,
    )


# --------------------------------------------------------------------------------------------------------
# Policies


def render_policy(target: Target, account_id: str) -> str:
    """The target's policy document with the REGION and ACCOUNT placeholders filled in.

    Placeholders are whole words (so `REGIONAL` is left alone); the result must be valid JSON.
    """
    if not isinstance(account_id, str) or not _ACCOUNT_RE.fullmatch(account_id):
        raise InputError(
            "Invalid account id",
            f"Cannot fill in the policy for target {target.name!r}: {account_id!r} is not a 12-digit account id.",
            "Check the target's credentials (preflight shows the account they resolve to).",
        )
    values = {"REGION": target.region, "ACCOUNT": account_id}
    text = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], target.policy_document)
    reason = _policy_text_problem(text)
    if reason:
        raise ConfigError(
            "Invalid policy document",
            f"The policy document of target {target.name!r} is unusable: {reason}",
            "Fix policy_document / policy_file of this target in station.toml.",
        )
    return text


_ALL_IOT_RESOURCE = re.compile(r"arn:aws[a-z-]*:iot:[^:]*:[^:]*:\*")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def is_over_broad(policy_json: str) -> str | None:
    """Why this policy is too broad for a production target, or None when it is not.

    Over-broad: an Allow statement whose actions include `*` or `iot:*` on a resource that is `*` (or an
    ARN matching every IoT resource), or any Allow with NotAction/NotResource (they grant everything else).
    Deny statements never make a policy broader. Invalid JSON is an `InputError`, not a verdict.
    """
    try:
        document = json.loads(policy_json)
    except (ValueError, TypeError) as error:
        raise InputError(
            "Invalid policy document", f"The policy is not valid JSON ({error}).", "Fix the policy document."
        ) from None
    if not isinstance(document, dict):
        raise InputError(
            "Invalid policy document", "The policy is not a JSON object.", "Fix the policy document."
        )
    for index, statement in enumerate(_as_list(document.get("Statement")), start=1):
        if not isinstance(statement, dict) or str(statement.get("Effect", "")).lower() != "allow":
            continue
        sid = f" ({statement['Sid']})" if isinstance(statement.get("Sid"), str) else ""
        if "NotAction" in statement or "NotResource" in statement:
            which = "NotAction" if "NotAction" in statement else "NotResource"
            return f"statement {index}{sid} allows with {which}, which grants everything not listed"
        actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
        resources = [r for r in _as_list(statement.get("Resource")) if isinstance(r, str)]
        broad_actions = [a for a in actions if a.strip().lower() in ("*", "iot:*")]
        broad_resources = [r for r in resources if r.strip() == "*" or _ALL_IOT_RESOURCE.fullmatch(r.strip())]
        if broad_actions and broad_resources:
            return (
                f"statement {index}{sid} allows {broad_actions[0]} on resource {broad_resources[0]}: any device "
                "could act as any other"
            )
    return None
