"""Parsers turn real files into Blocks with exact lines, byte ranges, pages and heading paths,
and refuse what they cannot read with a ParseError whose code says why."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter
from support.harness import make_pdf

from kbd.ingest.parsers import Block, ParseError, detect_kind, parse
from kbd.ingest.parsers.log import whole_lines

LOGHUB = Path(os.environ.get("KBD_LOGHUB", "/work/shared/data/loghub"))
LOGHUB_FILES = sorted(LOGHUB.glob("*.log"))
needs_loghub = pytest.mark.skipif(not LOGHUB_FILES, reason=f"no loghub logs in {LOGHUB}")


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def parse_file(path: Path, **options):
    return parse(path, path.read_bytes(), **options)


def encrypt(pdf: bytes, user: str, owner: str | None = None) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user, owner)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def assert_exact_lines(data: bytes, blocks: list[Block], codec: str = "utf-8") -> None:
    """Each log Block's byte range decodes to its text, and its line number is right."""
    lines = data.decode(codec).split("\n")
    for block in blocks:
        assert data[block.byte_start:block.byte_end].decode(codec) == block.text
        assert lines[block.first_line - 1].rstrip("\r").lstrip("\ufeff") == block.text
        assert block.first_line == block.last_line


class TestDetectKind:
    @pytest.mark.parametrize("name", ["app.log", "app.log.1", "app.log.3.gz", "syslog",
                                      "messages", "messages-20240101", "events.jsonl",
                                      "job.out", "kern.log.2024-01-31"])
    def test_log_names(self, name):
        assert detect_kind(Path(name), b"Just some words.\n") == "log"

    @pytest.mark.parametrize("name", ["notes.md", "guide.rst", "page.html", "paper.pdf",
                                      "notes.md.gz"])
    def test_report_names(self, name):
        assert detect_kind(Path(name), b"2015-10-18 18:01:47 INFO started\n" * 5) == "report"

    @needs_loghub
    @pytest.mark.parametrize("log", LOGHUB_FILES, ids=lambda p: p.stem)
    def test_timestamped_txt_is_a_log(self, log):
        assert detect_kind(Path("dump.txt"), log.read_bytes()) == "log"

    def test_prose_txt_is_a_report(self):
        text = b"Summary of the outage.\n\nOn Monday the disk filled up.\nWe cleaned it.\n"
        assert detect_kind(Path("summary.txt"), text) == "report"

    def test_a_journal_export_is_a_log(self):
        """`journalctl -o export` writes records of FIELD=value lines: a log, whatever its
        file is called, and one a syslog line now and then does not make a report."""
        record = (b"__REALTIME_TIMESTAMP=1690465318459000\n_HOSTNAME=edge-2\n_PID=8149\n"
                  b"_SYSTEMD_UNIT=payments.service\nPRIORITY=4\n"
                  b"MESSAGE=payments.service: Main process exited, status=47/FAILURE\n\n")
        syslog = b"2023-07-27T13:40:55+0000 edge-2 ingest[43373]: Listening on 10.1.2.3:5432\n"
        assert detect_kind(Path("edge-2-journal.txt"), (record * 3 + syslog) * 4) == "log"
        assert detect_kind(Path("notes.txt"), b"PATH=/usr/bin is set in the unit.\n"
                                              b"We restarted it twice.\nNobody was paged.\n") \
            == "report"

    def test_json_lines_without_suffix_are_a_log(self):
        data = b'{"msg": "a"}\n{"msg": "b"}\n{"msg": "c"}\n'
        assert detect_kind(Path("events"), data) == "log"

    def test_hint_wins(self):
        assert detect_kind(Path("app.log"), b"x", "report") == "report"
        assert detect_kind(Path("notes.md"), b"x", "log") == "log"

    def test_unknown_hint(self):
        with pytest.raises(ParseError, match=r"^notes.md: unknown kind 'table'") as caught:
            detect_kind(Path("notes.md"), b"x", "table")
        assert caught.value.code == "kind"


