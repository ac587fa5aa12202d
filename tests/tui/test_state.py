"""The operator screen's plain state: scan prefixes, a card folding events, counters, the relay, the header."""

from __future__ import annotations

import threading

import pytest

from station.errors import InputError
from station.model import Event, Outcome, Target
from station.tui.api import station_info
from station.tui.operator.header import target_line
from station.tui.relay import EventRelay
from station.tui.state import CardState, Counters, format_ms, parse_scan

SLOTS = ["s1", "s2", "bench"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SN00000001", (None, "SN00000001")),
        ("  SN00000001\r\n", (None, "SN00000001")),
        ("2:SN00000001", ("s2", "SN00000001")),
        ("3: SN00000001", ("bench", "SN00000001")),
        ("bench:SN00000001", ("bench", "SN00000001")),
        ("s1:SN00000001", ("s1", "SN00000001")),
        ("ABC:123", (None, "ABC:123")),  # not a slot: left for the serial check to judge
        ("2:", ("s2", "")),
    ],
)
def test_parse_scan(text: str, expected: tuple[str | None, str]) -> None:
    assert parse_scan(text, SLOTS) == expected


@pytest.mark.parametrize("text", ["0:SN00000001", "4:SN00000001", "17:SN1"])
def test_parse_scan_refuses_a_slot_number_out_of_range(text: str) -> None:
    with pytest.raises(InputError) as error:
        parse_scan(text, SLOTS)
    assert error.value.title == "No such slot"
    assert "1 to 3" in error.value.message


@pytest.mark.parametrize(
    ("ms", "text"), [(None, ""), (4.4, "4 ms"), (812, "812 ms"), (4300, "4.3 s"), (125_000, "2 m 05 s")]
)
def test_format_ms(ms: float | None, text: str) -> None:
    assert format_ms(ms) == text


def _ev(kind: str, **fields: object) -> Event:
    return Event(kind=kind, serial=str(fields.pop("serial", "SN1")), slot="s1", **fields)  # type: ignore[arg-type]


def test_card_follows_a_failing_unit_and_keeps_the_outcome_until_the_next_scan() -> None:
    card = CardState(slot="s1", port="/dev/ttyUSB0")
    card.accepted("SN1")
    assert card.active and card.state == "busy"
    card.apply(_ev("unit_started"))
    card.apply(_ev("step_started", step="identify"))
    assert card.steps["identify"].status == "running" and card.step == "identify"
    card.apply(_ev("step_finished", step="identify", outcome="ok", duration_ms=12.0))
    card.apply(_ev("step_started", step="write"))
    card.apply(_ev("step_started", step="register"))
    card.apply(_ev("step_finished", step="register", outcome="failed", duration_ms=30.0))
    card.apply(_ev("compensation", step="wipe", outcome="ok"))
    card.apply(
        _ev(
            "unit_finished",
            outcome="ERROR",
            title="AWS down",
            message="No AWS.",
            next_action="Call a technician.",
        )
    )
    assert card.outcome == Outcome.ERROR and not card.active and card.state == "idle"
    assert card.steps["identify"].label() == "✓identify 12 ms"
    assert card.steps["register"].status == "failed"
    assert card.steps["write"].status == "failed"  # cut short by its twin's failure: not left "running"
    assert card.steps["verify"].status == "pending"
    assert card.compensations == [("wipe", True)]
    # A poll saying "idle" keeps the outcome; only the next scan clears it.
    card.sync("idle", "/dev/ttyUSB0", "")
    assert card.outcome == Outcome.ERROR and card.message == "No AWS."
    card.accepted("SN2")
    assert card.outcome is None and card.serial == "SN2" and card.message == ""
    assert all(v.status == "pending" for v in card.steps.values())


def test_card_ignores_a_stale_idle_poll_while_its_unit_runs_and_treats_unknown_outcomes_as_error() -> None:
    card = CardState(slot="s1")
    card.accepted("SN1")
    card.sync("idle", "p", "")  # polled just before the scan was taken
    assert card.state == "busy" and card.active
    card.apply(_ev("unit_finished", outcome="MAYBE"))
    assert card.outcome == Outcome.ERROR


def test_a_late_scan_acceptance_does_not_wipe_a_unit_that_already_finished() -> None:
    card = CardState(slot="s1")
    # The line ran the whole unit before the scan worker's "accepted" message reached the screen.
    card.apply(_ev("unit_started"))
    card.apply(_ev("unit_finished", outcome="ERROR", title="Port gone", message="No port."))
    card.accepted("SN1")
    assert card.outcome == Outcome.ERROR and card.title == "Port gone"
    # The next scan on the slot does clear it (before its own unit starts).
    card.accepted("SN1")
    assert card.outcome is None and card.active


def test_counters_first_pass_yield_and_units_per_hour() -> None:
    counters = Counters()
    assert counters.first_pass_yield is None and counters.units_per_hour(0.0) is None
    counters.started(1000.0)
    counters.finished("A", Outcome.FAIL, 1010.0)
    counters.finished("A", Outcome.PASS, 1020.0)  # a retest that passes is not a first pass
    counters.finished("B", Outcome.PASS, 1030.0)
    counters.finished("C", Outcome.ERROR, 1040.0)
    assert (counters.passed, counters.failed, counters.errored, counters.total) == (2, 1, 1, 4)
    assert counters.first_pass_yield == pytest.approx(1 / 3)
    # Four units within the first minute: the one-minute floor keeps the rate at 4 × 60, not 4 × 3600/40.
    assert counters.units_per_hour(1040.0) == pytest.approx(240.0)
    # Two hours later, 30 minutes after two more units: only the last hour counts.
    counters.finished("D", Outcome.PASS, 1000.0 + 7200.0)
    counters.finished("E", Outcome.PASS, 1000.0 + 7200.0)
    assert counters.units_per_hour(1000.0 + 9000.0) == pytest.approx(2.0)


