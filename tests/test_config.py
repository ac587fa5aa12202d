"""station.toml loading: typed result, every validation message naming file, line and field; policies."""

from __future__ import annotations

import copy
import json
import textwrap
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station import config
from station.config import SourceLocator, load_config, validate_config
from station.errors import ConfigError, InputError
from station.model import Target
from station.policy import LEAST_PRIVILEGE_POLICY, LEAST_PRIVILEGE_POLICY_JSON, is_over_broad, render_policy
from station.qapin import pin_matches

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CONFIGS = FIXTURES / "configs"

MINIMAL = """\
[station]
id = "line1"
ledger = "ledger.sqlite"

[targets.prod]
region = "eu-west-1"
policy_name = "station-device"

[products.sensor]
serial_pattern = "SN[0-9]{6}"
flasher = "prov1"
target = "prod"

[slots.slot1]
port = "/dev/ttyUSB0"
product = "sensor"
"""


def write(tmp_path: Path, text: str, name: str = "station.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (computed independently of the locator)."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.next_action
    return caught.value.message.splitlines()


def problem_for(lines: list[str], field: str) -> str:
    found = [line for line in lines if f" {field}: " in line or f"] {field}:" in line]
    assert found, f"no problem about {field!r} in {lines}"
    return found[0]


# ---- the good cases ----------------------------------------------------------------------------------------


def test_minimal_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.station_id == "line1"
    assert cfg.ledger_path == (tmp_path / "ledger.sqlite").resolve()
    target = cfg.targets["prod"]
    assert isinstance(target, Target)
    assert (target.region, target.port, target.key_type, target.lab) == ("eu-west-1", 8883, "ec-p256", False)
    assert target.thing_name_template == "{product}-{serial}"
    # No policy given: the least-privilege one, not something broad.
    assert json.loads(target.policy_document) == LEAST_PRIVILEGE_POLICY
    assert cfg.products["sensor"].validate_serial("SN123456\r\n") == "SN123456"
    assert cfg.slots["slot1"].baud == config.DEFAULT_BAUD
    assert cfg.target_for("sensor") is target


def test_on_reprovision_defaults_to_refuse_and_takes_only_refuse_or_replace(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).products["sensor"].on_reprovision == "refuse"
    replace = MINIMAL.replace('target = "prod"\n', 'target = "prod"\non_reprovision = "replace"\n')
    assert load_config(write(tmp_path, replace)).products["sensor"].on_reprovision == "replace"
    wrong = MINIMAL.replace('target = "prod"\n', 'target = "prod"\non_reprovision = "overwrite"\n')
    line = problem_for(problems(tmp_path, wrong), "on_reprovision")
    assert "'refuse' or 'replace'" in line and "overwrite" in line
    assert f":{line_of(wrong, 'on_reprovision')}" in line


def test_the_operator_screens_card_reset_and_bell(tmp_path: Path) -> None:
    from station.tui.api import station_info

    default = load_config(write(tmp_path, MINIMAL))
    assert (default.card_reset_s, default.bell) == (30.0, True)
    chosen = MINIMAL.replace(
        'ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\ncard_reset_s = 0\nbell = false\n'
    )
    cfg = load_config(write(tmp_path, chosen))
    assert (cfg.card_reset_s, cfg.bell) == (0.0, False)
    info = station_info(cfg)
    assert (info.card_reset_s, info.bell) == (0.0, False)  # what the operator screen is given
    wrong = MINIMAL.replace(
        'ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\ncard_reset_s = -5\nbell = "yes"\n'
    )
    lines = problems(tmp_path, wrong)
    assert "-5" in problem_for(lines, "card_reset_s")
    assert "true or false" in problem_for(lines, "bell")


def test_production_like_fixture() -> None:
    cfg = load_config(CONFIGS / "station.toml")
    assert cfg.station_id == "line1-station3" and cfg.operator == "day-shift" and cfg.qa_pin is None
    assert cfg.qa_pin_hash is not None and pin_matches("0042", cfg.qa_pin_hash)
    assert not pin_matches("0043", cfg.qa_pin_hash)
    assert "scrypt" not in repr(cfg)
    eu, us = cfg.targets["prod-eu"], cfg.targets["prod-us"]
    assert eu.account_id == "111122223333"  # taken from the role ARN
    assert eu.endpoint == "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
    assert json.loads(eu.policy_document) == LEAST_PRIVILEGE_POLICY  # read from ../policies/
    assert us.profile == "factory-us" and us.key_type == "ec-p384"
    assert us.issuer is not None
    assert Path(us.issuer.certificate_file) == (FIXTURES / "certs" / "factory-ca.pem").resolve()
    assert us.issuer.passphrase_env == "STATION_FACTORY_CA_PASSPHRASE"
    assert cfg.products["tracker"].options == {
        "security_tag": 16842753,
        "modem_firmware": "mfw_nrf91x1_2.0.1",
    }
    assert cfg.products["tracker"].flasher == "nrf91"
    assert list(cfg.slots) == ["slot1", "slot2", "slot3", "bench"]
    assert cfg.slots["bench"].product is None
    assert cfg.ledger_path == (CONFIGS / "ledger.sqlite").resolve()
    for target in cfg.targets.values():
        assert is_over_broad(render_policy(target, "111122223333")) is None


def test_lab_fixture_allows_static_credentials_and_a_broad_policy() -> None:
    cfg = load_config(CONFIGS / "lab-station.toml")
    target = cfg.targets["lab-eu"]
    assert target.lab and target.aws_access_key_id == "testing"
    assert target.endpoint_url == "http://127.0.0.1:5000"
    assert target.ca_file == str((FIXTURES / "certs" / "factory-ca.pem").resolve())
    reason = is_over_broad(target.policy_document)
    assert reason and "iot:*" in reason


def test_unknown_product_or_target_lookup_is_an_input_error(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(InputError, match="known: sensor"):
        cfg.product("sensr")
    with pytest.raises(InputError, match="known: prod"):
        cfg.target("nope")


# ---- the invalid fixtures ----------------------------------------------------------------------------------


def test_unknown_key_fixture_names_line_field_and_suggestion() -> None:
    path = CONFIGS / "invalid-unknown-key.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = path.read_text()
    lines = caught.value.message.splitlines()
    typo = problem_for(lines, "regoin")
    assert typo.startswith(f"{path}:{line_of(text, 'regoin =')}: [targets.prod] regoin")
    assert "Did you mean 'region'?" in typo
    missing = problem_for(lines, "region")
    assert missing.startswith(f"{path}:{line_of(text, '[targets.prod]')}:")  # the table that lacks it
    assert "eu-west-1" in missing


def test_reference_fixture() -> None:
    path = CONFIGS / "invalid-references.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = path.read_text()
    lines = caught.value.message.splitlines()
    assert problem_for(lines, "target").startswith(
        f"{path}:{line_of(text, 'prod-asia')}: [products.sensor] target"
    )
    assert "'prod-asia', which is not defined (known: prod)" in problem_for(lines, "target")
    assert problem_for(lines, "product").startswith(f"{path}:{line_of(text, 'sensr')}: [slots.slot1] product")


def test_values_fixture_reports_every_problem_in_file_order() -> None:
    path = CONFIGS / "invalid-values.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = path.read_text()
    lines = caught.value.message.splitlines()
    expected = {
        "id": ('id = "line 1"', "station id"),
        "qa_pin": ("qa_pin", "quoted string"),
        "region": ('region = "eu-west"', "AWS region"),
        "port": ("port = 70000", "1-65535"),
        "key_type": ("key_type", "ec-p256"),
        "thing_name_template": ("thing_name_template", "'/'"),
        "serial_pattern": ("serial_pattern", "regular expression"),
        "flasher": ("flasher", "prov1"),
        "baud": ("baud", "baud rate"),
    }
    for field, (needle, words) in expected.items():
        line = problem_for(lines, field)
        assert line.startswith(f"{path}:{line_of(text, needle)}:"), line
        assert words in line
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)
    assert f"({len(lines)} problems)" in caught.value.title


def test_static_credentials_fixture() -> None:
    with pytest.raises(ConfigError, match="lab targets only"):
        load_config(CONFIGS / "invalid-static-credentials.toml")


def test_syntax_error_fixture_names_the_line() -> None:
    path = CONFIGS / "invalid-syntax.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message.startswith(f"{path}:2: not valid TOML")


# ---- rules, one by one ---------------------------------------------------------------------------------------


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file"):
        load_config(tmp_path / "nope.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[station]\nid = "x"\noperator = "J\xf6rg"\n')
    with pytest.raises(ConfigError, match=r":3: the file is not UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("[station]\n", "[station]\nshift = 2\n"), "shift", "unknown key"),
        (("[slots.slot1]\n", "[slots.slot1]\nbuad = 9600\n"), "buad", "Did you mean 'baud'?"),
        (("[station]", "[stations]\nid = 1\n[station]"), "stations", "Did you mean 'station'?"),
        (('id = "line1"\n', ""), "id", "missing"),
        (('ledger = "ledger.sqlite"\n', ""), "ledger", "missing"),
        (('policy_name = "station-device"\n', ""), "policy_name", "missing"),
        (('flasher = "prov1"\n', ""), "flasher", "missing"),
        (('port = "/dev/ttyUSB0"\n', ""), "port", "missing"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nport = "8883"\n'), "port", "expected an integer"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nport = true\n'), "port", "expected an integer"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nlab = "yes"\n'), "lab", "true or false"),
        (('region = "eu-west-1"\n', 'region = "EU-WEST-1"\n'), "region", "AWS region"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\naccount_id = "1234"\n'), "account_id", "12-digit"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\naccount_id = 123456789012\n'), "account_id", "a string"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nrole_arn = "arn:aws:iam::1:role/x"\n'), "role_arn",
         "IAM role ARN"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nendpoint = "https://x.example.com"\n'), "endpoint",
         "without scheme"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\ncertificate_days = 0\n'), "certificate_days", "days"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nthing_name_template = "{product}"\n'),
         "thing_name_template", "every unit"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nca_file = "missing.pem"\n'), "ca_file", "does not exist"),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nendpoint_url = "127.0.0.1:5000"\n'), "endpoint_url",
         "http(s) URL"),
        (('serial_pattern = "SN[0-9]{6}"\n', 'serial_pattern = "SN[0-9]{6}"\noptions = 3\n'), "options",
         "a table"),
        (('port = "/dev/ttyUSB0"\n', 'port = "/dev/ttyUSB0"\nbaud = 10\n'), "baud", "baud rate"),
        (('ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\nqa_pin = "12"\n'), "qa_pin", "4-12 digits"),
    ],
)  # fmt: skip
def test_each_rule_names_line_and_field(
    tmp_path: Path, edit: tuple[str, str], field: str, words: str
) -> None:
    old, new = edit
    assert old in MINIMAL
    text = MINIMAL.replace(old, new, 1)
    lines = problems(tmp_path, text)
    line = problem_for(lines, field)
    assert words in line, line
    # The line number points at the key itself when it is in the file, else at its table.
    number = int(line.split(":")[1])
    source = text.splitlines()[number - 1]
    assert field in source or source.startswith("["), (line, source)


