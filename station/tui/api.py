"""What the screens need from the core, as small Protocols, and the station facts shown in the header.

The TUI is a thin view: it calls `LineAPI.scan/slots` and reads the line's events; the QA desk calls a
`QaServicesAPI`, which the command that opens the screen builds (`station.desk.QaServices`) and hands to the
app. The Protocols are structural, so the real `station.line.Line`, `station.desk.QaServices` and the test
fakes fit without inheriting from anything. `StationInfo` is the header's content, built once from a
`StationConfig` by `station_info`.

It must not import textual (it is shared with plain code and tests) nor any AWS, serial or crypto library,
nor any core module that does, not even indirectly (import-linter checks): that is why the desk's services
are a Protocol here and their implementation lives in the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from station.qapin import stored_pin
from station.units import UnitFilter


class SlotLike(Protocol):
    """One slot as the line reports it (`station.line.SlotState`)."""

    @property
    def name(self) -> str: ...
    @property
    def port(self) -> str: ...
    @property
    def state(self) -> str: ...  # idle | busy | reserved | stopped
    @property
    def serial(self) -> str: ...
    @property
    def step(self) -> str: ...


class LineAPI(Protocol):
    """The part of `station.line.Line` the operator screen uses."""

    def scan(self, serial: str, slot: str | None = None) -> str: ...
    def slots(self) -> Sequence[SlotLike]: ...
    def set_operator(self, name: str) -> None: ...  # whom the next records name (after a sign-in)


class ActionResult(Protocol):
    """What a QA action did, in a title and one sentence for a notification (`station.desk.ActionResult`)."""

    @property
    def title(self) -> str: ...
    @property
    def message(self) -> str: ...


class Prepared(Protocol):
    """An action planned from the ledger alone, with what the person is asked before anything is done."""

    @property
    def title(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def confirm_label(self) -> str: ...
    @property
    def plan(self) -> Any: ...  # handed back unchanged once confirmed


class QaServicesAPI(Protocol):
    """What the QA desk calls (`station.desk.QaServices`): blocking calls, run in a thread worker, never on
    the UI thread. Records, events and unit states are the ledger's own types, read by attribute."""

    @property
    def operator(self) -> str: ...
    @property
    def ledger(self) -> Any: ...  # the PIN guard counts wrong PINs in it

    def target_names(self) -> list[str]: ...
    def product_names(self) -> list[str]: ...
    def slot_names(self) -> list[str]: ...
    def find(self, query: str) -> list[Any]: ...
    def events(self, serials: Sequence[str]) -> list[Any]: ...
    def unit(self, serial: str) -> Any: ...
    def default_slot(self, record: Any) -> str | None: ...
    def audit(self) -> ActionResult: ...
    def export(self, fmt: str, path: str) -> ActionResult: ...
    def prepare_revoke(self, record: Any) -> Prepared: ...
    def revoke(self, record: Any, *, plan: Any = None) -> ActionResult: ...
    def prepare_transfer(self, record: Any, destination: str, *, revoke_source: bool) -> Prepared: ...
    def transfer(
        self, record: Any, destination: str, *, revoke_source: bool, plan: Any = None
    ) -> ActionResult: ...
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
    ) -> ActionResult: ...
    def reverify(
        self, record: Any, slot: str | None, *, key_path: str | None = None, password: str | None = None
    ) -> ActionResult: ...
    def prepare_reprovision(self, record: Any, slot: str) -> Prepared: ...
    def reprovision(self, record: Any, slot: str, *, plan: Any = None) -> ActionResult: ...
    # The desk's lists: recent units (paged), a search in any case, one unit's records.
    def recent(
        self, filters: UnitFilter | None = None, *, after: str | None = None, limit: int = ...
    ) -> Any: ...
    def search(self, query: str, filters: UnitFilter | None = None) -> list[Any]: ...
    def unit_records(self, serial: str) -> list[Any]: ...
    def target_places(self) -> dict[str, tuple[str, str]]: ...
    # Labels: a preview for the terminal, a reprint on the configured printer (None: no printer).
    def printer(self) -> str | None: ...
    def label_preview(self, record: Any) -> str: ...
    def reprint(self, record: Any) -> ActionResult: ...
    # People: whom the desk's actions name from now on, and a sign-in note in the ledger.
    def act_as(self, person: str) -> None: ...
    def record_sign_in(self, person: str) -> None: ...


@dataclass(frozen=True)
class TargetInfo:
    """Where a slot's units go, as the header shows it."""

    name: str
    account: str  # account id, role or profile: whatever names the account
    region: str
    lab: bool


@dataclass(frozen=True)
class StationInfo:
    """The header's facts and the slots' defaults; never holds a secret except the QA PIN, kept out of repr."""

    station_id: str
    operator: str
    products: tuple[str, ...] = ()
    targets: tuple[TargetInfo, ...] = ()
    slot_products: dict[str, str] = field(default_factory=dict)  # slot name → product
    qa_pin: str | None = field(default=None, repr=False)  # stored form: scrypt hash, or plain (lab)
    # The operator screen's habits ([station] card_reset_s, bell): a finished card back to READY after this
    # many seconds (0: on the next scan only), and the terminal bell on FAIL and ERROR.
    card_reset_s: float = 30.0
    bell: bool = True

    @property
    def lab(self) -> bool:
        """Lab mode: every target this station writes to is a lab target."""
        return bool(self.targets) and all(t.lab for t in self.targets)

    @property
    def production(self) -> bool:
        return any(not t.lab for t in self.targets)


def _account_of(target: Any) -> str:
    if getattr(target, "account_id", None):
        return str(target.account_id)
    role = getattr(target, "role_arn", None)
    if role:
        parts = str(role).split(":")
        return parts[4] if len(parts) > 4 and parts[4] else str(role)
    if getattr(target, "profile", None):
        return f"profile {target.profile}"
    return "default credentials"


def station_info(config: Any, *, operator: str | None = None) -> StationInfo:
    """The header facts of a `station.config.StationConfig`: the products and targets its slots use."""
    products: dict[str, Any] = dict(getattr(config, "products", {}) or {})
    targets: dict[str, Any] = dict(getattr(config, "targets", {}) or {})
    slots: dict[str, Any] = dict(getattr(config, "slots", {}) or {})
    default_product = next(iter(products), "") if len(products) == 1 else ""
    slot_products = {
        name: (getattr(slot, "product", None) or default_product) for name, slot in slots.items()
    }
    used_products = [p for p in dict.fromkeys(slot_products.values()) if p] or list(products)
    used_targets = [products[p].target for p in used_products if p in products]
    shown = [targets[name] for name in dict.fromkeys(used_targets) if name in targets]
    return StationInfo(
        station_id=str(getattr(config, "station_id", "station")),
        operator=operator or getattr(config, "operator", None) or "operator",
        products=tuple(used_products),
        targets=tuple(
            TargetInfo(name=t.name, account=_account_of(t), region=t.region, lab=bool(t.lab)) for t in shown
        ),
        slot_products=slot_products,
        qa_pin=stored_pin(config),  # the stored form: a scrypt hash, or the lab's plain PIN
        card_reset_s=float(getattr(config, "card_reset_s", 30.0)),
        bell=bool(getattr(config, "bell", True)),
    )
