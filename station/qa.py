"""QA actions on single units: register a certificate, revoke, transfer, re-verify, preflight — each recorded.

The library behind `station register | revoke | transfer | preflight` and the TUI's QA desk (which calls
nothing else to change AWS or a unit). What it does:

- `load_certificate` imports a certificate (PEM, DER, PKCS#12; key optional: separate file or inside the
  .p12) and checks it against AWS IoT's rules; `register_certificate` registers it without a CA (ACTIVE) in
  one target, makes the unit's thing (from the target's thing-name template, or a given name), attaches
  policy and thing, optionally proves it with the MQTT verify (rolling back what it made when that fails),
  and writes an `AttemptRecord`. Registering a certificate that is already there is harmless.
- `plan_revoke` / `revoke_unit` find the unit's PASS records and remove their certificates from the
  targets they were registered in (AWS's order: detach, deactivate, delete), deleting a thing only where the
  ledger says the station made it and no other certificate of the ledger still uses it.
- `plan_transfer` / `transfer_unit` register the certificate of the unit's latest PASS record in another
  target (the seed's re-registration in another region or account), with thing and policy; optionally
  revoke it at the source afterwards, so the unit always has somewhere to connect.
- `preflight` runs every target's read-only checks and refuses `iot:*` on `*` for any target not marked lab.
- `reverify_unit` checks a unit put back on a slot (the slot reserved on the line meanwhile): the unit's
  flasher, opened through the wiring, identifies it against its record, the registry still holds its
  certificate ACTIVE, and the device proves its own connection (device-side verify). A family without
  device-side verify is refused: the station never keeps a unit's key, so only the device can prove it.

Every action appends a `note` event (step `qa:<action>`) with the operator, what it acted on and whether it
worked, also when it failed; register and transfer also write an attempt record (PASS, or FAIL/ERROR with
what was rolled back) and keep a crash journal open while AWS is touched, so `station reconcile` can undo a
half-done registration; re-verify writes an attempt record once the unit has answered on the slot (it changes
nothing in AWS). A plan is computed from the ledger alone, so a person can confirm it before any AWS call.

It must not: print or prompt (the CLI and the TUI talk to people), import the lab, write or record a private
key (a key given for verify is used in memory and dropped), decide anything by message text, or touch AWS
before every local check (certificate rules, serial, thing name, target) has passed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import getpass
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from station import naming
from station.config import Product, StationConfig, is_over_broad
from station.context import StationContext
from station.errors import ConfigError, InputError, StationError, StationFault, UnitFault
from station.identity import certificate_id as local_certificate_id
from station.identity import check_aws_acceptance, load_identity_file
from station.ledger import AttemptRecord, Ledger
from station.model import Event, Identity, Outcome, Target
from station.pipeline import FlasherLike, UnitRequest
from station.registry import Check, Registration, Registry

log = logging.getLogger(__name__)

QA_SLOT = "qa"  # the `slot` of records and events written by QA actions
QA_STEP_PREFIX = "qa:"  # event step of a QA action: qa:register, qa:revoke, … (as the TUI's desk writes them)
ANY_SERIAL = ".+"  # without a product, a serial is only checked for being printable, one line, not too long

RegistryFactory = Callable[[Target], Registry]
EventSink = Callable[[Event], None]
Verifier = Callable[..., Any]


class NotFound(InputError):
    """No such unit, record or target: the person asked for something the ledger or the config does not have."""


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


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
        return {**asdict(self), "changed": self.changed}


@dataclass(frozen=True)
class RevokeItem:
    """One certificate to remove from one target, and the thing to delete with it (if any)."""

    target: str
    certificate_id: str
    thing_name: str = ""  # the unit's thing in that target, as recorded
    delete_thing: str | None = None  # the thing to delete after the certificate (only one the station made)
    keep_reason: str = ""  # why the recorded thing is kept

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RevokePlan:
    """What `revoke_unit` will do, from the ledger alone (shown to a person before they confirm)."""

    serial: str
    items: tuple[RevokeItem, ...]

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(item.target for item in self.items))

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "items": [item.as_dict() for item in self.items]}


@dataclass(frozen=True)
class RevokeDone:
    """The outcome of one `RevokeItem`."""

    item: RevokeItem
    ok: bool
    existed: bool = False  # the certificate was registered there (False: already gone)
    thing_deleted: str | None = None
    error: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.item.as_dict(),
            "ok": self.ok,
            "existed": self.existed,
            "thing_deleted": self.thing_deleted,
            "error": self.error,
        }


@dataclass(frozen=True)
class RevokeResult:
    serial: str
    operator: str
    done: tuple[RevokeDone, ...]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.done)

    @property
    def revoked(self) -> int:
        return sum(1 for d in self.done if d.ok and d.existed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "serial": self.serial,
            "operator": self.operator,
            "revoked": self.revoked,
            "items": [d.as_dict() for d in self.done],
        }


@dataclass(frozen=True)
class TransferPlan:
    """What `transfer_unit` will do: which record's certificate goes where, under which thing name."""

    serial: str
    source_target: str
    destination: str
    certificate_id: str
    certificate_pem: str = field(repr=False)
    thing_name: str
    source_attempt_id: str
    product: str = ""
    origin: str = "unit"  # whose certificate it is (decides the fault if AWS refuses it)
    revoke_source: bool = False
    source_revoke: tuple[RevokeItem, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("certificate_pem")
        data["source_revoke"] = [item.as_dict() for item in self.source_revoke]
        return data


@dataclass(frozen=True)
class TransferResult:
    plan: TransferPlan
    registration: RegisterResult
    source_revoke: tuple[RevokeDone, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "serial": self.plan.serial,
            "source_target": self.plan.source_target,
            "destination": self.plan.destination,
            "revoke_source": self.plan.revoke_source,
            "registration": self.registration.as_dict(),
            "source_revoke": [d.as_dict() for d in self.source_revoke],
        }


@dataclass(frozen=True)
class TargetReport:
    """Preflight of one target: every check, in order."""

    target: str
    lab: bool
    where: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "lab": self.lab,
            "where": self.where,
            "ok": self.ok,
            "checks": [c.as_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class PreflightReport:
    targets: tuple[TargetReport, ...]
    station: tuple[Check, ...] = ()  # checks of the station itself (the ledger)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.station) and all(t.ok for t in self.targets)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "station": [c.as_dict() for c in self.station],
            "targets": [t.as_dict() for t in self.targets],
        }


# ---------------------------------------------------------------------------------------------------------
# Inputs: operator, certificate, target, serial, thing name
# ---------------------------------------------------------------------------------------------------------


def operator_name(config: StationConfig | None = None, explicit: str | None = None) -> str:
    """Who acts: the name given, else the config's operator, else the account logged in."""
    for value in (explicit, config.operator if config is not None else None):
        if value and value.strip():
            return value.strip()
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (containers): still record something
        return "unknown"


def load_certificate(
    cert: str | os.PathLike[str] | None = None,
    *,
    key: str | os.PathLike[str] | None = None,
    p12: str | os.PathLike[str] | None = None,
    password: bytes | str | None = None,
) -> Identity:
    """An identity from files, checked against AWS IoT's rules (no AWS call).

    `cert` is PEM, DER (.cer/.der) or PKCS#12; the key is optional and comes from `key` (PEM/DER, maybe
    encrypted with `password`) or from `p12` (the keychain pair: `cert` as .cer, key in the .p12), or from
    the certificate file itself. With `p12` alone, certificate and key both come from it. A key must belong
    to the certificate. Raises `InputError` / `CertificateRejected`.
    """
    if cert is None and p12 is None:
        raise InputError(
            "No certificate given",
            "Registering needs the unit's certificate.",
            "Give the certificate file with --cert (PEM, DER or PKCS#12), or a PKCS#12 file with --p12.",
        )
    if key is not None and p12 is not None:
        raise InputError(
            "Two keys given",
            "The private key was given twice: as a key file and inside a PKCS#12 file.",
            "Give the key either with --key or inside --p12, not both.",
        )
    if cert is None:
        assert p12 is not None
        identity = load_identity_file(p12, password=password)
    else:
        identity = load_identity_file(cert, key_path=key if key is not None else p12, password=password)
    check_aws_acceptance(identity.certificate_pem)
    return identity


def find_target(config: StationConfig, name: str) -> Target:
    """The target called `name`; `NotFound` (with the known names) otherwise."""
    target = config.targets.get(name.strip()) if isinstance(name, str) else None
    if target is None:
        known = ", ".join(config.targets) or "none"
        raise NotFound(
            "Unknown target",
            f"There is no target {name!r} in {config.path}; known: {known}.",
            "Use one of the known target names (`station preflight` lists them).",
        )
    return target


def _product_for(config: StationConfig, target: Target, product: str | None) -> Product | None:
    """The named product; else the one product going to `target`; else the only product; else None."""
    if product:
        return config.product(product)
    going = [p for p in config.products.values() if p.target == target.name]
    if len(going) == 1:
        return going[0]
    if len(config.products) == 1:
        return next(iter(config.products.values()))
    return None


def unit_names(
    config: StationConfig,
    target: Target,
    serial: str,
    *,
    product: str | None = None,
    thing: str | None = None,
    device_id: str | None = None,
    check_serial: bool = True,
) -> tuple[str, str, str]:
    """(serial, product, thing name) for a unit handled at the QA desk, all checked before any AWS call.

    The serial is checked against the product's pattern when the product is known (`check_serial`; a
    transfer skips it: the serial was checked when the unit was provisioned); the thing name is the one
    given, or the target's thing-name template filled in with the serial.
    """
    chosen = _product_for(config, target, product)
    if chosen is not None and check_serial:
        serial = chosen.validate_serial(serial)
    else:
        serial = naming.validate_serial(serial, ANY_SERIAL)
    product_name = chosen.name if chosen is not None else ""
    if thing is not None and thing.strip():
        return serial, product_name, naming.check_thing_name(thing.strip())
    fields = {
        "serial": serial,
        "device_id": device_id or serial,
        "station": config.station_id,
        "slot": QA_SLOT,
    }
    if product_name:
        fields["product"] = product_name
    try:
        name = naming.render_thing_name(target.thing_name_template, fields)
    except InputError as error:
        if product_name or "{product}" not in target.thing_name_template:
            raise
        raise InputError(
            "Cannot name the thing",
            f"Target {target.name!r} names things {target.thing_name_template!r}, and no product is known "
            "for this unit.",
            "Give the product (--product) or the thing name (--thing).",
        ) from error
    return serial, product_name, name


def _ca_bytes(target: Target) -> bytes | None:
    if target.ca_file is None:
        return None
    try:
        return Path(target.ca_file).read_bytes()
    except OSError as error:
        raise ConfigError(
            "Server CA not readable",
            f"The CA file {target.ca_file} of target {target.name!r} cannot be read ({error.strerror}).",
            "Fix ca_file of this target in station.toml.",
        ) from None


def default_registry_factory(config: StationConfig) -> RegistryFactory:
    """One `Registry` per target for the length of one action (they share the process-wide rate budget)."""
    made: dict[str, Registry] = {}

    def factory(target: Target) -> Registry:
        if target.name not in made:
            made[target.name] = Registry(target, station_id=config.station_id)
        return made[target.name]

    return factory


# ---------------------------------------------------------------------------------------------------------
# One recorded attempt (register, or the destination side of a transfer)
# ---------------------------------------------------------------------------------------------------------


class _Attempt:
    """Bookkeeping of one recorded QA attempt: journal, timings, compensations, record and note event."""

    def __init__(
        self,
        *,
        action: str,
        config: StationConfig,
        ledger: Ledger,
        target: Target,
        serial: str,
        product: str,
        thing_name: str,
        operator: str,
        on_event: EventSink | None,
    ) -> None:
        self.action = action
        self.config = config
        self.ledger = ledger
        self.target = target
        self.serial = serial
        self.product = product
        self.thing_name = thing_name
        self.operator = operator
        self.on_event = on_event
        self.attempt_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.timings: dict[str, float] = {}
        self.compensations: list[dict[str, Any]] = []
        self.journal_id: Any = None
        self.registration: Registration | None = None

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[name] = round((time.perf_counter() - start) * 1000.0, 3)

    def open_journal(self, identity: Identity) -> None:
        # Before the first AWS side effect: a station killed mid-register leaves enough for reconcile.
        self.journal_id = self.ledger.journal_open(
            attempt_id=self.attempt_id,
            serial=self.serial,
            slot=QA_SLOT,
            product=self.product,
            target=self.target.name,
            account=self.target.registry_key[0],
            region=self.target.region,
            certificate_id=identity.certificate_id,
            certificate_pem=identity.certificate_pem,
            thing_name=self.thing_name,
            state="registering",
        )

    def journal(self, **fields: Any) -> None:
        if self.journal_id is not None:
            self.ledger.journal_update(self.journal_id, **fields)

    def provision(self, registry: Registry, identity: Identity, *, origin: str) -> Registration:
        """register → thing → attach, journaled step by step (what `Registry.provision` does in one call)."""
        registration = self.step("register", lambda: registry.register(identity, origin=origin))
        self.registration = registration
        self.journal(
            state="registered",
            certificate_created=registration.created,
            certificate_arn=registration.certificate_arn,
        )
        created = self.step("thing", lambda: registry.create_thing(self.thing_name))
        registration.thing_name = self.thing_name
        registration.thing_created = bool(created)
        self.journal(state="thing", thing_created=registration.thing_created)
        self.step("attach", lambda: registry.attach(registration, self.thing_name))
        self.journal(state="attached")
        return registration

    def roll_back(self, registry: Registry) -> StationError | None:
        """Undo what this attempt made in AWS; the StationFault saying what is left, if the undo failed."""
        registration = self.registration
        if registration is None:
            return None
        try:
            self.step("rollback", lambda: registry.rollback(registration))
        except StationError as error:
            self.compensations.append({"action": "rollback", "ok": False, "detail": error.message})
            return error
        self.compensations.append(
            {"action": "rollback", "ok": True, "detail": "What this attempt made in AWS was deleted."}
        )
        try:
            self.journal(state="rolled_back")
        except StationError:
            log.warning("could not mark the journal of %s rolled back", self.serial)
        return None

    def record(
        self,
        outcome: Outcome,
        *,
        title: str,
        message: str,
        next_action: str = "",
        error_kind: str = "",
        identity: Identity | None = None,
        verify_mode: str = "",
        key_source: str = "",
        extra: Mapping[str, Any] | None = None,
        base: AttemptRecord | None = None,
    ) -> None:
        reg = self.registration
        account = (reg.account_id if reg is not None and reg.account_id else "") or self.target.registry_key[
            0
        ]
        self.timings["total"] = round((time.time() - self.started_at) * 1000.0, 3)
        self.ledger.record_attempt(
            AttemptRecord(
                attempt_id=self.attempt_id,
                serial=self.serial,
                outcome=str(outcome),
                device_id=base.device_id if base is not None else None,
                product=self.product,
                thing_name=self.thing_name,
                certificate_id=identity.certificate_id if identity is not None else "",
                certificate_pem=identity.certificate_pem if identity is not None else "",
                certificate_arn=reg.certificate_arn if reg is not None else "",
                target=self.target.name,
                account_id=account,
                region=self.target.region,
                station_id=self.config.station_id,
                slot=QA_SLOT,
                operator=self.operator,
                title=title,
                message=message,
                next_action=next_action,
                error_kind=error_kind,
                firmware=base.firmware if base is not None else None,
                family=base.family if base is not None else "",
                key_source=key_source,
                verify_mode=verify_mode,
                timings_ms=dict(self.timings),
                started_at=self.started_at,
                finished_at=time.time(),
                compensations=list(self.compensations),
                extra={
                    "qa_action": self.action,
                    "certificate_created": bool(reg.created) if reg is not None else False,
                    "thing_created": bool(reg.thing_created) if reg is not None else False,
                    **dict(extra or {}),
                },
            )
        )

    def close_journal(self, outcome: Outcome) -> None:
        # Kept open when a rollback failed: `station reconcile` must still clean up what is left.
        if self.journal_id is None or any(not c["ok"] for c in self.compensations):
            return
        try:
            self.ledger.journal_close(self.journal_id, outcome=str(outcome))
        except StationError:
            log.warning("could not close the journal of %s", self.serial)


def _note(
    ledger: Ledger | None,
    on_event: EventSink | None,
    *,
    action: str,
    serial: str,
    ok: bool,
    operator: str,
    station_id: str,
    title: str,
    message: str,
    next_action: str = "",
    quiet: bool = False,
    **data: Any,
) -> Event:
    """Append the QA action to the ledger's event log (who, what, whether it worked) and pass it on.

    `quiet`: a ledger that cannot take the note is logged, not raised — for notes written on an error path
    (the first error is what the person must see) or after a record that already holds the evidence.
    """
    event = Event(
        kind="note",
        serial=serial or "-",
        slot=QA_SLOT,
        step=f"{QA_STEP_PREFIX}{action}",
        outcome="ok" if ok else "failed",
        title=title,
        message=message,
        next_action=next_action,
        data={"operator": operator, "action": action, "station_id": station_id, **data},
    )
    if ledger is not None:
        try:
            ledger.append_event(event)
        except (StationError, ValueError):
            if not quiet:
                raise
            log.error("could not write the %s note of %s to the ledger", event.step, event.serial)
    if on_event is not None:
        try:
            on_event(event)
        except Exception:
            log.exception("event consumer failed on %s", event.step)
    return event


def _as_station_error(error: BaseException) -> StationError:
    if isinstance(error, StationError):
        return error
    return StationFault(
        "Station error",
        f"An unexpected error stopped this action ({type(error).__name__}); the details are in the station log.",
        "Call a technician; the action can be run again once the station is fixed.",
    )


def _run_recorded(
    attempt: _Attempt,
    registry: Registry,
    identity: Identity,
    *,
    origin: str,
    key_source: str,
    after: Callable[[Registration], dict[str, Any] | None] | None,
    verify_mode: str,
    title: str,
    extra: Mapping[str, Any],
    base: AttemptRecord | None = None,
) -> tuple[Registration, dict[str, Any] | None]:
    """Provision in one target, run `after` (the verify), record PASS; on failure undo, record, raise."""
    identity_no_key = Identity(
        certificate_pem=identity.certificate_pem, certificate_id=identity.certificate_id
    )
    attempt.open_journal(identity_no_key)
    try:
        registration = attempt.provision(registry, identity, origin=origin)
        checked = after(registration) if after is not None else None
    except BaseException as exc:
        error = _as_station_error(exc)
        if error is not exc and isinstance(exc, Exception):
            log.error("%s of %s failed unexpectedly", attempt.action, attempt.serial, exc_info=True)
        left = attempt.roll_back(registry)
        outcome = Outcome.FAIL if isinstance(error, UnitFault) else Outcome.ERROR
        if not isinstance(exc, Exception):
            error = StationFault(
                "Interrupted",
                f"The {attempt.action} of {attempt.serial} was interrupted; what it made in AWS was rolled back.",
                "Run it again.",
            )
        try:
            attempt.record(
                outcome,
                title=error.title,
                message=error.message,
                next_action=error.next_action,
                error_kind=type(error).__name__,
                identity=identity_no_key,
                verify_mode=verify_mode,
                key_source=key_source,
                extra=extra,
                base=base,
            )
            attempt.close_journal(outcome)
        except (StationError, ValueError):
            log.error("could not record the failed %s of %s", attempt.action, attempt.serial)
        if not isinstance(exc, Exception):
            raise
        # A failed undo matters more to the person than the first error: something is left in AWS.
        raise (left or error) from None
    try:
        attempt.record(
            Outcome.PASS,
            title=title,
            message=_registered_text(attempt, registration),
            next_action="",
            identity=identity_no_key,
            verify_mode=verify_mode,
            key_source=key_source,
            extra=extra,
            base=base,
        )
    except (StationError, ValueError) as error:
        # No record → a registered certificate nobody can account for: undo it like any failure.
        left = attempt.roll_back(registry)
        raise (
            left
            or StationFault(
                "Ledger unavailable",
                f"The station could not write the record of {attempt.serial}, so the registration in "
                f"{attempt.target.name} was undone ({type(error).__name__}).",
                "Call a technician to check the ledger; then run the action again.",
            )
        ) from None
    attempt.close_journal(Outcome.PASS)
    return registration, checked


def _registered_text(attempt: _Attempt, reg: Registration) -> str:
    where = (
        f"{attempt.target.name} ({reg.account_id or attempt.target.registry_key[0]}/{attempt.target.region})"
    )
    cert = f"Certificate {reg.certificate_id[:12]}…"
    if reg.created:
        return f"{cert} is registered in {where} as {attempt.thing_name}."
    if reg.activated:
        return f"{cert} was registered in {where} but inactive; it is active again, as {attempt.thing_name}."
    if reg.thing_created or reg.policy_attached or reg.thing_attached:
        return f"{cert} was already registered in {where}; its thing and policy are now attached ({attempt.thing_name})."
    return f"{cert} was already registered in {where} as {attempt.thing_name}; nothing changed."


def _result(attempt: _Attempt, reg: Registration, verified: dict[str, Any] | None) -> RegisterResult:
    return RegisterResult(
        attempt_id=attempt.attempt_id,
        serial=attempt.serial,
        target=attempt.target.name,
        account_id=reg.account_id or attempt.target.registry_key[0],
        region=attempt.target.region,
        thing_name=attempt.thing_name,
        certificate_id=reg.certificate_id,
        certificate_arn=reg.certificate_arn,
        already_registered=not reg.created,
        activated=reg.activated,
        thing_created=reg.thing_created,
        policy_attached=reg.policy_attached,
        thing_attached=reg.thing_attached,
        operator=attempt.operator,
        verify=verified,
        timings_ms=dict(attempt.timings),
        message=_registered_text(attempt, reg),
    )


# ---------------------------------------------------------------------------------------------------------
# Register
# ---------------------------------------------------------------------------------------------------------


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
    if identity.certificate_id != cert_id:
        identity = Identity(identity.certificate_pem, cert_id, identity.private_key)
    serial, product_name, thing_name = unit_names(config, dest, serial, product=product, thing=thing)
    ca_bytes: bytes | None = None
    if verify:
        if identity.private_key is None:
            raise InputError(
                "No key to verify with",
                "Verify connects as the unit, which needs the unit's private key; none was given.",
                "Give the key with --key or --p12, or leave out --verify.",
            )
        ca_bytes = _ca_bytes(dest)
    registry = (registry_for or default_registry_factory(config))(dest)
    attempt = _Attempt(
        action="register",
        config=config,
        ledger=ledger,
        target=dest,
        serial=serial,
        product=product_name,
        thing_name=thing_name,
        operator=operator,
        on_event=on_event,
    )
    data: dict[str, Any] = {
        "attempt_id": attempt.attempt_id,
        "target": dest.name,
        "certificate_id": cert_id,
        "thing_name": thing_name,
        "file": source,
    }

    def run_verify(registration: Registration) -> dict[str, Any]:
        check: Verifier
        if verifier is not None:
            check = verifier
        else:
            from station.verify import verify  # awscrt is loaded only when a verify runs

            check = verify
        host, port = registry.data_endpoint()
        result = attempt.step(
            "verify",
            lambda: check(
                identity, thing_name=thing_name, host=host, port=port, ca_bytes=ca_bytes, where=registry.where
            ),
        )
        return dict(result.as_dict()) if hasattr(result, "as_dict") else {"passed": True}

    try:
        registration, verified = _run_recorded(
            attempt,
            registry,
            identity,
            origin="file",
            key_source="file",
            after=run_verify if verify else None,
            verify_mode="host" if verify else "",
            title="Registered",
            extra={"source": source, "verified": verify},
        )
    except StationError as error:
        _note(
            ledger,
            on_event,
            action="register",
            serial=serial,
            ok=False,
            operator=operator,
            station_id=config.station_id,
            title=error.title,
            message=error.message,
            next_action=error.next_action,
            quiet=True,
            **data,
        )
        raise
    finally:
        identity = Identity(certificate_pem=identity.certificate_pem, certificate_id=cert_id)  # drop the key
    result = _result(attempt, registration, verified)
    _note(
        ledger,
        on_event,
        action="register",
        serial=serial,
        ok=True,
        operator=operator,
        station_id=config.station_id,
        title="Registered" if result.changed else "Already registered",
        message=result.message,
        already_registered=result.already_registered,
        thing_created=result.thing_created,
        verified=verified is not None,
        quiet=True,
        **data,
    )
    return result


# ---------------------------------------------------------------------------------------------------------
# The unit's records
# ---------------------------------------------------------------------------------------------------------


def unit_records(ledger: Ledger, query: str) -> tuple[str, list[AttemptRecord]]:
    """(serial, its records in write order) for a serial, thing name, attempt id or certificate id."""
    q = query.strip() if isinstance(query, str) else ""
    if not q:
        raise InputError("No unit given", "The unit's serial is empty.", "Give the unit's serial.")
    records = ledger.find(q)
    if not records:
        raise NotFound(
            "Unknown unit",
            f"The ledger has no record of {q!r}.",
            "Check the serial; `station show` searches by serial, thing name or certificate id.",
        )
    serials = list(dict.fromkeys(r.serial for r in records))
    if len(serials) > 1:
        raise InputError(
            "More than one unit",
            f"{q!r} matches the records of {len(serials)} units ({', '.join(serials[:5])}).",
            "Give the unit's serial.",
        )
    serial = serials[0]
    if serial != q:
        records = ledger.find(serial)  # found by thing name or certificate: take all of that unit's records
    return serial, records


def _passed(serial: str, records: Iterable[AttemptRecord]) -> list[AttemptRecord]:
    passed = [r for r in records if r.outcome == Outcome.PASS and r.certificate_id]
    if not passed:
        raise NotFound(
            "No registered certificate",
            f"The ledger has no PASS record with a certificate for {serial}: it was never registered by "
            "this station.",
            "Check the serial; a unit that only failed has nothing registered to act on.",
        )
    return passed


def _made_thing(record: AttemptRecord) -> bool | None:
    """Whether the station made the record's thing: True/False when the record says so, None when unknown."""
    value = record.extra.get("thing_created")
    return value if isinstance(value, bool) else None


def _revoke_items(
    passed: list[AttemptRecord], groups: Mapping[tuple[str, str], list[AttemptRecord]]
) -> tuple[RevokeItem, ...]:
    """Items for the chosen (target, certificate) groups, deciding per thing whether it may be deleted.

    A thing is deleted only when a PASS record says the station made it, and no certificate left out of
    this revoke is recorded with it in that target; it is deleted once, with the last certificate using it.
    """
    chosen = set(groups)
    last_for_thing: dict[tuple[str, str], tuple[str, str]] = {}
    for key, recs in groups.items():
        for thing in dict.fromkeys(r.thing_name for r in recs if r.thing_name):
            last_for_thing[(key[0], thing)] = key
    items = []
    for key, recs in groups.items():
        target, cert_id = key
        things = list(dict.fromkeys(r.thing_name for r in recs if r.thing_name))
        thing = things[-1] if things else ""
        delete: str | None = None
        reason = ""
        if thing:
            users = [r for r in passed if r.target == target and r.thing_name == thing]
            made = [_made_thing(r) for r in users]
            others = {r.certificate_id for r in users} - {c for t, c in chosen if t == target}
            if others:
                reason = f"still used by certificate {sorted(others)[0][:12]}… in the ledger"
            elif True not in made:
                reason = (
                    "the station did not make it"
                    if False in made
                    else "the ledger does not say the station made it"
                )
            elif last_for_thing.get((target, thing)) == key:
                delete = thing
        items.append(RevokeItem(target, cert_id, thing, delete, reason))
    return tuple(items)


def plan_revoke(
    config: StationConfig,
    ledger: Ledger,
    query: str,
    *,
    target: str | None = None,
    certificate_id: str | None = None,
) -> RevokePlan:
    """What revoking the unit means, from the ledger: every (target, certificate) of its PASS records.

    With `target`, only that target: the unit's certificates recorded there, or — when the ledger never
    registered it there — each of its certificates (and no thing). With `certificate_id`, only that one.
    """
    serial, records = unit_records(ledger, query)
    passed = _passed(serial, records)
    groups: dict[tuple[str, str], list[AttemptRecord]] = {}
    for record in passed:
        groups.setdefault((record.target, record.certificate_id), []).append(record)
    if target is not None:
        name = find_target(config, target).name
        chosen = {k: v for k, v in groups.items() if k[0] == name}
        if not chosen:
            chosen = {(name, r.certificate_id): [] for r in passed}
    else:
        chosen = groups
    if certificate_id:
        chosen = {k: v for k, v in chosen.items() if k[1].startswith(certificate_id.lower())}
        if not chosen:
            raise NotFound(
                "Unknown certificate",
                f"{serial} has no registered certificate {certificate_id!r} in the ledger.",
                "Check the certificate id with `station show`.",
            )
    return RevokePlan(serial, _revoke_items(passed, chosen))


def _revoke_one(
    registry: Registry,
    item: RevokeItem,
    *,
    ledger: Ledger,
    serial: str,
    operator: str,
    station_id: str,
    on_event: EventSink | None,
    action: str = "revoke",
    extra: Mapping[str, Any] | None = None,
) -> RevokeDone:
    data = {
        "target": item.target,
        "certificate_id": item.certificate_id,
        "thing_name": item.thing_name,
        **dict(extra or {}),
    }
    try:
        existed = registry.revoke(item.certificate_id, delete_thing=item.delete_thing)
    except StationError as error:
        _note(
            ledger,
            on_event,
            action=action,
            serial=serial,
            ok=False,
            operator=operator,
            station_id=station_id,
            title=error.title,
            message=error.message,
            next_action=error.next_action,
            quiet=True,
            **data,
        )
        return RevokeDone(item, False, error={"kind": type(error).__name__, **_error_text(error)})
    where = f"{item.target} ({registry.where})"
    if existed:
        message = f"Certificate {item.certificate_id[:12]}… of {serial} is revoked in {where}"
    else:
        message = f"Certificate {item.certificate_id[:12]}… was not registered in {where} (already revoked)"
    if item.delete_thing:
        # Registry.revoke treats a thing already gone as deleted; say which case it can be.
        message += (
            f"; thing {item.delete_thing} deleted" if existed else f"; thing {item.delete_thing} removed"
        )
    elif item.thing_name and item.keep_reason:
        message += f"; thing {item.thing_name} kept ({item.keep_reason})"
    try:
        _note(
            ledger,
            on_event,
            action=action,
            serial=serial,
            ok=True,
            operator=operator,
            station_id=station_id,
            title="Certificate revoked" if existed else "Already revoked",
            message=message + ".",
            existed=existed,
            thing_deleted=item.delete_thing,
            **data,
        )
    except (StationError, ValueError) as error:
        # Done in AWS but not in the ledger: the person must know the audit trail misses it.
        detail = error.message if isinstance(error, StationError) else type(error).__name__
        problem = StationFault(
            "Revoked but not recorded",
            f"{message}, but the ledger could not record it ({detail}).",
            "Call a technician to check the ledger, and note the revoke by hand.",
        )
        return RevokeDone(
            item,
            False,
            existed=existed,
            thing_deleted=item.delete_thing,
            error={"kind": type(problem).__name__, **_error_text(problem)},
        )
    return RevokeDone(item, True, existed=existed, thing_deleted=item.delete_thing)


def _error_text(error: StationError) -> dict[str, str]:
    return {"title": error.title, "message": error.message, "next_action": error.next_action}


def revoke_unit(
    config: StationConfig,
    ledger: Ledger,
    query: str,
    *,
    operator: str,
    target: str | None = None,
    plan: RevokePlan | None = None,
    registry_for: RegistryFactory | None = None,
    on_event: EventSink | None = None,
) -> RevokeResult:
    """Revoke the unit's certificate(s) as `plan_revoke` plans (or as the `plan` given, once confirmed).

    Each item is tried even when another fails; each is recorded as a `qa:revoke` note with the operator.
    A certificate that is no longer registered counts as done (`existed=False`).
    """
    plan = plan or plan_revoke(config, ledger, query, target=target)
    factory = registry_for or default_registry_factory(config)
    done = []
    for item in plan.items:
        registry = factory(find_target(config, item.target))
        done.append(
            _revoke_one(
                registry,
                item,
                ledger=ledger,
                serial=plan.serial,
                operator=operator,
                station_id=config.station_id,
                on_event=on_event,
            )
        )
    return RevokeResult(plan.serial, operator, tuple(done))


# ---------------------------------------------------------------------------------------------------------
# Transfer
# ---------------------------------------------------------------------------------------------------------


def _origin_of(record: AttemptRecord) -> str:
    """Whose certificate a record holds: the station's own, a file a person gave, or the unit's."""
    if record.key_source in ("station", "file"):
        return record.key_source
    return "unit"


def plan_transfer(
    config: StationConfig,
    ledger: Ledger,
    query: str,
    *,
    to: str,
    source: str | None = None,
    thing: str | None = None,
    revoke_source: bool = False,
) -> TransferPlan:
    """Which certificate goes to `to` (the unit's latest PASS record, or its latest one in `source`)."""
    dest = find_target(config, to)
    serial, records = unit_records(ledger, query)
    passed = [r for r in _passed(serial, records) if r.certificate_pem]
    if source is not None:
        source_name = find_target(config, source).name
        passed = [r for r in passed if r.target == source_name]
    if not passed:
        where = f" in {source}" if source else ""
        raise NotFound(
            "No certificate to transfer",
            f"The ledger holds no PASS record of {serial}{where} with its certificate.",
            "Check the serial and the source target with `station show`.",
        )
    record = passed[-1]
    src = find_target(config, record.target)
    if src.registry_key == dest.registry_key:
        raise InputError(
            "Same registry",
            f"Target {dest.name!r} is the same account and region as {src.name!r}, where {serial} is "
            "registered already.",
            "Choose a destination target in another account or region.",
        )
    _, product, thing_name = unit_names(
        config,
        dest,
        serial,
        product=record.product if record.product in config.products else None,
        thing=thing,
        device_id=record.device_id,
        check_serial=False,
    )
    source_revoke: tuple[RevokeItem, ...] = ()
    if revoke_source:
        all_passed = _passed(serial, records)
        group = [r for r in all_passed if r.target == src.name and r.certificate_id == record.certificate_id]
        source_revoke = _revoke_items(all_passed, {(src.name, record.certificate_id): group})
    return TransferPlan(
        serial=serial,
        source_target=src.name,
        destination=dest.name,
        certificate_id=record.certificate_id,
        certificate_pem=record.certificate_pem,
        thing_name=thing_name,
        source_attempt_id=record.attempt_id,
        product=product or record.product,
        origin=_origin_of(record),
        revoke_source=revoke_source,
        source_revoke=source_revoke,
    )


def transfer_unit(
    config: StationConfig,
    ledger: Ledger,
    query: str,
    *,
    to: str,
    operator: str,
    source: str | None = None,
    thing: str | None = None,
    revoke_source: bool = False,
    plan: TransferPlan | None = None,
    registry_for: RegistryFactory | None = None,
    on_event: EventSink | None = None,
) -> TransferResult:
    """Register the unit's certificate in `to` with thing + policy, record it, then optionally revoke it at
    the source. The destination comes first, so the unit is never left with nowhere to connect; a failed
    source revoke raises a StationFault saying the unit already works at the destination."""
    plan = plan or plan_transfer(
        config, ledger, query, to=to, source=source, thing=thing, revoke_source=revoke_source
    )
    dest = find_target(config, plan.destination)
    src = find_target(config, plan.source_target)
    check_aws_acceptance(plan.certificate_pem)
    identity = Identity(plan.certificate_pem, local_certificate_id(plan.certificate_pem))
    factory = registry_for or default_registry_factory(config)
    base = next(
        (r for r in ledger.find(plan.source_attempt_id) if r.attempt_id == plan.source_attempt_id), None
    )
    attempt = _Attempt(
        action="transfer",
        config=config,
        ledger=ledger,
        target=dest,
        serial=plan.serial,
        product=plan.product,
        thing_name=plan.thing_name,
        operator=operator,
        on_event=on_event,
    )
    data: dict[str, Any] = {
        "attempt_id": attempt.attempt_id,
        "certificate_id": identity.certificate_id,
        "source": src.name,
        "destination": dest.name,
        "thing_name": plan.thing_name,
        "revoke_source": plan.revoke_source,
    }
    registry = factory(dest)
    try:
        registration, _ = _run_recorded(
            attempt,
            registry,
            identity,
            origin=plan.origin,
            key_source=base.key_source if base is not None else "",
            after=None,
            verify_mode="",
            title="Transferred",
            extra={"source_target": src.name, "source_attempt_id": plan.source_attempt_id},
            base=base,
        )
    except StationError as error:
        _note(
            ledger,
            on_event,
            action="transfer",
            serial=plan.serial,
            ok=False,
            operator=operator,
            station_id=config.station_id,
            title=error.title,
            message=error.message,
            next_action=error.next_action,
            quiet=True,
            **data,
        )
        raise
    result = _result(attempt, registration, None)
    _note(
        ledger,
        on_event,
        action="transfer",
        serial=plan.serial,
        ok=True,
        operator=operator,
        station_id=config.station_id,
        title="Transferred",
        message=f"{plan.serial} now works in {dest.name} as {plan.thing_name}: {result.message}",
        quiet=True,
        **data,
    )
    done: list[RevokeDone] = []
    if plan.revoke_source:
        source_registry = factory(src)
        for item in plan.source_revoke:
            outcome = _revoke_one(
                source_registry,
                item,
                ledger=ledger,
                serial=plan.serial,
                operator=operator,
                station_id=config.station_id,
                on_event=on_event,
                extra={"transfer_attempt_id": attempt.attempt_id, "destination": dest.name},
            )
            done.append(outcome)
            if not outcome.ok:
                message = (outcome.error or {}).get("message", "")
                raise StationFault(
                    "Transfer half done",
                    f"{plan.serial}'s certificate now works in {dest.name}, but revoking it in {src.name} "
                    f"failed: {message}",
                    f"Run `station revoke {plan.serial} --target {src.name}` again; if it keeps failing, "
                    "call a technician.",
                )
    return TransferResult(plan, result, tuple(done))


# ---------------------------------------------------------------------------------------------------------
# Preflight
# ---------------------------------------------------------------------------------------------------------


def _document_check(target: Target) -> Check | None:
    """The target's policy document in station.toml: `iot:*` on `*` is refused unless the target is lab."""
    if not target.policy_document:
        return None
    try:
        reason = is_over_broad(target.policy_document)
    except StationError as error:
        return Check(
            "policy document", False, error.message, "Fix the target's policy document in station.toml."
        )
    if reason is None:
        return Check("policy document", True, "The configured policy does not allow iot:* on *.")
    if target.lab:
        return Check("policy document", True, f"Broad policy accepted for a lab target: {reason}.")
    return Check(
        "policy document",
        False,
        f"Refused for target {target.name!r} (not a lab target): {reason}.",
        "Use a least-privilege policy (thing policy variables), or mark the target lab = true if it is a "
        "test account.",
    )


def _preflight_registry(config: StationConfig) -> RegistryFactory:
    # Preflight answers quickly: few retries and short timeouts, so an unreachable target fails in seconds.
    def factory(target: Target) -> Registry:
        return Registry(
            target, station_id=config.station_id, max_attempts=2, connect_timeout_s=3.0, read_timeout_s=10.0
        )

    return factory


def _preflight_target(target: Target, registry_for: RegistryFactory) -> TargetReport:
    checks: list[Check] = []
    local = _document_check(target)
    if local is not None:
        checks.append(local)
    where = f"{target.registry_key[0]}/{target.region}"
    try:
        registry = registry_for(target)
        checks.extend(registry.preflight())
        where = registry.where
    except StationError as error:
        checks.append(Check("registry", False, error.message, error.next_action))
    except Exception as error:  # a check must never take the whole preflight down
        log.error("preflight of %s failed unexpectedly", target.name, exc_info=True)
        checks.append(
            Check(
                "registry",
                False,
                f"The checks of {target.name} stopped unexpectedly ({type(error).__name__}).",
                "Call a technician; the station log has the details.",
            )
        )
    return TargetReport(target.name, target.lab, where, tuple(checks))


def preflight(
    config: StationConfig,
    *,
    target: str | None = None,
    registry_for: RegistryFactory | None = None,
    ledger: Ledger | None = None,
    operator: str = "",
    on_event: EventSink | None = None,
    max_workers: int = 4,
) -> PreflightReport:
    """Read-only checks of one target (or all, in parallel): credentials, endpoint, policy, policy scope.

    When a ledger is given, the result is appended as a `qa:preflight` note, and a ledger that cannot be
    written shows up as a failed station check.
    """
    targets = [find_target(config, target)] if target is not None else list(config.targets.values())
    factory = registry_for or _preflight_registry(config)
    workers = max(1, min(max_workers, len(targets)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preflight") as pool:
        reports = tuple(pool.map(lambda t: _preflight_target(t, factory), targets))
    station: list[Check] = []
    if ledger is not None:
        failed = [f"{r.target}: {c.name}" for r in reports for c in r.checks if not c.ok]
        try:
            _note(
                ledger,
                on_event,
                action="preflight",
                serial="",
                ok=not failed,
                operator=operator,
                station_id=config.station_id,
                title="Preflight passed" if not failed else "Preflight failed",
                message="; ".join(failed) if failed else f"{len(reports)} target(s) checked.",
                targets={r.target: r.ok for r in reports},
            )
            station.append(Check("ledger", True, "The ledger is writable."))
        except StationError as error:
            station.append(Check("ledger", False, error.message, error.next_action))
    return PreflightReport(reports, tuple(station))


# ---------------------------------------------------------------------------------------------------------
# Re-verify (the unit back on a slot)
# ---------------------------------------------------------------------------------------------------------


class SlotReserver(Protocol):
    """What re-verify needs from the line (`station.line.Line.reserve`): the slot, held for a `with` block."""

    def reserve(
        self, slot: str, *, serial: str = "", purpose: str = ""
    ) -> contextlib.AbstractContextManager[Any]: ...


class ReverifyWiring(Protocol):
    """What re-verify needs from the wiring (`station.context.StationContext` provides it)."""

    def open_flasher(self, slot: str, port: str, request: UnitRequest) -> FlasherLike: ...
    def registry(self, target: Target) -> Any: ...


@dataclass(frozen=True)
class ReverifyResult:
    """A re-verify that passed: the unit on `slot` proved its own connection to `target` again."""

    attempt_id: str
    serial: str
    slot: str
    target: str
    thing_name: str
    certificate_id: str
    device_id: str | None
    family: str
    operator: str
    reverified_attempt_id: str  # the PASS record whose identity was checked
    timings_ms: dict[str, float] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, **asdict(self)}


def _reverify_record(
    config: StationConfig, ledger: Ledger, query: str, *, target: str | None, certificate_id: str | None
) -> AttemptRecord:
    """The PASS record to re-verify: the unit's latest, or its latest in `target` / with that certificate."""
    serial, records = unit_records(ledger, query)
    passed = _passed(serial, records)
    if target is not None:
        name = find_target(config, target).name
        passed = [r for r in passed if r.target == name]
    if certificate_id:
        passed = [r for r in passed if r.certificate_id.startswith(certificate_id.strip().lower())]
    if not passed:
        where = f" in {target}" if target else ""
        which = f" with certificate {certificate_id[:12]}…" if certificate_id else ""
        raise NotFound(
            "Nothing to re-verify",
            f"The ledger holds no PASS record of {serial}{where}{which}: it was never registered there.",
            "Pick a PASS record of the unit (`station show` lists them).",
        )
    return passed[-1]


def _expected_device_id(config: StationConfig, record: AttemptRecord) -> str | None:
    """The id the unit must say: the recorded one; else its serial where the product cross-checks ids."""
    if record.device_id:
        return record.device_id
    product = config.products.get(record.product)
    if product is not None and bool(product.options.get("check_device_id", True)):
        return record.serial
    return None


def _reverify_product(config: StationConfig, record: AttemptRecord, slot_product: str | None) -> str:
    """The product (hence the flasher family) of the unit: as recorded, else the slot's, else the only one."""
    for name in (record.product, slot_product):
        if name and name in config.products:
            return name
    if len(config.products) == 1:
        return next(iter(config.products))
    raise InputError(
        "Which product?",
        f"The record of {record.serial} names no product this station knows, and the slot has none.",
        "Choose a slot configured for the unit's product (its flasher family).",
    )


def _same_device(expected: str, seen: str) -> bool:
    return expected.strip().casefold() == seen.strip().casefold()  # as the pipeline compares a scan


def reverify_unit(
    config: StationConfig,
    ledger: Ledger,
    query: str,
    *,
    slot: str,
    operator: str,
    target: str | None = None,
    certificate_id: str | None = None,
    port: str | None = None,
    line: SlotReserver | None = None,
    context: ReverifyWiring | None = None,
    flasher_factory: Callable[..., FlasherLike] | None = None,
    registry_for: RegistryFactory | None = None,
    on_event: EventSink | None = None,
) -> ReverifyResult:
    """With the unit back on `slot`: it is the recorded unit, and it still connects with its own identity.

    The record is the unit's latest PASS record (in `target`, with `certificate_id`, when given). Steps:
    reserve the slot on the `line` (when one runs, so it starts no unit there meanwhile), open the slot's
    flasher through the wiring (`context`, else a `StationContext` with `flasher_factory`/`registry_for`),
    refuse a family without device-side verify (`InputError`: the station never keeps a unit's key, so
    only the device can prove its connection), identify the unit and compare its id with the record's
    (`UnitFault` for another unit), check the certificate is still ACTIVE in the target (`UnitFault`
    otherwise, before the device is pointed anywhere), then let the device connect (`flasher.device_verify`).

    Recorded like the other QA actions: local refusals (unknown unit, slot or target; a slot in use) write
    nothing; from the slot on, every outcome is a `qa:reverify` note with the operator. Once the recorded
    unit has answered, an attempt record is written too (PASS, FAIL or ERROR, `extra.qa_action =
    "reverify"`, the physical slot, `verify_mode="device"`), so the unit's latest outcome says whether it
    still works. Nothing in AWS changes; the device keeps its credentials whatever the outcome.
    """
    record = _reverify_record(config, ledger, query, target=target, certificate_id=certificate_id)
    serial = record.serial
    dest = find_target(config, record.target)
    slot_cfg = config.slots.get(slot) if isinstance(slot, str) else None
    if slot_cfg is None:
        raise InputError(
            "No such slot",
            f"There is no slot {slot!r}; the slots are {', '.join(config.slots) or 'none'}.",
            "Put the unit on one of the station's slots and choose that one.",
        )
    wiring: ReverifyWiring = context or StationContext(
        config,
        ledger=ledger,
        flasher_factory=flasher_factory,
        registry_factory=registry_for,
        operator=operator,
    )
    # The request only names the unit and its family for the wiring; re-verify makes no identity, so it
    # needs no issuer (whose passphrase may not even be set on this shift).
    request = UnitRequest(
        serial=serial,
        target=dest,
        thing_name=lambda _device_id: record.thing_name,
        slot=slot,
        product=_reverify_product(config, record, slot_cfg.product),
        station_id=config.station_id,
    )
    registry = registry_for(dest) if registry_for is not None else wiring.registry(dest)
    reservation = (
        line.reserve(slot, serial=serial, purpose=f"{QA_STEP_PREFIX}reverify")
        if line is not None
        else contextlib.nullcontext()
    )
    data: dict[str, Any] = {
        "target": dest.name,
        "certificate_id": record.certificate_id,
        "thing_name": record.thing_name,
        "slot": slot,
        "reverified_attempt_id": record.attempt_id,
    }
    attempt_id = uuid.uuid4().hex
    started = time.time()
    timings: dict[str, float] = {}
    seen: dict[str, Any] = {}  # what the unit said: device_id, firmware, family

    def step(name: str, fn: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return fn()
        finally:
            timings[name] = round((time.perf_counter() - began) * 1000.0, 3)

    def note(ok: bool, title: str, message: str, next_action: str = "", **more: Any) -> None:
        _note(
            ledger,
            on_event,
            action="reverify",
            serial=serial,
            ok=ok,
            operator=operator,
            station_id=config.station_id,
            title=title,
            message=message,
            next_action=next_action,
            quiet=True,  # on an error path the error matters more; on success the record holds the evidence
            **data,
            **more,
        )

    def write_record(outcome: Outcome, title: str, message: str, next_action: str, error_kind: str) -> None:
        timings["total"] = round((time.time() - started) * 1000.0, 3)
        ledger.record_attempt(
            AttemptRecord(
                attempt_id=attempt_id,
                serial=serial,
                outcome=str(outcome),
                device_id=seen.get("device_id") or record.device_id,
                product=record.product,
                thing_name=record.thing_name,
                certificate_id=record.certificate_id,
                certificate_pem=record.certificate_pem,
                certificate_arn=record.certificate_arn,
                target=dest.name,
                account_id=record.account_id or dest.registry_key[0],
                region=dest.region,
                station_id=config.station_id,
                slot=slot,
                operator=operator,
                title=title,
                message=message,
                next_action=next_action,
                error_kind=error_kind,
                firmware=seen.get("firmware") or record.firmware,
                family=seen.get("family") or record.family,
                key_source=record.key_source,  # whose certificate it is does not change
                verify_mode="device",
                timings_ms=dict(timings),
                started_at=started,
                finished_at=time.time(),
                # No thing_created/certificate_created: this attempt made nothing, and a revoke must keep
                # deciding about the thing from the records that did.
                extra={"qa_action": "reverify", "reverified_attempt_id": record.attempt_id},
            )
        )

    with reservation:
        reached = False  # the recorded unit answered on the slot: from here on the attempt is recorded
        try:
            flasher = step("open", lambda: wiring.open_flasher(slot, port or slot_cfg.port, request))
            try:
                seen["family"] = _flasher_family(flasher)
                if not flasher.capabilities.device_verify:
                    family = seen["family"] or "this"
                    raise InputError(
                        "Re-verify needs the device's own check",
                        # Not "private key": the ledger refuses any text with that marker in it.
                        f"{serial} is a {family} unit, which cannot prove its own connection, and the station "
                        "never keeps a unit's key, so it cannot connect as the unit either.",
                        f"Run the unit's own connectivity check (its self-test) to prove it; to have the "
                        f"station prove it, provision {serial} again on the line (scan it).",
                    )
                info = step("identify", flasher.identify)
                seen["device_id"] = info.device_id or None
                seen["firmware"] = info.firmware or None
                expected = _expected_device_id(config, record)
                if expected and seen["device_id"] and not _same_device(expected, str(seen["device_id"])):
                    raise UnitFault(
                        "Wrong unit in the jig",
                        f"The record of {serial} is for device {expected}; slot {slot} holds device "
                        f"{seen['device_id']}.",
                        f"Put {serial} on slot {slot} and re-verify again.",
                    )
                reached = True
                described = step("registry", lambda: registry.describe(record.certificate_id))
                if described is None:
                    raise UnitFault(
                        "Not registered",
                        f"{serial}'s certificate {record.certificate_id[:12]}… is not registered in "
                        f"{dest.name} any more (revoked or never there).",
                        f"Provision {serial} again on the line, or register its certificate, as QA decides.",
                    )
                status = str(described.get("status", "ACTIVE"))
                if status != "ACTIVE":
                    raise UnitFault(
                        "Certificate not active",
                        f"{serial}'s certificate {record.certificate_id[:12]}… is {status} in {dest.name}.",
                        f"Provision {serial} again on the line, or transfer it, as QA decides.",
                    )
                host, mqtt_port = registry.data_endpoint()
                step("verify", lambda: flasher.device_verify(host, mqtt_port, record.thing_name))
            finally:
                try:
                    flasher.close()
                except Exception:
                    log.warning(
                        "closing slot %s after the re-verify of %s failed", slot, serial, exc_info=True
                    )
        except BaseException as exc:
            error = _as_station_error(exc)
            if error is not exc and isinstance(exc, Exception):
                log.error("re-verify of %s failed unexpectedly", serial, exc_info=True)
            if reached:
                outcome = Outcome.FAIL if isinstance(error, UnitFault) else Outcome.ERROR
                try:
                    write_record(outcome, error.title, error.message, error.next_action, type(error).__name__)
                except (StationError, ValueError):
                    log.error("could not record the failed re-verify of %s", serial)
            note(
                False,
                error.title,
                error.message,
                error.next_action,
                attempt_id=attempt_id if reached else "",
                device_id=seen.get("device_id"),
            )
            if error is exc or not isinstance(exc, Exception):
                raise
            raise error from None
    where = f"{dest.name} ({record.account_id or dest.registry_key[0]}/{dest.region})"
    message = f"{serial} connected to {where} as {record.thing_name} with its own identity, from slot {slot}."
    try:
        write_record(Outcome.PASS, "Re-verified", message, "", "")
    except (StationError, ValueError) as error:
        detail = error.message if isinstance(error, StationError) else type(error).__name__
        raise StationFault(
            "Re-verified but not recorded",
            f"{message[:-1]}, but the ledger could not record it ({detail}).",
            "Call a technician to check the ledger, then re-verify again.",
        ) from None
    note(True, "Re-verified", message, attempt_id=attempt_id, device_id=seen.get("device_id"))
    return ReverifyResult(
        attempt_id=attempt_id,
        serial=serial,
        slot=slot,
        target=dest.name,
        thing_name=record.thing_name,
        certificate_id=record.certificate_id,
        device_id=seen.get("device_id"),
        family=str(seen.get("family") or ""),
        operator=operator,
        reverified_attempt_id=record.attempt_id,
        timings_ms=dict(timings),
        message=message,
    )


def _flasher_family(flasher: FlasherLike) -> str:
    try:
        return str(flasher.family)
    except Exception:  # a family name is for the record only
        return ""


# ---------------------------------------------------------------------------------------------------------
# What QA did to a unit since its latest attempt (for listings)
# ---------------------------------------------------------------------------------------------------------


def revocation_of(ledger: Ledger, record: AttemptRecord) -> Event | None:
    """The successful revoke of `record`'s certificate in `record`'s target after the attempt, if any.

    A revoke is a QA note, not a new attempt, so a listing that shows only the latest attempt's outcome would
    still say PASS for a unit whose identity no longer works; listings ask this to say "revoked" instead.
    A later attempt or transfer that registered the certificate again is a newer record, so it wins.
    """
    if not record.certificate_id:
        return None
    found: Event | None = None
    for stored in ledger.events(record.serial):
        event = stored.event
        if (
            event.kind == "note"
            and event.step == f"{QA_STEP_PREFIX}revoke"
            and event.outcome == "ok"
            and event.at >= record.finished_at
            and event.data.get("certificate_id") == record.certificate_id
            and event.data.get("target") == record.target
        ):
            found = event
    return found
