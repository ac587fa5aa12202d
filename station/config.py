"""`station.toml` → validated, typed configuration: the station, its targets, products and slots.

What it does: reads the file with tomllib and validates it against a pydantic (v2) schema: every table is a
class below whose fields are the keys it allows, each with its TOML type, default and check, and unknown
keys are refused (a typo must not pass silently). The few rules that span keys or tables (policy_document or
policy_file; static credentials only for lab targets; role_arn's account; product → target, slot → product,
one unit per port) are checked after. Relative paths are resolved against the config file's folder and policy
files are read. Every problem is reported in one `ConfigError` whose lines name the file, the line (tomllib
gives no positions, so `SourceLocator` finds them in the text), the field, what is expected and what was found.

What it must not do: talk to AWS, open serial ports, read keys or passphrases (a factory CA's passphrase
stays in the environment variable the config names), or write anything. Policy documents themselves (the
least-privilege default, rendering, the over-broad check) are `station.policy`'s job.

Adding a key is one line in its table's class. A `[station]` key, for example:

    chime: Annotated[Bool, Field(description="true or false")] = False

`StationConfig` extends `StationSettings`, so the value is `config.chime` at once (give a new key a default:
files without it, and code that builds a `StationConfig` itself, keep working). Use the TOML value types
below (`Text`, `Int`, `Number`, `Bool`, `Table`); `Field(description=...)` says what is expected (shown when
the key is missing or of the wrong type), `Field(alias=...)` names a key whose attribute is spelt
differently, and `_check(fn)` adds a check whose answer (None, or what is wrong) is shown as it is.
`[budget]` and `[station.labels]` work the same way. A key of `[targets.*]`, `[products.*]` or `[slots.*]`
also needs its attribute on `Target` (station/model.py), `Product` or `Slot`, which are made from the
validated table key by key.

Layout (every table is keyed by name; see fixtures/configs/station.toml):

    [station]            id, ledger, operator?, qa_pin_hash? (or a plain qa_pin: lab and demo),
                         cleanup_interval_s?, cleanup_max_interval_s?, language?, card_reset_s?, bell?,
                         sign_in?, [station.labels]
    [people.NAME]        badge?, qa_pin_hash? (who may work here; a listed person signs in by name or badge,
                         and a QA PIN of their own names them on every QA action)
    [targets.NAME]       region, policy_name, policy_document | policy_file, profile? role_arn? …
    [targets.NAME.issuer] certificate_file, key_file, passphrase_env?
    [products.NAME]      serial_pattern, flasher, target, on_reprovision ("refuse" | "replace"),
                         [products.NAME.options] (per-family, free-form)
    [slots.NAME]         port, baud?, product?
    [budget]             store, fallback_share?
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, Union, get_args, get_origin, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    with_config,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

import flashers as flasher_plugins
from station import naming
from station.errors import ConfigError, InputError
from station.identity import KEY_TYPES, MAX_DAYS
from station.model import Issuer, Target
from station.policy import ACCOUNT_RE, LEAST_PRIVILEGE_POLICY_JSON, policy_problem
from station.qapin import parse_pin_hash

DEFAULT_BAUD = 115200

_REGION_RE = re.compile(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d{1,2}")
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
_STATION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POLICY_NAME_RE = re.compile(r"[\w+=,.@-]{1,128}")
_HOST_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_URL_RE = re.compile(r"https?://[^\s/]+(/\S*)?")
_PIN_RE = re.compile(r"\d{4,12}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_THING_TYPE_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*")  # en, ja, pt_BR, zh-Hant
# Any rate a USB-serial adapter can do; devices use odd ones (74880, 250000), so no fixed list.
_BAUD_MIN, _BAUD_MAX = 50, 12_000_000

_FIX = "Fix station.toml and run the command again."
MAX_CONFIG_BYTES = 256 * 1024  # a station.toml is a few kilobytes, even with dozens of slots
MAX_POLICY_BYTES = 64 * 1024  # AWS IoT allows 2,048 characters of policy (whitespace aside)
MAX_PROBLEMS_SHOWN = 25  # a wrong file (not a config) must not turn into a message of thousands of lines
REPROVISION_POLICIES = ("refuse", "replace")


# --------------------------------------------------------------------------------------------------------
# Value types and checks. TOML's types are kept apart (strict): "8883" is not a port, true is not a number.

_CHECK_ERROR = "station_config"


def _fail(reason: str) -> NoReturn:
    """Refuse a value with `reason` as the whole message (no "Value error, " prefix)."""
    raise PydanticCustomError(_CHECK_ERROR, "{reason}", {"reason": reason})


def _check(test: Callable[[Any], str | None]) -> AfterValidator:
    """A check after the type is right: `test` answers None (fine) or what is wrong."""

    def run(value: Any) -> Any:
        reason = test(value)
        if reason:
            _fail(reason)
        return value

    return AfterValidator(run)


def _pattern(regex: re.Pattern[str], expected: str) -> AfterValidator:
    return _check(
        lambda value: None if regex.fullmatch(value) else f"expected {expected}, got {_kind(value)}."
    )


def _within(low: float, high: float, expected: str) -> AfterValidator:
    return _check(lambda value: None if low <= value <= high else f"expected {expected}, got {value}.")


def _seconds(low: float, high: float) -> AfterValidator:
    return _check(lambda v: None if low <= v <= high else f"expected {low:g}–{high:g} seconds, got {v}.")


def _one_of(choices: tuple[str, ...], expected: str) -> AfterValidator:
    return _check(lambda value: None if value in choices else f"expected {expected}, got {value!r}.")


def _not_blank(message: str) -> AfterValidator:
    return _check(lambda value: None if value.strip() else message)


def _no_nul(value: str) -> str | None:
    # A NUL cannot be in a path, a port, a name or a pattern; Python's path calls raise on it.
    return "contains a NUL character (\\0); expected plain text." if "\x00" in value else None


Text = Annotated[str, Strict(), _check(_no_nul)]
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # an integer or a float, not a boolean
Bool = Annotated[bool, Strict()]
Table = Annotated[dict[str, Any], Strict()]


def _base(info: ValidationInfo) -> Path:
    """The config file's folder, which relative paths are resolved against (the validation context)."""
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base", "."))