def test_policy_document_rules(tmp_path: Path) -> None:
    both = MINIMAL.replace(
        'policy_name = "station-device"\n',
        'policy_name = "station-device"\npolicy_document = "{}"\npolicy_file = "p.json"\n',
    )
    assert "not both" in problem_for(problems(tmp_path, both), "policy_file")
    bad_inline = MINIMAL.replace(
        'policy_name = "station-device"\n',
        'policy_name = "station-device"\npolicy_document = \'{"Version": \'\n',
    )
    assert "not valid JSON" in problem_for(problems(tmp_path, bad_inline), "policy_document")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.json").write_text('{"Statement": []}')
    empty = MINIMAL.replace(
        'policy_name = "station-device"\n', 'policy_name = "x"\npolicy_file = "policies/p.json"\n'
    )
    assert "Statement" in problem_for(problems(tmp_path, empty), "policy_file")
    (tmp_path / "policies" / "p.json").write_text(LEAST_PRIVILEGE_POLICY_JSON)
    cfg = load_config(write(tmp_path, empty))
    assert cfg.targets["prod"].policy_document == LEAST_PRIVILEGE_POLICY_JSON


def test_credentials_and_account_rules(tmp_path: Path) -> None:
    half = MINIMAL.replace(
        'region = "eu-west-1"\n', 'region = "eu-west-1"\nlab = true\naws_access_key_id = "k"\n'
    )
    assert "need both" in problem_for(problems(tmp_path, half), "aws_secret_access_key")
    mismatch = MINIMAL.replace(
        'region = "eu-west-1"\n',
        'region = "eu-west-1"\naccount_id = "111111111111"\nrole_arn = "arn:aws:iam::222222222222:role/s"\n',
    )
    assert "222222222222" in problem_for(problems(tmp_path, mismatch), "account_id")


