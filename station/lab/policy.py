"""AWS IoT policy evaluation for the lab's data plane.

Decides whether a request (an MQTT action on a resource ARN) is allowed by a set of AWS IoT policy documents,
the way AWS IoT Core does for certificate principals:

- every statement of every attached policy is considered; an explicit ``Deny`` that matches wins over any
  ``Allow``; with no matching ``Allow`` the request is implicitly denied;
- ``Action``/``NotAction`` are strings or lists, matched case-insensitively, with ``*`` and ``?`` wildcards
  (``iot:*``, ``iot:Pub*``, ``*``);
- ``Resource``/``NotResource`` are matched case-sensitively with ``*`` (any run of characters, ``/`` included)
  and ``?`` (one character);
- policy variables ``${iot:ClientId}``, ``${iot:Connection.Thing.ThingName}`` and
  ``${iot:Connection.Thing.IsAttached}`` are substituted (only in ``"Version": "2012-10-17"`` documents, as
  in IAM); a substituted value is matched literally, and an element that names a variable with no value
  (``ThingName`` when no thing is attached) matches nothing;
- ``Condition`` blocks with ``StringEquals``, ``StringNotEquals``, their ``IgnoreCase`` forms, ``StringLike``,
  ``StringNotLike``, ``Bool`` and ``Null`` (each with the ``IfExists`` suffix); operators are AND-ed, keys
  AND-ed, values OR-ed.

Resources follow AWS IoT: ``arn:aws:iot:<region>:<account>:client/<clientId>`` for ``iot:Connect``,
``topic/<name>`` for ``iot:Publish`` and ``iot:Receive``, ``topicfilter/<filter>`` for ``iot:Subscribe``.

This module is pure: no I/O, no moto, no threads. It must not grow into a general IAM engine: anything AWS IoT
devices do not need (principals, ``aws:`` context keys, numeric/date operators) is left out on purpose, and an
unknown condition operator makes its statement not apply (AWS would have refused such a policy on creation).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

IOT_CONNECT = "iot:Connect"
IOT_PUBLISH = "iot:Publish"
IOT_SUBSCRIBE = "iot:Subscribe"
IOT_RECEIVE = "iot:Receive"

VAR_CLIENT_ID = "iot:ClientId"
VAR_THING_NAME = "iot:Connection.Thing.ThingName"
VAR_IS_ATTACHED = "iot:Connection.Thing.IsAttached"

# Policy variables are only substituted in documents of this version (IAM rule, which AWS IoT follows).
VARIABLES_VERSION = "2012-10-17"


class PolicyError(ValueError):
    """A policy document that AWS IoT would not have accepted (not JSON, no statements, bad effect)."""


@dataclass(frozen=True)
class RequestContext:
    """Who is asking, and where: the values policy variables and condition keys resolve to.

    `thing_name` is set only when a thing whose name equals the client id is attached to the certificate
    (that is when AWS resolves ``iot:Connection.Thing.*``); otherwise ThingName is unresolved and IsAttached
    is ``false``.
    """

    region: str
    account_id: str
    client_id: str
    thing_name: str | None = None

    def values(self) -> dict[str, str]:
        """Policy variable / condition key values, keyed by lower-case name (IAM names are case-insensitive)."""
        found = {
            VAR_CLIENT_ID.lower(): self.client_id,
            VAR_IS_ATTACHED.lower(): "true" if self.thing_name is not None else "false",
        }
        if self.thing_name is not None:
            found[VAR_THING_NAME.lower()] = self.thing_name
        return found

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account_id}:{kind}/{name}"

    def client_arn(self) -> str:
        return self.arn("client", self.client_id)

    def topic_arn(self, topic: str) -> str:
        return self.arn("topic", topic)

    def topicfilter_arn(self, topic_filter: str) -> str:
        return self.arn("topicfilter", topic_filter)


@dataclass(frozen=True)
class Statement:
    effect: str  # "Allow" or "Deny"
    actions: tuple[str, ...] | None
    not_actions: tuple[str, ...] | None
    resources: tuple[str, ...] | None
    not_resources: tuple[str, ...] | None
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (operator, key, values)
    variables: bool  # whether ${...} is substituted (document version 2012-10-17)


@dataclass(frozen=True)
class Policy:
    """One parsed policy document."""

    name: str
    statements: tuple[Statement, ...]

    @classmethod
    def from_document(cls, name: str, document: str | Mapping[str, Any]) -> Policy:
        """Parse a policy document (JSON text or an already-decoded mapping); raises `PolicyError`."""
        if isinstance(document, str):
            try:
                decoded = json.loads(document)
            except ValueError as exc:
                raise PolicyError(f"policy {name!r} is not valid JSON: {exc}") from exc
        else:
            decoded = document
        if not isinstance(decoded, Mapping):
            raise PolicyError(f"policy {name!r} is not a JSON object")
        variables = str(decoded.get("Version", "")) == VARIABLES_VERSION
        raw = decoded.get("Statement")
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise PolicyError(f"policy {name!r} has no Statement")
        return cls(name=name, statements=tuple(_parse_statement(name, s, variables) for s in raw))


@dataclass(frozen=True)
class Decision:
    """The outcome of an evaluation, with the reason in words (for the lab's log and tests)."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def evaluate(policies: Iterable[Policy], action: str, resource: str, context: RequestContext) -> Decision:
    """Evaluate `action` on `resource` against all `policies`: explicit Deny > Allow > implicit deny."""
    values = context.values()
    allowed_by: str | None = None
    for policy in policies:
        for statement in policy.statements:
            if not _statement_applies(statement, action, resource, values):
                continue
            if statement.effect == "Deny":
                return Decision(False, f"{action} on {resource} explicitly denied by policy {policy.name!r}")
            if allowed_by is None:
                allowed_by = policy.name
    if allowed_by is not None:
        return Decision(True, f"{action} on {resource} allowed by policy {allowed_by!r}")
    return Decision(False, f"no attached policy allows {action} on {resource}")


def is_allowed(policies: Iterable[Policy], action: str, resource: str, context: RequestContext) -> bool:
    return evaluate(policies, action, resource, context).allowed


# --- parsing ---------------------------------------------------------------------------------------------


def _strings(policy: str, field: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PolicyError(f"policy {policy!r}: {field} must be a string or a list of strings")


def _condition_values(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool):  # JSON true/false in a Bool condition
            out.append("true" if item else "false")
        else:
            out.append(str(item))
    return tuple(out)


def _parse_statement(policy: str, raw: Any, variables: bool) -> Statement:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"policy {policy!r}: a statement is not a JSON object")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"policy {policy!r}: Effect must be Allow or Deny, not {effect!r}")
    actions = _strings(policy, "Action", raw.get("Action"))
    not_actions = _strings(policy, "NotAction", raw.get("NotAction"))
    resources = _strings(policy, "Resource", raw.get("Resource"))
    not_resources = _strings(policy, "NotResource", raw.get("NotResource"))
    if (actions is None) == (not_actions is None):
        raise PolicyError(f"policy {policy!r}: a statement needs exactly one of Action / NotAction")
    if (resources is None) == (not_resources is None):
        raise PolicyError(f"policy {policy!r}: a statement needs exactly one of Resource / NotResource")
    conditions: list[tuple[str, str, tuple[str, ...]]] = []
    block = raw.get("Condition", {})
    if not isinstance(block, Mapping):
        raise PolicyError(f"policy {policy!r}: Condition must be a JSON object")
    for operator, keys in block.items():
        if not isinstance(keys, Mapping):
            raise PolicyError(f"policy {policy!r}: Condition {operator} must map keys to values")
        for key, value in keys.items():
            conditions.append((str(operator), str(key), _condition_values(value)))
    return Statement(
        effect=str(effect),
        actions=actions,
        not_actions=not_actions,
        resources=resources,
        not_resources=not_resources,
        conditions=tuple(conditions),
        variables=variables,
    )


