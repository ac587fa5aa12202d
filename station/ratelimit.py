"""The shared rate budget: client-side token buckets that keep a station under AWS IoT's per-API quotas.

AWS IoT limits each control-plane API per account and region (RegisterCertificateWithoutCA: 10 TPS by
default). Every slot of a station — and every `Registry` of the same account and region in this process —
draws from one `RateBudget`, so N slots together never send faster than the quota, and throttling becomes a
short wait instead of an error the operator sees.

Each API has a GCRA bucket (the "virtual scheduling" form of a token bucket): a caller reserves the next
free send time under a lock and then sleeps outside the lock until it. Reservations are first come, first
served, so no slot starves. `burst` is how many calls may go back to back after an idle spell; the default,
1, spaces calls evenly, which keeps every one-second window at or under the quota.

This module must not import boto3 or anything of the station but its error types; it knows API names only
as strings (botocore operation names such as "RegisterCertificateWithoutCA").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from station.errors import StationFault
from station.i18n import _

# AWS IoT's default per-account, per-region quotas (TPS) for the calls the station makes. The first block is
# from AWS's quota table (AWS IoT Core's service quotas page); the second block is not documented there and
# uses conservative values (unverified: confirm in Service Quotas and override per target when needed).
DEFAULT_QUOTAS: dict[str, float] = {
    "RegisterCertificateWithoutCA": 10.0,
    "RegisterCertificate": 10.0,
    "UpdateCertificate": 10.0,
    "DeleteCertificate": 10.0,
    "DescribeCertificate": 10.0,
    "ListCertificates": 10.0,
    "AttachPolicy": 15.0,
    "CreateThing": 100.0,
    "AttachThingPrincipal": 100.0,
    # Unverified defaults.
    "DetachPolicy": 15.0,
    "DetachThingPrincipal": 100.0,
    "ListAttachedPolicies": 15.0,
    "ListPrincipalThings": 10.0,
    "DescribeThing": 100.0,
    "DeleteThing": 15.0,
    "GetPolicy": 15.0,
    "CreatePolicy": 10.0,
    "DescribeEndpoint": 10.0,
    "AddThingToThingGroup": 60.0,
    "DescribeThingType": 10.0,
    "DescribeThingGroup": 10.0,
}
# Any API not in the table gets this rate: low enough for every IoT control-plane default.
DEFAULT_TPS = 10.0
# A caller that would have to queue longer than this is told that AWS is throttling (a StationFault).
DEFAULT_MAX_WAIT_S = 60.0


@dataclass
class ApiStats:
    """What one API's bucket has done: calls admitted and the total time callers waited for a slot."""

    calls: int = 0
    waited_s: float = 0.0


class _Bucket:
    """One API's GCRA state. `tat` is the theoretical arrival time of the next conforming call."""

    __slots__ = ("burst", "interval", "stats", "tat")

    def __init__(self, tps: float, burst: int) -> None:
        self.interval = 1.0 / tps
        self.burst = burst
        self.tat = 0.0
        self.stats = ApiStats()


