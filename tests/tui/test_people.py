"""Who is working: the sign-in at start names the operator on the line's next record (over the real line and
ledger), a QA person's own PIN names them on a revoke, and the station.toml keys behind both ([people.NAME]
badge / qa_pin_hash, [station] sign_in) with `station pin-hash --person`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qa_fixtures import CERT_ID, PIN, FakeCloud, FakeRegistry, make_config, make_ledger
from test_real_line import real_line_app
from textual.widgets import Button, Label, Static
from tui_fakes import ScriptedLine, type_scan, wait_until

from station.config import Person, load_config
from station.desk import SIGN_IN_SERIAL, QaServices
from station.errors import ConfigError, InputError
from station.ledger import open_ledger
from station.people import qa_pins, sign_in_required, who_signs_in
from station.qapin import PinGuard, hash_pin, pin_matches
from station.tui.app import build_app
from station.tui.operator.screen import OperatorScreen
from station.tui.qa.desk import QaDeskScreen
from station.tui.qa.dialogs import ConfirmScreen
from station.tui.qa.pin import PinScreen
from station.tui.relay import EventRelay
from station.tui.signin import SignInScreen

ALICE_BADGE = "B-000417"
BOB_PIN = "5678"


def people() -> dict[str, Person]:
    return {
        "alice": Person("alice", badge=ALICE_BADGE),
        "bob": Person("bob", qa_pin_hash=hash_pin(BOB_PIN)),
    }


async def test_sign_in_by_badge_names_the_operator_on_the_next_record(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = dataclasses.replace(
        config,
        people=people(),
        products={
            "widget": dataclasses.replace(config.products["widget"], options={"check_device_id": False})
        },
    )
    with real_line_app(config, tmp_path) as real:
        app, line, ledger = real.app, real.line, real.ledger
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the sign-in")
            await pilot.press("escape")  # nobody signed in yet: it stays
            assert isinstance(app.screen, SignInScreen)
            await type_scan(pilot, "B-999999")  # a badge nobody has
            problem = app.screen.query_one("#sign-in-problem", Label)
            await wait_until(
                pilot, lambda: "Not on this station's list" in str(problem.render()), what="refused"
            )
            assert isinstance(app.screen, SignInScreen)
            await type_scan(pilot, ALICE_BADGE)
            await wait_until(pilot, lambda: isinstance(app.screen, OperatorScreen), what="the line")
            assert app.person == "alice"
            assert "Operator alice" in str(app.query_one("#station-line", Static).render())
            await type_scan(pilot, "1:SN00000001")
            await wait_until(pilot, lambda: bool(ledger.find("SN00000001")), timeout=15, what="the record")
        assert line.wait_idle(10)
        (record,) = ledger.find("SN00000001")
        assert (record.outcome, record.operator) == ("PASS", "alice")  # not the config's "day-shift"
        (signed,) = [e.event for e in ledger.events(SIGN_IN_SERIAL)]
        assert (signed.step, signed.data["operator"]) == ("operator:sign_in", "alice")


async def test_a_qa_persons_own_pin_names_them_on_the_revoke(tmp_path: Path) -> None:
    """The shared PIN still opens the desk (as whoever signed in); bob's own PIN names bob."""
    config = dataclasses.replace(make_config(tmp_path), people=people())
    ledger = make_ledger(tmp_path)
    cloud = FakeCloud()
    cloud.seed("lab-eu", CERT_ID, "widget-SN00000001")
    calls: list[Any] = []
    relay = EventRelay()
    line = ScriptedLine({"s1": "/dev/ttyUSB0"}, on_event=relay)
    qa = QaServices(
        config, ledger, line=line, registry_factory=lambda target: FakeRegistry(target, calls, cloud=cloud)
    )
    app = build_app(config, line, qa=qa, relay=relay, poll_interval=None)
    try:
        async with app.run_test(size=(100, 32), notifications=True) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the sign-in")
            await type_scan(pilot, "ALICE")  # a listed name, in any case
            await wait_until(pilot, lambda: isinstance(app.screen, OperatorScreen), what="the line")
            assert app.person == "alice" and line.operator == "alice"  # the line names her next

            await pilot.press("f3")
            await wait_until(pilot, lambda: isinstance(app.screen, PinScreen), what="the PIN prompt")
            await type_scan(pilot, BOB_PIN)
            await wait_until(pilot, lambda: isinstance(app.screen, QaDeskScreen), what="the desk")
            desk = app.screen
            assert isinstance(desk, QaDeskScreen) and desk.services.operator == "bob"
            await wait_until(pilot, lambda: desk.selected() is not None, what="the recent unit")
            assert desk.selected().serial == "SN00000001"
            await pilot.press("f6")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "Recorded as bob" in str(app.screen.query_one("#confirm-body", Label).render())
            app.screen.query_one("#confirm", Button).focus()
            await pilot.press("enter")
            await wait_until(
                pilot,
                lambda: any(e.event.step == "qa:revoke" for e in ledger.events("SN00000001")),
                what="the revoke",
            )
            await pilot.press("escape")
            await wait_until(pilot, lambda: isinstance(app.screen, OperatorScreen), what="the line")

            await pilot.press("f3")  # the shared PIN: the person signed in
            await wait_until(pilot, lambda: isinstance(app.screen, PinScreen), what="the PIN prompt")
            await type_scan(pilot, PIN)
            await wait_until(pilot, lambda: isinstance(app.screen, QaDeskScreen), what="the desk")
            assert app.screen.services.operator == "alice"  # type: ignore[attr-defined]
        (note,) = [e.event for e in ledger.events("SN00000001") if e.event.step == "qa:revoke"]
        assert (note.outcome, note.data["operator"]) == ("ok", "bob")
        state = ledger.unit("SN00000001")
        assert state is not None and (state.state, state.changed_by) == ("revoked", "bob")
        revokes = [r for r in ledger.find("SN00000001") if r.action == "revoke"]
        assert revokes and [r.operator for r in revokes] == ["bob"] * len(revokes)
    finally:
        ledger.close()


