"""The operator's language: catalogs current and complete, the language chosen by --lang / config / locale.

When this fails after adding or changing text for people, update the catalogs and translate what is new:

    uv run python -m station.i18n --update     # then fill the empty msgstr in station/locale/ja/…/station.po
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from station import i18n
from station.cli import main
from station.config import validate_config
from station.errors import ConfigError
from station.i18n import _, choose_language, ngettext, set_language

ROOT = Path(__file__).resolve().parents[1]
MISSING_LEDGER_JA = "台帳がありません"


def test_the_catalogs_match_the_code_and_japanese_is_complete() -> None:
    """Every `_()` / `N_()` / `ngettext()` in station/ and flashers/ is in the .pot; ja translates each one,
    none fuzzy, with the same {placeholders} (a translation that drops `{serial}` would hide the unit)."""
    assert i18n.problems() == []


def test_the_placeholder_check_reads_format_fields() -> None:
    assert i18n._placeholders("{serial!r} at {n:,} bytes, a {{literal}} and {slot}") == {
        "serial",
        "n",
        "slot",
    }


def test_a_missing_placeholder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The completeness check itself can fail: a translation without the serial's placeholder is caught."""
    from babel.messages.pofile import read_po, write_po

    with i18n.catalog_path("ja").open("rb") as fp:
        catalog = read_po(fp, locale="ja")
    msgid = "{serial} is being provisioned in slot {name} right now."
    catalog[msgid].string = "このユニットは処理中です。"
    broken = tmp_path / "ja" / "LC_MESSAGES" / "station.po"
    broken.parent.mkdir(parents=True)
    with broken.open("wb") as fp:
        write_po(fp, catalog)
    (tmp_path / "station.pot").write_bytes(i18n.TEMPLATE.read_bytes())
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    monkeypatch.setattr(i18n, "TEMPLATE", tmp_path / "station.pot")
    found = i18n.problems()
    assert len(found) == 1 and "placeholders" in found[0] and "{serial}" in found[0]


def test_japanese_replaces_the_sentence_and_keeps_the_serial() -> None:
    assert set_language("ja") == "ja"
    text = _("{serial} is being provisioned in slot {name} right now.").format(serial="SN00000042", name="s2")
    assert text == "SN00000042 は今スロット s2 で処理中です。"
    assert ngettext("one {n}", "many {n}", 2) == "many {n}"  # not in the catalog: English, unchanged
    assert set_language("en") == "en"
    assert _("Wrong unit in the jig") == "Wrong unit in the jig"


@pytest.mark.parametrize(
    ("cli", "config", "environ", "chosen"),
    [
        ("ja", "en", {"LANG": "en_US.UTF-8"}, "ja"),  # --lang beats everything
        (None, "ja", {"LANG": "en_US.UTF-8"}, "ja"),  # then [station] language
        (None, None, {"LANG": "ja_JP.UTF-8"}, "ja"),  # then the locale
        (None, None, {"LC_ALL": "ja_JP.eucJP", "LANG": "en_GB.UTF-8"}, "ja"),  # LC_ALL before LANG
        (None, None, {"LC_MESSAGES": "en_US", "LANG": "ja_JP.UTF-8"}, "en"),
        (None, None, {"LANG": "C.UTF-8"}, "en"),
        (None, None, {}, "en"),
        ("ja-JP", None, {}, "ja"),
    ],
)
def test_the_language_comes_from_lang_then_config_then_locale(
    cli: str | None, config: str | None, environ: dict[str, str], chosen: str
) -> None:
    assert choose_language(cli, config, environ) == chosen


def test_an_unknown_language_falls_back_to_english_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="station.i18n"):
        assert set_language("xx_XX.UTF-8") == "en"
    assert "No catalog for language 'xx_XX.UTF-8'" in caplog.text
    assert i18n.language() == "en"


def test_station_lang_ja_prints_the_error_in_japanese(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.sqlite"
    assert main(["--lang", "ja", "show", "SN00000001", "--ledger", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{MISSING_LEDGER_JA}: {missing} に台帳がありません。",
        "次の対応: --ledger、STATION_LEDGER、または station.toml の ledger の設定を確認してください。",
    ]
    assert main(["show", "SN00000001", "--ledger", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"No ledger: There is no ledger at {missing}.")


def test_a_japanese_locale_gives_japanese_and_lang_overrides_it(tmp_path: Path) -> None:
    """The real command in a fresh process: LANG=ja_JP.UTF-8 alone is enough; --lang en wins over it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LC_MESSAGES")}
    env["LANG"] = "ja_JP.UTF-8"
    missing = str(tmp_path / "nowhere.sqlite")

    def station(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "station.cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ja = station("show", "SN00000001", "--ledger", missing)
    assert ja.returncode == 2 and ja.stderr.startswith(f"{MISSING_LEDGER_JA}: {missing} に台帳がありません。")
    en = station("--lang", "en", "show", "SN00000001", "--ledger", missing)
    assert en.returncode == 2 and en.stderr.startswith(f"No ledger: There is no ledger at {missing}.")


def test_station_toml_names_the_language() -> None:
    path = ROOT / "fixtures" / "configs" / "station.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert validate_config(data, path=path).language is None
    data["station"]["language"] = "ja"
    assert validate_config(data, path=path).language == "ja"
    data["station"]["language"] = "日本語"
    with pytest.raises(ConfigError, match="language code"):
        validate_config(data, path=path)


def _shadowed_gettext(path: Path) -> list[str]:
    """Functions that call `_()` but also bind `_` (`for _ in …`, `x, _ = …`): the call then hits the local."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    comprehensions = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        binds, calls = False, False
        todo: list[ast.AST] = list(ast.iter_child_nodes(function))
        while todo:
            node = todo.pop()
            if isinstance(node, scopes):
                continue
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_":
                calls = True
            if isinstance(node, ast.Name) and node.id == "_" and isinstance(node.ctx, ast.Store):
                # A comprehension's own loop variable stays in the comprehension.
                binds = True
            todo.extend(
                child
                for child in ast.iter_child_nodes(node)
                if not (isinstance(node, comprehensions) and isinstance(child, ast.comprehension))
            )
        binds = binds or any(a.arg == "_" for a in function.args.args)
        if binds and calls:
            found.append(f"{path.relative_to(ROOT)}:{function.lineno} {function.name}")
    return found


def test_no_function_hides_gettext_behind_a_local_underscore() -> None:
    files = [*(ROOT / "station").rglob("*.py"), *(ROOT / "flashers").rglob("*.py")]
    assert [hit for path in files for hit in _shadowed_gettext(path)] == []