# --- matching --------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
# IAM's escapes for characters that would otherwise be wildcards or start a variable.
_SPECIAL = {"*": "*", "?": "?", "$": "$"}


class _Unresolved(Exception):
    """A policy variable has no value in this context: the element matches nothing."""


def _resolve(name: str, values: Mapping[str, str]) -> str:
    # `${key, 'default'}` form: IAM's default value for a missing key.
    key, sep, default = name.partition(",")
    key = key.strip()
    if key in _SPECIAL:
        return _SPECIAL[key]
    found = values.get(key.lower())
    if found is not None:
        return found
    default = default.strip()
    if sep and len(default) >= 2 and default[0] == default[-1] == "'":
        return default[1:-1]
    raise _Unresolved(key)


def _pattern(template: str, values: Mapping[str, str], variables: bool, flags: int = 0) -> re.Pattern[str]:
    """Compile a wildcard template; substituted variable values are literal (a `*` in a client id is a `*`)."""
    parts: list[str] = []
    pos = 0
    matches = list(_VARIABLE.finditer(template)) if variables else []
    for match in matches:
        parts.append(_glob(template[pos : match.start()]))
        parts.append(re.escape(_resolve(match.group(1), values)))
        pos = match.end()
    parts.append(_glob(template[pos:]))
    return re.compile("".join(parts), flags | re.DOTALL)


