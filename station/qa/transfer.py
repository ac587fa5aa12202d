"""QA transfer: the unit's certificate registered in another target (another region or account).

`plan_transfer` picks the certificate of the unit's latest record that left it live (or its latest in a given
source target) and the thing name in the destination, from the ledger alone. `transfer_unit` registers it in
the destination with thing and policy (the cloud half of the pipeline's order), then — when asked — revokes
it at the source, so the unit always has somewhere to connect. One attempt record, action `transfer`, target
the destination: DONE when registered (nothing was proved about the unit), FAIL/ERROR otherwise (what it made
rolled back), with `extra.source_target` and `extra.source_revoked` (what the unit's state reads). A source
revoke that fails leaves the transfer done and recorded, and raises "Transfer half done".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from station.attempt import outcome_of
from station.config import StationConfig
from station.errors import InputError, StationError, StationFault
from station.i18n import _
from station.identity import certificate_id as local_certificate_id
from station.identity import check_aws_acceptance
from station.journal import Stage
from station.ledger import AttemptRecord, Ledger
from station.model import Identity
from station.pipeline import register_in_target
from station.plain import plain_dict
from station.qa.common import (
    AlreadyDone,
    EventSink,
    NotFound,
    RegistryFactory,
    error_text,
    find_target,
    live_records,
    note,
    qa_attempt,
    registration_fields,
    registries,
    run_qa,
    unit_names,
    unit_records,
    unit_state,
)
from station.qa.register import RegisterResult, register_result
from station.qa.revoke import RevokeDone, RevokeItem, revoke_item, revoke_items
from station.units import Action


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
        return plain_dict(self)  # without certificate_pem (not shown: repr=False)


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
    _check_not_there_yet(ledger, serial, dest.name, revoke_source=revoke_source)
    passed = [r for r in live_records(serial, records) if r.certificate_pem]
    if source is not None:
        source_name = find_target(config, source).name
        passed = [r for r in passed if r.target == source_name]
    if not passed:
        where = _(" in {target}").format(target=source) if source else ""
        raise NotFound(
            _("No certificate to transfer"),
            _("The ledger holds no PASS record of {serial}{where} with its certificate.").format(
                serial=serial, where=where
            ),
            _("Check the serial and the source target with `station show`."),
        )
    record = passed[-1]
    src = find_target(config, record.target)
    if src.registry_key == dest.registry_key:
        raise InputError(
            _("Same registry"),
            _(
                "Target {name!r} is the same account and region as {name2!r}, where {serial} is "
                "registered already."
            ).format(name=dest.name, name2=src.name, serial=serial),
            _("Choose a destination target in another account or region."),
        )
    _target, product, thing_name = unit_names(
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
        all_passed = live_records(serial, records)
        group = [r for r in all_passed if r.target == src.name and r.certificate_id == record.certificate_id]
        source_revoke = revoke_items(all_passed, {(src.name, record.certificate_id): group})
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


def _check_not_there_yet(ledger: Ledger, serial: str, destination: str, *, revoke_source: bool) -> None:
    """`AlreadyDone` when the unit's state says it is registered in `destination` already (a transfer run
    again): nothing to do. With `revoke_source` and the same certificate still live elsewhere, what is left
    is a revoke, which `station revoke` does (`InputError`)."""
    state = unit_state(ledger, serial)
    there = state.live_in(destination) if state is not None else None
    if state is None or there is None:
        return
    elsewhere = sorted(
        i.target for i in state.live if i.target != destination and i.certificate_id == there.certificate_id
    )
    facts = {
        "serial": serial,
        "certificate": there.certificate_id[:12],
        "target": destination,
        "thing": there.thing_name or "-",
    }
    if revoke_source and elsewhere:
        raise InputError(
            _("Already at target"),
            _(
                "{serial}'s certificate {certificate}… is registered in {target} already (thing {thing}); it is "
                "also still registered in {source}."
            ).format(**facts, source=", ".join(elsewhere)),
            _("To remove it there, run `station revoke {serial} --target {source}`.").format(
                serial=serial, source=elsewhere[0]
            ),
        )
    raise AlreadyDone(
        _("Already at target"),
        _("{serial}'s certificate {certificate}… is registered in {target} already (thing {thing}).").format(
            **facts
        ),
        _("Nothing to do: nothing was changed or recorded."),
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
    """Register the unit's certificate in `to` with thing + policy, then optionally revoke it at the source;
    one attempt record. The destination comes first, so the unit is never left with nowhere to connect; a
    failed source revoke raises a StationFault saying the unit already works at the destination."""
    plan = plan or plan_transfer(
        config, ledger, query, to=to, source=source, thing=thing, revoke_source=revoke_source
    )
    dest = find_target(config, plan.destination)
    src = find_target(config, plan.source_target)
    check_aws_acceptance(plan.certificate_pem)
    identity = Identity(plan.certificate_pem, local_certificate_id(plan.certificate_pem))
    factory = registries(config, registry_for)
    base: AttemptRecord | None = next(
        (r for r in ledger.find(plan.source_attempt_id) if r.attempt_id == plan.source_attempt_id), None
    )
    attempt = qa_attempt(
        config, ledger, Action.TRANSFER, serial=plan.serial, operator=operator, on_event=on_event
    )
    data: dict[str, Any] = {
        "certificate_id": identity.certificate_id,
        "source": src.name,
        "destination": dest.name,
        "thing_name": plan.thing_name,
        "revoke_source": plan.revoke_source,
    }
    registry = factory(dest)
    state: dict[str, Any] = {"done": []}

    def body() -> Any:
        attempt.journal_open(
            product=plan.product,
            target=dest.name,
            account_id=dest.registry_key[0],
            region=dest.region,
            certificate_id=identity.certificate_id,
            certificate_pem=identity.certificate_pem,
            thing_name=plan.thing_name,
            stage=Stage.REGISTERING,
        )
        reg, _created = attempt.step(
            "register",
            lambda: register_in_target(attempt, registry, identity, plan.thing_name, origin=plan.origin),
        )
        state["reg"] = reg
        note(
            attempt,
            ok=True,
            title=_("Transferred"),
            message=_(
                "{serial} now works in {target} as {thing_name}: Certificate {certificate}… registered."
            ).format(
                serial=plan.serial,
                target=dest.name,
                thing_name=plan.thing_name,
                certificate=identity.certificate_id[:12],
            ),
            **data,
        )
        if plan.revoke_source:
            # From here the destination is done: a failed source revoke does not undo it.
            attempt.forget("aws")
            source_registry = factory(src)
            for item in plan.source_revoke:
                try:
                    existed = revoke_item(
                        attempt,
                        source_registry,
                        item,
                        extra={"destination": dest.name, "transfer_attempt_id": attempt.attempt_id},
                    )
                    state["done"].append(
                        RevokeDone(item, True, existed=existed, thing_deleted=item.delete_thing)
                    )
                except StationError as error:
                    state["done"].append(
                        RevokeDone(item, False, error={"kind": type(error).__name__, **error_text(error)})
                    )
        return reg

    def conclude(error: StationError | None) -> dict[str, Any]:
        reg = state.get("reg")
        done: list[RevokeDone] = state["done"]
        source_revoked = bool(done) and all(d.ok for d in done)
        if error is not None:
            note(
                attempt,
                ok=False,
                title=error.title,
                message=error.message,
                next_action=error.next_action,
                **data,
            )
            title, message, next_action = error.title, error.message, error.next_action
        else:
            assert reg is not None
            title = _("Transferred")
            where = f"{dest.name} ({(reg.account_id or dest.registry_key[0])}/{dest.region})"
            message = (
                _("{serial} now works in {where} as {thing_name}; revoked in {source}.")
                if source_revoked
                else _("{serial} now works in {where} as {thing_name}; still registered in {source}.")
            ).format(serial=plan.serial, where=where, thing_name=plan.thing_name, source=src.name)
            next_action = ""
        fields = registration_fields(dest, reg, error, title=title, message=message, next_action=next_action)
        fields["extra"].update(
            source_target=src.name,
            source_attempt_id=plan.source_attempt_id,
            source_revoked=source_revoked and error is None,
            revoked=[d.item.certificate_id for d in done if d.ok] if error is None else [],
        )
        return {
            **fields,
            "outcome": str(outcome_of(error, proved=False)),
            "device_id": base.device_id if base is not None else None,
            "firmware": base.firmware if base is not None else None,
            "family": base.family if base is not None else "",
            "product": plan.product,
            "thing_name": plan.thing_name,
            "certificate_id": identity.certificate_id,
            "certificate_pem": identity.certificate_pem,
            "key_source": base.key_source if base is not None else "",
        }

    registration = run_qa(attempt, body, conclude=conclude)
    result: RegisterResult = register_result(
        attempt.attempt_id,
        plan.serial,
        dest,
        plan.thing_name,
        registration,
        operator,
        timings_ms=dict(attempt.timings_ms),
    )
    done: tuple[RevokeDone, ...] = tuple(state["done"])
    failed = [d for d in done if not d.ok]
    if failed:
        message = (failed[0].error or {}).get("message", "")
        raise StationFault(
            _("Transfer half done"),
            _(
                "{serial}'s certificate now works in {name}, but revoking it in {name2} failed: {message}"
            ).format(serial=plan.serial, name=dest.name, name2=src.name, message=message),
            _(
                "Run `station revoke {serial} --target {name}` again; if it keeps failing, call a technician."
            ).format(serial=plan.serial, name=src.name),
        )
    return TransferResult(plan, result, done)
