"""The factory-wide rate budget: several stations share one AWS quota through DynamoDB (the lab's, a real moto
server reached over HTTP by boto3), each leasing send times; together they stay at or under the quota and use
most of it; a store that is out makes a station fall back to its local share."""

from __future__ import annotations

import itertools
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from station.sharedbudget import DynamoBudgetStore, MemoryBudgetStore, SharedRateBudget

API = "RegisterCertificateWithoutCA"
QUOTA = 10.0


@pytest.fixture(scope="module")
def plane() -> Iterator[Any]:
    from station.lab.control import ControlPlane

    with ControlPlane(throttling=False) as control:
        yield control


@pytest.fixture(autouse=True)
def lab_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # A station reaches the lab's DynamoDB with the lab's static keys, as it would reach AWS with its own.
    from station.lab.control import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LAB_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LAB_SECRET_ACCESS_KEY)


def store_url(plane: Any, table: str) -> str:
    return f"dynamodb://{table}?region=eu-west-1&endpoint_url={plane.endpoint_url}"


def run_stations(budgets: list[SharedRateBudget], threads_each: int, seconds: float) -> list[float]:
    """Every station's slots call acquire() as fast as they can for `seconds`; the send times admitted."""
    sent: list[float] = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def slot(budget: SharedRateBudget) -> None:
        while time.time() < stop:
            budget.acquire(API)
            with lock:
                sent.append(time.time())

    workers = [threading.Thread(target=slot, args=(b,)) for b in budgets for _ in range(threads_each)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    return sorted(sent)


def busiest_second(times: list[float]) -> int:
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0 + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


class Recording:
    """A store that keeps every lease it hands out: the send schedule the stations were given."""

    def __init__(self, store: Any, leases: list[Any]) -> None:
        self.store = store
        self.leases = leases

    def lease(self, key: str, count: int, interval: float, now: float) -> Any:
        lease = self.store.lease(key, count, interval, now)
        self.leases.append(lease)
        return lease

    def give_back(self, key: str, lease: Any, first_unused: float) -> bool:
        return bool(self.store.give_back(key, lease, first_unused))


@pytest.mark.lab
def test_four_stations_share_one_quota_through_dynamodb(plane: Any) -> None:
    leases: list[Any] = []
    budgets = [
        SharedRateBudget(
            Recording(DynamoBudgetStore.from_url(store_url(plane, "budget-a")), leases),
            "111122223333/eu-west-1",
        )
        for _ in range(4)
    ]
    seconds = 4.0
    sent = run_stations(budgets, threads_each=4, seconds=seconds)
    steady = [t for t in sent if sent[0] + 0.5 <= t <= sent[0] + seconds - 0.5]
    # The schedule: no two send times of any station closer than the quota's interval...
    schedule = sorted(lease.start + i * lease.interval for lease in leases for i in range(lease.count))
    gaps = [b - a for a, b in itertools.pairwise(schedule)]
    assert min(gaps) >= 1 / QUOTA - 1e-6
    # ...and what was really sent stays at the quota too. The slack of two sends covers late thread wake-ups:
    # here the lab's moto server shares this process (and its GIL) with the sixteen sending threads.
    assert busiest_second(sent) <= QUOTA + 2
    # ...and most of it used: ≥ 90 % in the steady part of the run.
    assert len(steady) >= 0.9 * QUOTA * (seconds - 1.0)
    # Every station got a share (nobody starves).
    assert all(b.stats()[API].calls >= 3 for b in budgets)


def test_one_station_keeps_the_in_process_spacing() -> None:
    fake_now = [1000.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        fake_now[0] += s

    budget = SharedRateBudget(MemoryBudgetStore(), "k", clock=lambda: fake_now[0], sleep=sleep)
    waits = [budget.acquire(API) for _ in range(5)]
    assert waits[0] == 0.0
    assert waits[1:] == pytest.approx([0.1] * 4)


def test_send_times_given_back_are_taken_by_the_next_station() -> None:
    store = MemoryBudgetStore()
    now = [500.0]
    first = SharedRateBudget(store, "k", lease_max=8, clock=lambda: now[0], sleep=lambda s: None)
    # Lease a run of 8 by having 8 callers waiting; use one, keep 7.
    state = first._api(API)
    state.waiting = 7
    first.acquire(API)
    assert len(state.slots) == 7
    assert first.release() == 7
    second = SharedRateBudget(store, "k", clock=lambda: now[0], sleep=lambda s: None)
    assert second.acquire(API) == pytest.approx(0.1)  # right after the one send the first station made


def test_an_unreachable_store_falls_back_to_the_local_share() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = DynamoBudgetStore.from_url(
        f"dynamodb://t?region=eu-west-1&endpoint_url=http://127.0.0.1:{port}", create=False
    )
    budget = SharedRateBudget(store, "k", fallback_share=0.5, store_retry_s=60)
    started = time.monotonic()
    for _ in range(4):
        budget.acquire(API)
    elapsed = time.monotonic() - started
    # Half of 10 TPS: four calls are three intervals of 0.2 s apart.
    assert elapsed == pytest.approx(0.6, abs=0.25)
    assert budget.stats()[API].calls == 4


def test_budget_config_is_checked_with_file_and_line(tmp_path: Any) -> None:
    from station.config import load_config
    from station.errors import ConfigError

    sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
    try:
        from cloud_rig import write_config
    finally:
        sys.path.remove(str(Path(__file__).parent / "pipeline"))
    path = write_config(tmp_path, "http://127.0.0.1:9")
    good = path.read_text() + '\n[budget]\nstore = "dynamodb://b?region=eu-west-1"\nfallback_share = 0.5\n'
    path.write_text(good)
    settings = load_config(path).budget
    assert settings is not None and settings.store == "dynamodb://b?region=eu-west-1"
    assert settings.fallback_share == 0.5
    path.write_text(good.replace("fallback_share = 0.5", "fallback_share = 2"))
    with pytest.raises(ConfigError, match=r"station.toml:\d+: \[budget\] fallback_share"):
        load_config(path)


@pytest.mark.lab
def test_a_station_configured_with_a_budget_store_meters_its_registry_calls_there(
    plane: Any, tmp_path: Any
) -> None:
    from station import ratelimit
    from station.config import load_config
    from station.context import StationContext
    from station.identity import new_identity

    sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
    try:
        from cloud_rig import write_config
    finally:
        sys.path.remove(str(Path(__file__).parent / "pipeline"))
    path = write_config(tmp_path, plane.endpoint_url)
    path.write_text(path.read_text() + f'\n[budget]\nstore = "{store_url(plane, "budget-wired")}"\n')
    config = load_config(path)
    target = config.target("lab")
    ratelimit._shared.pop(target.registry_key, None)
    try:
        context = StationContext(config, ledger=None)
        registry = context.registry(target)
        assert isinstance(registry.budget, SharedRateBudget)
        registry.register(new_identity(common_name="SIM000777"), origin="station")
        client = plane.client("dynamodb", region="eu-west-1")
        key = f"{target.registry_key[0]}/{target.registry_key[1]}/{API}"
        item = client.get_item(TableName="budget-wired", Key={"pk": {"S": key}}, ConsistentRead=True)["Item"]
        assert float(item["tat"]["N"]) > time.time() - 60
    finally:
        ratelimit.use_budget_factory(None)
        ratelimit._shared.pop(target.registry_key, None)