def _glob(text: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _substitute(template: str, values: Mapping[str, str], variables: bool) -> str:
    if not variables:
        return template
    return _VARIABLE.sub(lambda m: _resolve(m.group(1), values), template)


def _any_matches(
    templates: Sequence[str], subject: str, values: Mapping[str, str], variables: bool, flags: int = 0
) -> bool:
    for template in templates:
        try:
            if _pattern(template, values, variables, flags).fullmatch(subject):
                return True
        except _Unresolved:
            continue  # an unresolvable element matches nothing, the others still count
    return False


def _statement_applies(statement: Statement, action: str, resource: str, values: Mapping[str, str]) -> bool:
    v = statement.variables
    # Actions are case-insensitive in AWS policies; variables never appear in them.
    if statement.actions is not None:
        if not _any_matches(statement.actions, action, {}, False, re.IGNORECASE):
            return False
    elif statement.not_actions is not None and _any_matches(
        statement.not_actions, action, {}, False, re.IGNORECASE
    ):
        return False
    if statement.resources is not None:
        if not _any_matches(statement.resources, resource, values, v):
            return False
    elif statement.not_resources is not None:
        try:
            if any(_pattern(t, values, v).fullmatch(resource) for t in statement.not_resources):
                return False
        except _Unresolved:
            return False  # cannot tell what is excluded: do not apply (never widens an Allow)
    return all(_condition_holds(op, key, vals, values, v) for op, key, vals in statement.conditions)


def _condition_holds(
    operator: str, key: str, expected: Sequence[str], values: Mapping[str, str], variables: bool
) -> bool:
    op = operator
    # Every key the lab knows is single-valued, so the set qualifiers reduce to the plain operator.
    for prefix in ("ForAnyValue:", "ForAllValues:"):
        if op.startswith(prefix):
            op = op[len(prefix) :]
    if_exists = op.endswith("IfExists")
    if if_exists:
        op = op[: -len("IfExists")]
    actual = values.get(key.lower())
    if op == "Null":
        wanted_absent = any(e.lower() == "true" for e in expected)
        return (actual is None) == wanted_absent
    if actual is None:
        return if_exists
    resolved: list[str] = []
    for item in expected:
        try:
            resolved.append(_substitute(item, values, variables))
        except _Unresolved:
            continue
    if op == "StringEquals":
        return actual in resolved
    if op == "StringNotEquals":
        return actual not in resolved
    if op == "StringEqualsIgnoreCase":
        return actual.lower() in (r.lower() for r in resolved)
    if op == "StringNotEqualsIgnoreCase":
        return actual.lower() not in (r.lower() for r in resolved)
    if op in ("StringLike", "StringNotLike"):
        hit = _any_matches(expected, actual, values, variables)
        return hit if op == "StringLike" else not hit
    if op == "Bool":
        return actual.lower() in (r.lower() for r in resolved)
    log.warning("condition operator %s is not supported by the lab: its statement does not apply", operator)
    return False
