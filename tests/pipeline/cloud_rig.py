"""Helpers for pipeline tests against the real cloud side: the lab's control plane, the real `Registry` and a
real SQLite ledger. Each test gets its own target (fresh policy name and serials), since moto's registries
are process-wide; the "registry truth" is read with boto3's list calls, never from the ledger alone."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from station.lab.control import DEFAULT_ACCOUNT_ID, LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY, ControlPlane

REGION = "eu-west-1"
BROAD_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}'
)


def unique_digits(n: int = 6) -> str:
    return "".join(str(secrets.randbelow(10)) for _ in range(n))


def write_config(
    directory: Path,
    endpoint_url: str,
    *,
    product: str = "sim",
    slots: int = 1,
    data_host: str = "localhost",
    data_port: int = 8883,
    ca_file: str | None = None,
    policy_document: str = BROAD_POLICY,
    policy_name: str | None = None,
    key_source: str = "auto",
    issuer: tuple[str, str, str] | None = None,
    on_reprovision: str | None = None,
) -> Path:
    """A station.toml for one lab target on `endpoint_url`, one product and `slots` slots."""
    policy_name = policy_name or f"policy-{secrets.token_hex(4)}"
    ca_line = f'ca_file = "{ca_file}"\n' if ca_file else ""
    issuer_table = (
        "\n[targets.lab.issuer]\n"
        f'certificate_file = "{issuer[0]}"\nkey_file = "{issuer[1]}"\npassphrase_env = "{issuer[2]}"\n'
        if issuer
        else ""
    )
    reprovision_line = f'on_reprovision = "{on_reprovision}"\n' if on_reprovision else ""
    slot_tables = "".join(
        f'\n[slots.s{i + 1}]\nport = "loop://s{i + 1}"\nproduct = "{product}"\n' for i in range(slots)
    )
    text = f"""
[station]
id = "it-station"
ledger = "ledger.sqlite"

[targets.lab]
lab = true
region = "{REGION}"
account_id = "{DEFAULT_ACCOUNT_ID}"
endpoint_url = "{endpoint_url}"
endpoint = "{data_host}"
port = {data_port}
{ca_line}aws_access_key_id = "{LAB_ACCESS_KEY_ID}"
aws_secret_access_key = "{LAB_SECRET_ACCESS_KEY}"
policy_name = "{policy_name}"
policy_document = '''{policy_document}'''
{issuer_table}
[products.{product}]
serial_pattern = "SIM[0-9]{{6}}"
flasher = "prov1"
target = "lab"
{reprovision_line}
[products.{product}.options]
key_source = "{key_source}"
{slot_tables}"""
    path = directory / "station.toml"
    path.write_text(text)
    return path


def registry_truth(plane: ControlPlane) -> dict[str, Any]:
    """What the lab registry holds in the test region: certificate ids (with status) and thing names."""
    iot = plane.client("iot", region=REGION)
    certificates = {
        c["certificateId"]: c["status"] for c in iot.list_certificates(pageSize=250)["certificates"]
    }
    things = {t["thingName"] for t in iot.list_things(maxResults=250)["things"]}
    return {"certificates": certificates, "things": things}


# A station process that registers one unit and stops before verify, for tests that kill it there (SIGKILL):
# what a crashed station leaves in AWS and in its journal. Format with here, config, marker and serial.
KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
from pipeline_fakes import FakeFlasher, Log
from station.config import load_config
from station.context import StationContext
from station.ledger import open_ledger

config = load_config({config!r})
ledger = open_ledger(config.ledger_path)
log = Log()

def verifier(identity, **kw):
    Path({marker!r}).write_text("registered")
    time.sleep(120)  # the test kills the process here: registered and written, not verified

ctx = StationContext(config, ledger=ledger, verifier=verifier,
                     flasher_factory=lambda port, **kw: FakeFlasher(log, device_id=None))
ctx.provision({serial!r}, "loop://unit", slot="s1")
"""
