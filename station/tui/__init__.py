"""The station's Textual UI: the operator screen and the QA desk. The only package that imports textual.

Entry points: `run_app(config, line, ledger, relay=…)` runs the screen over a line built with
`on_event=relay` (an `EventRelay`); `build_app(...)` returns the app without running it (tests, the demo).
The UI is a thin view: it calls the line and `station.tui.services`, never boto3, serial, awscrt or
cryptography (import-linter checks).
"""

from station.tui.app import StationApp, build_app, run_app
from station.tui.relay import EventRelay

__all__ = ["EventRelay", "StationApp", "build_app", "run_app"]
