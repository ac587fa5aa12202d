"""One target's AWS IoT registry through boto3: register without CA, things, policy, rollback, revoke, transfer.

What it does:
- builds one boto3 session per target: the lab's static keys and control-plane URL, or an AWS profile, and
  when the target names a role, STS AssumeRole into that account (session "station-<station id>",
  refreshed by botocore before it expires);
- registers a certificate with `RegisterCertificateWithoutCA` (status ACTIVE), idempotently: the certificate
  id is computed locally (SHA-256 of the DER), a 409 means "already there" and the attempt carries on;
- makes the thing (idempotent, remembering whether this attempt made it), makes sure the target's policy
  exists, attaches policy and thing principal;
- undoes all that in AWS's order (detach policies, detach things, INACTIVE, delete; delete the thing only if
  this attempt made it) for a rollback, a revoke, or the source side of a transfer;
- meters every HTTP request through one shared `RateBudget` per (account, region) and botocore's adaptive
  retry mode, and waits out throttling (bounded) so the operator never sees it as a failure;
- translates AWS errors by error code and exception type into `UnitFault` / `StationFault` / `InputError`
  with operator words;
- makes and removes the station's own observer (`provision_observer` / `remove_observer`): a certificate, a
  thing and a policy of its own that may connect as that one client id and subscribe to / receive the topics
  it is given (the hellos of units whose key the station never holds; see `station.observe`). It is never
  journaled as a unit and uses neither the target's device policy, thing type nor thing group, so reconcile,
  preflight and fleet operations never meet it as a unit.

It must not: import the lab (the lab is reached only through `Target.endpoint_url` and credentials); decide
anything by matching error message text; send a certificate to AWS before checking it locally; ever use
`forceDelete` (moto leaves a dangling policy attachment with it, and AWS's order is the documented one);
handle private keys (only certificates go to AWS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from station.config import is_over_broad, render_policy
from station.errors import CertificateRejected, StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.identity import certificate_id as local_certificate_id
from station.identity import check_aws_acceptance
from station.model import Identity, Target
from station.ratelimit import DEFAULT_QUOTAS, Budget, RateBudget, shared_budget_for, throttled_fault

__all__ = [
    "DEFAULT_QUOTAS",
    "OBSERVER_PREFIX",
    "Check",
    "ObserverRegistration",
    "RateBudget",
    "Registration",
    "Registry",
    "shared_budget",
]

log = logging.getLogger(__name__)

# Error codes, by family. Decisions are made on these codes (and exception types), never on message text.
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)
CREDENTIAL_CODES = frozenset(
    {
        "UnauthorizedException",
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "RequestExpired",
        "AuthFailure",
    }
)
UNAVAILABLE_CODES = frozenset(
    {
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalFailureException",
        "InternalFailure",
        "InternalServerError",
        "InternalError",
        "InternalException",
    }
)
_NOT_FOUND = "ResourceNotFoundException"
_EXISTS = "ResourceAlreadyExistsException"
_DELETE_CONFLICT = "DeleteConflictException"
_CERT_STATE = "CertificateStateException"
_CERT_INVALID = "CertificateValidationException"
_INVALID_REQUEST = "InvalidRequestException"

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


@dataclass
class Registration:
    """A certificate in one registry, and exactly what this attempt did there (what a rollback may undo).

    Mutable on purpose: `create_thing` / `attach` (or the pipeline, through `thing_name`/`thing_created`)
    fill in the rest as the attempt goes.
    """

    certificate_id: str
    certificate_arn: str
    created: bool  # this attempt registered the certificate (False: it was there already)
    target: str = ""
    account_id: str = ""
    region: str = ""
    activated: bool = False  # it was there INACTIVE and this attempt activated it
    thing_name: str | None = None
    thing_created: bool = False  # this attempt made the thing
    policy_attached: bool = False  # this attempt attached the target's policy
    thing_attached: bool = False  # this attempt attached the certificate to the thing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# ---------------------------------------------------------------------------------------------------------
# Sessions and credentials
# ---------------------------------------------------------------------------------------------------------


def _session_name(station_id: str) -> str:
    # STS RoleSessionName: 2–64 characters of [\w+=,.@-].
    name = "station-" + re.sub(r"[^\w+=,.@-]", "-", station_id or "station")
    return name[:64]


class _AssumedRoleProvider(CredentialProvider):
    """Credentials from STS AssumeRole, refreshed by botocore ahead of their expiry."""

    METHOD = "station-assume-role"
    CANONICAL_NAME = "station-assume-role"

    def __init__(self, fetch: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._fetch = fetch

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            metadata=self._fetch(), refresh_using=self._fetch, method=self.METHOD
        )


_loader: Any = None
_loader_lock = threading.Lock()


def _core_session() -> botocore.session.Session:
    """A botocore session sharing one model loader with every other: parsing the IoT service model costs
    ~0.7 s per session otherwise, and a station makes one session per target."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
    core = botocore.session.Session()
    core.register_component("data_loader", _loader)
    return core


