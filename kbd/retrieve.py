"""Which stored passages a question may be answered from: scope, kinds and time window.

The candidate list (live passages with memory under the loaded model, with their document
path, kind and ingest time) is read from the store once and kept until the store changes, so
a stream of questions costs no database reads; a filter is then a few array operations.

The text engine ranks with the store's full-text search instead (`search`): the question's
words, common English words left out, each matched as a phrase, any of them, BM25-ranked.
"""

from __future__ import annotations

import fnmatch
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kbd.store import Store
from kbd.store import queries as q

# Common English words: in an OR query they would match nearly every passage and drown out
# the words that matter. Left out of full-text queries.
STOP_WORDS = frozenset("""a about after all an and any are as at be been before being but by
can could did do does during for from had has have how i if in into is it its me my of on or
our over should so some than that the their them then there these they this those to under
was we were what when where which while who whom why will with would you your
""".split())
MAX_TERMS = 32  # a question longer than this many distinct words is searched by its first ones
SEARCH_FETCH = 4  # hits read per passage wanted; more are read while scopes filter them out


@dataclass(frozen=True)
class Scope:
    paths: tuple[str, ...] = ()  # folders, files or globs over document paths; empty: all
    kinds: tuple[str, ...] = ()  # log / report; empty: both
    since_s: float | None = None  # only passages ingested in the last since_s seconds

    def matches_path(self, path: str) -> bool:
        if not self.paths:
            return True
        return any(path == p or path.startswith(p.rstrip("/") + "/")
                   or fnmatch.fnmatchcase(path, p) for p in self.paths)


class Candidates:
    def __init__(self, rows: list):
        self.passage_ids = np.array([r.id for r in rows], dtype=np.int64)
        self.memory_rows = np.array([r.row for r in rows], dtype=np.int64)
        self.paths = [r.path for r in rows]
        self.kinds = np.array([r.kind for r in rows], dtype=object)
        self.ingested = np.array([r.created_at.timestamp() for r in rows], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.passage_ids)

    def select(self, scope: Scope, now: float | None = None) -> np.ndarray:
        """Positions of the candidates a question with this scope may use."""
        keep = np.ones(len(self), dtype=bool)
        if scope.paths:
            by_path = {p: scope.matches_path(p) for p in set(self.paths)}
            keep &= np.array([by_path[p] for p in self.paths], dtype=bool)
        if scope.kinds:
            keep &= np.isin(self.kinds, list(scope.kinds))
        if scope.since_s is not None:
            keep &= self.ingested >= (now or time.time()) - scope.since_s
        return np.flatnonzero(keep)


class Retriever:
    """Candidates for one model (None: every live passage, for the text engine), re-read
    from the store only when its generation moved."""

    def __init__(self, store: Store, model: str | None):
        self.store = store
        self.model = model
        self._generation = -1
        self._candidates = Candidates([])

    def candidates(self, generation: int) -> Candidates:
        if generation != self._generation:
            with self.store.read() as conn:
                self._candidates = Candidates(q.candidate_rows(conn, self.model))
            self._generation = generation
        return self._candidates


def unique_rows(candidates: Candidates, positions: Sequence[int]) -> tuple[np.ndarray, dict]:
    """Memory rows to rank (identical passages share a row) and, per row, the passage it
    stands for (the most recently ingested)."""
    chosen: dict[int, int] = {}
    for pos in positions:
        row = int(candidates.memory_rows[pos])
        if row not in chosen or candidates.ingested[pos] >= candidates.ingested[chosen[row]]:
            chosen[row] = pos
    rows = np.fromiter(chosen, dtype=np.int64, count=len(chosen))
    return rows, {row: int(candidates.passage_ids[pos]) for row, pos in chosen.items()}


def search_terms(question: str) -> list[str]:
    """The question's words for full-text search: whitespace-separated, outer punctuation
    stripped (inner punctuation stays, so an IP, `blk_-1608` or a path is one phrase),
    distinct, and without stop words unless nothing else is left."""
    words: dict[str, str] = {}
    for chunk in question.split():
        word = chunk.strip(string.punctuation)
        if re.search(r"\w", word):
            words.setdefault(word.lower(), word)
    content = [w for key, w in words.items() if key not in STOP_WORDS]
    return (content or list(words.values()))[:MAX_TERMS]


def search(store: Store, question: str, allowed: set[int] | None,
           k: int) -> list[tuple[int, float]]:
    """The k best (passage id, score) for the question among the allowed passage ids (None:
    every live passage), one passage per distinct text."""
    terms = search_terms(question)
    limit = SEARCH_FETCH * k
    while True:
        with store.read() as conn:
            hits = q.search_passages(conn, terms, limit)
        picked: dict[str, tuple[int, float]] = {}
        for hit in hits:
            if (allowed is None or hit.id in allowed) and hit.text_hash not in picked:
                picked[hit.text_hash] = (hit.id, float(hit.score))
            if len(picked) == k:
                return list(picked.values())
        if len(hits) < limit:  # every match was read
            return list(picked.values())
        limit *= 8


def weak_evidence(question: str, texts: list[str]) -> bool:
    """Whether the texts are no evidence for the question: none holds any of its content
    terms (stop words never count), or one of its names (an id, a version, an acronym, a
    capitalized word) is in none of them, as `Kafka` is in "Which Kafka topic did the Spark
    job read from?" over Spark's logs: they are about something else of the same kind."""
    from kbd.evidence import matched_terms

    terms = [t for t in search_terms(question) if t.lower() not in STOP_WORDS]
    matched = set().union(*(matched_terms(terms, text) for text in texts))
    first = question.split()[0].strip(string.punctuation + "¿¡") if question.split() else ""
    return not matched or any(is_name(t) and t != first for t in set(terms) - matched)


def is_name(term: str) -> bool:
    """An id, version, path, acronym or capitalized word: what a question names, not asks.
    A bare number is not one: a count or a small id is often written otherwise."""
    if term.isdigit():
        return False
    return bool(re.search(r"\d|[_/]|\w[-.]\w", term) or term[:1].isupper()
                or len(term) >= 3 and re.search(r"[A-Z]", term[1:]))
