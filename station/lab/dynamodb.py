"""The lab's DynamoDB: moto's, made to keep its speed as a table grows, optionally in a process of its own.

moto's DynamoDB answers like DynamoDB (the same conditions, the same `TransactionCanceledException` reasons),
but two things in it make a shared ledger slow and wrong under several writers:
- `TransactWriteItems` deep-copies every table a transaction touches, once per item of the transaction, to roll
  back on a refusal: the cost of each transaction grows with the whole table (thousands of items after a few
  hundred units). `install()` replaces it with one that keeps a copy of only the items the transaction touches
  and puts exactly those back on a refusal: same checks in the same order, same errors, same rollback.
- moto's DynamoDB is not thread-safe, and its rollback reinstates a whole table: a transaction refused in one
  request thread could undo a write another thread committed meanwhile. The lab therefore answers one DynamoDB
  request at a time (`REQUEST_LOCK`, taken by the control plane around every DynamoDB request); DynamoDB itself
  serialises writes per item, so a station sees nothing it could not see from DynamoDB.

`DynamoServer` runs a lab control plane in a child process (`main()` here) whose only job
is DynamoDB, so the ledger and budget traffic of many stations does not share a GIL with the lab's IoT control
plane, TLS data plane and MQTT broker. `station lab` names it in lab.json (`dynamodb.endpoint_url`). The child
exits when its standard input closes, so it never outlives the lab that started it.

This module must not change what a request answers: a faster path is taken only where it gives the same answer
(tables without streams); anything else goes to moto's own code.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

# The child's program (not `-m`: the package imports this module before runpy would run it).
_CHILD = "import sys; from station.lab.dynamodb import main; sys.exit(main(sys.argv[1:]))"
# One DynamoDB request at a time (moto's DynamoDB is not thread-safe); re-entrant: the Query patch takes it too,
# for moto used in-process (mock_aws) in a process where a control plane installed the patches.
REQUEST_LOCK = threading.RLock()
_installed = False
# Set (to anything) to serve moto's DynamoDB as it is, to measure what `install()` changes (benchmarks only).
PLAIN_ENV = "STATION_LAB_MOTO_PLAIN"


def install() -> None:
    """Make moto's DynamoDB cost what a request touches (once per process): transactions that back up only
    their items, table Queries that read only their partition, and moto's per-request directory listing
    (which service is this?) done once. Answers are unchanged."""
    global _installed
    if _installed or os.environ.get(PLAIN_ENV):
        return
    import moto.backends
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    # moto lists its package directory (and stats every entry) on every request to route it; it never changes.
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: iter(modules)

    query = Table.query

    def partition_query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        # moto sorts the whole table to answer a Query on the table's own key, then keeps one partition: give
        # it that partition only (same items, same order).
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name or hash_key is None or not self.range_key_attr:
            return query(self, hash_key, *args, **kwargs)
        with REQUEST_LOCK:
            partition = list(self.items[hash_key].values()) if hash_key in self.items else []
            self.all_items = lambda: partition
            try:
                return query(self, hash_key, *args, **kwargs)
            finally:
                del self.all_items

    Table.query = partition_query  # type: ignore[method-assign]

    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        tables = {next(iter(item.values())).get("TableName") for item in transact_items}
        if any(getattr(self.tables.get(name), "stream_shard", None) is not None for name in tables):
            return original(self, transact_items)  # streams would see the rollback: moto's own path
        return _transact_write_items(self, transact_items)

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _installed = True


def _transact_write_items(backend: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto 5's `transact_write_items`, step for step, with a per-item backup instead of a per-table one."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models.dynamo_type import DynamoType

    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    backups: list[tuple[Any, Any, Any, Any]] = []  # (table, hash, range, the item before or None)

    def backup(table_name: str, key: dict[str, Any]) -> None:
        table = backend.get_table(table_name)
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        before = table.get_item(hash_value, range_value)
        backups.append((table, hash_value, range_value, copy.deepcopy(before)))

    def rollback() -> None:
        for table, hash_value, range_value, before in reversed(backups):
            if range_value is not None:
                if before is None:
                    table.items[hash_value].pop(range_value, None)
                else:
                    table.items[hash_value][range_value] = before
            elif before is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = before

    target_items: set[tuple[str, str]] = set()

    def check_unicity(table_name: str, key: dict[str, Any]) -> None:
        item = (str(table_name), str(dict(sorted(key.items()))))
        if item in target_items:
            raise MultipleTransactionsException()
        target_items.add(item)

    errors: list[tuple[Any, Any, Any]] = []
    for item in transact_items:
        original_item: dict[str, Any] | None = None
        if len(list(item.keys())) > 1:
            raise TransactWriteSingleOpException
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            condition_expression = op.get("ConditionExpression")
            names = op.get("ExpressionAttributeNames")
            values = op.get("ExpressionAttributeValues")
            if op_type == "Put":
                attrs = op["Item"]
                table = backend.get_table(table_name)
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            check_unicity(table_name, key)
            current = backend.get_item(table_name, key)
            if condition_expression is not None:
                condition_op = get_filter_expression(condition_expression, names, values)
                if not condition_op.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)
            if op_type != "ConditionCheck":
                backup(table_name, key)
            if op_type == "Put":
                backend.put_item(
                    table_name,
                    op["Item"],
                    condition_expression=condition_expression,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif op_type == "Delete":
                backend.delete_item(
                    table_name,
                    key,
                    condition_expression=condition_expression,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif op_type == "Update":
                backend.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    condition_expression=condition_expression,
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            rollback()
            raise
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))
        except Exception as e:  # moto reports any other failure as the item's reason, so do we
            errors.append((type(e).__name__, str(e), original_item))
    if any(code is not None for code, _, _ in errors):
        rollback()
        raise TransactionCanceledException(errors)


class DynamoServer:
    """The lab's DynamoDB in a child process; a context manager. `endpoint_url` once started."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.endpoint_url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> DynamoServer:
        from station.lab.control import LabError

        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, self.host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "MOTO_ACCOUNT_ID"},
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # the child prints its endpoint once it listens
        if not line:
            self.stop()
            raise LabError(
                "Lab DynamoDB did not start",
                "The lab's DynamoDB process exited before it listened.",
                "Run `python -c 'from station.lab.dynamodb import main; main([])'` to see why.",
            )
        self.endpoint_url = json.loads(line)["endpoint_url"]
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the DynamoDB process has used so far (Linux /proc; 0.0 elsewhere)."""
        if self._process is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self._process.pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the child's signal to stop
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> DynamoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """Serve the lab's DynamoDB until standard input closes; print {"endpoint_url": …} once listening."""
    from station.lab.control import ControlPlane

    plane = ControlPlane(host=argv[0] if argv else "127.0.0.1", throttling=False).start()
    print(json.dumps({"endpoint_url": plane.endpoint_url}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # EOF: the lab stopped (or died)
    plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
