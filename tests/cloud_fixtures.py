"""Fixtures and helpers for the registry and verify tests: a real local AWS IoT control plane and targets on it.

Two control planes, both real moto servers in-process on 127.0.0.1 (port 0):
- `moto_url`: moto's own `ThreadedMotoServer` with `use_valid_cert` (certificate id = SHA-256 of the DER),
  for everything the registry does (register, attach, rollback, revoke, transfer, preflight);
- `control_plane`: the lab's `ControlPlane` (moto + AWS's certificate rules, throttles, fault injection),
  for throttling and injected AWS errors.
moto keeps its registries in process-wide globals, so tests use fresh certificates, thing names and policy
names (`unique`) and assert on their own objects only. A test module wraps the context managers in its own
module-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from station.journal import journal_fields
from station.lab.control import DEFAULT_ACCOUNT_ID, ControlPlane
from station.model import Target

OTHER_ACCOUNT_ID = "222222222222"
OTHER_ROLE_ARN = f"arn:aws:iam::{OTHER_ACCOUNT_ID}:role/station"
REGION = "eu-west-1"
OTHER_REGION = "us-east-2"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
POLICY_TEMPLATE = (FIXTURES / "policies" / "thing-policy.json").read_text()
BROAD_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}'
)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def der_sha256(pem: str) -> str:
    """The certificate id computed here independently of station.identity (cryptography + hashlib)."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's threaded server on 127.0.0.1:<free port>; yields its URL and stops on exit."""
    import moto.core.config

    # Before the server handles its first IoT request: AWS's certificate id (SHA-256 of the DER).
    moto.core.config.default_user_config.setdefault("iot", {})["use_valid_cert"] = True
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def lab_control_plane() -> Iterator[ControlPlane]:
    """The lab's control plane with both test accounts, throttling off unless a test turns it on."""
    with ControlPlane(accounts=(DEFAULT_ACCOUNT_ID, OTHER_ACCOUNT_ID), throttling=False) as plane:
        yield plane


def make_target(endpoint_url: str, **overrides: Any) -> Target:
    """A lab target on a control plane: static "testing" keys (moto's default account), its own policy."""
    fields: dict[str, Any] = {
        "name": unique("t"),
        "region": REGION,
        "policy_name": unique("policy"),
        "policy_document": POLICY_TEMPLATE,
        "account_id": DEFAULT_ACCOUNT_ID,
        "endpoint_url": endpoint_url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "lab": True,
    }
    fields.update(overrides)
    return Target(**fields)


def with_changes(target: Target, **changes: Any) -> Target:
    return dataclasses.replace(target, **changes)


class _JournalOnly:
    """The least ledger an `Attempt` needs to journal and compensate (nothing is recorded here)."""

    def __init__(self) -> None:
        self.journal: dict[int, dict[str, Any]] = {}

    def journal_open(self, **fields: Any) -> int:
        journal_fields(fields)  # the ledger's own check: one name per field
        self.journal[len(self.journal) + 1] = dict(fields)
        return len(self.journal)

    def journal_update(self, journal_id: int, **fields: Any) -> None:
        journal_fields(fields)
        self.journal[journal_id].update(fields)

    def journal_close(self, journal_id: int, outcome: str | None = None) -> None:
        self.journal.pop(journal_id, None)

    def record_attempt(self, record: Any, *, events: Any = ()) -> str:
        return ""

    def append_event(self, event: Any) -> int:
        return 0


def provision(registry: Any, identity: Any, thing: str, *, origin: str = "unit") -> Any:
    """register → thing → attach as the station does it (`station.pipeline.register_in_target`, the one
    copy of that order), undone by the attempt's compensation when a step fails; returns the registration."""
    from station.attempt import Attempt
    from station.pipeline import register_in_target

    attempt = Attempt(_JournalOnly(), serial=thing)
    attempt.journal_open(certificate_id=identity.certificate_id, thing_name=thing)
    try:
        registration, _ = register_in_target(attempt, registry, identity, thing, origin=origin)
    except BaseException:
        attempt.compensate()
        failed = [c for c in attempt.compensations if not c.ok]
        if failed:
            from station.errors import StationFault

            raise StationFault("Rollback failed", failed[0].detail, "") from None
        raise
    return registration
