"""`station provision` and `station reconcile` without a lab: input errors, exit codes, JSON output.

(PASS through the real parts is in test_end_to_end.py; reconcile after a kill in test_cloud_integration.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloud_rig import write_config

from station.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from station.ledger import open_ledger


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    # The control plane URL points at a closed port: these commands must fail before (or without) AWS.
    return write_config(tmp_path, "http://127.0.0.1:9")


def test_provision_refuses_a_bad_scan_before_anything(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["provision", "--port", "loop://", "--serial", "NOPE", "--config", str(config_path), "--json"]
    )
    assert code == EXIT_USAGE
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["title"] == "Serial does not match" and error["next_action"]
    with open_ledger(config_path.parent / "ledger.sqlite") as ledger:
        assert list(ledger.records()) == []


def test_provision_with_a_missing_port_is_an_error_and_recorded(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "provision",
            "--port",
            "/dev/does-not-exist",
            "--serial",
            "SIM000001",
            "--config",
            str(config_path),
            "--json",
        ]
    )
    assert code == EXIT_ERROR
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcome"] == "ERROR" and summary["serial"] == "SIM000001"
    with open_ledger(config_path.parent / "ledger.sqlite") as ledger:
        assert [r.outcome for r in ledger.find("SIM000001")] == ["ERROR"]
        assert ledger.journal_pending() == []


def test_provision_without_a_config_is_a_usage_error(tmp_path: Path) -> None:
    assert (
        main(["provision", "--port", "loop://", "--serial", "X", "--config", str(tmp_path / "none.toml")])
        == EXIT_USAGE
    )


def test_reconcile_with_nothing_pending(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--config", str(config_path), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"entries": [], "unresolved": 0}
    assert main(["reconcile", "--config", str(config_path)]) == EXIT_OK
    assert "Nothing to reconcile" in capsys.readouterr().out


def test_reconcile_of_an_unknown_target_is_a_usage_error(config_path: Path) -> None:
    assert main(["reconcile", "--config", str(config_path), "--target", "nowhere"]) == EXIT_USAGE


def test_reconcile_that_cannot_reach_aws_keeps_the_entry_and_says_so(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_ledger(config_path.parent / "ledger.sqlite") as ledger:
        ledger.journal_open(
            attempt_id="a1",
            serial="SIM000009",
            target="lab",
            certificate_id="ab" * 32,
            thing_name="sim-SIM000009",
        )
    code = main(["reconcile", "--config", str(config_path), "--json"])
    assert code == EXIT_ERROR
    out = json.loads(capsys.readouterr().out)
    assert out["unresolved"] == 1 and out["entries"][0]["action"] == "failed"
    with open_ledger(config_path.parent / "ledger.sqlite") as ledger:
        assert len(ledger.journal_pending()) == 1
