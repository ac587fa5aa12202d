"""Serial validation and thing-name rendering: plain messages for bad scans, AWS's thing-name rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station import naming
from station.errors import InputError, StationError

PATTERN = r"SA[0-9]{8}"


def test_a_good_scan_is_trimmed_and_accepted() -> None:
    # Scanners append CR/LF; that is not part of the serial.
    assert naming.validate_serial("SA12345678\r\n", PATTERN, product="sensor-a") == "SA12345678"
    assert naming.validate_serial("  SA00000001", re.compile(PATTERN)) == "SA00000001"


@pytest.mark.parametrize(
    ("scan", "expected_words"),
    [
        ("SA1234567", "does not match"),  # one digit short
        ("SA123456789", "does not match"),  # double-scan tail: the whole serial must match
        ("XSA12345678", "does not match"),
        ("", "empty"),
        ("   \r\n", "empty"),
        ("SA1234\x005678", "control character"),
        ("S" * 500, "longer than"),
    ],
)
def test_a_mistyped_scan_is_a_clear_input_error(scan: str, expected_words: str) -> None:
    with pytest.raises(InputError) as caught:
        naming.validate_serial(scan, PATTERN, product="sensor-a")
    error = caught.value
    assert expected_words in error.message
    assert "Scan the unit's label again" in error.next_action
    if expected_words == "does not match":
        assert "'sensor-a'" in error.message and PATTERN in error.message


def test_long_scans_are_cut_in_messages() -> None:
    with pytest.raises(InputError) as caught:
        naming.validate_serial("S" * 100 + "X", PATTERN)
    assert "S" * 60 not in caught.value.message
    assert "(101 characters)" in caught.value.message


def test_a_bad_serial_pattern_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not a valid regular expression"):
        naming.compile_serial_pattern("SN[0-9")
    with pytest.raises(InputError):
        naming.compile_serial_pattern("")


def test_render_default_template() -> None:
    assert naming.render_thing_name("{product}-{serial}", product="sensor-a", serial="SA12345678") == (
        "sensor-a-SA12345678"
    )
    assert (
        naming.render_thing_name("{product}_{device_id}", {"product": "gw", "device_id": "AA:BB"})
        == "gw_AA:BB"
    )


def test_thing_name_for_validates_the_scan_first() -> None:
    name = naming.thing_name_for(
        "{product}-{serial}", product="sensor-a", serial="SA12345678\n", pattern=PATTERN
    )
    assert name == "sensor-a-SA12345678"
    with pytest.raises(InputError, match="does not match"):
        naming.thing_name_for("{product}-{serial}", product="sensor-a", serial="SA1", pattern=PATTERN)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 129, "129 characters"),
        ("sensor/1", "'/'"),
        ("sensor 1", "' '"),
        ("sensör", "'ö'"),
    ],
)
def test_thing_names_follow_aws_rules(name: str, reason: str) -> None:
    assert reason in (naming.thing_name_problem(name) or "")
    with pytest.raises(InputError) as caught:
        naming.check_thing_name(name)
    assert reason in caught.value.message


def test_thing_name_limits() -> None:
    assert naming.check_thing_name("a" * 128) == "a" * 128
    assert naming.check_thing_name("Az09:_-") == "Az09:_-"


def test_rendered_name_with_a_bad_serial_character_is_refused() -> None:
    with pytest.raises(InputError, match="contains '/'"):
        naming.render_thing_name("{product}-{serial}", product="p", serial="AB/12")


def test_rendered_name_too_long_is_refused() -> None:
    with pytest.raises(InputError, match="at most 128"):
        naming.render_thing_name("{product}-{serial}", product="p" * 100, serial="s" * 40)


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{product}", "no {serial}"),
        ("{product}/{serial}", "contains '/'"),
        ("{serial.__class__}", "allowed fields"),
        ("{serial:>99999}", "allowed fields"),
        ("{serial!r}", "allowed fields"),
        ("{unknown}-{serial}", "allowed fields"),
        ("{serial", "malformed"),
        ("", "empty"),
    ],
)
def test_bad_templates_are_refused(template: str, words: str) -> None:
    with pytest.raises(InputError) as caught:
        naming.validate_template(template)
    assert words in caught.value.message


def test_a_field_nobody_supplied_is_named() -> None:
    with pytest.raises(InputError, match=r"\{device_id\}"):
        naming.render_thing_name("{product}-{device_id}", product="p", serial="1")


@settings(max_examples=200, deadline=None)
@given(scan=st.text(max_size=200), pattern=st.sampled_from([PATTERN, r".+", r"[A-Z0-9-]{4,20}", r"\d+"]))
def test_any_scan_gives_a_serial_or_a_station_error(scan: str, pattern: str) -> None:
    try:
        serial = naming.validate_serial(scan, pattern)
    except StationError:
        return
    assert re.fullmatch(pattern, serial)
    assert serial == serial.strip()


@settings(max_examples=200, deadline=None)
@given(pattern=st.text(max_size=60))
def test_any_pattern_compiles_or_gives_a_station_error(pattern: str) -> None:
    try:
        compiled = naming.compile_serial_pattern(pattern)
    except StationError:
        return
    assert compiled.pattern == pattern


@settings(max_examples=300, deadline=None)
@given(template=st.text(max_size=60), product=st.text(max_size=40), serial=st.text(max_size=40))
def test_any_template_and_values_give_a_valid_name_or_a_station_error(
    template: str, product: str, serial: str
) -> None:
    try:
        name = naming.render_thing_name(template, product=product, serial=serial, device_id=serial)
    except StationError:
        return
    assert naming.THING_NAME_RE.fullmatch(name) and len(name) <= naming.THING_NAME_MAX


@settings(max_examples=200, deadline=None)
@given(serial=st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_scan_to_thing_name_never_crashes(serial: str) -> None:
    try:
        name = naming.thing_name_for("{product}-{serial}", product="sensor-a", serial=serial, pattern=r".+")
    except StationError:
        return
    assert name.startswith("sensor-a-") and naming.thing_name_problem(name) is None