class RateBudget:
    """Thread-safe token buckets, one per API name, at the given quotas (TPS).

    `acquire(api)` blocks until the call may be sent and returns how long it waited. A reservation that
    would wait longer than `max_wait_s` is not taken and raises `StationFault` ("AWS is throttling …").
    """

    def __init__(
        self,
        quotas: Mapping[str, float] | None = None,
        *,
        default_tps: float = DEFAULT_TPS,
        burst: int = 1,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if default_tps <= 0 or burst < 1 or max_wait_s < 0:
            raise ValueError("default_tps must be > 0, burst >= 1 and max_wait_s >= 0")
        self._quotas = dict(DEFAULT_QUOTAS)
        self._default_tps = default_tps
        self._burst = burst
        self.max_wait_s = max_wait_s
        self.label = label
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        if quotas:
            self.set_quotas(quotas)

    def rate(self, api: str) -> float:
        """The quota (TPS) this budget holds `api` to."""
        with self._lock:
            return self._quotas.get(api, self._default_tps)

    def set_quotas(self, quotas: Mapping[str, float]) -> None:
        """Change some APIs' quotas (e.g. after a quota increase in Service Quotas); others keep theirs."""
        check_quotas(quotas)
        with self._lock:
            for api, tps in quotas.items():
                self._quotas[api] = float(tps)
                bucket = self._buckets.get(api)
                if bucket is not None:
                    bucket.interval = 1.0 / float(tps)

    def stats(self) -> dict[str, ApiStats]:
        with self._lock:
            return {api: ApiStats(b.stats.calls, b.stats.waited_s) for api, b in self._buckets.items()}

    def acquire(self, api: str) -> float:
        """Wait for `api`'s next slot; returns the seconds waited. Raises StationFault past `max_wait_s`."""
        with self._lock:
            bucket = self._buckets.get(api)
            if bucket is None:
                bucket = _Bucket(self._quotas.get(api, self._default_tps), self._burst)
                self._buckets[api] = bucket
            now = self._clock()
            tat = max(bucket.tat, now)
            start = max(now, tat - (bucket.burst - 1) * bucket.interval)
            wait = start - now
            if wait > self.max_wait_s:
                raise throttled_fault(self.label, api, self.max_wait_s)
            bucket.tat = tat + bucket.interval
            bucket.stats.calls += 1
            bucket.stats.waited_s += wait
        if wait > 0:
            # The wait is the point: this slot's call must not go out before its reserved time.
            self._sleep(wait)
        return wait


def check_quotas(quotas: Mapping[str, float]) -> None:
    """ValueError unless every quota is a positive number of calls per second."""
    for api, tps in quotas.items():
        if not tps or tps <= 0:
            raise ValueError(f"quota for {api} must be a positive number of calls per second")


def throttled_fault(registry: str, api: str, waited_s: float) -> StationFault:
    """What the operator sees when throttling outlasts the bound: a station problem, not a bad unit."""
    where = _(" for {registry}").format(registry=registry) if registry else ""
    return StationFault(
        _("AWS is throttling"),
        _("AWS is throttling {api}{where}: still refused after waiting {waited_s:.0f} s.").format(
            api=api, where=where, waited_s=waited_s
        ),
        _(
            "Call a technician: fewer slots or stations on this account and region, or a quota increase "
            "in Service Quotas, is needed. The unit itself is fine; scan it again later."
        ),
    )


class Budget(Protocol):
    """What a registry needs of a rate budget: this process's `RateBudget` or a factory-wide one."""

    label: str
    max_wait_s: float

    def acquire(self, api: str) -> float: ...
    def rate(self, api: str) -> float: ...
    def set_quotas(self, quotas: Mapping[str, float]) -> None: ...
    def stats(self) -> dict[str, ApiStats]: ...


BudgetFactory = Callable[[tuple[str, str]], Budget]

_shared: dict[tuple[str, str], Budget] = {}
_shared_lock = threading.Lock()
_factory: BudgetFactory | None = None


def use_budget_factory(factory: BudgetFactory | None) -> None:
    """Make the budgets of (account, region)s not yet in use with `factory` (a shared store), or, with None,
    with this process's own `RateBudget`. The wiring calls it once, before the first registry is made."""
    global _factory
    with _shared_lock:
        _factory = factory


def shared_budget_for(key: tuple[str, str], quotas: Mapping[str, float] | None = None) -> Budget:
    """The one budget of an (account, region) in this process; `quotas` updates it when given."""
    with _shared_lock:
        budget = _shared.get(key)
        if budget is None:
            budget = _factory(key) if _factory is not None else RateBudget(label=f"{key[0]}/{key[1]}")
            _shared[key] = budget
    if quotas:
        budget.set_quotas(quotas)
    return budget
