"""The two engines the model worker answers with, behind one small interface.

CLaRa, the real engine, ranks the candidates' stored memory with its query reasoner, fuses
that ranking with the store's full-text search (BM25) so that exact ids, IPs and block numbers
are not lost to a dense-only ranking, and generates from the top-k memory. The text engine
ranks the candidates with BM25 fused with a small dense model (kbd.retrieve.search) and has
an instruct model read the top-k as plain text. Both take the
same scopes and time windows and give answers with their sources, so queueing, batching,
streaming and recording stay in the worker, shared.
"""

from __future__ import annotations

import re
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kbd.config import ModelConfig
from kbd.errors import InputError
from kbd.model.clara import Clara
from kbd.model.index import RESCORE, MemoryIndex
from kbd.model.text import Passage, TextModel
from kbd.retrieve import (
    FUSE_DEPTH,
    Candidates,
    Retriever,
    Scope,
    asked_terms,
    fuse,
    joined_words,
    lexical_ranking,
    question_words,
    quoted_words,
    search,
    search_terms,
    unique_rows,
    weak_evidence,
)
from kbd.runtime import aggregate, evidence
from kbd.runtime.compress import memory_id, open_matrix
from kbd.store import Store
from kbd.store import queries as q

TEXT_TOP_K = 5  # the paper's top-5 setting, CLaRa's generation_top_k
# On the dev split, the top 3 passages' matching lines hold the answer nearly as often as
# the top 5's (125 vs 126 of 184 best lines right) in a prompt of 358 tokens, not 474
PROMPT_SOURCES = 3
BEST_SOURCE_LINES = 2  # matching lines the prompt shows of the best-ranked passage
SOURCE_LINES = 1  # ... and of each other one
CONTEXT_LINES = 1  # lines shown before and after the best passage's matching lines
# where passages were found but none answers, "no passage matches" would be untrue
NOT_FOUND = "Not found: no stored line answers this question; the nearest passages are listed."
SAID_NOT_FOUND = re.compile(r"\W*not found\b", re.IGNORECASE)  # the answerer's decline
FREQUENCY_CAP = 1000  # passages counted per question term; a term in more is common anyway

Source = tuple[int, int, float]  # rank (1 = best), passage id, score


@dataclass
class Cited:
    """One source of an answer."""

    rank: int  # the answer cites it as [rank]
    passage_id: int
    score: float
    cited_lines: list[int] = field(default_factory=list)  # file lines shown as matching
    in_prompt: bool = True


@dataclass
class Reply:
    text: str | None  # None: the question failed
    sources: list[Cited]  # best first
    status: str = "ok"  # ok | not-found (weak evidence: the model was not asked)
    citations_dropped: int = 0  # citations of sources the prompt did not hold, removed
    extractive: bool = False  # the answer is the best line quoted (answer = "quote", or the
    # model's answer was not grounded)
    aggregate: str | None = None  # count | first | last | list: told from every matching line


class Engine(Protocol):
    name: str  # clara | text: recorded with every answer
    model: str  # the model's id: recorded with every answer
    top_k: int  # passages per answer when a question names none
    max_new_tokens: int  # the longest answer when a question names none
    tokenizer: Any  # decodes streamed tokens
    device: torch.device
    clara: Clara | None  # the CLaRa model whose ingest backlog the worker compresses
    retriever: Retriever  # its candidates: their snapshot is recorded with each answer

    def pools(self, revision: int, scopes: Sequence[Scope]) -> list[Sized]:
        """Per question, the passages it may be answered from (empty: none in its scope)."""
        ...

    def answer(self, questions: list[str], pools: list, top_k: int, max_new_tokens: int,
               streamer) -> list[Reply]:
        """Per question, the answer and its sources, best first."""
        ...


def load_engine(config: ModelConfig, store: Store) -> Engine:
    """Load the configured engine's model (the one that answers; only one is loaded)."""
    if config.active_engine == "text":
        # the quote answer reads no model: its weights are not loaded
        return TextEngine(TextModel.load(config.text_model, config.device, config.dtype,
                                         weights=config.answer != "quote"), store,
                          answer=config.answer)
    return ClaraEngine(Clara.load(config.checkpoint, config.base, config.device, config.dtype),
                       store)


@dataclass
class ClaraPool:
    rows: np.ndarray  # memory rows the question may rank
    passage_of: dict[int, int]  # memory row -> the passage it stands for

    def __len__(self) -> int:
        return len(self.rows)


