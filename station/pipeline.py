"""The provisioning pipeline for one unit: the step order, the overlap, the rollback and the journal.

    identify → identity → { write to device ‖ register in target } → verify → record

This is the only place that knows that order. Everything the pipeline touches is injected through the small
Protocols below (openhtf style): a flasher for the unit's device family, a registry for the target, a verifier,
the ledger, and the identity functions. The wiring (`station.context`) hands it the real parts; tests hand it
in-process fakes.

Rules it keeps:
- A serial that already has a live identity (the unit's state, `unit_state`) is refused before anything is
  touched, unless the product replaces it (`on_reprovision = "replace"`): then the new identity is provisioned
  and verified first and the old certificate revoked afterwards (kept in the journal when AWS refuses).
- Writing to the device and registering in the target run at the same time (the cloud side on a helper
  thread), so a unit takes max(serial, cloud) + verify, not their sum.
- The journal entry is opened before the first AWS side effect and updated after each AWS step whose outcome
  recovery cannot learn from AWS (whether this attempt made the thing), so a station killed at any moment
  leaves enough behind for `reconcile` to resolve it.
- Any failure after registration rolls back in AWS (only what this attempt created) and wipes the device's
  staged credentials; every compensation becomes an event and a line in the attempt record.
- The outcome follows the exception's family: `UnitFault` → FAIL, any other `StationError` → ERROR, anything
  unexpected → ERROR with a generic operator message (the traceback goes to the log, key material redacted).
- The journal closes only after the attempt record is written, and only when AWS holds nothing unaccounted for.
- The private key lives in memory only, inside a `Secret`, and the pipeline drops its reference after verify.
- Verify has three modes, planned from the family's capabilities before anything is done to the unit: "host"
  (the station holds the key and connects as the unit), "device" (the unit proves its own connection) and
  "observe" (the unit's key is its own and it cannot check itself: the station watches the unit's hello on
  `things/<thing>/hello` with its own observer identity, subscribed before the unit is told to go online, and
  requires the registered certificate id in it within the request's `hello_timeout_s`). Observing needs the
  family's `observable` capability and an `observer_for` from the wiring.

It must not: import boto3, serial, awscrt or the lab; print; read configuration files; hold a key beyond
verify; put key material in an event, a record, a log line or an exception; decide an outcome by matching text.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Unpack

from station.attempt import (
    Attempt,
    Compensation,
    classify,
    interrupted_fault,
    outcome_of,
    redact,
    unexpected_fault,
)
from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.journal import REPLACE_REVOKE, JournalEntry, JournalFields, Stage
from station.model import Event, Identity, Outcome, Registration, Target
from station.plain import plain_dict
from station.units import Action, LiveIdentity, RecordLike, UnitState

log = logging.getLogger(__name__)

# Step names, in order. "write" and "register" run side by side.
STEPS = ("identify", "identity", "write", "register", "verify", "record")

KEY_SOURCES = ("station", "device", "auto")


# ---------------------------------------------------------------------------------------------------------
# The seams, as the pipeline sees them (structural: the real classes need not inherit from these).
# ---------------------------------------------------------------------------------------------------------


class CapabilitiesLike(Protocol):
    """What a family can do (`flashers.base.Capabilities`); the pipeline plans the unit's flow from it."""

    @property
    def writes_key(self) -> bool: ...
    @property
    def device_keygen(self) -> bool: ...
    @property
    def device_verify(self) -> bool: ...
    @property
    def reads_certificate(self) -> bool: ...
    @property
    def observable(self) -> bool: ...


class HelloWatchLike(Protocol):
    """One unit's hello topic, subscribed (`station.observe.HelloWatch`)."""

    @property
    def topic(self) -> str: ...
    def wait(self, timeout_s: float) -> Mapping[str, str] | None: ...
    def close(self) -> None: ...


class ObserverLike(Protocol):
    """The station's own observer in one target (`station.observe.Observer`)."""

    @property
    def where(self) -> str: ...
    def watch(self, thing_name: str) -> HelloWatchLike: ...


class DeviceInfoLike(Protocol):
    """What `identify` reports (`flashers.base.DeviceInfo`)."""

    @property
    def device_id(self) -> str | None: ...
    @property
    def firmware(self) -> str | None: ...
    @property
    def evidence(self) -> Mapping[str, str]: ...


class FlasherLike(Protocol):
    """The host side of one device family on one port (`flashers.base.Flasher`)."""

    @property
    def family(self) -> str: ...
    @property
    def capabilities(self) -> CapabilitiesLike: ...
    def identify(self) -> DeviceInfoLike: ...
    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> Any: ...
    def keygen(self, common_name: str) -> str: ...
    def read_certificate(self) -> str: ...
    def device_verify(self, host: str, port: int, thing_name: str) -> None: ...
    def go_online(self) -> None: ...
    def wipe(self) -> None: ...
    def close(self) -> None: ...


class RegistryLike(Protocol):
    """One target's AWS IoT registry (`station.registry.Registry`)."""

    @property
    def where(self) -> str: ...
    def register(self, identity: Identity, *, origin: str = "unit") -> Registration: ...
    def create_thing(self, name: str) -> bool: ...
    def attach(self, registration: Registration, thing_name: str) -> None: ...
    def rollback(self, registration: Registration) -> None: ...
    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool: ...
    def describe(self, certificate_id: str) -> dict[str, Any] | None: ...
    def data_endpoint(self) -> tuple[str, int]: ...


class LedgerLike(Protocol):
    """The station's records and its crash journal (`station.ledger.Ledger`)."""

    def record_attempt(self, record: Any, *, events: Sequence[Event] = ()) -> Any: ...
    def append_event(self, event: Event) -> Any: ...
    def find(self, query: str) -> Sequence[RecordLike]: ...
    def claim_unit(
        self,
        serial: str,
        attempt_id: str,
        *,
        station_id: str = "",
        slot: str = "",
        replacing: Sequence[str] = (),
    ) -> None: ...
    def release_unit(self, serial: str, attempt_id: str) -> None: ...
    def journal_open(self, **fields: Unpack[JournalFields]) -> Any: ...
    def journal_update(self, journal_id: Any, **fields: Unpack[JournalFields]) -> Any: ...
    def journal_close(self, journal_id: Any, outcome: str | None = None) -> Any: ...


