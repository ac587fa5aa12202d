"""Serial numbers and thing names: check a scanned serial against its product's pattern, render thing names.

A serial comes from a barcode scanner (or a person typing); a thing name goes to AWS IoT. This module checks
both so that a mistyped scan is an `InputError` with a plain message before anything is attempted, and a
thing name AWS would refuse (`[a-zA-Z0-9:_-]+`, at most 128 characters) never reaches a registry call.

Pure functions over strings: no I/O, no AWS. Every failure is a `StationError` (never a bare ValueError,
KeyError or re.error), whatever the input.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from station.errors import InputError
from station.i18n import N_, _

THING_NAME_MAX = 128
THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]+")
# Fields a thing-name template may use. `device_id` is the unit's own id (HELLO id, IMEI …) where it has one.
TEMPLATE_FIELDS = ("product", "serial", "device_id", "station", "slot")
DEFAULT_TEMPLATE = "{product}-{serial}"
# A serial longer than this is not a barcode but a stuck scanner or a paste accident.
SERIAL_MAX = 128

_FIX_SCAN = N_("Scan the unit's label again; if it keeps failing, check the product selected for this slot.")


def _show(text: str, limit: int = 40) -> str:
    """Quote user text for a message: repr() keeps control characters visible, long input is cut."""
    if len(text) > limit:
        return repr(text[:limit]) + f"… ({len(text)} characters)"
    return repr(text)


def compile_serial_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a product's serial pattern (a Python regular expression matched against the whole serial)."""
    if not isinstance(pattern, str) or not pattern:
        raise InputError(
            _("Invalid serial pattern"),
            _("A product's serial pattern must be a non-empty regular expression."),
            _("Set serial_pattern to a regular expression such as 'SN[0-9]{8}'."),
        )
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as error:
        # re.compile raises several types for hostile patterns (huge repeat counts, deep nesting).
        raise InputError(
            _("Invalid serial pattern"),
            _("The serial pattern {pattern} is not a valid regular expression ({error}).").format(
                pattern=_show(pattern), error=error
            ),
            _("Fix serial_pattern in station.toml (Python regular-expression syntax)."),
        ) from None


def normalize_scan(raw: str) -> str:
    """What the scanner sent, without the surrounding whitespace and line ending it usually appends."""
    if not isinstance(raw, str):
        raise InputError(_("Invalid serial"), _("The scanned serial is not text."), _(_FIX_SCAN))
    return raw.strip()


def validate_serial(raw: str, pattern: str | re.Pattern[str], *, product: str = "") -> str:
    """Return the serial (trimmed) if it fully matches the product's pattern; otherwise raise `InputError`.

    The whole serial must match (not a prefix), so a double scan or a stray character is caught.
    """
    serial = normalize_scan(raw)
    which = _(" for product {product!r}").format(product=product) if product else ""
    if not serial:
        raise InputError(
            _("No serial"), _("The scanned serial{which} is empty.").format(which=which), _(_FIX_SCAN)
        )
    if len(serial) > SERIAL_MAX:
        raise InputError(
            _("Invalid serial"),
            _("The scanned serial {serial} is longer than {SERIAL_MAX} characters.").format(
                serial=_show(serial), SERIAL_MAX=SERIAL_MAX
            ),
            _(_FIX_SCAN),
        )
    bad = [ch for ch in serial if not ch.isprintable()]
    if bad:
        raise InputError(
            _("Invalid serial"),
            _("The scanned serial {serial} contains the control character {bad!r}.").format(
                serial=_show(serial), bad=bad[0]
            ),
            _(_FIX_SCAN),
        )
    compiled = pattern if isinstance(pattern, re.Pattern) else compile_serial_pattern(pattern)
    try:
        matched = compiled.fullmatch(serial) is not None
    except RecursionError:  # pathological pattern: treat as no match rather than crash the slot
        matched = False
    if not matched:
        raise InputError(
            _("Serial does not match"),
            _("The scanned serial {serial} does not match the pattern {pattern!r}{which}.").format(
                serial=_show(serial), pattern=compiled.pattern, which=which
            ),
            _(_FIX_SCAN),
        )
    return serial


