"""What the README and `--help` promise, held to the commands (issue 12, point 8): `export --json`, examples
in `audit --help` and `sim --help`, every ledger command naming where its ledger comes from, and a `station
lab` whose station.toml `station run` starts on. (`revoke` answered "n" and `transfer` run again are in
tests/qa/test_qa_commands.py, next to the lab they need.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from station.cli import EXIT_OK, EXIT_USAGE, main
from station.ledger import open_ledger
from station.ledger.base import AttemptRecord
from station.model import Outcome

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    with open_ledger(path) as ledger:
        for serial, outcome in (("SN000101", "PASS"), ("SN000102", "FAIL")):
            ledger.record_attempt(
                AttemptRecord(attempt_id=f"a-{serial}", serial=serial, outcome=outcome, station_id="st1")
            )
    return path


def test_export_json_is_an_alias_of_format_json(
    capsys: pytest.CaptureFixture[str], ledger_path: Path
) -> None:
    code, by_flag, _ = run(capsys, "export", "--json", "--ledger", str(ledger_path))
    assert code == EXIT_OK
    code, by_format, _ = run(capsys, "export", "--format", "json", "--ledger", str(ledger_path))
    assert code == EXIT_OK and by_flag == by_format
    assert {(r["serial"], r["outcome"]) for r in json.loads(by_flag)} == {
        ("SN000101", "PASS"),
        ("SN000102", "FAIL"),
    }
    code, out, _ = run(capsys, "export", "--json", "--format", "csv", "--ledger", str(ledger_path))
    assert code == EXIT_USAGE and json.loads(out)["error"]["title"] == "Two formats"
    code, _, err = run(capsys, "export", "--ledger", str(ledger_path))
    assert code == EXIT_USAGE and "--format csv, --format json or --json" in err


def test_audit_and_sim_help_show_examples(capsys: pytest.CaptureFixture[str]) -> None:
    audit = help_text(capsys, "audit")
    assert "examples: station audit verify --ledger" in audit and "station audit checkpoint" in audit
    sim = help_text(capsys, "sim")
    assert "examples: station sim prov1" in sim
    for family in ("expresslink", "nrf91", "esp32"):
        assert f"station sim {family} " in sim


@pytest.mark.parametrize(
    "command", [["show", "SN1"], ["units"], ["export"], ["audit", "verify"], ["audit", "checkpoint"]]
)
def test_ledger_commands_name_every_place_the_ledger_comes_from(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    text = help_text(capsys, *command)
    assert "$STATION_LEDGER" in text and "[station] ledger" in text and "--config" in text


def test_station_lab_writes_a_config_that_station_run_starts_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import station.tui

    state = tmp_path / "lab"
    lab = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "lab", "--state-dir", str(state), "--units", "2", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert lab.stdout is not None
        first = lab.stdout.readline()  # lab.json, once the lab and its units are up; then the units
        assert first, lab.stderr.read() if lab.stderr else ""
        assert json.loads(first) == json.loads((state / "lab.json").read_text())
        units = json.loads(lab.stdout.readline())["units"]
        assert [u["slot"] for u in units] == ["s1", "s2"]
        config = state / "station.toml"
        seen: dict[str, Any] = {}

        def fake_run_app(config: Any, line: Any, ledger: Any = None, **kw: Any) -> int:
            # The operator types the serial the lab printed for the unit in s2.
            seen["slot"] = line.scan(units[1]["serial"])
            assert line.wait_idle(60)
            seen["results"] = line.results()
            return 0

        monkeypatch.setattr(station.tui, "run_app", fake_run_app)
        monkeypatch.chdir(state)  # the config's ledger path is relative to where the station runs
        code, _, err = run(capsys, "run", "--config", str(config))
        assert code == EXIT_OK, err
        assert seen["slot"] == "s2"
        (result,) = seen["results"]
        assert (result.serial, result.outcome) == (units[1]["serial"], Outcome.PASS), result.message
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait(10)
    assert lab.returncode == 0  # the lab and its units stopped cleanly
