"""What every QA action shares: names, inputs checked before any AWS call, the unit's records, the note.

Each action is an `station.attempt.Attempt` (action register / revoke / transfer / reverify, slot `qa`, the
operator) run by `run_qa`: on failure compensate, record FAIL/ERROR, keep the journal when something is left
in AWS, raise; on success record (PASS, or DONE for an action that proved nothing about the identity). Every
action also writes a `note` event (step `qa:<action>`) with the operator, which goes to the ledger with the
record (or alone when the action ends before it has one).
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from station import naming
from station.attempt import Attempt, EventSink
from station.config import Product, StationConfig
from station.context import registry_factory
from station.errors import InputError, StationError
from station.i18n import _
from station.identity import check_aws_acceptance, load_identity_file
from station.ledger import AttemptRecord, Ledger
from station.model import Event, Identity, Outcome, Target
from station.units import Action, UnitState

log = logging.getLogger(__name__)

QA_SLOT = "qa"  # the `slot` of records and events written by QA actions
QA_STEP_PREFIX = "qa:"  # event step of a QA action: qa:register, qa:revoke, … (as the TUI's desk writes them)
ANY_SERIAL = ".+"  # without a product, a serial is only checked for being printable, one line, not too long

RegistryFactory = Callable[[Target], Any]
Verifier = Callable[..., Any]
T = TypeVar("T")


class NotFound(InputError):
    """No such unit, record or target: the person asked for something the ledger or the config does not have."""


class AlreadyDone(InputError):
    """What was asked is already so (a transfer to the target the unit is already registered in): nothing to
    do, nothing changed in AWS and nothing recorded. An input the action refuses, like any InputError (the
    desk shows it), but not a failure: its outcome is DONE, and `station transfer` exits 0 on it."""

    outcome = "DONE"


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
            _("No certificate given"),
            _("Registering needs the unit's certificate."),
            _("Give the certificate file with --cert (PEM, DER or PKCS#12), or a PKCS#12 file with --p12."),
        )
    if key is not None and p12 is not None:
        raise InputError(
            _("Two keys given"),
            _("The private key was given twice: as a key file and inside a PKCS#12 file."),
            _("Give the key either with --key or inside --p12, not both."),
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
            _("Unknown target"),
            _("There is no target {name!r} in {path}; known: {known}.").format(
                name=name, path=config.path, known=known
            ),
            _("Use one of the known target names (`station preflight` lists them)."),
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
            _("Cannot name the thing"),
            _(
                "Target {name!r} names things {thing_name_template!r}, and no product is known for this unit."
            ).format(name=target.name, thing_name_template=target.thing_name_template),
            _("Give the product (--product) or the thing name (--thing)."),
        ) from error
    return serial, product_name, name


def registries(config: StationConfig, registry_for: RegistryFactory | None) -> RegistryFactory:
    """The registry factory an action uses: the one given, else the wiring's (one per target)."""
    return registry_for or registry_factory(config.station_id)


# ---------------------------------------------------------------------------------------------------------
# The unit's records
# ---------------------------------------------------------------------------------------------------------


def unit_records(ledger: Ledger, query: str) -> tuple[str, list[AttemptRecord]]:
    """(serial, its records in write order) for a serial, thing name, attempt id or certificate id."""
    q = query.strip() if isinstance(query, str) else ""
    if not q:
        raise InputError(_("No unit given"), _("The unit's serial is empty."), _("Give the unit's serial."))
    records = ledger.find(q)
    if not records:
        raise NotFound(
            _("Unknown unit"),
            _("The ledger has no record of {q!r}.").format(q=q),
            _("Check the serial; `station show` searches by serial, thing name or certificate id."),
        )
    serials = list(dict.fromkeys(r.serial for r in records))
    if len(serials) > 1:
        raise InputError(
            _("More than one unit"),
            _("{q!r} matches the records of {count} units ({serials}).").format(
                q=q, count=len(serials), serials=", ".join(serials[:5])
            ),
            _("Give the unit's serial."),
        )
    serial = serials[0]
    if serial != q:
        records = ledger.find(serial)  # found by thing name or certificate: take all of that unit's records
    return serial, records


def made_thing(record: AttemptRecord) -> bool | None:
    """Whether the station made the record's thing: True/False when the record says so, None when unknown."""
    value = record.extra.get("thing_created")
    return value if isinstance(value, bool) else None


