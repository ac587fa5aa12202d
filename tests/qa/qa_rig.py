"""Helpers for the QA command tests: the CLI in-process, certificate files, and the device's own connect.

The device side is independent of the station: certificates and keys are read with `cryptography` directly,
the certificate id is hashed here, and the connect uses the unmodified awsiotsdk (`mtls_from_bytes`) or
`station.verify.verify` (which is that same SDK, used exactly as a device program would).
moto keeps every registry in process-wide globals, so each test uses fresh certificates and serials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt_connection_builder
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from station.cli import main
from station.identity import new_identity
from station.lab import Lab
from station.model import Identity, Secret

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CERTS = FIXTURES / "certs"
KEYCHAIN_CER = CERTS / "keychain-client.cer"
KEYCHAIN_P12 = CERTS / "keychain-client.p12"
REGIONS = ("ap-northeast-1", "us-east-1")
HOME = "lab1-ap-northeast-1"  # the lab's first account, first region
OTHER_REGION = "lab1-us-east-1"
OTHER_ACCOUNT = "lab2-us-east-1"
HANGUP = "AWS_ERROR_MQTT_UNEXPECTED_HANGUP"


def fresh_serial() -> str:
    """A serial matching the lab's product pattern (SIM + 4..8 digits), unique enough per test run."""
    return "SIM" + str(secrets.randbelow(10**8)).zfill(8)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`station …` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli(capsys, *args, "--json")
    return code, json.loads(out)


def station_args(lab: Lab, ledger: Path) -> list[str]:
    return ["--config", str(lab.config_path), "--ledger", str(ledger)]


# ---------------------------------------------------------------------------------------------- identities


def der_id(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def device_identity(cert: x509.Certificate, key: Any) -> Identity:
    """What the device holds, built without station.identity."""
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Identity(pem, der_id(cert), Secret(key_pem))


def keychain_device() -> Identity:
    """The seed's keychain pair as the device has it: the .p12 with an empty password."""
    key, cert, _ = pkcs12.load_key_and_certificates(KEYCHAIN_P12.read_bytes(), b"")
    assert cert is not None and key is not None
    assert der_id(cert) == hashlib.sha256(KEYCHAIN_CER.read_bytes()).hexdigest()
    return device_identity(cert, key)


def write_unit_files(
    folder: Path, name: str, *, password: bytes | None = None
) -> tuple[Identity, dict[str, Path]]:
    """A fresh unit identity as files: PEM certificate, PEM key, DER .cer and a .p12 (optionally with a
    password). Returns the device's identity and the paths."""
    made = new_identity(name)
    assert made.private_key is not None
    cert = x509.load_pem_x509_certificate(made.certificate_pem.encode("ascii"))
    key = serialization.load_pem_private_key(made.private_key.reveal(), None)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "pem": folder / f"{name}.pem",
        "key": folder / f"{name}.key",
        "cer": folder / f"{name}.cer",
        "p12": folder / f"{name}.p12",
    }
    paths["pem"].write_text(made.certificate_pem)
    paths["key"].write_bytes(made.private_key.reveal())
    paths["cer"].write_bytes(cert.public_bytes(serialization.Encoding.DER))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    paths["p12"].write_bytes(
        pkcs12.serialize_key_and_certificates(name.encode(), key, cert, None, encryption)  # type: ignore[arg-type]
    )
    return device_identity(cert, key), paths


# ---------------------------------------------------------------------------------------------- the device


def port_of(lab: Lab, target: str) -> int:
    for registry in lab.registries:
        if registry.target.name == target:
            return registry.data_port
    raise KeyError(target)


def device_echo(lab: Lab, identity: Identity, thing: str, target: str) -> Any:
    """The device connects to the target's endpoint, subscribes, and gets its messages back (or raises)."""
    from station.verify import verify

    return verify(
        identity,
        thing_name=thing,
        host="localhost",
        port=port_of(lab, target),
        ca_bytes=lab.ca_bytes,
        connect_attempts=1,
        timeout_s=10.0,
    )


