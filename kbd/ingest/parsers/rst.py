"""reStructuredText reports: paragraphs under section titles, which are underlined (and maybe
overlined) with a punctuation character. As in docutils, a title's level is the order in
which its adornment style first appears in the file."""

from __future__ import annotations

import re

from kbd.ingest.parsers.blocks import Block
from kbd.ingest.parsers.text import Paragraphs

ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1*[ \t]*$")  # one punctuation character, repeated


def read_rst(text: str) -> list[Block]:
    out = Paragraphs()
    styles: list[tuple[str, bool]] = []  # (character, overlined) in order of first use
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        if is_adornment(line) and not out.lines and overlined_title(lines, i):
            out.heading(level(styles, (line.strip()[0], True)), lines[i + 1].strip(),
                        number, number + 2)
            i += 3
            continue
        if is_adornment(line) and len(out.lines) == 1 and underlines(line, out.lines[0][1]):
            title_number, title = out.take()[0]
            out.heading(level(styles, (line.strip()[0], False)), title.strip(),
                        title_number, number)
        elif not line.strip() or is_adornment(line):  # a transition also ends a paragraph
            out.end()
        else:
            out.add(number, line)
        i += 1
    out.end()
    return out.blocks


def is_adornment(line: str) -> bool:
    return len(line.strip()) >= 2 and ADORNMENT.match(line) is not None


def underlines(line: str, title: str) -> bool:
    """docutils takes a short underline for a title only from 4 characters on."""
    length = len(line.strip())
    return length >= len(title.strip()) or length >= 4


def overlined_title(lines: list[str], i: int) -> bool:
    """Whether lines[i] is the overline of a title: text, then the same adornment again."""
    if i + 2 >= len(lines) or not lines[i + 1].strip() or is_adornment(lines[i + 1]):
        return False
    return lines[i + 2].strip() == lines[i].strip()


def level(styles: list[tuple[str, bool]], style: tuple[str, bool]) -> int:
    if style not in styles:
        styles.append(style)
    return styles.index(style) + 1