class TestLogs:
    @needs_loghub
    @pytest.mark.parametrize("log", LOGHUB_FILES, ids=lambda p: p.stem)
    def test_loghub_lines_and_bytes(self, log):
        data = log.read_bytes()
        parsed = parse(log, data)
        assert (parsed.kind, parsed.encoding) == ("log", "utf-8")
        assert [b.first_line for b in parsed.blocks] == list(range(1, 2001))
        assert_exact_lines(data, parsed.blocks)

    def test_blank_lines_skipped_but_counted(self, tmp_path):
        data = b"first\n\n   \nfourth\r\n\r\nsixth"
        blocks = parse_file(write(tmp_path, "app.log", data)).blocks
        assert [(b.text, b.first_line) for b in blocks] == [("first", 1), ("fourth", 4),
                                                            ("sixth", 6)]
        assert_exact_lines(data, blocks)

    def test_trailing_line_without_newline(self, tmp_path):
        blocks = parse_file(write(tmp_path, "app.log", b"done\nhalf writ")).blocks
        assert blocks[-1] == Block("half writ", 2, 2, None, 5, 14, None)

    @needs_loghub
    def test_continuation_matches_a_whole_parse(self):
        log = LOGHUB / "Linux_2k.log"
        data = log.read_bytes()
        whole = parse(log, data).blocks
        offset = data.index(b"\n", whole[999].byte_end) + 1  # after line 1000's "\r\n"
        tail = parse(log, data[offset:], start_line=1001, start_byte=offset).blocks
        assert tail == whole[1000:]
        assert_exact_lines(data, tail)

    def test_continuation_of_a_utf16_log(self, tmp_path):
        data = "Jan 1 00:00:01 one\nJan 1 00:00:02 twö\nJan 1 00:00:03 three\n".encode("utf-16")
        whole = parse_file(write(tmp_path, "app.log", data)).blocks
        offset = whole[0].byte_end + 2  # after "\n" in UTF-16 LE
        tail = parse(tmp_path / "app.log", data[offset:], start_line=2, start_byte=offset)
        assert tail.encoding == "utf-16-le"  # no BOM in the tail
        assert tail.blocks == whole[1:]

    def test_two_megabyte_line(self, tmp_path):
        line = "x" * (2 * 2**20)
        data = f"start\n{line}\nend\n".encode()
        blocks = parse_file(write(tmp_path, "app.log", data)).blocks
        assert [len(b.text) for b in blocks] == [5, 2 * 2**20, 3]
        assert (blocks[1].byte_start, blocks[1].byte_end) == (6, 6 + 2 * 2**20)

    def test_json_lines(self, tmp_path):
        records = [
            {"node": 7, "msg": "disk full", "level": "ERROR", "ts": "2015-10-18"},
            {"Message": "user logged in", "user": "ann lee", "tags": ["a", "b"], "ok": True},
            {"time": 1445144423, "extra": None, "nested": {"k": 1}},
        ]
        lines = [json.dumps(r) for r in records] + ['{"broken": ', "[1, 2]", "plain text"]
        data = "\n".join(lines).encode()
        blocks = parse_file(write(tmp_path, "events.jsonl", data)).blocks
        assert [b.text for b in blocks] == [
            "2015-10-18 ERROR disk full node=7",
            'user logged in user="ann lee" tags=["a","b"] ok=true',
            '1445144423 extra=null nested={"k":1}',
            '{"broken": ', "[1, 2]", "plain text",
        ]
        assert [b.first_line for b in blocks] == [1, 2, 3, 4, 5, 6]
        assert data[blocks[0].byte_start:blocks[0].byte_end].decode() == lines[0]

    def test_ansi_colours_are_text(self, tmp_path):
        data = b"\x1b[31mERROR\x1b[0m disk full\n" * 50
        assert len(parse_file(write(tmp_path, "app.log", data)).blocks) == 50


LINES = ["2024-01-01 10:00:00 naïve café ünïcode", "", "2024-01-01 10:00:01 second line",
         "2024-01-01 10:00:02 €uro"]