class ClaraEngine:
    name = "clara"
    max_new_tokens = 128

    def __init__(self, clara: Clara, store: Store):
        self.clara = clara
        self.model = memory_id(clara, store.shares_memory)
        self.top_k = clara.config.generation_top_k
        self.tokenizer = clara.tokenizer
        self.device = clara.device
        self.index = MemoryIndex(open_matrix(store, clara), clara.device)
        self.store = store
        self.retriever = Retriever(store, self.model)

    def pools(self, revision: int, scopes: Sequence[Scope]) -> list[ClaraPool]:
        self.index.refresh()
        candidates = self.retriever.candidates(revision)
        pools = []
        for scope in scopes:
            rows, passage_of = unique_rows(candidates, candidates.select(scope))
            pools.append(ClaraPool(rows[rows < self.index.rows], passage_of))
        return pools

    def answer(self, questions: list[str], pools: list[ClaraPool], top_k: int,
               max_new_tokens: int, streamer) -> list[Reply]:
        if top_k < 1:
            raise InputError(f"top-k must be at least 1, got {top_k}")
        # CLaRa's vote: as deep as the index re-ranks exactly anyway (RESCORE = 4 x depth)
        found = self.index.search(self.clara.encode_queries(questions),
                                  max(top_k, RESCORE // 4),
                                  [torch.from_numpy(pool.rows) for pool in pools])
        memories, sources = [], []
        for question, pool, (rows, scores, _) in zip(questions, pools, found, strict=True):
            row_of = {pool.passage_of[row]: row for row in pool.rows.tolist()}
            ranked = [(pool.passage_of[row], score)
                      for row, score in zip(rows.tolist(), scores.tolist(), strict=True)]
            # BM25 first: a tie goes to the passage that holds the question's words
            fused = fuse([lexical_ranking(self.store, question, set(row_of), FUSE_DEPTH), ranked],
                         top_k)
            memories.append(self.index.exact(torch.tensor([row_of[pid] for pid, _ in fused])))
            sources.append([Cited(rank, pid, score) for rank, (pid, score) in enumerate(fused, 1)])
        texts = self.clara.generate(questions, memories, max_new_tokens, streamer=streamer)
        return [Reply(text, cited) for text, cited in zip(texts, sources, strict=True)]


@dataclass
class TextPool:
    candidates: Candidates
    positions: np.ndarray  # the candidates the question may read

    def __len__(self) -> int:
        return len(self.positions)

    def allowed(self) -> set[int] | None:
        """Passage ids the question may read; None: every live passage."""
        if len(self.positions) == len(self.candidates):
            return None
        return set(self.candidates.passage_ids[self.positions].tolist())

    def newest(self, k: int) -> list[int]:
        """The k passages ingested last; of one file, its last lines first."""
        ids = self.candidates.passage_ids[self.positions]
        order = np.lexsort((-ids, -self.candidates.ingested[self.positions]))
        return ids[order[:k]].tolist()


class TextEngine:
    name = "text"
    max_new_tokens = 64  # the CPU's time: a line quoted and cited fits
    clara = None  # no memory to compute: the text engine reads passages as they are stored

    def __init__(self, text_model: TextModel, store: Store, top_k: int = TEXT_TOP_K,
                 answer: str = "quote"):
        self.text_model = text_model
        self.model = text_model.name
        self.top_k = top_k
        self.answer_by = answer  # quote | generate (ModelConfig.answer)
        self.tokenizer = text_model.tokenizer
        self.device = text_model.device
        self.store = store
        self.retriever = Retriever(store, None)

    def pools(self, revision: int, scopes: Sequence[Scope]) -> list[TextPool]:
        candidates = self.retriever.candidates(revision)
        return [TextPool(candidates, candidates.select(scope)) for scope in scopes]

    def answer(self, questions: list[str], pools: list[TextPool], top_k: int,
               max_new_tokens: int, streamer) -> list[Reply]:
        picks = [self._pick(question, pool, top_k)
                 for question, pool in zip(questions, pools, strict=True)]
        with self.store.read() as conn:
            places = q.passage_places(conn, [pid for hits, _ in picks for pid, _ in hits])
            # the asked terms, the compounds a line may write two of them as, and the
            # abbreviations of the units they name (coverage)
            terms = {t for question in questions
                     for t in (*asked_terms(question), *joined_words(question))}
            terms |= {form for t in terms for form in evidence.unit_forms(t)}
            frequencies = q.term_frequencies(conn, sorted(terms), FREQUENCY_CAP)
            passages = q.count_live_passages(conn)
        found = [gather(question, hits, matched, places, frequencies, passages)
                 for question, (hits, matched) in zip(questions, picks, strict=True)]
        # counts and first/last need every matching line, not the best one or a model's read
        told = {id(e): aggregated(self.store, e, pool.allowed())
                for e, pool in zip(found, pools, strict=True) if e.shown}
        # weak evidence is not read: the model would answer from it all the same
        asked = [e for e in found if e.shown and told[id(e)] is None]
        if self.answer_by == "quote":
            said = {id(e): e.quote() for e in asked}
        else:
            generated = self.text_model.generate(
                [e.question for e in asked], [e.passages() for e in asked], max_new_tokens,
                streamer=streamer) if asked else []
            said = {id(e): e.reply(*g) for e, g in zip(asked, generated, strict=True)}
        return [told.get(id(e)) or said.get(id(e)) or e.not_found() for e in found]

    def _pick(self, question: str, pool: TextPool, k: int) -> tuple[list[tuple[int, float]],
                                                                     bool]:
        """The k best passages, and whether the search matched any."""
        hits = search(self.store, question, pool.allowed(), k)
        # no word of the question is in any passage it may read: the newest ones are listed
        # as the nearest, as CLaRa's ranking would still list k
        return (hits, True) if hits else ([(pid, 0.0) for pid in pool.newest(k)], False)


@dataclass
class Evidence:
    """A question's ranked passages and the lines of them its prompt shows."""

    question: str
    sources: list[Source]
    shown: list[evidence.Shown]  # empty: the evidence is weak, the model is not asked
    weights: dict[str, float]  # the question's terms by weight
    focus: evidence.Focus = evidence.Focus()

    def passages(self) -> list[Passage]:
        """The sources as the prompt shows them."""
        return [(s.rank, s.where, "\n".join(line.text for line in s.lines)) for s in self.shown]

    def not_found(self) -> Reply:
        return Reply(NOT_FOUND, [Cited(*s, in_prompt=False) for s in self.sources],
                     status="not-found")

    def quote(self) -> Reply:
        """The best record quoted with its place: the answer without the model."""
        return self.checked(evidence.extractive_answer(self.shown, self.weights, self.focus),
                            self.shown, dropped=0, extractive=True)

    def reply(self, text: str, held: int) -> Reply:
        """The generated text checked: citations of sources not held dropped, and an
        ungrounded answer replaced by the best line quoted."""
        shown = self.shown[:held]
        # not even the best source fit the context, or the model (kbd's answerer is trained
        # to) says the lines do not hold the answer
        if not shown or SAID_NOT_FOUND.match(text):
            return self.not_found()
        text, dropped = evidence.drop_citations(text, {s.rank for s in shown})
        _, best = evidence.best_line(shown, self.weights, self.focus)
        extractive = not evidence.grounded(text, best, shown, self.question)
        if extractive:
            text = evidence.extractive_answer(shown, self.weights, self.focus)
        return self.checked(text, shown, dropped, extractive)

    def checked(self, text: str, shown: list[evidence.Shown], dropped: int,
                extractive: bool) -> Reply:
        # two of a report's sentences may share the line one ends and the next starts on
        lines = {s.rank: list(dict.fromkeys(n for line in s.cited for n in line.span()))
                 for s in shown}
        return Reply(text, [Cited(rank, pid, score, lines.get(rank, []), rank in lines)
                            for rank, pid, score in self.sources],
                     citations_dropped=dropped, extractive=extractive)


def gather(question: str, hits: list[tuple[int, float]], matched: bool, places: dict,
           frequencies: dict[str, int], passages: int) -> Evidence:
    """The question's evidence: each passage's matching records, unless it is weak: no asked
    term or name in the passages, or a best record whose quoted lines hold too little of the
    question (evidence.coverage, weighed by the terms' passage counts in the store)."""
    texts = [about(places[pid]) for pid, _ in hits]
    if not matched or weak_evidence(question, texts):
        return Evidence(question, ranked(hits), [], {})
    records = {pid: evidence.records(places[pid].text, places[pid].first_line,
                                     file_line_numbers(places[pid]), places[pid].kind != "log")
               for pid, _ in hits}
    names = quoted_words(question)
    focus = evidence.Focus.of(question, names)
    # "besides dn-17": the answer is another datanode, it need not name dn-17
    words = [w for w in search_terms(question) if w != focus.excluded]
    weights = evidence.term_weights(words, [line.text for rs in records.values()
                                            for record in rs for line in record], names)
    shown: dict[int, evidence.Shown] = {}
    for pid, _ in hits:
        if len(shown) == PROMPT_SOURCES:
            break
        first = not shown
        found = evidence.show(len(shown) + 1, Path(places[pid].path).name, records[pid],
                              weights, BEST_SOURCE_LINES if first else SOURCE_LINES,
                              CONTEXT_LINES if first else 0, places[pid].heading or "")
        if found is not None:
            shown[pid] = found
    if shown:
        source, best = evidence.best_record(list(shown.values()), weights, focus)
        pid = next(pid for pid, s in shown.items() if s is source)
        held = (f"{evidence.record_text(best, weights, focus)}\n{places[pid].heading or ''}\n"
                f"{Path(source.where).stem}")
        # "Which file": a line writing a path holds what the word asks for, not the word
        asked = [t for t in asked_terms(question) if t != focus.excluded and not (
            t == focus.kind_word and focus.kind and focus.kind.search(held))]
        written = question_words(question)
        # an outcome is a whole word of the question, not a part of a glued name
        outcomes = [t for t in asked if t in written]
        if (evidence.coverage(asked, held, frequencies, passages, words, names)
                < evidence.COVERAGE_FLOOR or evidence.contradicted(outcomes, held)
                or focus.attribute and not evidence.matched_terms([focus.attribute], held,
                                                                  words)
                or evidence.about_another(asked, held)
                or focus.excluded and not evidence.others_of_kind(focus.excluded, held)
                or focus.why and not focus.states_cause(held)
                or focus.kind and not focus.kind.search(held)):
            return Evidence(question, ranked(hits), [], {})
    # the passages shown come first, so that the prompt's sources are [1] to [n]
    hits = sorted(hits, key=lambda hit: hit[0] not in shown)
    return Evidence(question, ranked(hits), list(shown.values()), weights, focus)


def about(place) -> str:
    """A passage's text with what it is about beyond its lines: its heading and file name
    (less its extension: `.log` is no word of the question's)."""
    return f"{place.text}\n{place.heading or ''}\n{Path(place.path).stem}"


def aggregated(store: Store, found: Evidence, allowed: set[int] | None) -> Reply | None:
    """The reply of kbd.runtime.aggregate for a question that counts or orders the matching
    lines."""
    told = aggregate.answer(store, found.question, found.shown, found.weights, found.sources,
                            allowed, file_line_numbers)
    return None if told is None else Reply(told.text, [Cited(*s) for s in told.sources],
                                           aggregate=told.kind)


def ranked(hits: list[tuple[int, float]]) -> list[Source]:
    return [(rank, pid, score) for rank, (pid, score) in enumerate(hits, 1)]


def file_line_numbers(place) -> list[int | None] | None:
    """The file line of each line of a passage's text, where the text skips some: a log's
    passage holds its non-blank lines (a journal export's records are separated by blank
    ones), a report's its paragraphs joined by one blank line whatever the file had. None
    where they are counted from first_line (a log with no blank line between them) or
    unknown (a PDF, or a file gone or changed since it was ingested)."""
    texts = place.text.split("\n")
    if place.first_line is None or place.kind == "log" and (
            place.last_line - place.first_line + 1 == len(texts)):
        return None
    try:
        with open(place.path, encoding="utf-8", errors="replace") as f:
            file_lines = f.read().split("\n")[place.first_line - 1:place.last_line]
    except OSError:  # gone or unreadable since it was ingested: lines are counted instead
        return None
    if place.kind == "log":  # one line of text per non-blank line (JSON is rendered anew)
        numbers = [place.first_line + i for i, line in enumerate(file_lines) if line.strip()]
        return numbers if len(numbers) == len(texts) else None
    numbers, at = [], 0
    for text in (t.strip() for t in texts):
        # a heading's line ends with its title; marks such as "## " are not in the text
        found = next((i for i in range(at, len(file_lines))
                      if file_lines[i].rstrip().endswith(text)), None) if text else None
        numbers.append(None if found is None else place.first_line + found)
        at = at if found is None else found + 1
    return numbers
