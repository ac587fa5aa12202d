"""Fixtures every family's test module shares: fresh identities and the factory CA that signs device CSRs.

The CA is the committed test fixture (fixtures/certs/factory-ca.*, key under a passphrase), loaded the way the
station loads one; a family module overrides `sign_csr` when its units never make a CSR.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from station.identity import load_issuer, new_identity, sign_csr
from station.model import Identity, Issuer

CERTS = Path(__file__).resolve().parents[2] / "fixtures" / "certs"
PASSPHRASE_ENV = "STATION_TEST_FACTORY_CA_PASSPHRASE"


@pytest.fixture(name="new_identity")
def _new_identity() -> Callable[[], Identity]:
    return lambda: new_identity(f"unit-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def identity(new_identity: Callable[[], Identity]) -> Identity:
    return new_identity()


@pytest.fixture(scope="session")
def issuer() -> Any:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PASSPHRASE_ENV, "factory-ca-passphrase")  # test data: fixtures/README.md
        return load_issuer(
            Issuer(
                str(CERTS / "factory-ca.pem"), str(CERTS / "factory-ca.key"), passphrase_env=PASSPHRASE_ENV
            )
        )


@pytest.fixture(name="sign_csr")
def _sign_csr(issuer: Any) -> Callable[[str], str]:
    return lambda csr: sign_csr(csr, issuer, common_name="unit-1", days=30)
