"""Passages: parsed Blocks packed into texts that fit the model's token limit, each keeping
the lines (or page), bytes and heading it came from.

The limit is exact: every passage is counted with the real tokenizer before it is kept, and
none is truncated. To keep that cheap, runs of blocks are planned from per-block counts
(calibrated for what an empty text and a separator cost) and checked in batches; a run the
plan got wrong is shrunk by a search, and later plans scale their estimates by the miss. A
text of more than LONG_CHARS_PER_TOKEN characters per allowed token (a 10 MB log line) is
not counted whole, which would cost the tokenizer some 100 bytes of memory per character:
its start alone shows it is over the limit, and the pieces it is cut into are counted.

Logs: consecutive lines joined with "\\n". Reports: paragraphs of one section (and page)
joined with "\\n\\n", never across a heading or page change. A single line or paragraph over
the limit is cut into several passages marked `split`: paragraphs at sentence ends first,
then anything at whitespace, and text without whitespace between characters.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from math import ceil

from kbd.errors import InputError
from kbd.ingest.parsers import Block, Parsed

CountTokens = Callable[[Sequence[str]], list[int]]
Pieces = list[tuple[str, int]]  # (text, tokens) of the passages one overlong text became

COUNT_BATCH = 1024  # texts per count_tokens call
# no tokenizer packs this many characters into a token on average: a text this many times
# longer than the limit whose start alone counts over the limit is over it, surely
LONG_CHARS_PER_TOKEN = 64
PLAN_AHEAD = 256  # runs planned and checked per round
SEARCH_WAYS = 8  # run lengths tried per call when a planned run proves too long
CUT_SLACK = 1.1  # an overlong text is cut into this many times the parts its count asks for
SEPARATORS = {"log": "\n", "report": "\n\n"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Passage:
    ordinal: int
    text: str
    first_line: int | None
    last_line: int | None
    page: int | None
    byte_start: int | None
    byte_end: int | None
    token_count: int
    heading: str | None
    split: bool  # a piece of one line or paragraph that was longer than the limit


def chunk(parsed: Parsed, count_tokens: CountTokens, max_tokens: int,
          first_ordinal: int = 0) -> list[Passage]:
    """Passages of at most max_tokens (as count_tokens counts them), in file order."""
    blocks = parsed.blocks
    if not blocks:
        return []
    packer = Packer(count_tokens, max_tokens, SEPARATORS[parsed.kind])
    texts = [block.text for block in blocks]
    runs = packer.runs(texts, section_starts(blocks))
    # single lines or paragraphs over the limit, all cut at once to batch their counting
    overlong = [(texts[i], tokens) for i, _, tokens in runs if tokens > max_tokens]
    pieces_of_overlong = iter(packer.cut(overlong) if parsed.kind == "log"
                              else split_paragraphs(packer, overlong))
    passages: list[Passage] = []
    for i, j, tokens in runs:
        if tokens <= max_tokens:
            pieces, split = [(packer.join(texts[i:j]), tokens)], False
        else:
            pieces, split = next(pieces_of_overlong), True
        for text, count in pieces:
            passages.append(make_passage(first_ordinal + len(passages), blocks[i:j], text,
                                         count, split))
    return passages


def section_starts(blocks: Sequence[Block]) -> list[int]:
    """Indices of blocks whose heading path or page differs from the block before."""
    return [i for i in range(1, len(blocks))
            if (blocks[i].heading, blocks[i].page) != (blocks[i - 1].heading, blocks[i - 1].page)]


def make_passage(ordinal: int, run: Sequence[Block], text: str, tokens: int,
                 split: bool) -> Passage:
    first, last = run[0], run[-1]
    return Passage(ordinal, text, first.first_line, last.last_line, first.page,
                   first.byte_start, last.byte_end, tokens, first.heading, split)


def split_paragraphs(packer: Packer, paragraphs: Sequence[tuple[str, int]]) -> list[Pieces]:
    """The pieces of each overlong (paragraph, tokens): its sentences packed together where
    they fit, a sentence over the limit cut like any text."""
    if not paragraphs:
        return []
    sentences: list[str] = []
    owners: list[int] = []  # the paragraph of each sentence
    starts: list[int] = []
    for owner, (text, _) in enumerate(paragraphs):
        starts.append(len(sentences))
        parts = SENTENCE_END.split(text)
        sentences += parts
        owners += [owner] * len(parts)
    by_sentence = Packer(packer.count_tokens, packer.max_tokens, " ")
    runs = by_sentence.runs(sentences, starts)
    overlong = iter(by_sentence.cut([(sentences[i], tokens) for i, _, tokens in runs
                                     if tokens > packer.max_tokens]))
    pieces: list[Pieces] = [[] for _ in paragraphs]
    for i, j, tokens in runs:
        if tokens <= packer.max_tokens:
            pieces[owners[i]].append((by_sentence.join(sentences[i:j]), tokens))
        else:
            pieces[owners[i]] += next(overlong)
    return pieces


class Packer:
    """Packs texts, joined with `sep`, into runs whose joined text fits max_tokens."""

    def __init__(self, count_tokens: CountTokens, max_tokens: int, sep: str):
        self.count_tokens, self.max_tokens, self.sep = count_tokens, max_tokens, sep
        empty, one, two = count_tokens(["", "x", f"x{sep}x"])
        if empty >= max_tokens:
            raise InputError(f"max_tokens {max_tokens} leaves no room: an empty passage "
                             f"already counts {empty} tokens")
        self.overhead = empty  # what any text costs before its content (special tokens)
        self.sep_cost = two - 2 * one + empty
        self.scale = 1.0  # grows each time a planned run proves longer than its estimate

    def join(self, texts: Sequence[str]) -> str:
        return self.sep.join(texts)

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts; a very long text that is surely over the limit gets an estimate
        from its start, scaled by its length (enough to plan its cut)."""
        long = LONG_CHARS_PER_TOKEN * self.max_tokens
        starts = [text[:long] for text in texts]
        counts: list[int] = []
        for start in range(0, len(starts), COUNT_BATCH):
            counts += self.count_tokens(starts[start:start + COUNT_BATCH])
        for i, (text, count) in enumerate(zip(texts, counts, strict=True)):
            if len(text) > long:
                counts[i] = (ceil(count * len(text) / long) if count > self.max_tokens
                             else self.count_tokens([text])[0])  # few tokens: cheap whole
        return counts

    def runs(self, texts: Sequence[str], starts: Sequence[int] = ()) -> list[tuple[int, int, int]]:
        """(i, j, tokens) such that texts[i:j] joined counts `tokens`: consecutive runs that
        cover all texts and never cross a start. Over the limit only as a single text."""
        counts = self.count(texts)
        # a text's share of a run: its count less the overhead, plus one separator
        prefix = list(accumulate((max(0, c - self.overhead + self.sep_cost) for c in counts),
                                 initial=0))
        stops = sorted({*starts, len(texts)})
        runs: list[tuple[int, int, int]] = []
        while not runs or runs[-1][1] < len(texts):
            plan = self.plan(prefix, runs[-1][1] if runs else 0, stops)
            checked = self.count([self.join(texts[i:j]) for i, j in plan])
            for (i, j), tokens in zip(plan, checked, strict=True):
                if tokens > self.max_tokens and j - i > 1:
                    self.scale = tokens / max(1, self.estimate(prefix, i, j))
                    runs.append(self.longest_fitting(texts, i, j, counts[i]))
                    break  # the rest of the plan started at the wrong place
                runs.append((i, j, tokens))
        return runs

    def estimate(self, prefix: list[int], i: int, j: int) -> int:
        return self.overhead - self.sep_cost + prefix[j] - prefix[i]

    def plan(self, prefix: list[int], start: int, stops: list[int]) -> list[tuple[int, int]]:
        """Up to PLAN_AHEAD runs from start, each as long as its estimate allows."""
        budget = self.max_tokens / self.scale - self.overhead + self.sep_cost
        plan: list[tuple[int, int]] = []
        i = start
        while i < len(prefix) - 1 and len(plan) < PLAN_AHEAD:
            stop = stops[bisect_right(stops, i)]
            j = max(i + 1, bisect_right(prefix, prefix[i] + budget, i + 1, stop + 1) - 1)
            plan.append((i, j))
            i = j
        return plan

    def longest_fitting(self, texts: Sequence[str], i: int, j: int,
                        first_count: int) -> tuple[int, int, int]:
        """The longest run from i that fits, given that texts[i:j] does not (a run of one
        text is taken even when over the limit: it will be cut)."""
        good, good_tokens, bad = i + 1, first_count, j
        while bad - good > 1:
            ends = list(range(good + 1, bad, max(1, (bad - good) // SEARCH_WAYS)))
            counted = self.count([self.join(texts[i:end]) for end in ends])
            for end, tokens in zip(ends, counted, strict=True):
                if tokens > self.max_tokens:
                    bad = end
                    break
                good, good_tokens = end, tokens
        return i, good, good_tokens

    def cut(self, texts: Sequence[tuple[str, int]]) -> list[Pieces]:
        """The pieces of each (text, tokens) over the limit: in order, each within it, cut at
        whitespace where possible. Each round cuts every piece still over the limit into
        about as many parts as its count asks for, and counts all new parts in one batch."""
        pieces = [(owner, text, tokens) for owner, (text, tokens) in enumerate(texts)]
        while any(count > self.max_tokens for _, _, count in pieces):
            parts: list[tuple[int, str, int | None]] = []
            for owner, piece, count in pieces:
                if count > self.max_tokens:
                    parts += [(owner, part, None) for part in self.cut_once(piece, count)]
                else:
                    parts.append((owner, piece, count))
            counted = iter(self.count([part for _, part, count in parts if count is None]))
            pieces = [(owner, part, next(counted) if count is None else count)
                      for owner, part, count in parts]
        grouped: list[Pieces] = [[] for _ in texts]
        for owner, piece, count in pieces:
            grouped[owner].append((piece, count))
        return grouped

    def cut_once(self, text: str, tokens: int) -> list[str]:
        if len(text) < 2:
            raise InputError(f"max_tokens {self.max_tokens} is too small: the single "
                             f"character {text!r} counts {tokens} tokens")
        return split_evenly(text, min(len(text), ceil(tokens * CUT_SLACK / self.max_tokens)))


def split_evenly(text: str, parts: int) -> list[str]:
    """text cut into `parts` pieces of about equal length (parts <= len(text)); each cut moves
    back to the last whitespace since the previous cut, if any. Pieces are stripped, and
    blank ones dropped."""
    cuts = [0]
    for k in range(1, parts):
        target = k * len(text) // parts
        space = max(text.rfind(ch, cuts[-1] + 1, target + 1) for ch in " \t\n")
        cuts.append(space if space > cuts[-1] else target)
    cuts.append(len(text))
    return [piece for start, end in pairwise(cuts) if (piece := text[start:end].strip())]
