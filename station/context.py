"""The wiring: builds what one station needs to provision units from a `StationConfig`.

`StationContext` turns configuration into parts and per-unit requests:
- one `Pipeline` (with the real identity functions, the real verifier, the ledger and an event sink);
- one `Registry` per target, shared by every slot, so all slots draw from the same per-(account, region)
  rate budget (the registry meters every call through `shared_budget`);
- a `UnitRequest` per scan (`prepare`): the serial checked against the product's pattern, the target, the
  thing-name template, the key source, the target's factory CA (loaded once) and server CA bytes (read once);
- a flasher per unit (`open_flasher`) from the product's device family, on the slot's port.

Every real part can be replaced (openhtf style): `flasher_factory`, `registry_factory`, `verifier` and
`observer_factory` are what the lab, the demo and the tests inject. Product options the pipeline reads are taken
out before the rest reaches the flasher:
- `key_source` ("station" | "device" | "auto", default "auto");
- `check_device_id` (default true): cross-check the scanned serial against the unit's own id. Set it false
  when the label does not carry that id — e.g. an ExpressLink module, whose id is the vendor's ThingName (a
  random UID); such a product names its things `thing_name_template = "{device_id}"` because the module
  connects with its ThingName as client id. A product whose label does carry the module's ThingName keeps
  the check (its serial_pattern then matches ThingNames);
- `hello_timeout_s` (default 60): verify by observing — how long to wait for the unit's hello once it is told
  to go online (an LTE-M/NB-IoT modem may need most of a minute to attach).

Observers (verify by observing, `station.observe`): the station's own identity in a target is made on first
use, one per target, and shared by every slot. It lives as long as the context is held: `with context:` (or
until `close()`); a bare `provision()` outside any `with` is a station run of its own and releases (revokes)
the observer before it returns. A long-lived user (a line, `station run`, the demo) should hold the context
and close it when the station stops, so the observer is revoked then.

It must not: hold a unit's key, decide the step order (that is `station.pipeline`), import the lab, or print.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from station import identity as identity_mod
from station import naming
from station.config import DEFAULT_BAUD, StationConfig
from station.errors import ConfigError, InputError, StationError, StationFault
from station.i18n import _
from station.model import Event, Target
from station.pipeline import (
    KEY_SOURCES,
    FlasherLike,
    ObserverLike,
    Pipeline,
    ReconcileItem,
    RegistryLike,
    UnitRequest,
    UnitResult,
    Verifier,
    reconcile,
    record_fields,
)

log = logging.getLogger(__name__)

# Product options read by the pipeline, not passed to the flasher.
PIPELINE_OPTIONS = ("key_source", "check_device_id", "hello_timeout_s")
DEFAULT_HELLO_TIMEOUT_S = 60.0

FlasherFactory = Callable[..., FlasherLike]  # (port, *, family, baud, options) -> FlasherLike


class StationObserverLike(ObserverLike, Protocol):
    """What the station keeps of an observer beyond the pipeline's `ObserverLike` (`station.observe.Observer`
    provides it): what may be recorded about it, when to renew it and how to remove it."""

    @property
    def name(self) -> str: ...
    @property
    def certificate_id(self) -> str: ...
    @property
    def active_watches(self) -> int: ...
    def expires_soon(self) -> bool: ...
    def release(self) -> None: ...


def default_flasher_factory(port: str, *, family: str, baud: int, options: dict[str, Any]) -> FlasherLike:
    """Open the real flasher of `family` on `port`, found through the `station.flashers` entry-point group
    (imported lazily: only a station that provisions needs serial drivers; a third-party family plugs in the
    same way as the built-in ones)."""
    import flashers

    cls: Any = flashers.load(family)  # each family's constructor takes (port, baudrate=, **its options)
    try:
        flasher: FlasherLike = cls(port, baudrate=baud, **options)
    except TypeError as error:
        # An option in [products.NAME.options] the family's flasher does not take.
        raise StationFault(
            _("Bad flasher options"),
            _("The {family} flasher does not accept the product's options ({error}).").format(
                family=family, error=error
            ),
            _("Call a technician to fix [products.NAME.options] in station.toml."),
        ) from None
    return flasher


def default_registry_factory(target: Target, *, station_id: str, quick: bool = False) -> RegistryLike:
    """The real registry of `target`. `quick`: few retries and short timeouts (preflight answers in seconds
    even when a target is unreachable)."""
    from station.registry import Registry

    if quick:
        return Registry(
            target, station_id=station_id, max_attempts=2, connect_timeout_s=3.0, read_timeout_s=10.0
        )
    return Registry(target, station_id=station_id)


def registry_factory(
    station_id: str, *, make: Callable[[Target], RegistryLike] | None = None, quick: bool = False
) -> Callable[[Target], RegistryLike]:
    """One registry per target for as long as the factory is held (`make` replaces the real one)."""
    lock = threading.Lock()
    made: dict[str, RegistryLike] = {}

    def factory(target: Target) -> RegistryLike:
        with lock:
            if target.name not in made:
                made[target.name] = (
                    make(target)
                    if make is not None
                    else default_registry_factory(target, station_id=station_id, quick=quick)
                )
            return made[target.name]

    return factory


def server_ca(target: Target) -> bytes | None:
    """The server CA the verify trusts for `target`, read from its `ca_file` (None: the system's store)."""
    if target.ca_file is None:
        return None
    try:
        return Path(target.ca_file).read_bytes()
    except OSError as error:
        raise ConfigError(
            _("Server CA not readable"),
            _("The CA file {ca_file} of target {name!r} cannot be read ({strerror}).").format(
                ca_file=target.ca_file, name=target.name, strerror=error.strerror
            ),
            _("Fix ca_file of this target in station.toml."),
        ) from None


def default_verifier(
    identity: Any,
    *,
    thing_name: str,
    host: str,
    port: int,
    ca_bytes: bytes | None,
    where: str | None = None,
) -> Any:
    """The real MQTT verify (imported on first use, so building a context never loads awscrt)."""
    from station.verify import verify

    return verify(identity, thing_name=thing_name, host=host, port=port, ca_bytes=ca_bytes, where=where)


def default_observer_factory(
    target: Target, *, registry: RegistryLike, station_id: str, ca_bytes: bytes | None
) -> StationObserverLike:
    """The real observer: registered in `target` by its registry and connected (awscrt loaded on first use)."""
    from station.observe import Observer

    host, port = registry.data_endpoint()
    where = registry.where or "{}/{}".format(*target.registry_key)
    return Observer.start(
        registry,  # type: ignore[arg-type]  # the real Registry has provision_observer/remove_observer
        station_id=station_id,
        host=host,
        port=port,
        ca_bytes=ca_bytes,
        where=str(where),
    )


def make_record(result: UnitResult, *, operator: str = "") -> Any:
    """The ledger's record type for one attempt."""
    from station.ledger.base import AttemptRecord

    fields = dict(record_fields(result))
    fields["operator"] = operator
    return AttemptRecord.from_fields(fields)


class StationContext:
    """Configuration → parts. Thread-safe: every slot's worker shares one instance."""

    def __init__(
        self,
        config: StationConfig,
        *,
        ledger: Any,
        on_event: Callable[[Event], None] | None = None,
        flasher_factory: FlasherFactory | None = None,
        registry_factory: Callable[[Target], RegistryLike] | None = None,
        verifier: Verifier | None = None,
        station_id: str | None = None,
        operator: str | None = None,
        observer_factory: Callable[[Target], StationObserverLike] | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.on_event = on_event  # the line replaces this with its own sink
        self.station_id = station_id or config.station_id
        self.operator = operator if operator is not None else (config.operator or "")
        self._flasher_factory = flasher_factory or default_flasher_factory
        self._registry_factory = registry_factory or (
            lambda target: default_registry_factory(target, station_id=self.station_id)
        )
        if config.budget is not None:
            # Several stations on one account and region: every registry's budget is leased from the store.
            from station import sharedbudget

            sharedbudget.configure(config.budget)
        self._labels: Any = None
        if config.labels is not None:
            from station.labels import LabelPrinter

            self._labels = LabelPrinter(
                config.labels.printer,
                qr_payload=config.labels.qr_payload,
                timeout_s=config.labels.timeout_s,
                station_id=self.station_id,
                on_problem=self._label_problem,
            )
        self._lock = threading.Lock()
        self._registries: dict[str, RegistryLike] = {}
        self._issuers: dict[str, Any] = {}
        self._ca: dict[str, bytes | None] = {}
        self._observer_factory = observer_factory or (
            lambda target: default_observer_factory(
                target,
                registry=self.registry(target),
                station_id=self.station_id,
                ca_bytes=self.ca_bytes(target),
            )
        )
        self._observer_lock = threading.Lock()  # one observer is made at a time (first use per target)
        self._observers: dict[str, StationObserverLike] = {}
        self._retired: list[
            StationObserverLike
        ] = []  # replaced before expiry, released once no watch is open
        self._holds = 0
        self.pipeline = Pipeline(
            ledger=ledger,
            registry_for=self.registry,
            verifier=verifier or default_verifier,
            new_identity=identity_mod.new_identity,
            sign_csr=identity_mod.sign_csr,
            certificate_id=identity_mod.certificate_id,
            record_factory=lambda result: make_record(result, operator=self.operator),
            on_event=self._emit,
            check_certificate=identity_mod.check_aws_acceptance,
            observer_for=self.observer,
            unit_state=self.unit_state,
        )

    def unit_state(self, serial: str) -> Any:
        """The unit's current state (`station.units.UnitState`), or None for a unit never recorded."""
        return self.ledger.unit(serial)

    def _emit(self, event: Event) -> None:
        sink = self.on_event
        if sink is not None:
            sink(event)
        if self._labels is not None:
            self._labels.handle(event)

    def _label_problem(self, serial: str, error: Any) -> None:
        self._note("label", False, f"No label for {serial}: {error.message}", serial=serial)

    def _note(self, step: str, ok: bool, message: str, **data: Any) -> None:
        """A station-level event (not a unit's): into the ledger's event log and to the event sink."""
        event = Event(
            kind="note", serial="", step=step, outcome="ok" if ok else "failed", message=message, data=data
        )
        try:
            self.ledger.append_event(event)
        except Exception:
            log.exception("could not append the %s note to the ledger", step)
        try:
            self._emit(event)
        except Exception:
            log.exception("event consumer failed on the %s note", step)

    # ------------------------------------------------------------------------------------- lifetime
    def __enter__(self) -> StationContext:
        with self._lock:
            self._holds += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holds = max(0, self._holds - 1)
            last = self._holds == 0
        if last:
            self.close()

    def close(self) -> list[str]:
        """Release (revoke) every observer this station made; returns what could not be removed (messages).

        Call it when the station stops, after the last unit. Idempotent.
        """
        if self._labels is not None:
            self._labels.close()  # the last PASS's label goes out before the station stops
        with self._observer_lock:
            observers = list(self._observers.values()) + self._retired
            self._observers.clear()
            self._retired = []
        return [problem for observer in observers if (problem := self._release(observer))]

    def _release(self, observer: StationObserverLike) -> str:
        info = _observer_data(observer)
        try:
            observer.release()
        except Exception as error:
            message = error.message if isinstance(error, StationError) else type(error).__name__
            log.error("could not remove the observer %s: %s", info.get("name"), message)
            self._note("observer_released", False, message, **info)
            return message
        self._note("observer_released", True, f"observer {info.get('name')} removed", **info)
        return ""

    # ------------------------------------------------------------------------------------------ parts
    def registry(self, target: Target) -> RegistryLike:
        """The one registry of `target` in this station (made on first use)."""
        with self._lock:
            registry = self._registries.get(target.name)
            if registry is None:
                registry = self._registry_factory(target)
                self._registries[target.name] = registry
            return registry

    def observer(self, target: Target) -> StationObserverLike:
        """The station's observer in `target` (made and connected on first use; renewed before it expires)."""
        with self._observer_lock:
            self._sweep_retired()
            observer = self._observers.get(target.name)
            if observer is not None:
                if not observer.expires_soon():
                    return observer
                del self._observers[target.name]
                self._retired.append(observer)
                self._sweep_retired()
            started = time.perf_counter()
            try:
                observer = self._observer_factory(target)
            except StationError as error:
                self._note("observer_started", False, error.message, target=target.name)
                raise
            self._observers[target.name] = observer
        self._note(
            "observer_started",
            True,
            f"observer registered and connected in {observer.where}",
            duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
            target=target.name,
            **_observer_data(observer),
        )
        return observer

    def _sweep_retired(self) -> None:
        """Release replaced observers that no unit is watching with any more (under `_observer_lock`)."""
        keep: list[StationObserverLike] = []
        for observer in self._retired:
            if observer.active_watches > 0:
                keep.append(observer)
            else:
                self._release(observer)
        self._retired = keep

    def issuer(self, target: Target) -> Any:
        """The target's factory CA, loaded once (None when the target has none)."""
        if target.issuer is None:
            return None
        with self._lock:
            if target.name not in self._issuers:
                self._issuers[target.name] = identity_mod.load_issuer(target.issuer)
            return self._issuers[target.name]

    def ca_bytes(self, target: Target) -> bytes | None:
        """The server CA the verify trusts for this target (None: the system's trust store)."""
        if target.ca_file is None:
            return None
        with self._lock:
            if target.name not in self._ca:
                self._ca[target.name] = server_ca(target)
            return self._ca[target.name]

    def slot_ports(self) -> dict[str, str]:
        return {name: slot.port for name, slot in self.config.slots.items()}

    # ------------------------------------------------------------------------------------------ per unit
    def product_for(self, slot: str, product: str | None) -> str:
        if product:
            return self.config.product(product).name
        slot_cfg = self.config.slots.get(slot)
        if slot_cfg is not None and slot_cfg.product:
            return slot_cfg.product
        if len(self.config.products) == 1:
            return next(iter(self.config.products))
        raise InputError(
            _("Which product?"),
            _("Slot {slot} has no product and the station knows several: {products}.").format(
                slot=slot or "(none)", products=", ".join(self.config.products) or "none"
            ),
            _("Choose the product (--product), or set product for this slot in station.toml."),
        )

    def prepare(
        self, serial: str, *, slot: str = "", product: str | None = None, target: str | None = None
    ) -> UnitRequest:
        """A unit request for a scan: `InputError` (nothing started) if the serial or a name is wrong."""
        product_cfg = self.config.product(self.product_for(slot, product))
        serial = product_cfg.validate_serial(serial)
        target_cfg = self.config.target(target or product_cfg.target)
        options = product_cfg.options
        key_source = str(options.get("key_source", "auto"))
        if key_source not in KEY_SOURCES:
            raise ConfigError(
                _("Invalid key source"),
                _("Product {name!r} has key_source {key_source!r}; expected one of {KEY_SOURCES}.").format(
                    name=product_cfg.name, key_source=key_source, KEY_SOURCES=", ".join(KEY_SOURCES)
                ),
                _("Fix [products.NAME.options] key_source in station.toml."),
            )
        template = target_cfg.thing_name_template
        station_id = self.station_id
        product_name = product_cfg.name

        def thing_name(device_id: str | None) -> str:
            return naming.render_thing_name(
                template,
                product=product_name,
                serial=serial,
                device_id=device_id or "",
                station=station_id,
                slot=slot,
            )

        hello_timeout = options.get("hello_timeout_s", DEFAULT_HELLO_TIMEOUT_S)
        if (
            isinstance(hello_timeout, bool)
            or not isinstance(hello_timeout, int | float)
            or hello_timeout <= 0
        ):
            raise ConfigError(
                _("Invalid hello timeout"),
                _(
                    "Product {name!r} has hello_timeout_s {hello_timeout!r}; expected a number of "
                    "seconds above 0."
                ).format(name=product_cfg.name, hello_timeout=hello_timeout),
                _("Fix [products.NAME.options] hello_timeout_s in station.toml."),
            )
        return UnitRequest(
            serial=serial,
            target=target_cfg,
            thing_name=thing_name,
            slot=slot,
            product=product_name,
            station_id=station_id,
            key_source=key_source,
            issuer=self.issuer(target_cfg),
            ca_bytes=self.ca_bytes(target_cfg),
            check_device_id=bool(options.get("check_device_id", True)),
            hello_timeout_s=float(hello_timeout),
            on_reprovision=product_cfg.on_reprovision,
        )

    def open_flasher(self, slot: str, port: str, request: UnitRequest) -> FlasherLike:
        """The flasher of the unit's product family on `port`, at the slot's baud rate."""
        product_cfg = self.config.product(request.product)
        slot_cfg = self.config.slots.get(slot)
        baud = slot_cfg.baud if slot_cfg is not None else DEFAULT_BAUD
        options = {k: v for k, v in product_cfg.options.items() if k not in PIPELINE_OPTIONS}
        return self._flasher_factory(port, family=product_cfg.flasher, baud=baud, options=options)

    def read_unit_id(self, slot: str, port: str, request: UnitRequest) -> str | None:
        """Which unit sits on `port`: its own id, read by the product's family in a session of its own (the
        port is closed again before this returns). None: the family cannot tell (a flasher without
        `read_unit_id`) or the unit has no id. Raises the flasher's errors (a unit not answering, a port
        that cannot be opened)."""
        flasher = self.open_flasher(slot, port, request)
        try:
            read = getattr(flasher, "read_unit_id", None)
            unit_id = read() if callable(read) else None
        finally:
            flasher.close()
        return str(unit_id) if unit_id else None

    def provision(
        self,
        serial: str,
        port: str,
        *,
        product: str | None = None,
        target: str | None = None,
        slot: str = "",
    ) -> UnitResult:
        """One unit on `port` without a line (what `station provision` does).

        Unless the caller holds the context (`with context:`), this is a station run of its own: an observer
        made for this unit is released before it returns.
        """
        with self:
            request = self.prepare(serial, slot=slot, product=product, target=target)
            return self.pipeline.run(request, open_flasher=lambda: self.open_flasher(slot, port, request))

    def reconcile(
        self,
        *,
        only_target: str | None = None,
        min_age_s: float = 0.0,
        include: Callable[[Any], bool] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> list[ReconcileItem]:
        """Resolve the journal's pending entries (see `station.pipeline.reconcile`); `include` narrows them
        (the line's cleaner), `on_event` replaces the context's event sink for this call."""
        if only_target is not None:
            self.config.target(only_target)  # an unknown name is an input error, not "nothing to do"
        return reconcile(
            self.ledger,
            targets=self.config.targets,
            registry_for=self.registry,
            record_factory=lambda result: make_record(result, operator=self.operator),
            only_target=only_target,
            min_age_s=min_age_s,
            station_id=self.station_id,
            on_event=on_event or self._emit,
            include=include,
        )


def _observer_data(observer: StationObserverLike) -> dict[str, Any]:
    """What may be recorded about an observer: name, certificate id, registry (never its key)."""
    return {"name": observer.name, "certificate_id": observer.certificate_id, "where": observer.where}
