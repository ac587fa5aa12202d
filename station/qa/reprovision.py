"""QA re-provision: a unit that has a live identity gets a new one on a slot, then the old one is revoked.

The replace path of the line (`on_reprovision = "replace"`, `station.pipeline`): the unit is put in a jig,
the slot is reserved on the line, and the pipeline provisions and verifies a new identity first, then revokes
the old certificate in AWS (AWS's order); a revoke AWS refuses stays in the journal for reconcile. The plan is
read from the unit's state alone, so a person confirms it before anything is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

from station.config import StationConfig
from station.context import StationContext
from station.errors import InputError
from station.i18n import _
from station.ledger import Ledger
from station.pipeline import UnitResult
from station.plain import plain_dict
from station.qa.common import QA_STEP_PREFIX, NotFound, unit_records, unit_state
from station.qa.reverify import SlotReserver


@dataclass(frozen=True)
class ReprovisionPlan:
    """What `reprovision_unit` will do: provision `serial` on `slot` anew, then revoke `replaces`."""

    serial: str
    slot: str
    product: str
    target: str
    replaces: tuple[str, ...]  # certificate ids live in the target now

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)


def plan_reprovision(config: StationConfig, ledger: Ledger, query: str, *, slot: str) -> ReprovisionPlan:
    serial, records = unit_records(ledger, query)
    if slot not in config.slots:
        raise InputError(
            _("No such slot"),
            _("There is no slot {slot!r}; the slots are {slots}.").format(
                slot=slot, slots=", ".join(config.slots) or "none"
            ),
            _("Put the unit on one of the station's slots and choose that one."),
        )
    latest = records[-1]
    product = latest.product if latest.product in config.products else (config.slots[slot].product or "")
    if product not in config.products:
        raise InputError(
            _("Which product?"),
            _("The records of {serial} name no product this station knows, and slot {slot} has none.").format(
                serial=serial, slot=slot
            ),
            _("Choose a slot configured for the unit's product."),
        )
    target = config.products[product].target
    state = unit_state(ledger, serial)
    replaces = tuple(i.certificate_id for i in (state.live if state else ()) if i.target == target)
    if not replaces:
        raise NotFound(
            _("Nothing to replace"),
            _("{serial} has no live identity in {target}: provision it on the line (scan it).").format(
                serial=serial, target=target
            ),
            _("Scan the unit on the line instead."),
        )
    return ReprovisionPlan(serial, slot, product, target, replaces)


def reprovision_unit(
    config: StationConfig,
    ledger: Ledger,
    plan: ReprovisionPlan,
    *,
    context: StationContext,
    line: SlotReserver | None = None,
) -> UnitResult:
    """Run the plan: the pipeline's replace path on the plan's slot (reserved on the line meanwhile)."""
    request = dataclasses.replace(
        context.prepare(plan.serial, slot=plan.slot, product=plan.product), on_reprovision="replace"
    )
    port = config.slots[plan.slot].port
    reservation = (
        line.reserve(plan.slot, serial=plan.serial, purpose=f"{QA_STEP_PREFIX}reprovision")
        if line is not None
        else contextlib.nullcontext()
    )
    with reservation, context:
        return context.pipeline.run(
            request, open_flasher=lambda: context.open_flasher(plan.slot, port, request)
        )
