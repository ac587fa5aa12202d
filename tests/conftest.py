"""Suite-wide options. `--fuzz-long` gives the property-based robustness tests a much larger example budget."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from station import i18n

FUZZ_LONG_ENV = "STATION_FUZZ_LONG"

# The suite asserts English text: a developer's Japanese (or other) locale must not change what `station`
# prints, in this process or in the commands the tests start. Tests of other languages ask for them.
if i18n.language_from_environment() not in ("", i18n.DEFAULT_LANGUAGE):
    for _name in ("LC_ALL", "LC_MESSAGES"):
        os.environ.pop(_name, None)
    os.environ["LANG"] = "C.UTF-8"


@pytest.fixture(autouse=True)
def english() -> Iterator[None]:
    """Every test starts in English, and a test that switches language cannot leak it into the next one."""
    i18n.set_language("en")
    yield
    i18n.set_language("en")


def pytest_addoption(parser) -> None:  # type: ignore[no-untyped-def]
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        default=False,
        help="run the property-based robustness tests (tests/robustness) with a large example budget "
        "(minutes instead of seconds); see benchmarks/README.md",
    )


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    # Read by tests/robustness/fuzzing.py when the test modules are imported (after this hook).
    if config.getoption("--fuzz-long"):
        os.environ[FUZZ_LONG_ENV] = "1"