def test_relay_buffers_until_attached_and_never_raises_into_the_line() -> None:
    relay = EventRelay(backlog=2)
    relay(_ev("note", serial="A"))
    relay(_ev("note", serial="B"))
    relay(_ev("note", serial="C"))  # the oldest falls out of the bounded backlog
    got: list[str] = []
    relay.attach(lambda e: got.append(e.serial))
    assert got == ["B", "C"]

    def broken(event: Event) -> None:
        raise RuntimeError("event loop is closed")

    relay.attach(broken)
    relay(_ev("note", serial="D"))  # must not raise
    relay.detach()
    relay(_ev("note", serial="E"))
    relay.attach(lambda e: got.append(e.serial))
    assert got == ["B", "C", "E"]

    # From many threads at once, every event arrives exactly once.
    seen: list[str] = []
    lock = threading.Lock()

    def sink(event: Event) -> None:
        with lock:
            seen.append(event.serial)

    relay.attach(sink)

    def burst(i: int) -> None:
        for n in range(50):
            relay(_ev("note", serial=f"{i}-{n}"))

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(seen) == sorted(f"{i}-{n}" for i in range(4) for n in range(50))


def _target(name: str, *, lab: bool, **kw: object) -> Target:
    return Target(name=name, region="eu-west-1", policy_name="p", policy_document="{}", lab=lab, **kw)  # type: ignore[arg-type]


class _Cfg:
    def __init__(self, targets: dict[str, Target]) -> None:
        from types import SimpleNamespace

        self.station_id = "line1-station3"
        self.operator = "day-shift"
        self.qa_pin = "0042"
        self.targets = targets
        self.products = {"widget": SimpleNamespace(target=next(iter(targets)))}
        self.slots = {"s1": SimpleNamespace(product=None), "s2": SimpleNamespace(product="widget")}


def test_header_says_lab_or_production_in_words() -> None:
    lab = station_info(_Cfg({"lab-eu": _target("lab-eu", lab=True, account_id="123456789012")}))
    assert lab.lab and not lab.production
    assert lab.slot_products == {"s1": "widget", "s2": "widget"}
    text = target_line(lab).plain
    assert text.startswith("◆ LAB") and "123456789012" in text and "eu-west-1" in text

    prod = station_info(
        _Cfg({"prod-eu": _target("prod-eu", lab=False, role_arn="arn:aws:iam::111122223333:role/station")}),
        operator="night-shift",
    )
    assert prod.production and not prod.lab and prod.operator == "night-shift"
    text = target_line(prod).plain
    assert text.startswith("▲ PRODUCTION") and "111122223333" in text and "lab" not in text.lower()


def test_a_reserved_slot_says_so_instead_of_ready() -> None:
    from station.tui.operator.slot_card import banner_text
    from station.tui.state import CardState

    assert "READY" in str(banner_text(CardState(slot="s1")))
    reserved = str(banner_text(CardState(slot="s1", state="reserved")))
    assert "RESERVED" in reserved and "READY" not in reserved


@pytest.mark.parametrize(
    ("text", "scans", "rest"),
    [
        ("SIM0006\rSIM0007\n", ["SIM0006", "SIM0007"], ""),  # a fast scanner: CR, then LF, in one read
        ("SIM0006\r\nSIM0007\r\n", ["SIM0006", "SIM0007"], ""),  # CR LF is one end, not two
        ("SIM0006\rSIM00", ["SIM0006"], "SIM00"),  # the next scan still being typed
        ("SIM0006", [], "SIM0006"),
        ("\r\n\n", [], ""),  # Enter pressed on nothing: no scans
    ],
)
def test_split_scans(text: str, scans: list[str], rest: str) -> None:
    from station.tui.state import split_scans

    assert split_scans(text) == (scans, rest)


def test_a_card_reset_is_ready_again_and_a_shift_starts_from_zero() -> None:
    from station.tui.state import Shift

    card = CardState(slot="s1")
    card.apply(Event(kind="unit_started", serial="SN1", slot="s1"))
    card.apply(Event(kind="unit_finished", serial="SN1", slot="s1", outcome="FAIL", title="t"))
    assert card.outcome == Outcome.FAIL and card.serial == "SN1"
    card.reset()
    assert (card.outcome, card.serial, card.state, card.title) == (None, "", "idle", "")
    assert card.units_started == 1  # a late acceptance of that unit's scan still does not wipe a newer one

    shift = Shift(started_at=10.0)
    shift.counters.finished("SN1", Outcome.PASS, 20.0)
    shift.counters.finished("SN2", Outcome.FAIL, 30.0)
    nxt = shift.next(40.0)
    assert (nxt.number, nxt.started_at, nxt.counters.total) == (2, 40.0, 0)
    assert shift.summary() == {
        "shift": 1,
        "started_at": 10.0,
        "pass": 1,
        "fail": 1,
        "error": 0,
        "first_pass_yield": 0.5,
    }