def _existing_file(value: str, info: ValidationInfo) -> str:
    base = _base(info)
    resolved = (base / value).resolve() if value else base
    try:
        found = bool(value) and resolved.is_file()
    except OSError:  # a name too long for the file system, say
        found = False
    if not found:
        _fail(f"expected an existing file (relative to {base}); {resolved} does not exist.")
    return str(resolved)


def _policy_file(value: str, info: ValidationInfo) -> str:
    """The policy file's absolute path, once it is known to hold a usable policy document."""
    resolved = _existing_file(value, info)
    try:
        document = _read_policy(resolved)
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        _fail(f"expected a readable UTF-8 JSON file ({error}).")
    reason = policy_problem(document)
    if reason:
        _fail(f"{resolved}: {reason}")
    return resolved


def _read_policy(path: str) -> str:
    with Path(path).open("rb") as handle:
        raw = handle.read(MAX_POLICY_BYTES + 1)
    if len(raw) > MAX_POLICY_BYTES:
        raise ValueError(f"it is larger than {MAX_POLICY_BYTES:,} bytes")
    return raw.decode("utf-8")


def _ledger(value: Any, info: ValidationInfo) -> Path | str:
    if not isinstance(value, str):
        _fail(f"expected the ledger file's path, e.g. 'ledger.sqlite', got {_kind(value)}.")
    reason = _no_nul(value) or (
        None if value.strip() else "expected a path to the ledger file, got an empty string."
    )
    if reason:
        _fail(reason)
    # A shared ledger (several stations) is a URL and stays one; a file is resolved against the config.
    return value if value.startswith("dynamodb://") else (_base(info) / value).resolve()


def _pin_as_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # A PIN written as a number loses leading zeros ("0042" → 42): insist on a string.
        _fail(f'expected the PIN as a quoted string of 4-12 digits, e.g. qa_pin = "{value:04d}".')
    return value


def _accepted_by(parse: Callable[[str], object], explain: Callable[[InputError], str]) -> AfterValidator:
    """A check that `parse` takes the value; its `InputError`, put in the config's words, is the message."""

    def check(value: str) -> str | None:
        try:
            parse(value)
        except InputError as error:
            return explain(error)
        return None

    return _check(check)


