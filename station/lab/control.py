"""The lab's control plane: a real moto server, in-process, that answers like AWS IoT where the station depends on it.

`ControlPlane` runs moto's WSGI application on 127.0.0.1 (port 0 → a free port) behind a small WSGI layer that
adds what moto lacks and AWS does:

- certificate id = SHA-256 of the DER (moto's `use_valid_cert`, set before the first request);
- AWS's certificate acceptance rules on RegisterCertificateWithoutCA / RegisterCertificate → HTTP 400
  `CertificateValidationException` in AWS's rest-json error shape; CreateCertificateFromCsr checks the CSR and,
  as AWS does (moto does not), certifies the CSR's own public key;
- `DescribeEndpoint` answers a stable host per (account, region) (default "localhost"; the data plane port travels
  in lab.json / station.toml, not here);
- throttling at AWS's default quotas per (account, region, API) with token buckets (burst = rate), answered as
  HTTP 400 `ThrottlingException` "Rate exceeded", which botocore's retry modes recognise;
- accounts and regions as a station reaches them: the default account with the lab's static keys, any other
  through STS AssumeRole (moto maps the issued keys to the role's account), regions by the SigV4 scope;
- fault injection switchable at run time from Python (`plane.faults`) or over HTTP under `/lab-api/` on the same
  port (`RemoteControl` is the client), so another process can flip it; kind "lose" lets the request take
  effect and then loses its answer (see "Fault: process, then lose the answer" below).

It must not: import the station's own identity rules (the lab checks the station, it does not echo it); write to
stderr per request or through a pipe; exit the process on a bad port (it raises `LabError` instead); let a
malformed request take the server down. moto keeps its state in process-wide globals: two control planes in one
process share registries (use fresh certificates per test, or `reset()`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from station.errors import StationFault
from station.lab import _awsca, _certrules, _wire
from station.lab import dynamodb as _dynamodb
from station.plain import plain_dict

if TYPE_CHECKING:
    import boto3
    from botocore.config import Config

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT_ID = "123456789012"  # moto's default account: what the lab's static keys land in
SECOND_ACCOUNT_ID = "210987654321"
DEFAULT_REGION = "ap-northeast-1"
DEFAULT_ROLE_NAME = "lab-station"
# Static lab credentials: 20 upper-case characters like a real access key id, so moto reads them too.
LAB_ACCESS_KEY_ID = "AKIALABSTATION000000"
LAB_SECRET_ACCESS_KEY = "lab-secret-access-key-not-a-real-secret"
ADMIN_PREFIX = "/lab-api"
MAX_ADMIN_BODY = 64 * 1024  # bytes of JSON an admin request may carry (faults and quotas are tiny)

# AWS IoT's default control-plane quotas, requests per second per account and region (aws-iot.md).
# An operation missing here is not throttled.
DEFAULT_QUOTAS: dict[str, float] = {
    "RegisterCertificateWithoutCA": 10,
    "RegisterCertificate": 10,
    "UpdateCertificate": 10,
    "DeleteCertificate": 10,
    "DescribeCertificate": 10,
    "ListCertificates": 10,
    "AttachPolicy": 15,
    "CreateThing": 100,
    "AttachThingPrincipal": 100,
}

_ENDPOINT_TYPES = ("iot:Data", "iot:Data-ATS", "iot:CredentialProvider", "iot:Jobs")
_CERT_REGISTER_OPERATIONS = ("RegisterCertificateWithoutCA", "RegisterCertificate")
# UpdateCertificate's newStatus values a caller may set (AWS IoT API reference, UpdateCertificate).
_SETTABLE_CERTIFICATE_STATUSES = ("ACTIVE", "INACTIVE", "REVOKED", "REGISTER_INACTIVE")

FAULT_KINDS = ("error", "latency", "drop", "down", "lose")
LOSE = "lose"  # process the request, then lose the answer (see `_lose_answer`)
_DEFAULT_ERROR_CODES = {
    500: "InternalFailureException",
    503: "ServiceUnavailableException",
    429: "TooManyRequestsException",
    400: "InvalidRequestException",
    403: "UnauthorizedException",
}


class LabError(StationFault):
    """The lab itself cannot run (port in use, bad configuration): the station's test bench is broken."""


# --------------------------------------------------------------------------------------------------- throttling


