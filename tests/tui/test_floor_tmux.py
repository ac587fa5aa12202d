"""`station demo` in a real terminal (tmux) at 80×24 and 120×40, driven as a newcomer would: open F1, scan the
serials it names, two of them in one read (a fast scanner), then the faulty one, then a label that is no
serial; and read what is on screen. Skipped where tmux is not installed.

Nothing here reaches into the app: keys go in through tmux and the checks read tmux's copy of the screen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from station.tui.operator.bigtext import big_lines

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]

STATION = Path(sys.executable).with_name("station")
UNIT_RE = re.compile(r"([A-Z]+[0-9]{8}) +(slot-[0-9]+) · ([^·]+?) · (good|faulty)")


class Terminal:
    """One tmux session of a given size running a command."""

    def __init__(self, name: str, width: int, height: int, command: list[str]) -> None:
        self.name = name
        line = " ".join(command)
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), line],
            check=True,
            env={**os.environ, "TERM": "xterm-256color"},
        )

    def screen(self) -> str:
        done = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, check=False
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def typed(self, text: str) -> None:
        """`text` as one write to the terminal (literal: CR and LF included)."""
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if predicate(shown):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{shown}")
            time.sleep(0.2)

    def press_until(self, key: str, predicate: Callable[[str], bool], what: str, tries: int = 6) -> str:
        """Press `key` until the screen shows `what`: a key pressed while the app is still starting up is lost
        (a person would press it again too)."""
        for _ in range(tries - 1):
            self.keys(key)
            try:
                return self.wait(predicate, what, timeout=10.0)
            except AssertionError:
                continue
        self.keys(key)
        return self.wait(predicate, what)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, check=False)


def big(word: str) -> str:
    """The middle row of the word in big letters: present once per card showing it."""
    return big_lines(word)[1]


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_a_newcomer_scans_what_f1_names(
    size: tuple[int, int], tmp_path: Path, terminals: list[Terminal]
) -> None:
    width, height = size
    # Two PROV/1 jigs; every 3rd unit put in a jig is a faulty demo unit (it drops off the line): the first
    # two are good, the third (the first fresh one) is faulty.
    command = [str(STATION), "demo", "--state-dir", str(tmp_path / "demo"), "--families", "prov1"]
    command += [
        "--slots",
        "2",
        "--fault-every",
        "3",
        "--fault",
        "disconnect",
    ]  # (screen on stderr: no redirect)
    term = Terminal(f"floor-{os.getpid()}-{width}", width, height, command)
    terminals.append(term)
    term.wait(lambda s: "press F1" in s, "the operator screen")

    shown = term.press_until("F1", lambda s: "Units in the jigs now" in s, "the help panel")
    units = {slot: (serial, family, state) for serial, slot, family, state in UNIT_RE.findall(shown)}
    assert {"slot-1", "slot-2"} <= set(units), shown
    assert all(state == "good" for _, _, state in units.values())  # the first units in the jigs are good
    assert "QA PIN of this demo is 0000" in shown
    term.keys("Escape")
    term.wait(lambda s: "Units in the jigs now" not in s, "the help closed")

    # A fast scanner: two scans, CR then LF, in one write.
    first, second = units["slot-1"][0], units["slot-2"][0]
    term.typed(f"{first}\r{second}\n")
    shown = term.wait(lambda s: s.count(big("PASS")) == 2, "two PASS cards", timeout=90)
    assert first in shown and second in shown
    assert "Put the unit in the good bin." in shown
    assert "fits none" not in shown and "not a serial" not in shown

    # The jigs got fresh units: F1 names them, the third unit put in as faulty; scanning its serial (no slot
    # number: the station finds the jig holding it) gives a FAIL in the operator's words.
    term.keys("F1")
    shown = term.wait(
        lambda s: any(state == "faulty" for _, _, _, state in UNIT_RE.findall(s)), "the fresh faulty unit"
    )
    fresh = next(m for m in UNIT_RE.finditer(shown) if m.group(4) == "faulty")
    assert fresh.group(1) not in (first, second), shown
    term.keys("Escape")
    term.wait(lambda s: "Units in the jigs now" not in s, "the help closed")
    term.typed(f"{fresh.group(1)}\r")
    shown = term.wait(lambda s: big("FAIL") in s, "a FAIL card", timeout=90)
    assert fresh.group(1) in shown and "Reseat the unit" in shown and "✘ FAIL" in shown
    assert "security tag" not in shown and "FAILED" not in shown

    # A label that is no serial: one sentence under the scan field, no pop-up over the cards.
    term.typed("XYZ-1\r")
    shown = term.wait(lambda s: "XYZ-1 is not a serial" in s, "the message line")
    assert "fits none of this line's products" not in shown
    last_lines = shown.rstrip("\n").splitlines()[-2:]
    assert any("XYZ-1 is not a serial this station takes" in line for line in last_lines)

    # Nothing cut without an ellipsis: a cut line ends in "…", never mid-word at the edge of the screen.
    assert all(len(line) <= width for line in shown.splitlines())

    term.keys("C-q")
    term.wait(lambda s: "press F1" not in s and big("FAIL") not in s, "the demo to quit", timeout=60)
