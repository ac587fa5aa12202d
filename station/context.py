"""The wiring: builds what one station needs to provision units from a `StationConfig`.

`StationContext` turns configuration into parts and per-unit requests:
- one `Pipeline` (with the real identity functions, the real verifier, the ledger and an event sink);
- one `Registry` per target, shared by every slot, so all slots draw from the same per-(account, region)
  rate budget (the registry meters every call through `shared_budget`);
- a `UnitRequest` per scan (`prepare`): the serial checked against the product's pattern, the target, the
  thing-name template, the key source, the target's factory CA (loaded once) and server CA bytes (read once);
- a flasher per unit (`open_flasher`) from the product's device family, on the slot's port.

Every real part can be replaced (openhtf style): `flasher_factory`, `registry_factory` and `verifier` are
what the lab, the demo and the tests inject. Product options the pipeline reads (`key_source`,
`check_device_id`) are taken out before the rest reaches the flasher.

It must not: hold a unit's key, decide the step order (that is `station.pipeline`), import the lab, or print.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from station import identity as identity_mod
from station import naming
from station.config import DEFAULT_BAUD, StationConfig
from station.errors import ConfigError, InputError, StationFault
from station.model import Event, Target
from station.pipeline import (
    KEY_SOURCES,
    FlasherLike,
    Pipeline,
    ReconcileItem,
    RegistryLike,
    UnitRequest,
    UnitResult,
    Verifier,
    reconcile,
    record_fields,
)

# Product options read by the pipeline, not passed to the flasher.
PIPELINE_OPTIONS = ("key_source", "check_device_id")

FlasherFactory = Callable[..., FlasherLike]  # (port, *, family, baud, options) -> FlasherLike


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
            "Bad flasher options",
            f"The {family} flasher does not accept the product's options ({error}).",
            "Call a technician to fix [products.NAME.options] in station.toml.",
        ) from None
    return flasher


def default_registry_factory(target: Target, *, station_id: str) -> RegistryLike:
    from station.registry import Registry

    return Registry(target, station_id=station_id)


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
        self._lock = threading.Lock()
        self._registries: dict[str, RegistryLike] = {}
        self._issuers: dict[str, Any] = {}
        self._ca: dict[str, bytes | None] = {}
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
        )

    def _emit(self, event: Event) -> None:
        sink = self.on_event
        if sink is not None:
            sink(event)

    # ------------------------------------------------------------------------------------------ parts
    def registry(self, target: Target) -> RegistryLike:
        """The one registry of `target` in this station (made on first use)."""
        with self._lock:
            registry = self._registries.get(target.name)
            if registry is None:
                registry = self._registry_factory(target)
                self._registries[target.name] = registry
            return registry

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
                try:
                    self._ca[target.name] = Path(target.ca_file).read_bytes()
                except OSError as error:
                    raise ConfigError(
                        "Server CA not readable",
                        f"The CA file {target.ca_file} of target {target.name!r} cannot be read "
                        f"({error.strerror}).",
                        "Fix ca_file of this target in station.toml.",
                    ) from None
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
            "Which product?",
            f"Slot {slot or '(none)'} has no product and the station knows several: "
            f"{', '.join(self.config.products) or 'none'}.",
            "Choose the product (--product), or set product for this slot in station.toml.",
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
                "Invalid key source",
                f"Product {product_cfg.name!r} has key_source {key_source!r}; expected one of "
                f"{', '.join(KEY_SOURCES)}.",
                "Fix [products.NAME.options] key_source in station.toml.",
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
        )

    def open_flasher(self, slot: str, port: str, request: UnitRequest) -> FlasherLike:
        """The flasher of the unit's product family on `port`, at the slot's baud rate."""
        product_cfg = self.config.product(request.product)
        slot_cfg = self.config.slots.get(slot)
        baud = slot_cfg.baud if slot_cfg is not None else DEFAULT_BAUD
        options = {k: v for k, v in product_cfg.options.items() if k not in PIPELINE_OPTIONS}
        return self._flasher_factory(port, family=product_cfg.flasher, baud=baud, options=options)

    def provision(
        self,
        serial: str,
        port: str,
        *,
        product: str | None = None,
        target: str | None = None,
        slot: str = "",
    ) -> UnitResult:
        """One unit on `port` without a line (what `station provision` does)."""
        request = self.prepare(serial, slot=slot, product=product, target=target)
        return self.pipeline.run(request, open_flasher=lambda: self.open_flasher(slot, port, request))

    def reconcile(self, *, only_target: str | None = None, min_age_s: float = 0.0) -> list[ReconcileItem]:
        """Resolve the journal's pending entries (see `station.pipeline.reconcile`)."""
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
            on_event=self._emit,
        )
