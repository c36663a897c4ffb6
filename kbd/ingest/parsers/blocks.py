"""What every parser shares: the Block of text with its place in the file, the parse result,
and how bytes become text. Apart from the dispatch in __init__.py so that the format modules
can import these without importing the dispatch that imports them."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

PDF_TIMEOUT_S = 60.0  # a PDF whose text takes longer is refused (a few KB can take hours)
SNIFF_BYTES = 64 * 2**10  # how much of a file kind and binary detection look at

# Checked in order: the UTF-32 LE mark begins with the UTF-16 LE one.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32", "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16", "utf-16-be"),
)


@dataclass(frozen=True)
class Block:
    """One unit of text (a log line, a paragraph, a heading) with its place in the file."""

    text: str
    first_line: int | None  # 1-based, inclusive (None for PDF)
    last_line: int | None
    page: int | None  # 1-based, PDFs only
    byte_start: int | None  # offsets in the (decompressed) file bytes; set for logs
    byte_end: int | None  # exclusive, without the line break
    heading: str | None  # reports: heading path "Intro > Setup"


@dataclass
class Parsed:
    kind: str  # "log" or "report"
    blocks: list[Block]
    encoding: str  # "utf-8", "utf-8-sig", "utf-16", "latin-1", ...; "pdf" for PDFs


@dataclass(frozen=True)
class Decoded:
    text: str  # the whole text, without its byte-order mark
    encoding: str  # the name Parsed reports: "utf-16" when a BOM said so
    codec: str  # a codec without BOM handling, which decodes any single line of the file
    bom: int  # bytes of byte-order mark before the text


def decode(data: bytes) -> Decoded:
    """BOM first, then UTF-16 without a BOM, then strict UTF-8, then latin-1 (never fails)."""
    for bom, name, codec in BOMS:
        if data.startswith(bom):
            return Decoded(data[len(bom):].decode(codec, "replace"), name, codec, len(bom))
    if wide := bomless_utf16(data[:SNIFF_BYTES]):
        return Decoded(data.decode(wide, "replace"), wide, wide, 0)
    try:
        return Decoded(data.decode("utf-8"), "utf-8", "utf-8", 0)
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data":  # a log's last line still being written
            return Decoded(data.decode("utf-8", "replace"), "utf-8", "utf-8", 0)
    return Decoded(data.decode("latin-1"), "latin-1", "latin-1", 0)


def bomless_utf16(head: bytes) -> str | None:
    """The codec of UTF-16 text without a BOM (a log read from an offset): mostly ASCII, so
    one byte of each pair is NUL and the other almost never is."""
    head = head[:len(head) // 2 * 2]
    even, odd = head[0::2], head[1::2]
    if len(odd) < 8:
        return None
    for nul_half, other, codec in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if nul_half.count(0) >= 0.5 * len(odd) and other.count(0) <= 0.05 * len(odd):
            return codec
    return None
