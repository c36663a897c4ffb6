"""PDF reports through pypdf: the text of each page, in paragraphs where the extracted text
has blank lines, each Block marked with its 1-based page.

pypdf caps the work of parsing one content stream, but not of a whole file: a few KB whose
thousands of pages share one heavy stream take hours. The time is checked before each page
and at every operator text extraction visits, so a PDF is refused once it has taken
timeout_s (plus at most one stream's parse)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from pypdf import PdfReader

from kbd.errors import ParseError
from kbd.ingest.parsers.blocks import PDF_TIMEOUT_S, Block

BLANK_LINES = re.compile(r"\n[ \t\f]*\n")


class _OutOfTime(Exception):
    pass


def read_pdf(path: Path, data: bytes, timeout_s: float = PDF_TIMEOUT_S) -> list[Block]:
    pages = page_texts(path, data, timeout_s)
    return [Block(paragraph, None, None, number, None, None, None)
            for number, text in enumerate(pages, 1)
            for paragraph in split_paragraphs(text)]


def page_texts(path: Path, data: bytes, timeout_s: float = PDF_TIMEOUT_S) -> list[str]:
    deadline = time.monotonic() + timeout_s

    def in_time(*_operator) -> None:
        if time.monotonic() > deadline:
            raise _OutOfTime

    texts: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        locked = reader.is_encrypted and not reader.decrypt("")
        for page in [] if locked else reader.pages:
            in_time()
            texts.append(page.extract_text(visitor_operand_before=in_time))
    except _OutOfTime:
        raise ParseError(path, f"reading its text took more than {timeout_s:g} s (stopped at "
                               f"page {len(texts) + 1})", "too-slow",
                         hint="raise [ingest] pdf_timeout_s if the PDF is genuine") from None
    except Exception as error:  # pypdf raises many kinds of errors on damaged files
        raise ParseError(path, f"cannot read this PDF ({type(error).__name__}: {error})",
                         "corrupt-pdf") from error
    if locked:
        raise ParseError(path, "the PDF is encrypted and an empty password does not open it",
                         "encrypted-pdf", hint="save a copy without a password")
    return texts


def split_paragraphs(text: str) -> list[str]:
    return [paragraph.strip() for paragraph in BLANK_LINES.split(text) if paragraph.strip()]
