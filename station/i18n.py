"""The operator's language: every sentence an operator or QA person reads goes through `_()`.

`_("text")` returns the text in the station's language; `ngettext` picks a plural form; `N_("text")` only marks
a literal for extraction (for tables built at import time, translated with `_()` where they are shown).
`set_language(code)` chooses the language for the whole process; `choose_language` picks the code from, in this
order, `--lang`, `[station] language` and the locale (`LC_ALL`, `LC_MESSAGES`, `LANG`: ja_JP.UTF-8 → ja).
An unknown language falls back to English with a warning in the log.

Catalogs: English is the source text (no catalog). Each other language is one
`station/locale/<lang>/LC_MESSAGES/station.po`, made from the template `station/locale/station.pot`.
The `.po` file itself is loaded at run time (Babel's `read_po`, compiled in memory, cached per language) rather
than a committed `.mo`: a fresh clone runs `uv run station demo --lang ja` with no build step, and there is no
binary copy that can drift from the text a translator edits. The cost is paid once, at start, and only for a
language other than English: importing Babel and compiling the catalog took about 0.3 s on the 2-core CI box.
Fuzzy entries are not used (they show English until a translator confirms them).

Updating the catalogs after adding or changing text (`python -m station.i18n --help`):

    uv run python -m station.i18n --update   # re-extract station/ and flashers/, merge into every .po
    uv run python -m station.i18n --check    # what tests/test_i18n.py checks: .pot current, catalogs complete

It must not translate what is not for people: serials, thing names, certificate ids, AWS error codes, log keys,
event names and the ledger's stored values (states, outcomes, kinds) stay as they are. Sentences are translated
when they are made (an error's title, message and next action), so a station running in Japanese also records
those sentences in Japanese; nothing ever reads a sentence back to decide anything (outcomes come from types).
A module constant that is a sentence is marked with `N_()` and translated with `_()` where it is used: it is
read at import, before the language is chosen.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gettext as _gettext
import io
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

DOMAIN = "station"
DEFAULT_LANGUAGE = "en"
LOCALE_DIR = Path(__file__).parent / "locale"
TEMPLATE = LOCALE_DIR / f"{DOMAIN}.pot"
# Where `_()` / `N_()` / `ngettext()` calls are extracted from (relative to the repository root).
SOURCE_PACKAGES = ("station", "flashers")

log = logging.getLogger(__name__)

_translation: _gettext.NullTranslations = _gettext.NullTranslations()
_language = DEFAULT_LANGUAGE


def catalog_path(code: str) -> Path:
    return LOCALE_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"


def available_languages() -> list[str]:
    """English plus every language with a catalog, e.g. ["en", "ja"]."""
    found = (
        sorted(p.name for p in LOCALE_DIR.iterdir() if catalog_path(p.name).is_file())
        if LOCALE_DIR.is_dir()
        else []
    )
    return [DEFAULT_LANGUAGE, *found]


def normalize(code: str | None) -> str:
    """ "ja_JP.UTF-8", "ja-JP", "JA" → "ja"; "" / None / "C" / "POSIX" → ""."""
    if not code:
        return ""
    base = re.split(r"[._@-]", code.strip(), maxsplit=1)[0].lower()
    return "" if base in ("c", "posix") else base


def language_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """The locale's language (LC_ALL, then LC_MESSAGES, then LANG, as the C library reads them), or ""."""
    env = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "")
        if value:
            return normalize(value)
    return ""


