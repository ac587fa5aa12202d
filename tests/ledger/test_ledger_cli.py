"""The ledger's QA commands through `station.cli.main`: audit verify, units, show, export, and how they find
the ledger (--ledger, --config station.toml, $STATION_LEDGER)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ledger_contract import CERT_ID, make_record, note

from station.cli import EXIT_INTEGRITY, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main
from station.ledger import open_ledger
from station.ledger.base import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    with open_ledger(path) as ledger:
        for serial, outcome in (
            ("SN0001", "FAIL"),
            ("SN0001", "PASS"),
            ("SN0002", "ERROR"),
            ("SN0003", "FAIL"),
        ):
            ledger.append_event(note(serial, 0, kind="unit_started"))
            ledger.record_attempt(make_record(serial, outcome, certificate_id=cert_id(serial)))
    return path


def cert_id(serial: str) -> str:
    return hashlib.sha256(serial.encode()).hexdigest()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tamper(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER records_append_only_update")
    conn.execute("UPDATE records SET outcome = 'PASS' WHERE serial = 'SN0003'")
    conn.commit()
    conn.close()


def test_audit_verify_intact(capsys: Any, ledger_path: Path) -> None:
    code, out, _ = run(capsys, "audit", "verify", "--ledger", str(ledger_path))
    assert code == EXIT_OK
    assert "intact" in out and "12 rows, 3 unit states checked" in out  # 4 unit_started + 4 seals + 4 records
    assert "matches the signed checkpoint at event 8" in out
    code, out, _ = run(capsys, "audit", "verify", "--ledger", str(ledger_path), "--json")
    result = json.loads(out)
    assert code == EXIT_OK and result["ok"] is True and result["head_seq"] == 8


def test_audit_verify_names_the_tampered_row(capsys: Any, ledger_path: Path) -> None:
    _tamper(ledger_path)
    (attempt,) = [r.attempt_id for r in open_ledger(ledger_path).find("SN0003")]
    code, out, _ = run(capsys, "audit", "verify", "--ledger", str(ledger_path))
    assert code == EXIT_INTEGRITY
    assert f"records {attempt}" in out and "edited" in out
    code, out, _ = run(capsys, "audit", "verify", "--ledger", str(ledger_path), "--json")
    result = json.loads(out)
    assert code == EXIT_INTEGRITY
    assert result["ok"] is False and result["first_bad_row"] == {"table": "records", "key": attempt}


def test_audit_verify_catches_a_truncated_tail_against_the_anchor(capsys: Any, ledger_path: Path) -> None:
    conn = sqlite3.connect(ledger_path)
    for trigger in ("events_append_only_delete", "records_append_only_delete"):
        conn.execute(f"DROP TRIGGER {trigger}")
    # Drop the last unit completely and make the head consistent again: the chain alone cannot tell.
    conn.execute("DELETE FROM events WHERE seq > 6")
    conn.execute("DELETE FROM records WHERE serial = 'SN0003'")
    conn.execute("DELETE FROM units WHERE serial = 'SN0003'")
    conn.execute("UPDATE chain_head SET seq = 6, hash = (SELECT hash FROM events WHERE seq = 6)")
    conn.commit()
    conn.close()
    code, out, _ = run(capsys, "audit", "verify", "--ledger", str(ledger_path))
    assert code == EXIT_INTEGRITY and "truncated" in out and "event 8" in out


def test_audit_checkpoint_signs_the_head(capsys: Any, ledger_path: Path) -> None:
    code, out, _ = run(capsys, "audit", "checkpoint", "--ledger", str(ledger_path))
    assert code == EXIT_OK and "Signed event 8" in out
    code, out, _ = run(
        capsys, "audit", "verify", "--since-checkpoint", "--ledger", str(ledger_path), "--json"
    )
    result = json.loads(out)
    assert code == EXIT_OK and result["since_seq"] == 8 and result["checked"] == 0


def test_audit_verify_exit_code_through_the_real_entry_point(ledger_path: Path) -> None:
    _tamper(ledger_path)
    proc = subprocess.run(
        [sys.executable, "-m", "station.cli", "audit", "verify", "--ledger", str(ledger_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_INTEGRITY, proc.stderr
    assert "TAMPERED" in proc.stdout


def test_units_filters_on_the_latest_outcome(capsys: Any, ledger_path: Path) -> None:
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path), "--json")
    assert code == EXIT_OK
    assert {u["serial"]: (u["outcome"], u["attempts"]) for u in json.loads(out)} == {
        "SN0001": ("PASS", 2),
        "SN0002": ("ERROR", 1),
        "SN0003": ("FAIL", 1),
    }
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path), "--outcome", "fail", "--json")
    assert [u["serial"] for u in json.loads(out)] == ["SN0003"]
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path))
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SERIAL", "STATE", "OUTCOME", "TRIES"]
    # newest first: the last unit written leads
    assert [line.split()[0] for line in lines[1:4]] == ["SN0003", "SN0002", "SN0001"]
    assert lines[3].split()[:7] == ["SN0001", "provisioned", "2023-11-14", "by", "ana", "PASS", "2"]
    assert lines[-1] == "3 unit(s), newest first."


def test_units_pages_with_a_cursor_and_filters_by_state(capsys: Any, ledger_path: Path) -> None:
    code, out, err = run(capsys, "units", "--ledger", str(ledger_path), "--limit", "2", "--json")
    assert code == EXIT_OK and [u["serial"] for u in json.loads(out)] == ["SN0003", "SN0002"]
    cursor = err.split("--after '")[1].split("'")[0]
    code, out, err = run(
        capsys, "units", "--ledger", str(ledger_path), "--limit", "2", "--after", cursor, "--json"
    )
    assert [u["serial"] for u in json.loads(out)] == ["SN0001"] and "--after" not in err
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path), "--state", "failed", "--json")
    assert [(u["serial"], u["state"]) for u in json.loads(out)] == [
        ("SN0003", "failed"),
        ("SN0002", "failed"),
    ]
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path), "--since", "2030-01-01", "--json")
    assert json.loads(out) == []
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path), "--until", "2030-01-01")
    assert "3 unit(s)" in out
    with pytest.raises(SystemExit):
        main(["units", "--ledger", str(ledger_path), "--since", "yesterday"])


def test_a_revoked_unit_says_so_everywhere(capsys: Any, ledger_path: Path, tmp_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        ledger.record_attempt(
            make_record(
                "SN0001",
                "DONE",
                action="revoke",
                operator="qa",
                certificate_id=cert_id("SN0001"),
                finished_at=1_780_000_000.0,
                extra={"revoked": [cert_id("SN0001")]},
            )
        )
    code, out, _ = run(capsys, "units", "--ledger", str(ledger_path), "--state", "revoked")
    assert out.splitlines()[1].split()[:4] == ["SN0001", "revoked", "2026-05-28", "by"]
    code, out, _ = run(capsys, "show", "sn0001", "--ledger", str(ledger_path))
    assert code == EXIT_OK and out.startswith("Unit SN0001: revoked 2026-05-28 by qa")
    target = tmp_path / "out.csv"
    run(capsys, "export", "--format", "csv", "--out", str(target), "--ledger", str(ledger_path))
    rows = [r for r in csv.DictReader(io.StringIO(target.read_text())) if r["serial"] == "SN0001"]
    assert {(r["state"], r["state_changed_at"]) for r in rows} == {("revoked", "2026-05-28T20:26:40Z")}


def test_units_rejects_an_unknown_outcome(capsys: Any, ledger_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["units", "--ledger", str(ledger_path), "--outcome", "MAYBE"])
    assert caught.value.code == EXIT_USAGE


def test_show_a_unit(capsys: Any, ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        ledger.journal_open(serial="SN0002", stage="registering", certificate_id=CERT_ID)
    code, out, _ = run(capsys, "show", "SN0001", "--ledger", str(ledger_path), "--json")
    assert code == EXIT_OK
    shown = json.loads(out)
    assert [r["outcome"] for r in shown["records"]] == ["FAIL", "PASS"]
    assert [e["kind"] for e in shown["events"]] == ["unit_started", "record", "unit_started", "record"]
    assert [(u["serial"], u["state"], u["attempts"]) for u in shown["units"]] == [
        ("SN0001", "provisioned", 2)
    ]
    assert shown["pending_journal"] == []
    code, out, _ = run(capsys, "show", "SN0002", "--ledger", str(ledger_path))
    assert code == EXIT_OK
    assert "ERROR" in out and "prov1-SN0002" in out and "station reconcile" in out
    assert "Events:" in out and "unit_started" in out
    # by certificate id prefix and by thing name
    code, out, _ = run(capsys, "show", cert_id("SN0003")[:10].upper(), "--ledger", str(ledger_path), "--json")
    assert code == EXIT_OK and json.loads(out)["records"][0]["serial"] == "SN0003"
    code, out, _ = run(capsys, "show", "prov1-SN0003", "--ledger", str(ledger_path), "--json")
    assert json.loads(out)["records"][0]["serial"] == "SN0003"


def test_show_unknown_unit_exits_4(capsys: Any, ledger_path: Path) -> None:
    code, out, _ = run(capsys, "show", "SN9999", "--ledger", str(ledger_path))
    assert code == EXIT_NOT_FOUND and "SN9999" in out
    code, out, _ = run(capsys, "show", "SN9999", "--ledger", str(ledger_path), "--json")
    assert code == EXIT_NOT_FOUND and json.loads(out)["error"]["query"] == "SN9999"


def test_export_csv_to_a_file_and_json_to_stdout(capsys: Any, ledger_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "units.csv"
    code, _, err = run(
        capsys, "export", "--format", "csv", "--out", str(target), "--ledger", str(ledger_path)
    )
    assert code == EXIT_OK and "4 attempt record(s)" in err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["state"] for r in rows] == ["provisioned", "provisioned", "failed", "failed"]
    assert [(r["serial"], r["outcome"]) for r in rows] == [
        ("SN0001", "FAIL"),
        ("SN0001", "PASS"),
        ("SN0002", "ERROR"),
        ("SN0003", "FAIL"),
    ]
    code, out, _ = run(capsys, "export", "--format", "JSON", "--ledger", str(ledger_path))
    assert code == EXIT_OK
    assert [r["serial"] for r in json.loads(out)] == ["SN0001", "SN0001", "SN0002", "SN0003"]
    assert "PRIVATE KEY" not in out + target.read_text()


def test_missing_ledger_is_a_usage_error_and_is_not_created(capsys: Any, tmp_path: Path) -> None:
    path = tmp_path / "typo.sqlite"
    for argv in (["audit", "verify"], ["units"], ["show", "SN1"], ["export", "--format", "csv"]):
        code, _, err = run(capsys, *argv, "--ledger", str(path))
        assert code == EXIT_USAGE and "No ledger" in err, argv
    assert not path.exists()


def test_ledger_from_environment(capsys: Any, ledger_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATION_LEDGER", str(ledger_path))
    code, out, _ = run(capsys, "units", "--json")
    assert code == EXIT_OK and len(json.loads(out)) == 3


def test_no_ledger_anywhere_says_how_to_give_one(
    capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATION_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "units")
    assert code == EXIT_USAGE and "--ledger" in err and "STATION_LEDGER" in err


def test_ledger_from_config(capsys: Any, ledger_path: Path, tmp_path: Path) -> None:
    lab = (ROOT / "fixtures" / "configs" / "lab-station.toml").read_text()
    config = tmp_path / "station.toml"
    config.write_text(
        lab.replace('ledger = "lab-ledger.sqlite"', f'ledger = "{ledger_path.name}"').replace(
            'ca_file = "../certs/factory-ca.pem"', ""
        )
    )
    code, out, _ = run(capsys, "audit", "verify", "--config", str(config), "--json")
    assert code == EXIT_OK and json.loads(out)["ok"] is True
    code, out, _ = run(capsys, "units", "--config", str(config), "--outcome", "PASS", "--json")
    assert [u["serial"] for u in json.loads(out)] == ["SN0001"]
