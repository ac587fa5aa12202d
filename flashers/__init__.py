"""Device families the station can provision, found as plugins of the entry-point group `station.flashers`.

Every family, the built-in PROV/1 included, registers exactly like a third-party package would::

    [project.entry-points."station.flashers"]
    prov1 = "flashers.prov1:Prov1Flasher"

`available()` lists the installed families; `load(family)` imports one and returns its `Flasher` class. This
package must not import boto3 or awscrt, and importing it must not import any family (plugins load on demand).
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from station.errors import StationFault
from station.i18n import _

if TYPE_CHECKING:
    from flashers.base import Flasher

GROUP = "station.flashers"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    # Scanning installed distributions costs ~10 ms; the line asks once per unit. Installed plugins do not
    # change while the station runs (a new family needs a restart, as any install does).
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # the first installed distribution wins a duplicated name
    return found


def available() -> list[str]:
    """Names of the installed device families, sorted."""
    return sorted(_entry_points())


def load(family: str) -> type[Flasher]:
    """The flasher class registered as `family`; `StationFault` if none is installed or it fails to load."""
    from flashers.base import Flasher

    ep = _entry_points().get(family)
    if ep is None:
        names = ", ".join(available()) or "none"
        raise StationFault(
            _("Unknown device family"),
            _("No flasher for device family {family!r} is installed (installed: {names}).").format(
                family=family, names=names
            ),
            _("Call a technician to install the family's package or fix the product's family."),
        )
    try:
        cls = ep.load()
    except Exception as exc:
        raise StationFault(
            _("Device family failed to load"),
            _("The flasher for {family!r} ({value}) could not be imported: {error_type}.").format(
                family=family, value=ep.value, error_type=type(exc).__name__
            ),
            _("Call a technician to reinstall the family's package."),
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Flasher)):
        raise StationFault(
            _("Device family is not a flasher"),
            _("The entry point {family!r} ({value}) does not name a Flasher class.").format(
                family=family, value=ep.value
            ),
            _("Call a technician to fix the family's package."),
        )
    return cls