def _family_check(value: str) -> str | None:
    # Families are whatever is installed in the `station.flashers` entry-point group (the built-in ones
    # register exactly like a third party's), checked at load so a misspelt family is caught before the
    # first unit is in the jig.
    families = flasher_plugins.available()
    return None if value in families else f"expected one of {', '.join(families)}, got {value!r}."


def _payload_check(value: str) -> str | None:
    from station.labels import check_payload_template  # the label printer, only when labels are configured

    return check_payload_template(value)


def _budget_store_check(value: str) -> str | None:
    if value.startswith("dynamodb://") and "region=" in value:
        return None
    return f"expected 'dynamodb://TABLE?region=REGION', got {value!r}."


# --------------------------------------------------------------------------------------------------------
# The schema: one class per table. Classes that are also the result carry their own validation config.

_FORBID = ConfigDict(extra="forbid")


@with_config(_FORBID)
@dataclass(frozen=True)
class LabelSettings:
    """`[station.labels]`: the label printed for every PASS (see station/labels.py)."""

    printer: Annotated[
        Text,
        Field(description="'tcp://HOST:9100', 'lp://QUEUE' or a file path"),
        _not_blank("expected where labels go, got an empty string."),
    ]  # tcp://host:9100, lp://QUEUE, file:PATH or a path
    qr_payload: Annotated[
        Text,
        Field(description="a template such as '{thing_name}' or 'https://example.com/u/{serial}'"),
        _check(_payload_check),
    ] = "{thing_name}"
    timeout_s: Annotated[
        Number,
        Field(description="seconds to wait for the printer"),
        _check(lambda v: None if 0 < v <= 60 else f"expected 0-60 seconds, got {v}."),
    ] = 5.0


@with_config(_FORBID)
@dataclass(frozen=True)
class BudgetSettings:
    """`[budget]`: where the AWS rate budget shared by several stations lives (none: this station alone)."""

    store: Annotated[
        Text,
        Field(description="a shared store such as 'dynamodb://station-budget?region=eu-west-1'"),
        _check(_budget_store_check),
    ]  # dynamodb://TABLE?region=R[&endpoint_url=URL][&profile=P]
    fallback_share: Annotated[
        Number,
        Field(description="a number between 0 and 1 (e.g. 1/number of stations)"),
        _check(lambda v: None if 0 < v <= 1 else f"expected a share of the quota between 0 and 1, got {v}."),
    ] = 0.25  # of each quota, used alone while the store does not answer


@with_config(_FORBID)
@dataclass(frozen=True, kw_only=True)
class StationSettings:
    """`[station]`: which station this is, where its ledger is, and how it behaves."""

    station_id: Annotated[
        Text,
        Field(alias="id", description="a station id such as 'line1-station3'"),
        _pattern(_STATION_ID_RE, "a station id of letters, digits, '.', '_' or '-' (1-64)"),
    ]
    ledger_path: Annotated[
        Path | str,  # a file, or a shared ledger's URL (dynamodb://TABLE?region=…)
        Field(alias="ledger", description="the ledger file's path, e.g. 'ledger.sqlite'"),
        PlainValidator(_ledger),
    ]
    operator: Text | None = None
    qa_pin: Annotated[
        Text | None,
        Field(description="a string of 4-12 digits"),
        BeforeValidator(_pin_as_text),
        _pattern(_PIN_RE, "a string of 4-12 digits"),
    ] = field(default=None, repr=False)  # not a key, but no reason to print it
    # The QA PIN as a salted scrypt hash (station.qapin); production stations keep only this.
    qa_pin_hash: Annotated[
        Text | None,
        Field(description="the line `station pin-hash` prints"),
        _accepted_by(parse_pin_hash, lambda error: f"{error.message} {error.next_action}"),
    ] = field(default=None, repr=False)
    # The line's cleaner (station.cleanup): first retry after this, backing off up to the maximum
    # (left out: the larger of 30 s and cleanup_interval_s).
    cleanup_interval_s: Annotated[Number, Field(description="seconds"), _seconds(0.1, 3600.0)] = 10.0
    cleanup_max_interval_s: Annotated[Number, Field(description="seconds"), _seconds(0.1, 3600.0)] = 30.0
    # The language of the operator's and QA screens ("en", "ja"); None: from the locale.
    language: Annotated[
        Text | None,
        Field(description="a language code such as 'en' or 'ja'"),
        _pattern(_LANGUAGE_RE, "a language code such as 'en' or 'ja'"),
    ] = None
    labels: Annotated[LabelSettings | None, Field(description="a [station.labels] table")] = None
    # The operator screen: a finished unit's card returns to READY after this many seconds (0: only on the
    # next scan for its slot); the terminal bell rings on FAIL and ERROR unless `bell` is false.
    card_reset_s: Annotated[
        Number,
        Field(description="seconds (0: keep the outcome until the next scan)"),
        _check(lambda v: None if 0 <= v <= 86400 else f"expected 0 (never) to 86400 seconds, got {v}."),
    ] = 30.0
    bell: Annotated[Bool, Field(description="true or false")] = True
    # Ask who is working when the screen opens (also implied by a [people] list; station.people).
    sign_in: Annotated[Bool, Field(description="true or false")] = False


