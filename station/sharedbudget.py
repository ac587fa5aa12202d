"""One AWS rate budget per account and region for a whole factory: GCRA slots leased from a shared store.

`RateBudget` (station/ratelimit.py) keeps one station under AWS IoT's per-API quotas; several stations on the
same account and region each keep their own and together overrun the quota. `SharedRateBudget` keeps the
same GCRA schedule, but its state — the theoretical arrival time (`tat`) of each API's next call — lives in
a `BudgetStore` every station reaches (DynamoDB in a factory). A station leases a run of evenly spaced send
times with one conditional update, hands them to its slots in order, and gives back what it did not use
(when nobody leased after it). With one station the schedule is exactly the in-process budget's.

Clock: the send times are wall-clock epoch seconds, so stations must agree on the time (NTP); a station whose
clock runs ahead of the others' sends early by that much. When the store is slow or unreachable the budget
falls back to a local share of the quota (`fallback_share`, e.g. 1/number of stations) and tries the store
again after `store_retry_s`, so a DynamoDB outage slows a line but never stops it or overruns the quota.

It must not import boto3 at module level (the DynamoDB store imports it when made) nor know the station's
registries: it hands out send times, nothing else.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from station.errors import InputError, StationFault
from station.i18n import _
from station.ratelimit import (
    DEFAULT_MAX_WAIT_S,
    DEFAULT_QUOTAS,
    DEFAULT_TPS,
    ApiStats,
    RateBudget,
    check_quotas,
    throttled_fault,
)

log = logging.getLogger(__name__)

DEFAULT_LEASE_MAX = 8  # send times leased at once: at most one per slot of a station
DEFAULT_STORE_TRIES = 8
DEFAULT_STORE_RETRY_S = 10.0


class BudgetStoreUnavailable(StationFault):
    """The shared budget's store did not answer (or stayed contended) within its bounds."""


@dataclass(frozen=True)
class Lease:
    """`count` send times from `start`, `interval` apart; `version` is the store's version after the lease."""

    start: float
    count: int
    interval: float
    version: int


class BudgetStore(Protocol):
    def lease(self, key: str, count: int, interval: float, now: float) -> Lease:
        """Atomically take `count` send times at `interval` from max(stored tat, now); advance tat past them."""
        ...

    def give_back(self, key: str, lease: Lease, first_unused: float) -> bool:
        """Move tat back to `first_unused` if nobody leased after `lease`; True when it did."""
        ...