def _base_session(target: Target) -> boto3.Session:
    if target.aws_access_key_id and target.aws_secret_access_key:
        return boto3.Session(
            botocore_session=_core_session(),
            aws_access_key_id=target.aws_access_key_id,
            aws_secret_access_key=target.aws_secret_access_key,
            region_name=target.region,
        )
    return boto3.Session(
        botocore_session=_core_session(), profile_name=target.profile, region_name=target.region
    )


def session_for(target: Target, *, station_id: str = "station", duration_s: int = 3600) -> boto3.Session:
    """A boto3 session acting in the target's account (assuming `target.role_arn` when it is set)."""
    base = _base_session(target)
    if not target.role_arn:
        return base
    sts = base.client("sts", region_name=target.region, endpoint_url=target.endpoint_url)
    role_arn = target.role_arn
    name = _session_name(station_id)

    def fetch() -> dict[str, Any]:
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=name, DurationSeconds=duration_s)[
            "Credentials"
        ]
        expiry = creds["Expiration"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry.isoformat() if isinstance(expiry, datetime) else str(expiry),
        }

    core = _core_session()
    core.register_component("credential_provider", CredentialResolver([_AssumedRoleProvider(fetch)]))
    return boto3.Session(botocore_session=core, region_name=target.region)


# ---------------------------------------------------------------------------------------------------------
# Error translation
# ---------------------------------------------------------------------------------------------------------


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _http_status(error: ClientError) -> int:
    try:
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except (TypeError, ValueError):
        return 0


