"""`station register | revoke | transfer | preflight` against a real lab, with the awsiotsdk as the device.

One lab per module (two accounts × two regions); every test uses fresh serials and, except the seed's
keychain pair, fresh certificates, and its own ledger. What the commands did is checked from outside: with
an independent boto3 client on the registries, by the device connecting (or being hung up on) with the
unmodified awsiotsdk, and by reading the ledger.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from qa_rig import (
    CERTS,
    HANGUP,
    HOME,
    KEYCHAIN_CER,
    KEYCHAIN_P12,
    OTHER_ACCOUNT,
    OTHER_REGION,
    REGIONS,
    certificate_ids,
    certificate_status,
    cli,
    cli_json,
    config_with,
    device_connect_error,
    device_echo,
    extra_target,
    forget_everywhere,
    fresh_serial,
    keychain_device,
    observer,
    station_args,
    thing_exists,
    write_unit_files,
)

from station.cli import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    main,
)
from station.identity import certificate_id
from station.lab import Lab
from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY
from station.ledger import open_ledger
from station.model import Identity

pytestmark = pytest.mark.lab

CONNECT_ONLY_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": "arn:aws:iot:REGION:ACCOUNT:client/${iot:Connection.Thing.ThingName}",
            }
        ],
    }
)
BROAD_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("qa-lab"), accounts=2, regions=REGIONS) as running:
        yield running


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


def ledger_bytes(ledger: Path) -> bytes:
    """Every file of the SQLite ledger (main file, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in ledger.parent.glob(ledger.name + "*"))


def register_fresh(
    lab: Lab, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str = HOME
) -> tuple[str, str, Identity]:
    """A fresh unit registered with `station register` (PEM + key): (serial, thing, device identity)."""
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / serial, serial.lower())
    code, out = cli_json(
        capsys,
        "register",
        "--cert",
        str(files["pem"]),
        "--key",
        str(files["key"]),
        "--serial",
        serial,
        "--target",
        target,
        *station_args(lab, ledger),
    )
    assert code == EXIT_OK, out
    return serial, str(out["thing_name"]), device


# ---------------------------------------------------------------------------------------------- the seed