def device_connect_error(lab: Lab, identity: Identity, thing: str, target: str) -> AwsCrtError | None:
    """A bare awsiotsdk connect as the device makes it; the AwsCrtError it fails with, or None."""
    assert identity.private_key is not None
    connection = mqtt_connection_builder.mtls_from_bytes(
        cert_bytes=identity.certificate_pem.encode("ascii"),
        pri_key_bytes=identity.private_key.reveal(),
        endpoint="localhost",
        port=port_of(lab, target),
        client_id=thing,
        ca_bytes=lab.ca_bytes,
        clean_session=True,
        keep_alive_secs=6,
        tcp_connect_timeout_ms=5000,
    )
    try:
        connection.connect().result(timeout=10)
    except AwsCrtError as error:
        return error
    finally:
        # Already closed by the server after a hang-up: nothing to do then.
        with contextlib.suppress(Exception):
            connection.disconnect().result(timeout=2)
    return None


# ---------------------------------------------------------------------------------------------- registries


_clients: dict[tuple[int, str, str], Any] = {}


def observer(lab: Lab, target: str) -> Any:
    """An independent boto3 IoT client on the target's registry (one per lab and registry)."""
    account, region = target_registry(lab, target)
    key = (id(lab), account, region)
    if key not in _clients:
        _clients[key] = lab.iot(account, region)
    return _clients[key]


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ResourceNotFoundException"


def certificate_status(lab: Lab, target: str, cert_id: str) -> str | None:
    """What the registry holds for the certificate, seen with an independent boto3 client."""
    try:
        answer = observer(lab, target).describe_certificate(certificateId=cert_id)
    except ClientError as error:
        if _missing(error):
            return None
        raise
    return str(answer["certificateDescription"]["status"])


def thing_exists(lab: Lab, target: str, thing: str) -> bool:
    try:
        observer(lab, target).describe_thing(thingName=thing)
    except ClientError as error:
        if _missing(error):
            return False
        raise
    return True


def certificate_ids(lab: Lab, target: str) -> set[str]:
    return {c["certificateId"] for c in observer(lab, target).list_certificates()["certificates"]}


def target_registry(lab: Lab, target: str) -> tuple[str, str]:
    for registry in lab.registries:
        if registry.target.name == target:
            return registry.account_id, registry.region
    raise KeyError(target)


def forget_everywhere(lab: Lab, cert_id: str, things: Sequence[str] = ()) -> None:
    """Remove a certificate (and things) from every lab registry, whatever state another test left."""
    from station.registry import Registry

    for registry in lab.registries:
        Registry(registry.target, station_id="test-cleanup").revoke(cert_id)
        iot = observer(lab, registry.target.name)
        for name in things:
            try:
                for principal in iot.list_thing_principals(thingName=name)["principals"]:
                    iot.detach_thing_principal(thingName=name, principal=principal)
                iot.delete_thing(thingName=name)
            except ClientError as error:
                if not _missing(error):
                    raise


def extra_target(
    lab: Lab,
    name: str,
    *,
    like: str = HOME,
    lab_flag: bool = True,
    policy_name: str,
    policy_document: str,
    endpoint_url: str | None = None,
    profile: str | None = None,
) -> str:
    """A [targets.NAME] table like one of the lab's, with its own policy (and optionally other credentials)."""
    t = lab.targets[like]
    lines = [
        f"[targets.{name}]",
        f"lab = {'true' if lab_flag else 'false'}",
        f'region = "{t.region}"',
        f'account_id = "{t.account_id}"',
        f'endpoint_url = "{endpoint_url or t.endpoint_url}"',
        f'endpoint = "{t.endpoint}"',
        f"port = {t.port}",
        f"ca_file = {json.dumps(t.ca_file)}",
        f'policy_name = "{policy_name}"',
        f"policy_document = '''{policy_document}'''",
    ]
    if profile:
        lines.append(f'profile = "{profile}"')
    else:
        lines += [
            f'aws_access_key_id = "{t.aws_access_key_id}"',
            f'aws_secret_access_key = "{t.aws_secret_access_key}"',
        ]
    return "\n".join(lines) + "\n"


def config_with(lab: Lab, folder: Path, *tables: str) -> Path:
    """The lab's station.toml plus extra target tables, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "station.toml"
    text = lab.config_path.read_text().replace(
        'ledger = "ledger.sqlite"', f"ledger = {json.dumps(str(folder / 'ledger.sqlite'))}"
    )
    path.write_text(text + "\n" + "\n".join(tables))
    return path