class Verifier(Protocol):
    """Host-side MQTT verify with the unit's own identity (`station.verify.verify`)."""

    def __call__(
        self,
        identity: Identity,
        *,
        thing_name: str,
        host: str,
        port: int,
        ca_bytes: bytes | None,
        where: str | None = None,
    ) -> Any: ...


RecordFactory = Callable[["UnitResult"], Any]


# ---------------------------------------------------------------------------------------------------------
# What goes in and what comes out.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitRequest:
    """One unit to provision, resolved from the configuration by the wiring.

    `thing_name` is a function of the device id because some templates use it (known only after identify).
    `key_source`: "station" (the station makes the key), "device" (device keygen → CSR signed by `issuer`),
    "auto" (device keygen when the family has it and an issuer is configured, else the station's key).
    A family that keeps its own key and certificate (`reads_certificate`) ignores it.
    """

    serial: str
    target: Target
    thing_name: Callable[[str | None], str]
    slot: str = ""
    product: str = ""
    station_id: str = ""
    key_source: str = "station"
    issuer: Any = None  # a loaded issuer (station.identity.LoadedIssuer) or None
    ca_bytes: bytes | None = None  # server CA for host verify (None = system trust store)
    check_device_id: bool = True  # cross-check the scan against the device id where the family has one
    hello_timeout_s: float = 60.0  # verify by observing: how long to wait for the unit's hello once online
    on_reprovision: str = "refuse"  # a serial with a live identity: "refuse" (send it to QA) or "replace"


@dataclass
class UnitResult:
    """The outcome of one attempt, as recorded (no key material)."""

    attempt_id: str
    serial: str
    slot: str
    product: str
    target: str
    station_id: str
    registry: tuple[str, str]
    outcome: Outcome = Outcome.ERROR
    title: str = ""
    message: str = ""
    next_action: str = ""
    error_kind: str = ""
    device_id: str | None = None
    firmware: str | None = None
    family: str = ""
    thing_name: str = ""
    certificate_id: str = ""
    certificate_arn: str = ""
    certificate_pem: str = ""
    thing_created: bool = False  # this attempt made the thing (so a later revoke may delete it)
    key_source: str = ""
    verify_mode: str = ""  # "host" | "device" | "observe"
    timings_ms: dict[str, float] = field(default_factory=dict)
    compensations: list[Compensation] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    journal_closed: bool = False
    recorded: bool = False
    replaced: list[str] = field(default_factory=list)  # certificate ids this attempt supersedes (replace)
    replaced_revoked: list[str] = field(default_factory=list)  # … of them revoked in AWS
    action: str = Action.PROVISION  # what the attempt did to the unit (`station.units.Action`)
    extra: dict[str, Any] = field(default_factory=dict)  # more for the record's `extra`

    @property
    def rolled_back(self) -> bool:
        return any(c.action in ("rollback", "revoke") and c.ok for c in self.compensations)

    def summary(self) -> dict[str, Any]:
        """JSON-ready view for the CLI, the TUI and the unit_finished event."""
        return {
            "attempt_id": self.attempt_id,
            "serial": self.serial,
            "slot": self.slot,
            "product": self.product,
            "target": self.target,
            "outcome": str(self.outcome),
            "title": self.title,
            "message": self.message,
            "next_action": self.next_action,
            "device_id": self.device_id,
            "thing_name": self.thing_name,
            "certificate_id": self.certificate_id,
            "timings_ms": dict(self.timings_ms),
            "compensations": [c.as_dict() for c in self.compensations],
        }


# Operator words for the cases the pipeline itself decides.
def wrong_unit(scanned: str, device_id: str) -> UnitFault:
    return UnitFault(
        _("Wrong unit in the jig"),
        _("wrong unit in the jig: scanned {scanned}, device says {device_id}.").format(
            scanned=scanned, device_id=device_id
        ),
        _("Put the right unit in the jig and scan again."),
    )


__all__ = ["Compensation", "classify", "interrupted_fault", "outcome_of", "redact", "unexpected_fault"]


class _Run:
    """Mutable working state of one run; never leaves this module (it may hold the unit's key). The
    bookkeeping every attempt shares (events, steps, journal, compensations, record) is `attempt`."""

    def __init__(self, request: UnitRequest, result: UnitResult, attempt: Attempt) -> None:
        self.request = request
        self.result = result
        self.attempt = attempt
        self.identity: Identity | None = None
        self.flasher: FlasherLike | None = None
        self.registration: Registration | None = None
        self.thing_created = False
        self.claimed = False  # this attempt holds the ledger's claim on the serial (released by its record)

    @property
    def journal_id(self) -> Any:
        return self.attempt.journal_id


