"""The QA desk's actions, as a thin adapter over the station's QA library (`station.qa`) and the ledger.

Each method is a plain blocking function meant to run in a thread worker, never on the UI thread. What
changes AWS or a unit goes through `station.qa`, exactly as `station register | revoke | transfer` do, so the
desk and the CLI record the same things the same way: an attempt record where the library writes one
(register, transfer, re-verify) and a `qa:<action>` note event with the operator for every action, also a
failed one. Search, audit trail, ledger check and export are the ledger's own API, unrecorded as in the CLI.
What this module adds is only what a desk needs: the record under the cursor turned into the library's
query, a plan turned into the sentence a person confirms, a result turned into a title and one sentence.

The desk's lists: `recent` pages units newest first through the ledger's indexed `unit_page` (filters by
state, outcome, target, station and time, the same as `station units`); `search` finds units by serial (any
case), thing name or certificate id (prefix) through `find_units`. Both give each unit with its latest record
(the row an action works on). Labels: `label_preview` draws the unit's label for the terminal and `reprint`
sends it to the configured printer, recorded as a `qa:reprint` note with the person.

Re-verify reserves the slot on the line (`Line.reserve`) so no unit starts there meanwhile; a line without
reservations (a test stand-in) is only asked whether the slot is idle.

It lives in the core, not in the TUI: the command that opens the screen (`station run`, `station demo`) builds
it and hands it to the app, which sees it only as `station.tui.api.QaServicesAPI` — so the TUI reaches no
AWS library, not even through this module. It imports station core modules lazily (boto3 and cryptography
load when QA first acts, not when the operator screen starts), never textual nor the lab. It never holds a
private key: an imported file's key is dropped before anything is registered.
"""

from __future__ import annotations

import contextlib
import logging
import re
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.errors import InputError, StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.model import Event, Target
from station.units import UnitFilter

if TYPE_CHECKING:
    from station.qa import RevokeDone, RevokePlan, TransferPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionResult:
    """What a QA action did, in a title and one sentence for a notification."""

    title: str
    message: str


@dataclass(frozen=True)
class Prepared:
    """An action planned from the ledger alone, with what the person is asked before anything is done."""

    title: str
    body: str
    confirm_label: str
    plan: Any  # the library's plan (RevokePlan, TransferPlan), handed back unchanged once confirmed


PAGE_SIZE = 50  # units per page of the desk's list
SIGN_IN_SERIAL = "sign-in"  # the ledger "serial" sign-in notes are filed under


@dataclass(frozen=True)
class UnitRow:
    """A unit in the desk's list: its current state and its latest attempt record (None if unreadable)."""

    unit: Any  # station.units.UnitState
    record: Any  # station.ledger.AttemptRecord | None


@dataclass(frozen=True)
class UnitList:
    """One page of the desk's list, newest first; `next_cursor` continues it (None: no more)."""

    rows: list[UnitRow]
    next_cursor: str | None = None


def _short(certificate_id: str) -> str:
    return f"{certificate_id[:12]}…" if certificate_id else _("(none)")


class _IdleCheck:
    """A stand-in for `Line.reserve` on a line without reservations: refuses a slot that is not idle, and
    cannot hold it (documented gap: only the real line keeps units off the slot meanwhile)."""

    def __init__(self, line: Any) -> None:
        self._line = line

    def reserve(
        self, slot: str, *, serial: str = "", purpose: str = ""
    ) -> contextlib.AbstractContextManager[Any]:
        state = {s.name: s for s in self._line.slots()}.get(slot)
        if state is not None and state.state != "idle":
            raise InputError(
                _("Slot busy"),
                (
                    _("Slot {slot} is {state} with {serial}.")
                    if state.serial
                    else _("Slot {slot} is {state}.")
                ).format(slot=slot, state=state.state, serial=state.serial),
                _("Wait for it, or put the unit on a free slot."),
            )
        return contextlib.nullcontext()


