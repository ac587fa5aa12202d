"""The QA desk's actions, as calls into the station's core: find, audit trail, revoke, transfer, import,
export, re-verify. Each is a plain blocking function meant to run in a thread worker, never on the UI thread.

Every action that changes something is written to the ledger's event log as a `note` event carrying the
action, the operator, what it acted on and whether it worked (also when it failed), so the audit trail
says who revoked or moved a certificate and when.

Gaps in the core this module fills (and that belong in the core later):
- re-verify: there is no core function yet; `reverify` asks the line's slot to be idle, then uses the
  wiring (`station.context.StationContext`) to open the unit's flasher and the registry to check the
  certificate and run the device's own verify. The line does not reserve the slot meanwhile.
- QA actions have no record type of their own: they are `note` events (step `qa:<action>`).

It imports only station core modules (never boto3, serial, awscrt or cryptography directly, nor textual)
and never holds a private key: an imported file's key is dropped before anything is registered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.errors import InputError, StationError, StationFault, UnitFault
from station.model import Event, Identity, Target

QA_STEP_PREFIX = "qa:"


@dataclass(frozen=True)
class ActionResult:
    """What a QA action did, in a title and one sentence for a notification."""

    title: str
    message: str


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class QaServices:
    """The QA desk's view of the core. Thread-safe enough for one desk: registries are made once per target.

    `registry_factory(target)` and `flasher_factory(port, *, family, baud, options)` replace the real ones
    (the lab, the demo and tests inject theirs); `line` is asked whether a slot is free before re-verify.
    """

    def __init__(
        self,
        config: Any,
        ledger: Any,
        *,
        operator: str,
        line: Any = None,
        registry_factory: Callable[[Target], Any] | None = None,
        flasher_factory: Callable[..., Any] | None = None,
        station_id: str | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.operator = operator
        self.line = line
        self.station_id = station_id or _text(getattr(config, "station_id", "")) or "station"
        self._registry_factory = registry_factory
        self._flasher_factory = flasher_factory
        self._lock = threading.Lock()
        self._registries: dict[str, Any] = {}
        self._context: Any = None

    # ------------------------------------------------------------------------------------------ lookups
    def target_names(self) -> list[str]:
        return list(getattr(self.config, "targets", {}) or {})

    def slot_names(self) -> list[str]:
        return list(getattr(self.config, "slots", {}) or {})

    def find(self, query: str) -> list[Any]:
        """Attempt records by serial, thing name, attempt id or certificate id (prefix), newest first."""
        query = query.strip()
        if not query:
            raise InputError(
                "Nothing to search",
                "The search field is empty.",
                "Type a serial, thing name or certificate id.",
            )
        records = list(self.ledger.find(query))
        records.sort(key=lambda r: getattr(r, "finished_at", 0.0) or 0.0, reverse=True)
        return records

    def events(self, serials: Sequence[str]) -> list[Any]:
        """The audit trail (ledger events) of these serials, in chain order."""
        found = [e for serial in dict.fromkeys(serials) for e in self.ledger.events(serial)]
        found.sort(key=lambda e: getattr(e, "seq", 0))
        return found

    def audit(self) -> ActionResult:
        result = self.ledger.audit()
        if result.ok:
            return ActionResult(
                "Ledger intact", f"{result.checked} rows checked; the hash chain is unbroken."
            )
        raise StationFault(
            "Ledger tampered",
            f"The hash chain breaks at {result.first_bad_row}: {result.reason}.",
            "Do not ship; call the quality lead with this message.",
        )

    # ------------------------------------------------------------------------------------------ parts
    def registry(self, target: Target) -> Any:
        with self._lock:
            registry = self._registries.get(target.name)
            if registry is None:
                if self._registry_factory is not None:
                    registry = self._registry_factory(target)
                else:
                    from station.registry import Registry  # boto3 is loaded only when QA acts

                    registry = Registry(target, station_id=self.station_id)
                self._registries[target.name] = registry
            return registry

    def _target(self, name: str) -> Target:
        target: Target = self.config.target(name)
        return target

    def _wiring(self) -> Any:
        with self._lock:
            if self._context is None:
                from station.context import StationContext

                self._context = StationContext(
                    self.config,
                    ledger=self.ledger,
                    flasher_factory=self._flasher_factory,
                    registry_factory=self._registry_factory,
                    station_id=self.station_id,
                    operator=self.operator,
                )
            return self._context

    # ------------------------------------------------------------------------------------------ record
    def _note(self, action: str, serial: str, ok: bool, message: str, **data: Any) -> None:
        """Write the action to the ledger's event log, with the operator (also when the action failed)."""
        event = Event(
            kind="note",
            serial=serial or "-",
            step=f"{QA_STEP_PREFIX}{action}",
            outcome="ok" if ok else "failed",
            title=f"QA {action}",
            message=message,
            data={"operator": self.operator, "action": action, "station_id": self.station_id, **data},
        )
        self.ledger.append_event(event)

    def _run(
        self, action: str, serial: str, data: dict[str, Any], fn: Callable[[], ActionResult]
    ) -> ActionResult:
        try:
            result = fn()
        except StationError as error:
            self._note(action, serial, False, f"{error.title}: {error.message}", **data)
            raise
        except Exception as error:
            self._note(action, serial, False, type(error).__name__, **data)
            raise StationFault(
                f"{action.capitalize()} failed",
                f"The station could not {action} ({type(error).__name__}); the details are in the station log.",
                "Try again; if it fails again, call a technician.",
            ) from error
        self._note(action, serial, True, result.message, **data)
        return result

    # ------------------------------------------------------------------------------------------ actions
    def revoke(self, record: Any) -> ActionResult:
        """Remove the unit's certificate from its target's registry: the unit can no longer connect."""
        cert_id = _text(record.certificate_id)
        if not cert_id:
            raise InputError(
                "Nothing to revoke",
                f"The record of {record.serial} has no certificate (the attempt never got that far).",
                "Pick a record with a certificate id.",
            )
        target = self._target(record.target)
        data = {"certificate_id": cert_id, "target": target.name, "thing_name": _text(record.thing_name)}

        def act() -> ActionResult:
            existed = self.registry(target).revoke(cert_id, delete_thing=None)
            where = f"{target.name} ({target.region})"
            if existed is False:
                return ActionResult(
                    "Already revoked", f"Certificate {cert_id[:12]}… was not registered in {where}."
                )
            return ActionResult(
                "Certificate revoked",
                f"Certificate {cert_id[:12]}… of {record.serial} is revoked in {where}.",
            )

        return self._run("revoke", record.serial, data, act)

    def transfer(self, record: Any, destination: str, *, revoke_source: bool) -> ActionResult:
        """Register the unit's certificate in another target (thing + policy); optionally revoke it at the source."""
        pem = _text(getattr(record, "certificate_pem", ""))
        if not pem:
            raise InputError(
                "Nothing to transfer",
                f"The record of {record.serial} holds no certificate.",
                "Pick a record of a unit that was provisioned.",
            )
        source = self._target(record.target)
        dest = self._target(destination)
        from station import naming

        thing = naming.render_thing_name(
            dest.thing_name_template,
            product=_text(record.product),
            serial=_text(record.serial),
            device_id=_text(record.device_id),
            station=self.station_id,
            slot=_text(record.slot),
        )
        data = {
            "certificate_id": _text(record.certificate_id),
            "source": source.name,
            "destination": dest.name,
            "thing_name": thing,
            "revoke_source": revoke_source,
        }

        def act() -> ActionResult:
            from station.registry import transfer

            transfer(pem, self.registry(source), self.registry(dest), thing, revoke_source=revoke_source)
            tail = f", revoked in {source.name}" if revoke_source else f", still registered in {source.name}"
            return ActionResult(
                "Certificate transferred", f"{record.serial} now works in {dest.name} as {thing}{tail}."
            )

        return self._run("transfer", record.serial, data, act)

    def import_certificate(
        self, path: str, *, password: str | None, serial: str, target: str, product: str | None = None
    ) -> ActionResult:
        """Register a certificate from a PEM, DER or PKCS#12 file in `target`, with a thing for `serial`.

        A key in the file (PKCS#12) is dropped at once: the desk registers the certificate, never the key.
        """
        from station import naming
        from station.identity import load_identity_file

        if not path.strip():
            raise InputError(
                "No file",
                "The certificate file path is empty.",
                "Type the path of a .pem, .der or .p12 file.",
            )
        dest = self._target(target)
        products = dict(getattr(self.config, "products", {}) or {})
        product_name = product or (next(iter(products)) if len(products) == 1 else "")
        if serial.strip() and product_name in products:
            serial = products[product_name].validate_serial(serial)
        if not serial.strip():
            raise InputError(
                "No serial", "The imported certificate needs the unit's serial.", "Type the serial."
            )
        loaded = load_identity_file(Path(path).expanduser(), password=password or None)
        identity = Identity(certificate_pem=loaded.certificate_pem, certificate_id=loaded.certificate_id)
        del loaded  # the key (if any) goes no further
        thing = naming.render_thing_name(
            dest.thing_name_template,
            product=product_name or "unit",
            serial=serial,
            device_id=serial,
            station=self.station_id,
            slot="qa",
        )
        data = {
            "certificate_id": identity.certificate_id,
            "target": dest.name,
            "thing_name": thing,
            "file": Path(path).name,
        }

        def act() -> ActionResult:
            self.registry(dest).provision(identity, thing, origin="file")
            return ActionResult(
                "Certificate registered",
                f"Certificate {identity.certificate_id[:12]}… is registered in {dest.name} as {thing}.",
            )

        return self._run("import", serial, data, act)

    def export(self, fmt: str, path: str) -> ActionResult:
        if fmt not in ("csv", "json"):
            raise InputError("Unknown format", f"{fmt!r} is not an export format.", "Choose csv or json.")
        out = Path(path).expanduser()
        if not path.strip() or out.is_dir():
            raise InputError(
                "No file name", f"{path!r} is not a file path.", "Type a file path such as records.csv."
            )
        if not out.parent.is_dir():
            raise InputError(
                "No such folder",
                f"The folder {out.parent} does not exist.",
                "Type a path in an existing folder.",
            )

        def act() -> ActionResult:
            count = self.ledger.export(fmt, out)
            return ActionResult("Records exported", f"{count} records written to {out} ({fmt}).")

        return self._run("export", "", {"format": fmt, "path": str(out)}, act)

    def reverify(self, record: Any, slot: str) -> ActionResult:
        """With the unit back on `slot`: its certificate is active in the target and the device connects with it."""
        slots = dict(getattr(self.config, "slots", {}) or {})
        if slot not in slots:
            raise InputError(
                "No such slot", f"There is no slot {slot!r}.", f"Choose one of {', '.join(slots)}."
            )
        if self.line is not None:
            state = {s.name: s for s in self.line.slots()}.get(slot)
            if state is not None and state.state != "idle":
                raise InputError(
                    "Slot busy",
                    f"Slot {slot} is working on {state.serial}.",
                    "Wait for it, or choose a free slot.",
                )
        target = self._target(record.target)
        cert_id = _text(record.certificate_id)
        data = {"certificate_id": cert_id, "target": target.name, "slot": slot}

        def act() -> ActionResult:
            registry = self.registry(target)
            described = registry.describe(cert_id) if cert_id else None
            if described is None:
                raise UnitFault(
                    "Not registered",
                    f"{record.serial}'s certificate is not registered in {target.name}.",
                    "Provision the unit again: scan it on the line.",
                )
            if str(described.get("status", "ACTIVE")) != "ACTIVE":
                raise UnitFault(
                    "Certificate not active",
                    f"{record.serial}'s certificate is {described.get('status')} in {target.name}.",
                    "Provision the unit again, or transfer it, as QA decides.",
                )
            wiring = self._wiring()
            request = wiring.prepare(
                record.serial, slot=slot, product=_text(record.product) or None, target=target.name
            )
            flasher = wiring.open_flasher(slot, slots[slot].port, request)
            try:
                info = flasher.identify()
                device_id = getattr(info, "device_id", None)
                if record.device_id and device_id and str(device_id) != str(record.device_id):
                    raise UnitFault(
                        "Wrong unit in the jig",
                        f"The record is for device {record.device_id}, the jig holds {device_id}.",
                        "Put the right unit on the slot and re-verify again.",
                    )
                if not flasher.capabilities.device_verify:
                    raise StationFault(
                        "Cannot re-verify this family",
                        "This device family cannot prove its own connection and the station never keeps a unit's key.",
                        "Provision the unit again instead (scan it on the line).",
                    )
                host, port = registry.data_endpoint()
                flasher.device_verify(host, port, _text(record.thing_name))
            finally:
                flasher.close()
            return ActionResult(
                "Re-verified", f"{record.serial} connected to {target.name} with its own identity."
            )

        return self._run("reverify", record.serial, data, act)
