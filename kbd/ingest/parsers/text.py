"""Plain-text reports (paragraphs split at blank lines), and the paragraph builder that the
Markdown, reStructuredText and HTML readers share."""

from __future__ import annotations

from kbd.ingest.parsers.blocks import Block


class Paragraphs:
    """Builds report Blocks: lines gather into an open paragraph until `end`; a heading ends
    it, becomes a Block of its own and sets the heading path of the Blocks after it."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.lines: list[tuple[int, str]] = []  # the open paragraph: (line number, text)
        self._path: list[tuple[int, str]] = []  # (level, title) of the enclosing headings

    @property
    def path(self) -> str | None:
        return " > ".join(title for _, title in self._path if title) or None

    def add(self, number: int, line: str) -> None:
        self.lines.append((number, line.rstrip()))

    def take(self) -> list[tuple[int, str]]:
        """The open paragraph's lines, which it then no longer holds."""
        lines, self.lines = self.lines, []
        return lines

    def end(self) -> None:
        if lines := self.take():
            self.emit("\n".join(line for _, line in lines).strip("\n"), lines[0][0], lines[-1][0])

    def emit(self, text: str, first_line: int | None, last_line: int | None) -> None:
        self.blocks.append(Block(text, first_line, last_line, None, None, None, self.path))

    def heading(self, level: int, title: str, first_line: int | None,
                last_line: int | None) -> None:
        """A heading of `level` (1 is the top) closes the headings at its level and below."""
        self.end()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, title))
        if title:
            self.emit(title, first_line, last_line)


def read_text(text: str) -> list[Block]:
    paragraphs = Paragraphs()
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            paragraphs.add(number, line)
        else:
            paragraphs.end()
    paragraphs.end()
    return paragraphs.blocks
