"""How long identity work takes per unit: key + certificate per key type, CA signing, checks, imports.

    uv run python benchmarks/bench_identity.py [--seconds 1.0]

Prints milliseconds per operation (median of repeated timed batches). Reads fixtures, writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from station import identity  # noqa: E402
from station.model import Issuer  # noqa: E402

CERTS = ROOT / "fixtures" / "certs"


def measure(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Median ms per call over batches filling about `seconds` in total."""
    fn()  # warm-up (imports, caches)
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    batch = max(1, int(0.1 / once))
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 3:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1000)
    return statistics.median(samples), batch * len(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    args = parser.parse_args()

    os.environ.setdefault("BENCH_CA_PASSPHRASE", "factory-ca-passphrase")
    issuer = identity.load_issuer(
        Issuer(str(CERTS / "factory-ca.pem"), str(CERTS / "factory-ca.key"), "BENCH_CA_PASSPHRASE")
    )
    pem = (CERTS / "ec-p256.pem").read_text()
    p12 = (CERTS / "keychain-client.p12").read_bytes()

    cases: list[tuple[str, Callable[[], object]]] = [
        (f"new identity {kt} (self-signed)", lambda kt=kt: identity.new_identity("bench-unit", key_type=kt))
        for kt in identity.KEY_TYPES
    ]
    cases += [
        ("new identity ec-p256 (factory CA)", lambda: identity.new_identity("bench-unit", issuer=issuer)),
        ("certificate_id (PEM)", lambda: identity.certificate_id(pem)),
        ("check_aws_acceptance (PEM)", lambda: identity.check_aws_acceptance(pem)),
        ("load PKCS#12 (keychain, empty password)", lambda: identity.load_identity_bytes(p12)),
    ]
    print(f"{'operation':45} {'ms/op':>9} {'runs':>7}")
    for label, fn in cases:
        ms, runs = measure(fn, args.seconds)
        print(f"{label:45} {ms:9.3f} {runs:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
