"""The factory provisioning station for AWS IoT devices.

The core (model, errors, identity, registry, verify, pipeline, line, ledger, config) never imports Textual or
the lab; adapters sit at the edges (`station.tui`, `station.lab`, `station.cli`).
"""

__version__ = "0.1.0"
