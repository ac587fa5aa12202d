"""Plain data shared by the whole station: outcomes, targets, identities, registrations, events.

Dataclasses only: no I/O, no AWS, no serial. A private key lives in a `Secret`, whose repr and str never show
the bytes, so a key cannot leak through a log line, an event, an exception or a screenshot by accident.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"  # the unit is bad → rework bin
    ERROR = "ERROR"  # the station, network or cloud is broken → call a technician
    # A QA action that completed but proved nothing about the unit's identity (revoke, transfer or register
    # without verify). Never shown as PASS.
    DONE = "DONE"


class Secret:
    """Bytes that must never be printed: private key PEM held in memory only."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would be a way onto disk; refuse it.
        raise TypeError("a Secret cannot be pickled")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Identity:
    """A unit's certificate, its certificate id (SHA-256 of the DER) and, when the station holds it, its key."""

    certificate_pem: str
    certificate_id: str
    private_key: Secret | None = field(default=None, repr=False, compare=False)


@dataclass
class Registration:
    """A certificate in one registry, and exactly what this attempt did there (what a rollback may undo).

    Made by the registry's `register` (`station.registry.Registry`, or a test's fake). Mutable on purpose:
    `attach` and the pipeline (`thing_name`, `thing_created`, and `created` for a certificate this attempt
    generated) fill in the rest as the attempt goes.
    """

    certificate_id: str
    certificate_arn: str
    created: bool  # this attempt registered the certificate (False: it was there already)
    target: str = ""
    account_id: str = ""
    region: str = ""
    activated: bool = False  # it was there INACTIVE and this attempt activated it
    thing_name: str | None = None
    thing_created: bool = False  # this attempt made the thing
    policy_attached: bool = False  # this attempt attached the target's policy
    thing_attached: bool = False  # this attempt attached the certificate to the thing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Issuer:
    """A factory CA that signs unit certificates (instead of self-signing)."""

    certificate_file: str
    key_file: str
    passphrase_env: str | None = None  # name of the environment variable holding the CA key's passphrase


@dataclass(frozen=True)
class Target:
    """Where identities go: one AWS account + region (a registry), its endpoint and its policy."""

    name: str
    region: str
    policy_name: str
    policy_document: str  # JSON template; REGION / ACCOUNT placeholders are filled in
    thing_name_template: str = "{product}-{serial}"
    account_id: str | None = None
    profile: str | None = None  # AWS profile to use
    role_arn: str | None = None  # role to assume into the target account
    endpoint: str | None = None  # iot:Data-ATS host; discovered with describe_endpoint when absent
    port: int = 8883
    ca_file: str | None = None  # server CA bundle for verify (the lab's CA; None = system trust store)
    endpoint_url: str | None = None  # control-plane URL override (the lab)
    aws_access_key_id: str | None = None  # static credentials (the lab only)
    aws_secret_access_key: str | None = None
    thing_type: str | None = None
    thing_group: str | None = None
    key_type: str = "ec-p256"
    certificate_days: int = 3650
    issuer: Issuer | None = None
    lab: bool = False  # lab/dev targets may use broad policies; production ones may not

    @property
    def registry_key(self) -> tuple[str, str]:
        """(account, region): the registry and the rate budget this target shares with others."""
        return (self.account_id or self.role_arn or self.profile or "default", self.region)


@dataclass(frozen=True)
class Event:
    """One thing that happened at the station: consumed by the TUI, the CLI and the ledger alike.

    `kind` is one of: unit_started, step_started, step_finished, compensation, unit_finished, note.
    Events never carry key material.
    """

    kind: str
    serial: str
    slot: str = ""
    step: str = ""
    outcome: str = ""  # PASS/FAIL/ERROR for unit_finished; "ok"/"failed" for step_finished
    duration_ms: float | None = None
    title: str = ""
    message: str = ""
    next_action: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
