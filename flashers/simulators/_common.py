"""Plumbing the simulated devices share: their fault specs, their JSON "flash" file, line noise and a flood
that never stops.

Each simulator keeps its own protocol and its own faults; only what is the same concept everywhere lives
here (`NAME[=VALUE]` fault specs read into the simulator's own `Faults` dataclass, an atomic flash write,
random bytes that never end a line, talking until the line is stopped). The
random helpers take the model's own `random.Random`, and draw from it exactly as the models did before, so a
seeded fault run repeats. Protocol-free: it must not import a device protocol module, boto3 or awscrt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flashers.simulators.pty import Link

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


F = TypeVar("F", bound="DataclassInstance")

_OFF = ("0", "false", "no", "off")


def parse_faults(
    cls: type[F],
    specs: Iterable[str],
    *,
    probabilities: Collection[str] = (),
    ranges: Mapping[str, tuple[int | None, int | None]] | None = None,
) -> F:
    """A simulator's `Faults` dataclass from `NAME[=VALUE]` strings (`corrupt=0.05`, `disconnect-on=CONNECT`,
    `silent`): the one reader of fault specs for every simulator (`station sim`, the demo, tests).

    What a value may be follows the field's type: a `bool` is a flag (`silent`, or `silent=off`); an `int`
    or `float` a number ≥ 0 (`probabilities` name the ones from 0 to 1; `ranges` give a field its own
    smallest/largest whole number); a `str` the text as given. A `-` in a name reads as `_`. Anything else is a
    ValueError that names the fault."""
    faults = cls()
    hints = typing.get_type_hints(cls)
    kinds = {f.name: _kind(hints[f.name]) for f in dataclasses.fields(cls)}
    for spec in specs:
        name, eq, value = spec.partition("=")
        name = name.strip().replace("-", "_")
        if name not in kinds:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(kinds))}")
        kind = kinds[name]
        if kind is bool:
            setattr(faults, name, value.strip().lower() not in _OFF if eq else True)
            continue
        if not eq or not value.strip():
            raise ValueError(f"fault {name} needs a value: {name}=X")
        if kind is str:
            setattr(faults, name, value.strip())
            continue
        try:
            number: float = int(value) if kind is int else float(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"fault {name} needs {what}, not {value!r}") from None
        low, high = (ranges or {}).get(name, (0, 1 if name in probabilities else None))
        if (low is not None and number < low) or (high is not None and number > high):
            limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise ValueError(f"fault {name}={value.strip()} is out of range (a number {limits})")
        setattr(faults, name, number)
    return faults


def _kind(annotation: Any) -> type:
    """`bool`, `int`, `float` or `str`: the type a fault field holds when it is set (`int | None` → `int`)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation not in (bool, int, float, str):
        raise TypeError(f"a fault field holds a bool, int, float or str, not {annotation!r}")
    return typing.cast(type, annotation)


def line_fault(link: Link, faults: Any, *, flood: Callable[[Link], None], noise: Callable[[], bytes]) -> bool:
    """The faults a line-protocol unit acts out instead of its protocol when a command arrives: `silent`
    (answers nothing), `flood` (starts talking and never stops), `garbage` (answers `noise()`). True when one
    of them answered, so the command is not run."""
    if faults.silent:
        return True
    if faults.flood:
        flood(link)
        return True
    if faults.garbage:
        link.send(noise())
        return True
    return False


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