def choose_language(
    cli: str | None = None, config: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The code to use: `--lang` beats `[station] language`, which beats the locale; English otherwise."""
    return normalize(cli) or normalize(config) or language_from_environment(environ) or DEFAULT_LANGUAGE


@functools.cache
def _load(code: str) -> _gettext.NullTranslations:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with catalog_path(code).open("rb") as fp:
        catalog = read_po(fp, locale=code, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return _gettext.GNUTranslations(compiled)


def set_language(code: str | None) -> str:
    """Use `code` ("en", "ja", "ja_JP.UTF-8", ...) from now on; returns the language in use.

    An unknown code falls back to English and says so in the log; an empty one means English.
    """
    global _translation, _language
    wanted = normalize(code) or DEFAULT_LANGUAGE
    if wanted != DEFAULT_LANGUAGE and wanted not in available_languages():
        log.warning(
            "No catalog for language %r; using English (available: %s)",
            code,
            ", ".join(available_languages()),
        )
        wanted = DEFAULT_LANGUAGE
    _translation = _gettext.NullTranslations() if wanted == DEFAULT_LANGUAGE else _load(wanted)
    _language = wanted
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


# --- maintaining the catalogs (developer tool; the station itself never writes them) ---


def _repository_root() -> Path:
    return Path(__file__).resolve().parent.parent


def extract() -> object:
    """Every `_()`, `N_()` and `ngettext()` literal in station/ and flashers/, as a Babel catalog."""
    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_dir

    root = _repository_root()
    # A fixed date: a new one on every update would make every branch's catalog conflict on that line.
    template = Catalog(
        project="station",
        domain=DOMAIN,
        charset="utf-8",
        fuzzy=False,
        creation_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )
    for package in SOURCE_PACKAGES:
        for filename, lineno, message, comments, context in extract_from_dir(
            root / package, method_map=[("**.py", "python")], strip_comment_tags=True
        ):
            template.add(
                message,
                None,
                [(f"{package}/{filename}", lineno)],
                auto_comments=comments,
                context=context,
            )
    return template


def _write(catalog: object, path: Path) -> None:
    from babel.messages.pofile import write_po

    buffer = io.BytesIO()
    # No line numbers: they change with every edit on every branch and would make catalogs conflict.
    write_po(buffer, catalog, width=110, include_lineno=False, ignore_obsolete=True)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def update() -> list[str]:
    """Rewrite the .pot from the code and merge it into every catalog; returns what still needs a translator."""
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po

    template = extract()
    assert isinstance(template, Catalog)
    _write(template, TEMPLATE)
    for code in available_languages()[1:]:
        with catalog_path(code).open("rb") as fp:
            catalog = read_po(fp, locale=code, domain=DOMAIN)
        catalog.update(template)
        _write(catalog, catalog_path(code))
    return problems()


def problems() -> list[str]:
    """What is not ready: msgids in the code missing from the .pot, untranslated/fuzzy entries, placeholders."""
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po

    found: list[str] = []
    template = extract()
    assert isinstance(template, Catalog)
    with TEMPLATE.open("rb") as fp:
        pot = read_po(fp, domain=DOMAIN)
    in_pot = {m.id for m in pot if m.id}
    for message in template:
        if message.id and message.id not in in_pot:
            found.append(f"{TEMPLATE.name}: missing {message.id!r} (run `python -m station.i18n --update`)")
    for code in available_languages()[1:]:
        with catalog_path(code).open("rb") as fp:
            catalog = read_po(fp, locale=code, domain=DOMAIN)
        where = f"{code}/{DOMAIN}.po"
        for message in catalog:
            if not message.id:
                continue
            ids = [message.id] if isinstance(message.id, str) else list(message.id)
            msgid = ids[0]
            if message.id not in in_pot:
                continue
            strings = [message.string] if isinstance(message.string, str) else list(message.string or ())
            if message.fuzzy:
                found.append(f"{where}: fuzzy {msgid!r}")
            elif not strings or not all(strings):
                found.append(f"{where}: untranslated {msgid!r}")
            else:
                wanted: set[str] = set().union(*(_placeholders(i) for i in ids))
                for text in strings:
                    if _placeholders(text) != wanted:
                        found.append(
                            f"{where}: placeholders {sorted(wanted)} ≠ {sorted(_placeholders(text))} in {msgid!r}"
                        )
        for missing in in_pot - {m.id for m in catalog}:
            found.append(f"{where}: missing {missing!r} (run `python -m station.i18n --update`)")
    return found


def _placeholders(text: str) -> set[str]:
    """The `{name}` fields of a str.format template (`{{` is a literal brace)."""
    return set(
        re.findall(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)(?:![rsa])?(?::[^{}]*)?\}", text.replace("{{", ""))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m station.i18n", description="Maintain the message catalogs."
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--update", action="store_true", help="re-extract the .pot and merge it into every .po"
    )
    group.add_argument("--check", action="store_true", help="report what is missing, untranslated or fuzzy")
    group.add_argument("--init", metavar="CODE", help="start a catalog for a new language, e.g. ko")
    args = parser.parse_args(argv)
    if args.init:
        from babel.messages.catalog import Catalog

        new = Catalog(
            locale=args.init,
            domain=DOMAIN,
            project="station",
            charset="utf-8",
            fuzzy=False,
            revision_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        )
        _write(new, catalog_path(normalize(args.init)))
    found = update() if args.update or args.init else problems()
    for line in found:
        print(line)
    if args.update or args.init:
        print(
            f"{TEMPLATE.relative_to(_repository_root())} and {len(available_languages()) - 1} catalog(s) updated"
        )
    return 1 if found else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