class Pipeline:
    """Runs units through the steps. One instance can serve many units and slots (it keeps no unit state).

    `registry_for(target)` returns the registry of a target; the wiring caches one per registry key so
    that every slot shares its rate budget.
    """

    def __init__(
        self,
        *,
        ledger: LedgerLike,
        registry_for: Callable[[Target], RegistryLike],
        verifier: Verifier,
        new_identity: Callable[..., Identity],
        sign_csr: Callable[..., str],
        certificate_id: Callable[[str], str],
        record_factory: RecordFactory,
        on_event: Callable[[Event], None] | None = None,
        device_id_matches: Callable[[str, str], bool] | None = None,
        check_certificate: Callable[[str], None] | None = None,
        observer_for: Callable[[Target], ObserverLike] | None = None,
        unit_state: Callable[[str], UnitState | None] | None = None,
    ) -> None:
        """`unit_state(serial)` is the unit's current state (`station.units.UnitState`, or None for a unit
        never seen): a serial with a live identity is refused or replaced as `UnitRequest.on_reprovision`
        says, before anything is done to it."""
        self._ledger = ledger
        self._unit_state = unit_state
        self._registry_for = registry_for
        self._verifier = verifier
        self._new_identity = new_identity
        self._sign_csr = sign_csr
        self._certificate_id = certificate_id
        self._record_factory = record_factory
        self._on_event = on_event
        self._device_id_matches = device_id_matches or _same_id
        self._check_certificate = check_certificate
        self._observer_for = observer_for
        self._emit_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- events
    def _publish(self, event: Event) -> None:
        # One lock for every slot: consumers (a screen, the demo's feeder) take events one after another.
        if self._on_event is not None:
            with self._emit_lock:
                self._on_event(event)

    def _step(self, run: _Run, name: str, fn: Callable[[], Any]) -> Any:
        return run.attempt.step(name, fn)

    # --------------------------------------------------------------------------------------------- run
    def run(
        self,
        request: UnitRequest,
        flasher: FlasherLike | None = None,
        *,
        open_flasher: Callable[[], FlasherLike] | None = None,
    ) -> UnitResult:
        """Provision one unit, on `flasher` or on one opened by `open_flasher` (then closed afterwards;
        a port that will not open is part of the attempt: an ERROR, recorded like any other outcome).

        Returns the result; re-raises only KeyboardInterrupt/SystemExit, after compensating and recording,
        so an interrupted station leaves nothing behind that it could have cleaned up itself.
        """
        if flasher is None and open_flasher is None:
            raise TypeError("run() needs a flasher or open_flasher")
        target = request.target
        attempt = Attempt(
            self._ledger,
            serial=request.serial,
            action=Action.PROVISION,
            slot=request.slot,
            station_id=request.station_id,
            on_event=self._publish,
        )
        result = UnitResult(
            attempt_id=attempt.attempt_id,
            serial=request.serial,
            slot=request.slot,
            product=request.product,
            target=target.name,
            station_id=request.station_id,
            registry=target.registry_key,
            started_at=attempt.started_at,
        )
        # One list and one dict: what the attempt timed and undid is the result's.
        result.compensations = attempt.compensations
        result.timings_ms = attempt.timings_ms
        run = _Run(request, result, attempt)
        run.flasher = flasher
        attempt.emit(
            "unit_started",
            data={"attempt_id": result.attempt_id, "target": target.name, "product": request.product},
        )
        error: StationError | None = None
        abort: BaseException | None = None
        try:
            try:
                self._run_steps(run, open_flasher)
            except BaseException as exc:
                error = classify(exc)
                if not isinstance(exc, Exception):
                    abort = exc  # KeyboardInterrupt / SystemExit: clean up, then let it go on
                elif not isinstance(exc, StationError):
                    log.error(
                        "unexpected error provisioning %s:\n%s",
                        request.serial,
                        redact("".join(traceback.format_exception(exc))),
                    )
                attempt.compensate()
                if error is exc:
                    # Its traceback's frames still reference the identity (and so the key); the operator
                    # needs only the title, message and next action from here on.
                    exc.__traceback__ = None
            finally:
                # The key is needed by nobody after verify (or after a failure): drop our only reference.
                run.identity = None
            attempt.total()
            self._finish(run, error)
        finally:
            if flasher is None and run.flasher is not None:
                try:
                    run.flasher.close()
                except Exception:
                    log.exception("closing the port of %s failed", request.serial)
        if abort is not None:
            raise abort
        return result

    def _run_steps(self, run: _Run, open_flasher: Callable[[], FlasherLike] | None) -> None:
        request = run.request
        result = run.result
        old = self._prior_identities(request)
        # A shared ledger lets one attempt at a time work on a serial, factory-wide: a second station (or
        # slot) scanning the same unit meanwhile gets the re-scan answer before anything is touched.
        self._ledger.claim_unit(
            request.serial,
            result.attempt_id,
            station_id=request.station_id,
            slot=request.slot,
            replacing=[i.certificate_id for i in old],
        )
        run.claimed = True

        def identify() -> DeviceInfoLike:
            if run.flasher is None:
                assert open_flasher is not None
                run.flasher = open_flasher()
            result.family = _safe_family(run.flasher)
            return run.flasher.identify()

        info = self._step(run, "identify", identify)
        flasher = run.flasher
        assert flasher is not None
        result.device_id = info.device_id or None
        result.firmware = info.firmware or None
        evidence = info.evidence
        if evidence:
            # What the unit proved about itself (e.g. the nRF91's attestation token) goes into its record.
            result.extra["device_evidence"] = {str(k): str(v) for k, v in evidence.items()}
        # Decide the flow before anything is made or sent: an impossible plan costs nothing.
        caps = flasher.capabilities
        key_source = _plan_key_source(request, caps)
        verify_mode = _plan_verify(key_source, caps, can_observe=self._observer_for is not None)
        result.key_source = key_source
        result.verify_mode = verify_mode
        if (
            request.check_device_id
            and result.device_id
            and not self._device_id_matches(request.serial, result.device_id)
        ):
            raise wrong_unit(request.serial, result.device_id)
        thing_name = request.thing_name(result.device_id)
        result.thing_name = thing_name

        identity = self._step(
            run, "identity", lambda: self._make_identity(request, flasher, key_source, thing_name)
        )
        run.identity = identity
        result.certificate_id = identity.certificate_id
        result.certificate_pem = identity.certificate_pem

        self._write_and_register(run, flasher, thing_name)

        if verify_mode == "host":
            self._step(run, "verify", lambda: self._host_verify(run, thing_name))
        elif verify_mode == "observe":
            self._step(run, "verify", lambda: self._observe_verify(run, flasher, thing_name))
        else:
            self._step(run, "verify", lambda: self._device_verify(run, flasher, thing_name))
        # Verified: nobody needs the key any more.
        run.identity = None
        if old:
            self._retire(run, old)

    # -------------------------------------------------------------------------------------- re-scans
    def _prior_identities(self, request: UnitRequest) -> list[LiveIdentity]:
        """The unit's live identities in the request's target when it is re-scanned (before anything is
        touched): refused with a FAIL unless the product replaces them (then they are returned)."""
        if self._unit_state is None:
            return []
        state = self._unit_state(request.serial)
        live = list(state.live) if state is not None else []
        if state is None or not live:
            return []
        if request.on_reprovision != "replace":
            newest = max(live, key=lambda i: i.since)
            raise UnitFault(
                _("Already provisioned"),
                _(
                    "{serial} was provisioned on {since} at {state} as {certificate_id}; send it to QA."
                ).format(
                    serial=request.serial,
                    since=_day(newest.since),
                    state=self._where_made(newest, state),
                    certificate_id=newest.thing_name or newest.certificate_id[:12],
                ),
                _("Put the unit in the QA tray: QA re-verifies, revokes or re-provisions it."),
            )
        return [i for i in live if i.target == request.target.name]

    def _where_made(self, identity: LiveIdentity, state: UnitState) -> str:
        """station/slot of the attempt that made `identity` live (its record), else of the unit's state."""
        if identity.attempt_id:
            try:
                made = [
                    r for r in self._ledger.find(identity.attempt_id) if r.attempt_id == identity.attempt_id
                ]
            except Exception:
                made = []
            if made:
                return f"{made[0].station_id}/{made[0].slot}"
        return f"{state.station_id}/{state.slot}"

    def _retire(self, run: _Run, old: list[LiveIdentity]) -> None:
        """The new identity is verified: revoke the unit's old certificates in AWS (AWS's order). Each revoke
        has a journal entry of its own, closed once done; one that fails stays open for reconcile (the unit
        is then `superseded`: its record names both). A failure here does not fail the unit."""
        request = run.request
        result = run.result
        registry = self._registry_for(request.target)
        for identity in old:
            cert_id = identity.certificate_id
            if not cert_id or cert_id == result.certificate_id:
                continue  # the same certificate again (a unit that keeps its own): nothing to retire
            result.replaced.append(cert_id)
            journal_id = None
            try:
                journal_id = self._ledger.journal_open(
                    attempt_id=result.attempt_id,
                    serial=request.serial,
                    slot=request.slot,
                    product=request.product,
                    target=request.target.name,
                    account_id=result.registry[0],
                    region=result.registry[1],
                    certificate_id=cert_id,
                    thing_name=identity.thing_name,
                    stage=Stage.REVOKING,
                    purpose=REPLACE_REVOKE,
                    station_id=request.station_id,  # whose cleaner may finish it (station.cleanup)
                )
                run.attempt.step("retire", functools.partial(registry.revoke, cert_id, delete_thing=None))
            except Exception as exc:
                detail = exc.message if isinstance(exc, StationError) else type(exc).__name__
                if journal_id is not None:
                    try:  # over for this attempt: the line's cleaner (or reconcile) revokes it when AWS answers
                        self._ledger.journal_update(journal_id, stage=Stage.CLEANUP_PENDING)
                    except Exception:
                        log.exception("could not mark the retire journal of %s", request.serial)
                run.attempt.emit(
                    "compensation",
                    step="retire",
                    outcome="failed",
                    message=_(
                        "The old certificate {certificate_id}… could not be revoked yet: {detail}"
                    ).format(certificate_id=cert_id[:12], detail=detail),
                    data={"certificate_id": cert_id, "thing_name": identity.thing_name},
                )
                continue
            result.replaced_revoked.append(cert_id)
            try:
                self._ledger.journal_close(journal_id, outcome=str(Outcome.PASS))
            except Exception:
                log.exception("could not close the retire journal of %s", request.serial)

    # ---------------------------------------------------------------------------------------- identity
    def _make_identity(
        self, request: UnitRequest, flasher: FlasherLike, key_source: str, thing_name: str
    ) -> Identity:
        target = request.target
        if key_source == "read":
            pem = flasher.read_certificate()
            if self._check_certificate is not None:
                try:
                    self._check_certificate(pem)
                except StationError as exc:
                    # The unit's own certificate breaks AWS's rules: the unit is bad, not the station.
                    raise UnitFault(
                        _("Device certificate rejected"), exc.message, _("Put the unit in the rework bin.")
                    ) from None
            return Identity(certificate_pem=pem, certificate_id=self._certificate_id(pem))
        if key_source == "device":
            csr = flasher.keygen(thing_name)
            pem = self._sign_csr(csr, request.issuer, common_name=thing_name, days=target.certificate_days)
            return Identity(certificate_pem=pem, certificate_id=self._certificate_id(pem))
        return self._new_identity(
            thing_name, key_type=target.key_type, days=target.certificate_days, issuer=request.issuer
        )

    # ------------------------------------------------------------------------------- write ‖ register
    def _write_and_register(self, run: _Run, flasher: FlasherLike, thing_name: str) -> None:
        request = run.request
        result = run.result
        identity = run.identity
        assert identity is not None
        registry = self._registry_for(request.target)
        # Open the journal before the first AWS side effect: the certificate id is known already (SHA-256
        # of the DER), so a station killed during register still leaves enough for reconcile to find it.
        run.attempt.journal_open(
            product=request.product,
            target=request.target.name,
            account_id=result.registry[0],
            region=result.registry[1],
            certificate_id=identity.certificate_id,
            certificate_pem=identity.certificate_pem,
            thing_name=thing_name,
            stage=Stage.REGISTERING,
            station_id=request.station_id,  # whose cleaner may finish it (station.cleanup)
        )
        cloud_error: list[BaseException] = []

        def cloud() -> None:
            try:
                self._step(run, "register", lambda: self._register(run, registry, thing_name))
            except BaseException as exc:
                cloud_error.append(exc)

        writes = result.key_source != "read"
        # The unit gets the server CA the target names (the lab's own CA; None on AWS, whose root the
        # firmware carries), so it can connect by itself later — and for a device-side verify now.
        ca_pem = request.ca_bytes.decode("ascii", "replace") if request.ca_bytes else None
        cloud_thread = threading.Thread(
            target=cloud, name=f"register-{request.slot or request.serial}", daemon=True
        )
        if result.key_source != "read":
            # register may fail yet have made the certificate (a lost answer): a certificate this attempt
            # made can only be in AWS because of it, so it is removed if it is there. A device's own
            # certificate may belong to an earlier PASS: it is left for reconcile's stricter rule.
            cert_id = identity.certificate_id
            run.attempt.undo(
                "aws",
                "revoke",
                lambda: bool(cert_id) and registry.revoke(cert_id, delete_thing=None),
                skip_if_false=True,
                certificate_id=cert_id,
                thing_name=thing_name,
            )
        cloud_thread.start()
        write_error: BaseException | None = None
        try:
            if writes:
                run.attempt.undo(
                    "device",
                    "wipe",
                    flasher.wipe,
                    certificate_id=identity.certificate_id,
                    thing_name=thing_name,
                )
                self._step(run, "write", lambda: flasher.write_identity(identity, ca_pem=ca_pem))
        except BaseException as exc:
            write_error = exc
        finally:
            # Always wait for the cloud side: what it did decides what has to be undone.
            cloud_thread.join()
        if result.timings_ms.get("write") is not None or result.timings_ms.get("register") is not None:
            result.timings_ms["write_register"] = round(
                max(result.timings_ms.get("write", 0.0), result.timings_ms.get("register", 0.0)), 3
            )
        # A station fault on either side wins over a unit fault on the other: if the cloud is down the
        # unit may be fine, and calling a technician is the safer instruction. Interrupts win over all.
        errors = [e for e in (write_error, *cloud_error) if e is not None]
        if errors:
            raise _most_serious(errors)

    def _register(self, run: _Run, registry: RegistryLike, thing_name: str) -> None:
        identity = run.identity
        assert identity is not None
        # Whose certificate AWS would be refusing decides the fault: one the station made is the station's.
        origin = "station" if run.result.key_source == "station" else "unit"
        made: dict[str, Any] = {}
        try:
            register_in_target(
                run.attempt,
                registry,
                identity,
                thing_name,
                origin=origin,
                key_source=run.result.key_source,
                made=made,
            )
        finally:
            if "registration" in made:
                run.registration = made["registration"]
                run.result.certificate_arn = run.registration.certificate_arn
            run.thing_created = run.result.thing_created = bool(made.get("thing_created", False))

    # ------------------------------------------------------------------------------------------ verify
    def _host_verify(self, run: _Run, thing_name: str) -> None:
        identity = run.identity
        assert identity is not None
        registry = self._registry_for(run.request.target)
        host, port = registry.data_endpoint()
        self._verifier(
            identity,
            thing_name=thing_name,
            host=host,
            port=port,
            ca_bytes=run.request.ca_bytes,
            where=_where(registry, run.request.target),
        )
        run.attempt.journal(stage=Stage.VERIFIED)

    def _device_verify(self, run: _Run, flasher: FlasherLike, thing_name: str) -> None:
        registry = self._registry_for(run.request.target)
        host, port = registry.data_endpoint()
        self._point_device(run, flasher, thing_name)
        flasher.device_verify(host, port, thing_name)
        run.attempt.journal(stage=Stage.VERIFIED)

    @staticmethod
    def _point_device(run: _Run, flasher: FlasherLike, thing_name: str) -> None:
        """A unit that verifies from its own side is pointed at the target even though nothing was written:
        a failure from here wipes it (ExpressLink: back to its previous endpoint), so a failed unit never
        keeps a live setup."""
        run.attempt.undo(
            "device", "wipe", flasher.wipe, certificate_id=run.result.certificate_id, thing_name=thing_name
        )

    def _observe_verify(self, run: _Run, flasher: FlasherLike, thing_name: str) -> None:
        """Watch the unit's hello with the station's observer: subscribe first, then tell the unit to go
        online, then wait (bounded) for a hello carrying the certificate id that was registered."""
        request = run.request
        if self._observer_for is None:
            raise _cannot_verify()
        observer = self._observer_for(request.target)  # StationFault when it cannot be made or connect
        watch = observer.watch(thing_name)  # subscribed before the unit can say anything
        try:
            # From here the unit may be live on the target: a failure wipes it like a device-side verify.
            self._point_device(run, flasher, thing_name)
            flasher.go_online()
            hello = watch.wait(request.hello_timeout_s)
        finally:
            watch.close()
        expected = run.result.certificate_id
        if hello is None:
            raise UnitFault(
                _("No hello from the unit"),
                _(
                    "{thing_name} did not announce itself on {topic} within "
                    "{hello_timeout_s:g} s of going online: {where} did not accept its "
                    "certificate, or the unit cannot reach the target's endpoint."
                ).format(
                    thing_name=thing_name,
                    topic=watch.topic,
                    hello_timeout_s=request.hello_timeout_s,
                    where=observer.where,
                ),
                _(
                    "Put the unit in the rework bin; if every unit fails like this, call a technician to check "
                    "the target's endpoint and policy."
                ),
            )
        announced = str(hello.get("certificate_id", ""))
        if announced.lower() != expected.lower():
            raise UnitFault(
                _("Unit announced another certificate"),
                _(
                    "{thing_name} connected with certificate {announced}…, not the one the "
                    "station registered ({expected}…)."
                ).format(thing_name=thing_name, announced=announced[:12] or "(none)", expected=expected[:12]),
                _("Put the unit in the rework bin."),
            )
        run.attempt.journal(stage=Stage.VERIFIED)

    # ------------------------------------------------------------------------------------------ record
    def _finish(self, run: _Run, error: StationError | None) -> None:
        result = run.result
        attempt = run.attempt
        if error is not None and not attempt.aws_clean:
            error = cleanup_pending_fault(error, result)
            self._mark_cleanup_pending(run)
        self._set_outcome(result, error)
        result.finished_at = time.time()
        finished: Event | None = None

        def record() -> Any:
            # unit_finished goes to the ledger with the record; listeners get it once the record is written.
            nonlocal finished
            finished = self._finished_event(run, publish=False)
            return attempt.record(self._record_factory(result))

        try:
            attempt.step("record", record, keep_finish=False)
            result.recorded = True
        except BaseException as exc:
            # No record → a registered certificate would have no PASS record: undo it like any failure.
            log.error("could not record the attempt for %s: %s", result.serial, type(exc).__name__)
            if error is None:
                attempt.compensate()
            # The ledger's own refusal (another station made the unit live meanwhile) is the unit's answer;
            # anything else means the ledger could not be written.
            refusal = exc if isinstance(exc, UnitFault) else None
            self._set_outcome(
                result,
                refusal
                or StationFault(
                    _("Ledger unavailable"),
                    _("The station could not write this unit's record, so the unit was not passed."),
                    _("Call a technician to check the ledger; then scan the unit again."),
                ),
            )
            finished = self._finished_event(run, keep=False)
            if run.claimed:
                try:
                    self._ledger.release_unit(result.serial, result.attempt_id)
                except Exception:  # the claim expires by itself; the unit's outcome is already decided
                    log.exception("could not release the claim on %s", result.serial)
        # Close the journal only when the record is written and AWS holds nothing unaccounted for: a
        # failed rollback keeps it open for the line's cleaner (station.cleanup) or `station reconcile`.
        if not attempt.aws_clean and error is None and result.outcome != Outcome.PASS:
            self._mark_cleanup_pending(run)  # the record failed and so did the undo after it
        result.journal_closed = attempt.journal_close(str(result.outcome))
        if result.recorded and finished is not None:
            attempt.publish(finished)

    def _mark_cleanup_pending(self, run: _Run) -> None:
        """The attempt is over but AWS still holds what it made: say so in its journal entry, so a cleaner
        knows it may act on it now (an entry without this mark may belong to a unit still in progress)."""
        try:
            run.attempt.journal(stage=Stage.CLEANUP_PENDING)
        except Exception:
            log.exception("could not mark the journal of %s cleanup pending", run.request.serial)

    @staticmethod
    def _finished_event(run: _Run, *, keep: bool = True, publish: bool = True) -> Event:
        result = run.result
        return run.attempt.emit(
            "unit_finished",
            keep=keep,
            publish=publish,
            outcome=str(result.outcome),
            title=result.title,
            message=result.message,
            next_action=result.next_action,
            duration_ms=result.timings_ms.get("total"),
            data=result.summary(),
        )

    @staticmethod
    def _set_outcome(result: UnitResult, error: StationError | None) -> None:
        result.outcome = outcome_of(error)
        if error is None:
            result.title = _("Provisioned")
            result.message = _("{thing_name} is registered in {target} and verified.").format(
                thing_name=result.thing_name, target=result.target
            )
            left = [c for c in result.replaced if c not in result.replaced_revoked]
            if result.replaced_revoked:
                gone = ", ".join(f"{c[:12]}…" for c in result.replaced_revoked)
                result.message += _(" It replaces certificate {certificates}, revoked.").format(
                    certificates=gone
                )
            if left:
                result.message += _(
                    " The old certificate {certificates} could not be revoked yet; the station retries (reconcile)."
                ).format(certificates=", ".join(f"{c[:12]}…" for c in left))
            result.next_action = _("Put the unit in the good bin.")
            result.error_kind = ""
        else:
            result.title = error.title
            result.message = error.message
            result.next_action = error.next_action
            result.error_kind = type(error).__name__


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def register_in_target(
    attempt: Attempt,
    registry: RegistryLike,
    identity: Identity,
    thing_name: str,
    *,
    origin: str,
    key_source: str = "",
    made: dict[str, Any] | None = None,
) -> tuple[Registration, bool]:
    """The cloud half of the step order: register the certificate, make the thing, attach policy and thing.

    The journal is updated once, after the thing is made (with what register answered: see below), and
    the undo (roll back only what this call made) is registered with the attempt as soon as there is
    something to undo. The pipeline runs it on its helper thread; QA register and transfer run it too, so
    this order lives here only. Ownership follows the identity's origin (`key_source` "station"/"device":
    this attempt generated it, so it owns it whatever the registry answered). `made` gets "registration"
    and "thing_created" as they happen (also when a later step raises). Returns the registration and
    whether this call made the thing.
    """
    made = {} if made is None else made
    registration = registry.register(identity, origin=origin)
    made["registration"] = registration
    answered_created = registration.created
    created = answered_created or _claim_generated(registration, key_source)
    attempt.undo(
        "aws",
        "rollback",
        lambda: registry.rollback(registration),
        done_text=None if created else _KEPT_TEXT,
        certificate_id=identity.certificate_id,
        thing_name=thing_name,
    )
    # What register answered goes to the journal with the next write, not a write of its own: reconcile
    # and the cleaner need only the certificate id (journaled at open, before register) to revoke the
    # certificate, and revoke decides by what AWS holds, not by the stage or `certificate_created`. A
    # station killed before that write leaves stage "registering", which reconcile resolves the same way.
    arn = registration.certificate_arn
    answer = "" if answered_created else "already registered"
    try:
        thing_created = bool(registry.create_thing(thing_name))
    except BaseException as exc:
        # The registry could not learn whether its CreateThing took effect, and the thing was not there
        # before: the attempt owns it if it exists, so the rollback (or reconcile) deletes it.
        if isinstance(exc, StationError) and exc.thing_maybe_created == thing_name:
            made["thing_created"] = True
            _note_thing(registration, thing_name, True)
            attempt.journal(
                stage=Stage.THING,
                thing_created=True,
                thing_answer="lost",
                certificate_created=created,
                certificate_arn=arn,
                registry_answer=answer,
            )
        else:
            attempt.journal(
                stage=Stage.REGISTERED,
                certificate_created=created,
                certificate_arn=arn,
                registry_answer=answer,
            )
        raise
    made["thing_created"] = thing_created
    _note_thing(registration, thing_name, thing_created)
    # `thing_created` is the one fact recovery needs that AWS cannot tell (whether this attempt made the
    # thing, so that a revoke may delete it): durable now, before the next AWS call. Attaching needs no
    # write of its own: revoke detaches whatever is attached, so the stage after attach is the next one
    # the caller writes (verified), and a station killed while attaching or verifying leaves stage "thing".
    attempt.journal(
        stage=Stage.THING,
        thing_created=thing_created,
        certificate_created=created,
        certificate_arn=arn,
        registry_answer=answer,
    )
    registry.attach(registration, thing_name)
    return registration, thing_created


