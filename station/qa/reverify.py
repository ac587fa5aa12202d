"""QA re-verify: prove again that a unit connects with its identity, where QA is.

Two ways, chosen by what the station can do for the unit:
- on a slot (`slot`): the unit is put back in a jig (the slot of its record is the natural choice, and the
  desk preselects it); the slot is reserved on the line so no unit starts there meanwhile; the unit's flasher
  identifies it against its record (`UnitFault` for another unit), the registry must still hold its
  certificate ACTIVE, and the device proves its own connection (`device_verify`). A family that cannot check
  its own connection is refused with the reason;
- host-side (`identity` with its key, e.g. the keychain export QA imported): the station connects as the
  unit. The station never keeps a key it made itself (it drops it after verify), so for a line-made unit this
  is possible only with the key from where it lives — said so when it is missing.

One attempt record once the unit has answered (slot) or the check starts (host): action `reverify`, PASS /
FAIL / ERROR, `extra.reverified_attempt_id`. Local refusals (unknown unit, slot or target; a slot in use)
write nothing. Nothing in AWS changes; the device keeps its credentials whatever the outcome.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from station.attempt import EventSink, outcome_of
from station.config import StationConfig
from station.context import StationContext, server_ca
from station.errors import InputError, StationError, StationFault, UnitFault
from station.i18n import _
from station.identity import certificate_id as local_certificate_id
from station.ledger import AttemptRecord, Ledger
from station.model import Identity, Target
from station.pipeline import FlasherLike, RegistryLike, UnitRequest
from station.plain import plain_dict
from station.qa.common import (
    QA_STEP_PREFIX,
    NotFound,
    RegistryFactory,
    Verifier,
    find_target,
    live_records,
    note,
    qa_attempt,
    run_qa,
    unit_records,
)
from station.units import Action

log = logging.getLogger(__name__)


class SlotReserver(Protocol):
    """What re-verify needs from the line (`station.line.Line.reserve`): the slot, held for a `with` block."""

    def reserve(
        self, slot: str, *, serial: str = "", purpose: str = ""
    ) -> contextlib.AbstractContextManager[Any]: ...


class ReverifyWiring(Protocol):
    """What re-verify needs from the wiring (`station.context.StationContext` provides it)."""

    def open_flasher(self, slot: str, port: str, request: UnitRequest) -> FlasherLike: ...
    def registry(self, target: Target) -> RegistryLike: ...


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
        return {"ok": True, **plain_dict(self)}


def reverify_record(
    config: StationConfig, ledger: Ledger, query: str, *, target: str | None, certificate_id: str | None
) -> AttemptRecord:
    """The PASS record to re-verify: the unit's latest, or its latest in `target` / with that certificate."""
    serial, records = unit_records(ledger, query)
    passed = live_records(serial, records)
    if target is not None:
        name = find_target(config, target).name
        passed = [r for r in passed if r.target == name]
    if certificate_id:
        passed = [r for r in passed if r.certificate_id.startswith(certificate_id.strip().lower())]
    if not passed:
        where = _(" in {target}").format(target=target) if target else ""
        which = (
            _(" with certificate {certificate}…").format(certificate=certificate_id[:12])
            if certificate_id
            else ""
        )
        raise NotFound(
            _("Nothing to re-verify"),
            _(
                "The ledger holds no PASS record of {serial}{where}{which}: it was never registered there."
            ).format(serial=serial, where=where, which=which),
            _("Pick a PASS record of the unit (`station show` lists them)."),
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
        _("Which product?"),
        _("The record of {serial} names no product this station knows, and the slot has none.").format(
            serial=record.serial
        ),
        _("Choose a slot configured for the unit's product (its flasher family)."),
    )


def _same_device(expected: str, seen: str) -> bool:
    return expected.strip().casefold() == seen.strip().casefold()  # as the pipeline compares a scan


def record_slot(config: StationConfig, record: AttemptRecord) -> str | None:
    """The slot the unit was provisioned on, when this station has it (what the desk preselects)."""
    return record.slot if record.slot in config.slots else None


