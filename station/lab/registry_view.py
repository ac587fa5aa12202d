"""Read-only window onto the lab control plane's IoT registry (moto, same process), for the data plane.

The data plane must judge each new connection by the *live* registry of its (account, region): the same state
boto3 sees through the control plane, so a register / deactivate / delete / detach takes effect on the next
connection without a restart. moto keeps that state in ``moto.iot.models.iot_backends[account][region]``;
this module is the ONLY place in the project allowed to touch those internals, so a moto upgrade changes one
file (tests/lab/test_dataplane.py covers it end to end).

What it answers, and nothing more: a certificate by id (status, ARN), the policies attached to a principal
(name + current default document) and the things attached to a principal. It never writes to moto, never
returns certificate PEMs or other bulk state, and copies what it reads so the caller never iterates a dict the
moto server thread is mutating.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")

# moto mutates its OrderedDicts from the server thread; copying can then fail with "changed size during
# iteration". A copy takes microseconds, so a few retries always succeed in practice.
_COPY_ATTEMPTS = 20


@dataclass(frozen=True)
class CertificateRecord:
    certificate_id: str
    arn: str
    status: str  # "ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", ...


@dataclass(frozen=True)
class PolicyRecord:
    name: str
    document: str  # JSON text of the policy's current default version


class Registry(Protocol):
    """What the data plane needs from a registry (RegistryView in the lab; fakes in unit tests)."""

    def certificate(self, certificate_id: str) -> CertificateRecord | None: ...

    def attached_policies(self, principal_arn: str) -> list[PolicyRecord]: ...

    def attached_things(self, principal_arn: str) -> list[str]: ...


class RegistryInternalsChanged(RuntimeError):
    """moto's in-process IoT state no longer looks the way this adapter expects (after a moto upgrade)."""


class UnknownRegistry(LookupError):
    """moto has no IoT registry for that region (not an AWS region moto knows)."""


class RegistryView:
    """The registry of one (account, region), read live from moto's in-process backend."""

    def __init__(self, account_id: str, region: str) -> None:
        self.account_id = account_id
        self.region = region

    def __repr__(self) -> str:
        return f"RegistryView({self.account_id!r}, {self.region!r})"

    def certificate(self, certificate_id: str) -> CertificateRecord | None:
        backend = self._backend()
        cert = _guard(lambda: backend.certificates.get(certificate_id))
        if cert is None:
            return None
        return _guard(lambda: CertificateRecord(str(cert.certificate_id), str(cert.arn), str(cert.status)))

    def attached_policies(self, principal_arn: str) -> list[PolicyRecord]:
        backend = self._backend()
        # principal_policies: {(principal_arn, policy_name): (principal, FakePolicy)}
        items = _copy(lambda: list(backend.principal_policies.items()))
        out: list[PolicyRecord] = []
        for (principal, name), value in items:
            if principal != principal_arn:
                continue

            def document(name: str = name, value: Any = value) -> Any:
                # The FakePolicy object is shared with backend.policies, so its document follows
                # set_default_policy_version; prefer the live entry by name in case it was replaced.
                policy = backend.policies.get(name) or value[1]
                return policy.document

            out.append(PolicyRecord(str(name), _document_text(_guard(document))))
        return out

    def attached_things(self, principal_arn: str) -> list[str]:
        backend = self._backend()
        # principal_things: {(principal_arn, thing_name): (principal, FakeThing)}
        keys = _copy(lambda: list(backend.principal_things.keys()))
        return [str(thing) for principal, thing in keys if principal == principal_arn]

    def _backend(self) -> Any:
        # Imported here so that importing the data plane does not pull moto's IoT models in by itself.
        try:
            from moto.iot.models import iot_backends
        except ImportError as exc:  # pragma: no cover - moto is a project dependency
            raise RegistryInternalsChanged(f"moto.iot.models.iot_backends is gone: {exc}") from exc
        try:
            return _guard(lambda: iot_backends[self.account_id][self.region])
        except KeyError as exc:
            raise UnknownRegistry(f"moto has no IoT registry for region {self.region!r}") from exc


def _document_text(document: Any) -> str:
    if isinstance(document, str):
        return document
    return json.dumps(document)


def _guard(read: Callable[[], _T]) -> _T:
    try:
        return read()
    except (AttributeError, TypeError) as exc:
        raise RegistryInternalsChanged(
            f"moto's IoT registry internals changed ({exc}); update station/lab/registry_view.py"
        ) from exc


def _copy(read: Callable[[], _T]) -> _T:
    for _ in range(_COPY_ATTEMPTS - 1):
        try:
            return _guard(read)
        except RuntimeError as exc:
            if isinstance(exc, RegistryInternalsChanged):
                raise
            continue  # dict changed size during iteration: the server thread was writing; read again
    return _guard(read)
