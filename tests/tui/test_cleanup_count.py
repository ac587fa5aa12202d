"""The operator screen shows "cleanup pending: N" while the line's cleaner still has work, and drops it at 0."""

from __future__ import annotations

from textual.widgets import Static
from tui_fakes import LAB_INFO, ScriptedLine, wait_until

from station.tui.app import StationApp
from station.tui.operator.counters import CountersBar
from station.tui.relay import EventRelay


class CleaningLine(ScriptedLine):
    """The scripted line plus the real line's `cleanup_pending()`."""

    pending = 0

    def cleanup_pending(self) -> int:
        return self.pending


async def test_the_counters_show_the_pending_cleanup_until_it_is_done() -> None:
    relay = EventRelay()
    line = CleaningLine({"s1": "/dev/ttyUSB0"}, on_event=relay)
    app = StationApp(line=line, info=LAB_INFO, relay=relay, poll_interval=0.05)
    async with app.run_test(size=(100, 24)) as pilot:

        def counters() -> str:
            return str(app.query_one(CountersBar, Static).render())

        await pilot.pause(0.2)
        assert "cleanup pending" not in counters()
        line.pending = 2
        await wait_until(pilot, lambda: "cleanup pending: 2" in counters(), what="the pending count")
        line.pending = 0
        await wait_until(pilot, lambda: "cleanup pending" not in counters(), what="the count to go")
