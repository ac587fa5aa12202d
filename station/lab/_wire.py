"""What an incoming AWS request is, and how AWS shapes an error answer: the lab control plane's wire helpers.

`describe_request` reads a WSGI environ the way AWS's front door would: the service and region from the SigV4
credential scope, the access key (hence the account), and the operation — for rest-json services such as IoT
from the method and path, matched against botocore's own service model (no hand-written route table), for
query services such as STS from the `Action` form field, for json services from `X-Amz-Target`.

`error_response` builds an error in the protocol the client expects, so botocore parses the code exactly as it
does for AWS (`x-amzn-ErrorType` + JSON `message` for rest-json; `<ErrorResponse>` XML for query).

Pure helpers: no moto state, no sockets, never logs request bodies (they can hold certificates).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import botocore.session

# Bodies larger than this are not buffered for inspection (AWS IoT's largest request is far smaller).
MAX_INSPECTED_BODY = 1 << 20
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")

REST_JSON = "rest-json"
QUERY = "query"
JSON = "json"


@dataclass(frozen=True)
class RequestInfo:
    """Who asks what: the parsed identity of one incoming AWS request."""

    service: str | None  # SigV4 signing name, e.g. "iot", "sts"; None when unsigned
    region: str | None
    access_key: str | None
    operation: str | None  # botocore operation name, e.g. "RegisterCertificateWithoutCA"
    protocol: str
    body: bytes
    query: dict[str, list[str]]
    model_protocol: str | None = None  # the protocol botocore's model gives the service; None if unknown


class Route:
    """One operation of a rest-json service model: method + path template → operation name."""

    def __init__(self, name: str, method: str, request_uri: str) -> None:
        path, _, fixed_query = request_uri.partition("?")
        self.name = name
        self.method = method.upper()
        self.required_query = [part.split("=")[0] for part in fixed_query.split("&") if part]
        pattern = ""
        literal = 0
        for piece in re.split(r"(\{[^}]+\})", path):
            if piece.startswith("{") and piece.endswith("}"):
                pattern += "(.+)" if piece.endswith("+}") else "([^/]+)"
            else:
                pattern += re.escape(piece)
                literal += len(piece)
        self.regex = re.compile(pattern + "/?")
        # The most specific template wins when two match (more literal text, fewer greedy labels).
        self.rank = (len(self.required_query), literal, -pattern.count("(.+)"))

    def matches(self, method: str, path: str, query: dict[str, list[str]]) -> bool:
        return (
            method == self.method
            and self.regex.fullmatch(path) is not None
            and all(key in query for key in self.required_query)
        )


@cache
def _service_model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


@cache
def routes(service: str) -> tuple[Route, ...]:
    """Every operation of a rest-json service, most specific first (built once, from botocore's model)."""
    model = _service_model(service)
    table = [
        Route(
            name, model.operation_model(name).http["method"], model.operation_model(name).http["requestUri"]
        )
        for name in model.operation_names
    ]
    return tuple(sorted(table, key=lambda route: route.rank, reverse=True))


@cache
def protocol_of(service: str) -> str:
    try:
        return str(_service_model(service).metadata["protocol"])
    except Exception:  # an unknown signing name: answer errors in the most common modern shape
        return REST_JSON


@cache
def is_known_service(service: str) -> bool:
    """True when botocore has a model for this signing name (the lab's services: iot, sts, dynamodb, …)."""
    try:
        _service_model(service)
    except Exception:
        return False
    return True


def is_known_operation(service: str, operation: str) -> bool:
    return is_known_service(service) and operation in _service_model(service).operation_names


def resolve_rest_operation(service: str, method: str, path: str, query: dict[str, list[str]]) -> str | None:
    for route in routes(service):
        if route.matches(method, path, query):
            return route.name
    return None


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the request body once and put it back, so the application behind us reads it again."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0 or length > MAX_INSPECTED_BODY:
        return b""
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return bytes(body)


def replace_body(environ: dict[str, Any], document: Any) -> None:
    """Hand the application behind us this JSON document as the request body instead of the one sent."""
    body = json.dumps(document).encode()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def _raw_path(environ: dict[str, Any]) -> str:
    """The path as sent, still percent-encoded: PATH_INFO is decoded, and an encoded "/" inside a label (an ARN
    in /attached-policies/{target}) would otherwise split it."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path = str(raw).split("?", 1)[0]
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path or "/"
    return str(environ.get("PATH_INFO") or "/")


def describe_request(environ: dict[str, Any]) -> RequestInfo:
    """Identify service, region, access key and operation of a WSGI request (never raises on bad input)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    found = _CREDENTIAL.search(auth)
    access_key, region, service = (
        (found.group(1), found.group(3), found.group(4).lower()) if found else (None,) * 3
    )
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    body = read_body(environ)
    method = environ.get("REQUEST_METHOD", "GET").upper()
    path = _raw_path(environ)
    target = environ.get("HTTP_X_AMZ_TARGET")
    model_protocol = protocol_of(service) if service is not None and is_known_service(service) else None
    operation: str | None = None
    if target:
        protocol = JSON
        operation = target.rsplit(".", 1)[-1]
    elif model_protocol in (REST_JSON, "rest-xml"):
        protocol = REST_JSON
        operation = resolve_rest_operation(str(service), method, path, query)
    elif model_protocol in (QUERY, "ec2"):
        protocol = QUERY
        form = parse_qs(body.decode("utf-8", "replace")) if body else {}
        action = form.get("Action") or query.get("Action")
        operation = action[0] if action else None
    else:  # json protocol without a target, an unknown service, or unsigned
        protocol = JSON if model_protocol == JSON else REST_JSON
    return RequestInfo(service, region, access_key, operation, protocol, body, query, model_protocol)


def new_request_id() -> str:
    return str(uuid.uuid4())


def error_response(
    protocol: str, status: int, code: str, message: str, *, extra: dict[str, Any] | None = None
) -> tuple[str, list[tuple[str, str]], bytes]:
    """An AWS-shaped error answer: (status line, headers, body)."""
    request_id = new_request_id()
    if protocol == QUERY:
        kind = "Sender" if status < 500 else "Receiver"
        body = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>{kind}</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    else:
        payload: dict[str, Any] = {"message": message, **(extra or {})}
        if protocol == JSON:
            payload["__type"] = code
        body = json.dumps(payload).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", request_id),
        ]
    headers.append(("Content-Length", str(len(body))))
    return f"{status} {_REASONS.get(status, 'Error')}", headers, body


def json_response(status: int, payload: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps(payload).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("x-amzn-RequestId", new_request_id()),
        ("Content-Length", str(len(body))),
    ]
    return f"{status} {_REASONS.get(status, 'OK')}", headers, body


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