def unit_state(ledger: Any, serial: str) -> UnitState | None:
    """The unit's current state (`ledger.unit`), or None for a serial the ledger never recorded."""
    state: UnitState | None = ledger.unit(serial)
    return state


def made_live(record: AttemptRecord) -> bool:
    """Whether the record left a certificate registered for its unit: a PASS, or a DONE register/transfer."""
    if not record.certificate_id:
        return False
    if record.outcome == Outcome.PASS:
        return record.action != Action.REVOKE
    return record.outcome == Outcome.DONE and record.action in (Action.REGISTER, Action.TRANSFER)


def live_records(serial: str, records: Iterable[AttemptRecord]) -> list[AttemptRecord]:
    passed = [r for r in records if made_live(r)]
    if not passed:
        raise NotFound(
            _("No registered certificate"),
            _(
                "The ledger has no PASS record with a certificate for {serial}: it was never registered by "
                "this station."
            ).format(serial=serial),
            _("Check the serial; a unit that only failed has nothing registered to act on."),
        )
    return passed


def error_text(error: StationError) -> dict[str, str]:
    return {"title": error.title, "message": error.message, "next_action": error.next_action}


# ---------------------------------------------------------------------------------------------------------
# The attempt and its note
# ---------------------------------------------------------------------------------------------------------


def qa_attempt(
    config: StationConfig,
    ledger: Ledger,
    action: str,
    *,
    serial: str,
    operator: str,
    on_event: EventSink | None,
    slot: str = QA_SLOT,
) -> Attempt:
    return Attempt(
        ledger,
        serial=serial,
        action=action,
        slot=slot,
        station_id=config.station_id,
        operator=operator,
        on_event=on_event,
    )


def note(
    attempt: Attempt,
    *,
    ok: bool,
    title: str,
    message: str,
    next_action: str = "",
    action: str | None = None,
    **data: Any,
) -> Event:
    """The QA action's note (who, what, whether it worked): kept with the attempt's events, and published.
    `action` names a part of another action (a transfer's source revoke is a `qa:revoke` note)."""
    action = action or attempt.action
    return attempt.emit(
        "note",
        step=f"{QA_STEP_PREFIX}{action}",
        outcome="ok" if ok else "failed",
        title=title,
        message=message,
        next_action=next_action,
        data={
            "operator": attempt.operator,
            "action": action,
            "station_id": attempt.station_id,
            "attempt_id": attempt.attempt_id,
            **data,
        },
    )


def run_qa(
    attempt: Attempt,
    body: Callable[[], T],
    *,
    conclude: Callable[[StationError | None], dict[str, Any]],
    not_recorded: Callable[[str], StationError] | None = None,
) -> T:
    """One recorded QA attempt (`Attempt.run`), its record marked with `extra.qa_action` as well."""
    return attempt.run(
        body, conclude=lambda error: _with_action(attempt, conclude(error)), not_recorded=not_recorded
    )


def _with_action(attempt: Attempt, fields: dict[str, Any]) -> dict[str, Any]:
    # `extra.qa_action`: what older readers of the ledger (and exports) look for; `action` is the field.
    return {**fields, "extra": {"qa_action": attempt.action, **dict(fields.get("extra") or {})}}


def no_key(identity: Identity) -> Identity:
    """The identity without its key (what may be journaled, recorded or registered)."""
    return Identity(certificate_pem=identity.certificate_pem, certificate_id=identity.certificate_id)


def registration_fields(
    dest: Target, reg: Any, error: StationError | None, *, title: str, message: str, next_action: str
) -> dict[str, Any]:
    """The record fields every QA action that registers a certificate in `dest` shares (register, transfer):
    where it went, what it says, and in `extra` what the attempt made there (read by reconcile and revoke)."""
    return {
        "certificate_arn": reg.certificate_arn if reg is not None else "",
        "target": dest.name,
        "account_id": (reg.account_id if reg is not None and reg.account_id else "") or dest.registry_key[0],
        "region": dest.region,
        "title": title,
        "message": message,
        "next_action": next_action,
        "error_kind": type(error).__name__ if error is not None else "",
        "extra": {
            "certificate_created": bool(reg.created) if reg is not None else False,
            "thing_created": bool(reg.thing_created) if reg is not None else False,
        },
    }