class MemoryBudgetStore:
    """A store in this process's memory: the same rule as DynamoDB's, for tests and a single station."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[float, int]] = {}

    def lease(self, key: str, count: int, interval: float, now: float) -> Lease:
        with self._lock:
            tat, version = self._items.get(key, (0.0, 0))
            start = max(tat, now)
            self._items[key] = (start + count * interval, version + 1)
            return Lease(start, count, interval, version + 1)

    def give_back(self, key: str, lease: Lease, first_unused: float) -> bool:
        with self._lock:
            _, version = self._items.get(key, (0.0, 0))
            if version != lease.version:
                return False
            self._items[key] = (first_unused, version + 1)
            return True


class DynamoBudgetStore:
    """Send-time leases in one DynamoDB table (partition key `pk`, string): one item per key, updated only
    under a condition on its version, so concurrent stations never take the same send time."""

    def __init__(self, client: Any, table: str, *, tries: int = DEFAULT_STORE_TRIES) -> None:
        self._client = client
        self._table = table
        self._tries = tries

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> DynamoBudgetStore:
        """`dynamodb://TABLE?region=R[&endpoint_url=URL][&profile=P]`; makes the table when missing."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        table = parts.netloc or parts.path.lstrip("/")
        if parts.scheme != "dynamodb" or not table or not query.get("region"):
            raise InputError(
                _("Budget store"),
                _("{url!r} is not a budget store address.").format(url=url),
                _('Use [budget] store = "dynamodb://TABLE?region=REGION" in station.toml.'),
            )
        import boto3
        from botocore.config import Config

        session = boto3.Session(profile_name=query.get("profile"), region_name=query["region"])
        client = session.client(
            "dynamodb",
            endpoint_url=query.get("endpoint_url"),
            config=Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 1}),
        )
        store = cls(client, table)
        if create:
            store.ensure_table()
        return store

    def ensure_table(self) -> None:
        errors = self._client.exceptions
        try:
            self._client.create_table(
                TableName=self._table,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            self._client.get_waiter("table_exists").wait(TableName=self._table, WaiterConfig={"Delay": 1})
        except errors.ResourceInUseException:
            pass

    def _read(self, key: str) -> tuple[float, int]:
        item = self._client.get_item(TableName=self._table, Key={"pk": {"S": key}}, ConsistentRead=True).get(
            "Item"
        )
        if not item:
            return 0.0, 0
        return float(item["tat"]["N"]), int(item["v"]["N"])

    def _write(self, key: str, tat: float, version: int, expected: int) -> bool:
        condition = "attribute_not_exists(pk)" if expected == 0 else "v = :old"
        values: dict[str, Any] = {":tat": {"N": _number(tat)}, ":v": {"N": str(version)}}
        if expected:
            values[":old"] = {"N": str(expected)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": key}},
                UpdateExpression="SET tat = :tat, v = :v",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def lease(self, key: str, count: int, interval: float, now: float) -> Lease:
        for attempt in range(self._tries):
            tat, version = self._read(key)
            start = max(tat, now)
            if self._write(key, start + count * interval, version + 1, version):
                return Lease(start, count, interval, version + 1)
            # Another station leased in between: read again after a short, random pause.
            time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise BudgetStoreUnavailable(
            _("Rate budget contended"),
            _("The shared rate budget item {key} stayed contended for {tries} tries.").format(
                key=key, tries=self._tries
            ),
            _("The line continues on its local share; call a technician if this repeats."),
        )

    def give_back(self, key: str, lease: Lease, first_unused: float) -> bool:
        return self._write(key, first_unused, lease.version + 1, lease.version)


def _number(value: float) -> str:
    return str(Decimal(repr(value)))


class _Api:
    __slots__ = ("count_lock", "fallback_until", "lease", "lock", "slots", "stats", "waiting")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Counting callers must not wait behind a lease in progress: that count sizes the next lease.
        self.count_lock = threading.Lock()
        self.slots: deque[float] = deque()
        self.lease: Lease | None = None
        self.waiting = 0
        self.stats = ApiStats()
        self.fallback_until = 0.0


class SharedRateBudget:
    """`RateBudget`'s interface (`acquire`, `rate`, `set_quotas`, `stats`) over a shared `BudgetStore`.

    `key` names the account and region (e.g. `111122223333/eu-west-1`); each API's state is the store item
    `<key>/<api>`. `fallback_share` is the part of the quota this station uses alone while the store is out.
    """

    def __init__(
        self,
        store: BudgetStore,
        key: str,
        quotas: Mapping[str, float] | None = None,
        *,
        default_tps: float = DEFAULT_TPS,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        fallback_share: float = 0.25,
        lease_max: int = DEFAULT_LEASE_MAX,
        store_retry_s: float = DEFAULT_STORE_RETRY_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < fallback_share <= 1 or lease_max < 1:
            raise ValueError("fallback_share must be in (0, 1] and lease_max >= 1")
        self._store = store
        self.key = key
        self.label = key
        self.max_wait_s = max_wait_s
        self._quotas = dict(DEFAULT_QUOTAS)
        self._default_tps = default_tps
        self._fallback_share = fallback_share
        self._lease_max = lease_max
        self._store_retry_s = store_retry_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._apis: dict[str, _Api] = {}
        self._fallback = RateBudget(
            {api: tps * fallback_share for api, tps in self._quotas.items()},
            default_tps=default_tps * fallback_share,
            max_wait_s=max_wait_s,
            label=key,
        )
        self._rtt = 0.0  # smoothed round trip of a lease, seconds
        self.wasted = 0  # leased send times that passed unused (counted, not given back)
        if quotas:
            self.set_quotas(quotas)

    def rate(self, api: str) -> float:
        with self._lock:
            return self._quotas.get(api, self._default_tps)

    def set_quotas(self, quotas: Mapping[str, float]) -> None:
        check_quotas(quotas)
        with self._lock:
            self._quotas.update({api: float(tps) for api, tps in quotas.items()})
        self._fallback.set_quotas({api: float(tps) * self._fallback_share for api, tps in quotas.items()})

    def stats(self) -> dict[str, ApiStats]:
        with self._lock:
            apis = dict(self._apis)
        merged = {api: ApiStats(state.stats.calls, state.stats.waited_s) for api, state in apis.items()}
        for api, extra in self._fallback.stats().items():
            merged.setdefault(api, ApiStats())
            merged[api].calls += extra.calls
            merged[api].waited_s += extra.waited_s
        return merged

    def _api(self, api: str) -> _Api:
        with self._lock:
            state = self._apis.get(api)
            if state is None:
                state = self._apis[api] = _Api()
            return state

    def acquire(self, api: str) -> float:
        """Wait for `api`'s next send time; returns the seconds waited (StationFault past `max_wait_s`)."""
        state = self._api(api)
        interval = 1.0 / self.rate(api)
        with state.count_lock:
            state.waiting += 1
        try:
            with state.lock:
                now = self._clock()
                while state.slots and state.slots[0] < now - interval:
                    state.slots.popleft()  # its moment passed while nobody needed it
                    self.wasted += 1
                if not state.slots and now >= state.fallback_until:
                    count = min(self._lease_max, max(1, state.waiting))
                    try:
                        # Ask for send times that start after the lease's own round trip: a time that has
                        # passed by the time the answer arrives would be sent late, bunched with the next.
                        lease = self._store.lease(f"{self.key}/{api}", count, interval, now + self._rtt)
                        self._rtt = 0.8 * self._rtt + 0.2 * (self._clock() - now)
                    except Exception as exc:
                        state.fallback_until = now + self._store_retry_s
                        log.warning(
                            "shared rate budget %s: store unavailable (%s); local share for %.0f s",
                            self.key,
                            type(exc).__name__,
                            self._store_retry_s,
                        )
                    else:
                        state.lease = lease
                        state.slots.extend(lease.start + i * interval for i in range(lease.count))
                slot = state.slots.popleft() if state.slots else None
                if slot is not None:
                    wait = max(0.0, slot - now)
                    if wait > self.max_wait_s:
                        raise throttled_fault(self.key, api, self.max_wait_s)
                    state.stats.calls += 1
                    state.stats.waited_s += wait
        finally:
            with state.count_lock:
                state.waiting -= 1
        if slot is None:
            return self._fallback.acquire(api)
        if wait > 0:
            self._sleep(wait)
        return wait

    def release(self) -> int:
        """Give back leased send times not used yet (a station stopping, or going idle); how many."""
        returned = 0
        with self._lock:
            apis = list(self._apis.items())
        for api, state in apis:
            with state.lock:
                if not state.slots or state.lease is None:
                    continue
                first = state.slots[0]
                try:
                    given = self._store.give_back(f"{self.key}/{api}", state.lease, first)
                except Exception:
                    given = False
                if given:
                    returned += len(state.slots)
                    state.slots.clear()
        return returned


def configure(settings: Any) -> None:
    """Wire `[budget]` (a `station.config.BudgetSettings`, or None): every (account, region) budget made from
    now on in this process is leased from the shared store."""
    from station.ratelimit import use_budget_factory

    if settings is None:
        use_budget_factory(None)
        return
    store = DynamoBudgetStore.from_url(settings.store)

    def factory(key: tuple[str, str]) -> SharedRateBudget:
        return SharedRateBudget(store, f"{key[0]}/{key[1]}", fallback_share=settings.fallback_share)

    use_budget_factory(factory)
