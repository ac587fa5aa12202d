"""Dataclasses as plain dicts: what `--json` output, reports and events show of a result.

What it does: `plain_dict(obj)` gives a dataclass's fields, in order, as a dict of plain values, and `plain`
turns one value into plain data: an object with its own `as_dict` gives that (so a class that shapes its
output keeps doing so when nested), another dataclass its fields, an enum its value, a date or time its
ISO 8601 text, bytes their hex, a path its text, a tuple or list a list and a dict a dict; anything else is
kept as it is. A field hidden from repr (`field(repr=False)`: a certificate's PEM, private state) or whose
name starts with "_" is left out.

What it must not do: know any class by name, or let a `Secret` through (refused: a key never reaches output).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection
from enum import Enum
from pathlib import PurePath
from typing import Any

from station.model import Secret


def plain_dict(obj: Any, *, exclude: Collection[str] = ()) -> dict[str, Any]:
    """The dataclass `obj`'s shown fields (all but `exclude`), in order, as plain values."""
    return {
        one.name: plain(getattr(obj, one.name))
        for one in dataclasses.fields(obj)
        if one.repr and not one.name.startswith("_") and one.name not in exclude
    }


def plain(value: Any) -> Any:
    """`value` as plain data (see the module docstring)."""
    if isinstance(value, Secret):
        raise TypeError("a Secret is never part of a plain dict")
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict) and not isinstance(value, type):
        return as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_dict(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value