def reverify_unit(
    config: StationConfig,
    ledger: Ledger,
    query: str,
    *,
    operator: str,
    slot: str | None = None,
    identity: Identity | None = None,
    target: str | None = None,
    certificate_id: str | None = None,
    port: str | None = None,
    line: SlotReserver | None = None,
    context: ReverifyWiring | None = None,
    flasher_factory: Callable[..., FlasherLike] | None = None,
    registry_for: RegistryFactory | None = None,
    verifier: Verifier | None = None,
    on_event: EventSink | None = None,
) -> ReverifyResult:
    """The unit still connects with its identity: on `slot` (device-side), or host-side with `identity`'s key.

    The record is the unit's latest that left it live (in `target`, with `certificate_id`, when given).
    Without a slot and without a key: `InputError` saying why the station cannot (it never keeps a key).
    """
    record = reverify_record(config, ledger, query, target=target, certificate_id=certificate_id)
    dest = find_target(config, record.target)
    if slot is None or slot == "":
        if identity is None or identity.private_key is None:
            raise InputError(
                _("Re-verify needs the unit or its key"),
                _(
                    "The station dropped the key of {serial} after provisioning it (it never keeps a "
                    "unit's key), so it cannot connect as the unit by itself."
                ).format(serial=record.serial),
                _(
                    "Put {serial} in a jig and re-verify on that slot, or give the unit's key file "
                    "(e.g. its .p12) to re-verify from the station."
                ).format(serial=record.serial),
            )
        return _host_reverify(
            config,
            ledger,
            record,
            dest,
            identity,
            operator=operator,
            registry_for=registry_for,
            context=context,
            verifier=verifier,
            on_event=on_event,
        )
    return _slot_reverify(
        config,
        ledger,
        record,
        dest,
        slot=slot,
        operator=operator,
        port=port,
        line=line,
        context=context,
        flasher_factory=flasher_factory,
        registry_for=registry_for,
        on_event=on_event,
    )


def _record_fields(
    record: AttemptRecord,
    dest: Target,
    error: StationError | None,
    message: str,
    seen: dict[str, Any],
    mode: str,
) -> dict[str, Any]:
    return {
        "outcome": str(outcome_of(error)),
        "device_id": seen.get("device_id") or record.device_id,
        "product": record.product,
        "thing_name": record.thing_name,
        "certificate_id": record.certificate_id,
        "certificate_pem": record.certificate_pem,
        "certificate_arn": record.certificate_arn,
        "target": dest.name,
        "account_id": record.account_id or dest.registry_key[0],
        "region": dest.region,
        "title": error.title if error is not None else "Re-verified",
        "message": error.message if error is not None else message,
        "next_action": error.next_action if error is not None else "",
        "error_kind": type(error).__name__ if error is not None else "",
        "firmware": seen.get("firmware") or record.firmware,
        "family": seen.get("family") or record.family,
        "key_source": record.key_source,  # whose certificate it is does not change
        "verify_mode": mode,
        # No thing_created/certificate_created: this attempt made nothing, and a revoke must keep deciding
        # about the thing from the records that did.
        "extra": {"reverified_attempt_id": record.attempt_id},
    }


def _check_registered(attempt: Any, registry: RegistryLike, record: AttemptRecord, dest: Target) -> None:
    serial = record.serial
    described = attempt.step("registry", lambda: registry.describe(record.certificate_id))
    if described is None:
        raise UnitFault(
            _("Not registered"),
            _(
                "{serial}'s certificate {certificate_id}… is not registered in "
                "{name} any more (revoked or never there)."
            ).format(serial=serial, certificate_id=record.certificate_id[:12], name=dest.name),
            _("Provision {serial} again on the line, or register its certificate, as QA decides.").format(
                serial=serial
            ),
        )
    status = str(described.get("status", "ACTIVE"))
    if status != "ACTIVE":
        raise UnitFault(
            _("Certificate not active"),
            _("{serial}'s certificate {certificate_id}… is {status} in {name}.").format(
                serial=serial, certificate_id=record.certificate_id[:12], status=status, name=dest.name
            ),
            _("Provision {serial} again on the line, or transfer it, as QA decides.").format(serial=serial),
        )