class _Schema(BaseModel):
    """A table whose result is built separately (its name is its key; some keys turn into others)."""

    model_config = _FORBID


class _IssuerTable(_Schema):
    certificate_file: Annotated[
        Text, Field(description="the factory CA certificate's path"), AfterValidator(_existing_file)
    ]
    key_file: Annotated[Text, Field(description="the factory CA key's path"), AfterValidator(_existing_file)]
    passphrase_env: Annotated[
        Text | None,
        _pattern(_ENV_RE, "the NAME of an environment variable (the passphrase itself never goes here)"),
    ] = None


class _TargetTable(_Schema):
    region: Annotated[
        Text,
        Field(description="an AWS region such as 'eu-west-1'"),
        _pattern(_REGION_RE, "an AWS region such as 'eu-west-1'"),
    ]
    policy_name: Annotated[
        Text,
        Field(description="the AWS IoT policy name to attach, e.g. 'station-device'"),
        _pattern(_POLICY_NAME_RE, "an AWS IoT policy name (letters, digits, '_+=,.@-', up to 128)"),
    ]
    policy_document: Annotated[Text | None, _check(policy_problem)] = None
    policy_file: Annotated[Text | None, AfterValidator(_policy_file)] = None  # → its absolute path
    thing_name_template: Annotated[
        Text,
        _accepted_by(
            naming.validate_template,
            lambda error: f"{error.message} Expected a template such as '{{product}}-{{serial}}'.",
        ),
    ] = naming.DEFAULT_TEMPLATE
    account_id: Annotated[Text | None, _pattern(ACCOUNT_RE, "a 12-digit AWS account id as a string")] = None
    profile: Annotated[Text | None, _not_blank("expected a profile name.")] = None
    role_arn: Annotated[
        Text | None,
        _pattern(_ROLE_ARN_RE, "an IAM role ARN such as 'arn:aws:iam::123456789012:role/station'"),
    ] = None
    endpoint: Annotated[
        Text | None,
        _pattern(
            _HOST_RE, "a host name without scheme or port, e.g. 'abc123-ats.iot.eu-west-1.amazonaws.com'"
        ),
    ] = None
    port: Annotated[Int, _within(1, 65535, "a TCP port 1-65535 (8883 or 443)")] = 8883
    ca_file: Annotated[Text | None, AfterValidator(_existing_file)] = None  # → its absolute path
    endpoint_url: Annotated[
        Text | None, _pattern(_URL_RE, "an http(s) URL such as 'http://127.0.0.1:5000'")
    ] = None
    aws_access_key_id: Text | None = None
    aws_secret_access_key: Text | None = None
    thing_type: Annotated[
        Text | None, _pattern(_THING_TYPE_RE, "a thing type name ([a-zA-Z0-9:_-], up to 128)")
    ] = None
    thing_group: Annotated[
        Text | None, _pattern(_THING_TYPE_RE, "a thing group name ([a-zA-Z0-9:_-], up to 128)")
    ] = None
    key_type: Annotated[Text, _one_of(KEY_TYPES, f"one of {', '.join(KEY_TYPES)}")] = "ec-p256"
    certificate_days: Annotated[Int, _within(1, MAX_DAYS, f"1 to {MAX_DAYS} days")] = 3650
    issuer: Annotated[_IssuerTable | None, Field(description="certificate_file and key_file")] = None
    lab: Bool = False  # lab/dev targets may use broad policies and static credentials; production ones not