def test_duplicate_ports_and_bad_names(tmp_path: Path) -> None:
    text = MINIMAL + '\n[slots.slot2]\nport = "/dev/ttyUSB0"\n\n[slots."bad name"]\nport = "/dev/ttyUSB9"\n'
    lines = problems(tmp_path, text)
    assert "already used by slot 'slot1'" in problem_for(lines, "port")
    assert any('[slots] "bad name": expected a slot name' in line for line in lines)


def test_issuer_table_rules(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[products.sensor]",
        '[targets.prod.issuer]\ncertificate_file = "ca.pem"\npassphrase = "oops"\n\n[products.sensor]',
    )
    lines = problems(tmp_path, text)
    assert "Did you mean 'passphrase_env'?" in problem_for(lines, "passphrase")
    assert "missing" in problem_for(lines, "key_file")
    assert "does not exist" in problem_for(lines, "certificate_file")
    assert problem_for(lines, "passphrase").split(":")[1] == str(line_of(text, "passphrase ="))


def test_sections_of_the_wrong_shape(tmp_path: Path) -> None:
    lines = problems(tmp_path, 'station = "x"\ntargets = 3\n')
    assert "expected a table" in lines[0] and ":1:" in lines[0]
    lines = problems(tmp_path, '[station]\nid = "x"\nledger = "l"\n[targets]\n')
    assert "at least one [targets.NAME]" in lines[0]


