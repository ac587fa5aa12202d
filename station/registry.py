"""One target's AWS IoT registry: register without CA, things, policy, attach, rollback, revoke, preflight.

What it does (over `station.aws.AwsIot`, which owns the session, the metered client, throttling and the
translation of AWS errors into operator words):
- registers a certificate with `RegisterCertificateWithoutCA` (status ACTIVE), idempotently: the certificate
  id is computed locally (SHA-256 of the DER), a 409 means "already there" and the attempt carries on;
- makes the thing (idempotent, remembering whether this attempt made it), makes sure the target's policy
  exists, attaches policy and thing principal;
- undoes all that in AWS's order (detach policies, detach things, INACTIVE, delete; delete the thing only if
  this attempt made it) for a rollback, a revoke, or the source side of a transfer;
- decides whose fault a refused certificate is (by its origin: the unit, the station or a person's file);
- makes and removes the station's own observer (`provision_observer` / `remove_observer`): a certificate, a
  thing and a policy of its own that may connect as that one client id and subscribe to / receive the topics
  it is given (the hellos of units whose key the station never holds; see `station.observe`). It is never
  journaled as a unit and uses neither the target's device policy, thing type nor thing group, so reconcile,
  preflight and fleet operations never meet it as a unit;
- preflight: read-only checks of credentials, endpoint, policy (present, not over-broad), thing type/group.

It must not: build sessions or clients or translate AWS errors itself (`station.aws` does); import the lab;
decide anything by matching error message text; send a certificate to AWS before checking it locally; ever
use `forceDelete` (moto leaves a dangling policy attachment with it, and AWS's order is the documented one);
handle private keys (only certificates go to AWS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

import boto3
from botocore.exceptions import ClientError

from station.aws import (
    CERT_INVALID,
    CERT_STATE,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_THROTTLE_WAIT_S,
    DELETE_CONFLICT,
    EXISTS,
    INVALID_REQUEST,
    NOT_FOUND,
    AwsIot,
    account_from_arn,
    error_code,
    session_for,
)
from station.errors import CertificateRejected, StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.identity import certificate_id as local_certificate_id
from station.identity import check_aws_acceptance
from station.model import Identity, Registration, Target
from station.policy import is_over_broad, render_policy
from station.ratelimit import DEFAULT_QUOTAS, Budget, RateBudget, shared_budget_for

__all__ = [
    "DEFAULT_QUOTAS",
    "OBSERVER_PREFIX",
    "Check",
    "ObserverRegistration",
    "RateBudget",
    "Registration",
    "Registry",
    "session_for",
    "shared_budget",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Where a certificate came from decides who is at fault when AWS refuses it.
ORIGINS = ("unit", "station", "file")

_TECHNICIAN = "Call a technician; the unit itself is fine, scan it again once this is fixed."
_RECONCILE = N_(
    "Run `station reconcile` to remove what is left (or call a technician); do not reuse this unit's "
    "certificate until it is cleaned up."
)


# ---------------------------------------------------------------------------------------------------------
# Plain results
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObserverRegistration:
    """The station's observer in one registry: all three things `remove_observer` deletes."""

    name: str  # client id = thing name = policy name
    certificate_id: str
    certificate_arn: str
    policy_document: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Every observer's name starts with this: a person looking at the registry can tell it from a unit.
OBSERVER_PREFIX = "station-observer-"


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def observer_policy_document(region: str, account_id: str, client_id: str, topics: Collection[str]) -> str:
    """Connect as `client_id` only; subscribe to and receive `topics` (AWS wildcards, e.g. things/*/hello).

    No publish, no other client id: the observer can watch, never act as a unit.
    """
    arn = f"arn:{_partition(region)}:iot:{region}:{account_id}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{client_id}"},
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"{arn}:topicfilter/{topic}" for topic in topics],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [f"{arn}:topic/{topic}" for topic in topics],
            },
        ],
    }
    return json.dumps(document, separators=(",", ":"))


@dataclass(frozen=True)
class Check:
    """One preflight finding: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    message: str
    next_action: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shared_budget(target: Target, quotas: Mapping[str, float] | None = None) -> Budget:
    """The one RateBudget of `target`'s (account, region) in this process (shared by every Registry)."""
    return shared_budget_for(target.registry_key, quotas)


