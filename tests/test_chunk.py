"""Chunking packs Blocks into passages that never pass the token limit, lose or double no
line, and never join across a heading or a page."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.tiny import make_tokenizer

from kbd.errors import InputError
from kbd.ingest.chunk import LONG_CHARS_PER_TOKEN, Passage, chunk
from kbd.ingest.parsers import Block, Parsed, parse

LOGHUB = Path(os.environ.get("KBD_LOGHUB", "/work/shared/data/loghub"))
LOGHUB_FILES = sorted(LOGHUB.glob("*.log"))
needs_loghub = pytest.mark.skipif(not LOGHUB_FILES, reason=f"no loghub logs in {LOGHUB}")


def count_words(texts):
    return [len(text.split()) for text in texts]


class CallCounter:
    """Wraps a counter and records how many times, and with how many texts, it was called."""

    def __init__(self, count):
        self.count, self.calls = count, []

    def __call__(self, texts):
        self.calls.append(len(texts))
        return self.count(texts)


@pytest.fixture(scope="session")
def count_tokens():
    """The real counter: what CLaRa's encoder sees, less its three framing tokens."""
    tok = make_tokenizer(512)

    def count(texts):
        framed = [f"<ENC>{tok.bos_token}{t}{tok.eos_token}" for t in texts]
        return [len(ids) - 3 for ids in tok(framed, add_special_tokens=False)["input_ids"]]

    return count


def log_of(lines: list[str]) -> Parsed:
    data = "\n".join(lines).encode()
    return parse(Path("app.log"), data, "log")


def assert_log_passages(parsed: Parsed, passages: list[Passage], count, max_tokens: int):
    """The hard rule and full coverage: each passage within the limit by a fresh count;
    passages in order cover every line once; unsplit ones are exactly their lines joined;
    the pieces of a split line are the line, in order, less whitespace at the cuts."""
    assert [p.token_count for p in passages] == count([p.text for p in passages])
    assert max(p.token_count for p in passages) <= max_tokens
    lines = iter(parsed.blocks)
    at = 0  # how far into the current split line its pieces have come
    for passage in passages:
        if passage.split:
            if at == 0:
                line = next(lines)
            assert passage.first_line == passage.last_line == line.first_line
            found = line.text.find(passage.text, at)
            assert found >= 0 and not line.text[at:found].strip(), "text lost or doubled"
            at = found + len(passage.text)
            if not line.text[at:].strip():
                at = 0
            continue
        assert at == 0, "a split line's pieces end before its next passage"
        run = [next(lines) for _ in range(len(passage.text.split("\n")))]
        assert passage.text == "\n".join(b.text for b in run)
        assert (passage.first_line, passage.last_line) == (run[0].first_line, run[-1].last_line)
        assert (passage.byte_start, passage.byte_end) == (run[0].byte_start, run[-1].byte_end)
    assert at == 0 and next(lines, None) is None, "lines left over"


class TestLogChunks:
    @needs_loghub
    @pytest.mark.parametrize("max_tokens", [48, 256])
    @pytest.mark.parametrize("log", LOGHUB_FILES, ids=lambda p: p.stem)
    def test_loghub_exact_limit_and_coverage(self, log, max_tokens, count_tokens):
        parsed = parse(log, log.read_bytes())
        passages = chunk(parsed, count_tokens, max_tokens)
        assert_log_passages(parsed, passages, count_tokens, max_tokens)
        raw = log.read_bytes().decode().replace("\r\n", "\n").split("\n")
        unsplit = [p for p in passages if not p.split]
        assert all(p.text.split("\n") == raw[p.first_line - 1:p.last_line] for p in unsplit)

    @needs_loghub
    @pytest.mark.parametrize("log", LOGHUB_FILES, ids=lambda p: p.stem)
    def test_passages_are_as_large_as_fit(self, log, count_tokens):
        parsed = parse(log, log.read_bytes())
        passages = chunk(parsed, count_tokens, 256)
        following = [(p, q) for p, q in zip(passages, passages[1:], strict=False)
                     if not (p.split or q.split)]
        grown = count_tokens([f"{p.text}\n{q.text.split(chr(10))[0]}" for p, q in following])
        assert min(grown) > 256

    @needs_loghub
    def test_fast_and_batched(self, count_tokens):
        parsed = parse(LOGHUB / "Hadoop_2k.log", (LOGHUB / "Hadoop_2k.log").read_bytes())
        counter = CallCounter(count_tokens)
        start = time.perf_counter()
        chunk(parsed, counter, 512)
        assert time.perf_counter() - start < 1.0
        assert len(counter.calls) <= 10

    def test_ordinals_continue(self):
        passages = chunk(log_of(["a b", "c d", "e f"]), count_words, 2, first_ordinal=7)
        assert [(p.ordinal, p.text) for p in passages] == [(7, "a b"), (8, "c d"), (9, "e f")]

    def test_blank_lines_inside_a_passage(self):
        parsed = log_of(["one", "", "", "two", "three"])
        passages = chunk(parsed, count_words, 2)
        assert [(p.text, p.first_line, p.last_line) for p in passages] == [
            ("one\ntwo", 1, 4), ("three", 5, 5)]

    def test_empty(self):
        assert chunk(Parsed("log", [], "utf-8"), count_words, 10) == []


