"""One contract for every registry the pipeline can be given (fsspec-style): the in-memory `FakeRegistry` the
fast pipeline tests use, the QA desk tests' fake (`tests/tui/qa_fixtures`), and the real `Registry` on the
lab's control plane. Each implementation supplies only fixtures; the tests are shared, so a fake cannot drift
from what the real registry does.

What is checked is what the pipeline relies on: registering is idempotent and says whether this call created
the certificate; a thing is made once; rollback undoes only what the registration says was made; revoke
removes a certificate and says whether it was there; describe sees ACTIVE certificates and nothing after a
removal; `where` names the account and region describe reports; the data endpoint is a (host, port).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from station.identity import new_identity
from station.model import Identity
from station.registry import Registration

sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
sys.path.insert(0, str(Path(__file__).parent / "tui"))
from pipeline_fakes import FakeRegistry, Log
from qa_fixtures import ACCOUNTS, FakeCloud, lab_target
from qa_fixtures import FakeRegistry as DeskRegistry

sys.path.remove(str(Path(__file__).parent / "pipeline"))
sys.path.remove(str(Path(__file__).parent / "tui"))

Lookup = Callable[[str], str | None]  # certificate id → status in the registry itself, or None


class RegistryContract:
    """The shared tests. Subclasses provide `registry` and `lookup` (the registry's truth, not its API)."""

    @pytest.fixture
    def registry(self) -> Any:
        raise NotImplementedError

    @pytest.fixture
    def lookup(self, registry: Any) -> Lookup:
        raise NotImplementedError

    @pytest.fixture
    def things(self, registry: Any) -> Callable[[], set[str]]:
        raise NotImplementedError

    def test_register_is_idempotent_and_says_who_created_it(self, registry: Any, lookup: Lookup) -> None:
        identity = new_identity("SIM100001")
        first = registry.register(identity, origin="station")
        assert isinstance(first, Registration)
        assert first.certificate_id == identity.certificate_id and first.created is True
        assert lookup(identity.certificate_id) == "ACTIVE"
        again = registry.register(identity, origin="station")
        assert again.certificate_id == identity.certificate_id and again.created is False
        assert lookup(identity.certificate_id) == "ACTIVE"

    def test_a_thing_is_made_once(self, registry: Any, things: Callable[[], set[str]]) -> None:
        name = f"contract-{new_identity('x').certificate_id[:10]}"
        assert registry.create_thing(name) is True
        assert registry.create_thing(name) is False
        assert name in things()

    def test_rollback_undoes_what_this_registration_made(
        self, registry: Any, lookup: Lookup, things: Callable[[], set[str]]
    ) -> None:
        identity = new_identity("SIM100002")
        name = f"contract-{identity.certificate_id[:10]}"
        registration = registry.register(identity, origin="station")
        registration.thing_created = registry.create_thing(name)
        registration.thing_name = name
        registry.attach(registration, name)
        registry.rollback(registration)
        assert lookup(identity.certificate_id) is None
        assert name not in things()

    def test_rollback_keeps_a_certificate_it_did_not_create(self, registry: Any, lookup: Lookup) -> None:
        identity = new_identity("SIM100003")
        registry.register(identity, origin="station")
        borrowed = registry.register(identity, origin="station")
        assert borrowed.created is False
        registry.rollback(borrowed)
        assert lookup(identity.certificate_id) == "ACTIVE"

    def test_revoke_removes_and_says_whether_it_was_there(self, registry: Any, lookup: Lookup) -> None:
        identity = new_identity("SIM100004")
        registration = registry.register(identity, origin="station")
        registry.attach(registration, registry_thing(registry, identity))
        assert registry.revoke(identity.certificate_id) is True
        assert lookup(identity.certificate_id) is None
        assert registry.describe(identity.certificate_id) is None
        assert registry.revoke(identity.certificate_id) is False

    def test_describe_sees_an_active_certificate(self, registry: Any) -> None:
        identity = new_identity("SIM100005")
        registry.register(identity, origin="station")
        described = registry.describe(identity.certificate_id)
        assert described is not None and described["status"] == "ACTIVE"
        assert described["certificateId"] == identity.certificate_id

    def test_where_names_the_registry_describe_reports(self, registry: Any) -> None:
        identity = new_identity("SIM100006")
        registry.register(identity, origin="station")
        described = registry.describe(identity.certificate_id)
        assert registry.where == f"{described['account_id']}/{described['region']}"
        assert described["certificateArn"].endswith(f"cert/{identity.certificate_id}")

    def test_the_data_endpoint_is_a_host_and_port(self, registry: Any) -> None:
        host, port = registry.data_endpoint()
        assert isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536


def registry_thing(registry: Any, identity: Any) -> str:
    name = f"contract-{identity.certificate_id[:10]}"
    registry.create_thing(name)
    return name


class TestFakeRegistry(RegistryContract):
    @pytest.fixture
    def registry(self) -> Any:
        return FakeRegistry(Log())

    @pytest.fixture
    def lookup(self, registry: Any) -> Lookup:
        return lambda cid: (registry.certificates.get(cid) or {}).get("status")

    @pytest.fixture
    def things(self, registry: Any) -> Callable[[], set[str]]:
        return lambda: set(registry.things)


class KeylessDeskRegistry(DeskRegistry):
    """The desk's fake refuses a key (the QA desk never holds one); the contract's identities carry theirs,
    so they are handed over as the desk would: certificate only."""

    def register(self, identity: Identity, *, origin: str = "unit") -> Registration:
        return super().register(replace(identity, private_key=None), origin=origin)


class TestDeskRegistry(RegistryContract):
    """The QA desk tests' registry (`tests/tui/qa_fixtures.FakeRegistry`) over its `FakeCloud`."""

    @pytest.fixture
    def registry(self) -> Any:
        return KeylessDeskRegistry(
            lab_target("lab-eu", "eu-west-1", ACCOUNTS["lab-eu"]), [], cloud=FakeCloud()
        )

    @pytest.fixture
    def lookup(self, registry: Any) -> Lookup:
        return lambda cid: registry.cloud.status("lab-eu", cid)

    @pytest.fixture
    def things(self, registry: Any) -> Callable[[], set[str]]:
        return lambda: set(registry.cloud.things.get("lab-eu", set()))


@pytest.fixture(scope="module")
def lab_plane() -> Iterator[Any]:
    from cloud_fixtures import lab_control_plane

    with lab_control_plane() as plane:
        yield plane


@pytest.mark.lab
class TestLabRegistry(RegistryContract):
    @pytest.fixture
    def registry(self, lab_plane: Any) -> Any:
        from cloud_fixtures import make_target

        from station.registry import Registry

        return Registry(make_target(lab_plane.endpoint_url, endpoint="localhost"))

    @pytest.fixture
    def lookup(self, lab_plane: Any) -> Lookup:
        from cloud_fixtures import REGION

        iot = lab_plane.client("iot", region=REGION)

        def status(cid: str) -> str | None:
            listed = {
                c["certificateId"]: c["status"] for c in iot.list_certificates(pageSize=250)["certificates"]
            }
            return listed.get(cid)

        return status

    @pytest.fixture
    def things(self, lab_plane: Any) -> Callable[[], set[str]]:
        from cloud_fixtures import REGION

        iot = lab_plane.client("iot", region=REGION)
        return lambda: {t["thingName"] for t in iot.list_things(maxResults=250)["things"]}
