"""Parsers: the bytes of a log or report → Blocks of text that know where they sit in the file.

Logs give one Block per non-blank line with its exact line number and byte range, so a
growing log can be parsed again from an offset. Reports give paragraphs with line ranges (pages
for PDFs) and the heading path they sit under. `parse` decompresses .gz, finds the encoding,
refuses binary files and hands the text to one module per format.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from dataclasses import replace
from pathlib import Path

from kbd.errors import ParseError
from kbd.ingest.parsers.blocks import (
    PDF_TIMEOUT_S,
    SNIFF_BYTES,
    Block,
    Decoded,
    Parsed,
    decode,
)

KINDS = ("log", "report")
MAX_BYTES = 256 * 2**20  # the most (decompressed) bytes one parse works on
GZIP_CHUNK = 2**20
CONTROL_SHARE = 0.10  # more control characters than this in the sniffed text means binary
LOG_SHARE = 0.6  # a text file is a log when this share of its first lines start with a time

LOG_SUFFIXES = {".log", ".jsonl", ".ndjson", ".out", ".err"}
LOG_NAMES = {"syslog", "messages", "dmesg", "secure", "maillog", "kern", "auth"}
REPORT_FORMATS = {
    ".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".rest": "rst",
    ".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf", ".txt": "text",
}
ROTATION = re.compile(r"(\.\d+|[-_.]\d{8}|[-_.]\d{4}-\d{2}-\d{2})$")  # app.log.1, messages-20240101
# a field of a systemd journal export (`journalctl -o export`): `_SYSTEMD_UNIT=payments.service`,
# `__REALTIME_TIMESTAMP=1690465316937000`; its records are blocks of these, one a line
JOURNAL_FIELD = re.compile(r"_{0,2}[A-Z][A-Z0-9_]*=")
TIMESTAMP = re.compile(
    r"""^(?:<\d+>)?[\[(]?\s*(?:
        \d{2,4}[/.-]\d{2}[/.-]\d{2,4}[T\ :]\d{1,2}:\d{2}  # 2015-10-18 18:01, 17/06/09 20:10
      | \d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}            # 10/Oct/2000:13:55
      | (?:[A-Z][a-z]{2},?\s+)?[A-Z][a-z]{2}\s+\d{1,2}\s+\d{1,2}:\d{2}  # [Sun] Dec 04 04:47
      | \d{6}\s\d{6}\b                                   # HDFS: 081109 203615
      | \d{10}(?:\.\d+)?\b                               # epoch seconds
      | \d+\.\d+\]                                       # dmesg: [12.345678]
    )""",
    re.VERBOSE,
)


def parse(path: Path, data: bytes, kind: str = "auto", *, start_line: int = 1,
          start_byte: int = 0, max_bytes: int = MAX_BYTES,
          pdf_timeout_s: float = PDF_TIMEOUT_S) -> Parsed:
    """Blocks of a file's bytes. For a growing log, `data` may be the bytes after an offset:
    start_line and start_byte then continue its numbering (reports are always parsed whole)."""
    name = path.name
    if name.lower().endswith(".gz") and len(name) > 3:
        data, name = gunzip(path, data, max_bytes), name[:-3]
    elif len(data) > max_bytes:
        raise ParseError(path, f"{len(data)} bytes is more than the limit of {max_bytes}",
                         "too-large")
    inner = path.with_name(name)
    if report_format(inner, data) == "pdf" and data.strip():  # an empty file is read as text
        from kbd.ingest.parsers.pdf import read_pdf  # pypdf is slow to import; most files are text

        return Parsed("report", without_nul(read_pdf(path, data, pdf_timeout_s)), "pdf")
    decoded = decode(data)
    if looks_binary(decoded.text[:SNIFF_BYTES]):
        raise ParseError(path, "looks like a binary file, not text", "binary")
    kind = detect_kind(inner, data, kind)
    if not decoded.text or decoded.text.isspace():  # strip() would copy a 512 MB text
        return Parsed(kind, [], decoded.encoding)
    blocks = read_blocks(kind, inner, data, decoded, start_line, start_byte)
    return Parsed(kind, without_nul(blocks), decoded.encoding)


def without_nul(blocks: list[Block]) -> list[Block]:
    """NUL characters shown as U+FFFD, as undecodable bytes are: past the part sniffed for
    binary files a log may still hold a few, and PostgreSQL text cannot store them."""
    return [replace(b, text=b.text.replace("\0", "\ufffd"),
                    heading=b.heading and b.heading.replace("\0", "\ufffd"))
            if "\0" in b.text or "\0" in (b.heading or "") else b for b in blocks]


def read_blocks(kind: str, path: Path, data: bytes, decoded: Decoded, start_line: int,
          start_byte: int) -> list[Block]:
    # Imported here because each format module imports Block from this package.
    from kbd.ingest.parsers import html, log, markdown, rst, text

    if kind == "log":
        return log.read_log(data, decoded, start_line, start_byte)
    readers = {"markdown": markdown.read_markdown, "rst": rst.read_rst, "html": html.read_html,
               "text": text.read_text}
    return readers[report_format(path, data)](decoded.text)


def detect_kind(path: Path, data: bytes, hint: str = "auto") -> str:
    """"log" or "report": the hint if it names one, else by file name, else by content
    (a text whose first lines mostly start with a timestamp or are JSON objects is a log).
    `data` is the decompressed content, or its beginning."""
    if hint in KINDS:
        return hint
    if hint != "auto":
        raise ParseError(path, f"unknown kind {hint!r}", "kind", hint="use log, report or auto")
    name = base_name(path)
    suffix = Path(name).suffix
    if suffix in LOG_SUFFIXES or name in LOG_NAMES:
        return "log"
    if suffix in REPORT_FORMATS and suffix != ".txt":
        return "report"
    return "log" if looks_like_log(decode(data[:SNIFF_BYTES]).text) else "report"


def looks_like_log(text: str, sample_lines: int = 50) -> bool:
    lines = [line for line in text.split("\n") if line.strip()][:sample_lines]
    timed = sum(1 for line in lines if TIMESTAMP.match(line) or line.lstrip().startswith("{")
                or JOURNAL_FIELD.match(line))
    return bool(lines) and timed >= LOG_SHARE * len(lines)


def report_format(path: Path, data: bytes) -> str:
    """"pdf", "markdown", "rst", "html" or "text", from the suffix, else from the content."""
    if b"%PDF-" in data[:1024]:  # the PDF header may follow some junk bytes
        return "pdf"
    fmt = REPORT_FORMATS.get(Path(base_name(path)).suffix, "text")
    if fmt == "text" and data[:1024].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    return fmt


def base_name(path: Path) -> str:
    """The file name in lower case without .gz and rotation suffixes: app.log.1.gz → app.log."""
    return ROTATION.sub("", path.name.lower().removesuffix(".gz"))


def looks_binary(text: str) -> bool:
    """NUL characters, or many other control characters (tabs, line breaks, form feeds and
    ANSI colour escapes are text)."""
    if "\x00" in text:
        return True
    controls = sum(1 for ch in text if (ch < " " and ch not in "\t\n\r\f\v\x1b") or ch == "\x7f")
    return controls > CONTROL_SHARE * len(text)


def gunzip(path: Path, data: bytes, max_bytes: int) -> bytes:
    """Decompress a .gz in chunks, stopping as soon as the output passes max_bytes (so a
    gzip bomb costs little)."""
    parts, size = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while part := stream.read(min(GZIP_CHUNK, max_bytes + 1 - size)):
                parts.append(part)
                size += len(part)
                if size > max_bytes:
                    raise ParseError(path, f"decompresses to more than {max_bytes} bytes",
                                     "too-large")
    except (OSError, EOFError, zlib.error) as error:
        raise ParseError(path, f"broken gzip stream: {error}", "gzip") from error
    return b"".join(parts)
