"""The station's Textual UI: the operator screen and the QA desk. The only package that imports textual.

Entry points: `run_app(config, line, qa=…, relay=…)` runs the screen over a line built with
`on_event=relay` (an `EventRelay`), with the QA desk's services (`station.desk.QaServices`) built by the
caller; `build_app(...)` returns the app without running it (tests). The UI is a thin view: it calls the line
and the services through Protocols (`station.tui.api`), never boto3, serial, awscrt or cryptography, not even
through a core module (import-linter checks).
"""

from station.tui.app import StationApp, build_app, run_app
from station.tui.operator.help import HelpContent, JigUnit
from station.tui.relay import EventRelay

__all__ = ["EventRelay", "HelpContent", "JigUnit", "StationApp", "build_app", "run_app"]
