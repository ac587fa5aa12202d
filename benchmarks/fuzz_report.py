"""Feed N mutated inputs of each kind to the station's input entry points and print what happened.

Usage: uv run python benchmarks/fuzz_report.py [--n 500] [--seed 10]

Kinds: certificate imports (mutated PEM/DER, with odd passwords), PKCS#12 (mutated, odd passwords), key files
(mutated, beside a good certificate), station.toml (mutated fixtures, binary, UTF-16, oversized, deep
nesting), scans typed into the line (unicode, control characters, 10k characters, `N:` prefixes), the QA PIN
hash, and CLI arguments (`station.cli.main`, read-only commands). An accepted certificate is also described and
checked against AWS's rules, as the station would.

Each input ends as: accepted (a value), clear error (a StationError with title, message and next action), or
crash (any other exception, a Rust panic included). "max s" is the slowest single input. Issue 10's bar:
crash 0, max time per input < 1 s. It measures; it asserts nothing. Everything runs in this process, offline.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / "fixtures" / "certs"
CONFIGS = ROOT / "fixtures" / "configs"
sys.path.insert(0, str(ROOT))

from station import identity, naming, qapin  # noqa: E402
from station.config import load_config  # noqa: E402
from station.errors import StationError  # noqa: E402
from station.tui.state import parse_scan  # noqa: E402

INTERESTING = [b"\x00", b"\xff", b"\x80", b"\x30\x82\xff\xff", b"\x02\x04\x7f\xff\xff\xff"]


def _der(pem: bytes) -> bytes:
    lines = pem.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(b"-----BEGIN"))
    end = next(i for i, line in enumerate(lines) if line.startswith(b"-----END"))
    return base64.b64decode(b"".join(lines[start + 1 : end]))


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(
        rng.choice((1, 1, 1, 2, 3, 4))
    ):  # mostly one change: the file still parses, fields may not
        op = rng.choice(["flip", "set", "insert", "delete", "truncate", "duplicate", "splice"])
        pos = rng.randint(0, max(0, len(out) - 1))
        if op == "flip" and out:
            out[pos] ^= 1 << rng.randint(0, 7)
        elif op == "set" and out:
            out[pos] = rng.randint(0, 255)
        elif op == "insert":
            out[pos:pos] = rng.choice([*INTERESTING, rng.randbytes(rng.randint(1, 16))])
        elif op == "delete":
            del out[pos : pos + rng.randint(1, 32)]
        elif op == "truncate":
            del out[pos:]
        elif op == "duplicate":
            out[pos:pos] = out[pos : pos + rng.randint(1, 64)]
        elif op == "splice":
            out[pos:pos] = bytes(out) * rng.randint(1, 3)
    return bytes(out)


def password(rng: random.Random) -> str | bytes | None:
    return rng.choice(
        [
            None,
            "",
            "secret",
            "\x00",
            "se\x00cret",
            "ü" * 3,
            "a" * 5000,
            rng.randbytes(rng.randint(0, 20)),
            "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 12))),
        ]
    )


def unicode_text(rng: random.Random, size: int) -> str:
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x2FF), (0x300, 0x36F), (0x4E00, 0x4E80), (0x1F600, 0x1F64F)]
    chars = []
    for _ in range(size):
        low, high = rng.choice(pools)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


# --------------------------------------------------------------------------------------------------------
# One generator + one call per kind


def _accepted(ident: Any) -> Any:
    pem = ident.certificate_pem
    identity.describe(pem)
    identity.certificate_id(pem)
    with contextlib.suppress(StationError):
        identity.check_aws_acceptance(pem)
    return ident


def kind_certificates(rng: random.Random) -> Callable[[], Any]:
    seeds = [CERTS / n for n in ("ec-p256.pem", "rsa-2048.pem", "factory-leaf.pem", "keychain-client.cer",
                                 "bad-sha1.pem", "ec-p384.pem", "bad/bad-subject.crt", "bad/bad-issuer.der")]  # fmt: skip
    seed = rng.choice(seeds).read_bytes()
    der = _der(seed) if seed.startswith(b"-----") else seed
    choice = rng.random()
    if choice < 0.4:
        data = mutate(rng, der)
    elif choice < 0.8:
        data = _pem(mutate(rng, der))
    elif choice < 0.95:
        data = mutate(rng, seed)
    else:
        data = b"-----BEGIN CERTIFICATE-----\n" * rng.randint(1, 37449)
    pw = password(rng) if rng.random() < 0.3 else None  # a certificate needs none; odd ones are refused
    return lambda: _accepted(identity.load_identity_bytes(data, password=pw))


def kind_pkcs12(rng: random.Random) -> Callable[[], Any]:
    seed = (CERTS / rng.choice(["ec-p256-secret.p12", "keychain-client.p12", "cert-only.p12"])).read_bytes()
    data = mutate(rng, seed) if rng.random() < 0.8 else seed
    pw = password(rng)
    return lambda: _accepted(identity.load_identity_bytes(data, password=pw))


def kind_keys(rng: random.Random) -> Callable[[], Any]:
    cert = (CERTS / "ec-p256.pem").read_bytes()
    key = mutate(rng, (CERTS / rng.choice(["ec-p256.key", "rsa-2048.key", "ec-p384.key"])).read_bytes())
    pw = password(rng)
    return lambda: _accepted(identity.load_identity_bytes(cert, key_data=key, password=pw))


_CONFIG_DIR: Path | None = None


def _config_dir() -> Path:
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        root = Path(tempfile.mkdtemp(prefix="fuzz-report-"))
        (root / "configs").mkdir()
        for name in ("certs", "policies"):
            os.symlink(ROOT / "fixtures" / name, root / name)
        _CONFIG_DIR = root / "configs"
    return _CONFIG_DIR


def kind_config(rng: random.Random) -> Callable[[], Any]:
    text = (CONFIGS / rng.choice(["station.toml", "lab-station.toml"])).read_text()
    lines = text.splitlines(keepends=True)
    choice = rng.random()
    if choice < 0.05:
        data = rng.randbytes(rng.randint(1, 4096))
    elif choice < 0.1:
        data = text.encode("utf-16")
    elif choice < 0.13:
        data = text.encode() + b"#" * (10 << 20)
    elif choice < 0.2:
        depth = rng.randint(100, 6000)
        data = (text + "deep = " + "[" * depth + "]" * depth + "\n").encode()
    elif choice < 0.5:
        data = mutate(rng, text.encode())
    else:
        for _ in range(rng.randint(1, 4)):
            pos = rng.randint(0, len(lines) - 1)
            op = rng.choice(["drop", "dup", "insert", "nul", "chars"])
            if op == "drop":
                del lines[pos]
            elif op == "dup":
                lines[pos:pos] = [lines[pos]] * rng.randint(1, 5)
            elif op == "insert":
                lines.insert(pos, unicode_text(rng, rng.randint(0, 40)) + "\n")
            elif op == "nul":
                lines[pos] = lines[pos].replace('"', '"\\u0000', 1)
            else:
                cut = rng.randint(0, len(lines[pos]))
                lines[pos] = lines[pos][:cut] + unicode_text(rng, rng.randint(1, 6)) + lines[pos][cut:]
        data = "".join(lines).encode("utf-8", "surrogatepass")
    path = _config_dir() / "station.toml"
    path.write_bytes(data)
    return lambda: load_config(path)


def kind_scans(rng: random.Random) -> Callable[[], Any]:
    choice = rng.random()
    if choice < 0.3:
        text = unicode_text(rng, rng.randint(0, 40))
    elif choice < 0.5:
        text = f"{rng.choice(['', '2', '9', '0', '12', '٣', '²', 'bench-a', 's1'])}:{unicode_text(rng, 12)}"
    elif choice < 0.65:
        text = "7" * rng.randint(1, 6000) + ":SN" + str(rng.randint(0, 999999))
    elif choice < 0.8:
        text = unicode_text(rng, rng.randint(1000, 10000))
    else:
        text = f"SN{rng.randint(0, 999999):06d}" + rng.choice(
            ["", "\r\n", "\x00", "\t", " " * 50, "\x1b[31m"]
        )

    def scan() -> Any:
        slot, serial = parse_scan(text, ["s1", "s2", "bench-a"])
        return slot, naming.validate_serial(serial, "SN[0-9]{6}")

    return scan


def kind_pin_hash(rng: random.Random) -> Callable[[], Any]:
    good = qapin.hash_pin("0042", salt=b"0123456789abcdef")
    text = (
        mutate(rng, good.encode()).decode("utf-8", "replace") if rng.random() < 0.7 else unicode_text(rng, 60)
    )
    return lambda: (
        qapin.pin_matches("0042", text) if text.startswith("scrypt$") else qapin.parse_pin_hash(text)
    )


_LEDGER: Path | None = None


def kind_cli(rng: random.Random) -> Callable[[], Any]:
    global _LEDGER
    from station.cli import main
    from station.ledger import open_ledger

    if _LEDGER is None:
        _LEDGER = Path(tempfile.mkdtemp(prefix="fuzz-ledger-")) / "ledger.sqlite"
        with open_ledger(_LEDGER):
            pass
    word = unicode_text(rng, rng.randint(0, 30)).replace("\x00", "")
    argv = rng.choice(
        [
            ["show", word, "--ledger", str(_LEDGER)],
            ["units", "--outcome", word, "--ledger", str(_LEDGER)],
            ["export", "--format", word, "--ledger", str(_LEDGER)],
            ["audit", word, "--ledger", str(_LEDGER)],
            [word, word],
            ["show", "--json", word[:1] + "7" * rng.randint(0, 5000), "--ledger", str(_LEDGER)],
        ]
    )

    def run() -> Any:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse refusing the arguments: a clear usage message, exit 2
                raise _Usage() from None if exit_.code == 2 else exit_
        if code in (2, 3, 4, 5):
            raise _Usage()
        return code

    return run


class _Usage(StationError):
    """Stands for "the CLI refused with a message and a documented exit code"."""

    def __init__(self) -> None:
        super().__init__("usage", "refused", "fix the arguments")


KINDS: list[tuple[str, Callable[[random.Random], Callable[[], Any]]]] = [
    ("certificate imports (PEM/DER, passwords)", kind_certificates),
    ("PKCS#12 (mutated, passwords)", kind_pkcs12),
    ("key files (mutated)", kind_keys),
    ("station.toml (mutated, binary, UTF-16, 10 MB, deep)", kind_config),
    ("scans (unicode, control, 10k chars, N: prefixes)", kind_scans),
    ("QA PIN hash (qa_pin_hash)", kind_pin_hash),
    ("CLI arguments (show/units/export/audit)", kind_cli),
]


def run_kind(
    make: Callable[[random.Random], Callable[[], Any]], n: int, rng: random.Random
) -> dict[str, Any]:
    tally: dict[str, Any] = {"tried": 0, "clear": 0, "accepted": 0, "crash": 0, "max_s": 0.0, "crashes": []}
    for _ in range(n):
        call = make(rng)
        started = time.perf_counter()
        try:
            call()
        except StationError as error:
            ok = bool(error.title and error.message and error.next_action)
            tally["clear" if ok else "crash"] += 1
        except BaseException as error:  # a Rust panic is a BaseException; KeyboardInterrupt stops the run
            if isinstance(error, KeyboardInterrupt):
                raise
            tally["crash"] += 1
            tally["crashes"].append(f"{type(error).__name__}: {str(error)[:120]}")
        else:
            tally["accepted"] += 1
        tally["tried"] += 1
        tally["max_s"] = max(tally["max_s"], time.perf_counter() - started)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="inputs per kind (default 500)")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"| input | tried | clear error | accepted | crash | max s per input |   (seed {args.seed})")
    print("|---|---:|---:|---:|---:|---:|")
    crashes: list[str] = []
    for name, make in KINDS:
        t = run_kind(make, args.n, rng)
        print(f"| {name} | {t['tried']} | {t['clear']} | {t['accepted']} | {t['crash']} | {t['max_s']:.3f} |")
        crashes += [f"{name}: {c}" for c in t["crashes"][:5]]
    for line in crashes:
        print("crash:", line)


if __name__ == "__main__":
    main()
