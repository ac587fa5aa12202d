"""Words in three-line letters, for an outcome that is read from across the bench (PASS / FAIL / ERROR …).

Textual's `Digits` draws 0-9 and A-F only; the outcome words need P, S, I, L, R, O and a few more, so this
module keeps a small box-drawing font in the same 3 × 3 style and renders a word as three plain lines. A
word with a letter the font lacks falls back to the plain word (never a blank), so a new outcome name cannot
vanish from the screen.

It draws text only: colour and layout belong to the card that shows it.
"""

from __future__ import annotations

_GLYPHS: dict[str, tuple[str, str, str]] = {
    "A": ("┏━┓", "┣━┫", "╹ ╹"),
    "B": ("┳━┓", "┣━┫", "┻━┛"),
    "D": ("┳━┓", "┃ ┃", "┻━┛"),
    "E": ("┏━╸", "┣━ ", "┗━╸"),
    "F": ("┏━╸", "┣━ ", "╹  "),
    "I": ("╺┳╸", " ┃ ", "╺┻╸"),
    "K": ("╻┏╸", "┣┻┓", "╹ ╹"),
    "L": ("╻  ", "┃  ", "┗━╸"),
    "N": ("┏┓╻", "┃┗┫", "╹ ╹"),
    "O": ("┏━┓", "┃ ┃", "┗━┛"),
    "P": ("┏━┓", "┣━┛", "╹  "),
    "R": ("┏━┓", "┣┳┛", "╹┗╸"),
    "S": ("┏━╸", "┗━┓", "╺━┛"),
    "T": ("╺┳╸", " ┃ ", " ╹ "),
    "U": ("╻ ╻", "┃ ┃", "┗━┛"),
    "Y": ("╻ ╻", "┗┳┛", " ╹ "),
    " ": ("  ", "  ", "  "),
}
HEIGHT = 3


def can_draw(word: str) -> bool:
    return bool(word) and all(ch in _GLYPHS for ch in word.upper())


def big_lines(word: str) -> list[str]:
    """The word in three lines of box-drawing letters (or, with a letter the font lacks, the word itself)."""
    text = word.upper()
    if not can_draw(text):
        return [word]
    return [" ".join(_GLYPHS[ch][row] for ch in text) for row in range(HEIGHT)]


def width(word: str) -> int:
    return max(len(line) for line in big_lines(word))