def _host_reverify(
    config: StationConfig,
    ledger: Ledger,
    record: AttemptRecord,
    dest: Target,
    identity: Identity,
    *,
    operator: str,
    registry_for: RegistryFactory | None,
    context: ReverifyWiring | None,
    verifier: Verifier | None,
    on_event: EventSink | None,
) -> ReverifyResult:
    serial = record.serial
    if local_certificate_id(identity.certificate_pem) != record.certificate_id:
        raise InputError(
            _("Not this unit's certificate"),
            _("The certificate given is not {serial}'s recorded certificate {certificate_id}….").format(
                serial=serial, certificate_id=record.certificate_id[:12]
            ),
            _("Give the unit's own certificate and key."),
        )
    registry: RegistryLike
    if registry_for is not None:
        registry = registry_for(dest)
    elif context is not None:
        registry = context.registry(dest)
    else:
        registry = StationContext(config, ledger=ledger).registry(dest)
    ca_bytes = server_ca(dest)
    attempt = qa_attempt(config, ledger, Action.REVERIFY, serial=serial, operator=operator, on_event=on_event)
    where = f"{dest.name} ({record.account_id or dest.registry_key[0]}/{dest.region})"
    message = _("{serial} connected to {where} as {thing_name} with its identity, from the station.").format(
        serial=serial, where=where, thing_name=record.thing_name
    )
    data = {
        "target": dest.name,
        "certificate_id": record.certificate_id,
        "thing_name": record.thing_name,
        "reverified_attempt_id": record.attempt_id,
        "where": "host",
    }

    def body() -> None:
        _check_registered(attempt, registry, record, dest)
        check: Verifier
        if verifier is not None:
            check = verifier
        else:
            from station.verify import verify as check  # awscrt is loaded only when a verify runs
        host, port = registry.data_endpoint()
        attempt.step(
            "verify",
            lambda: check(
                identity,
                thing_name=record.thing_name,
                host=host,
                port=port,
                ca_bytes=ca_bytes,
                where=registry.where,
            ),
        )

    return _verify_and_record(
        attempt,
        body,
        record,
        dest,
        message=message,
        note_data=data,
        seen={},
        mode="host",
        slot="",
        device_id=record.device_id,
        family=record.family,
        operator=operator,
    )


def _verify_and_record(
    attempt: Any,
    body: Callable[[], None],
    record: AttemptRecord,
    dest: Target,
    *,
    message: str,
    note_data: dict[str, Any],
    seen: dict[str, Any],
    mode: str,
    slot: str,
    device_id: str | None,
    family: str,
    operator: str,
) -> ReverifyResult:
    """Run a re-verify's `body` (host or device verify) as the recorded attempt, with its note and record;
    the result once it is recorded."""

    def conclude(error: StationError | None) -> dict[str, Any]:
        if error is None:
            note(attempt, ok=True, title=_("Re-verified"), message=message, **note_data)
        else:
            note(
                attempt,
                ok=False,
                title=error.title,
                message=error.message,
                next_action=error.next_action,
                **note_data,
            )
        return _record_fields(record, dest, error, message, seen, mode)

    run_qa(
        attempt,
        body,
        conclude=conclude,
        not_recorded=lambda detail: StationFault(
            _("Re-verified but not recorded"),
            _("{message}, but the ledger could not record it ({detail}).").format(
                message=message[:-1], detail=detail
            ),
            _("Call a technician to check the ledger, then re-verify again."),
        ),
    )
    return ReverifyResult(
        attempt_id=attempt.attempt_id,
        serial=record.serial,
        slot=slot,
        target=dest.name,
        thing_name=record.thing_name,
        certificate_id=record.certificate_id,
        device_id=device_id,
        family=family,
        operator=operator,
        reverified_attempt_id=record.attempt_id,
        timings_ms=dict(attempt.timings_ms),
        message=message,
    )


