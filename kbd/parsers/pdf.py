"""PDF reports through pypdf: the text of each page, in paragraphs where the extracted text
has blank lines, each Block marked with its 1-based page."""

from __future__ import annotations

import io
import re
from pathlib import Path

from pypdf import PdfReader

from kbd.parsers import Block, ParseError

BLANK_LINES = re.compile(r"\n[ \t\f]*\n")


def read_pdf(path: Path, data: bytes) -> list[Block]:
    pages = page_texts(path, data)
    return [Block(paragraph, None, None, number, None, None, None)
            for number, text in enumerate(pages, 1)
            for paragraph in split_paragraphs(text)]


def page_texts(path: Path, data: bytes) -> list[str]:
    try:
        reader = PdfReader(io.BytesIO(data))
        locked = reader.is_encrypted and not reader.decrypt("")
        texts = [] if locked else [page.extract_text() for page in reader.pages]
    except Exception as error:  # pypdf raises many kinds of errors on damaged files
        raise ParseError(path, f"cannot read this PDF ({type(error).__name__}: {error})",
                         "corrupt-pdf") from error
    if locked:
        raise ParseError(path, "the PDF is encrypted and an empty password does not open it",
                         "encrypted-pdf", hint="save a copy without a password")
    return texts


def split_paragraphs(text: str) -> list[str]:
    return [paragraph.strip() for paragraph in BLANK_LINES.split(text) if paragraph.strip()]
