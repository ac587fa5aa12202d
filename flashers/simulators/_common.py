"""Plumbing the simulated devices share: their JSON "flash" file, line noise and a flood that never stops.

Each simulator keeps its own protocol and its own fault rules; only what is the same concept everywhere lives
here (an atomic flash write, random bytes that never end a line, talking until the line is stopped). The
random helpers take the model's own `random.Random`, and draw from it exactly as the models did before, so a
seeded fault run repeats. Protocol-free: it must not import a device protocol module, boto3 or awscrt.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flashers.simulators.pty import Link


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON (owner-only): temp file, fsync, rename — so a power cut in the
    middle leaves the old flash or the new one, whole, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)  # the rename is the commit point


def line_noise(rng: random.Random, n: int, line_ends: bytes = b"\r\n") -> bytes:
    """`n` random bytes in which each byte of `line_ends` is replaced by `.`: garbage that never ends a line
    (a protocol whose lines end at LF alone passes `b"\\n"` and may show a stray CR)."""
    data = bytes(rng.randrange(256) for _ in range(n))
    for end in line_ends:
        data = data.replace(bytes([end]), b".")
    return data


def flood(link: Link, chunk: Callable[[int], bytes]) -> None:
    """Send `chunk(1)`, `chunk(2)`, … until the line is stopped or a send fails (the host hung up)."""
    counter = 0
    while not link.stopping:
        counter += 1
        if not link.send(chunk(counter)):
            return
