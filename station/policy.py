"""AWS IoT device policies: the least-privilege default, filling in a target's document, the over-broad check.

What it does: holds the station's default policy (`LEAST_PRIVILEGE_POLICY`), renders a target's document for
one account (`render_policy`: the REGION and ACCOUNT placeholders filled in), says whether a document is
usable at all (`policy_problem`, used by the config loader) and whether it is too broad for a production
target (`is_over_broad`, used by preflight and the registry to refuse `iot:*` on `*` unless the target is lab).

What it must not do: talk to AWS or read files (the config loader reads policy files). The lab's own policy
evaluator (station/lab/policy.py) decides what a lab device may do; this module only judges documents.
"""

from __future__ import annotations

import json
import re
from typing import Any

from station.errors import ConfigError, InputError
from station.model import Target

# The least-privilege device policy (docs: aws-iot.md): one shared policy; thing policy variables tie each
# client to its own thing name and topics. REGION and ACCOUNT are filled in per target by render_policy.
LEAST_PRIVILEGE_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:REGION:ACCOUNT:client/${iot:Connection.Thing.ThingName}",
            "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:REGION:ACCOUNT:topic/things/${iot:Connection.Thing.ThingName}/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:REGION:ACCOUNT:topicfilter/things/${iot:Connection.Thing.ThingName}/*",
        },
    ],
}
LEAST_PRIVILEGE_POLICY_JSON = json.dumps(LEAST_PRIVILEGE_POLICY, indent=2) + "\n"

ACCOUNT_RE = re.compile(r"\d{12}")
_PLACEHOLDER_RE = re.compile(r"\b(REGION|ACCOUNT)\b")
_ALL_IOT_RESOURCE = re.compile(r"arn:aws[a-z-]*:iot:[^:]*:[^:]*:\*")


def policy_problem(text: str) -> str | None:
    """Why `text` cannot be a policy document (not JSON, no statements), or None when it can."""
    try:
        document = json.loads(text)
    except ValueError as error:
        return f"expected a JSON policy document; it is not valid JSON ({error})."
    statements = document.get("Statement") if isinstance(document, dict) else None
    if not isinstance(statements, list | dict) or not statements:
        return 'expected a JSON policy document with a "Statement" list.'
    return None


def render_policy(target: Target, account_id: str) -> str:
    """The target's policy document with the REGION and ACCOUNT placeholders filled in.

    Placeholders are whole words (so `REGIONAL` is left alone); the result must be valid JSON.
    """
    if not isinstance(account_id, str) or not ACCOUNT_RE.fullmatch(account_id):
        raise InputError(
            "Invalid account id",
            f"Cannot fill in the policy for target {target.name!r}: {account_id!r} is not a 12-digit account id.",
            "Check the target's credentials (preflight shows the account they resolve to).",
        )
    values = {"REGION": target.region, "ACCOUNT": account_id}
    text = _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], target.policy_document)
    reason = policy_problem(text)
    if reason:
        raise ConfigError(
            "Invalid policy document",
            f"The policy document of target {target.name!r} is unusable: {reason}",
            "Fix policy_document / policy_file of this target in station.toml.",
        )
    return text


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def is_over_broad(policy_json: str) -> str | None:
    """Why this policy is too broad for a production target, or None when it is not.

    Over-broad: an Allow statement whose actions include `*` or `iot:*` on a resource that is `*` (or an
    ARN matching every IoT resource), or any Allow with NotAction/NotResource (they grant everything else).
    Deny statements never make a policy broader. Invalid JSON is an `InputError`, not a verdict.
    """
    try:
        document = json.loads(policy_json)
    except (ValueError, TypeError) as error:
        raise InputError(
            "Invalid policy document", f"The policy is not valid JSON ({error}).", "Fix the policy document."
        ) from None
    if not isinstance(document, dict):
        raise InputError(
            "Invalid policy document", "The policy is not a JSON object.", "Fix the policy document."
        )
    for index, statement in enumerate(_as_list(document.get("Statement")), start=1):
        if not isinstance(statement, dict) or str(statement.get("Effect", "")).lower() != "allow":
            continue
        sid = f" ({statement['Sid']})" if isinstance(statement.get("Sid"), str) else ""
        if "NotAction" in statement or "NotResource" in statement:
            which = "NotAction" if "NotAction" in statement else "NotResource"
            return f"statement {index}{sid} allows with {which}, which grants everything not listed"
        actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
        resources = [r for r in _as_list(statement.get("Resource")) if isinstance(r, str)]
        broad_actions = [a for a in actions if a.strip().lower() in ("*", "iot:*")]
        broad_resources = [r for r in resources if r.strip() == "*" or _ALL_IOT_RESOURCE.fullmatch(r.strip())]
        if broad_actions and broad_resources:
            return (
                f"statement {index}{sid} allows {broad_actions[0]} on resource {broad_resources[0]}: any device "
                "could act as any other"
            )
    return None