def _account_from_arn(arn: str | None) -> str | None:
    if arn and arn.startswith("arn:"):
        parts = arn.split(":")
        if len(parts) > 4 and parts[4]:
            return parts[4]
    return None


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
        max_attempts: int = 5,
        throttle_wait_s: float = 60.0,
        delete_wait_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 20.0,
        session: boto3.Session | None = None,
    ) -> None:
        self.target = target
        self.station_id = station_id
        self.budget = budget if budget is not None else shared_budget(target)
        self.throttle_wait_s = throttle_wait_s
        self.delete_wait_s = delete_wait_s
        self._config = Config(
            region_name=target.region,
            retries={"mode": "adaptive", "max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        )
        self._session = session
        self._lock = threading.RLock()  # boto3 sessions are not thread-safe while making clients
        self._iot: Any = None
        self._account_id = target.account_id
        self._endpoint: str | None = None
        self._policy_ready = False
        self._policy_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:
        return f"Registry({self.target.name!r}, {self.where})"

    @property
    def where(self) -> str:
        """The registry as "<account>/<region>" for messages, without any AWS call."""
        account = self._account_id or _account_from_arn(self.target.role_arn) or self.target.registry_key[0]
        return f"{account}/{self.target.region}"

    def _boto_session(self) -> boto3.Session:
        with self._lock:
            if self._session is None:
                try:
                    self._session = session_for(self.target, station_id=self.station_id)
                except (BotoCoreError, ClientError) as error:
                    raise self._translate(error, "session") from error
            return self._session

    def _client(self) -> Any:
        if self._iot is not None:
            return self._iot
        with self._lock:
            if self._iot is None:
                session = self._boto_session()
                try:
                    client = session.client(
                        "iot",
                        region_name=self.target.region,
                        endpoint_url=self.target.endpoint_url,
                        config=self._config,
                    )
                except (BotoCoreError, ClientError) as error:
                    raise self._translate(error, "session") from error
                # Every HTTP request (botocore's own retries included) draws from the shared budget.
                client.meta.events.register("before-send.iot", self._meter)
                self._iot = client
            return self._iot

    def _meter(self, event_name: str = "", **_: Any) -> None:
        self.budget.acquire(event_name.rsplit(".", 1)[-1])

    def _api_name(self, op: str) -> str:
        mapping = getattr(self._iot.meta, "method_to_api_mapping", {}) if self._iot is not None else {}
        return str(mapping.get(op, op))

    def _call(self, op: str, passthrough: Collection[str] = (), **kwargs: Any) -> dict[str, Any]:
        """Call one IoT API. Throttling is waited out (bounded); codes in `passthrough` reach the caller
        as ClientError; every other failure becomes a StationError."""
        method = getattr(self._client(), op)
        # The bound counts from the first attempt: botocore's own retries (and its adaptive limiter's
        # waits) inside each call are part of the time the operator is kept waiting.
        deadline = time.monotonic() + self.throttle_wait_s
        delay = 0.25
        while True:
            try:
                return dict(method(**kwargs))
            except ClientError as error:
                code = error_code(error)
                if code in THROTTLING_CODES:
                    if time.monotonic() + delay > deadline:
                        raise throttled_fault(self.where, self._api_name(op), self.throttle_wait_s) from None
                    log.info("AWS throttled %s in %s; waiting %.2f s", self._api_name(op), self.where, delay)
                    # Jittered exponential back-off: slots throttled together must not retry together.
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 4.0)
                    continue
                if code in passthrough:
                    raise
                raise self._translate(error, op) from error
            except BotoCoreError as error:
                raise self._translate(error, op) from error

    def _translate(self, error: Exception, op: str) -> StationError:
        """Operator words for an AWS failure, by error code or exception type (never by message text)."""
        api = self._api_name(op) if op != "session" else "the AWS session"
        where = self.where
        if isinstance(error, ClientError):
            code = error_code(error)
            if code in CREDENTIAL_CODES:
                return StationFault(
                    _("AWS credentials refused"),
                    _("AWS credentials for {where} were refused ({code}) on {api}.").format(
                        where=where, code=code, api=api
                    ),
                    _(
                        "Call a technician: the station's AWS credentials or role are missing, expired or lack "
                        "permission for this target."
                    ),
                )
            if code in THROTTLING_CODES:
                return throttled_fault(where, api, self.throttle_wait_s)
            if code in UNAVAILABLE_CODES or _http_status(error) >= 500:
                return StationFault(
                    _("AWS IoT unavailable"),
                    _("AWS IoT in {where} failed ({error}) on {api}.").format(
                        where=where, error=code or _http_status(error), api=api
                    ),
                    _("Wait a minute and scan the unit again; if it keeps failing, call a technician."),
                )
            if code == "LimitExceededException":
                return StationFault(
                    _("AWS limit reached"),
                    _("AWS IoT in {where} refused {api}: an account limit is reached ({code}).").format(
                        where=where, api=api, code=code
                    ),
                    _("Call a technician: the account needs a limit increase or a clean-up."),
                )
            return StationFault(
                _("AWS IoT refused a request"),
                _("AWS IoT in {where} refused {api} ({error}).").format(
                    where=where, api=api, error=code or _http_status(error)
                ),
                _("Call a technician with this message; the station log has the details."),
            )
        if isinstance(error, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return StationFault(
                _("AWS credentials missing"),
                _("No usable AWS credentials for {where} ({error_type}).").format(
                    where=where, error_type=type(error).__name__
                ),
                _("Call a technician: configure the station's AWS profile or role for this target."),
            )
        if isinstance(error, ProfileNotFound):
            return StationFault(
                _("AWS profile not found"),
                _("The AWS profile {profile!r} for target {name!r} does not exist.").format(
                    profile=self.target.profile, name=self.target.name
                ),
                _("Call a technician: create the profile or fix the target's profile in station.toml."),
            )
        if isinstance(error, NoRegionError):
            return StationFault(
                _("AWS region missing"),
                _("Target {name!r} has no region.").format(name=self.target.name),
                _("Call a technician: set the target's region in station.toml."),
            )
        if isinstance(
            error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
        ):
            url = self.target.endpoint_url or f"AWS IoT in {self.target.region}"
            return StationFault(
                _("AWS IoT unreachable"),
                _("The station could not reach {url} for {where} ({error_type}).").format(
                    url=url, where=where, error_type=type(error).__name__
                ),
                _("Check the station's network connection (and proxy/firewall); then scan the unit again."),
            )
        return StationFault(
            _("AWS call failed"),
            _("{api} for {where} failed ({error_type}).").format(
                api=api, where=where, error_type=type(error).__name__
            ),
            _("Call a technician with this message; the station log has the details."),
        )

    # ------------------------------------------------------------------------------------------ account
    @property
    def account_id(self) -> str:
        """The target's account: configured, or asked of STS (get_caller_identity) once and cached."""
        if self._account_id:
            return self._account_id
        with self._lock:
            if not self._account_id:
                session = self._boto_session()
                try:
                    sts = session.client(
                        "sts", region_name=self.target.region, endpoint_url=self.target.endpoint_url
                    )
                    self._account_id = str(sts.get_caller_identity()["Account"])
                except (BotoCoreError, ClientError) as error:
                    raise self._translate(error, "session") from error
            return self._account_id

    def caller_account(self) -> str:
        """The account the credentials really act in (always asks STS; for preflight)."""
        session = self._boto_session()
        try:
            sts = session.client("sts", region_name=self.target.region, endpoint_url=self.target.endpoint_url)
            return str(sts.get_caller_identity()["Account"])
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, "session") from error

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
                passthrough=(_EXISTS, _CERT_INVALID),
                certificatePem=pem,
                status="ACTIVE",
            )
        except ClientError as error:
            if error_code(error) == _CERT_INVALID:
                raise _rejected(
                    CertificateRejected(
                        _("Certificate not accepted by AWS IoT"),
                        _("AWS IoT in {where} refused the certificate ({CERT_INVALID}).").format(
                            where=self.where, CERT_INVALID=_CERT_INVALID
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
            account_id=_account_from_arn(arn) or self._account_id or "",
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
            self._call("describe_thing", passthrough=(_NOT_FOUND,), thingName=name)
            created = False
        except ClientError:
            kwargs: dict[str, Any] = {"thingName": name}
            if self.target.thing_type:
                kwargs["thingTypeName"] = self.target.thing_type
            try:
                self._call("create_thing", passthrough=(_EXISTS, _NOT_FOUND), **kwargs)
                created = True
            except StationError as error:
                # No answer (lost, timed out, AWS failing): the thing may exist now. It did not a moment ago
                # and its name is the unit's, so if it is there this call made it: say so to the caller.
                error.thing_maybe_created = name  # type: ignore[attr-defined]
                raise
            except ClientError as error:
                if error_code(error) == _EXISTS:
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
                    passthrough=(_NOT_FOUND,),
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
                self._call("get_policy", passthrough=(_NOT_FOUND,), policyName=name)
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
                self._call("create_policy", passthrough=(_EXISTS,), policyName=name, policyDocument=document)
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
                "describe_certificate", passthrough=(_NOT_FOUND,), certificateId=certificate_id
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
        result["account_id"] = _account_from_arn(result.get("certificateArn")) or self._account_id
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
        left: list[str] = []
        first_error: StationError | None = None
        try:
            self._delete_certificate(observer.certificate_id, None)
        except StationError as error:
            first_error = error
            left.append(f"certificate {observer.certificate_id[:12]}…")
        for what, remove in (
            (f"thing {observer.name!r}", lambda: self._delete_thing(observer.name)),
            (f"policy {observer.name!r}", lambda: self._delete_policy(observer.name)),
        ):
            try:
                remove()
            except StationError as error:
                first_error = first_error or error
                left.append(what)
        if left:
            raise StationFault(
                _("Observer not removed"),
                f"Could not remove the station's observer in {self.where}: {', '.join(left)} remain"
                + (f" ({first_error.message})" if first_error else "")
                + ".",
                _("Delete what is left (named {name}) in the AWS IoT console, or call a technician.").format(
                    name=observer.name
                ),
            )

    def _delete_policy(self, name: str) -> None:
        # A policy cannot be deleted while attached; detaching is asynchronous in AWS (409 until settled).
        self._delete_when_settled(
            "delete_policy",
            (_DELETE_CONFLICT,),
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
                self._call(op, passthrough=(*retry_codes, _NOT_FOUND), **kwargs)
                return
            except ClientError as error:
                code = error_code(error)
                if code == _NOT_FOUND:
                    return  # gone meanwhile (e.g. another station's revoke)
                if time.monotonic() + delay > deadline:
                    raise give_up(code) from error
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------------------------------ undo
    def rollback(self, registration: Registration) -> None:
        """Undo exactly what this attempt did, in AWS's order. Raises StationFault listing what is left."""
        left: list[str] = []
        first_error: StationError | None = None
        cert_id = registration.certificate_id
        arn = registration.certificate_arn
        if registration.created:
            try:
                self._delete_certificate(cert_id, arn)
            except StationError as error:
                first_error = first_error or error
                left.append(f"certificate {cert_id[:12]}…")
        else:
            steps: list[tuple[bool, str, Callable[[], None]]] = [
                (
                    registration.policy_attached,
                    f"policy {self.target.policy_name!r} on certificate {cert_id[:12]}…",
                    lambda: self._detach_policy(self.target.policy_name, arn),
                ),
                (
                    registration.thing_attached and bool(registration.thing_name),
                    f"thing {registration.thing_name!r} attached to certificate {cert_id[:12]}…",
                    lambda: self._detach_thing(str(registration.thing_name), arn),
                ),
                (
                    registration.activated,
                    f"certificate {cert_id[:12]}… activated",
                    lambda: self._deactivate(cert_id),
                ),
            ]
            for needed, what, step in steps:
                if not needed:
                    continue
                try:
                    step()
                except StationError as error:
                    first_error = first_error or error
                    left.append(what)
        if registration.thing_created and registration.thing_name:
            try:
                self._delete_thing(registration.thing_name)
            except StationError as error:
                first_error = first_error or error
                left.append(f"thing {registration.thing_name!r}")
        if left:
            raise StationFault(
                _("Rollback incomplete"),
                f"Could not undo everything in {self.where}: {', '.join(left)} remain"
                + (f" ({first_error.message})" if first_error else "")
                + ".",
                _(_RECONCILE),
            )

    def revoke(self, certificate_id: str, *, delete_thing: str | None = None) -> bool:
        """Remove the certificate from this registry (AWS's order); delete `delete_thing` if named.

        Returns True if the certificate was there. Deleting the thing is for things the station made.
        """
        left: list[str] = []
        first_error: StationError | None = None
        existed = False
        try:
            existed = self._delete_certificate(certificate_id, None)
        except StationError as error:
            first_error = error
            left.append(f"certificate {certificate_id[:12]}…")
        if delete_thing:
            try:
                self._delete_thing(delete_thing)
            except StationError as error:
                first_error = first_error or error
                left.append(f"thing {delete_thing!r}")
        if left:
            raise StationFault(
                _("Revoke incomplete"),
                f"Could not revoke everything in {self.where}: {', '.join(left)} remain"
                + (f" ({first_error.message})" if first_error else "")
                + ".",
                _(
                    "Retry `station revoke`; if it keeps failing, run `station reconcile` or call a technician."
                ),
            )
        return existed

    def _delete_certificate(self, certificate_id: str, arn: str | None) -> bool:
        """Detach policies, detach things, INACTIVE, delete. False if the certificate was not there."""
        status: str | None = None
        if arn is None:
            try:
                answer = self._call(
                    "describe_certificate", passthrough=(_NOT_FOUND,), certificateId=certificate_id
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
                    passthrough=(_CERT_STATE, _NOT_FOUND),
                    certificateId=certificate_id,
                    newStatus="INACTIVE",
                )
            except ClientError as error:
                if error_code(error) == _NOT_FOUND:
                    return False
                # CertificateStateException: REVOKED (or in transfer) cannot go INACTIVE; delete decides.
        # Detaching is asynchronous in AWS: the delete answers 409 DeleteConflict until it has settled.
        self._delete_when_settled(
            "delete_certificate",
            (_DELETE_CONFLICT, _CERT_STATE),
            lambda code: StationFault(
                _("Certificate still attached")
                if code == _DELETE_CONFLICT
                else _("Certificate still active"),
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
            self._call("detach_policy", passthrough=(_NOT_FOUND,), policyName=policy, target=arn)

    def _detach_thing(self, thing: str, arn: str) -> None:
        with contextlib.suppress(ClientError):
            self._call("detach_thing_principal", passthrough=(_NOT_FOUND,), thingName=thing, principal=arn)

    def _deactivate(self, certificate_id: str) -> None:
        with contextlib.suppress(ClientError):
            self._call(
                "update_certificate",
                passthrough=(_NOT_FOUND,),
                certificateId=certificate_id,
                newStatus="INACTIVE",
            )

    def _delete_thing(self, name: str) -> None:
        # A thing cannot be deleted while a principal is still attached; detach is asynchronous in AWS,
        # so InvalidRequest from DeleteThing is retried within the same bound as certificate deletes.
        self._delete_when_settled(
            "delete_thing",
            (_INVALID_REQUEST,),
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
            with self._lock:
                self._account_id = self._account_id or account
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
            answer = self._call("get_policy", passthrough=(_NOT_FOUND,), policyName=name)
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
            self._call(op, passthrough=(_NOT_FOUND,), **kwargs)
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
