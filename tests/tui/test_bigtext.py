"""The outcome's big letters: every outcome word is drawn in three lines, each letter distinct, and a word the
font cannot draw is still shown as itself."""

from __future__ import annotations

import pytest

from station.model import Outcome
from station.tui.operator.bigtext import big_lines, can_draw, width


@pytest.mark.parametrize("word", [o.value for o in Outcome] + ["READY", "BUSY"])
def test_every_outcome_word_is_drawn_in_three_even_lines(word: str) -> None:
    lines = big_lines(word)
    assert len(lines) == 3
    assert len({len(line) for line in lines}) == 1
    assert width(word) == 4 * len(word) - 1


def test_letters_differ_so_the_words_cannot_be_confused() -> None:
    assert big_lines("PASS") != big_lines("FAIL")
    assert big_lines("FAIL") != big_lines("ERROR")[:3]
    glyphs = {"".join(big_lines(ch)) for ch in "ABDEFIKLNOPRSTUY"}
    assert len(glyphs) == 16


def test_a_word_outside_the_font_falls_back_to_itself() -> None:
    assert not can_draw("QA?")
    assert big_lines("QA?") == ["QA?"]