class QaServices:
    """The QA desk's view of the core. Registries are made once per target and shared by every action.

    `registry_factory(target)` and `flasher_factory(port, *, family, baud, options)` replace the real ones
    (the lab, the demo and tests inject theirs); `line` lends re-verify its slot. `station_id` names the
    station to the registries it makes (default: the config's); the ledger's notes use the config's.
    `operator` records the actions (default: the config's operator, as the screen's header shows it).
    """

    def __init__(
        self,
        config: Any,
        ledger: Any,
        *,
        operator: str | None = None,
        line: Any = None,
        registry_factory: Callable[[Target], Any] | None = None,
        flasher_factory: Callable[..., Any] | None = None,
        station_id: str | None = None,
        put_in_jig: Callable[[Any, str], None] | None = None,
    ) -> None:
        self.config = config
        # (record, slot): put the recorded unit into the slot's jig before a re-verify (the demo's jigs).
        self._put_in_jig = put_in_jig
        self.ledger = ledger
        self.operator = operator or str(getattr(config, "operator", None) or "") or "operator"
        self.line = line
        self.station_id = station_id or str(getattr(config, "station_id", "") or "") or "station"
        self._registry_factory = registry_factory
        self._flasher_factory = flasher_factory
        self._lock = threading.Lock()
        self._registries: dict[str, Any] = {}
        self._context: Any = None

    # ------------------------------------------------------------------------------------------ lookups
    def target_names(self) -> list[str]:
        return list(getattr(self.config, "targets", {}) or {})

    def product_names(self) -> list[str]:
        return list(getattr(self.config, "products", {}) or {})

    def target_places(self) -> dict[str, tuple[str, str]]:
        """Each target's name → (account, region), for the desk's target filter."""
        places = {}
        for name, target in (getattr(self.config, "targets", {}) or {}).items():
            account = getattr(target, "account_id", None) or getattr(target, "profile", None) or "?"
            places[name] = (str(account), str(getattr(target, "region", "")))
        return places

    def printer(self) -> str | None:
        """Where reprinted labels go (`[station.labels] printer`), or None when the station prints none."""
        settings = getattr(self.config, "labels", None)
        return settings.printer if settings is not None else None

    def slot_names(self) -> list[str]:
        return list(getattr(self.config, "slots", {}) or {})

    def find(self, query: str) -> list[Any]:
        """Attempt records by serial, thing name, attempt id or certificate id (prefix), newest first."""
        query = query.strip()
        if not query:
            raise InputError(
                _("Nothing to search"),
                _("The search field is empty."),
                _("Type a serial, thing name or certificate id."),
            )
        records = list(self.ledger.find(query))
        records.sort(key=lambda r: getattr(r, "finished_at", 0.0) or 0.0, reverse=True)
        return records

    def recent(
        self, filters: UnitFilter | None = None, *, after: str | None = None, limit: int = PAGE_SIZE
    ) -> UnitList:
        """Units newest first (one page, through the ledger's indexed `unit_page`), each with its latest
        record; `after` is the previous page's `next_cursor`."""
        page = self.ledger.unit_page(**(filters or UnitFilter()).query(), after=after, limit=limit)
        return UnitList(self._rows(page.units), page.next_cursor)

    def search(self, query: str, filters: UnitFilter | None = None) -> list[UnitRow]:
        """Units whose serial, thing name or certificate id (or its first 8+ hex characters) is `query`, in
        any case, newest first, narrowed by `filters`. The ledger's thing-name index is exact, so a thing name
        in another case is read back to its serial through the targets' thing-name templates."""
        query = query.strip()
        if not query:
            raise InputError(
                _("Nothing to search"),
                _("The search field is empty."),
                _("Type a serial, thing name or certificate id."),
            )
        found: dict[str, Any] = {}
        for variant in dict.fromkeys((query, query.lower(), query.upper())):
            for unit in self.ledger.find_units(variant):
                found.setdefault(unit.serial, unit)
        thing = query.casefold()
        for serial in self._serials_named(query):
            for unit in self.ledger.find_units(serial):
                live = {i.thing_name.casefold() for i in unit.live}
                records = {r.thing_name.casefold() for r in self.ledger.find(unit.serial)}
                if thing in live | records:
                    found.setdefault(unit.serial, unit)
        rows = self._rows(list(found.values()))
        rows.sort(key=lambda row: _row_time(row), reverse=True)
        wanted = filters or UnitFilter()
        return [row for row in rows if wanted.matches(row.unit, row.record)]

    def _serials_named(self, query: str) -> list[str]:
        """The serials a thing name could have been made from, by each target's thing-name template
        (`{product}-{serial}` → "WIDGET-SN0001" gives "SN0001"), matched in any case."""
        serials: list[str] = []
        for target in (getattr(self.config, "targets", {}) or {}).values():
            pattern = _template_regex(getattr(target, "thing_name_template", "") or "")
            match = pattern.fullmatch(query) if pattern is not None else None
            if match is not None and match.group("serial"):
                serials.append(match.group("serial"))
        return list(dict.fromkeys(serials))

    def unit_records(self, serial: str) -> list[Any]:
        """Every attempt record of one unit (exact serial), newest first."""
        records = [r for r in self.ledger.find(serial) if r.serial == serial]
        records.sort(key=lambda r: r.finished_at or r.started_at, reverse=True)
        return records

    def _rows(self, units: Sequence[Any]) -> list[UnitRow]:
        # One read for the page's records. `_latest_records` is the ledger's own page read (both backends
        # have it; `Ledger.units` uses it the same way): one round trip, not one per unit.
        latest = self.ledger._latest_records([u.last_attempt_id for u in units if u.last_attempt_id])
        return [UnitRow(u, latest.get(u.last_attempt_id)) for u in units]

    def events(self, serials: Sequence[str]) -> list[Any]:
        """The audit trail (ledger events) of these serials, in chain order."""
        found = [e for serial in dict.fromkeys(serials) for e in self.ledger.events(serial)]
        found.sort(key=lambda e: getattr(e, "seq", 0))
        return found

    # ------------------------------------------------------------------------------------------ ledger
    def audit(self) -> ActionResult:
        """`station audit verify` at the desk: the hash chain is intact, or StationFault naming the bad row."""
        result = self.ledger.audit()
        if result.ok:
            return ActionResult(
                _("Ledger intact"),
                _("{count} rows checked; the hash chain is unbroken.").format(count=result.checked),
            )
        raise StationFault(
            _("Ledger tampered"),
            _("The hash chain breaks at {first_bad_row}: {reason}.").format(
                first_bad_row=result.first_bad_row, reason=result.reason
            ),
            _(
                "Do not ship; keep a copy of the ledger as evidence and call the quality lead with this message."
            ),
        )

    def export(self, fmt: str, path: str) -> ActionResult:
        """`station export --format FMT --out PATH` at the desk: every attempt record, CSV or JSON."""
        if fmt not in ("csv", "json"):
            raise InputError(
                _("Unknown format"),
                _("{fmt!r} is not an export format.").format(fmt=fmt),
                _("Choose csv or json."),
            )
        out = Path(path).expanduser()
        if not path.strip() or out.is_dir():
            raise InputError(
                _("No file name"),
                _("{path!r} is not a file path.").format(path=path),
                _("Type a file path such as records.csv."),
            )
        if not out.parent.is_dir():
            raise InputError(
                _("No such folder"),
                _("The folder {parent} does not exist.").format(parent=out.parent),
                _("Type a path in an existing folder."),
            )
        try:
            count = self.ledger.export(fmt, out)
        except OSError as error:
            raise InputError(
                _("Cannot write the file"),
                _("{out} cannot be written ({error_type}).").format(
                    out=out, error_type=error.strerror or type(error).__name__
                ),
                _("Choose a path you may write to."),
            ) from None
        return ActionResult(
            _("Records exported"),
            _("{count} records written to {out} ({format}).").format(count=count, out=out, format=fmt),
        )

    # ------------------------------------------------------------------------------------------ parts
    def registry(self, target: Target) -> Any:
        """The one registry of `target` for this desk (made on first use)."""
        with self._lock:
            registry = self._registries.get(target.name)
            if registry is None:
                if self._registry_factory is not None:
                    registry = self._registry_factory(target)
                else:
                    from station.context import default_registry_factory  # boto3 loads when QA acts

                    registry = default_registry_factory(target, station_id=self.station_id)
                self._registries[target.name] = registry
            return registry

    def _wiring(self) -> Any:
        """The station's wiring for re-verify: the slot's flasher through the configured (or injected) factory."""
        with self._lock:
            if self._context is None:
                from station.context import StationContext

                self._context = StationContext(
                    self.config,
                    ledger=self.ledger,
                    flasher_factory=self._flasher_factory,
                    registry_factory=self.registry,
                    station_id=self.station_id,
                    operator=self.operator,
                )
            return self._context

    def _reserver(self) -> Any:
        if self.line is None:
            return None
        if callable(getattr(self.line, "reserve", None)):
            return self.line
        return _IdleCheck(self.line)

    @staticmethod
    def _guard(action: str, call: Callable[[], Any]) -> Any:
        """A StationError passes as is; anything else becomes an ERROR the desk can show (details logged)."""
        try:
            return call()
        except StationError:
            raise
        except Exception as error:
            log.exception("QA %s failed unexpectedly", action)
            raise StationFault(
                _("{what} failed").format(what=_(action).capitalize()),
                _(
                    "The station could not {action} ({error_type}); the details are in the station log."
                ).format(action=_(action), error_type=type(error).__name__),
                _("Try again; if it fails again, call a technician."),
            ) from error

    # ------------------------------------------------------------------------------------------ revoke
    def prepare_revoke(self, record: Any) -> Prepared:
        """What revoking the record's certificate in its target means (from the ledger), to be confirmed."""
        if not getattr(record, "certificate_id", ""):
            raise InputError(
                _("Nothing to revoke"),
                _("The record of {serial} has no certificate (the attempt never got that far).").format(
                    serial=record.serial
                ),
                _("Pick a record with a certificate id."),
            )
        from station import qa  # loads boto3 and cryptography: only once QA acts

        plan: RevokePlan = self._guard(
            N_("plan the revoke"),
            lambda: qa.plan_revoke(
                self.config,
                self.ledger,
                record.serial,
                target=record.target,
                certificate_id=record.certificate_id,
            ),
        )
        parts = []
        for item in plan.items:
            text = _(
                "Certificate {certificate} will be detached, deactivated and deleted in {target}"
            ).format(certificate=_short(item.certificate_id), target=item.target)
            if item.delete_thing:
                text += _(", and thing {thing} deleted (the station made it)").format(thing=item.delete_thing)
            elif item.thing_name:
                text += _("; thing {thing} is kept ({reason})").format(
                    thing=item.thing_name, reason=item.keep_reason or _("not made by the station")
                )
            parts.append(text + _("."))
        body = " ".join(parts) + _(
            " The unit will no longer connect to {targets}. Recorded as {operator}."
        ).format(targets=", ".join(plan.targets), operator=self.operator)
        return Prepared(_("Revoke {serial}?").format(serial=plan.serial), body, _("Revoke"), plan)

    def revoke(self, record: Any, *, plan: RevokePlan | None = None) -> ActionResult:
        """Revoke the record's certificate in its target through `station.qa.revoke_unit` (the plan, once
        confirmed); each item is recorded as a `qa:revoke` note with the operator by the library."""
        from station import qa  # loads boto3 and cryptography: only once QA acts

        if plan is None:
            plan = self.prepare_revoke(record).plan
        assert plan is not None
        confirmed = plan
        result = self._guard(
            N_("revoke"),
            lambda: qa.revoke_unit(
                self.config,
                self.ledger,
                confirmed.serial,
                operator=self.operator,
                plan=confirmed,
                registry_for=self.registry,
            ),
        )
        failed = [d for d in result.done if not d.ok]
        if failed:
            raise _revoke_failure(failed[0], [d for d in result.done if d.ok])
        if result.revoked == 0:
            where = ", ".join(d.item.target for d in result.done)
            return ActionResult(
                _("Already revoked"),
                _("{serial}'s certificate was not registered in {where} any more.").format(
                    serial=result.serial, where=where
                ),
            )
        return ActionResult(
            _("Certificate revoked"), " ".join(_revoked_text(result.serial, d) for d in result.done)
        )

    # ------------------------------------------------------------------------------------------ transfer
    def prepare_transfer(self, record: Any, destination: str, *, revoke_source: bool) -> Prepared:
        """What moving the record's certificate to `destination` means (from the ledger), to be confirmed."""
        from station import qa  # loads boto3 and cryptography: only once QA acts

        plan: TransferPlan = self._guard(
            N_("plan the transfer"),
            lambda: qa.plan_transfer(
                self.config,
                self.ledger,
                record.serial,
                to=destination,
                source=record.target or None,
                revoke_source=revoke_source,
            ),
        )
        dest = self.config.target(plan.destination)
        account, region = dest.registry_key
        body = _(
            "Certificate {certificate} will be registered in {destination} ({account}/{region}) as thing "
            "{thing}, with the target's policy"
        ).format(
            certificate=_short(plan.certificate_id),
            destination=plan.destination,
            account=account,
            region=region,
            thing=plan.thing_name,
        )
        if plan.revoke_source:
            body += _("; then it is revoked in {source}.").format(source=plan.source_target)
        else:
            body += _("; it stays registered in {source}.").format(source=plan.source_target)
        body += _(" Recorded as {operator}.").format(operator=self.operator)
        title = _("Transfer {serial} to {destination}?").format(
            serial=plan.serial, destination=plan.destination
        )
        return Prepared(title, body, _("Transfer"), plan)

    def transfer(
        self, record: Any, destination: str, *, revoke_source: bool, plan: TransferPlan | None = None
    ) -> ActionResult:
        """Register the record's certificate in `destination` (thing + policy) through
        `station.qa.transfer_unit`; optionally revoke it at the source. Recorded by the library."""
        from station import qa  # loads boto3 and cryptography: only once QA acts

        if plan is None:
            plan = self.prepare_transfer(record, destination, revoke_source=revoke_source).plan
        assert plan is not None
        confirmed = plan
        result = self._guard(
            N_("transfer"),
            lambda: qa.transfer_unit(
                self.config,
                self.ledger,
                confirmed.serial,
                to=confirmed.destination,
                operator=self.operator,
                plan=confirmed,
                registry_for=self.registry,
            ),
        )
        reg = result.registration
        if confirmed.revoke_source:
            text = _(
                "{serial} now works in {target} ({account}/{region}) as {thing_name}; revoked in {source}."
            )
        else:
            text = _(
                "{serial} now works in {target} ({account}/{region}) as {thing_name}; still registered in {source}."
            )
        return ActionResult(
            _("Certificate transferred"),
            text.format(
                serial=confirmed.serial,
                target=reg.target,
                account=reg.account_id,
                region=reg.region,
                thing_name=reg.thing_name,
                source=confirmed.source_target,
            ),
        )

    # ------------------------------------------------------------------------------------------ import
    def import_certificate(
        self,
        path: str,
        *,
        password: str | None,
        serial: str,
        target: str,
        product: str | None = None,
        thing: str | None = None,
        key_path: str | None = None,
        verify: bool = False,
    ) -> ActionResult:
        """Register a certificate from files for unit `serial` in `target`: the same function as `station
        register` (`station.qa.register_files`, record + `qa:register` note).

        `path` is the certificate (PEM, DER/.cer or PKCS#12); `key_path` the key (PEM/DER or the keychain's
        .p12). A key is used in memory for the verify only, never kept. Without verify the unit is recorded
        as registered (not verified), never PASS.
        """
        if not path.strip():
            raise InputError(
                _("No file"),
                _("The certificate file path is empty."),
                _("Type the path of a .pem, .der, .cer or .p12 file."),
            )
        from station import qa  # loads boto3 and cryptography: only once QA acts

        cert = Path(path.strip()).expanduser()
        key = Path(key_path.strip()).expanduser() if key_path and key_path.strip() else None
        files: dict[str, Any] = {"cert": cert}
        if key is not None:
            files["p12" if key.suffix.lower() in (".p12", ".pfx") else "key"] = key
        result = self._guard(
            N_("register"),
            lambda: qa.register_files(
                self.config,
                self.ledger,
                password=password or None,
                serial=serial,
                target=target,
                operator=self.operator,
                product=product or None,
                thing=thing or None,
                verify=verify,
                registry_for=self.registry,
                **files,
            ),
        )
        if result.verify is not None:
            title = _("Certificate registered and verified")
        elif result.changed:
            title = _("Certificate registered (not verified)")
        else:
            title = _("Already registered (not verified)")
        return ActionResult(title, result.message)

    # ------------------------------------------------------------------------------------------ re-verify
    def reverify(
        self,
        record: Any,
        slot: str | None,
        *,
        key_path: str | None = None,
        password: str | None = None,
    ) -> ActionResult:
        """Re-verify the record's unit: on `slot` (reserved on the line meanwhile; in the demo the recorded
        unit is put back in that jig first), or — without a slot — from the station with the unit's key file
        (e.g. its .p12): `station.qa.reverify_unit`. Recorded by the library."""
        from station import qa  # loads boto3 and cryptography: only once QA acts

        identity = None
        if not slot:
            if key_path and key_path.strip():
                key = Path(key_path.strip()).expanduser()
                identity = self._guard(
                    N_("read the key file"),
                    lambda: qa.load_certificate(None, p12=key, password=password or None),
                )
        elif self._put_in_jig is not None:
            # The unit whose identity is re-verified (the row may be a later record without one, e.g. a
            # refused re-scan) goes into the jig.
            put = self._put_in_jig
            checked = self._guard(
                N_("find the record to re-verify"),
                lambda: qa.reverify_record(
                    self.config,
                    self.ledger,
                    record.serial,
                    target=record.target or None,
                    certificate_id=record.certificate_id or None,
                ),
            )
            self._guard(N_("put the unit in the jig"), lambda: put(checked, slot))
        try:
            result = self._guard(
                N_("re-verify"),
                lambda: qa.reverify_unit(
                    self.config,
                    self.ledger,
                    record.serial,
                    slot=slot or None,
                    identity=identity,
                    operator=self.operator,
                    target=record.target or None,
                    certificate_id=record.certificate_id or None,
                    line=self._reserver(),
                    context=self._wiring(),
                    registry_for=self.registry,
                ),
            )
        finally:
            identity = None  # the key goes no further
        return ActionResult(_("Re-verified"), result.message)

    def default_slot(self, record: Any) -> str | None:
        """The slot to preselect for a re-verify: the one the unit was provisioned on, if this station has it."""
        slot = getattr(record, "slot", "")
        return slot if slot in self.slot_names() else None

    # ------------------------------------------------------------------------------------------ unit state
    def unit(self, serial: str) -> Any:
        """The unit's current state (`station.units.UnitState`), or None."""
        from station.qa.common import unit_state

        return unit_state(self.ledger, serial)

    # ------------------------------------------------------------------------------------------ people
    def act_as(self, person: str) -> None:
        """Record every action from now on as `person` (the one whose QA PIN opened the desk)."""
        with self._lock:
            self.operator = person
            if self._context is not None:
                self._context.operator = person

    def record_sign_in(self, person: str) -> None:
        """A `note` in the ledger that `person` signed in at this station (filed under `SIGN_IN_SERIAL`, so
        `station show sign-in` lists who worked when)."""
        self.ledger.append_event(
            Event(
                "note",
                SIGN_IN_SERIAL,
                step="operator:sign_in",
                outcome="ok",
                title="Signed in",
                message=f"{person} signed in at {self.station_id}.",
                data={"operator": person, "station_id": self.station_id},
                at=time.time(),
            )
        )

    # ------------------------------------------------------------------------------------------ labels
    def _label(self, record: Any) -> Any:
        from station.labels import label_for

        if not getattr(record, "certificate_id", "") or not getattr(record, "thing_name", ""):
            raise InputError(
                _("No label"),
                _("The record of {serial} has no certificate or thing, so it has no label.").format(
                    serial=record.serial
                ),
                _("Pick a record of a provisioned unit."),
            )
        return label_for(
            thing_name=record.thing_name,
            serial=record.serial,
            certificate_id=record.certificate_id,
            at=record.finished_at or record.started_at or time.time(),
            station_id=record.station_id or self.station_id,
        )

    def label_preview(self, record: Any) -> str:
        """The record's label as the printer prints it, drawn for a terminal (text lines and the QR code)."""
        from station.labels import DEFAULT_PAYLOAD, preview_text

        settings = getattr(self.config, "labels", None)
        template = settings.qr_payload if settings is not None else DEFAULT_PAYLOAD
        return preview_text(self._label(record), template)

    def reprint(self, record: Any) -> ActionResult:
        """Print the record's label again on the configured printer, recorded as a `qa:reprint` note with
        the person (also when it fails)."""
        from station.labels import LabelPrinter

        settings = getattr(self.config, "labels", None)
        if settings is None:
            raise InputError(
                _("No label printer"),
                _("This station has no label printer configured."),
                _('Add [station.labels] printer = "tcp://HOST:9100" to station.toml.'),
            )
        label = self._label(record)
        printer = LabelPrinter(
            settings.printer,
            qr_payload=settings.qr_payload,
            timeout_s=settings.timeout_s,
            station_id=self.station_id,
        )
        error: StationError | None = None
        try:
            self._guard("reprint", lambda: printer.print_now(label))
        except StationError as failed:
            error = failed
        self.ledger.append_event(
            Event(
                "note",
                record.serial,
                step="qa:reprint",
                outcome="failed" if error else "ok",
                title=error.title if error else "Label reprinted",
                message=error.message
                if error
                else f"Label of {record.thing_name} sent to {settings.printer}.",
                data={
                    "operator": self.operator,
                    "action": "reprint",
                    "station_id": self.station_id,
                    "certificate_id": record.certificate_id,
                    "thing_name": record.thing_name,
                    "printer": settings.printer,
                },
                at=time.time(),
            )
        )
        if error is not None:
            raise error
        return ActionResult(
            _("Label reprinted"),
            _("The label of {serial} ({thing}) went to {printer}.").format(
                serial=record.serial, thing=record.thing_name, printer=settings.printer
            ),
        )

    # ------------------------------------------------------------------------------------------ re-provision
    def prepare_reprovision(self, record: Any, slot: str) -> Prepared:
        """What re-provisioning the unit on `slot` means (from its state), to be confirmed."""
        from station import qa  # loads boto3 and cryptography: only once QA acts

        plan = self._guard(
            N_("plan the re-provision"),
            lambda: qa.plan_reprovision(self.config, self.ledger, record.serial, slot=slot),
        )
        old = ", ".join(_short(c) for c in plan.replaces)
        body = _(
            "A new identity will be made for {serial} on {slot}, registered in {target} and verified; only "
            "then is its certificate {old} detached, deactivated and deleted. Put the unit in {slot}'s jig "
            "first. Recorded as {operator}."
        ).format(serial=plan.serial, slot=slot, target=plan.target, old=old, operator=self.operator)
        return Prepared(_("Re-provision {serial}?").format(serial=plan.serial), body, _("Re-provision"), plan)

    def reprovision(self, record: Any, slot: str, *, plan: Any = None) -> ActionResult:
        """The line's replace path for the unit on `slot` (`station.qa.reprovision_unit`)."""
        from station import qa  # loads boto3 and cryptography: only once QA acts

        if plan is None:
            plan = self.prepare_reprovision(record, slot).plan
        confirmed = plan
        if self._put_in_jig is not None:
            put = self._put_in_jig
            live = self._guard(
                N_("find the unit's record"),
                lambda: qa.reverify_record(
                    self.config, self.ledger, record.serial, target=None, certificate_id=None
                ),
            )
            self._guard(N_("put the unit in the jig"), lambda: put(live, slot))
        result = self._guard(
            N_("re-provision"),
            lambda: qa.reprovision_unit(
                self.config, self.ledger, confirmed, context=self._wiring(), line=self._reserver()
            ),
        )
        if str(result.outcome) != "PASS":
            cls = UnitFault if str(result.outcome) == "FAIL" else StationFault
            raise cls(result.title, result.message, result.next_action)
        return ActionResult(_("Re-provisioned"), result.message)


