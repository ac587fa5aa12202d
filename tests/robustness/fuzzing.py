"""Shared pieces of the property-based robustness tests: example budgets, seeds and byte/text mutators.

The default budget keeps `uv run pytest` fast (a few seconds for all of tests/robustness); `--fuzz-long`
(tests/conftest.py) raises it a hundredfold. Each property also bounds the time one input may take, so a stall
(super-linear work) fails the test instead of hanging it.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
CERTS = ROOT / "fixtures" / "certs"
CONFIGS = ROOT / "fixtures" / "configs"

LONG = os.environ.get("STATION_FUZZ_LONG") == "1"
EXAMPLES = 3000 if LONG else 30
# Generous on a shared 2-core machine; benchmarks/fuzz_report.py measures the real figure (< 1 s).
MAX_SECONDS_PER_INPUT = 5.0

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,  # the quick run is the same on every machine; the long run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def seeds(*names: str) -> list[bytes]:
    return [(CERTS / name).read_bytes() for name in names]


CERT_SEEDS = seeds(
    "ec-p256.pem", "rsa-2048.pem", "factory-leaf.pem", "keychain-client.cer", "bad-sha1.pem", "ec-p384.pem"
)
P12_SEEDS = seeds("ec-p256-secret.p12", "keychain-client.p12", "cert-only.p12")
KEY_SEEDS = seeds("ec-p256.key", "rsa-2048.key", "ec-p384.key")
CONFIG_SEEDS = [(CONFIGS / name).read_text() for name in ("station.toml", "lab-station.toml")]


def der_of(pem: bytes) -> bytes:
    """The DER inside the first PEM block (mutating DER reaches the parser; mutating base64 rarely does)."""
    lines = pem.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(b"-----BEGIN"))
    end = next(i for i, line in enumerate(lines) if line.startswith(b"-----END"))
    return base64.b64decode(b"".join(lines[start + 1 : end]))


def as_pem(der: bytes, label: bytes = b"CERTIFICATE") -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    wrapped = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN " + label + b"-----\n" + wrapped + b"\n-----END " + label + b"-----\n"


_INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x80",
    b"\x30\x82\xff\xff",
    b"\x02\x04\x7f\xff\xff\xff",
    b"-----BEGIN CERTIFICATE-----\n",
]


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with 1-4 mutations: flips, overwrites, inserts, deletes, truncation, duplication."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        elif op == "splice":
            data[pos:pos] = bytes(data) * draw(st.integers(1, 3))
    return bytes(data)


def certificate_inputs() -> st.SearchStrategy[bytes]:
    """Mutated certificates as DER, as re-wrapped PEM, and as mutated PEM text."""
    ders = [der_of(s) if s.startswith(b"-----") else s for s in CERT_SEEDS]
    as_der = st.sampled_from(ders).flatmap(mutated_bytes)
    return st.one_of(as_der, as_der.map(as_pem), st.sampled_from(CERT_SEEDS).flatmap(mutated_bytes))


@st.composite
def mutated_text(draw: st.DrawFn, base: str) -> str:
    """`base` with 1-4 line-level or character-level mutations, including TOML's sharp edges."""
    lines = base.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "insert", "chars", "nest", "nul", "swap"]))
        pos = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "drop" and lines:
            del lines[pos]
        elif op == "dup" and lines:
            lines[pos:pos] = [lines[pos]] * draw(st.integers(1, 5))
        elif op == "insert":
            lines.insert(pos, draw(st.text(max_size=40)) + "\n")
        elif op == "chars" and lines:
            line = lines[pos]
            cut = draw(st.integers(0, len(line)))
            lines[pos] = line[:cut] + draw(st.text(max_size=8)) + line[cut + draw(st.integers(0, 4)) :]
        elif op == "nest":
            depth = draw(st.integers(1, 3000))
            lines.insert(pos, "deep = " + "[" * depth + "]" * depth + "\n")
        elif op == "nul" and lines:
            lines[pos] = lines[pos].replace('"', '"\\u0000', 1)
        elif op == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[pos], lines[other] = lines[other], lines[pos]
    return "".join(lines)


def timed(call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """(result, exception, seconds) of `call()`; BaseException too, so a panic is seen, not propagated."""
    started = time.perf_counter()
    try:
        result = call()
    except BaseException as error:  # the properties inspect the type
        return None, error, time.perf_counter() - started
    return result, None, time.perf_counter() - started