def _day(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(float(epoch or 0.0)))


def _where(registry: RegistryLike, target: Target) -> str:
    """ "<account>/<region>" for the verify's messages."""
    if registry.where:
        return registry.where
    account, region = target.registry_key
    return f"{account}/{region}"


def _same_id(serial: str, device_id: str) -> bool:
    return serial.strip().casefold() == device_id.strip().casefold()


def _safe_family(flasher: FlasherLike) -> str:
    try:
        return str(flasher.family)
    except Exception:
        return ""


def _plan_key_source(request: UnitRequest, caps: CapabilitiesLike) -> str:
    """Which identity flow this unit gets, decided before anything is done to it."""
    if caps.reads_certificate and not caps.writes_key and not caps.device_keygen:
        return "read"
    wanted = request.key_source
    if wanted not in KEY_SOURCES:
        raise StationFault(
            _("Bad key source"),
            _("The product asks for key source {wanted!r}; the station knows {KEY_SOURCES}.").format(
                wanted=wanted, KEY_SOURCES=", ".join(KEY_SOURCES)
            ),
            _("Call a technician to fix the station configuration."),
        )
    if wanted == "auto":
        wanted = "device" if caps.device_keygen and request.issuer is not None else "station"
    if wanted == "device":
        if not caps.device_keygen:
            raise StationFault(
                _("Device cannot make keys"),
                _("The product asks for device-made keys but this device family cannot generate a key."),
                _("Call a technician to fix the product's key source."),
            )
        if request.issuer is None:
            raise StationFault(
                _("No issuer for device keys"),
                _("Target {name} has no issuer to sign the device's certificate request.").format(
                    name=request.target.name
                ),
                _("Call a technician to configure an issuer for this target."),
            )
        return "device"
    if not caps.writes_key:
        if caps.reads_certificate:
            return "read"
        raise StationFault(
            _("Device cannot take a key"),
            _("The product asks for station-made keys but this device family cannot store one."),
            _("Call a technician to fix the product's key source."),
        )
    return "station"


