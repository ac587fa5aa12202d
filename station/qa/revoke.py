"""QA revoke: remove the unit's certificate(s) from the targets they were registered in.

`plan_revoke` reads the ledger alone (every target and certificate the unit's records left live; which thing
may be deleted), so a person can confirm before any AWS call; `revoke_unit` then revokes each item in AWS's
order (detach, deactivate, delete), deleting a thing only where the ledger says the station made it and no
other certificate of the ledger still uses it. Each item is one attempt record, action `revoke`: DONE when
the certificate is gone (also when it already was), FAIL/ERROR otherwise, with `extra.revoked` naming the
certificate ids it removed (what the unit's state reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from station.attempt import Attempt, outcome_of
from station.config import StationConfig
from station.errors import StationError, StationFault
from station.i18n import _
from station.ledger import AttemptRecord, Ledger
from station.plain import plain, plain_dict
from station.qa.common import (
    EventSink,
    NotFound,
    RegistryFactory,
    error_text,
    find_target,
    live_records,
    made_thing,
    note,
    qa_attempt,
    registries,
    run_qa,
    unit_records,
)
from station.units import Action


@dataclass(frozen=True)
class RevokeItem:
    """One certificate to remove from one target, and the thing to delete with it (if any)."""

    target: str
    certificate_id: str
    thing_name: str = ""  # the unit's thing in that target, as recorded
    delete_thing: str | None = None  # the thing to delete after the certificate (only one the station made)
    keep_reason: str = ""  # why the recorded thing is kept

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)


@dataclass(frozen=True)
class RevokePlan:
    """What `revoke_unit` will do, from the ledger alone (shown to a person before they confirm)."""

    serial: str
    items: tuple[RevokeItem, ...]

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(item.target for item in self.items))

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)


@dataclass(frozen=True)
class RevokeDone:
    """The outcome of one `RevokeItem`."""

    item: RevokeItem
    ok: bool
    existed: bool = False  # the certificate was registered there (False: already gone)
    thing_deleted: str | None = None
    error: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.item.as_dict(), **plain_dict(self, exclude=("item",))}


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
        shown = plain_dict(self, exclude=("done",))
        return {"ok": self.ok, **shown, "revoked": self.revoked, "items": plain(self.done)}


def revoke_items(
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
            made = [made_thing(r) for r in users]
            others = {r.certificate_id for r in users} - {c for t, c in chosen if t == target}
            if others:
                reason = _("still used by certificate {certificate}… in the ledger").format(
                    certificate=sorted(others)[0][:12]
                )
            elif True not in made:
                reason = (
                    _("the station did not make it")
                    if False in made
                    else _("the ledger does not say the station made it")
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
    passed = live_records(serial, records)
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
                _("Unknown certificate"),
                _("{serial} has no registered certificate {certificate_id!r} in the ledger.").format(
                    serial=serial, certificate_id=certificate_id
                ),
                _("Check the certificate id with `station show`."),
            )
    return RevokePlan(serial, revoke_items(passed, chosen))


def revoke_item(
    attempt: Attempt,
    registry: Any,
    item: RevokeItem,
    *,
    account_id: str = "",
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """One certificate out of one target, as a step of `attempt`, with its note; returns whether it was
    there. Raises the registry's StationError (the caller's attempt records it)."""
    data = {
        "target": item.target,
        "certificate_id": item.certificate_id,
        "thing_name": item.thing_name,
        **dict(extra or {}),
    }
    try:
        existed = bool(
            attempt.step(
                "revoke", lambda: registry.revoke(item.certificate_id, delete_thing=item.delete_thing)
            )
        )
    except StationError as error:
        note(
            attempt,
            ok=False,
            title=error.title,
            message=error.message,
            next_action=error.next_action,
            action=Action.REVOKE,
            **data,
        )
        raise
    where = f"{item.target} ({registry.where})"
    certificate = f"{item.certificate_id[:12]}…"
    if existed:
        message = _("Certificate {certificate} of {serial} is revoked in {where}").format(
            certificate=certificate, serial=attempt.serial, where=where
        )
    else:
        message = _("Certificate {certificate} was not registered in {where} (already revoked)").format(
            certificate=certificate, where=where
        )
    if item.delete_thing:
        # Registry.revoke treats a thing already gone as deleted; say which case it can be.
        message += (
            _("; thing {thing_name} deleted") if existed else _("; thing {thing_name} removed")
        ).format(thing_name=item.delete_thing)
    elif item.thing_name and item.keep_reason:
        message += _("; thing {thing_name} kept ({reason})").format(
            thing_name=item.thing_name, reason=item.keep_reason
        )
    note(
        attempt,
        ok=True,
        title=_("Certificate revoked") if existed else _("Already revoked"),
        message=message + _("."),
        existed=existed,
        thing_deleted=item.delete_thing,
        action=Action.REVOKE,
        **data,
    )
    return existed


def _revoke_one(
    config: StationConfig,
    ledger: Ledger,
    registry: Any,
    item: RevokeItem,
    *,
    serial: str,
    operator: str,
    on_event: EventSink | None,
    base: AttemptRecord | None,
) -> RevokeDone:
    attempt = qa_attempt(config, ledger, Action.REVOKE, serial=serial, operator=operator, on_event=on_event)
    target = find_target(config, item.target)
    state: dict[str, Any] = {}

    def body() -> bool:
        existed = revoke_item(attempt, registry, item)
        state["existed"] = existed
        return existed

    def conclude(error: StationError | None) -> dict[str, Any]:
        outcome = outcome_of(error, proved=False)
        existed = bool(state.get("existed"))
        if error is None:
            title = _("Certificate revoked") if existed else _("Already revoked")
            message = attempt.events[-1].message if attempt.events else title
        else:
            title, message = error.title, error.message
        return {
            "outcome": str(outcome),
            "product": base.product if base is not None else "",
            "device_id": base.device_id if base is not None else None,
            "thing_name": item.thing_name,
            "certificate_id": item.certificate_id,
            "target": item.target,
            "account_id": (base.account_id if base is not None else "") or target.registry_key[0],
            "region": target.region,
            "title": title,
            "message": message,
            "next_action": error.next_action if error is not None else "",
            "error_kind": type(error).__name__ if error is not None else "",
            "extra": {
                "revoked": [item.certificate_id] if error is None else [],
                "existed": existed,
                "thing_deleted": item.delete_thing if error is None else None,
            },
        }

    try:
        existed = run_qa(
            attempt,
            body,
            conclude=conclude,
            not_recorded=lambda detail: StationFault(
                _("Revoked but not recorded"),
                _("{done} But the ledger could not record it ({detail}).").format(
                    done=attempt.events[-1].message if attempt.events else _("The revoke was done in AWS."),
                    detail=detail,
                ),
                _("Call a technician to check the ledger, and note the revoke by hand."),
            ),
        )
    except StationError as error:
        existed = bool(state.get("existed"))
        done_in_aws = "existed" in state  # AWS did it; only the record failed
        return RevokeDone(
            item,
            False,
            existed=existed,
            thing_deleted=item.delete_thing if done_in_aws else None,
            error={"kind": type(error).__name__, **error_text(error)},
        )
    return RevokeDone(item, True, existed=existed, thing_deleted=item.delete_thing)


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

    Each item is tried even when another fails; each is an attempt record (action revoke) with its
    `qa:revoke` note and the operator. A certificate that is no longer registered counts as done
    (`existed=False`).
    """
    plan = plan or plan_revoke(config, ledger, query, target=target)
    factory = registries(config, registry_for)
    records = ledger.find(plan.serial)
    done = []
    for item in plan.items:
        registry = factory(find_target(config, item.target))
        base = next(
            (
                r
                for r in reversed(records)
                if r.certificate_id == item.certificate_id and r.target == item.target
            ),
            None,
        )
        done.append(
            _revoke_one(
                config,
                ledger,
                registry,
                item,
                serial=plan.serial,
                operator=operator,
                on_event=on_event,
                base=base,
            )
        )
    return RevokeResult(plan.serial, operator, tuple(done))
