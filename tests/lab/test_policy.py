"""AWS IoT policy evaluation (station.lab.policy): wildcards, Deny over Allow, variables, conditions."""

from __future__ import annotations

import json

import pytest

from station.lab.policy import (
    IOT_CONNECT,
    IOT_PUBLISH,
    IOT_RECEIVE,
    IOT_SUBSCRIBE,
    Policy,
    PolicyError,
    RequestContext,
    evaluate,
    is_allowed,
)

REGION = "ap-northeast-1"
ACCOUNT = "111122223333"
ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"


def policy(*statements: dict, version: str = "2012-10-17", name: str = "p") -> Policy:
    return Policy.from_document(name, json.dumps({"Version": version, "Statement": list(statements)}))


def allow(action, resource, **extra) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action, resource, **extra) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def ctx(client_id: str = "unit-1", thing: str | None = None) -> RequestContext:
    return RequestContext(region=REGION, account_id=ACCOUNT, client_id=client_id, thing_name=thing)


# The least-privilege device policy from AWS IoT's policy examples (thing-name policy variables).
THING_POLICY = policy(
    allow(
        "iot:Connect",
        f"{ARN}:client/${{iot:Connection.Thing.ThingName}}",
        Condition={"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
    ),
    allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/things/${{iot:Connection.Thing.ThingName}}/*"),
    allow("iot:Subscribe", f"{ARN}:topicfilter/things/${{iot:Connection.Thing.ThingName}}/*"),
)


def test_context_builds_aws_iot_resource_arns():
    c = ctx("dev-7")
    assert c.client_arn() == f"{ARN}:client/dev-7"
    assert c.topic_arn("a/b") == f"{ARN}:topic/a/b"
    assert c.topicfilter_arn("a/+/#") == f"{ARN}:topicfilter/a/+/#"


def test_iot_star_on_star_allows_every_mqtt_action():
    p = policy(allow("iot:*", "*"))
    for action, resource in [
        (IOT_CONNECT, f"{ARN}:client/x"),
        (IOT_PUBLISH, f"{ARN}:topic/a"),
        (IOT_SUBSCRIBE, f"{ARN}:topicfilter/#"),
        (IOT_RECEIVE, f"{ARN}:topic/a"),
    ]:
        assert is_allowed([p], action, resource, ctx())


def test_nothing_is_allowed_without_a_matching_allow():
    p = policy(allow("iot:Connect", f"{ARN}:client/only-me"))
    decision = evaluate([p], IOT_PUBLISH, f"{ARN}:topic/a", ctx())
    assert not decision.allowed
    assert "no attached policy allows iot:Publish" in decision.reason
    assert not evaluate([], IOT_CONNECT, f"{ARN}:client/x", ctx()).allowed


@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        ("iot:Publish", "iot:Publish", True),
        ("IOT:publish", "iot:Publish", True),  # actions are case-insensitive
        ("iot:Pub*", "iot:Publish", True),
        ("iot:Pub*", "iot:Subscribe", False),
        ("iot:?onnect", "iot:Connect", True),
        ("*", "iot:Receive", True),
        ("iot:Connect", "iot:ConnectX", False),  # whole-string match, not a prefix
    ],
)
def test_action_wildcards(pattern, action, expected):
    assert is_allowed([policy(allow(pattern, "*"))], action, f"{ARN}:topic/t", ctx()) is expected


@pytest.mark.parametrize(
    ("resource_pattern", "topic", "expected"),
    [
        ("topic/sensors/*", "sensors/a/b/c", True),  # * crosses '/'
        ("topic/sensors/*", "sensors", False),
        ("topic/sensor?", "sensor1", True),
        ("topic/sensor?", "sensor12", False),
        ("topic/Sensors/a", "sensors/a", False),  # resources are case-sensitive
        ("topic/a.b", "aXb", False),  # regex metacharacters are literal
        ("topic/a+b", "a+b", True),
    ],
)
def test_resource_wildcards(resource_pattern, topic, expected):
    p = policy(allow("iot:Publish", f"{ARN}:{resource_pattern}"))
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/{topic}", ctx()) is expected


def test_resource_of_another_account_or_region_does_not_match():
    p = policy(allow("iot:Publish", f"arn:aws:iot:us-east-1:{ACCOUNT}:topic/*"))
    assert not is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/a", ctx())


def test_explicit_deny_wins_over_allow_in_any_order_and_any_policy():
    allow_all = policy(allow("iot:*", "*"), name="allow-all")
    deny_secret = policy(deny("iot:Publish", f"{ARN}:topic/secret/*"), name="deny-secret")
    for order in ([allow_all, deny_secret], [deny_secret, allow_all]):
        decision = evaluate(order, IOT_PUBLISH, f"{ARN}:topic/secret/x", ctx())
        assert not decision.allowed
        assert "explicitly denied by policy 'deny-secret'" in decision.reason
        assert is_allowed(order, IOT_PUBLISH, f"{ARN}:topic/public/x", ctx())


def test_deny_of_specific_client_ids_with_thing_allow(  # the AWS connect-policy example
):
    p = policy(
        deny("iot:Connect", [f"{ARN}:client/client1", f"{ARN}:client/client2"]),
        allow(
            "iot:Connect",
            f"{ARN}:client/${{iot:Connection.Thing.ThingName}}",
            Condition={"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
        ),
    )
    assert is_allowed([p], IOT_CONNECT, f"{ARN}:client/dev", ctx("dev", thing="dev"))
    assert not is_allowed([p], IOT_CONNECT, f"{ARN}:client/client1", ctx("client1", thing="client1"))


def test_thing_policy_lets_the_attached_thing_use_its_own_topics_only():
    me = ctx("unit-0001", thing="unit-0001")
    assert is_allowed([THING_POLICY], IOT_CONNECT, me.client_arn(), me)
    assert is_allowed([THING_POLICY], IOT_PUBLISH, me.topic_arn("things/unit-0001/telemetry"), me)
    assert is_allowed([THING_POLICY], IOT_RECEIVE, me.topic_arn("things/unit-0001/cmd"), me)
    assert is_allowed([THING_POLICY], IOT_SUBSCRIBE, me.topicfilter_arn("things/unit-0001/#"), me)
    assert not is_allowed([THING_POLICY], IOT_PUBLISH, me.topic_arn("things/unit-0002/telemetry"), me)
    assert not is_allowed([THING_POLICY], IOT_SUBSCRIBE, me.topicfilter_arn("things/#"), me)


def test_thing_variables_do_not_resolve_without_an_attached_thing():
    # Client id of a thing that is not attached to the certificate: ThingName has no value and
    # IsAttached is false, so neither the Connect nor the topic statements can match.
    stranger = ctx("unit-0001", thing=None)
    decision = evaluate([THING_POLICY], IOT_CONNECT, stranger.client_arn(), stranger)
    assert not decision.allowed
    assert not is_allowed([THING_POLICY], IOT_PUBLISH, stranger.topic_arn("things/unit-0001/x"), stranger)


def test_is_attached_condition_alone_decides_connect():
    p = policy(allow("iot:Connect", "*", Condition={"Bool": {"iot:Connection.Thing.IsAttached": True}}))
    assert is_allowed([p], IOT_CONNECT, f"{ARN}:client/a", ctx("a", thing="a"))
    assert not is_allowed([p], IOT_CONNECT, f"{ARN}:client/a", ctx("a", thing=None))


def test_client_id_variable_and_literal_substitution():
    p = policy(allow("iot:Publish", f"{ARN}:topic/${{iot:ClientId}}/*"))
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/dev-1/up", ctx("dev-1"))
    assert not is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/dev-2/up", ctx("dev-1"))
    # A client id with wildcard characters is matched literally, not as a pattern.
    assert not is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/anything/up", ctx("*"))
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/*/up", ctx("*"))


def test_variables_are_literal_text_in_old_policy_versions():
    p = policy(allow("iot:Publish", f"{ARN}:topic/${{iot:ClientId}}"), version="2008-10-17")
    assert not is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/dev-1", ctx("dev-1"))
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/${{iot:ClientId}}", ctx("dev-1"))


def test_variable_names_are_case_insensitive_and_defaults_apply():
    p = policy(
        allow("iot:Publish", f"{ARN}:topic/${{IOT:clientid}}/a"),
        allow("iot:Subscribe", f"{ARN}:topicfilter/${{iot:Connection.Thing.ThingName, 'none'}}/#"),
    )
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/dev/a", ctx("dev"))
    assert is_allowed([p], IOT_SUBSCRIBE, f"{ARN}:topicfilter/none/#", ctx("dev", thing=None))


def test_escaped_special_characters():
    p = policy(allow("iot:Publish", f"{ARN}:topic/literal${{*}}star"))
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/literal*star", ctx())
    assert not is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/literalXstar", ctx())


@pytest.mark.parametrize(
    ("operator", "value", "client_id", "expected"),
    [
        ("StringEquals", "dev-1", "dev-1", True),
        ("StringEquals", ["a", "dev-1"], "dev-1", True),  # values are OR-ed
        ("StringEquals", "DEV-1", "dev-1", False),
        ("StringEqualsIgnoreCase", "DEV-1", "dev-1", True),
        ("StringNotEquals", ["a", "b"], "dev-1", True),
        ("StringNotEquals", ["a", "dev-1"], "dev-1", False),
        ("StringNotEqualsIgnoreCase", "DEV-1", "dev-1", False),
        ("StringLike", "dev-*", "dev-1", True),
        ("StringLike", "dev-?", "dev-10", False),
        ("StringNotLike", "test-*", "dev-1", True),
        ("StringEquals", "${iot:Connection.Thing.ThingName}", "dev-1", True),
    ],
)
def test_string_conditions(operator, value, client_id, expected):
    p = policy(allow("iot:Connect", "*", Condition={operator: {"iot:ClientId": value}}))
    assert (
        is_allowed([p], IOT_CONNECT, f"{ARN}:client/{client_id}", ctx(client_id, thing=client_id)) is expected
    )


def test_conditions_are_anded_and_missing_keys_fail_unless_if_exists():
    both = policy(
        allow(
            "iot:Connect",
            "*",
            Condition={
                "StringLike": {"iot:ClientId": "dev-*"},
                "Bool": {"iot:Connection.Thing.IsAttached": "true"},
            },
        )
    )
    assert is_allowed([both], IOT_CONNECT, f"{ARN}:client/dev-1", ctx("dev-1", thing="dev-1"))
    assert not is_allowed([both], IOT_CONNECT, f"{ARN}:client/dev-1", ctx("dev-1"))
    assert not is_allowed([both], IOT_CONNECT, f"{ARN}:client/x", ctx("x", thing="x"))

    missing = {"StringEquals": {"iot:Connection.Thing.ThingName": "dev-1"}}
    assert not is_allowed(
        [policy(allow("iot:Connect", "*", Condition=missing))], IOT_CONNECT, "r", ctx("dev-1")
    )
    if_exists = {"StringEqualsIfExists": {"iot:Connection.Thing.ThingName": "dev-1"}}
    assert is_allowed(
        [policy(allow("iot:Connect", "*", Condition=if_exists))], IOT_CONNECT, "r", ctx("dev-1")
    )


def test_null_condition():
    absent = policy(allow("iot:Connect", "*", Condition={"Null": {"iot:Connection.Thing.ThingName": "true"}}))
    assert is_allowed([absent], IOT_CONNECT, "r", ctx("a"))
    assert not is_allowed([absent], IOT_CONNECT, "r", ctx("a", thing="a"))


def test_conditional_deny_only_denies_when_its_condition_holds():
    p = policy(
        allow("iot:*", "*"),
        deny("iot:Connect", "*", Condition={"Bool": {"iot:Connection.Thing.IsAttached": "false"}}),
    )
    assert is_allowed([p], IOT_CONNECT, f"{ARN}:client/a", ctx("a", thing="a"))
    assert not is_allowed([p], IOT_CONNECT, f"{ARN}:client/a", ctx("a"))


def test_unknown_condition_operator_makes_the_statement_not_apply():
    p = policy(allow("iot:Connect", "*", Condition={"NumericEquals": {"iot:ClientId": "1"}}))
    assert not is_allowed([p], IOT_CONNECT, "r", ctx("1"))


def test_not_action_and_not_resource():
    p = policy(
        {"Effect": "Allow", "NotAction": "iot:Publish", "Resource": "*"},
        {"Effect": "Allow", "Action": "iot:Publish", "NotResource": f"{ARN}:topic/private/*"},
    )
    assert is_allowed([p], IOT_SUBSCRIBE, f"{ARN}:topicfilter/private/#", ctx())
    assert is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/public/x", ctx())
    assert not is_allowed([p], IOT_PUBLISH, f"{ARN}:topic/private/x", ctx())


def test_single_statement_object_and_single_string_resource_lists():
    p = Policy.from_document(
        "one",
        {
            "Version": "2012-10-17",
            "Statement": {"Effect": "Allow", "Action": ["iot:Connect"], "Resource": ["*"]},
        },
    )
    assert is_allowed([p], IOT_CONNECT, "anything", ctx())


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        json.dumps({"Version": "2012-10-17"}),
        json.dumps({"Version": "2012-10-17", "Statement": []}),
        json.dumps({"Statement": [{"Effect": "Maybe", "Action": "iot:*", "Resource": "*"}]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Action": "iot:*"}]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Action": 5, "Resource": "*"}]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*", "Condition": []}]}),
    ],
)
def test_invalid_documents_are_rejected(document):
    with pytest.raises(PolicyError):
        Policy.from_document("bad", document)
