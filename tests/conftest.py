"""Suite-wide options. `--fuzz-long` gives the property-based robustness tests a much larger example budget."""

from __future__ import annotations

import os

FUZZ_LONG_ENV = "STATION_FUZZ_LONG"


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