def _plan_verify(key_source: str, caps: CapabilitiesLike, *, can_observe: bool = False) -> str:
    if key_source == "station":
        return "host"  # the station holds the key until verify is done
    if caps.device_verify:
        return "device"
    if can_observe and caps.observable:
        return "observe"  # the unit announces itself; the station watches with its own identity
    raise _cannot_verify()


def _cannot_verify() -> StationFault:
    return StationFault(
        _("Cannot verify"),
        _(
            "This device keeps its own key and cannot check its own connection, so the station cannot prove it."
        ),
        _(
            "Call a technician: this product needs a family with device-side verify or one the station can "
            "observe."
        ),
    )


def _note_thing(registration: Registration, thing_name: str, created: bool) -> None:
    """Tell the registration which thing this attempt made, so rollback deletes it and only it."""
    registration.thing_name = thing_name
    registration.thing_created = created


_KEPT_TEXT = N_(  # translated where the undo is reported (station.attempt)
    "The certificate was registered before this attempt and was kept; what this attempt added to it in AWS "
    "was undone."
)


def _claim_generated(registration: Registration, key_source: str) -> bool:
    """Ownership follows the identity's origin, not the API's answer.

    A certificate this attempt generated (a fresh station key, or a device key whose CSR this attempt
    signed: a new serial and signature) cannot have existed before this attempt, so "already registered"
    can only mean this attempt's own register was processed and its answer lost (then retried). It is this
    attempt's: a rollback must delete it. Only a certificate read from the unit ("read") or imported may
    conclude "not ours". True when the registration was claimed.
    """
    if key_source not in ("station", "device"):
        return False
    registration.created = True
    return True


