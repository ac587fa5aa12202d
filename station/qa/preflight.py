"""QA preflight: every target's read-only checks (credentials, endpoint, policy, policy scope), in parallel.

`iot:*` on `*` is refused for any target not marked lab. With a ledger, the result is a `qa:preflight` note
(and a ledger that cannot be written shows as a failed station check). Nothing in AWS changes.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from typing import Any

from station.attempt import Attempt, EventSink
from station.config import StationConfig
from station.context import registry_factory
from station.errors import StationError
from station.i18n import _, ngettext
from station.ledger import Ledger
from station.model import Target
from station.plain import plain, plain_dict
from station.policy import is_over_broad
from station.qa.common import RegistryFactory, find_target, note
from station.registry import Check

log = logging.getLogger(__name__)


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
        return {**plain_dict(self, exclude=("checks",)), "ok": self.ok, "checks": plain(self.checks)}


@dataclass(frozen=True)
class PreflightReport:
    targets: tuple[TargetReport, ...]
    station: tuple[Check, ...] = ()  # checks of the station itself (the ledger)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.station) and all(t.ok for t in self.targets)

    def as_dict(self) -> dict[str, Any]:
        # The station's own checks first, as people read the report (the fields are the other way round).
        return {"ok": self.ok, "station": plain(self.station), "targets": plain(self.targets)}


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
    # Preflight answers quickly: few retries and short timeouts, so an unreachable target fails in seconds.
    factory = registry_for or registry_factory(config.station_id, quick=True)
    workers = max(1, min(max_workers, len(targets)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preflight") as pool:
        reports = tuple(pool.map(lambda t: _preflight_target(t, factory), targets))
    station: list[Check] = []
    if ledger is not None:
        failed = [f"{r.target}: {c.name}" for r in reports for c in r.checks if not c.ok]
        attempt = Attempt(
            ledger,
            serial="",
            action="preflight",
            slot="qa",
            station_id=config.station_id,
            operator=operator,
            on_event=on_event,
        )
        event = note(
            attempt,
            ok=not failed,
            title=_("Preflight passed") if not failed else _("Preflight failed"),
            message="; ".join(failed)
            if failed
            else ngettext("{count} target checked.", "{count} targets checked.", len(reports)).format(
                count=len(reports)
            ),
            targets={r.target: r.ok for r in reports},
        )
        try:
            ledger.append_event(event)
            station.append(Check("ledger", True, "The ledger is writable."))
        except StationError as error:
            station.append(Check("ledger", False, error.message, error.next_action))
    return PreflightReport(reports, tuple(station))
