"""HTML reports: the visible text only. Block elements make paragraphs, h1–h6 the heading
path, table cells are joined with " | "; line numbers are those of the HTML source."""

from __future__ import annotations

from html.parser import HTMLParser

from kbd.ingest.parsers.blocks import Block
from kbd.ingest.parsers.text import Paragraphs

SKIPPED = {"head", "script", "style", "noscript", "template"}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
BLOCKS = set(
    "address article aside blockquote body caption dd details dialog div dl dt fieldset "
    "figcaption figure footer form header hr html li main nav ol p pre section summary table "
    "tbody tfoot thead tr ul".split()
)
CELLS = {"td", "th"}


def read_html(text: str) -> list[Block]:
    reader = TextExtractor()
    reader.feed(text)
    reader.close()
    reader.flush()
    return reader.out.blocks


class TextExtractor(HTMLParser):
    """Collects the open paragraph as lines (a <br> starts a new one) with the source lines
    of its first and last visible characters."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = Paragraphs()
        self.skipping: list[str] = []  # open elements whose content is not text
        self.lines = [""]
        self.first_line: int | None = None
        self.last_line: int | None = None
        self.in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and "head" in self.skipping:  # the page forgot </head>
            self.skipping.clear()
        if tag in SKIPPED:
            self.skipping.append(tag)
        elif self.skipping:
            return
        elif tag == "br":
            self.lines.append("")
        elif tag in CELLS and self.lines[-1].strip():
            self.lines[-1] += " | "
        elif tag in BLOCKS or tag in HEADINGS:
            self.flush()
            self.in_pre = tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
        elif tag in HEADINGS:
            title, first, last = self.take()
            self.out.heading(HEADINGS[tag], " ".join(title.split()), first, last)
        elif tag in BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if body := data.rstrip():
            line = self.getpos()[0]
            if self.first_line is None:
                self.first_line = line + data.count("\n", 0, len(data) - len(data.lstrip()))
            self.last_line = line + body.count("\n")
        self.lines[-1] += data

    def take(self) -> tuple[str, int | None, int | None]:
        """The open paragraph's text and lines; whitespace collapses except in <pre>."""
        if self.in_pre:
            text = "\n".join(self.lines).strip("\n").rstrip()
        else:
            text = "\n".join(filter(None, (" ".join(line.split()) for line in self.lines)))
        taken = text, self.first_line, self.last_line
        self.lines, self.first_line, self.last_line, self.in_pre = [""], None, None, False
        return taken

    def flush(self) -> None:
        text, first, last = self.take()
        if text:
            self.out.emit(text, first, last)
