"""Dataclass-derived `as_dict`: every result that used to hand-write its dict gives the same output.

The reference functions below are the hand-written `as_dict` bodies as they were before `station.plain`; each
sample must give the same JSON text (keys in the same order) and the same dict, tuples read as lists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from station.attempt import Compensation
from station.lab.control import Fault
from station.model import Secret
from station.pipeline import ReconcileItem
from station.plain import plain, plain_dict
from station.qa.preflight import PreflightReport, TargetReport
from station.qa.register import RegisterResult
from station.qa.reprovision import ReprovisionPlan
from station.qa.reverify import ReverifyResult
from station.qa.revoke import RevokeDone, RevokeItem, RevokePlan, RevokeResult
from station.qa.transfer import TransferPlan
from station.registry import Check
from station.verify import VerifyResult

ITEM = RevokeItem("prod-eu", "ab" * 32, thing_name="sensor-SN1", delete_thing="sensor-SN1")
KEPT = RevokeItem("prod-us", "cd" * 32, thing_name="shared", keep_reason="made by someone else")
DONE = RevokeDone(ITEM, ok=True, existed=True, thing_deleted="sensor-SN1")
FAILED = RevokeDone(KEPT, ok=False, error={"kind": "StationFault", "title": "AWS did not answer"})
CHECKS = (Check("credentials", True, "account 111122223333"), Check("policy", False, "too broad", "Fix it."))
TARGET = TargetReport("prod-eu", lab=False, where="111122223333/eu-west-1", checks=CHECKS)


def _old_revoke_done(d: RevokeDone) -> dict[str, Any]:
    return {
        **asdict(d.item),
        "ok": d.ok,
        "existed": d.existed,
        "thing_deleted": d.thing_deleted,
        "error": d.error,
    }


def _old_target_report(t: TargetReport) -> dict[str, Any]:
    checks = [asdict(c) for c in t.checks]
    return {"target": t.target, "lab": t.lab, "where": t.where, "ok": t.ok, "checks": checks}


def _old_transfer_plan(p: TransferPlan) -> dict[str, Any]:
    data = asdict(p)
    data.pop("certificate_pem")
    data["source_revoke"] = [asdict(item) for item in p.source_revoke]
    return data


SAMPLES: list[tuple[Any, Any]] = [
    (VerifyResult("sensor-SN1", "h.example.com", 8883, 1, 10.5, 2.0, 3.25, 20.0, connect_attempts=2), asdict),
    (
        Fault("error", api="CreateThing", count=2, status=503, id=7, fired=1),
        lambda f: {k: v for k, v in asdict(f).items() if not k.startswith("_")},
    ),
    (
        RegisterResult(
            "a1", "SN1", "prod-eu", "111122223333", "eu-west-1", "sensor-SN1", "ab" * 32, "arn:cert",
            already_registered=True, activated=False, thing_created=False, policy_attached=True,
            thing_attached=True, operator="qa", verify={"total_ms": 12.5}, timings_ms={"register": 3.0},
        ),
        lambda r: {**asdict(r), "changed": r.changed},
    ),
    (
        ReverifyResult("a2", "SN1", "slot1", "prod-eu", "sensor-SN1", "ab" * 32, None, "prov1", "qa", "a1",
                       timings_ms={"verify": 8.0}, message="ok"),
        lambda r: {"ok": True, **asdict(r)},
    ),
    (ReprovisionPlan("SN1", "slot1", "sensor", "prod-eu", ("ab" * 32, "cd" * 32)), asdict),
    (ITEM, asdict),
    (RevokePlan("SN1", (ITEM, KEPT)), lambda p: {"serial": p.serial, "items": [asdict(i) for i in p.items]}),
    (DONE, _old_revoke_done),
    (FAILED, _old_revoke_done),
    (
        RevokeResult("SN1", "qa", (DONE, FAILED)),
        lambda r: {"ok": r.ok, "serial": r.serial, "operator": r.operator, "revoked": r.revoked,
                   "items": [_old_revoke_done(d) for d in r.done]},
    ),
    (TARGET, _old_target_report),
    (
        PreflightReport((TARGET,), station=(Check("ledger", True, "writable"),)),
        lambda p: {"ok": p.ok, "station": [asdict(c) for c in p.station],
                   "targets": [_old_target_report(t) for t in p.targets]},
    ),
    (
        TransferPlan("SN1", "prod-eu", "prod-us", "ab" * 32, "-----BEGIN CERTIFICATE-----\n", "sensor-SN1",
                     "a1", product="sensor", revoke_source=True, source_revoke=(ITEM,)),
        _old_transfer_plan,
    ),
    (
        ReconcileItem(3, "SN1", "prod-eu", "ab" * 32, "rolled_back", detail="deleted what it made"),
        lambda i: {"journal_id": i.journal_id, "serial": i.serial, "target": i.target,
                   "certificate_id": i.certificate_id, "action": i.action, "detail": i.detail},
    ),
    (Compensation("rollback", False, "AWS did not answer"),
     lambda c: {"action": c.action, "ok": c.ok, "detail": c.detail}),
]  # fmt: skip


def _lists(value: Any) -> Any:
    """Tuples read as lists, as JSON does (the old `asdict` kept a tuple field a tuple)."""
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("sample", "old"), SAMPLES, ids=lambda v: type(v).__name__)
def test_as_dict_gives_what_the_hand_written_one_gave(sample: Any, old: Any) -> None:
    new, before = sample.as_dict(), old(sample)
    assert json.dumps(new) == json.dumps(before)  # same keys, same order, same values
    assert new == _lists(before)


def test_the_certificate_pem_and_private_state_stay_out() -> None:
    plan = SAMPLES[-3][0]
    assert "certificate_pem" not in plan.as_dict() and "BEGIN" not in json.dumps(plan.as_dict())
    assert "_rng" not in SAMPLES[1][0].as_dict()


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class _Inner:
    when: dt.datetime
    raw: bytes


@dataclass(frozen=True)
class _Outer:
    colour: Colour
    inner: _Inner
    checks: tuple[Check, ...]
    where: Path
    by_name: dict[str, _Inner] = field(default_factory=dict)
    hidden: str = field(default="x", repr=False)


def test_plain_converts_enums_dates_bytes_paths_and_nested_dataclasses() -> None:
    inner = _Inner(dt.datetime(2026, 12, 5, 19, 30, tzinfo=dt.UTC), b"\x01\xff")
    outer = _Outer(Colour.RED, inner, (Check("c", True, "m"),), Path("/tmp/x"), {"a": inner})
    shown = {"when": "2026-12-05T19:30:00+00:00", "raw": "01ff"}
    assert plain_dict(outer) == {
        "colour": "red",
        "inner": shown,
        "checks": [{"name": "c", "ok": True, "message": "m", "next_action": ""}],
        "where": "/tmp/x",
        "by_name": {"a": shown},
    }
    assert list(plain_dict(outer, exclude=("inner", "checks"))) == ["colour", "where", "by_name"]
    assert dataclasses.fields(outer)[-1].name == "hidden"  # left out because it is hidden from repr


def test_a_secret_never_becomes_plain_data() -> None:
    with pytest.raises(TypeError):
        plain({"key": Secret(b"-----BEGIN PRIVATE KEY-----")})
