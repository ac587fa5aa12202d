"""The CLI's last line of defence: closed pipes, full disks and unexpected errors end in a message and exit 3.

Before: `station export --format json | head -c 10` ended in a BrokenPipeError traceback, `--out /dev/full` in an
OSError traceback, and any uncaught error exited 1 — the code documented for a FAIL unit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from station.cli import EXIT_ERROR, main
from station.ledger import open_ledger

STATION = str(Path(sys.executable).with_name("station"))


def test_export_into_a_closed_pipe_is_a_message_and_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _fill_records(path, 3000)
    reader = subprocess.Popen(["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    done = subprocess.run(
        [STATION, "export", "--format", "json", "--ledger", str(path)],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    assert reader.stdin is not None
    reader.stdin.close()
    reader.wait(10)
    assert done.returncode == EXIT_ERROR, done.stderr
    assert "Traceback" not in done.stderr
    assert "Output closed early" in done.stderr and "Next:" in done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_export_to_a_full_disk_is_a_message_and_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _fill_records(path, 50)
    done = subprocess.run(
        [STATION, "export", "--format", "csv", "--ledger", str(path), "--out", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_ERROR, done.stderr
    assert "Traceback" not in done.stderr
    assert "Output not written" in done.stderr and "No space left" in done.stderr


def test_an_unexpected_error_exits_3_not_1(monkeypatch, capsys, tmp_path: Path) -> None:
    import station.commands.show as show

    def broken(args: object) -> int:
        raise ZeroDivisionError("secret-looking text that must not be echoed")

    monkeypatch.setattr(show, "run", broken)
    monkeypatch.delenv("STATION_DEBUG", raising=False)
    code = main(["show", "SN1", "--ledger", str(tmp_path / "l.sqlite")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "Unexpected error" in err and "ZeroDivisionError" in err and "Next:" in err
    assert "secret-looking" not in err


def test_a_rust_panic_is_caught_too(monkeypatch, capsys, tmp_path: Path) -> None:
    """pyo3's PanicException derives from BaseException; it must not escape as a traceback."""
    import station.commands.show as show

    class PanicException(BaseException):
        pass

    def broken(args: object) -> int:
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    monkeypatch.setattr(show, "run", broken)
    code = main(["show", "SN1", "--ledger", str(tmp_path / "l.sqlite")])
    assert code == EXIT_ERROR
    assert "PanicException" in capsys.readouterr().err


def _fill_records(path: Path, count: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))
    try:
        from ledger_contract import make_record
    finally:
        sys.path.pop(0)
    with open_ledger(path) as ledger:
        for i in range(count):
            ledger.record_attempt(make_record(f"SN{i:06d}", "PASS", certificate_id=f"{i:064x}"))


def test_export_into_a_missing_folder_is_a_usage_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ledger.sqlite"
    _fill_records(path, 2)
    code = main(["export", "--format", "csv", "--ledger", str(path), "--out", str(tmp_path / "no" / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "File not usable" in err and "No such file" in err
