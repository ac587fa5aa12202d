"""QA register: an existing certificate (made elsewhere, e.g. a keychain export) registered for one unit.

`register_files` is the one function behind `station register` and the desk's import: it reads the files
(`load_certificate`: PEM, DER or PKCS#12, key optional) and calls `register_certificate`, which checks
everything local first (target, AWS's certificate rules, serial, thing name, a key when verify is asked),
then registers without a CA (ACTIVE), makes the thing and attaches policy and thing — the cloud half of the
pipeline's order (`station.pipeline.register_in_target`) — and with `verify` proves it with the MQTT verify
(rolling back what it made when that fails). Recorded as action `register`: PASS with verify; DONE
("registered (not verified)") without — never PASS, since nothing was proved.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from station.attempt import outcome_of
from station.config import StationConfig
from station.context import server_ca
from station.errors import InputError, StationError
from station.i18n import _
from station.identity import certificate_id as local_certificate_id
from station.identity import check_aws_acceptance
from station.journal import Stage
from station.ledger import Ledger
from station.model import Identity, Outcome, Target
from station.pipeline import register_in_target
from station.plain import plain_dict
from station.qa.common import (
    EventSink,
    RegistryFactory,
    Verifier,
    find_target,
    load_certificate,
    note,
    qa_attempt,
    registration_fields,
    registries,
    run_qa,
    unit_names,
)
from station.units import Action


@dataclass
class RegisterResult:
    """What `register_certificate` (or the destination side of a transfer) did in one target."""

    attempt_id: str
    serial: str
    target: str
    account_id: str
    region: str
    thing_name: str
    certificate_id: str
    certificate_arn: str
    already_registered: bool  # the certificate was in the registry before this action
    activated: bool  # it was there INACTIVE and this action made it ACTIVE again
    thing_created: bool
    policy_attached: bool
    thing_attached: bool
    operator: str
    verify: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def changed(self) -> bool:
        """False when the registry already held everything this action would have made."""
        return not self.already_registered or any(
            (self.activated, self.thing_created, self.policy_attached, self.thing_attached)
        )

    def as_dict(self) -> dict[str, Any]:
        return {**plain_dict(self), "changed": self.changed}


def registered_text(target: Target, thing_name: str, reg: Any) -> str:
    where = f"{target.name} ({reg.account_id or target.registry_key[0]}/{target.region})"
    cert = f"Certificate {reg.certificate_id[:12]}…"
    if reg.created:
        return f"{cert} is registered in {where} as {thing_name}."
    if reg.activated:
        return f"{cert} was registered in {where} but inactive; it is active again, as {thing_name}."
    if reg.thing_created or reg.policy_attached or reg.thing_attached:
        return (
            f"{cert} was already registered in {where}; its thing and policy are now attached ({thing_name})."
        )
    return f"{cert} was already registered in {where} as {thing_name}; nothing changed."


def register_result(
    attempt_id: str, serial: str, target: Target, thing_name: str, reg: Any, operator: str, **more: Any
) -> RegisterResult:
    return RegisterResult(
        attempt_id=attempt_id,
        serial=serial,
        target=target.name,
        account_id=reg.account_id or target.registry_key[0],
        region=target.region,
        thing_name=thing_name,
        certificate_id=reg.certificate_id,
        certificate_arn=reg.certificate_arn,
        already_registered=not reg.created,
        activated=reg.activated,
        thing_created=reg.thing_created,
        policy_attached=reg.policy_attached,
        thing_attached=reg.thing_attached,
        operator=operator,
        message=registered_text(target, thing_name, reg),
        **more,
    )


def register_files(
    config: StationConfig,
    ledger: Ledger | Callable[[], AbstractContextManager[Ledger]],
    *,
    serial: str,
    target: str,
    operator: str,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    p12: str | os.PathLike[str] | None = None,
    password: bytes | str | None = None,
    thing: str | None = None,
    product: str | None = None,
    verify: bool = False,
    registry_for: RegistryFactory | None = None,
    verifier: Verifier | None = None,
    on_event: EventSink | None = None,
) -> RegisterResult:
    """Read the unit's certificate (and key) from files and register it: what `station register` and the
    desk's import both do. The key, if any, is used in memory for the verify only and dropped.

    `ledger` may be a function opening it (the CLI's): it is opened only once every local check has passed,
    so a refused file or name leaves no ledger behind.
    """
    dest = find_target(config, target)  # an unknown target is said before any file is read
    identity = load_certificate(cert, key=key, p12=p12, password=password)
    unit_names(config, dest, serial, product=product, thing=thing)  # refused here: before the ledger
    if verify and identity.private_key is None:
        raise InputError(
            _("No key to verify with"),
            _("Verify connects as the unit, which needs the unit's private key; none was given."),
            _("Give the key with --key or --p12, or leave out --verify."),
        )
    source = ", ".join(os.path.basename(os.fspath(f)) for f in (cert, key, p12) if f)
    opened = ledger if isinstance(ledger, Ledger) else None
    try:
        with contextlib.nullcontext(opened) if opened is not None else ledger() as book:  # type: ignore[operator]
            return register_certificate(
                config,
                book,
                identity,
                serial=serial,
                target=target,
                operator=operator,
                thing=thing,
                product=product,
                verify=verify,
                source=source,
                registry_for=registry_for,
                verifier=verifier,
                on_event=on_event,
            )
    finally:
        del identity


def register_certificate(
    config: StationConfig,
    ledger: Ledger,
    identity: Identity,
    *,
    serial: str,
    target: str,
    operator: str,
    thing: str | None = None,
    product: str | None = None,
    verify: bool = False,
    source: str = "",
    registry_for: RegistryFactory | None = None,
    verifier: Verifier | None = None,
    on_event: EventSink | None = None,
) -> RegisterResult:
    """Register an existing certificate for unit `serial` in `target` (thing + policy), and record it.

    Everything local is checked first (target, AWS's certificate rules, serial, thing name, a key when
    `verify` is asked): a problem there raises before any AWS call and writes nothing. With `verify`, the
    MQTT verify runs with the identity's key; when it fails, what this action made is rolled back and the
    UnitFault/StationFault is raised (recorded as FAIL/ERROR). `source` names the file(s) for the record.
    """
    dest = find_target(config, target)
    check_aws_acceptance(identity.certificate_pem)
    cert_id = local_certificate_id(identity.certificate_pem)
    key = identity.private_key
    public = Identity(identity.certificate_pem, cert_id)
    serial, product_name, thing_name = unit_names(config, dest, serial, product=product, thing=thing)
    ca_bytes: bytes | None = None
    if verify:
        if key is None:
            raise InputError(
                _("No key to verify with"),
                _("Verify connects as the unit, which needs the unit's private key; none was given."),
                _("Give the key with --key or --p12, or leave out --verify."),
            )
        ca_bytes = server_ca(dest)
    registry = registries(config, registry_for)(dest)
    attempt = qa_attempt(config, ledger, Action.REGISTER, serial=serial, operator=operator, on_event=on_event)
    data: dict[str, Any] = {
        "target": dest.name,
        "certificate_id": cert_id,
        "thing_name": thing_name,
        "file": source,
    }
    state: dict[str, Any] = {}

    def body() -> Any:
        attempt.journal_open(
            product=product_name,
            target=dest.name,
            account_id=dest.registry_key[0],
            region=dest.region,
            certificate_id=cert_id,
            certificate_pem=public.certificate_pem,
            thing_name=thing_name,
            stage=Stage.REGISTERING,
        )
        reg, _ = attempt.step(
            "register", lambda: register_in_target(attempt, registry, public, thing_name, origin="file")
        )
        state["reg"] = reg
        if verify:
            assert key is not None
            check: Verifier
            if verifier is not None:
                check = verifier
            else:
                from station.verify import verify as check  # awscrt is loaded only when a verify runs
            host, port = registry.data_endpoint()
            verified = attempt.step(
                "verify",
                lambda: check(
                    Identity(public.certificate_pem, cert_id, key),
                    thing_name=thing_name,
                    host=host,
                    port=port,
                    ca_bytes=ca_bytes,
                    where=registry.where,
                ),
            )
            state["verify"] = dict(verified.as_dict()) if hasattr(verified, "as_dict") else {"passed": True}
            attempt.journal(stage=Stage.VERIFIED)
        return reg

    def conclude(error: StationError | None) -> dict[str, Any]:
        reg = state.get("reg")
        outcome = outcome_of(error, proved=verify)
        if error is not None:
            title, message, next_action = error.title, error.message, error.next_action
            note(attempt, ok=False, title=title, message=message, next_action=next_action, **data)
        else:
            assert reg is not None
            message = registered_text(dest, thing_name, reg)
            title = _("Registered") if outcome == Outcome.PASS else _("Registered (not verified)")
            next_action = "" if verify else _("Verify the unit's connection (re-verify) when it is at hand.")
            note(
                attempt,
                ok=True,
                title=title if (reg.created or reg.activated) else "Already registered",
                message=message,
                already_registered=not reg.created,
                thing_created=reg.thing_created,
                verified=verify,
                **data,
            )
        fields = registration_fields(dest, reg, error, title=title, message=message, next_action=next_action)
        fields["extra"].update(source=source, verified=verify and error is None)
        return {
            **fields,
            "outcome": str(outcome),
            "product": product_name,
            "thing_name": thing_name,
            "certificate_id": cert_id,
            "certificate_pem": public.certificate_pem,
            "key_source": "file",
            "verify_mode": "host" if verify else "",
        }

    try:
        reg = run_qa(attempt, body, conclude=conclude)
    finally:
        key = None  # drop the key
    return register_result(
        attempt.attempt_id,
        serial,
        dest,
        thing_name,
        reg,
        operator,
        verify=state.get("verify"),
        timings_ms=dict(attempt.timings_ms),
    )
