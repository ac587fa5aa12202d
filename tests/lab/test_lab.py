"""The assembled lab: both planes, lab.json and station.toml, and `station lab` as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from station.config import load_config
from station.errors import InputError
from station.identity import certificate_id, new_identity
from station.lab import Lab


def test_lab_starts_fast_and_describes_itself(tmp_path: Path) -> None:
    with Lab(tmp_path, accounts=2, regions=["ap-northeast-1", "us-east-1"]) as lab:
        assert lab.start_seconds is not None  # the figure is measured by benchmarks/bench_lab.py
        described = json.loads(lab.lab_json_path.read_text())
        assert described["control_plane"]["endpoint_url"] == lab.control.endpoint_url
        assert Path(described["ca_file"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert len(described["accounts"]) == 2
        ports = {
            region["data_port"] for account in described["accounts"] for region in account["regions"].values()
        }
        assert len(ports) == 4  # one data endpoint per (account, region)
        assert described["accounts"][1]["role_arn"].startswith(
            f"arn:aws:iam::{described['accounts'][1]['account_id']}:role/"
        )
        config = load_config(lab.config_path)
        assert set(config.targets) == set(lab.targets)
        assert all(t.lab for t in config.targets.values())
        assert config.targets["lab1-ap-northeast-1"].port == lab.registry().data_port


def test_lab_targets_reach_separate_registries(tmp_path: Path) -> None:
    with Lab(tmp_path, accounts=2, regions=["ap-northeast-1", "us-east-1"]) as lab:
        identity = new_identity("lab-separate")
        second = lab.accounts[1]
        lab.iot(second, "us-east-1").register_certificate_without_ca(
            certificatePem=identity.certificate_pem, status="ACTIVE"
        )
        cert_id = certificate_id(identity.certificate_pem)
        lab.iot(second, "us-east-1").describe_certificate(certificateId=cert_id)
        with pytest.raises(ClientError) as error:
            lab.iot(lab.accounts[0], "us-east-1").describe_certificate(certificateId=cert_id)
        assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError) as error:
        Lab(blocker / "sub").start()
    assert "--state-dir" in error.value.next_action


def test_station_lab_runs_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "lab", "--state-dir", str(state), "--accounts", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        described = json.loads(line)
        assert (state / "lab.json").exists() and (state / "station.toml").exists()
        assert described == json.loads((state / "lab.json").read_text())
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lab_json_names_a_dynamodb_that_holds_a_shared_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY
    from station.ledger import AttemptRecord, open_ledger

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAB_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LAB_SECRET_ACCESS_KEY)
    with Lab(tmp_path) as lab:
        dynamodb = json.loads(lab.lab_json_path.read_text())["dynamodb"]
        assert dynamodb["endpoint_url"] == lab.control.endpoint_url
        with open_ledger(dynamodb["ledger_url"]) as ledger:
            ledger.record_attempt(AttemptRecord(attempt_id="a1", serial="SIM000123", outcome="FAIL"))
        # A second station process would open the same URL and see the same records.
        with open_ledger(dynamodb["ledger_url"], create=False) as again:
            assert [r.serial for r in again.find("SIM000123")] == ["SIM000123"]
            assert again.audit().ok


def test_the_labs_station_toml_says_how_to_add_a_slot_for_a_simulated_unit(tmp_path: Path) -> None:
    import re

    from flashers.simulators.prov1 import Prov1Device

    with Lab(tmp_path, accounts=1, regions=["eu-west-1"]) as lab:
        text = lab.config_path.read_text()
        config = load_config(lab.config_path)
        assert config.slots == {}
        # Uncommenting the example gives a station that `station run` can start.
        example = re.sub(r"(?m)^# (\[slots\.s1\]|port = |product = )", r"\1", text)
        lab.config_path.write_text(example)
        with_slot = load_config(lab.config_path)
        assert set(with_slot.slots) == {"s1"} and with_slot.slots["s1"].product == "sim"
        # A unit `station sim prov1` starts without --device-id has a serial that product takes.
        unit = Prov1Device(tmp_path / "unit")
        assert re.fullmatch(with_slot.products["sim"].serial_pattern, unit.device_id)