def cleanup_pending_fault(error: StationError, result: UnitResult) -> StationFault:
    """The unit's outcome when the undo in AWS failed: an ERROR that says so, whatever failed first."""
    left = "; ".join(
        c.detail for c in result.compensations if c.action in ("rollback", "revoke") and not c.ok and c.detail
    )
    return StationFault(
        _("Cleanup pending"),
        _(
            "{title}: {message} — cleanup pending: what this attempt registered in {target} "
            "is still there ({finish}); the station will remove it when AWS answers."
        ).format(
            title=error.title,
            message=error.message,
            target=result.target,
            finish=left or _("the undo did not finish"),
        ),
        _(
            "Set the unit aside (do not ship it). The station removes the certificate by itself; if "
            '"cleanup pending" stays on the screen, call a technician (or run `station reconcile`).'
        ),
    )


def _most_serious(errors: list[BaseException]) -> BaseException:
    def rank(exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return 0
        if isinstance(exc, UnitFault):
            return 2
        return 1  # station faults and unexpected errors

    return sorted(errors, key=rank)[0]


def record_fields(result: UnitResult) -> Mapping[str, Any]:
    """The attempt record's content as plain fields (the ledger's record type is built from these)."""
    return {
        **result.extra,
        "attempt_id": result.attempt_id,
        "action": str(result.action),
        "serial": result.serial,
        "slot": result.slot,
        "product": result.product,
        "target": result.target,
        "account_id": result.registry[0],
        "region": result.registry[1],
        "station_id": result.station_id,
        "outcome": str(result.outcome),
        "title": result.title,
        "message": result.message,
        "next_action": result.next_action,
        "error_kind": result.error_kind,
        "device_id": result.device_id,
        "firmware": result.firmware,
        "family": result.family,
        "thing_name": result.thing_name,
        "certificate_id": result.certificate_id,
        "certificate_arn": result.certificate_arn,
        "certificate_pem": result.certificate_pem,
        "thing_created": result.thing_created,
        "key_source": result.key_source,
        "verify_mode": result.verify_mode,
        "timings_ms": dict(result.timings_ms),
        "compensations": [c.as_dict() for c in result.compensations],
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        # A re-provision names what it superseded (read by `station.units.apply`).
        **(
            {"replaced": list(result.replaced), "replaced_revoked": list(result.replaced_revoked)}
            if result.replaced
            else {}
        ),
    }


# ---------------------------------------------------------------------------------------------------------
# Reconcile: resolve what a stopped station left in its journal.
# ---------------------------------------------------------------------------------------------------------

RECONCILE_MESSAGE = N_("station stopped mid-provisioning; rolled back by reconcile")  # _() where used


class ReconcileLedger(LedgerLike, Protocol):
    def journal_pending(self) -> list[JournalEntry]: ...


@dataclass
class ReconcileItem:
    """What reconcile did with one pending journal entry."""

    journal_id: Any
    serial: str
    target: str
    certificate_id: str
    action: str  # "kept" (a PASS record exists) | "rolled_back" | "nothing_registered" | "skipped" | "failed"
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)