class TestOverlong:
    def test_long_line_is_split_at_whitespace(self):
        long = " ".join(f"w{i}" for i in range(25))
        parsed = log_of(["before", long, "after"])
        passages = chunk(parsed, count_words, 10)
        assert [(p.split, p.first_line) for p in passages] == [(False, 1)] + [(True, 2)] * 3 \
            + [(False, 3)]
        pieces = [p for p in passages if p.split]
        assert " ".join(p.text for p in pieces) == long
        assert all(p.token_count <= 10 for p in pieces)
        assert {(p.byte_start, p.byte_end) for p in pieces} == {(7, 7 + len(long))}

    def test_line_without_whitespace_is_split_between_characters(self):
        line = "".join(chr(97 + i % 26) for i in range(1000))
        parsed = log_of([line])
        passages = chunk(parsed, lambda texts: [len(t) for t in texts], 64)
        assert "".join(p.text for p in passages) == line
        assert all(p.split and len(p.text) <= 64 for p in passages)

    def test_two_megabyte_line(self):
        words = [f"w{i % 1000}" for i in range(400_000)]
        parsed = log_of(["start", " ".join(words), "end"])
        passages = chunk(parsed, count_words, 512)
        assert_log_passages(parsed, passages, count_words, 512)
        assert sum(p.split for p in passages) >= 400_000 // 512

    def test_two_megabyte_line_real_counter(self, count_tokens):
        line = " ".join(["error disk full on node 7"] * 70_000)
        parsed = log_of([line])
        passages = chunk(parsed, count_tokens, 512)
        assert_log_passages(parsed, passages, count_tokens, 512)

    def test_long_line_is_never_counted_whole(self, count_tokens):
        """A tokenizer spends about 100 bytes per character of a text it counts: a 10 MB
        line must be cut from an estimate, only its pieces counted."""
        longest = []

        def recording(texts):
            longest.append(max(map(len, texts)))
            return count_tokens(texts)

        line = " ".join(["error disk full on node 7"] * 400_000)
        parsed = log_of(["start", line, "end"])
        passages = chunk(parsed, recording, 256)
        assert_log_passages(parsed, passages, count_tokens, 256)
        assert max(longest) <= LONG_CHARS_PER_TOKEN * 256 < len(line)

    def test_long_text_of_few_tokens_is_counted(self):
        """Past LONG_CHARS_PER_TOKEN characters a token, a text whose start is within the
        limit is counted whole (cheap: it has few tokens) and kept whole when it fits."""
        line = "x" + " " * (LONG_CHARS_PER_TOKEN * 64) + "y"
        passages = chunk(log_of([line]), count_words, 64)
        assert [(p.text, p.token_count, p.split) for p in passages] == [(line, 2, False)]

    def test_counter_that_estimates_cannot_predict(self):
        def superadditive(texts):  # each word costs more the longer the text
            return [len(t.split()) + len(t.split()) ** 2 // 50 for t in texts]

        parsed = log_of([" ".join(["w"] * (i % 7 + 1)) for i in range(300)])  # 1,200 words
        counter = CallCounter(superadditive)
        passages = chunk(parsed, counter, 60)
        assert_log_passages(parsed, passages, superadditive, 60)
        assert not any(p.split for p in passages)
        assert len(passages) < 80, "one bad estimate should not leave one line per passage"
        assert len(counter.calls) <= 10, "later plans should learn from the miss"

    @needs_loghub
    def test_counter_that_estimates_slightly_miss(self):
        def quarter_chars(texts):  # joining texts costs a few tokens more than their parts
            return [(len(t) + 3) // 4 for t in texts]

        parsed = parse(LOGHUB / "Spark_2k.log", (LOGHUB / "Spark_2k.log").read_bytes())
        counter = CallCounter(quarter_chars)
        passages = chunk(parsed, counter, 200)
        assert_log_passages(parsed, passages, quarter_chars, 200)
        assert sum(p.token_count for p in passages) / len(passages) > 170
        assert len(counter.calls) <= 20

    def test_limit_too_small_for_anything(self):
        with pytest.raises(InputError, match="leaves no room"):
            chunk(log_of(["a"]), lambda texts: [t.count(" ") + 5 for t in texts], 5)

    def test_limit_too_small_for_one_character(self):
        with pytest.raises(InputError, match="single character"):
            chunk(log_of(["abc"]), lambda texts: [3 * len(t) for t in texts], 2)


def report(*blocks: tuple[str, str | None, int | None]) -> Parsed:
    """A report of (text, heading, page) paragraphs, one line each."""
    return Parsed("report", [Block(text, n, n, page, None, None, heading)
                             for n, (text, heading, page) in enumerate(blocks, 1)], "utf-8")


class TestReportChunks:
    def test_paragraphs_pack_within_a_section(self):
        parsed = report(("Intro", "Intro", None), ("one two", "Intro", None),
                        ("three four", "Intro", None), ("Setup", "Intro > Setup", None),
                        ("five", "Intro > Setup", None))
        passages = chunk(parsed, count_words, 10)
        assert [(p.text, p.heading, p.first_line, p.last_line) for p in passages] == [
            ("Intro\n\none two\n\nthree four", "Intro", 1, 3),
            ("Setup\n\nfive", "Intro > Setup", 4, 5),
        ]

    def test_never_across_a_page(self):
        parsed = report(("a", None, 1), ("b", None, 1), ("c", None, 2), ("d", None, 3))
        passages = chunk(parsed, count_words, 100)
        assert [(p.text, p.page) for p in passages] == [("a\n\nb", 1), ("c", 2), ("d", 3)]

    def test_markdown_sections_real_counter(self, count_tokens):
        sections = [f"## Section {s}\n\n" + "\n\n".join(
            f"Paragraph {s}.{k}: the disk on node {k} is full." for k in range(30))
            for s in range(4)]
        parsed = parse(Path("notes.md"), ("# Report\n\n" + "\n\n".join(sections)).encode())
        passages = chunk(parsed, count_tokens, 64)
        assert max(count_tokens([p.text for p in passages])) <= 64
        heading_of = {b.first_line: b.heading for b in parsed.blocks}
        for passage in passages:  # every line of a passage sits under the passage's heading
            lines = range(passage.first_line, passage.last_line + 1)
            assert {heading_of[n] for n in lines if n in heading_of} == {passage.heading}
        assert [p.heading for p in passages if p.text.startswith("Section")] == [
            f"Report > Section {s}" for s in range(4)]
        kept = "\n\n".join(p.text for p in passages).split("\n\n")
        assert kept == [b.text for b in parsed.blocks]

    def test_long_paragraph_splits_at_sentence_ends(self):
        sentences = [f"Sentence {i} has exactly six words." for i in range(20)]
        parsed = report(("Title", "Title", None), (" ".join(sentences), "Title", None))
        passages = chunk(parsed, count_words, 20)
        assert [p.text for p in passages] == ["Title"] + [
            " ".join(sentences[i:i + 3]) for i in range(0, 20, 3)]
        assert [p.split for p in passages] == [False] + [True] * 7
        assert {(p.first_line, p.heading) for p in passages[1:]} == {(2, "Title")}

    def test_long_sentence_splits_at_words(self):
        sentence = " ".join(f"word{i}" for i in range(50)) + "."
        parsed = report(("Short one. " + sentence, None, 4))
        passages = chunk(parsed, count_words, 12)
        assert passages[0].text == "Short one."
        assert " ".join(p.text for p in passages[1:]) == sentence
        assert all(p.split and p.page == 4 and p.token_count <= 12 for p in passages)