def test_keychain_pair_is_registered_revoked_and_transferred_to_another_region_and_account(
    lab: Lab, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = keychain_device()
    cert_id = device.certificate_id
    serial = fresh_serial()
    thing = f"sim-{serial}"
    args = station_args(lab, ledger)
    forget_everywhere(lab, cert_id)  # another module may have left the seed's certificate registered
    try:
        # Seed §6: the keychain's DER certificate + PKCS#12 (empty password) → registered without a CA.
        code, out = cli_json(
            capsys,
            "register",
            "--cert",
            str(KEYCHAIN_CER),
            "--p12",
            str(KEYCHAIN_P12),
            "--serial",
            serial,
            "--target",
            HOME,
            *args,
        )
        assert code == EXIT_OK, out
        assert out["certificate_id"] == cert_id  # the registry names it by the SHA-256 computed beforehand
        assert out["thing_name"] == thing and out["already_registered"] is False and out["thing_created"]
        assert certificate_status(lab, HOME, cert_id) == "ACTIVE"
        assert device_echo(lab, device, thing, HOME).messages == 3
        # Seed §4: another region has its own registry, so the same device is hung up on there.
        elsewhere = device_connect_error(lab, device, thing, OTHER_REGION)
        assert elsewhere is not None and elsewhere.name == HANGUP

        code, out = cli_json(capsys, "revoke", serial, "--yes", "--operator", "qa-alice", *args)
        assert code == EXIT_OK, out
        assert out["revoked"] == 1 and out["items"][0]["thing_deleted"] == thing
        assert certificate_status(lab, HOME, cert_id) is None and not thing_exists(lab, HOME, thing)
        # Seed §2: a deleted certificate's connect is hung up on (5134); verify says so in operator words.
        hung = device_connect_error(lab, device, thing, HOME)
        assert hung is not None and (hung.name, hung.code) == (HANGUP, 5134)

        # Seed §4/§5: the same certificate in another region, then in another account.
        code, out = cli_json(capsys, "transfer", serial, "--to", OTHER_REGION, "--yes", *args)
        assert code == EXIT_OK, out
        assert out["registration"]["region"] == "us-east-1"
        assert device_echo(lab, device, thing, OTHER_REGION).messages == 3
        still = device_connect_error(lab, device, thing, HOME)
        assert still is not None and still.name == HANGUP  # revoked at home stays revoked

        code, out = cli_json(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, "--yes", *args)
        assert code == EXIT_OK, out
        assert out["registration"]["account_id"] == lab.accounts[1]
        assert out["source_target"] == OTHER_REGION  # the unit's latest PASS record
        assert device_echo(lab, device, thing, OTHER_ACCOUNT).messages == 3
        assert device_connect_error(lab, device, thing, OTHER_REGION) is None  # both registries now

        # Revoking the unit removes it from every registry it was put in.
        code, out = cli_json(capsys, "revoke", serial, "--yes", *args)
        assert code == EXIT_OK, out
        assert {i["target"] for i in out["items"] if i["existed"]} == {OTHER_REGION, OTHER_ACCOUNT}
        for target in (OTHER_REGION, OTHER_ACCOUNT):
            error = device_connect_error(lab, device, thing, target)
            assert error is not None and error.name == HANGUP
            assert not thing_exists(lab, target, thing)

        with open_ledger(ledger) as book:
            records = book.find(serial)
            # Registered without verify and transferred: DONE, never PASS (nothing proved the unit); every
            # revoke is an attempt record of its own, naming what it removed.
            assert [(r.target, r.outcome, r.action) for r in records] == [
                (HOME, "DONE", "register"),
                (HOME, "DONE", "revoke"),
                (OTHER_REGION, "DONE", "transfer"),
                (OTHER_ACCOUNT, "DONE", "transfer"),
                (HOME, "DONE", "revoke"),
                (OTHER_REGION, "DONE", "revoke"),
                (OTHER_ACCOUNT, "DONE", "revoke"),
            ]
            assert [r.extra["revoked"] for r in records if r.action == "revoke"] == [[cert_id]] * 4
            assert records[0].title == "Registered (not verified)"
            # The lab config's operator, and the one named for the first revoke.
            assert [r.operator for r in records] == ["trainee", "qa-alice"] + ["trainee"] * 5
            assert {r.certificate_id for r in records} == {cert_id}
            notes = [e.event for e in book.events(serial) if e.event.kind == "note"]
            assert [(n.step, n.outcome) for n in notes] == [
                ("qa:register", "ok"),
                ("qa:revoke", "ok"),
                ("qa:transfer", "ok"),
                ("qa:transfer", "ok"),
                ("qa:revoke", "ok"),  # home again (already gone: harmless), then both new registries
                ("qa:revoke", "ok"),
                ("qa:revoke", "ok"),
            ]
            assert notes[1].data["operator"] == "qa-alice" and notes[2].data["operator"] == "trainee"
            assert book.journal_pending() == []
            assert book.audit().ok
        assert b"PRIVATE KEY" not in ledger_bytes(ledger)
    finally:
        forget_everywhere(lab, cert_id, [thing])


def test_register_through_a_subprocess_with_the_p12_password_on_stdin(
    lab: Lab, ledger: Path, tmp_path: Path
) -> None:
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "unit-sub", password=b"s3cret pass")
    target = "lab2-ap-northeast-1"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STATION_CONFIG", None)
    command = [
        sys.executable,
        "-m",
        "station.cli",
        "register",
        "--cert",
        str(files["cer"]),
        "--p12",
        str(files["p12"]),
        "--password-stdin",
        "--serial",
        serial,
        "--target",
        target,
        "--verify",
        "--json",
        *station_args(lab, ledger),
    ]
    proc = subprocess.run(
        command, input=b"s3cret pass\n", capture_output=True, timeout=120, cwd=tmp_path, env=env
    )
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["account_id"] == lab.accounts[1] and out["target"] == target
    assert out["verify"]["messages"] == 3  # the station's own MQTT verify with the key from the .p12
    assert out["certificate_id"] == device.certificate_id
    assert b"s3cret" not in proc.stdout + proc.stderr
    assert certificate_status(lab, target, device.certificate_id) == "ACTIVE"
    assert device_echo(lab, device, out["thing_name"], target).messages == 3
    assert b"PRIVATE KEY" not in ledger_bytes(ledger)