def reconcile(
    ledger: ReconcileLedger,
    *,
    targets: Mapping[str, Target],
    registry_for: Callable[[Target], RegistryLike],
    record_factory: RecordFactory,
    only_target: str | None = None,
    min_age_s: float = 0.0,
    station_id: str = "",
    on_event: Callable[[Event], None] | None = None,
    now: Callable[[], float] = time.time,
    include: Callable[[JournalEntry], bool] | None = None,
) -> list[ReconcileItem]:
    """Resolve every pending journal entry so that no certificate stays registered without a PASS record.

    For each entry: if the ledger holds a PASS record for its certificate in its target, the journal is just
    closed. Otherwise whatever AWS still holds for it is removed (detach, deactivate, delete, and the thing
    if the journal says this attempt made it), an ERROR record is written if the attempt has none, and the
    journal is closed. An entry that cannot be resolved (target unknown, AWS unreachable) stays open and is
    reported as "failed". Run it when no station is provisioning on this ledger (or use `min_age_s`), since
    an in-flight unit also has an open journal. `include(entry)` narrows it to the entries a caller may touch
    (the line's cleaner: this station's, not in a live slot); the others are not reported.
    """
    items: list[ReconcileItem] = []
    for entry in ledger.journal_pending():
        if include is not None and not include(entry):
            continue
        item = ReconcileItem(
            journal_id=entry.id,
            serial=entry.serial,
            target=entry.target,
            certificate_id=entry.certificate_id,
            action="failed",
        )
        if only_target is not None and item.target != only_target:
            continue
        if min_age_s > 0 and now() - entry.opened_at < min_age_s:
            item.action, item.detail = "skipped", "opened too recently (a unit may still be in progress)"
            items.append(item)
            continue
        retire = entry.purpose == REPLACE_REVOKE
        attempt = Attempt(
            ledger,
            serial=item.serial,
            # The record reconcile may write: the stopped provision's, or its own for a re-provision's
            # old certificate it revoked.
            action=Action.RECONCILE if retire else Action.PROVISION,
            slot=entry.slot,
            station_id=station_id,
            on_event=on_event,
            attempt_id=None if retire else (entry.attempt_id or None),
        )
        try:
            _reconcile_one(ledger, entry, item, targets, registry_for, record_factory, attempt)
        except StationError as exc:
            item.action, item.detail = "failed", f"{exc.title}: {exc.message}"
        except Exception as exc:
            log.error(
                "reconcile of %s failed:\n%s", item.serial, redact("".join(traceback.format_exception(exc)))
            )
            item.action, item.detail = "failed", type(exc).__name__
        items.append(item)
        if not attempt.recorded:
            _reconcile_event(attempt, item)
            attempt.flush_events()
    return items