class _ProductTable(_Schema):
    serial_pattern: Annotated[
        Text,
        Field(description="a regular expression such as 'SN[0-9]{8}'"),
        _accepted_by(
            naming.compile_serial_pattern,
            lambda error: (
                f"expected a regular expression for the whole serial, e.g. 'SN[0-9]{{8}}': {error.message}"
            ),
        ),
    ]
    flasher: Annotated[
        Text,
        Field(description="an installed device family (`station flashers` lists them)"),
        _check(_family_check),
    ]
    target: Annotated[Text, Field(description="the name of a [targets.NAME] table")]
    options: Table = Field(default_factory=dict)  # per-family flasher options, passed through
    on_reprovision: Annotated[
        Text,
        Field(description="'refuse' or 'replace'"),
        _one_of(REPROVISION_POLICIES, "'refuse' or 'replace'"),
    ] = "refuse"


class _SlotTable(_Schema):
    port: Annotated[
        Text,
        Field(description="a serial port or URL such as '/dev/ttyUSB0'"),
        _not_blank("expected a serial port or URL such as '/dev/ttyUSB0' or 'socket://host:port'."),
    ]
    baud: Annotated[
        Int, _within(_BAUD_MIN, _BAUD_MAX, f"a baud rate from {_BAUD_MIN} to {_BAUD_MAX}, e.g. 115200")
    ] = DEFAULT_BAUD
    product: Text | None = None


class _PersonTable(_Schema):
    badge: Annotated[
        Text | None,
        Field(description="what the person's badge scans as"),
        _check(
            lambda v: (
                None if v is None or v.strip() else "expected what the badge scans as, got an empty string."
            )
        ),
    ] = None
    qa_pin_hash: Annotated[
        Text | None,
        Field(description="the line `station pin-hash --person NAME` prints"),
        _accepted_by(parse_pin_hash, lambda error: f"{error.message} {error.next_action}"),
    ] = None


class _File(_Schema):
    """The whole file's shape: which tables there are. Each table is then validated on its own."""

    station: Annotated[Table, Field(description="a [station] table")]
    targets: Annotated[
        dict[str, Table],
        Field(description="a [targets] table (one [targets.NAME] per AWS account and region)"),
        _check(lambda v: None if v else "expected at least one [targets.NAME] table."),
    ]
    products: dict[str, Table] = Field(default_factory=dict)
    slots: dict[str, Table] = Field(default_factory=dict)
    budget: Table | None = None
    people: dict[str, Table] = Field(default_factory=dict)


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


@dataclass(frozen=True)
class Slot:
    """One position on the station: a serial port URL (pyserial `serial_for_url`) and, optionally, a product."""

    name: str
    port: str
    baud: int = DEFAULT_BAUD
    product: str | None = None


@dataclass(frozen=True)
class Person:
    """`[people.NAME]`: someone who works at the station. `badge` is what their badge scans as; a
    `qa_pin_hash` (from `station pin-hash --person NAME`, never a plain PIN) lets them open the QA desk, and
    names them on what they do there."""

    name: str
    badge: str | None = None
    qa_pin_hash: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class StationConfig(StationSettings):
    """A loaded, validated station.toml: the `[station]` settings (inherited) and every other table.

    Paths are absolute (resolved against the config's folder).
    """

    path: Path
    targets: dict[str, Target] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)
    slots: dict[str, Slot] = field(default_factory=dict)
    budget: BudgetSettings | None = None
    # Who may work at the station ([people.NAME]); the operator screen asks who is there when this lists
    # anyone or `sign_in` is set (station.people).
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
# Problems: pydantic's errors in the station's words, each at its file:line


def _toml_key(part: str) -> str:
    return part if re.fullmatch(_BARE_KEY, part) else json.dumps(part)