def test_a_wrong_p12_password_is_refused_before_any_aws_call(
    lab: Lab,
    ledger: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device, files = write_unit_files(tmp_path / "unit", "unit-pw", password=b"right")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hunter-42-typo\n")))
    code, _, err = cli(
        capsys,
        "register",
        "--p12",
        str(files["p12"]),
        "--password-stdin",
        "--serial",
        fresh_serial(),
        "--target",
        HOME,
        *station_args(lab, ledger),
    )
    assert code == EXIT_USAGE
    assert "password" in err.lower() and "hunter" not in err  # the password is never echoed
    assert certificate_status(lab, HOME, device.certificate_id) is None
    assert not ledger.exists()


# ---------------------------------------------------------------------------------------------- register


def test_registering_the_same_certificate_twice_is_harmless(
    lab: Lab, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "twice")
    register = [
        "register",
        "--cert",
        str(files["cer"]),
        "--serial",
        serial,
        "--target",
        HOME,
        *station_args(lab, ledger),
    ]
    code, first = cli_json(capsys, *register)
    assert code == EXIT_OK and first["already_registered"] is False and first["changed"] is True
    code, out, _ = cli(capsys, *register)
    assert code == EXIT_OK
    assert out.startswith("Already registered (not verified):") and "nothing changed" in out
    code, again = cli_json(capsys, *register)
    assert code == EXIT_OK and again["already_registered"] is True and again["changed"] is False
    assert again["certificate_arn"] == first["certificate_arn"]

    iot = observer(lab, HOME)
    assert sorted(c for c in certificate_ids(lab, HOME) if c == device.certificate_id) == [
        device.certificate_id
    ]
    arn = first["certificate_arn"]
    assert [p["policyName"] for p in iot.list_attached_policies(target=arn)["policies"]] == [
        "station-lab-device"
    ]
    assert iot.list_principal_things(principal=arn)["things"] == [first["thing_name"]]
    assert device_echo(lab, device, first["thing_name"], HOME).messages == 3
    with open_ledger(ledger) as book:
        assert [r.outcome for r in book.find(serial)] == ["DONE", "DONE", "DONE"]  # registered, not verified


@pytest.mark.parametrize(
    "name",
    [
        "bad-rsa-1024.pem",
        "bad-sha1.pem",
        "bad-ed25519.pem",
        "bad-ec-p521.pem",
        "bad-expired.pem",
        "bad-not-yet-valid.pem",
        "garbage.pem",
        "truncated.pem",
    ],
)
def test_a_bad_certificate_fails_before_any_aws_call(
    lab: Lab, ledger: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    before = certificate_ids(lab, HOME)
    # Any request reaching the control plane now would answer 500 and count as fired.
    fired = lab.control.faults.fired["error"]
    fault = lab.control.faults.set("error", status=500)
    try:
        code, out = cli_json(
            capsys,
            "register",
            "--cert",
            str(CERTS / name),
            "--serial",
            fresh_serial(),
            "--target",
            HOME,
            *station_args(lab, ledger),
        )
    finally:
        lab.control.faults.clear(fault)
    assert code == EXIT_USAGE
    assert out["error"]["title"] and out["error"]["next_action"]
    assert lab.control.faults.fired["error"] == fired  # no AWS call at all
    assert certificate_ids(lab, HOME) == before
    assert not ledger.exists()  # nothing was attempted, so nothing is recorded
    text = (CERTS / name).read_bytes()
    if b"BEGIN CERTIFICATE" in text and name != "truncated.pem":
        assert certificate_id(text) not in certificate_ids(lab, HOME)


def test_a_serial_that_does_not_match_the_product_is_refused(
    lab: Lab, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device, files = write_unit_files(tmp_path / "unit", "badserial")
    code, out = cli_json(
        capsys,
        "register",
        "--cert",
        str(files["pem"]),
        "--serial",
        "SN-NOT-A-SIM",
        "--target",
        HOME,
        *station_args(lab, ledger),
    )
    assert code == EXIT_USAGE and out["error"]["title"] == "Serial does not match"
    assert certificate_status(lab, HOME, device.certificate_id) is None


def test_a_verify_that_cannot_pass_fails_and_leaves_nothing_registered(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A target whose policy lets the unit connect but not subscribe or publish to its verify topic.
    policy = f"connect-only-{fresh_serial().lower()}"
    config = config_with(
        lab,
        tmp_path / "conf",
        extra_target(lab, "connect-only", policy_name=policy, policy_document=CONNECT_ONLY_POLICY),
    )
    ledger = tmp_path / "conf" / "ledger.sqlite"
    serial = fresh_serial()
    device, files = write_unit_files(tmp_path / "unit", "noecho")
    code, out = cli_json(
        capsys,
        "register",
        "--cert",
        str(files["pem"]),
        "--key",
        str(files["key"]),
        "--serial",
        serial,
        "--target",
        "connect-only",
        "--verify",
        "--config",
        str(config),
    )
    assert code == EXIT_FAIL, out
    assert out["error"]["outcome"] == "FAIL" and "policy" in out["error"]["message"]
    assert certificate_status(lab, HOME, device.certificate_id) is None  # rolled back
    assert not thing_exists(lab, HOME, f"sim-{serial}")
    with open_ledger(ledger) as book:
        (record,) = book.find(serial)
        assert record.outcome == "FAIL" and record.error_kind == "UnitFault"
        assert record.compensations == [
            {"action": "rollback", "ok": True, "detail": "What this attempt made in AWS was deleted."}
        ]
        assert "verify" in record.timings_ms
        (note,) = [e.event for e in book.events(serial) if e.event.kind == "note"]
        assert (note.step, note.outcome) == ("qa:register", "failed")
        assert book.journal_pending() == []


def test_register_needs_a_key_to_verify(
    lab: Lab, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device, files = write_unit_files(tmp_path / "unit", "nokey")
    code, out = cli_json(
        capsys,
        "register",
        "--cert",
        str(files["cer"]),
        "--serial",
        fresh_serial(),
        "--target",
        HOME,
        "--verify",
        *station_args(lab, ledger),
    )
    assert code == EXIT_USAGE and "--key" in out["error"]["next_action"]
    assert certificate_status(lab, HOME, device.certificate_id) is None


# ---------------------------------------------------------------------------------------------- revoke


def test_revoke_asks_and_refuses_without_a_terminal(
    lab: Lab,
    ledger: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serial, thing, device = register_fresh(lab, ledger, tmp_path, capsys)
    cert_id = device.certificate_id
    args = station_args(lab, ledger)

    code, _, err = cli(capsys, "revoke", serial, *args)  # pytest's stdin is not a terminal
    assert code == EXIT_USAGE and "--yes" in err
    assert certificate_status(lab, HOME, cert_id) == "ACTIVE"

    monkeypatch.setattr("station.commands.register.is_interactive", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt="": "n")
    code, out, _ = cli(capsys, "revoke", serial, *args)
    assert code == EXIT_FAIL and out.endswith("Nothing revoked.\n")  # an answer, not an interruption (130)
    assert certificate_status(lab, HOME, cert_id) == "ACTIVE"

    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")
    code, out, _ = cli(capsys, "revoke", serial, *args)
    assert code == EXIT_OK and f"thing {thing} deleted" in out
    assert certificate_status(lab, HOME, cert_id) is None

    code, out, _ = cli(capsys, "revoke", serial, "--yes", *args)  # again: harmless
    assert code == EXIT_OK and "already revoked" in out


def test_unknown_units_and_targets_are_not_found(
    lab: Lab, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial, _, _ = register_fresh(lab, ledger, tmp_path, capsys)
    args = station_args(lab, ledger)
    code, out = cli_json(capsys, "revoke", "SIM00000000", "--yes", *args)
    assert code == EXIT_NOT_FOUND and out["error"]["kind"] == "NotFound"
    code, out = cli_json(capsys, "revoke", serial, "--target", "nowhere", "--yes", *args)
    assert code == EXIT_NOT_FOUND and "nowhere" in out["error"]["message"]
    code, out = cli_json(capsys, "transfer", serial, "--to", "nowhere", "--yes", *args)
    assert code == EXIT_NOT_FOUND
    code, out = cli_json(capsys, "preflight", "--target", "nowhere", *args)
    assert code == EXIT_NOT_FOUND
    code, out = cli_json(
        capsys, "register", "--cert", str(CERTS / "ec-p256.pem"), "--serial", serial, "--target", "x", *args
    )
    assert code == EXIT_NOT_FOUND


# ---------------------------------------------------------------------------------------------- transfer


def test_transfer_with_revoke_source_moves_the_unit(
    lab: Lab, ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial, thing, device = register_fresh(lab, ledger, tmp_path, capsys)
    args = station_args(lab, ledger)

    # To where it is registered already: nothing to do (before: ERROR "Same registry", exit 2).
    code, out = cli_json(capsys, "transfer", serial, "--to", HOME, "--yes", *args)
    assert code == EXIT_OK and (out["outcome"], out["title"]) == ("DONE", "Already at target")

    code, out, err = cli(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, *args)
    assert code == EXIT_USAGE and "--yes" in err  # no terminal to confirm

    code, out, _ = cli(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, "--revoke-source", "--yes", *args)
    assert code == EXIT_OK, out
    assert f"source       {HOME}: revoked" in out
    assert device_echo(lab, device, thing, OTHER_ACCOUNT).messages == 3
    hung = device_connect_error(lab, device, thing, HOME)
    assert hung is not None and hung.name == HANGUP
    assert not thing_exists(lab, HOME, thing) and thing_exists(lab, OTHER_ACCOUNT, thing)

    # Run again: the unit's state says it is there already. DONE, exit 0, nothing changed or recorded.
    with open_ledger(ledger) as book:
        attempts = len(book.find(serial))
    code, out = cli_json(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, "--revoke-source", "--yes", *args)
    assert code == EXIT_OK, out
    assert (out["ok"], out["outcome"], out["kind"], out["changed"]) == (True, "DONE", "AlreadyDone", False)
    assert out["message"] == (
        f"{serial}'s certificate {device.certificate_id[:12]}… is registered in {OTHER_ACCOUNT} already "
        f"(thing {thing})."
    )
    code, text, _ = cli(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, "--yes", *args)
    assert code == EXIT_OK and text.startswith("Already at target: ")
    with open_ledger(ledger) as book:
        assert len(book.find(serial)) == attempts
    assert device_echo(lab, device, thing, OTHER_ACCOUNT).messages == 3


def test_a_transfer_asked_again_with_revoke_source_points_at_revoke(
    lab: Lab,
    ledger: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serial, thing, device = register_fresh(lab, ledger, tmp_path, capsys)
    args = station_args(lab, ledger)
    monkeypatch.setattr("station.commands.register.is_interactive", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt="": "n")
    code, out, _ = cli(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, *args)
    assert code == EXIT_FAIL and out.endswith("Nothing transferred.\n")
    assert not thing_exists(lab, OTHER_ACCOUNT, thing)

    code, out, _ = cli(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, "--yes", *args)  # keeps the source
    assert code == EXIT_OK, out
    code, out = cli_json(capsys, "transfer", serial, "--to", OTHER_ACCOUNT, "--revoke-source", "--yes", *args)
    assert code == EXIT_USAGE and out["error"]["title"] == "Already at target"
    assert (
        out["error"]["next_action"] == f"To remove it there, run `station revoke {serial} --target {HOME}`."
    )
    assert certificate_status(lab, HOME, device.certificate_id) == "ACTIVE"


# ---------------------------------------------------------------------------------------------- preflight


def test_preflight_passes_for_the_lab(lab: Lab, ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli_json(capsys, "preflight", *station_args(lab, ledger))
    assert code == EXIT_OK, out
    assert {t["target"] for t in out["targets"]} == set(lab.targets)
    for target in out["targets"]:
        names = [c["name"] for c in target["checks"] if c["ok"]]
        assert {"credentials", "endpoint", "policy", "policy scope"} <= set(names)
    code, text, _ = cli(capsys, "preflight", "--target", OTHER_ACCOUNT, *station_args(lab, ledger))
    assert code == EXIT_OK and "✔ credentials" in text and "✘" not in text
    assert "All checks passed." in text
    with open_ledger(ledger) as book:
        steps = [e.event.step for e in book.events() if e.event.kind == "note"]
        assert steps == ["qa:preflight", "qa:preflight"]


def test_preflight_refuses_a_broad_policy_on_a_production_target(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A production-like target (lab = false) reaching the lab through an AWS profile, as a real one would.
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[labprod]\naws_access_key_id = {LAB_ACCESS_KEY_ID}\naws_secret_access_key = {LAB_SECRET_ACCESS_KEY}\n"
    )
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # One with iot:* in its station.toml document; one whose policy in AWS is iot:* on *.
    in_aws = f"broad-in-aws-{fresh_serial().lower()}"
    observer(lab, HOME).create_policy(policyName=in_aws, policyDocument=BROAD_POLICY)
    config = config_with(
        lab,
        tmp_path / "conf",
        extra_target(
            lab,
            "prod-broad",
            lab_flag=False,
            profile="labprod",
            policy_name=f"broad-{fresh_serial().lower()}",
            policy_document=BROAD_POLICY,
        ),
        extra_target(
            lab,
            "prod-broad-in-aws",
            lab_flag=False,
            profile="labprod",
            policy_name=in_aws,
            policy_document=CONNECT_ONLY_POLICY,
        ),
        extra_target(
            lab, "lab-broad", policy_name=f"lab-broad-{fresh_serial().lower()}", policy_document=BROAD_POLICY
        ),
    )
    code, out = cli_json(capsys, "preflight", "--target", "prod-broad", "--config", str(config))
    assert code == EXIT_ERROR
    (report,) = out["targets"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["credentials"]["ok"] and checks["endpoint"]["ok"]
    assert not checks["policy document"]["ok"] and "iot:*" in checks["policy document"]["message"]
    assert not checks["policy scope"]["ok"] and checks["policy scope"]["next_action"]

    code, text, _ = cli(capsys, "preflight", "--target", "prod-broad-in-aws", "--config", str(config))
    assert code == EXIT_ERROR
    assert "✔ policy document" in text and "✘ policy scope" in text and "too broad" in text

    code, out = cli_json(capsys, "preflight", "--target", "lab-broad", "--config", str(config))
    assert code == EXIT_OK, out  # the same document is accepted for a lab target

    # Register refuses to create the broad policy for the production target too (nothing left behind).
    device, files = write_unit_files(tmp_path / "unit", "broad")
    code, out = cli_json(
        capsys,
        "register",
        "--cert",
        str(files["pem"]),
        "--serial",
        fresh_serial(),
        "--target",
        "prod-broad",
        "--config",
        str(config),
    )
    assert code == EXIT_ERROR and out["error"]["title"] == "Device policy too broad"
    assert certificate_status(lab, HOME, device.certificate_id) is None


def test_preflight_fails_when_the_control_plane_is_unreachable(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    config = config_with(
        lab,
        tmp_path / "conf",
        extra_target(
            lab,
            "offline",
            policy_name="station-lab-device",
            policy_document=CONNECT_ONLY_POLICY,
            endpoint_url=f"http://127.0.0.1:{closed}",
        ),
    )
    code, text, _ = cli(capsys, "preflight", "--target", "offline", "--config", str(config))
    assert code == EXIT_ERROR
    assert "✘ credentials" in text and "Next:" in text
    assert "✘ endpoint" in text and "Skipped" in text  # what depends on credentials says why it is skipped
    assert "All checks passed" not in text


# ---------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["register", "revoke", "transfer", "preflight"])
def test_help_has_an_example_and_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert f"station {command}" in text.split("examples:", 1)[1]
    assert "exit codes:" in text and "--json" in text and "--config" in text