class Throttle:
    """Token buckets per (account, region, operation); burst = rate, refilled continuously. Thread-safe."""

    def __init__(
        self,
        quotas: Mapping[str, float | None] | None = None,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._quotas: dict[str, float] = dict(DEFAULT_QUOTAS)
        self._buckets: dict[tuple[str, str, str], list[float]] = {}  # key → [tokens, last refill time]
        self.enabled = enabled
        self.throttled = 0  # how many requests were refused, for tests and the status page
        if quotas:
            self.set_quotas(quotas)

    @property
    def quotas(self) -> dict[str, float]:
        with self._lock:
            return dict(self._quotas)

    def set_quotas(self, quotas: Mapping[str, float | None]) -> None:
        """Override quotas per operation name; None or 0 removes the limit for that operation."""
        cleaned: dict[str, float | None] = {}
        for name, rate in quotas.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"quota names are operation names such as 'AttachPolicy', not {name!r}")
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0):
                raise ValueError(
                    f"quota for {name} must be a non-negative number of requests per second or null"
                )
            cleaned[name] = float(rate) if rate else None
        with self._lock:
            for name, value in cleaned.items():
                if value is None:
                    self._quotas.pop(name, None)
                else:
                    self._quotas[name] = value
                for key in [key for key in self._buckets if key[2] == name]:
                    del self._buckets[key]

    def reset(self) -> None:
        """Refill every bucket (forget past traffic)."""
        with self._lock:
            self._buckets.clear()
            self.throttled = 0

    def admit(self, account_id: str, region: str, operation: str) -> bool:
        """Take one token for this call; False means answer ThrottlingException."""
        if not self.enabled:
            return True
        with self._lock:
            rate = self._quotas.get(operation)
            if rate is None:
                return True
            now = self._clock()
            capacity = max(rate, 1.0)
            bucket = self._buckets.setdefault((account_id, region, operation), [capacity, now])
            bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return True
            self.throttled += 1
            return False


