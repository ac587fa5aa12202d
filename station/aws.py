"""One target's AWS connection: the boto3 session, the metered IoT client, and AWS errors in operator words.

What it does:
- builds one boto3 session per target: the lab's static keys and control-plane URL, or an AWS profile, and
  when the target names a role, STS AssumeRole into that account (session "station-<station id>",
  refreshed by botocore before it expires); every session shares one botocore model loader;
- makes the IoT client (botocore's adaptive retry mode, bounded timeouts) and meters every HTTP request
  through the target's `RateBudget`; `AwsIot.call` waits out throttling (bounded, jittered back-off) so the
  operator never sees it as a failure;
- finds the target's account (configured, or asked of STS once);
- translates AWS errors by error code and exception type into `StationFault`s with operator words
  (`translate`); error codes an operation wants to handle itself reach it as `ClientError` (`passthrough`).

It must not: know any registry operation (those are `station.registry`'s); import the lab (the lab is reached
only through `Target.endpoint_url` and credentials); decide anything by matching error message text; handle
private keys.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection
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

from station.errors import StationError, StationFault
from station.i18n import _
from station.model import Target
from station.ratelimit import Budget, throttled_fault

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

# The codes the registry's operations handle themselves (passed through `AwsIot.call` as ClientError).
# The connection's defaults (the registry passes its own options through with the same ones).
DEFAULT_MAX_ATTEMPTS = 5  # botocore's adaptive retries per call
DEFAULT_THROTTLE_WAIT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 20.0

NOT_FOUND = "ResourceNotFoundException"
EXISTS = "ResourceAlreadyExistsException"
DELETE_CONFLICT = "DeleteConflictException"
CERT_STATE = "CertificateStateException"
CERT_INVALID = "CertificateValidationException"
INVALID_REQUEST = "InvalidRequestException"


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


def http_status(error: ClientError) -> int:
    try:
        return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except (TypeError, ValueError):
        return 0


def account_from_arn(arn: str | None) -> str | None:
    if arn and arn.startswith("arn:"):
        parts = arn.split(":")
        if len(parts) > 4 and parts[4]:
            return parts[4]
    return None


def translate(
    error: Exception, *, api: str, where: str, target: Target, throttle_wait_s: float
) -> StationError:
    """Operator words for an AWS failure of `api` in `where`, by error code or exception type (never by
    message text)."""
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
            return throttled_fault(where, api, throttle_wait_s)
        if code in UNAVAILABLE_CODES or http_status(error) >= 500:
            return StationFault(
                _("AWS IoT unavailable"),
                _("AWS IoT in {where} failed ({error}) on {api}.").format(
                    where=where, error=code or http_status(error), api=api
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
                where=where, api=api, error=code or http_status(error)
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
                profile=target.profile, name=target.name
            ),
            _("Call a technician: create the profile or fix the target's profile in station.toml."),
        )
    if isinstance(error, NoRegionError):
        return StationFault(
            _("AWS region missing"),
            _("Target {name!r} has no region.").format(name=target.name),
            _("Call a technician: set the target's region in station.toml."),
        )
    if isinstance(
        error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
    ):
        url = target.endpoint_url or f"AWS IoT in {target.region}"
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


# ---------------------------------------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------------------------------------


class AwsIot:
    """One target's AWS IoT control plane (account + region): session, metered client, account, calls.

    Thread-safe: slots share one. `budget` meters every HTTP request (botocore's own retries included);
    `throttle_wait_s` bounds how long throttling is waited out before it becomes a StationFault.
    """

    def __init__(
        self,
        target: Target,
        *,
        budget: Budget,
        station_id: str = "station",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        throttle_wait_s: float = DEFAULT_THROTTLE_WAIT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        session: boto3.Session | None = None,
    ) -> None:
        self.target = target
        self.station_id = station_id
        self.budget = budget
        self.throttle_wait_s = throttle_wait_s
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

    @property
    def where(self) -> str:
        """The registry as "<account>/<region>" for messages, without any AWS call."""
        account = self._account_id or account_from_arn(self.target.role_arn) or self.target.registry_key[0]
        return f"{account}/{self.target.region}"

    @property
    def known_account(self) -> str:
        """The account as far as it is known without an AWS call ("" when not yet)."""
        return self._account_id or ""

    def learn_account(self, account: str) -> None:
        """Remember the account the credentials act in (once known, e.g. from preflight)."""
        with self._lock:
            self._account_id = self._account_id or account

    def _boto_session(self) -> boto3.Session:
        with self._lock:
            if self._session is None:
                try:
                    self._session = session_for(self.target, station_id=self.station_id)
                except (BotoCoreError, ClientError) as error:
                    raise self.translate(error, "session") from error
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
                    raise self.translate(error, "session") from error
                # Every HTTP request (botocore's own retries included) draws from the shared budget.
                client.meta.events.register("before-send.iot", self._meter)
                self._iot = client
            return self._iot

    def _meter(self, event_name: str = "", **_: Any) -> None:
        self.budget.acquire(event_name.rsplit(".", 1)[-1])

    def api_name(self, op: str) -> str:
        """The AWS API name of a boto3 method ("register_certificate_without_ca" → its CamelCase name)."""
        mapping = getattr(self._iot.meta, "method_to_api_mapping", {}) if self._iot is not None else {}
        return str(mapping.get(op, op))

    def call(self, op: str, passthrough: Collection[str] = (), **kwargs: Any) -> dict[str, Any]:
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
                        raise throttled_fault(self.where, self.api_name(op), self.throttle_wait_s) from None
                    log.info("AWS throttled %s in %s; waiting %.2f s", self.api_name(op), self.where, delay)
                    # Jittered exponential back-off: slots throttled together must not retry together.
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 4.0)
                    continue
                if code in passthrough:
                    raise
                raise self.translate(error, op) from error
            except BotoCoreError as error:
                raise self.translate(error, op) from error

    def translate(self, error: Exception, op: str) -> StationError:
        """`translate` for this target (`op` "session": the session or STS, not an IoT API)."""
        api = self.api_name(op) if op != "session" else "the AWS session"
        return translate(
            error, api=api, where=self.where, target=self.target, throttle_wait_s=self.throttle_wait_s
        )

    @property
    def account_id(self) -> str:
        """The target's account: configured, or asked of STS (get_caller_identity) once and cached."""
        if self._account_id:
            return self._account_id
        with self._lock:
            if not self._account_id:
                self._account_id = self.caller_account()
            return self._account_id

    def caller_account(self) -> str:
        """The account the credentials really act in (always asks STS)."""
        session = self._boto_session()
        try:
            sts = session.client("sts", region_name=self.target.region, endpoint_url=self.target.endpoint_url)
            return str(sts.get_caller_identity()["Account"])
        except (BotoCoreError, ClientError) as error:
            raise self.translate(error, "session") from error
