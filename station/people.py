"""Who is working at the station: sign-in by badge or name, and whose QA PIN opened the QA desk.

`sign_in_required(config)`: the operator screen asks who is there when station.toml lists people
(`[people.NAME]`) or sets `[station] sign_in = true`; otherwise the config's (or `--operator`'s) operator is
used. `who_signs_in(config, text)` turns what was scanned or typed into the person's name: a listed badge or
a listed name (any case) when people are listed, else any plain name. `qa_pins(config)` gives the stored
PINs the QA desk's `PinGuard` checks: each person's own `qa_pin_hash` under their name, and the station's
shared PIN under "" (the person signed in at the station).

It must not keep, log or compare PINs itself (station.qapin does), nor import textual.
"""

from __future__ import annotations

from typing import Any

from station.errors import InputError
from station.i18n import _

MAX_NAME = 64


def sign_in_required(config: Any) -> bool:
    return bool(getattr(config, "sign_in", False)) or bool(getattr(config, "people", None))


def who_signs_in(config: Any, text: str) -> str:
    """The name of the person a badge scan or a typed name stands for; `InputError` saying what to do if none."""
    given = text.strip()
    if not given:
        raise InputError(
            _("Nobody signed in"), _("Nothing was scanned or typed."), _("Scan your badge or type your name.")
        )
    people: dict[str, Any] = dict(getattr(config, "people", None) or {})
    if not people:
        if len(given) > MAX_NAME or not given.isprintable():
            raise InputError(
                _("Not a name"),
                _("A name is 1 to {n} printable characters.").format(n=MAX_NAME),
                _("Type your name again."),
            )
        return given
    for name, person in people.items():
        if person.badge is not None and person.badge == given:
            return name
    folded = given.casefold()
    for name in people:
        if name.casefold() == folded:
            return name
    raise InputError(
        _("Not on this station's list"),
        _("{given} is neither a badge nor a name this station knows.").format(given=repr(given)),
        _("Scan your badge again, or ask the shift lead to add you to station.toml ([people])."),
    )


def qa_pins(config: Any) -> dict[str, str]:
    """Stored PIN forms by whom they name: each person's own hash under their name, the station's shared PIN
    (hash, or the lab's plain PIN) under "" — the person signed in. Empty: the QA desk stays closed."""
    pins = {
        name: person.qa_pin_hash
        for name, person in (getattr(config, "people", None) or {}).items()
        if person.qa_pin_hash
    }
    shared = getattr(config, "qa_pin_hash", None) or getattr(config, "qa_pin", None)
    if shared:
        pins[""] = shared
    return pins