def thing_name_problem(name: str) -> str | None:
    """Why AWS IoT would refuse this thing name, or None if it is acceptable."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > THING_NAME_MAX:
        return f"it is {len(name)} characters long; AWS IoT allows at most {THING_NAME_MAX}"
    if THING_NAME_RE.fullmatch(name) is None:
        bad = next(ch for ch in name if THING_NAME_RE.fullmatch(ch) is None)
        return f"it contains {bad!r}; AWS IoT allows only letters, digits, ':', '_' and '-'"
    return None


def check_thing_name(name: str) -> str:
    """Return `name` if AWS IoT accepts it as a thing name; otherwise raise `InputError`."""
    problem = thing_name_problem(name)
    if problem:
        raise InputError(
            _("Invalid thing name"),
            _("The thing name {name} cannot be used: {problem}.").format(
                name=_show(name if isinstance(name, str) else ""), problem=problem
            ),
            _("Check the serial scanned and the target's thing_name_template in station.toml."),
        )
    return name


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split a template into (literal, field-or-None) pairs, refusing anything but plain `{field}`."""
    if not isinstance(template, str) or not template:
        raise InputError(
            _("Invalid thing-name template"),
            _("The thing-name template is empty."),
            _("Set thing_name_template, for example {DEFAULT_TEMPLATE!r}.").format(
                DEFAULT_TEMPLATE=DEFAULT_TEMPLATE
            ),
        )
    # str.format would allow attribute access and format specs ({serial.__class__}, {serial:>999999});
    # only bare field names are allowed, so a template can never run code or blow up memory.
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as error:
        raise InputError(
            _("Invalid thing-name template"),
            _("The thing-name template {template} is malformed ({error}).").format(
                template=_show(template), error=error
            ),
            _("Write fields as {product} or {serial}; write a literal brace as {{ or }}."),
        ) from None
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in pieces:
        if field is not None and (field not in TEMPLATE_FIELDS or spec or conversion):
            shown = (
                "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
            raise InputError(
                _("Invalid thing-name template"),
                f"The thing-name template {_show(template)} uses {shown!r}; allowed fields are "
                + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                + " without format options.",
                _("Fix thing_name_template in station.toml, for example {DEFAULT_TEMPLATE!r}.").format(
                    DEFAULT_TEMPLATE=DEFAULT_TEMPLATE
                ),
            )
        parts.append((literal, field))
    return parts


def validate_template(template: str) -> str:
    """Check a thing-name template: known fields only, and literal text made of thing-name characters."""
    parts = _parse_template(template)
    literal_text = "".join(literal for literal, _ in parts)
    if literal_text and THING_NAME_RE.fullmatch(literal_text) is None:
        bad = next(ch for ch in literal_text if THING_NAME_RE.fullmatch(ch) is None)
        raise InputError(
            _("Invalid thing-name template"),
            _(
                "The thing-name template {template} contains {bad!r}; thing names allow only letters, "
                "digits, ':', '_' and '-'."
            ).format(template=_show(template), bad=bad),
            _("Fix thing_name_template in station.toml."),
        )
    if not any(field == "serial" or field == "device_id" for _, field in parts):
        # Without a per-unit field every unit would get the same thing name.
        raise InputError(
            _("Invalid thing-name template"),
            _(
                "The thing-name template {template} has no {{serial}} or {{device_id}}, so every unit "
                "would get the same thing name."
            ).format(template=_show(template)),
            _("Include {{serial}}, for example {DEFAULT_TEMPLATE!r}.").format(
                DEFAULT_TEMPLATE=DEFAULT_TEMPLATE
            ),
        )
    return template


def render_thing_name(template: str, values: Mapping[str, str] | None = None, **fields: str) -> str:
    """Fill a thing-name template (e.g. `{product}-{serial}`) and check the result against AWS's rules.

    Values come from `values` and/or keyword arguments; a field the template uses but nobody supplied is
    an `InputError`, as is a result AWS would refuse.
    """
    given: dict[str, str] = dict(values or {})
    given.update(fields)
    out: list[str] = []
    for literal, field in _parse_template(template):
        out.append(literal)
        if field is None:
            continue
        value = given.get(field)
        if value is None or value == "":
            raise InputError(
                _("Cannot name the thing"),
                _(
                    "The thing-name template {template} needs {{{field}}}, which is not known for this unit."
                ).format(template=_show(template), field=field),
                _("Use a template with fields this station knows, or supply the missing value."),
            )
        if not isinstance(value, str):
            value = str(value)
        out.append(value)
    return check_thing_name("".join(out))


def thing_name_for(
    template: str, *, product: str, serial: str, pattern: str | re.Pattern[str] | None = None, **extra: str
) -> str:
    """Validate a scanned serial (if a pattern is given) and render the thing name in one step."""
    if pattern is not None:
        serial = validate_serial(serial, pattern, product=product)
    else:
        serial = normalize_scan(serial)
    return render_thing_name(template, {**extra, "product": product, "serial": serial})