class Registry:
    """One target's registry (account + region). Thread-safe: slots may share one instance.

    Keyword options: `station_id` (names the assumed-role session), `budget` (default: the process-wide one
    for this account-region), `max_attempts` (botocore's adaptive retries per call), `throttle_wait_s`
    (how long throttling is waited out before it becomes a StationFault), `delete_wait_s` (how long a delete
    is retried while AWS finishes an asynchronous detach), `session` (an existing boto3 session).
    """

    def __init__(
        self,
        target: Target,
        *,
        station_id: str = "station",
        budget: Budget | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        throttle_wait_s: float = DEFAULT_THROTTLE_WAIT_S,
        delete_wait_s: float = 15.0,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        session: boto3.Session | None = None,
    ) -> None:
        self.target = target
        self.station_id = station_id
        self.budget = budget if budget is not None else shared_budget(target)
        self.throttle_wait_s = throttle_wait_s
        self.delete_wait_s = delete_wait_s
        self._aws = AwsIot(
            target,
            budget=self.budget,
            station_id=station_id,
            max_attempts=max_attempts,
            throttle_wait_s=throttle_wait_s,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            session=session,
        )
        self._call = self._aws.call
        self._lock = threading.RLock()
        self._endpoint: str | None = None
        self._policy_ready = False
        self._policy_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Registry({self.target.name!r}, {self.where})"

    @property
    def where(self) -> str:
        """The registry as "<account>/<region>" for messages, without any AWS call."""
        return self._aws.where

    # ------------------------------------------------------------------------------------------ account
    @property
    def account_id(self) -> str:
        """The target's account: configured, or asked of STS (get_caller_identity) once and cached."""
        return self._aws.account_id

    def caller_account(self) -> str:
        """The account the credentials really act in (always asks STS; for preflight)."""
        return self._aws.caller_account()

    def data_endpoint(self) -> tuple[str, int]:
        """(host, port) of the iot:Data-ATS endpoint: the configured one, or discovered once and cached."""
        if self.target.endpoint:
            return (self.target.endpoint, self.target.port)
        with self._lock:
            if self._endpoint is None:
                answer = self._call("describe_endpoint", endpointType="iot:Data-ATS")
                self._endpoint = str(answer["endpointAddress"])
            return (self._endpoint, self.target.port)

    # ------------------------------------------------------------------------------------------ register
    def register(self, identity: Identity, *, origin: str = "unit") -> Registration:
        """Register the identity's certificate ACTIVE; 409 (already registered) → `created=False`.

        `origin` says whose certificate it is, which decides the fault when AWS refuses it: "unit" (read
        from or made by the device → UnitFault), "station" (made by the station → StationFault), "file"
        (imported by a person → CertificateRejected). The certificate is checked locally first.
        """
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}")
        pem = identity.certificate_pem
        try:
            check_aws_acceptance(pem)
            cert_id = local_certificate_id(pem)
        except StationError as error:
            raise _rejected(error, origin) from None
        if identity.certificate_id and identity.certificate_id != cert_id:
            raise StationFault(
                _("Certificate id mismatch"),
                _(
                    "The identity says certificate id {certificate_id}… but its certificate's "
                    "SHA-256 is {cert_id}…."
                ).format(certificate_id=identity.certificate_id[:12], cert_id=cert_id[:12]),
                _("Call a technician: the station built an inconsistent identity."),
            )
        try:
            answer = self._call(
                "register_certificate_without_ca",
                passthrough=(EXISTS, CERT_INVALID),
                certificatePem=pem,
                status="ACTIVE",
            )
        except ClientError as error:
            if error_code(error) == CERT_INVALID:
                raise _rejected(
                    CertificateRejected(
                        _("Certificate not accepted by AWS IoT"),
                        _("AWS IoT in {where} refused the certificate ({code}).").format(
                            where=self.where, code=CERT_INVALID
                        ),
                        _("Issue a new certificate for this unit (RSA ≥ 2048 or EC P-256/P-384, SHA-256+)."),
                    ),
                    origin,
                ) from None
            return self._already_registered(cert_id)
        if str(answer.get("certificateId")) != cert_id:
            # A registry naming the certificate differently breaks idempotency and revoke-by-id.
            raise StationFault(
                _("Registry disagrees on the certificate id"),
                _(
                    "AWS IoT in {where} named the certificate {certificateId!s:.12}…, "
                    "not its SHA-256 {cert_id}…."
                ).format(where=self.where, certificateId=answer.get("certificateId"), cert_id=cert_id[:12]),
                _("Call a technician: this endpoint does not behave like AWS IoT."),
            )
        return self._registration(cert_id, str(answer["certificateArn"]), created=True)

    def _registration(self, cert_id: str, arn: str, *, created: bool) -> Registration:
        return Registration(
            certificate_id=cert_id,
            certificate_arn=arn,
            created=created,
            target=self.target.name,
            account_id=account_from_arn(arn) or self._aws.known_account,
            region=self.target.region,
        )

    def _already_registered(self, cert_id: str) -> Registration:
        description = self._call("describe_certificate", certificateId=cert_id)["certificateDescription"]
        arn = str(description["certificateArn"])
        status = str(description.get("status", ""))
        registration = self._registration(cert_id, arn, created=False)
        if status == "ACTIVE":
            return registration
        if status == "INACTIVE":
            self._call("update_certificate", certificateId=cert_id, newStatus="ACTIVE")
            registration.activated = True
            return registration
        if status == "REVOKED":
            raise UnitFault(
                _("Certificate revoked"),
                _("This certificate is revoked in {where}; AWS IoT will not accept it again.").format(
                    where=self.where
                ),
                _("Give the unit a new certificate (a new identity) and provision it again."),
            )
        raise StationFault(
            _("Certificate in an unexpected state"),
            _("This certificate is registered in {where} with status {unknown}.").format(
                where=self.where, unknown=status or "unknown"
            ),
            _("Call a technician: resolve the certificate's state in the AWS IoT console, then retry."),
        )

    # ------------------------------------------------------------------------------------------ things
    def create_thing(self, name: str) -> bool:
        """Make the thing unless it exists; True when this call made it. Adds the target's thing group."""
        try:
            self._call("describe_thing", passthrough=(NOT_FOUND,), thingName=name)
            created = False
        except ClientError:
            kwargs: dict[str, Any] = {"thingName": name}
            if self.target.thing_type:
                kwargs["thingTypeName"] = self.target.thing_type
            try:
                self._call("create_thing", passthrough=(EXISTS, NOT_FOUND), **kwargs)
                created = True
            except StationError as error:
                # No answer (lost, timed out, AWS failing): the thing may exist now. It did not a moment ago
                # and its name is the unit's, so if it is there this call made it: say so to the caller.
                error.thing_maybe_created = name
                raise
            except ClientError as error:
                if error_code(error) == EXISTS:
                    created = False  # another slot made it between our describe and create
                else:
                    raise StationFault(
                        _("Thing type missing"),
                        _("The thing type {thing_type!r} does not exist in {where}.").format(
                            thing_type=self.target.thing_type, where=self.where
                        ),
                        _("Call a technician: create the thing type or fix the target in station.toml."),
                    ) from error
        if self.target.thing_group:
            try:
                self._call(
                    "add_thing_to_thing_group",
                    passthrough=(NOT_FOUND,),
                    thingGroupName=self.target.thing_group,
                    thingName=name,
                )
            except (ClientError, StationError) as error:
                if created:
                    self._quietly(lambda: self._delete_thing(name))
                if isinstance(error, StationError):
                    raise
                raise StationFault(
                    _("Thing group missing"),
                    _("The thing group {thing_group!r} does not exist in {where}.").format(
                        thing_group=self.target.thing_group, where=self.where
                    ),
                    _("Call a technician: create the thing group or fix the target in station.toml."),
                ) from error
        return created

    def ensure_policy(self) -> bool:
        """Make sure the target's policy exists; create it from the target's document if it is missing.

        Returns True when this call created it. A missing policy without a document, or an over-broad
        document on a non-lab target, is a StationFault.
        """
        with self._policy_lock:
            if self._policy_ready:
                return False
            name = self.target.policy_name
            try:
                self._call("get_policy", passthrough=(NOT_FOUND,), policyName=name)
                self._policy_ready = True
                return False
            except ClientError:
                pass
            if not self.target.policy_document:
                raise StationFault(
                    _("Device policy missing"),
                    _("The policy {name!r} does not exist in {where}.").format(name=name, where=self.where),
                    _(
                        "Call a technician: create the policy in AWS IoT or give the target a policy document."
                    ),
                )
            document = self.policy_document()
            reason = is_over_broad(document)
            if reason and not self.target.lab:
                raise _over_broad(name, self.where, reason)
            try:
                self._call("create_policy", passthrough=(EXISTS,), policyName=name, policyDocument=document)
                created = True
            except ClientError:
                created = False  # another station or slot made it first
            self._policy_ready = True
            return created

    def policy_document(self) -> str:
        """The target's policy template, rendered for this account and region."""
        return render_policy(self.target, self.account_id)

    def attach(self, registration: Registration, thing_name: str) -> None:
        """Attach the target's policy and the thing to the certificate (each only if not attached yet)."""
        self.ensure_policy()
        arn = registration.certificate_arn
        policy = self.target.policy_name
        has_policy = has_thing = False
        if not registration.created:
            # A certificate that was there already may carry these attachments; do not claim them as ours.
            has_policy = policy in self._attached_policies(arn)
            has_thing = thing_name in self._principal_things(arn)
        if not has_policy:
            self._call("attach_policy", policyName=policy, target=arn)
            registration.policy_attached = True
        if not has_thing:
            self._call("attach_thing_principal", thingName=thing_name, principal=arn)
            registration.thing_attached = True
        if registration.thing_name is None:
            registration.thing_name = thing_name

    # ------------------------------------------------------------------------------------------ listings
    def _attached_policies(self, arn: str) -> list[str]:
        names: list[str] = []
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"target": arn, "recursive": False}
            if marker:
                kwargs["marker"] = marker
            answer = self._call("list_attached_policies", **kwargs)
            names.extend(str(p["policyName"]) for p in answer.get("policies", []))
            marker = answer.get("nextMarker")
            if not marker:
                return names

    def _principal_things(self, arn: str) -> list[str]:
        things: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"principal": arn}
            if token:
                kwargs["nextToken"] = token
            answer = self._call("list_principal_things", **kwargs)
            things.extend(str(t) for t in answer.get("things", []))
            token = answer.get("nextToken")
            if not token:
                return things

    def describe(self, certificate_id: str) -> dict[str, Any] | None:
        """The certificate as this registry sees it (JSON-ready), or None when it is not registered."""
        try:
            answer = self._call(
                "describe_certificate", passthrough=(NOT_FOUND,), certificateId=certificate_id
            )
        except ClientError:
            return None
        description = answer.get("certificateDescription", {})
        keep = ("certificateId", "certificateArn", "status", "creationDate", "lastModifiedDate", "ownedBy")
        result: dict[str, Any] = {}
        for key in keep:
            if key in description:
                value = description[key]
                result[key] = value.isoformat() if isinstance(value, datetime) else value
        result["account_id"] = account_from_arn(result.get("certificateArn")) or self._aws.known_account
        result["region"] = self.target.region
        return result

    # ------------------------------------------------------------------------------------------ observer
    def provision_observer(
        self, identity: Identity, name: str, *, topics: Collection[str]
    ) -> ObserverRegistration:
        """Register the station's observer: certificate (ACTIVE), a policy of its own, a thing of its own.

        `name` is the observer's client id, thing name and policy name (it must start with `OBSERVER_PREFIX`);
        `topics` are what it may subscribe to and receive. The thing gets no thing type or group (it is not a
        unit). On any failure what this call made is removed again before the error is raised.
        """
        if not name.startswith(OBSERVER_PREFIX):
            raise ValueError(f"an observer's name starts with {OBSERVER_PREFIX!r}")
        if not topics:
            raise ValueError("an observer needs at least one topic to watch")
        registration = self.register(identity, origin="station")
        document = observer_policy_document(self.target.region, self.account_id, name, topics)
        observer = ObserverRegistration(
            name=name,
            certificate_id=registration.certificate_id,
            certificate_arn=registration.certificate_arn,
            policy_document=document,
        )
        try:
            self._call("create_policy", policyName=name, policyDocument=document)
            self._call("attach_policy", policyName=name, target=registration.certificate_arn)
            self._call("create_thing", thingName=name)
            self._call("attach_thing_principal", thingName=name, principal=registration.certificate_arn)
        except BaseException:
            try:
                self.remove_observer(observer)
            except StationError:
                log.warning("could not remove a half-made observer %s in %s", name, self.where, exc_info=True)
            raise
        return observer

    def remove_observer(self, observer: ObserverRegistration) -> None:
        """Delete the observer's certificate (AWS's order), its thing and its policy. Each part that is already
        gone counts as removed; a StationFault lists what is left."""
        left = _Leftovers()
        left.remove(
            f"certificate {observer.certificate_id[:12]}…",
            lambda: self._delete_certificate(observer.certificate_id, None),
        )
        left.remove(f"thing {observer.name!r}", lambda: self._delete_thing(observer.name))
        left.remove(f"policy {observer.name!r}", lambda: self._delete_policy(observer.name))
        left.raise_if_any(
            _("Observer not removed"),
            _("Could not remove the station's observer in {where}").format(where=self.where),
            _("Delete what is left (named {name}) in the AWS IoT console, or call a technician.").format(
                name=observer.name
            ),
        )

    def _delete_policy(self, name: str) -> None:
        # A policy cannot be deleted while attached; detaching is asynchronous in AWS (409 until settled).
        self._delete_when_settled(
            "delete_policy",
            (DELETE_CONFLICT,),
            lambda code: StationFault(
                _("Policy still attached"),
                _("AWS IoT in {where} would not delete policy {name!r} ({code}).").format(
                    where=self.where, name=name, code=code
                ),
                _(_RECONCILE),
            ),
            policyName=name,
        )

    def _delete_when_settled(
        self,
        op: str,
        retry_codes: tuple[str, ...],
        give_up: Callable[[str], StationFault],
        **kwargs: Any,
    ) -> None:
        """Call the delete `op` until it succeeds or the resource is gone (NotFound: the goal is reached),
        retrying `retry_codes` with back-off for `delete_wait_s`: a detach is asynchronous in AWS and the
        delete is refused until it has settled. Past the bound, raise `give_up(code)`."""
        deadline = time.monotonic() + self.delete_wait_s
        delay = 0.1
        while True:
            try:
                self._call(op, passthrough=(*retry_codes, NOT_FOUND), **kwargs)
                return
            except ClientError as error:
                code = error_code(error)
                if code == NOT_FOUND:
                    return  # gone meanwhile (e.g. another station's revoke)
                if time.monotonic() + delay > deadline:
                    raise give_up(code) from error
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------------------------------ undo
    def rollback(self, registration: Registration) -> None:
        """Undo exactly what this attempt did, in AWS's order. Raises StationFault listing what is left."""
        left = _Leftovers()
        cert_id = registration.certificate_id
        arn = registration.certificate_arn
        if registration.created:
            left.remove(f"certificate {cert_id[:12]}…", lambda: self._delete_certificate(cert_id, arn))
        else:
            if registration.policy_attached:
                left.remove(
                    f"policy {self.target.policy_name!r} on certificate {cert_id[:12]}…",
                    lambda: self._detach_policy(self.target.policy_name, arn),
                )
            if registration.thing_attached and registration.thing_name:
                thing = registration.thing_name
                left.remove(
                    f"thing {thing!r} attached to certificate {cert_id[:12]}…",
                    lambda: self._detach_thing(thing, arn),
                )
            if registration.activated:
                left.remove(f"certificate {cert_id[:12]}… activated", lambda: self._deactivate(cert_id))
        if registration.thing_created and registration.thing_name:
            made = registration.thing_name
            left.remove(f"thing {made!r}", lambda: self._delete_thing(made))
        left.raise_if_any(
            _("Rollback incomplete"),
            _("Could not undo everything in {where}").format(where=self.where),
            _(_RECONCILE),
        )

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        """Remove the certificate from this registry (AWS's order); delete `delete_thing` if named.

        Returns True if the certificate was there. Deleting the thing is for things the station made.
        """
        left = _Leftovers()
        existed = left.remove(
            f"certificate {certificate_id[:12]}…", lambda: self._delete_certificate(certificate_id, None)
        )
        if delete_thing:
            left.remove(f"thing {delete_thing!r}", lambda: self._delete_thing(delete_thing))
        left.raise_if_any(
            _("Revoke incomplete"),
            _("Could not revoke everything in {where}").format(where=self.where),
            _("Retry `station revoke`; if it keeps failing, run `station reconcile` or call a technician."),
        )
        return bool(existed)

    def _delete_certificate(self, certificate_id: str, arn: str | None) -> bool:
        """Detach policies, detach things, INACTIVE, delete. False if the certificate was not there."""
        status: str | None = None
        if arn is None:
            try:
                answer = self._call(
                    "describe_certificate", passthrough=(NOT_FOUND,), certificateId=certificate_id
                )
            except ClientError:
                return False
            description = answer["certificateDescription"]
            arn = str(description["certificateArn"])
            status = str(description.get("status", ""))
        for policy in self._attached_policies(arn):
            self._detach_policy(policy, arn)
        for thing in self._principal_things(arn):
            self._detach_thing(thing, arn)
        if status != "INACTIVE":
            try:
                self._call(
                    "update_certificate",
                    passthrough=(CERT_STATE, NOT_FOUND),
                    certificateId=certificate_id,
                    newStatus="INACTIVE",
                )
            except ClientError as error:
                if error_code(error) == NOT_FOUND:
                    return False
                # CertificateStateException: REVOKED (or in transfer) cannot go INACTIVE; delete decides.
        # Detaching is asynchronous in AWS: the delete answers 409 DeleteConflict until it has settled.
        self._delete_when_settled(
            "delete_certificate",
            (DELETE_CONFLICT, CERT_STATE),
            lambda code: StationFault(
                _("Certificate still attached") if code == DELETE_CONFLICT else _("Certificate still active"),
                _(
                    "AWS IoT in {where} would not delete certificate {certificate_id}… "
                    "({code}) within {delete_wait_s:.0f} s."
                ).format(
                    where=self.where,
                    certificate_id=certificate_id[:12],
                    code=code,
                    delete_wait_s=self.delete_wait_s,
                ),
                _(_RECONCILE),
            ),
            certificateId=certificate_id,
        )
        return True  # deleted, or gone meanwhile (another station's revoke): the goal is reached

    def _detach_policy(self, policy: str, arn: str) -> None:
        # Already detached or gone: the goal is reached.
        with contextlib.suppress(ClientError):
            self._call("detach_policy", passthrough=(NOT_FOUND,), policyName=policy, target=arn)

    def _detach_thing(self, thing: str, arn: str) -> None:
        with contextlib.suppress(ClientError):
            self._call("detach_thing_principal", passthrough=(NOT_FOUND,), thingName=thing, principal=arn)

    def _deactivate(self, certificate_id: str) -> None:
        with contextlib.suppress(ClientError):
            self._call(
                "update_certificate",
                passthrough=(NOT_FOUND,),
                certificateId=certificate_id,
                newStatus="INACTIVE",
            )

    def _delete_thing(self, name: str) -> None:
        # A thing cannot be deleted while a principal is still attached; detach is asynchronous in AWS,
        # so InvalidRequest from DeleteThing is retried within the same bound as certificate deletes.
        self._delete_when_settled(
            "delete_thing",
            (INVALID_REQUEST,),
            lambda code: StationFault(
                _("Thing still in use"),
                _("AWS IoT in {where} would not delete thing {name!r} ({code}).").format(
                    where=self.where, name=name, code=code
                ),
                _(_RECONCILE),
            ),
            thingName=name,
        )

    def _quietly(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except StationError:
            log.warning("clean-up in %s failed", self.where, exc_info=True)

    # ------------------------------------------------------------------------------------------ preflight
    def preflight(self) -> list[Check]:
        """Read-only checks: credentials, endpoint, policy present and not over-broad, thing type/group."""
        checks: list[Check] = []
        try:
            account = self.caller_account()
        except StationError as error:
            checks.append(Check("credentials", False, error.message, error.next_action))
            skipped = "Skipped: the credentials do not work."
            for name in ("endpoint", "policy", "policy scope"):
                checks.append(Check(name, False, skipped, "Fix the credentials first."))
            return checks
        if self.target.account_id and self.target.account_id != account:
            checks.append(
                Check(
                    "credentials",
                    False,
                    f"The credentials act in account {account}, but the target is account "
                    f"{self.target.account_id}.",
                    "Fix the target's profile/role or account_id in station.toml.",
                )
            )
        else:
            self._aws.learn_account(account)
            how = "assumed role" if self.target.role_arn else ("profile" if self.target.profile else "keys")
            checks.append(Check("credentials", True, f"AWS account {account} ({how}), {self.target.region}."))
        checks.append(self._check_endpoint())
        checks.extend(self._check_policy())
        if self.target.thing_type:
            checks.append(
                self._check_exists(
                    "thing type",
                    "describe_thing_type",
                    {"thingTypeName": self.target.thing_type},
                    self.target.thing_type,
                )
            )
        if self.target.thing_group:
            checks.append(
                self._check_exists(
                    "thing group",
                    "describe_thing_group",
                    {"thingGroupName": self.target.thing_group},
                    self.target.thing_group,
                )
            )
        return checks

    def _check_endpoint(self) -> Check:
        try:
            host, port = self.data_endpoint()
        except StationError as error:
            return Check("endpoint", False, error.message, error.next_action)
        try:
            with socket.create_connection((host, port), timeout=3.0):
                pass
        except socket.gaierror:
            return Check(
                "endpoint",
                False,
                f"The endpoint host {host} does not resolve.",
                "Check the target's endpoint and the station's DNS.",
            )
        except OSError as error:
            return Check(
                "endpoint",
                False,
                f"{host}:{port} does not accept connections ({type(error).__name__}).",
                "Check the network, firewall (port 8883 outbound) and the target's endpoint/port.",
            )
        return Check("endpoint", True, f"{host}:{port} reachable.")

    def _check_policy(self) -> list[Check]:
        name = self.target.policy_name
        try:
            answer = self._call("get_policy", passthrough=(NOT_FOUND,), policyName=name)
            document: str | None = str(answer.get("policyDocument", ""))
            found = Check("policy", True, f"Policy {name!r} exists in {self.where}.")
        except ClientError:
            if not self.target.policy_document:
                return [
                    Check(
                        "policy",
                        False,
                        f"Policy {name!r} does not exist in {self.where} and the target has no document.",
                        "Create the policy in AWS IoT or give the target a policy document.",
                    )
                ]
            try:
                document = self.policy_document()
            except StationError as error:
                return [Check("policy", False, error.message, error.next_action)]
            found = Check(
                "policy",
                True,
                f"Policy {name!r} does not exist in {self.where} yet; the station will create it from the "
                "target's document on first use.",
            )
        except StationError as error:
            return [Check("policy", False, error.message, error.next_action)]
        try:
            reason = is_over_broad(document or "")
        except StationError as error:
            return [found, Check("policy scope", False, error.message, error.next_action)]
        if reason:
            if self.target.lab:
                scope = Check("policy scope", True, f"Broad policy accepted for a lab target: {reason}.")
            else:
                fault = _over_broad(name, self.where, reason)
                scope = Check("policy scope", False, fault.message, fault.next_action)
        else:
            scope = Check("policy scope", True, "The policy does not allow iot:* on *.")
        return [found, scope]

    def _check_exists(self, label: str, op: str, kwargs: dict[str, Any], name: str) -> Check:
        try:
            self._call(op, passthrough=(NOT_FOUND,), **kwargs)
        except ClientError:
            return Check(
                label,
                False,
                f"The {label} {name!r} does not exist in {self.where}.",
                f"Create the {label} or fix the target in station.toml.",
            )
        except StationError as error:
            return Check(label, False, error.message, error.next_action)
        return Check(label, True, f"The {label} {name!r} exists.")


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


class _Leftovers:
    """What an undo (rollback, revoke, observer removal) could not remove: every step is tried, the first
    error is kept, and one StationFault at the end lists everything that is left."""

    def __init__(self) -> None:
        self.left: list[str] = []
        self.first_error: StationError | None = None

    def remove(self, what: str, step: Callable[[], T]) -> T | None:
        """Run one step; on a StationError note `what` as left (None is returned) and carry on."""
        try:
            return step()
        except StationError as error:
            self.first_error = self.first_error or error
            self.left.append(what)
            return None

    def raise_if_any(self, title: str, failed: str, next_action: str) -> None:
        if self.left:
            detail = f" ({self.first_error.message})" if self.first_error else ""
            remain = _("{failed}: {left} remain{detail}.").format(
                failed=failed, left=", ".join(self.left), detail=detail
            )
            raise StationFault(title, remain, next_action)


def _rejected(error: StationError, origin: str) -> StationError:
    """A certificate refused (locally or by AWS), as the fault of whoever supplied it."""
    if origin == "file":
        if isinstance(error, CertificateRejected):
            return error
        return CertificateRejected(error.title, error.message, error.next_action)
    if origin == "station":
        return StationFault(
            error.title,
            error.message,
            _("Call a technician: the station's key type or certificate settings for this target are wrong."),
        )
    return UnitFault(error.title, error.message, error.next_action)


def _over_broad(name: str, where: str, reason: str) -> StationFault:
    return StationFault(
        _("Device policy too broad"),
        _("The policy {name!r} in {where} is too broad: {reason}.").format(
            name=name, where=where, reason=reason
        ),
        _(
            "Call a technician: use a least-privilege policy (thing policy variables), or mark the target as "
            "lab if this is a test account."
        ),
    )
