"""The unit-state rule: what each kind of attempt record does to a unit's state and live identities."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.ledger import AttemptRecord
from station.units import Action, UnitState, UnitStateName, apply, iso_utc, replay

_ids = itertools.count(1)


def rec(
    outcome: str,
    *,
    action: str = "provision",
    cert: str = "a" * 64,
    target: str = "prod-eu",
    at: float = 0.0,
    operator: str = "op",
    **extra: object,
) -> AttemptRecord:
    n = next(_ids)
    return AttemptRecord(
        attempt_id=f"att-{n}",
        serial="SN000001",
        outcome=outcome,
        action=action,
        certificate_id=cert if outcome in ("PASS", "DONE") or action != "provision" else "",
        thing_name="sensor-SN000001",
        target=target,
        account_id="111122223333",
        region="eu-west-1",
        station_id="st1",
        slot="s1",
        operator=operator,
        finished_at=at or float(1_800_000_000 + n),
        extra=dict(extra),
    )


def test_a_pass_makes_the_unit_provisioned_with_one_verified_live_identity() -> None:
    state = apply(None, rec("PASS", cert="c1" * 32))
    assert state.state == UnitStateName.PROVISIONED
    assert [(i.target, i.certificate_id, i.verified) for i in state.live] == [("prod-eu", "c1" * 32, True)]
    assert state.attempts == 1 and state.last_outcome == "PASS"


def test_a_failed_first_attempt_is_failed_but_a_failed_rescan_keeps_the_live_identity() -> None:
    assert apply(None, rec("FAIL")).state == UnitStateName.FAILED
    live = apply(None, rec("PASS", cert="c1" * 32))
    after = apply(live, rec("FAIL"))
    assert after.state == UnitStateName.PROVISIONED
    assert after.live == live.live
    assert after.last_outcome == "FAIL" and after.attempts == 2


def test_revoking_the_last_identity_makes_the_unit_revoked_with_who_and_when() -> None:
    live = apply(None, rec("PASS", cert="c1" * 32))
    revoked = apply(
        live,
        rec(
            "DONE",
            action=Action.REVOKE,
            cert="c1" * 32,
            at=1_800_100_000.0,
            operator="qa",
            revoked=["c1" * 32],
        ),
    )
    assert revoked.state == UnitStateName.REVOKED and revoked.live == ()
    assert revoked.changed_by == "qa"
    assert revoked.label() == f"revoked {iso_utc(1_800_100_000.0)[:10]} by qa"


def test_a_failed_revoke_changes_nothing_live() -> None:
    live = apply(None, rec("PASS", cert="c1" * 32))
    after = apply(live, rec("ERROR", action=Action.REVOKE, cert="c1" * 32, revoked=["c1" * 32]))
    assert after.state == UnitStateName.PROVISIONED and after.live == live.live


def test_register_without_verify_is_registered_never_provisioned() -> None:
    state = apply(None, rec("DONE", action=Action.REGISTER, cert="d1" * 32))
    assert state.state == UnitStateName.REGISTERED
    assert state.live[0].verified is False
    assert "not verified" in state.label()


def test_replace_names_both_and_is_superseded_until_the_old_one_is_revoked() -> None:
    first = apply(None, rec("PASS", cert="01" * 32))
    pending = apply(first, rec("PASS", cert="02" * 32, replaced=["01" * 32], replaced_revoked=[]))
    assert pending.state == UnitStateName.SUPERSEDED
    assert pending.pending_revoke == ("01" * 32,)
    assert [i.certificate_id for i in pending.live] == ["02" * 32]
    assert "0101010101" in pending.note and "0202020202" in pending.note
    cleaned = apply(pending, rec("DONE", action=Action.RECONCILE, cert="01" * 32, revoked=["01" * 32]))
    assert cleaned.state == UnitStateName.PROVISIONED and cleaned.pending_revoke == ()
    done = apply(first, rec("PASS", cert="02" * 32, replaced=["01" * 32], replaced_revoked=["01" * 32]))
    assert done.state == UnitStateName.PROVISIONED and done.pending_revoke == ()
    assert "replaced" in done.note


def test_transfer_adds_the_destination_and_drops_the_source_only_when_revoked() -> None:
    first = apply(None, rec("PASS", cert="01" * 32, target="prod-eu"))
    kept = apply(
        first,
        rec(
            "DONE",
            action=Action.TRANSFER,
            cert="01" * 32,
            target="prod-us",
            source_target="prod-eu",
            source_revoked=False,
        ),
    )
    assert kept.state == UnitStateName.TRANSFERRED
    assert sorted(i.target for i in kept.live) == ["prod-eu", "prod-us"]
    moved = apply(
        first,
        rec(
            "DONE",
            action=Action.TRANSFER,
            cert="01" * 32,
            target="prod-us",
            source_target="prod-eu",
            source_revoked=True,
        ),
    )
    assert [i.target for i in moved.live] == ["prod-us"]
    assert "prod-us" in moved.note


def test_reverify_never_changes_what_is_live() -> None:
    first = apply(None, rec("PASS", cert="01" * 32))
    after = apply(first, rec("FAIL", action=Action.REVERIFY, cert="01" * 32))
    assert after.state == first.state and after.live == first.live and after.last_outcome == "FAIL"


def test_state_survives_a_round_trip_through_its_stored_form() -> None:
    state = apply(
        apply(None, rec("PASS", cert="01" * 32)),
        rec("PASS", cert="02" * 32, replaced=["01" * 32], replaced_revoked=[]),
    )
    assert UnitState.from_dict(state.to_dict()) == state


_outcomes = st.sampled_from(["PASS", "FAIL", "ERROR", "DONE"])
_actions = st.sampled_from([a.value for a in Action])
_certs = st.sampled_from(["01" * 32, "02" * 32, "03" * 32])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_actions, _outcomes, _certs, st.booleans()), min_size=1, max_size=12))
def test_replay_is_deterministic_and_revoked_units_have_nothing_live(
    steps: list[tuple[str, str, str, bool]],
) -> None:
    records = [
        rec(
            outcome,
            action=action,
            cert=cert,
            revoked=[cert],
            source_target="prod-eu",
            source_revoked=flag,
            target="prod-us" if action == "transfer" else "prod-eu",
        )
        for action, outcome, cert, flag in steps
    ]
    once = replay(records)["SN000001"]
    again = replay(records)["SN000001"]
    assert once == again
    assert once.attempts == len(records)
    if once.state in (UnitStateName.REVOKED, UnitStateName.FAILED):
        assert once.live == ()
    if once.state == UnitStateName.PROVISIONED:
        assert once.live


@pytest.mark.parametrize("epoch, text", [(0.0, ""), (1_764_950_400.0, "2025-12-05T16:00:00Z")])
def test_iso_utc(epoch: float, text: str) -> None:
    assert iso_utc(epoch) == text