def test_empty_file_says_what_is_missing(tmp_path: Path) -> None:
    lines = problems(tmp_path, "")
    assert any("[station]" in line for line in lines) and any("[targets]" in line for line in lines)


def test_a_broken_target_is_not_reported_again_as_a_dangling_reference(tmp_path: Path) -> None:
    lines = problems(tmp_path, MINIMAL.replace('region = "eu-west-1"', 'region = "nowhere"'))
    assert len(lines) == 1 and "region" in lines[0]


# ---- the schema: unknown keys, types, defaults, the [station] settings -------------------------------------


def test_unknown_keys_are_refused_at_their_line_in_every_table(tmp_path: Path) -> None:
    text = MINIMAL.replace('ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\nstation_id = "x"\n')
    text = text.replace('target = "prod"\n', 'target = "prod"\nflash = "prov1"\n')
    text = text.replace("[slots.slot1]\n", '[slots.slot1]\nspeed = 9600\n[targets.prod.issuer]\nkey = "k"\n')
    path = write(tmp_path, text)
    lines = problems(tmp_path, text)
    # The attribute's name is not a key: only what the file format calls it (id) is.
    line = problem_for(lines, "station_id")
    assert line.startswith(f"{path}:{line_of(text, 'station_id =')}: [station] station_id: unknown key.")
    flash = problem_for(lines, "flash")
    assert flash.startswith(f"{path}:{line_of(text, 'flash =')}: [products.sensor] flash: unknown key.")
    assert "Did you mean 'flasher'?" in flash
    speed = problem_for(lines, "speed")
    assert speed.startswith(f"{path}:{line_of(text, 'speed =')}: [slots.slot1] speed: unknown key.")
    assert "Allowed: port, baud, product." in speed  # nothing close: every key the table takes
    key = problem_for(lines, "key")
    assert key.startswith(f"{path}:{line_of(text, 'key = ')}: [targets.prod.issuer] key: unknown key.")


