"""The QA PIN: hashed in station.toml, and `station revoke`/`transfer` need it at a production station."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from station import qapin
from station.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main
from station.errors import InputError
from station.ledger import open_ledger

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "fixtures" / "configs" / "station.toml"  # qa_pin_hash of 0042, production targets


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    with open_ledger(path):
        pass
    return path


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


@pytest.mark.parametrize("command", [["revoke", "SN000001"], ["transfer", "SN000001", "--to", "prod-us"]])
def test_yes_alone_is_not_enough_at_a_production_station(monkeypatch, capsys, ledger, command) -> None:
    _stdin(monkeypatch, "")
    code = main([*command, "--config", str(PRODUCTION), "--ledger", str(ledger), "--yes"])
    assert code == EXIT_USAGE
    assert "QA PIN needed" in capsys.readouterr().err


def test_a_wrong_pin_is_refused_and_recorded_the_right_one_goes_on(monkeypatch, capsys, ledger) -> None:
    argv = [
        "revoke",
        "SN000001",
        "--config",
        str(PRODUCTION),
        "--ledger",
        str(ledger),
        "--yes",
        "--pin-stdin",
    ]
    _stdin(monkeypatch, "1111\n")
    assert main(argv) == EXIT_USAGE
    assert "Wrong PIN" in capsys.readouterr().err
    with open_ledger(ledger, create=False) as opened:
        events = [e.event for e in opened.events(qapin.PIN_SERIAL)]
    assert [e.step for e in events] == ["qa:pin_failed"]
    assert events[0].data["where"] == "station revoke" and "1111" not in str(events[0])
    _stdin(monkeypatch, "0042\n")
    assert main(argv) == EXIT_NOT_FOUND  # past the gate: the (empty) ledger has no such unit


def test_pin_hash_command_prints_a_line_the_config_accepts(monkeypatch, capsys) -> None:
    _stdin(monkeypatch, "13579\n")
    assert main(["pin-hash", "--pin-stdin"]) == EXIT_OK
    line = capsys.readouterr().out.strip()
    assert line.startswith('qa_pin_hash = "scrypt$') and "13579" not in line
    stored = line.split('"')[1]
    assert qapin.pin_matches("13579", stored) and not qapin.pin_matches("13578", stored)


def test_two_hashes_of_one_pin_differ_salt() -> None:
    assert qapin.hash_pin("0042") != qapin.hash_pin("0042")


@pytest.mark.parametrize(
    "stored",
    [
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,  # N = 2^30: a config must not stall us
        "scrypt$16384$8$1$not-base64!!!!!!!!!!$" + "A" * 44,
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,  # N not a power of two
        "md5$abc",
    ],
)
def test_unusable_hashes_are_refused_up_front(stored: str) -> None:
    with pytest.raises(InputError):
        qapin.parse_pin_hash(stored)


def test_back_off_and_lock_without_a_ledger() -> None:
    now = [1000.0]
    guard = qapin.PinGuard("0042", clock=lambda: now[0])
    with pytest.raises(InputError, match="Wrong PIN"):
        guard.check("1")
    with pytest.raises(InputError, match="Wrong PIN"):
        guard.check("2")  # one typo costs nothing
    with pytest.raises(InputError, match="Too soon"):
        guard.check("0042")  # after two, the next try waits
    for wrong in ("3", "4"):
        now[0] += 40
        with pytest.raises(InputError, match="Wrong PIN"):
            guard.check(wrong)
    now[0] += 40
    with pytest.raises(InputError, match="QA PIN locked"):
        guard.check("5")
    now[0] += 60
    with pytest.raises(InputError, match="QA PIN locked"):
        guard.check("0042")
    now[0] += qapin.LOCK_S
    guard.check("0042")