def _slot_reverify(
    config: StationConfig,
    ledger: Ledger,
    record: AttemptRecord,
    dest: Target,
    *,
    slot: str,
    operator: str,
    port: str | None,
    line: SlotReserver | None,
    context: ReverifyWiring | None,
    flasher_factory: Callable[..., FlasherLike] | None,
    registry_for: RegistryFactory | None,
    on_event: EventSink | None,
) -> ReverifyResult:
    serial = record.serial
    slot_cfg = config.slots.get(slot) if isinstance(slot, str) else None
    if slot_cfg is None:
        raise InputError(
            _("No such slot"),
            _("There is no slot {slot!r}; the slots are {slots}.").format(
                slot=slot, slots=", ".join(config.slots) or "none"
            ),
            _("Put the unit on one of the station's slots and choose that one."),
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
    registry: RegistryLike = registry_for(dest) if registry_for is not None else wiring.registry(dest)
    reservation = (
        line.reserve(slot, serial=serial, purpose=f"{QA_STEP_PREFIX}reverify")
        if line is not None
        else contextlib.nullcontext()
    )
    attempt = qa_attempt(
        config, ledger, Action.REVERIFY, serial=serial, operator=operator, on_event=on_event, slot=slot
    )
    data: dict[str, Any] = {
        "target": dest.name,
        "certificate_id": record.certificate_id,
        "thing_name": record.thing_name,
        "slot": slot,
        "reverified_attempt_id": record.attempt_id,
    }
    seen: dict[str, Any] = {}  # what the unit said: device_id, firmware, family
    where = f"{dest.name} ({record.account_id or dest.registry_key[0]}/{dest.region})"
    message = _(
        "{serial} connected to {where} as {thing_name} with its own identity, from slot {slot}."
    ).format(serial=serial, where=where, thing_name=record.thing_name, slot=slot)

    def failed_note(error: StationError) -> None:
        note(
            attempt,
            ok=False,
            title=error.title,
            message=error.message,
            next_action=error.next_action,
            device_id=seen.get("device_id"),
            **data,
        )

    with reservation:
        flasher: FlasherLike | None = None
        try:
            # Until the recorded unit answers on the slot nothing is recorded: only the note says it failed.
            try:
                flasher = attempt.step(
                    "open", lambda: wiring.open_flasher(slot, port or slot_cfg.port, request)
                )
                seen["family"] = _flasher_family(flasher)
                if not flasher.capabilities.device_verify:
                    family = seen["family"] or "this"
                    raise InputError(
                        _("Re-verify needs the device's own check"),
                        # Not "private key": the ledger refuses any text with that marker in it.
                        _(
                            "{serial} is a {family} unit, which cannot prove its own connection, and the station "
                            "never keeps a unit's key (it drops it after provisioning), so it cannot connect as the unit "
                            "either."
                        ).format(serial=serial, family=family),
                        _(
                            "Give the unit's key file to re-verify from the station, or run the unit's own "
                            "connectivity check; to have the station prove it, provision {serial} again."
                        ).format(serial=serial),
                    )
                info = attempt.step("identify", flasher.identify)
                seen["device_id"] = info.device_id or None
                seen["firmware"] = info.firmware or None
                expected = _expected_device_id(config, record)
                if expected and seen["device_id"] and not _same_device(expected, str(seen["device_id"])):
                    raise UnitFault(
                        _("Wrong unit in the jig"),
                        _(
                            "The record of {serial} is for device {expected}; slot {slot} holds device "
                            "{device_id}."
                        ).format(serial=serial, expected=expected, slot=slot, device_id=seen["device_id"]),
                        _("Put {serial} on slot {slot} and re-verify again.").format(
                            serial=serial, slot=slot
                        ),
                    )
            except BaseException as exc:
                from station.attempt import classify

                error = classify(exc)
                failed_note(error)
                attempt.flush_events()
                if error is exc or not isinstance(exc, Exception):
                    raise
                raise error from None
            unit = flasher

            def body() -> None:
                _check_registered(attempt, registry, record, dest)
                host, mqtt_port = registry.data_endpoint()
                attempt.step("verify", lambda: unit.device_verify(host, mqtt_port, record.thing_name))

            return _verify_and_record(
                attempt,
                body,
                record,
                dest,
                message=message,
                note_data={**data, "device_id": seen.get("device_id")},
                seen=seen,
                mode="device",
                slot=slot,
                device_id=seen.get("device_id"),
                family=str(seen.get("family") or ""),
                operator=operator,
            )
        finally:
            if flasher is not None:
                try:
                    flasher.close()
                except Exception:
                    log.warning(
                        "closing slot %s after the re-verify of %s failed", slot, serial, exc_info=True
                    )


def _flasher_family(flasher: FlasherLike) -> str:
    try:
        return str(flasher.family)
    except Exception:  # a family name is for the record only
        return ""
