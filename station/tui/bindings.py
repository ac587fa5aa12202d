"""Key bindings in the operator's language.

Textual reads a class's `BINDINGS` once, when the class is defined, which is before the station has chosen
its language. So binding descriptions are written with `N_()` (marked for the catalog, left in English) and
every screen calls `translate_bindings(self)` in its `__init__`, which replaces its own copy of the bindings
with translated ones. The footer then shows the language chosen at start.

It must not change the classes' `BINDINGS` (a test that switches language would see the previous one).
"""

from __future__ import annotations

import dataclasses

from textual.dom import DOMNode

from station.i18n import _


def translate_bindings(node: DOMNode) -> None:
    """Translate the descriptions (and tooltips) of `node`'s own copy of its bindings."""
    # New lists: the copy Textual gives each node shares its lists with the class.
    table = node._bindings.key_to_bindings
    for key, bindings in list(table.items()):
        table[key] = [
            dataclasses.replace(
                binding,
                description=_(binding.description) if binding.description else binding.description,
                tooltip=_(binding.tooltip) if binding.tooltip else binding.tooltip,
            )
            for binding in bindings
        ]
