"""Property-based robustness: every outside-input entry point answers with a result or a clear StationError.

Entry points: certificate/key/PKCS#12 import (and what the station does with an accepted certificate:
acceptance, description, certificate id), station.toml, scans, the QA PIN hash, CLI arguments. For each, any
input ends in a value or a `StationError` with title, message and next action — never another exception
(a Rust panic included), never a stall. Budget: see fuzzing.py (`--fuzz-long` for the long run).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from fuzzing import (
    CONFIG_SEEDS,
    CONFIGS,
    FUZZ,
    KEY_SEEDS,
    MAX_SECONDS_PER_INPUT,
    P12_SEEDS,
    ROOT,
    certificate_inputs,
    mutated_bytes,
    mutated_text,
    timed,
)
from hypothesis import given
from hypothesis import strategies as st

from station import identity, naming, qapin
from station.config import load_config
from station.errors import StationError
from station.tui.state import parse_scan

PASSWORDS = st.one_of(
    st.none(),
    st.sampled_from(["", "secret", "\x00", "secret\x00", "a" * 5000]),
    st.text(max_size=24),
    st.binary(max_size=24),
)


def _clear(error: BaseException | None) -> None:
    """No exception, or a StationError a person can act on."""
    if error is None:
        return
    assert isinstance(error, StationError), f"{type(error).__name__}: {error}"
    assert error.title and error.message and error.next_action


def _accepted_certificate_is_whole(ident: identity.Identity) -> None:
    """What the station does with an accepted certificate must not fail on a lazily parsed field."""
    pem = ident.certificate_pem
    facts = identity.describe(pem)
    assert facts["certificate_id"] == ident.certificate_id == identity.certificate_id(pem)
    _, error, _ = timed(lambda: identity.check_aws_acceptance(pem))
    _clear(error)


@FUZZ
@given(data=certificate_inputs(), password=PASSWORDS)
def test_certificate_import(data: bytes, password: str | bytes | None) -> None:
    result, error, seconds = timed(lambda: identity.load_identity_bytes(data, password=password))
    assert seconds < MAX_SECONDS_PER_INPUT
    _clear(error)
    if result is not None:
        _accepted_certificate_is_whole(result)


@FUZZ
@given(data=st.sampled_from(P12_SEEDS).flatmap(mutated_bytes), password=PASSWORDS)
def test_pkcs12_import(data: bytes, password: str | bytes | None) -> None:
    result, error, seconds = timed(lambda: identity.load_identity_bytes(data, password=password))
    assert seconds < MAX_SECONDS_PER_INPUT
    _clear(error)
    if result is not None:
        _accepted_certificate_is_whole(result)


@FUZZ
@given(key=st.sampled_from(KEY_SEEDS).flatmap(mutated_bytes), password=PASSWORDS)
def test_key_file_import(key: bytes, password: str | bytes | None) -> None:
    cert = (ROOT / "fixtures" / "certs" / "ec-p256.pem").read_bytes()
    result, error, seconds = timed(
        lambda: identity.load_identity_bytes(cert, key_data=key, password=password)
    )
    assert seconds < MAX_SECONDS_PER_INPUT
    _clear(error)
    if result is not None:
        assert result.private_key is not None
        _clear(timed(lambda: identity.check_identity(result))[1])


def _config_folder() -> Path:
    """A scratch copy of fixtures/ layout: configs/ to write into, certs/ and policies/ linked beside it."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
    (root / "configs").mkdir()
    for name in ("certs", "policies"):
        os.symlink(ROOT / "fixtures" / name, root / name)
    return root / "configs"


CONFIG_DIR = _config_folder()


@FUZZ
@given(
    text=st.sampled_from(CONFIG_SEEDS).flatmap(mutated_text), encoding=st.sampled_from(["utf-8", "utf-16"])
)
def test_station_toml(text: str, encoding: str) -> None:
    path = CONFIG_DIR / "station.toml"
    path.write_bytes(text.encode(encoding, "surrogatepass"))
    _, error, seconds = timed(lambda: load_config(path))
    assert seconds < MAX_SECONDS_PER_INPUT
    _clear(error)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda d, s: d + ":" + s, st.text("0123456789", min_size=1, max_size=6000), st.text(max_size=20)
        ),
        st.text(max_size=10).map(lambda t: t * 2000),
    )
)
def test_scans(text: str) -> None:
    result, error, seconds = timed(lambda: parse_scan(text, ["s1", "s2", "bench-a"]))
    assert seconds < MAX_SECONDS_PER_INPUT
    _clear(error)
    if result is not None:
        slot, serial = result
        assert slot in (None, "s1", "s2", "bench-a") and isinstance(serial, str)
        _clear(timed(lambda: naming.validate_serial(serial, "SN[0-9]{6}"))[1])


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=120),
        st.from_regex(
            r"scrypt\$\d{1,7}\$\d{1,2}\$\d\$[A-Za-z0-9+/=]{16,30}\$[A-Za-z0-9+/=]{40,50}", fullmatch=True
        ),
    )
)
def test_pin_hash_in_the_config(text: str) -> None:
    _, error, seconds = timed(lambda: qapin.parse_pin_hash(text))
    assert seconds < MAX_SECONDS_PER_INPUT
    _clear(error)


@pytest.fixture(scope="module")
def empty_ledger() -> Path:
    from station.ledger import open_ledger

    path = Path(tempfile.mkdtemp(prefix="fuzz-ledger-")) / "ledger.sqlite"
    with open_ledger(path):
        pass
    return path


ARG = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=60)


@FUZZ
@given(
    argv=st.one_of(
        st.tuples(st.just("show"), ARG),
        st.tuples(st.just("units"), st.just("--outcome"), ARG),
        st.tuples(st.just("export"), st.just("--format"), ARG),
        st.tuples(st.just("audit"), ARG),
        st.lists(ARG, max_size=4).map(tuple),
    )
)
def test_cli_arguments(argv: tuple[str, ...], empty_ledger: Path) -> None:
    from station.cli import main

    if argv and argv[0] in ("demo", "lab", "sim", "run", "provision", "reconcile", "preflight", "register"):
        return  # these start servers or talk to devices/AWS; their arguments are checked by argparse too
    args = (
        [*argv, "--ledger", str(empty_ledger)]
        if argv[:1] in (("show",), ("units",), ("audit",))
        else list(argv)
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result, error, seconds = timed(lambda: main(args))
    assert seconds < MAX_SECONDS_PER_INPUT
    if isinstance(error, SystemExit):  # argparse refusing the arguments
        assert error.code in (0, 2)
        return
    assert error is None, f"{type(error).__name__}: {error}"
    assert result in (0, 2, 3, 4, 5)


def test_the_config_folder_mirrors_the_fixtures() -> None:
    """The config property would test only refusals if the scratch layout did not resolve the fixture paths."""
    (CONFIG_DIR / "station.toml").write_text(CONFIG_SEEDS[0])
    assert load_config(CONFIG_DIR / "station.toml").station_id == "line1-station3"
    assert (CONFIGS / "station.toml").read_text() == CONFIG_SEEDS[0]