# ---------------------------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected fault rule. Matching requests: every AWS request, or only `service` / `api` (operation name).

    `count` = fire on the next N matching requests then disappear (None = until cleared); `fraction` = fire on
    that share of matching requests, drawn from a RNG seeded with `seed` (deterministic run to run).
    kinds: error (answer `status`/`code`), latency (wait `delay_s`, then answer normally), drop (close the
    connection without an answer), down (reset every connection: the service looks unreachable), lose (the
    request takes effect, then the answer is lost: the connection closes at once, or after `delay_s` — set it
    past the client's read timeout to make the client time out).
    """

    kind: str
    api: str | None = None
    service: str | None = None
    count: int | None = None
    fraction: float | None = None
    seed: int = 0
    status: int = 503
    code: str | None = None
    message: str | None = None
    delay_s: float = 0.0
    id: int = 0
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {self.kind!r}")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise ValueError("count must be a whole number ≥ 1 (or null for 'until cleared')")
        if self.fraction is not None and (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, int | float)
            or not 0 < self.fraction <= 1
        ):
            raise ValueError("fraction must be a number in (0, 1]")
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400–599)")
        if (
            isinstance(self.delay_s, bool)
            or not isinstance(self.delay_s, int | float)
            or not 0 <= self.delay_s <= 60
        ):
            raise ValueError("delay_s must be between 0 and 60 seconds")
        if self.kind == "latency" and self.delay_s <= 0:
            raise ValueError("a latency fault needs delay_s > 0")
        for name in ("api", "service", "code", "message"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        if self.code is None:
            self.code = _DEFAULT_ERROR_CODES.get(self.status, "ServiceUnavailableException")
        if self.message is None:
            self.message = (
                "Service unavailable (lab fault)" if self.status >= 500 else "Request refused (lab fault)"
            )
        self._rng = random.Random(self.seed)

    def applies_to(self, info: _wire.RequestInfo) -> bool:
        return (self.api is None or self.api == info.operation) and (
            self.service is None or self.service == info.service
        )

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)  # without _rng (private)


_FAULT_FIELDS = (
    "kind",
    "api",
    "service",
    "count",
    "fraction",
    "seed",
    "status",
    "code",
    "message",
    "delay_s",
)


class FaultInjector:
    """The active fault rules of one control plane; safe to change while requests are in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1
        self.fired: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def set(self, kind: str, **options: Any) -> int:
        """Add a fault rule (see `Fault` for the options); returns its id for `clear(id)`."""
        unknown = set(options) - set(_FAULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(sorted(unknown))}")
        fault = Fault(kind, **options)
        with self._lock:
            fault.id = self._next_id
            self._next_id += 1
            self._faults.append(fault)
        return fault.id

    def clear(self, fault_id: int | None = None) -> bool:
        """Remove one fault rule, or all of them; False if that id is not active."""
        with self._lock:
            if fault_id is None:
                self._faults.clear()
                return True
            before = len(self._faults)
            self._faults = [fault for fault in self._faults if fault.id != fault_id]
            return len(self._faults) != before

    def reset(self) -> None:
        """Clear every rule and zero the `fired` counters."""
        with self._lock:
            self._faults.clear()
            self.fired = dict.fromkeys(FAULT_KINDS, 0)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def decide(self, info: _wire.RequestInfo) -> tuple[float, Fault | None]:
        """For one request: total added latency, and the first error/drop/down rule that fires (if any)."""
        delay = 0.0
        chosen: Fault | None = None
        with self._lock:
            for fault in list(self._faults):
                if not fault.applies_to(info):
                    continue
                if fault.kind != "latency" and chosen is not None:
                    continue  # one answer per request: later rules keep their count for later requests
                if fault.fraction is not None and fault._rng.random() >= fault.fraction:
                    continue
                if fault.kind == "latency":
                    delay += fault.delay_s
                else:
                    chosen = fault
                fault.fired += 1
                self.fired[fault.kind] += 1
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
        return delay, chosen


# ------------------------------------------------------------------------------------------------- WSGI layer

_Answer = tuple[str, list[tuple[str, str]], bytes]


class _LabApp:
    """WSGI middleware in front of moto's DomainDispatcherApplication."""

    def __init__(self, plane: ControlPlane, backend: Any) -> None:
        from moto.moto_server.werkzeug_app import SIGNING_ALIASES

        self.plane = plane
        self.backend = backend
        self.signing_aliases = frozenset(SIGNING_ALIASES)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return self._handle(environ, start_response)
        except ConnectionError:
            raise  # a drop/down fault: werkzeug treats it as a dropped connection, silently
        except Exception:  # never let one request take the server down (a moto bug answers like AWS's 500)
            log.info("lab control plane: request failed inside the lab", exc_info=True)
            return _send(
                start_response,
                _wire.error_response(_wire.REST_JSON, 500, "InternalFailureException", "Internal lab error."),
            )

    def _handle(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            return _send(start_response, self._admin(environ))
        if path.startswith("/moto-api"):
            return self._forward(environ, start_response)
        info = _wire.describe_request(environ)
        if info.service is None:
            # Not an SDK request: AWS answers unsigned calls to its APIs with 403 and nothing else.
            return _send(
                start_response,
                _wire.error_response(
                    _wire.REST_JSON,
                    403,
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token",
                ),
            )
        if not environ.get(_LOST):
            self.plane.count(info)
        delay, fault = (0.0, None) if environ.get(_LOST) else self.plane.faults.decide(info)
        if delay:
            time.sleep(delay)
        if fault is not None and fault.kind == LOSE:
            environ[_LOST] = True  # handle it again, as if no fault fired, and throw the answer away
            return _lose_answer(fault, environ, lambda respond: self._handle(environ, respond))
        if fault is not None:
            return self._inject(fault, info, environ, start_response)
        answer = self._malformed(info, environ)
        if answer is None and info.service == "iot":
            answer = self._iot(info, environ)
        if answer is not None:
            return _send(start_response, answer)
        try:
            if info.service == "dynamodb":
                # moto's DynamoDB is not thread-safe (a refused transaction reinstates whole tables): one at a
                # time, the answer produced inside the lock.
                with _dynamodb.REQUEST_LOCK:
                    return list(self._forward(environ, start_response))
            forwarded = self._forward(environ, start_response)
            if info.service == "iot" and info.operation == "DeleteCertificate":
                self.forget_force_deleted(info, environ)
            return forwarded
        except Exception:
            # moto raised instead of answering. For a service botocore knows, that is a server-side failure
            # (AWS would answer 500 too); for anything else the request itself was malformed.
            log.info("lab control plane: moto failed on a %s request", info.service, exc_info=True)
            known = _wire.is_known_service(info.service or "")
            return _send(
                start_response,
                _wire.error_response(
                    info.protocol,
                    500 if known else 400,
                    "InternalFailureException" if known else "InvalidRequestException",
                    "Internal failure." if known else f"Unknown service {info.service!r}.",
                ),
            )

    def _malformed(self, info: _wire.RequestInfo, environ: dict[str, Any]) -> _Answer | None:
        """A 4xx for requests no SDK would send: an operation the service's model does not have."""
        service = info.service or ""
        if info.model_protocol is None and service not in self.signing_aliases:
            # Neither botocore nor moto knows this signing name (moto would print to stdout and fail).
            return _wire.error_response(
                info.protocol, 400, "InvalidRequestException", f"Unknown service {service!r}."
            )
        if info.model_protocol not in (_wire.REST_JSON, _wire.QUERY, _wire.JSON):
            return None  # unknown service, or a protocol (rest-xml, ec2) whose routing the lab does not check
        if info.operation and _wire.is_known_operation(service, info.operation):
            return None
        method = environ.get("REQUEST_METHOD", "GET")
        if info.protocol == _wire.QUERY:
            return _wire.error_response(
                info.protocol,
                400,
                "InvalidAction",
                f"Could not find operation {info.operation} for {service}.",
            )
        return _wire.error_response(
            info.protocol,
            404,
            "UnknownOperationException",
            f"No {service} operation matches {method} this path.",
        )

    def _forward(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            app = self.backend.get_application(environ)
        except Exception as exc:  # moto could not route it: a malformed request, not a lab failure
            log.debug("lab control plane: unroutable request: %r", exc)
            return _send(
                start_response,
                _wire.error_response(
                    _wire.REST_JSON, 400, "InvalidRequestException", "The request could not be routed."
                ),
            )
        result: Iterable[bytes] = app(environ, start_response)
        return result

    # -- faults

    def _inject(
        self,
        fault: Fault,
        info: _wire.RequestInfo,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
    ) -> Iterable[bytes]:
        if fault.kind == "error":
            return _send(
                start_response,
                _wire.error_response(info.protocol, fault.status, fault.code or "", fault.message or ""),
            )
        sock: socket.socket | None = environ.get("werkzeug.socket")
        if sock is not None:
            if fault.kind == "down":
                # RST: close with linger 0. detach() first so werkzeug's socket object does not close the
                # (possibly already reused) descriptor a second time.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(sock.detach())
            else:
                sock.shutdown(socket.SHUT_RDWR)  # FIN without an answer
        raise ConnectionAbortedError(f"lab fault: {fault.kind}")

    # -- IoT specifics

    def _iot(self, info: _wire.RequestInfo, environ: dict[str, Any]) -> _Answer | None:
        operation = info.operation or ""
        account_id = self.plane.account_of(info, environ)
        region = info.region or self.plane.default_region
        if not self.plane.throttle.admit(account_id, region, operation):
            return _wire.error_response(info.protocol, 400, "ThrottlingException", "Rate exceeded")
        document: Any = {}
        if info.body:
            try:
                document = json.loads(info.body)
            except ValueError:
                return _wire.error_response(
                    info.protocol, 400, "InvalidRequestException", "The request body is not valid JSON."
                )
            if not isinstance(document, dict):
                return _wire.error_response(
                    info.protocol, 400, "InvalidRequestException", "The request body must be a JSON object."
                )
        if operation in _CERT_REGISTER_OPERATIONS:
            pem = document.get("certificatePem")
            if refused := _refused(
                info, "CertificateValidationException", _certrules.check_certificate_pem, pem
            ):
                return refused
            if not document.get("status"):
                # AWS registers a certificate sent without `status` as INACTIVE (moto stores no status at all,
                # and describe_certificate then shows none). `setAsActive=true` on RegisterCertificate still wins.
                _wire.replace_body(environ, {**document, "status": "INACTIVE"})
        elif operation == "UpdateCertificate":
            new_status = (info.query.get("newStatus") or [""])[0]
            if new_status not in _SETTABLE_CERTIFICATE_STATUSES:
                # AWS: PENDING_TRANSFER / PENDING_ACTIVATION are internal and "result in an exception"; moto
                # stores any string.
                return _wire.error_response(
                    info.protocol,
                    400,
                    "InvalidRequestException",
                    f"newStatus {new_status!r} cannot be set; use one of "
                    f"{', '.join(_SETTABLE_CERTIFICATE_STATUSES)}.",
                )
        elif operation == "CreateThing":
            return self._create_thing_again(info, environ, document, account_id, region)
        elif operation == "CreateCertificateFromCsr":
            csr = document.get("certificateSigningRequest")
            if refused := _refused(info, "InvalidRequestException", _certrules.check_csr_pem, csr):
                return refused
            return self._certificate_from_csr(info, document["certificateSigningRequest"], account_id, region)
        elif operation == "DescribeEndpoint":
            endpoint_type = (info.query.get("endpointType") or ["iot:Data"])[0]
            if endpoint_type not in _ENDPOINT_TYPES:
                return _wire.error_response(
                    info.protocol,
                    400,
                    "InvalidRequestException",
                    f"Endpoint type {endpoint_type} not recognized.",
                )
            return _wire.json_response(200, {"endpointAddress": self.plane.data_endpoint(account_id, region)})
        return None

    def _create_thing_again(
        self,
        info: _wire.RequestInfo,
        environ: dict[str, Any],
        document: dict[str, Any],
        account_id: str,
        region: str,
    ) -> _Answer | None:
        """CreateThing for a name that exists: AWS answers the existing thing when the configuration is the same
        and 409 ResourceAlreadyExistsException when it differs; moto replaces the thing (a new thingId)."""
        from urllib.parse import unquote

        from moto.iot.models import iot_backends

        name = unquote((environ.get("PATH_INFO") or "").rstrip("/").rsplit("/", 1)[-1])
        backend = iot_backends[account_id][region]
        existing = next((t for t in list(backend.things.values()) if t.thing_name == name), None)
        if existing is None:
            return None
        existing_type = existing.thing_type.thing_type_name if existing.thing_type else None
        attributes = (document.get("attributePayload") or {}).get("attributes") or {}
        same = (
            document.get("thingTypeName") == existing_type
            and attributes == (existing.attributes or {})
            and document.get("billingGroupName") == existing.billing_group_name
        )
        if not same:
            return _wire.error_response(
                info.protocol,
                409,
                "ResourceAlreadyExistsException",
                f"Thing {name} already exists in account with different attributes",
                extra={"resourceId": existing.thing_id, "resourceArn": existing.arn},
            )
        return _wire.json_response(
            200, {"thingName": existing.thing_name, "thingArn": existing.arn, "thingId": existing.thing_id}
        )

    def forget_force_deleted(self, info: _wire.RequestInfo, environ: dict[str, Any]) -> None:
        """After DeleteCertificate with forceDelete=true: drop the deleted certificate's policy attachments.

        AWS deletes them with the certificate; moto leaves them dangling, and its next delete of any other
        certificate in that account-region then fails with 404 while looking the dangling one up."""
        if (info.query.get("forceDelete") or ["false"])[0].lower() != "true":
            return
        from moto.iot.models import iot_backends

        account_id = self.plane.account_of(info, environ)
        region = info.region or self.plane.default_region
        backend = iot_backends[account_id][region]
        live = {certificate.arn for certificate in list(backend.certificates.values())}
        for key in list(backend.principal_policies):
            principal = str(key[0])
            if ":cert/" in principal and principal not in live:
                backend.principal_policies.pop(key, None)

    def _certificate_from_csr(
        self, info: _wire.RequestInfo, csr_pem: str, account_id: str, region: str
    ) -> _Answer:
        """AWS signs the CSR's own key; moto would certify a fresh key no device holds, so answer it here."""
        from moto.iot.models import iot_backends

        set_as_active = (info.query.get("setAsActive") or ["false"])[0].lower() == "true"
        certificate_pem = _awsca.sign_csr(csr_pem)
        registered = iot_backends[account_id][region].register_certificate(
            certificate_pem, ca_certificate_pem=None, set_as_active=set_as_active, status="INACTIVE"
        )
        return _wire.json_response(
            200,
            {
                "certificateArn": registered.arn,
                "certificateId": registered.certificate_id,
                "certificatePem": certificate_pem,
            },
        )

    # -- admin API (/lab-api/...)

    def _admin(self, environ: dict[str, Any]) -> _Answer:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        parts = [part for part in (environ.get("PATH_INFO") or "")[len(ADMIN_PREFIX) :].split("/") if part]
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _admin_error(400, "Malformed request: Content-Length is not a number.")
        if declared > MAX_ADMIN_BODY:
            # An admin body is a few hundred bytes; refuse a large one outright rather than read or ignore it.
            return _admin_error(
                413, f"The body is {declared} bytes; the lab's admin API takes at most {MAX_ADMIN_BODY}."
            )
        try:
            body = _wire.read_body(environ)
            payload: Any = json.loads(body) if body.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            return _admin_error(400, f"Malformed JSON body: {exc}")
        except RecursionError:  # [[[[…]]]] nested thousands deep
            return _admin_error(400, "Malformed JSON body: nested too deeply.")
        plane = self.plane
        try:
            if parts == ["status"] and method == "GET":
                return _wire.json_response(200, plane.status())
            if parts == ["faults"]:
                if method == "GET":
                    return _wire.json_response(200, {"faults": plane.faults.list()})
                if method == "POST":
                    options = dict(payload)
                    kind = options.pop("kind", None)
                    if not isinstance(kind, str):
                        return _admin_error(400, f"A fault needs a 'kind': one of {', '.join(FAULT_KINDS)}.")
                    return _wire.json_response(201, {"id": plane.faults.set(kind, **options)})
                if method == "DELETE":
                    plane.faults.clear()
                    return _wire.json_response(200, {"faults": []})
            if len(parts) == 2 and parts[0] == "faults" and method == "DELETE":
                if not parts[1].isdigit() or not plane.faults.clear(int(parts[1])):
                    return _admin_error(404, f"No active fault with id {parts[1]}.")
                return _wire.json_response(200, {"faults": plane.faults.list()})
            if parts == ["throttling"]:
                if method == "PUT":
                    enabled = payload.get("enabled")
                    if enabled is not None and not isinstance(enabled, bool):
                        return _admin_error(400, "'enabled' must be true or false.")
                    quotas = payload.get("quotas")
                    if quotas is not None and not isinstance(quotas, dict):
                        return _admin_error(400, "'quotas' must be an object of operation name → TPS.")
                    if quotas:
                        plane.throttle.set_quotas(quotas)
                    if enabled is not None:
                        plane.throttle.enabled = enabled
                    if payload.get("reset"):
                        plane.throttle.reset()
                if method in ("GET", "PUT"):
                    return _wire.json_response(200, plane.status()["throttling"])
        except (TypeError, ValueError) as exc:
            return _admin_error(400, str(exc))
        return _admin_error(404, f"No lab admin route {method} {ADMIN_PREFIX}/{'/'.join(parts)}.")


# ------------------------------------------------------------------------- fault: process, then lose the answer

_LOST = "lab.answer_lost"  # environ flag: this request's fault was decided; handle it as if none fired


def _lose_answer(
    fault: Fault, environ: dict[str, Any], process: Callable[[Callable[..., Any]], Iterable[bytes]]
) -> Iterable[bytes]:
    """AWS did the work, the client never hears of it: run the request to completion (its side effects
    happen, its answer is built), discard the answer, then close the connection — at once, or after
    `fault.delay_s` (past the client's read timeout: the client times out). The client sees what it would
    see against AWS when the network loses a reply: a closed connection or a read timeout, and a retry
    meets the request's effect (e.g. 409 ResourceAlreadyExistsException for a registered certificate)."""
    statuses: list[str] = []

    def discard(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        statuses.append(status)
        return lambda data: None

    body = process(discard)
    try:
        for _chunk in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if callable(close):
            close()
    log.debug("lab control plane: answer %s lost (fault %d)", statuses[:1], fault.id)
    if fault.delay_s > 0:
        time.sleep(fault.delay_s)
    sock: socket.socket | None = environ.get("werkzeug.socket")
    if sock is not None:
        # OSError: the client gave up first (its read timeout): nothing left to close.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # FIN without an answer
    raise ConnectionAbortedError("lab fault: answer lost after processing")


def _refused(info: _wire.RequestInfo, code: str, rule: Callable[[Any], object], value: Any) -> _Answer | None:
    """AWS's 400 `code` when one of its rules (`_certrules`) refuses `value`, with the rule's reason; else None."""
    try:
        rule(value)
    except _certrules.Rejected as rejected:
        return _wire.error_response(info.protocol, 400, code, str(rejected))
    return None


def _admin_error(status: int, message: str) -> _Answer:
    return _wire.error_response(_wire.REST_JSON, status, "LabAdminError", message)


def _send(start_response: Callable[..., Any], answer: _Answer) -> list[bytes]:
    status, headers, body = answer
    start_response(status, headers)
    return [body]


# ------------------------------------------------------------------------------------------------ the server


def _make_server_classes() -> tuple[type, type]:
    """Build werkzeug server/handler subclasses lazily (importing moto's server costs ~1 s)."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import ThreadedWSGIServer

    class Handler(MotoRequestHandler):
        # Answer a garbled request line with a status line (the stdlib default, HTTP/0.9, sends a bare page).
        default_request_version = "HTTP/1.0"

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # werkzeug logs every request by default; a lab must stay quiet

        def log(self, type: str, message: str, *args: Any) -> None:
            log.debug("lab control plane %s: " + message, type, *args)

        def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
            # A drop/down fault closed the socket under us: do not read another request from it.
            self.close_connection = True

    class Server(ThreadedWSGIServer):
        def log(self, type: str, message: str, *args: Any) -> None:
            (log.warning if type == "error" else log.debug)("lab control plane: " + message, *args)

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("lab control plane: connection from %s failed", client_address, exc_info=True)

    return Server, Handler


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise LabError(
                "Lab port in use",
                f"The lab control plane cannot listen on {host}:{port}: another program already uses that port.",
                f"Stop that program (find it with `ss -ltnp 'sport = :{port}'`) or start the lab on another "
                "port (port 0 picks a free one).",
            ) from None
        raise LabError(
            "Lab cannot listen",
            f"The lab control plane cannot listen on {host}:{port}: {exc.strerror or exc}.",
            "Use 127.0.0.1 and a free port above 1024 (port 0 picks one).",
        ) from None
    return sock


class ControlPlane:
    """A local AWS IoT control plane (moto server + AWS behaviour) on 127.0.0.1; a context manager.

    >>> with ControlPlane() as plane:
    ...     iot = plane.client("iot")                                  # default account, default region
    ...     other = plane.client("iot", account_id=SECOND_ACCOUNT_ID)  # via STS AssumeRole
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Iterable[str] = (DEFAULT_ACCOUNT_ID, SECOND_ACCOUNT_ID),
        default_region: str = DEFAULT_REGION,
        role_name: str = DEFAULT_ROLE_NAME,
        data_endpoints: Mapping[tuple[str, str], str] | None = None,
        default_data_endpoint: str = "localhost",
        quotas: Mapping[str, float | None] | None = None,
        throttling: bool = True,
    ) -> None:
        self.accounts = tuple(accounts)
        for account_id in self.accounts:
            if not (isinstance(account_id, str) and len(account_id) == 12 and account_id.isdigit()):
                raise LabError(
                    "Bad lab account id",
                    f"{account_id!r} is not an AWS account id (12 digits).",
                    "Give 12-digit account ids.",
                )
        if not self.accounts or self.accounts[0] != DEFAULT_ACCOUNT_ID:
            # The static lab keys land in moto's default account; keep it first so "default" means one thing.
            self.accounts = (DEFAULT_ACCOUNT_ID, *[a for a in self.accounts if a != DEFAULT_ACCOUNT_ID])
        self.host = host
        self.requested_port = port
        self.default_region = default_region
        self.role_name = role_name
        self.default_data_endpoint = default_data_endpoint
        self._data_endpoints: dict[tuple[str, str], str] = dict(data_endpoints or {})
        self.faults = FaultInjector()
        self.throttle = Throttle(quotas, enabled=throttling)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._requests: dict[str, int] = {}  # "service:Operation" → requests answered (status()["requests"])
        self._requests_lock = threading.Lock()
        self.start_seconds: float | None = None  # how long start() took (import excluded if already imported)

    # -- lifecycle

    def start(self) -> ControlPlane:
        if self._server is not None:
            return self
        started = time.perf_counter()
        import moto.core.config

        # Before the first IoT request: certificate id = SHA-256 of the DER, as AWS (process-wide moto setting).
        moto.core.config.default_user_config.setdefault("iot", {})["use_valid_cert"] = True
        _dynamodb.install()  # transactions that cost what they touch, not the whole table
        server_class, handler_class = _make_server_classes()
        backend, fresh = _shared_backend()
        sock = _bind(self.host, self.requested_port)
        try:
            self._server = server_class(
                self.host, 0, _LabApp(self, backend), handler=handler_class, fd=sock.fileno()
            )
        finally:
            sock.close()  # werkzeug serves a duplicate of the descriptor
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="lab-control", daemon=True
        )
        self._thread.start()
        # Load the IoT and STS apps off the caller's thread; a request arriving first waits on moto's lock.
        if fresh:
            threading.Thread(target=_warm, args=(backend,), name="lab-control-warm", daemon=True).start()
        self.start_seconds = time.perf_counter() - started
        log.info(
            "lab control plane listening on %s (started in %.3f s)", self.endpoint_url, self.start_seconds
        )
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise LabError("Lab not started", "The control plane is not running.", "Call start() first.")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- behaviour switches

    @property
    def throttling(self) -> bool:
        return self.throttle.enabled

    @throttling.setter
    def throttling(self, enabled: bool) -> None:
        self.throttle.enabled = bool(enabled)

    def data_endpoint(self, account_id: str, region: str) -> str:
        """The host `describe_endpoint` answers for this account-region (stable for the plane's lifetime)."""
        return self._data_endpoints.get((account_id, region), self.default_data_endpoint)

    def set_data_endpoint(self, account_id: str, region: str, host: str) -> None:
        self._data_endpoints[(account_id, region)] = host

    def reset(self) -> None:
        """Forget every registry (process-wide moto state), refill the buckets, clear the faults."""
        from moto.moto_api import _internal

        _internal.moto_api_backend.reset()
        self.throttle.reset()
        self.faults.reset()

    def status(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url if self.running else None,
            "default_account_id": DEFAULT_ACCOUNT_ID,
            "accounts": [{"account_id": a, "role_arn": self.role_arn(a)} for a in self.accounts],
            "throttling": {
                "enabled": self.throttle.enabled,
                "quotas": self.throttle.quotas,
                "throttled": self.throttle.throttled,
            },
            "faults": self.faults.list(),
            "faults_fired": dict(self.faults.fired),
            "requests": self.requests(),
        }

    def count(self, info: _wire.RequestInfo) -> None:
        """Count one request by service and operation (what a benchmark reads as requests per unit)."""
        name = f"{info.service}:{info.operation or '-'}"
        with self._requests_lock:
            self._requests[name] = self._requests.get(name, 0) + 1

    def requests(self) -> dict[str, int]:
        with self._requests_lock:
            return dict(self._requests)

    # -- who is asking

    def account_of(self, info: _wire.RequestInfo, environ: Mapping[str, Any]) -> str:
        """The account a request acts in, decided the way moto decides it (so throttles match registries)."""
        if "MOTO_ACCOUNT_ID" in os.environ:
            return os.environ["MOTO_ACCOUNT_ID"]
        header = environ.get("HTTP_X_MOTO_ACCOUNT_ID")
        if header:
            return str(header)
        if not info.access_key:
            return DEFAULT_ACCOUNT_ID
        from moto.iam.models import get_account_id_from

        return get_account_id_from(info.access_key)

    # -- clients for tests and the Lab assembly

    @property
    def credentials(self) -> dict[str, str]:
        """The lab's static keys (the default account), as boto3 keyword arguments."""
        return {"aws_access_key_id": LAB_ACCESS_KEY_ID, "aws_secret_access_key": LAB_SECRET_ACCESS_KEY}

    def role_arn(self, account_id: str) -> str:
        """What a station assumes to act in `account_id` (moto does not need the role to exist)."""
        return f"arn:aws:iam::{account_id}:role/{self.role_name}"

    def credentials_for(self, account_id: str | None = None, region: str | None = None) -> dict[str, str]:
        """boto3 keyword credentials acting in `account_id`: the static keys, or STS AssumeRole into its role."""
        if account_id is None or account_id == DEFAULT_ACCOUNT_ID:
            return self.credentials
        sts = self.client("sts", region=region)
        assumed = sts.assume_role(RoleArn=self.role_arn(account_id), RoleSessionName="lab-station")
        return {
            "aws_access_key_id": assumed["Credentials"]["AccessKeyId"],
            "aws_secret_access_key": assumed["Credentials"]["SecretAccessKey"],
            "aws_session_token": assumed["Credentials"]["SessionToken"],
        }

    def session_for(self, account_id: str | None = None, region: str | None = None) -> boto3.Session:
        """A boto3 session acting in `account_id` (default: the lab's default account, static keys)."""
        import boto3

        region = region or self.default_region
        credentials: dict[str, Any] = self.credentials_for(account_id, region)
        return boto3.Session(region_name=region, **credentials)

    def client(
        self,
        service: str,
        *,
        account_id: str | None = None,
        region: str | None = None,
        config: Config | None = None,
    ) -> Any:
        """A boto3 client on this control plane, acting in `account_id` (assume-role when not the default)."""
        import boto3

        region = region or self.default_region
        credentials = self.credentials_for(account_id, region)
        global _SESSION
        with _SESSION_LOCK:
            # One session for every client of every plane in this process: it loads each service model once (a
            # new session reloads it, ~0.5 s for IoT); sessions are not thread-safe while creating clients.
            if _SESSION is None:
                _SESSION = boto3.Session()
            session: Any = _SESSION
            return session.client(
                service, region_name=region, endpoint_url=self.endpoint_url, config=config, **credentials
            )


_BACKEND: Any = None
_BACKEND_LOCK = threading.Lock()
_SESSION: Any = None  # boto3.Session shared by ControlPlane.client()
_SESSION_LOCK = threading.Lock()


def _shared_backend() -> tuple[Any, bool]:
    """moto's dispatcher, one per process: its state is process-wide anyway, and its per-service Flask apps take
    a few hundred ms to build, so a second control plane (next test, next Lab) reuses them. True if new."""
    global _BACKEND
    with _BACKEND_LOCK:
        if _BACKEND is not None:
            return _BACKEND, False
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        _BACKEND = DomainDispatcherApplication(create_backend_app)
        return _BACKEND, True


def _warm(backend: Any) -> None:
    """Load what the first IoT/STS request needs (moto apps, botocore models for routing, the IAM key map)."""
    for service in ("iot", "sts"):
        try:
            if _wire.protocol_of(service) == _wire.REST_JSON:
                _wire.routes(service)
            with backend.lock:
                if service not in backend.app_instances:
                    backend.app_instances[service] = backend.create_app(service)
        except Exception:  # warming is an optimisation; the first request will load it instead
            log.debug("lab control plane: could not pre-load %s", service, exc_info=True)
    import moto.iam.models  # noqa: F401  # account_of() looks access keys up there


# ---------------------------------------------------------------------------------- admin client (other process)


class RemoteFaults:
    """`FaultInjector`'s API over HTTP, for a control plane running in another process (`station lab`)."""

    def __init__(self, remote: RemoteControl) -> None:
        self._remote = remote

    def set(self, kind: str, **options: Any) -> int:
        return int(self._remote.call("POST", "/faults", {"kind": kind, **options})["id"])

    def clear(self, fault_id: int | None = None) -> bool:
        path = "/faults" if fault_id is None else f"/faults/{fault_id}"
        try:
            self._remote.call("DELETE", path)
        except LabError:
            if fault_id is None:
                raise
            return False
        return True

    def list(self) -> list[dict[str, Any]]:
        return list(self._remote.call("GET", "/faults")["faults"])


class RemoteControl:
    """Client of a control plane's `/lab-api/` admin path: faults, throttling, status."""

    def __init__(self, endpoint_url: str, *, timeout_s: float = 5.0) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout_s = timeout_s
        self.faults = RemoteFaults(self)

    def status(self) -> dict[str, Any]:
        return dict(self.call("GET", "/status"))

    def set_throttling(
        self,
        enabled: bool | None = None,
        *,
        quotas: Mapping[str, float | None] | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reset": reset}
        if enabled is not None:
            body["enabled"] = enabled
        if quotas is not None:
            body["quotas"] = dict(quotas)
        return dict(self.call("PUT", "/throttling", body))

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.endpoint_url + ADMIN_PREFIX + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", exc.reason)
            except ValueError:
                message = exc.reason
            raise LabError(
                "Lab admin request refused", f"{method} {path}: {message}", "Fix the request and try again."
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise LabError(
                "Lab unreachable",
                f"The lab control plane at {self.endpoint_url} did not answer ({exc}).",
                "Start `station lab` or check the endpoint_url in lab.json.",
            ) from None