def test_sign_in_is_asked_when_people_are_listed_or_sign_in_is_set(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert not sign_in_required(config)
    assert sign_in_required(dataclasses.replace(config, sign_in=True))
    assert sign_in_required(dataclasses.replace(config, people=people()))
    # Nobody listed: any plain name; listed: a badge or a listed name only.
    assert who_signs_in(dataclasses.replace(config, sign_in=True), "  Night Shift ") == "Night Shift"
    listed = dataclasses.replace(config, people=people())
    assert who_signs_in(listed, ALICE_BADGE) == "alice" and who_signs_in(listed, "Bob") == "bob"
    with pytest.raises(InputError):
        who_signs_in(listed, "mallory")
    with pytest.raises(InputError):
        who_signs_in(listed, "   ")


def test_a_pin_guard_over_several_pins_says_whose_and_locks_them_all(tmp_path: Path) -> None:
    config = dataclasses.replace(make_config(tmp_path), people=people())
    pins = qa_pins(config)
    assert set(pins) == {"bob", ""} and pins["bob"].startswith("scrypt$")  # alice has no PIN of her own
    now = [1_000_000.0]
    guard = PinGuard(pins, clock=lambda: now[0])
    assert guard.check(BOB_PIN) == "bob" and guard.check(PIN) == ""
    for wrong in ("1111", "2222", "3333", "4444", "5555"):
        now[0] += 60
        with pytest.raises(InputError):
            guard.check(wrong)
    with pytest.raises(InputError, match="locked"):
        guard.check(BOB_PIN)


STATION_TOML = """
[station]
id = "line1-station3"
ledger = "ledger.sqlite"
sign_in = true
{people}
[targets.lab-eu]
region = "eu-west-1"
policy_name = "lab"
account_id = "123456789012"
lab = true
"""


def test_people_in_station_toml_and_station_pin_hash_for_a_person(tmp_path: Path) -> None:
    made = subprocess.run(
        [str(Path(sys.executable).parent / "station"), "pin-hash", "--person", "bob", "--pin-stdin"],
        input=f"{BOB_PIN}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert BOB_PIN not in made.stdout
    people_toml = made.stdout + f'\n[people.alice]\nbadge = "{ALICE_BADGE}"\n'
    path = tmp_path / "station.toml"
    path.write_text(STATION_TOML.format(people=people_toml))
    config = load_config(path)
    assert config.sign_in is True and set(config.people) == {"alice", "bob"}
    assert config.people["alice"].badge == ALICE_BADGE and config.people["alice"].qa_pin_hash is None
    bob = config.people["bob"].qa_pin_hash
    assert bob is not None and pin_matches(BOB_PIN, bob) and not pin_matches("0000", bob)
    assert BOB_PIN not in repr(config.people["bob"])

    # A plain PIN for a person, and one badge for two people, are refused with where they are.
    path.write_text(
        STATION_TOML.format(
            people=f'[people.carol]\nqa_pin = "1234"\n[people.dave]\nbadge = "{ALICE_BADGE}"\n'
            f'[people.erin]\nbadge = "{ALICE_BADGE}"\n'
        )
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    text = refused.value.message
    assert "[people.carol] qa_pin" in text and "kept only as a hash" in text
    assert "[people.erin] badge: is also the badge of 'dave'" in text


def test_station_revoke_names_the_person_whose_pin_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`station revoke`/`transfer` at a production station: a person's own PIN makes them the one who acts."""
    import argparse
    import io

    from station.commands.register import require_pin

    production = load_config(Path(__file__).resolve().parents[2] / "fixtures" / "configs" / "station.toml")
    config = dataclasses.replace(production, people=people())
    with open_ledger(tmp_path / "ledger.sqlite") as ledger:
        for pin, who in ((BOB_PIN, "bob"), ("0042", None)):  # bob's own PIN; the station's shared one
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{pin}\n".encode())))
            args = argparse.Namespace(pin_stdin=True, operator=None)
            assert require_pin(args, config, ledger, action="revoke") == who