def _retire_one(
    ledger: ReconcileLedger,
    entry: JournalEntry,
    item: ReconcileItem,
    target: Target,
    registry: RegistryLike,
    attempt: Attempt,
    record_factory: RecordFactory,
) -> None:
    """A re-provision's old certificate that was not revoked then: revoke it now, record it (action
    reconcile, DONE, `extra.revoked`), close the entry. AWS's refusal keeps the entry open."""
    existed = registry.revoke(item.certificate_id, delete_thing=None)
    item.action = "rolled_back" if existed else "nothing_registered"
    item.detail = (
        f"old certificate {item.certificate_id[:12]}… of a re-provisioned unit revoked by reconcile"
        if existed
        else "the old certificate of a re-provisioned unit is not registered any more"
    )
    _reconcile_event(attempt, item)
    result = UnitResult(
        attempt_id=attempt.attempt_id,
        serial=item.serial,
        slot=attempt.slot,
        product=entry.product,
        target=target.name,
        station_id=attempt.station_id,
        registry=target.registry_key,
        outcome=Outcome.DONE,
        title=_("Old certificate revoked"),
        message=item.detail,
        thing_name=entry.thing_name,
        certificate_id=item.certificate_id,
        started_at=attempt.started_at,
        finished_at=time.time(),
        action=Action.RECONCILE,
        extra={
            "revoked": [item.certificate_id],
            "replaced_by_attempt": entry.attempt_id,
        },
    )
    attempt.total()
    result.timings_ms = attempt.timings_ms
    attempt.record(record_factory(result))
    ledger.journal_close(item.journal_id, outcome=str(Outcome.DONE))


def _reconcile_event(attempt: Attempt, item: ReconcileItem) -> Event:
    return attempt.emit(
        "compensation",
        step="reconcile",
        outcome="failed" if item.action == "failed" else "ok",
        message=item.detail,
        data=item.as_dict(),
    )


def _reconcile_one(
    ledger: ReconcileLedger,
    entry: JournalEntry,
    item: ReconcileItem,
    targets: Mapping[str, Target],
    registry_for: Callable[[Target], RegistryLike],
    record_factory: RecordFactory,
    attempt: Attempt,
) -> None:
    station_id = attempt.station_id
    target = targets.get(item.target)
    if target is None:
        item.detail = f"target {item.target!r} is not in the station configuration; nothing was touched"
        return
    if attempt.action == Action.RECONCILE:
        _retire_one(ledger, entry, item, target, registry_for(target), attempt, record_factory)
        return
    records = ledger.find(item.certificate_id) if item.certificate_id else []
    attempt_id = entry.attempt_id or None
    passed = [r for r in records if str(r.outcome) == Outcome.PASS and r.target == target.name]
    if passed:
        ledger.journal_close(item.journal_id, outcome=str(Outcome.PASS))
        item.action, item.detail = "kept", "a PASS record exists for this certificate"
        return
    registry = registry_for(target)
    thing = entry.thing_name if entry.thing_created else None
    # revoke detaches, deactivates and deletes in AWS's order, and says whether the certificate was there.
    if item.certificate_id and registry.revoke(item.certificate_id, delete_thing=thing):
        item.action, item.detail = "rolled_back", _(RECONCILE_MESSAGE)
    else:
        item.action, item.detail = "nothing_registered", "the certificate is not registered in the target"
    has_record = attempt_id is not None and any(r.attempt_id == attempt_id for r in records)
    if not has_record:
        result = UnitResult(
            attempt_id=str(attempt_id or uuid.uuid4().hex),
            serial=item.serial,
            slot=entry.slot,
            product=entry.product,
            target=target.name,
            station_id=station_id,
            registry=target.registry_key,
            outcome=Outcome.ERROR,
            title=_("Rolled back by reconcile"),
            message=_(RECONCILE_MESSAGE),
            next_action=_("Scan the unit again to provision it."),
            error_kind="StationFault",
            thing_name=entry.thing_name,
            certificate_id=item.certificate_id,
            compensations=[
                Compensation("revoke" if item.action == "rolled_back" else "reconcile", True, item.detail)
            ],
            started_at=entry.opened_at,
            finished_at=time.time(),
        )
        _reconcile_event(attempt, item)
        attempt.record(record_factory(result))
    ledger.journal_close(item.journal_id, outcome=str(Outcome.ERROR))