class TestEncodings:
    @pytest.mark.parametrize(("codec", "reported", "slice_codec"), [
        ("utf-8", "utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig", "utf-8"),
        ("utf-16", "utf-16", "utf-16-le"),
        ("utf-16-be", "utf-16-be", "utf-16-be"),  # no BOM: found from the NUL pattern
        ("utf-32", "utf-32", "utf-32-le"),
        ("cp1252", "latin-1", "latin-1"),  # not UTF-8: read as latin-1, bytes still exact
    ])
    def test_log_encodings(self, tmp_path, codec, reported, slice_codec):
        data = "\r\n".join(LINES).encode(codec)
        parsed = parse_file(write(tmp_path, "app.log", data))
        assert parsed.encoding == reported
        assert [b.first_line for b in parsed.blocks] == [1, 3, 4]
        for block in parsed.blocks:
            assert data[block.byte_start:block.byte_end].decode(slice_codec) == block.text
        if codec != "cp1252":
            assert [b.text for b in parsed.blocks] == [x for x in LINES if x]

    def test_utf16_newline_bytes_inside_characters(self, tmp_path):
        text = "one \u0a41\u0100 two\nthree\n"  # U+0A41 U+0100 is 41 0A 00 01 in UTF-16 LE
        data = text.encode("utf-16")
        assert b"\n\x00" in data[2:6 + 2 * len("one \u0a41")]
        blocks = parse_file(write(tmp_path, "app.log", data)).blocks
        assert [(b.text, b.first_line) for b in blocks] == [("one \u0a41\u0100 two", 1),
                                                            ("three", 2)]

    def test_invalid_utf8_bytes(self, tmp_path):
        data = b"ok line\nbad \xff\xfe byte \xc3\n\xe2\x82 end\n"
        parsed = parse_file(write(tmp_path, "app.log", data))
        assert parsed.encoding == "latin-1"
        assert [b.text for b in parsed.blocks] == ["ok line", "bad ÿþ byte Ã", "â\x82 end"]
        assert_exact_lines(data, parsed.blocks, "latin-1")

    def test_utf8_cut_in_the_last_character(self, tmp_path):
        data = "done\nhalf é".encode()[:-1]  # a writer is in the middle of "é"
        parsed = parse_file(write(tmp_path, "app.log", data))
        assert parsed.encoding == "utf-8"
        assert parsed.blocks[0].text == "done"

    @pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", "utf-16", "latin-1"])
    def test_report_encodings(self, tmp_path, codec):
        text = "# Résumé\n\nCafé au lait.\n\n## Détails\n\nÜber alles.\n"
        parsed = parse_file(write(tmp_path, "notes.md", text.encode(codec)))
        assert [(b.text, b.heading, b.first_line) for b in parsed.blocks] == [
            ("Résumé", "Résumé", 1), ("Café au lait.", "Résumé", 3),
            ("Détails", "Résumé > Détails", 5), ("Über alles.", "Résumé > Détails", 7),
        ]


    @pytest.mark.parametrize("codec", ["utf-8", "latin-1", "utf-16", "utf-32"])
    def test_whole_lines_end_at_the_last_line_break(self, codec):
        # in UTF-16, U+0A00 U+0100 hold the bytes of "\n" across two characters
        data = "one é\ntwo\u0a00\u0100 thr".encode(codec, "replace")
        assert data[:whole_lines(data)].decode(codec) == "one é\n"
        assert whole_lines("no line break yet".encode(codec)) == 0
        assert whole_lines(b"") == 0


class TestBinaryAndEmpty:
    def test_random_bytes(self, tmp_path):
        junk = random.Random(0).randbytes(10_000)
        with pytest.raises(ParseError, match=r"junk.log: looks like a binary file") as caught:
            parse_file(write(tmp_path, "junk.log", junk))
        assert caught.value.code == "binary"
        assert str(caught.value).startswith(str(tmp_path / "junk.log"))

    def test_nul_bytes(self, tmp_path):
        with pytest.raises(ParseError) as caught:
            parse_file(write(tmp_path, "notes.txt", b"hello\x00world\n" * 100))
        assert caught.value.code == "binary"

    def test_control_characters_without_nul(self, tmp_path):
        with pytest.raises(ParseError) as caught:
            parse_file(write(tmp_path, "data.txt", bytes(range(1, 32)) * 100))
        assert caught.value.code == "binary"

    @pytest.mark.parametrize(("name", "data"), [
        ("app.log", b""), ("app.log", b"\n \n\t\n"), ("notes.md", "\ufeff  \n".encode()),
        ("paper.pdf", b""), ("notes.txt", "\n\n".encode("utf-16")),
    ])
    def test_empty_is_no_blocks(self, tmp_path, name, data):
        parsed = parse_file(write(tmp_path, name, data))
        assert parsed.blocks == []
        assert parsed.kind == detect_kind(Path(name), data)