def _where(path: tuple[str, ...]) -> str:
    """`[targets.prod] region` style name for a key path, quoting parts as TOML would."""
    if not path:
        return "the file"
    table, key = path[:-1], path[-1]
    return f"[{'.'.join(map(_toml_key, table))}] {_toml_key(key)}" if table else _toml_key(key)


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


# What a TOML value of the wrong type should have been, when the field does not say it itself.
_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
}
_TABLE_TYPES = {"dict_type", "model_type", "model_attributes_type", "dataclass_type", "dataclass_args_type"}
_UNKNOWN_KEY = {"extra_forbidden", "unexpected_keyword_argument"}


def _unwrap(kind: Any) -> Any:
    """`X` from `Annotated[X, …]`, `X | None` and their combinations."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
            continue
        if get_origin(kind) in (Union, types.UnionType):
            others = [arg for arg in get_args(kind) if arg is not type(None)]
            if len(others) == 1:
                kind = others[0]
                continue
        return kind


def _keys_of(schema: Any) -> dict[str, tuple[str, Any]]:
    """A table class's keys as written in the file → (what is expected, the key's type)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return {
            info.alias or name: (info.description or "", info.annotation)
            for name, info in schema.model_fields.items()
        }
    if not dataclasses.is_dataclass(schema):
        return {}
    hints = get_type_hints(schema, include_extras=True)
    keys: dict[str, tuple[str, Any]] = {}
    for one in dataclasses.fields(schema):
        hint = hints[one.name]
        infos = [item for item in getattr(hint, "__metadata__", ()) if isinstance(item, FieldInfo)]
        key = next((info.alias for info in infos if info.alias), one.name)
        keys[key] = (next((info.description for info in infos if info.description), ""), hint)
    return keys


def _table_at(schema: Any, loc: tuple[str, ...]) -> Any:
    """The table class (or None) at `loc` inside `schema`, following nested tables and named tables."""
    kind: Any = schema
    for part in loc:
        kind = _unwrap(kind)
        if get_origin(kind) is dict:
            kind = get_args(kind)[1]
            continue
        found = _keys_of(kind).get(part)
        if found is None:
            return None
        kind = found[1]
    return _unwrap(kind)


def _expected(schema: Any, loc: tuple[str, ...]) -> str:
    if not loc:
        return ""
    return _keys_of(_table_at(schema, loc[:-1])).get(loc[-1], ("", None))[0]


