"""The lab's DynamoDB in its own process: a refused transaction leaves exactly what was there (only the touched
items are put back, nothing else is undone), with DynamoDB's cancellation reasons; the process stops with the
lab."""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest

pytestmark = pytest.mark.lab


def _client(endpoint: str) -> Any:
    import boto3

    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY

    return boto3.client(
        "dynamodb",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id=LAB_ACCESS_KEY_ID,
        aws_secret_access_key=LAB_SECRET_ACCESS_KEY,
    )


def test_a_refused_transaction_puts_back_what_it_touched_and_nothing_else() -> None:
    from station.lab.dynamodb import DynamoServer

    with DynamoServer() as server:
        pid = server.pid
        db = _client(server.endpoint_url)
        table = f"t-{secrets.token_hex(3)}"
        db.create_table(
            TableName=table,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        key = {"pk": {"S": "head"}, "sk": {"S": "-"}}
        db.put_item(TableName=table, Item={**key, "seq": {"N": "1"}})
        db.put_item(TableName=table, Item={"pk": {"S": "other"}, "sk": {"S": "x"}, "v": {"S": "kept"}})
        with pytest.raises(db.exceptions.TransactionCanceledException) as refused:
            db.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": table, "Item": {"pk": {"S": "chain"}, "sk": {"S": "2"}}}},
                    {
                        "Update": {
                            "TableName": table,
                            "Key": key,
                            "UpdateExpression": "SET seq = :new",
                            "ExpressionAttributeValues": {":new": {"N": "2"}},
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": table,
                            "Key": {"pk": {"S": "other"}, "sk": {"S": "x"}},
                            "ConditionExpression": "v = :not",
                            "ExpressionAttributeValues": {":not": {"S": "changed"}},
                        }
                    },
                ]
            )
        reasons = [r["Code"] for r in refused.value.response["CancellationReasons"]]
        assert reasons == ["None", "None", "ConditionalCheckFailed"]
        # The put is gone, the update undone, the untouched item as it was.
        assert "Item" not in db.get_item(TableName=table, Key={"pk": {"S": "chain"}, "sk": {"S": "2"}})
        assert db.get_item(TableName=table, Key=key)["Item"]["seq"] == {"N": "1"}
        items = db.scan(TableName=table)["Items"]
        assert sorted(i["pk"]["S"] for i in items) == ["head", "other"]
        # A transaction that passes its checks commits all of it.
        db.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, "Item": {"pk": {"S": "chain"}, "sk": {"S": "2"}}}},
                {
                    "Update": {
                        "TableName": table,
                        "Key": key,
                        "UpdateExpression": "SET seq = :new",
                        "ConditionExpression": "seq = :old",
                        "ExpressionAttributeValues": {":new": {"N": "2"}, ":old": {"N": "1"}},
                    }
                },
            ]
        )
        assert db.get_item(TableName=table, Key=key)["Item"]["seq"] == {"N": "2"}
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped with the lab, reaped
