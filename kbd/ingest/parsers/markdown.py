"""Markdown reports: paragraphs under ATX (#) and setext (===, ---) headings; a fenced code
block stays whole, blank lines and all."""

from __future__ import annotations

import re

from kbd.ingest.parsers.blocks import Block
from kbd.ingest.parsers.text import Paragraphs

ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def read_markdown(text: str) -> list[Block]:
    out = Paragraphs()
    fence = ""  # the marker of the open code fence, e.g. "```"
    for number, line in enumerate(text.split("\n"), 1):
        if fence:
            out.add(number, line)
            if closes(line, fence):
                out.end()
                fence = ""
        elif match := FENCE.match(line):
            out.end()
            out.add(number, line)
            fence = match[1]
        elif match := ATX.match(line):
            out.heading(len(match[1]), (match[2] or "").strip(), number, number)
        elif SETEXT.match(line) and out.lines:  # underlines the paragraph above it
            lines = out.take()
            title = " ".join(words.strip() for _, words in lines)
            out.heading(1 if "=" in line else 2, title, lines[0][0], number)
        elif not line.strip() or THEMATIC_BREAK.match(line) or SETEXT.match(line):
            out.end()
        else:
            out.add(number, line)
    out.end()
    return out.blocks


def closes(line: str, fence: str) -> bool:
    """Whether line closes a fence opened with `fence`: the same character, at least as many."""
    stripped = line.strip()
    return len(stripped) >= len(fence) and stripped == fence[0] * len(stripped)