class _Problems:
    """Collects problems while the file's tables are validated; raises them all at the end."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = path.parent
        self.locator = SourceLocator(text)
        self.problems: list[tuple[int, str]] = []

    def add(self, keypath: tuple[str, ...], text: str) -> None:
        if len(self.problems) > MAX_PROBLEMS_SHOWN:  # counted, not located: the message shows only the first
            self.problems.append((1 << 62, ""))
            return
        line = self.locator.line_of(keypath)
        at = f"{self.path}:{line}" if line else f"{self.path}"
        self.problems.append((line or 0, f"{at}: {_where(keypath)}: {text}"))

    def validate(self, schema: Any, data: Any, keypath: tuple[str, ...]) -> Any:
        """`data` validated against `schema` (a table class), or None once its problems are added."""
        try:
            return _adapter(schema).validate_python(data, context={"base": self.base})
        except ValidationError as error:
            for detail in error.errors(include_url=False):
                loc = tuple(str(part) for part in detail["loc"])
                self.add((*keypath, *loc), _explain(schema, keypath, loc, detail))
            return None

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


@functools.cache
def _adapter(schema: Any) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


def _explain(schema: Any, keypath: tuple[str, ...], loc: tuple[str, ...], detail: ErrorDetails) -> str:
    """One pydantic error as the station says it: what is wrong, what is expected, what was found."""
    kind = detail["type"]
    if kind == _CHECK_ERROR:
        return str((detail.get("ctx") or {}).get("reason", detail["msg"]))
    if kind in _UNKNOWN_KEY:
        allowed = tuple(_keys_of(_table_at(schema, loc[:-1])))
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        return "unknown key." + (
            f" Did you mean {close[0]!r}?" if close else f" Allowed: {', '.join(allowed)}."
        )
    if kind.startswith("missing"):
        return f"missing; expected {_expected(schema, loc) or 'a value'}."
    if kind in _TABLE_TYPES:
        return f"expected a table ([{'.'.join((*keypath, *loc))}]), got {_kind(detail['input'])}."
    expected = _expected(schema, loc) or _TYPE_NAMES.get(kind, "a value of another type")
    return f"expected {expected}, got {_kind(detail['input'])}."


# --------------------------------------------------------------------------------------------------------
# Validation: the file, then each named table on its own, then the rules that span keys and tables


def _named(data: Mapping[str, Any], section: str) -> dict[str, dict[str, Any]]:
    """The section's NAME → table pairs that are tables (the rest were reported with the file's shape)."""
    tables = data.get(section)
    if not isinstance(tables, dict):
        return {}
    return {name: value for name, value in tables.items() if isinstance(value, dict)}


def _station(p: _Problems, data: Mapping[str, Any]) -> StationSettings | None:
    table = data.get("station")
    if not isinstance(table, dict):
        return None  # reported with the file's shape
    if "qa_pin" in table and "qa_pin_hash" in table:
        p.add(
            ("station", "qa_pin"),
            "give qa_pin_hash only (the plain qa_pin is for the lab and the demo), not both.",
        )
    station: StationSettings | None = p.validate(StationSettings, table, ("station",))
    if station is None:
        return None
    interval, longest = station.cleanup_interval_s, station.cleanup_max_interval_s
    if "cleanup_max_interval_s" not in table:
        longest = max(30.0, interval)
    elif longest < interval:
        p.add(
            ("station", "cleanup_max_interval_s"),
            f"expected at least cleanup_interval_s ({interval:g} s), got {longest:g}.",
        )
    return dataclasses.replace(station, cleanup_max_interval_s=longest)


def _target(p: _Problems, name: str, table: dict[str, Any]) -> Target | None:
    kp = ("targets", name)
    before = len(p.problems)
    if not _NAME_RE.fullmatch(name):
        p.add(kp, "expected a target name of letters, digits, '.', '_' or '-'.")
    # Rules about which keys are given are checked on the table as written, so they show with any other.
    if "policy_document" in table and "policy_file" in table:
        p.add((*kp, "policy_file"), "give either policy_document (inline) or policy_file, not both.")
        table = {key: value for key, value in table.items() if key != "policy_file"}
    key_id, secret = "aws_access_key_id" in table, "aws_secret_access_key" in table
    if key_id != secret:
        missing = "aws_access_key_id" if secret else "aws_secret_access_key"
        p.add(
            (*kp, missing),
            "missing; static credentials need both aws_access_key_id and aws_secret_access_key.",
        )
    if (key_id or secret) and table.get("lab") is not True:
        p.add(
            (*kp, "aws_access_key_id" if key_id else "aws_secret_access_key"),
            "static credentials in station.toml are for lab targets only (lab = true); use profile or role_arn.",
        )
    t = p.validate(_TargetTable, table, kp)
    if t is None:
        return None
    account_id = t.account_id
    if t.role_arn:
        role_account = _ROLE_ARN_RE.fullmatch(t.role_arn).group(1)  # type: ignore[union-attr]
        if account_id and account_id != role_account:
            p.add((*kp, "account_id"), f"is {account_id}, but role_arn is in account {role_account}.")
        account_id = account_id or role_account
    if len(p.problems) > before:
        return None
    if t.policy_file is not None:
        document = _read_policy(t.policy_file)
    else:  # inline, or the safe default: the least-privilege policy
        document = t.policy_document if t.policy_document is not None else LEAST_PRIVILEGE_POLICY_JSON
    issuer = t.issuer
    return Target(
        name=name,
        **t.model_dump(exclude={"policy_document", "policy_file", "issuer", "account_id"}),
        policy_document=document,
        account_id=account_id,
        issuer=None if issuer is None else Issuer(**issuer.model_dump()),
    )


def _product(p: _Problems, name: str, table: dict[str, Any]) -> Product | None:
    kp = ("products", name)
    named = bool(_NAME_RE.fullmatch(name)) and naming.THING_NAME_RE.fullmatch(name) is not None
    if not named:
        p.add(kp, "expected a product name of letters, digits, '_' or '-' (it may appear in thing names).")
    product = p.validate(_ProductTable, table, kp)
    return Product(name=name, **product.model_dump()) if product is not None and named else None


def _slot(p: _Problems, name: str, table: dict[str, Any]) -> Slot | None:
    kp = ("slots", name)
    named = bool(_NAME_RE.fullmatch(name))
    if not named:
        p.add(kp, "expected a slot name of letters, digits, '.', '_' or '-'.")
    slot = p.validate(_SlotTable, table, kp)
    return Slot(name=name, **slot.model_dump()) if slot is not None and named else None


_PERSON_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


def _people(p: _Problems, data: Mapping[str, Any]) -> dict[str, Person]:
    people: dict[str, Person] = {}
    badges: dict[str, str] = {}
    for name, table in _named(data, "people").items():
        kp = ("people", name)
        if not _PERSON_RE.fullmatch(name) or not name.strip():
            p.add(kp, "expected a person's name of 1-64 printable characters.")
            continue
        if "qa_pin" in table:
            # A person's PIN is kept only as a salted hash, even in the lab.
            p.add(
                (*kp, "qa_pin"),
                f"a person's PIN is kept only as a hash: put the line `station pin-hash --person {name}` "
                "prints here (qa_pin_hash = ...).",
            )
            table = {key: value for key, value in table.items() if key != "qa_pin"}
        person = p.validate(_PersonTable, table, kp)
        if person is None:
            continue
        badge = person.badge.strip() if person.badge is not None else None
        if badge is not None:
            if badge in badges:
                p.add((*kp, "badge"), f"is also the badge of {badges[badge]!r}; one badge per person.")
                continue
            badges[badge] = name
        people[name] = Person(name=name, badge=badge, qa_pin_hash=person.qa_pin_hash)
    return people


def validate_config(data: Mapping[str, Any], *, path: Path, text: str = "") -> StationConfig:
    """Validate already-parsed TOML data (`text` is the source, used only to find line numbers)."""
    p = _Problems(path, text)
    p.validate(_File, data, ())
    station = _station(p, data)
    people = _people(p, data)
    budget = (
        p.validate(BudgetSettings, data["budget"], ("budget",))
        if isinstance(data.get("budget"), dict)
        else None
    )

    targets: dict[str, Target] = {}
    for name, table in _named(data, "targets").items():
        target = _target(p, name, table)
        if target is not None:
            targets[name] = target
    # Cross-references are checked against every declared name, valid or not, so one mistake in a target
    # does not also show up as a dangling reference in each product that uses it.
    target_names = set(_named(data, "targets"))

    products: dict[str, Product] = {}
    for name, table in _named(data, "products").items():
        product = _product(p, name, table)
        if product is None:
            continue
        if product.target not in target_names:
            known = ", ".join(sorted(target_names)) or "none"
            p.add(
                ("products", name, "target"),
                f"names target {product.target!r}, which is not defined (known: {known}).",
            )
            continue
        products[name] = product
    product_names = set(_named(data, "products"))

    slots: dict[str, Slot] = {}
    ports: dict[str, str] = {}
    for name, table in _named(data, "slots").items():
        slot = _slot(p, name, table)
        if slot is None:
            continue
        if slot.product is not None and slot.product not in product_names:
            known = ", ".join(sorted(product_names)) or "none"
            p.add(
                ("slots", name, "product"),
                f"names product {slot.product!r}, which is not defined (known: {known}).",
            )
            continue
        if slot.port in ports:
            p.add(
                ("slots", name, "port"),
                f"{slot.port!r} is already used by slot {ports[slot.port]!r}; one unit per port.",
            )
            continue
        ports[slot.port] = name
        slots[name] = slot

    p.raise_if_any()
    assert station is not None  # no problems: [station] validated
    settings = {one.name: getattr(station, one.name) for one in dataclasses.fields(StationSettings)}
    return StationConfig(
        **settings, path=path, targets=targets, products=products, slots=slots, budget=budget, people=people
    )


# --------------------------------------------------------------------------------------------------------
# Reading the file


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
