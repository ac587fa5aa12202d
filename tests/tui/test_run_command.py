"""`station run --config station.toml`: the wiring from the command line to the operator screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from station.cli import EXIT_OK, EXIT_USAGE, main
from station.desk import QaServices
from station.line import Line
from station.tui.relay import EventRelay

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_run_needs_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run"])
    assert exit_.value.code == EXIT_USAGE
    assert "--config" in capsys.readouterr().err


def test_run_with_a_missing_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == EXIT_USAGE
    assert "Configuration not found" in capsys.readouterr().err


def test_run_opens_the_screen_over_the_real_line_and_stops_it_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "station.toml"
    text = (FIXTURES / "configs" / "lab-station.toml").read_text()
    text = text.replace(
        'ca_file = "../certs/factory-ca.pem"', f'ca_file = "{FIXTURES / "certs" / "factory-ca.pem"}"'
    )
    config.write_text(text)
    seen: dict[str, Any] = {}

    def fake_run_app(cfg: Any, line: Any, *, qa: Any, relay: Any, operator: Any) -> int:
        seen.update(station=cfg.station_id, line=line, qa=qa, relay=relay, operator=operator)
        seen["slots"] = [(s.name, s.state) for s in line.slots()]
        return 0

    monkeypatch.setattr("station.tui.run_app", fake_run_app)
    assert main(["run", "--config", str(config), "--operator", "night-shift"]) == EXIT_OK
    assert seen["station"] == "lab" and seen["operator"] == "night-shift"
    # The command built the QA desk's services (the screen gets them, it never builds them: no boto3 in it).
    assert isinstance(seen["qa"], QaServices) and seen["qa"].operator == "night-shift"
    assert seen["qa"].line is seen["line"]
    assert isinstance(seen["line"], Line) and isinstance(seen["relay"], EventRelay)
    assert seen["slots"] == [("sim1", "idle")]
    assert [s.state for s in seen["line"].slots()] == ["stopped"]  # the line was stopped on the way out
    assert (tmp_path / "lab-ledger.sqlite").exists()