class TestGzip:
    @needs_loghub
    def test_log_gz_matches_the_plain_log(self, tmp_path):
        data = (LOGHUB / "Spark_2k.log").read_bytes()
        packed = parse_file(write(tmp_path, "spark.log.1.gz", gzip.compress(data)))
        assert packed == parse(LOGHUB / "Spark_2k.log", data)

    def test_format_comes_from_the_inner_name(self, tmp_path):
        text = b"Title\n=====\n\nBody text.\n"
        assert parse_file(write(tmp_path, "guide.rst.gz", gzip.compress(text))).blocks[1] \
            .heading == "Title"
        pdf = gzip.compress(make_pdf([["Zipped page."]]))
        assert parse_file(write(tmp_path, "paper.pdf.gz", pdf)).blocks[0].text == "Zipped page."

    def test_truncated(self, tmp_path):
        packed = gzip.compress(b"line one\nline two\n" * 1000)
        with pytest.raises(ParseError, match="broken gzip stream") as caught:
            parse_file(write(tmp_path, "app.log.gz", packed[: len(packed) // 2]))
        assert caught.value.code == "gzip"

    def test_not_gzip_at_all(self, tmp_path):
        with pytest.raises(ParseError) as caught:
            parse_file(write(tmp_path, "app.log.gz", b"plain text, not compressed\n"))
        assert caught.value.code == "gzip"

    def test_bomb_stops_early(self, tmp_path):
        deflate = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
        zeros = bytes(2**20)
        bomb = b"".join(deflate.compress(zeros) for _ in range(300)) + deflate.flush()
        path = write(tmp_path, "bomb.log.gz", bomb)
        tracemalloc.start()
        try:
            with pytest.raises(ParseError, match="more than 1048576 bytes") as caught:
                parse_file(path, max_bytes=2**20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert caught.value.code == "too-large"
        assert peak < 16 * 2**20, "the whole 300 MiB was decompressed"

    def test_plain_file_over_the_cap(self, tmp_path):
        with pytest.raises(ParseError) as caught:
            parse_file(write(tmp_path, "app.log", b"x\n" * 1000), max_bytes=100)
        assert caught.value.code == "too-large"


class TestPlainText:
    def test_paragraphs_with_line_ranges(self, tmp_path):
        text = b"Summary\nof the outage.\n\n\nSecond paragraph.  \r\n\r\n  indented third\n"
        blocks = parse_file(write(tmp_path, "notes.txt", text)).blocks
        assert [(b.text, b.first_line, b.last_line, b.heading) for b in blocks] == [
            ("Summary\nof the outage.", 1, 2, None), ("Second paragraph.", 5, 5, None),
            ("  indented third", 7, 7, None),
        ]


class TestMarkdown:
    TEXT = """Preface line.

# Install #

Run the installer.
It takes a minute.

```sh
make

make install
```

Setup
-----

#hashtag is not a heading

### Deep dive

Details.

---

## Usage

Use it.
"""

    def test_headings_paragraphs_and_fences(self, tmp_path):
        blocks = parse_file(write(tmp_path, "notes.md", self.TEXT.encode())).blocks
        assert [(b.text, b.first_line, b.last_line, b.heading) for b in blocks] == [
            ("Preface line.", 1, 1, None),
            ("Install", 3, 3, "Install"),
            ("Run the installer.\nIt takes a minute.", 5, 6, "Install"),
            ("```sh\nmake\n\nmake install\n```", 8, 12, "Install"),
            ("Setup", 14, 15, "Install > Setup"),
            ("#hashtag is not a heading", 17, 17, "Install > Setup"),
            ("Deep dive", 19, 19, "Install > Setup > Deep dive"),
            ("Details.", 21, 21, "Install > Setup > Deep dive"),
            ("Usage", 25, 25, "Install > Usage"),
            ("Use it.", 27, 27, "Install > Usage"),
        ]

    def test_unclosed_fence_runs_to_the_end(self, tmp_path):
        text = b"# A\n\n~~~~\ncode\n\n# not a heading\n~~~\n"
        blocks = parse_file(write(tmp_path, "notes.md", text)).blocks
        assert blocks[-1].text == "~~~~\ncode\n\n# not a heading\n~~~"
        assert blocks[-1].heading == "A"


class TestRst:
    TEXT = """==========
User Guide
==========

Welcome.

Install
=======

Run it.
Twice.

Options
-------

Flags.

----------

After a transition.

Usage
=====

Go.
"""

    def test_sections_and_levels(self, tmp_path):
        blocks = parse_file(write(tmp_path, "guide.rst", self.TEXT.encode())).blocks
        assert [(b.text, b.first_line, b.last_line, b.heading) for b in blocks] == [
            ("User Guide", 1, 3, "User Guide"),
            ("Welcome.", 5, 5, "User Guide"),
            ("Install", 7, 8, "User Guide > Install"),
            ("Run it.\nTwice.", 10, 11, "User Guide > Install"),
            ("Options", 13, 14, "User Guide > Install > Options"),
            ("Flags.", 16, 16, "User Guide > Install > Options"),
            ("After a transition.", 20, 20, "User Guide > Install > Options"),
            ("Usage", 22, 23, "User Guide > Usage"),
            ("Go.", 25, 25, "User Guide > Usage"),
        ]

    def test_short_underline_is_text(self, tmp_path):
        blocks = parse_file(write(tmp_path, "guide.rst", b"Example of a literal\n::\n")).blocks
        assert [(b.text, b.heading) for b in blocks] == [("Example of a literal", None)]


class TestHtml:
    TEXT = """<!DOCTYPE html>
<html>
<head><title>Ignored title</title>
<style>p { color: red }</style></head>
<body>
<h1>Incident &amp; fix</h1>
<p>The disk
   filled <b>up</b> at 10:32.</p>
<script>document.write("<p>not text</p>")</script>
<table><tr><th>node</th><td>7</td></tr></table>
<h2>Timeline</h2>
<div>first line<br>second line</div>
<pre>
  keep   this
    spacing
</pre>
</body></html>
"""

    def test_text_headings_and_source_lines(self, tmp_path):
        blocks = parse_file(write(tmp_path, "report.html", self.TEXT.encode())).blocks
        assert [(b.text, b.first_line, b.last_line, b.heading) for b in blocks] == [
            ("Incident & fix", 6, 6, "Incident & fix"),
            ("The disk filled up at 10:32.", 7, 8, "Incident & fix"),
            ("node | 7", 10, 10, "Incident & fix"),
            ("Timeline", 11, 11, "Incident & fix > Timeline"),
            ("first line\nsecond line", 12, 12, "Incident & fix > Timeline"),
            ("  keep   this\n    spacing", 14, 15, "Incident & fix > Timeline"),
        ]

    def test_html_found_by_content(self, tmp_path):
        data = b"<!doctype html><p>Hello</p><style>x</style>"
        assert [b.text for b in parse_file(write(tmp_path, "page.txt", data)).blocks] == ["Hello"]


class TestPdf:
    PAGES = [["First page, line one.", "First page, line two."], ["Second page text."],
             ["Third page text."]]

    def test_pages_come_back_numbered(self, tmp_path):
        parsed = parse_file(write(tmp_path, "paper.pdf", make_pdf(self.PAGES)))
        assert (parsed.kind, parsed.encoding) == ("report", "pdf")
        assert [(b.page, b.text) for b in parsed.blocks] == [
            (1, "First page, line one.\nFirst page, line two."), (2, "Second page text."),
            (3, "Third page text."),
        ]
        assert all(b.first_line is None and b.byte_start is None for b in parsed.blocks)

    def test_found_by_content(self, tmp_path):
        parsed = parse_file(write(tmp_path, "download", make_pdf(self.PAGES)))
        assert [b.page for b in parsed.blocks] == [1, 2, 3]

    def test_encrypted(self, tmp_path):
        path = write(tmp_path, "secret.pdf", encrypt(make_pdf(self.PAGES), "secret"))
        with pytest.raises(ParseError, match=r"secret.pdf: the PDF is encrypted") as caught:
            parse_file(path)
        assert caught.value.code == "encrypted-pdf"

    def test_encrypted_with_an_empty_password_opens(self, tmp_path):
        path = write(tmp_path, "open.pdf", encrypt(make_pdf(self.PAGES), "", "owner"))
        assert [b.page for b in parse_file(path).blocks] == [1, 2, 3]

    @pytest.mark.parametrize("damage", ["junk", "truncated", "not-pdf"])
    def test_corrupt(self, tmp_path, damage):
        pdf = make_pdf(self.PAGES)
        data = {"junk": b"%PDF-1.4\n" + random.Random(1).randbytes(5000),
                "truncated": pdf[: len(pdf) // 2], "not-pdf": b"just text\n"}[damage]
        with pytest.raises(ParseError, match="cannot read this PDF") as caught:
            parse_file(write(tmp_path, "broken.pdf", data))
        assert caught.value.code == "corrupt-pdf"