@pytest.mark.parametrize(
    ("edit", "field", "expected"),
    [
        (('port = "/dev/ttyUSB0"\n', 'port = "/dev/ttyUSB0"\nbaud = "fast"\n'), "baud",
         "expected an integer, got 'fast' (a string)."),
        (('region = "eu-west-1"\n', "region = 5\n"), "region",
         "expected an AWS region such as 'eu-west-1', got 5 (a number)."),
        (('ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\ncleanup_interval_s = true\n'),
         "cleanup_interval_s", "expected seconds, got true (a boolean)."),
        (('ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\noperator = ["a"]\n'), "operator",
         "expected a string, got an array."),
        (('ledger = "ledger.sqlite"\n', "ledger = 1.5\n"), "ledger",
         "expected the ledger file's path, e.g. 'ledger.sqlite', got 1.5 (a number)."),
        (('region = "eu-west-1"\n', 'region = "eu-west-1"\nissuer = "ca.pem"\n'), "issuer",
         "expected a table ([targets.prod.issuer]), got 'ca.pem' (a string)."),
        (('ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\nlabels = 9100\n'), "labels",
         "expected a table ([station.labels]), got 9100 (a number)."),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_names_what_is_expected_and_what_was_found(
    tmp_path: Path, edit: tuple[str, str], field: str, expected: str
) -> None:
    old, new = edit
    text = MINIMAL.replace(old, new, 1)
    path = write(tmp_path, text)
    line = problem_for(problems(tmp_path, text), field)
    key_line = line_of(text, new.splitlines()[-1])
    assert line.startswith(f"{path}:{key_line}: [") and line.endswith(f"] {field}: {expected}"), line


def test_language_is_optional_and_a_language_code(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).language is None  # None: the locale decides
    for code in ("ja", "en", "pt_BR", "zh-Hant"):
        text = MINIMAL.replace("[station]\n", f'[station]\nlanguage = "{code}"\n')
        assert load_config(write(tmp_path, text)).language == code
    for wrong, words in (
        ('"Japanese!"', "a language code such as 'en' or 'ja', got 'Japanese!'"),
        ("1", "got 1"),
    ):
        text = MINIMAL.replace("[station]\n", f"[station]\nlanguage = {wrong}\n")
        line = problem_for(problems(tmp_path, text), "language")
        assert line.startswith(f"{tmp_path / 'station.toml'}:2: [station] language: expected a language code")
        assert words in line


def test_station_defaults_and_cross_field_rules(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert (cfg.cleanup_interval_s, cfg.cleanup_max_interval_s) == (10.0, 30.0)
    assert (cfg.operator, cfg.qa_pin, cfg.qa_pin_hash, cfg.labels, cfg.budget) == (None,) * 5
    slow = MINIMAL.replace("[station]\n", "[station]\ncleanup_interval_s = 45\n")
    cfg = load_config(write(tmp_path, slow))  # the maximum follows a longer first interval
    assert (cfg.cleanup_interval_s, cfg.cleanup_max_interval_s) == (45.0, 45.0)
    assert isinstance(cfg.cleanup_max_interval_s, float)
    shorter = slow.replace("[station]\n", "[station]\ncleanup_max_interval_s = 20\n")
    assert "at least cleanup_interval_s (45 s), got 20" in problem_for(
        problems(tmp_path, shorter), "cleanup_max_interval_s"
    )
    shared = MINIMAL.replace('ledger = "ledger.sqlite"', 'ledger = "dynamodb://units?region=eu-west-1"')
    assert load_config(write(tmp_path, shared)).ledger_path == "dynamodb://units?region=eu-west-1"
    budget = MINIMAL + '\n[budget]\nstore = "dynamodb://b?region=eu-west-1"\n'
    assert load_config(write(tmp_path, budget)).budget == config.BudgetSettings(
        "dynamodb://b?region=eu-west-1"
    )
    wrong = MINIMAL + '\n[budget]\nstore = "s3://b"\nfallback_share = 2\n'
    lines = problems(tmp_path, wrong)
    assert "expected 'dynamodb://TABLE?region=REGION', got 's3://b'" in problem_for(lines, "store")
    assert "between 0 and 1, got 2" in problem_for(lines, "fallback_share")


def test_families_are_the_installed_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL.replace('flasher = "prov1"', 'flasher = "acme"')
    assert "got 'acme'" in problem_for(problems(tmp_path, text), "flasher")
    monkeypatch.setattr(config.flasher_plugins, "available", lambda: ["acme", "prov1"])
    assert load_config(write(tmp_path, text)).products["sensor"].flasher == "acme"


# ---- the source locator --------------------------------------------------------------------------------------


def test_locator_handles_quotes_dotted_keys_and_multiline_strings() -> None:
    text = textwrap.dedent(
        """\
        # comment: region = "x"
        [station]
        id = "a"
        [targets."prod.eu"]
        policy_document = '''
        region = "not a key, inside a string"
        '''
        region = "eu-west-1"
        issuer.certificate_file = "ca.pem"
        [ targets . 'prod.eu' . issuer ]
        key_file = "k"
        [products.p.options]
        baud = 1
        """
    )
    loc = SourceLocator(text)
    assert loc.line_of(("station", "id")) == 3
    assert loc.line_of(("targets", "prod.eu")) == 4
    assert loc.line_of(("targets", "prod.eu", "region")) == 8
    assert loc.line_of(("targets", "prod.eu", "issuer", "certificate_file")) == 9
    assert loc.line_of(("targets", "prod.eu", "issuer", "key_file")) == 11
    assert loc.line_of(("targets", "prod.eu", "missing")) == 4  # falls back to its table
    assert loc.line_of(("products", "p")) == 12  # implied table: its first sub-table
    assert loc.line_of(("nowhere",)) is None


# ---- policies ----------------------------------------------------------------------------------------------------


def _target(document: str, region: str = "eu-west-1") -> Target:
    return Target(name="t", region=region, policy_name="p", policy_document=document)


def test_render_policy_fills_region_and_account() -> None:
    rendered = json.loads(render_policy(_target(LEAST_PRIVILEGE_POLICY_JSON), "123456789012"))
    resources = [s["Resource"] for s in rendered["Statement"]]
    assert resources[0] == "arn:aws:iot:eu-west-1:123456789012:client/${iot:Connection.Thing.ThingName}"
    assert all(r.startswith("arn:aws:iot:eu-west-1:123456789012:") for r in resources)


def test_render_policy_replaces_whole_words_only() -> None:
    doc = json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": "REGIONAL/ACCOUNT"}]}
    )
    rendered = render_policy(_target(doc), "123456789012")
    assert "REGIONAL/123456789012" in rendered


def test_render_policy_refuses_a_bad_account() -> None:
    with pytest.raises(InputError, match="12-digit"):
        render_policy(_target(LEAST_PRIVILEGE_POLICY_JSON), "12345")
    with pytest.raises(ConfigError, match="not valid JSON"):
        render_policy(_target("{nope"), "123456789012")


def _policy(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.mark.parametrize(
    ("policy", "broad"),
    [
        (_policy({"Effect": "Allow", "Action": "iot:*", "Resource": "*"}), True),
        (_policy({"Effect": "Allow", "Action": ["iot:Connect", "iot:*"], "Resource": ["x", "*"]}), True),
        (_policy({"Effect": "Allow", "Action": "*", "Resource": "*"}), True),
        (_policy({"Effect": "Allow", "Action": "IOT:*", "Resource": "*"}), True),
        (_policy({"Effect": "Allow", "Action": "iot:*", "Resource": "arn:aws:iot:*:*:*"}), True),
        (_policy({"Effect": "Allow", "NotAction": "iot:DeleteThing", "Resource": "*"}), True),
        (json.dumps({"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}), True),
        (_policy({"Effect": "Deny", "Action": "iot:*", "Resource": "*"}), False),
        (_policy({"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}), False),
        (
            _policy({"Effect": "Allow", "Action": "iot:*", "Resource": "arn:aws:iot:eu-west-1:1:topic/x"}),
            False,
        ),
        (LEAST_PRIVILEGE_POLICY_JSON, False),
    ],
)
def test_is_over_broad(policy: str, broad: bool) -> None:
    reason = is_over_broad(policy)
    assert (reason is not None) == broad
    if reason:
        assert reason.startswith("statement 1")


def test_is_over_broad_refuses_invalid_json() -> None:
    with pytest.raises(InputError):
        is_over_broad("{")
    with pytest.raises(InputError):
        is_over_broad("[]")


def test_policy_fixture_is_the_least_privilege_policy() -> None:
    text = (FIXTURES / "policies" / "thing-policy.json").read_text()
    assert json.loads(text) == LEAST_PRIVILEGE_POLICY
    assert "${iot:Connection.Thing.ThingName}" in text and "REGION:ACCOUNT" in text
    assert is_over_broad(text) is None


# ---- property: any TOML-shaped data gives a config or a ConfigError --------------------------------------------

scalars = st.one_of(
    st.text(max_size=12), st.integers(-5, 70000), st.booleans(), st.floats(allow_nan=False), st.just([1, "a"])
)
values = st.one_of(scalars, st.dictionaries(st.text(max_size=6), scalars, max_size=3))


def _tables(data: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for key, value in data.items():
        if isinstance(value, dict):
            out += _tables(value, (*prefix, key))
    return out


BASE = tomllib.loads(MINIMAL)
TABLES = _tables(BASE)


@settings(max_examples=150, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(TABLES),
            st.sampled_from(
                ["id", "ledger", "region", "port", "target", "product", "lab", "issuer", "x", "options"]
            ),
            st.one_of(st.none(), values),
        ),
        max_size=6,
    )
)
def test_any_edit_of_a_valid_config_gives_a_config_or_a_config_error(edits: list) -> None:
    data = copy.deepcopy(BASE)
    for table_path, key, value in edits:
        table = data
        for part in table_path:
            table = table.get(part) if isinstance(table.get(part), dict) else {}
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    try:
        validate_config(data, path=Path("/nonexistent/station.toml"), text=MINIMAL)
    except ConfigError as error:
        assert error.message.startswith("/nonexistent/station.toml")
