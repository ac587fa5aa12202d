from station.cli import EXIT_ERROR, EXIT_FAIL, EXIT_USAGE, exit_code_for
from station.errors import ConfigError, StationFault, UnitFault
from station.model import Outcome, Secret


def test_outcome_is_decided_by_error_family() -> None:
    assert UnitFault("t", "m", "n").outcome == Outcome.FAIL
    assert StationFault("t", "m", "n").outcome == Outcome.ERROR
    assert exit_code_for(UnitFault("t", "m", "n")) == EXIT_FAIL
    assert exit_code_for(StationFault("t", "m", "n")) == EXIT_ERROR
    assert exit_code_for(ConfigError("t", "m", "n")) == EXIT_USAGE


def test_error_text_carries_next_action() -> None:
    error = StationFault("AWS unreachable", "The control plane did not answer.", "Check the network.")
    assert "Check the network." in str(error)
    assert error.as_dict()["next_action"] == "Check the network."


def test_secret_never_prints_its_bytes() -> None:
    secret = Secret(b"-----BEGIN PRIVATE KEY-----abc")
    assert b"abc" in secret.reveal()
    for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert "abc" not in text
