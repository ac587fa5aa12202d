"""The operator's language: every sentence an operator or QA person reads goes through `_()`.

`_("text")` returns the text in the station's language; `ngettext` picks a plural form; `N_("text")` only marks
a literal for extraction (for tables built at import time, translated where they are shown).
`set_language(code)` chooses the language for the whole process (from `[station] language`, `--lang` or the
locale).  Catalogs live in `station/locale/<lang>/LC_MESSAGES/station.po`.

It must not translate what is not for people: serials, thing names, certificate ids, AWS error codes, log keys,
event names and the ledger's stored values stay as they are.
"""

from __future__ import annotations

import gettext as _gettext

DOMAIN = "station"
DEFAULT_LANGUAGE = "en"

_translation: _gettext.NullTranslations = _gettext.NullTranslations()
_language = DEFAULT_LANGUAGE


def set_language(code: str | None) -> str:
    """Use `code` ("en", "ja", ...) from now on; an unknown or empty code falls back to English."""
    global _translation, _language
    _translation = _gettext.NullTranslations()
    _language = DEFAULT_LANGUAGE
    return _language


def language() -> str:
    """The language chosen by `set_language` ("en" until then)."""
    return _language


def _(message: str) -> str:
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translation.ngettext(singular, plural, n)


def N_(message: str) -> str:
    return message