def _template_regex(template: str) -> re.Pattern[str] | None:
    """A thing-name template as a case-insensitive regex capturing `serial` (None without a serial field)."""
    parts: list[str] = []
    seen = False
    try:
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            parts.append(re.escape(literal))
            if name == "serial" and not seen:
                parts.append("(?P<serial>.+?)")
                seen = True
            elif name is not None:
                parts.append(".+?")
    except ValueError:
        return None
    return re.compile("".join(parts), re.IGNORECASE) if seen else None


def _row_time(row: UnitRow) -> float:
    record = row.record
    if record is not None:
        return float(record.finished_at or record.started_at or 0.0)
    return float(row.unit.state_changed_at or 0.0)


def _revoked_text(serial: str, done: RevokeDone) -> str:
    item = done.item
    if not done.existed:
        text = _("Certificate {certificate} was not registered in {target} any more").format(
            certificate=_short(item.certificate_id), target=item.target
        )
    else:
        text = _("Certificate {certificate} of {serial} is revoked in {target}").format(
            certificate=_short(item.certificate_id), serial=serial, target=item.target
        )
    if done.thing_deleted:
        text += _("; thing {thing_name} deleted").format(thing_name=done.thing_deleted)
    elif item.thing_name:
        text += _("; thing {thing_name} kept").format(thing_name=item.thing_name)
    return text + _(".")


def _revoke_failure(first: RevokeDone, done_ok: list[RevokeDone]) -> StationError:
    """The first failed item as the error the desk shows (its own family), naming what did succeed."""
    problem = first.error or {}
    message = problem.get("message", "") or _("Revoking in {target} failed.").format(target=first.item.target)
    if done_ok:
        message += _(" Done meanwhile: {targets}.").format(targets=", ".join(d.item.target for d in done_ok))
    cls = UnitFault if problem.get("kind") == "UnitFault" else StationFault
    return cls(
        problem.get("title", "") or _("Revoke failed"),
        message,
        problem.get("next_action", "") or _("Try again; if it fails again, call a technician."),
    )
