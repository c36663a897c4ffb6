"""Which stored passages a question may be answered from (scope, kinds and time window), and
how they are ranked.

The candidate list (live passages with memory under the loaded model, with their document
path, kind and ingest time) is read from the store once and kept until the store changes, so
a stream of questions costs no database reads; a filter is then a few array operations.

Ranking fuses rankings by reciprocal rank (`fuse`), so that each finds what the other misses:
- BM25 (`bm25`, the store's full-text search): the question's words, common English words
  left out, each matched as a phrase, any of them, with its compounds written the other way
  (`compound_forms`). It finds exact ids, IPs and block numbers.
- dense (`dense_ranking`): cosine between the question's vector and each passage's, from a
  small sentence model (kbd.model.dense), so a paraphrase finds the line. Passage vectors are
  computed once, in the background (`embed_backlog`), and stored like CLaRa's memory: rows of
  a matrix file, mapped by (text hash, model id). Passages without one yet rank by BM25 only.
- with CLaRa as the engine, its own ranking of the stored memory takes the dense one's place
  (kbd.runtime.engines).
The text engine's `search` is BM25 fused with dense; with no dense model installed, BM25.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kbd.model.dense import DIM, DenseModel, load_dense_model
from kbd.runtime.evidence import (
    ANSWER_WORDS,
    COMPOUND_PART,
    SPECIFIC,
    TIME_OF_DAY,
    WHY,
    matched_terms,
    numbers_after_words,
)
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.matrix import MemoryFileError, MemoryMatrix

# Common English words: in an OR query they would match nearly every passage and drown out
# the words that matter. Left out of full-text queries.
STOP_WORDS = frozenset("""a about after all an and any are as at be been before being but by
can could did do does during for from had has have how i if in into is it its me my of on or
our over should so some than that the their them then there these they this those to under
was we were what when where which while who whom why will with would you your
""".split())
MAX_TERMS = 32  # a question longer than this many distinct words is searched by its first ones
# "Why did attempt_X fail?": the line stating why names the attempt and an error, not "fail"
CAUSE_TERMS = ["error", "exception", "because", "caused"]
SEARCH_FETCH = 4  # hits read per passage wanted; more are read while scopes filter them out
FUSE_DEPTH = 50  # passages each ranking brings to the fusion
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): a passage at rank r
# counts 1 / (RRF_K + r), so one ranking's first places do not drown out the other ranking
BM25_FLOOR = 0.5  # a BM25 hit under this share of the best one's score matched only words
# that nearly every passage has ("block" in an HDFS log): it does not vote in a fusion
DENSE_WEIGHT = 0.01  # the dense ranking's weight beside BM25's 1 in the text engine's fusion.
# Over log lines the small dense model mostly tells which log, not which line (recall@5 0.48
# alone on the dev questions): weighed as much as BM25 it lifted look-alike lines over the
# exact one (0.69 against BM25's 0.88). This small it orders what BM25 ties and fills the
# places BM25 leaves empty, where paraphrases are found (bench/results/retrieval.json).


@dataclass(frozen=True)
class Scope:
    paths: tuple[str, ...] = ()  # folders, files or globs over document paths; empty: all
    kinds: tuple[str, ...] = ()  # log / report; empty: both
    since_s: float | None = None  # only passages ingested in the last since_s seconds
    # only passages stored after this one (ids only grow): a since-last-run window, fixed
    # however long the question then waits for the model
    after_passage: int | None = None

    def matches_path(self, path: str) -> bool:
        if not self.paths:
            return True
        return any(path == p or path.startswith(p.rstrip("/") + "/")
                   or fnmatch.fnmatchcase(path, p) for p in self.paths)


class Candidates:
    def __init__(self, rows: list, through: int = 0):
        self.through = through  # every live passage with an id up to this one is here
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
        if scope.after_passage is not None:
            keep &= self.passage_ids > scope.after_passage
        return np.flatnonzero(keep)


class Retriever:
    """Candidates for one model (None: every live passage, for the text engine), re-read
    from the store only when its revision moved."""

    def __init__(self, store: Store, model: str | None):
        self.store = store
        self.model = model
        self._revision = -1
        self._candidates = Candidates([])

    def candidates(self, revision: int) -> Candidates:
        if revision != self._revision:
            with self.store.read() as conn:
                # the edge first: a passage stored between the two reads (PostgreSQL reads
                # each statement afresh) is then a candidate past it, never one left out
                through = q.candidates_through(conn, self.model)
                self._candidates = Candidates(q.candidate_rows(conn, self.model), through)
            self._revision = revision
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
    distinct, and without stop words unless nothing else is left. A glued word is followed by
    its parts (`7163Calories`: 7163, Calories), stop words or not: they were written as one."""
    words: dict[str, str] = {}
    for word in question_words(question):
        if re.search(r"\w", word):
            words.setdefault(word.lower(), word)
    content = [w for key, w in words.items() if key not in STOP_WORDS] or list(words.values())
    terms: dict[str, str] = {}
    for word in content:
        for term in (word, *split_glued(word)):
            terms.setdefault(term.lower(), term)
    return list(terms.values())[:MAX_TERMS]


QUOTED = re.compile(r"""(?<!\w)(['"‘“`])([^'"‘’“”`\n]{1,80}?)['"’”`](?!\w)""")


def quoted_words(question: str) -> frozenset[str]:
    """The words the question quotes ('chen', "disk quota exceeded", `publickey`), case-folded:
    written as the user expects a line to write them, they are names, as an id is."""
    return frozenset(word.lower() for match in QUOTED.finditer(question)
                     for word in question_words(match[2]))


def question_words(question: str) -> list[str]:
    """The question's whitespace-separated words, outer punctuation stripped, in order."""
    return [chunk.strip(string.punctuation) for chunk in question.split()]


def word_pairs(question: str) -> list[str]:
    """Each two adjacent words of the question, neither a stop word, as one phrase: a passage
    that has "variable 2" or "TID 1200" as the question words them ranks above one that only
    has "variable" and some "2"."""
    words = question_words(question)
    return [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)
            if re.search(r"\w", a) and re.search(r"\w", b)
            and a.lower() not in STOP_WORDS and b.lower() not in STOP_WORDS]


def joined_words(question: str) -> list[str]:
    """Each two adjacent words of letters of the question, neither a stop word, as one word,
    lower case (`public key`: publickey): a compound as a log may write it."""
    words = question_words(question)
    words = [w if w.isalpha() and w.lower() not in STOP_WORDS else "" for w in words]
    return list(dict.fromkeys((a + b).lower() for a, b in zip(words, words[1:], strict=False)
                              if a and b))


def compound_forms(question: str) -> list[str]:
    """The question's compounds as a log may write them otherwise (evidence.compounds): its
    joined words, and each word of letters cut in two (`publickey`: public key, and cuts
    such as `publi ckey`, which no line holds: without a word list every cut is tried, each
    part COMPOUND_PART letters or more and no stop word)."""
    words = question_words(question)
    cut = [f"{w[:i]} {w[i:]}" for w in words if w.isalpha()
           for i in range(COMPOUND_PART, len(w) - COMPOUND_PART + 1)
           if w[:i].lower() not in STOP_WORDS and w[i:].lower() not in STOP_WORDS]
    return list(dict.fromkeys(joined_words(question) + cut))


def split_glued(word: str) -> list[str]:
    """The parts of the glued tokens inside a word."""
    return [part for token in q.TOKEN.findall(word) for part in q.glued_parts(token)]


def search(store: Store, question: str, allowed: set[int] | None,
           k: int) -> list[tuple[int, float]]:
    """The k best (passage id, score) for the question among the allowed passage ids (None:
    every live passage), one passage per distinct text: BM25 fused with the dense ranking
    (scores are then fusion scores), or BM25 alone when no dense model is installed."""
    model = dense_model()
    if model is None:
        return bm25(store, question, allowed, k)
    return fuse([lexical_ranking(store, question, allowed, max(k, FUSE_DEPTH)),
                 dense_ranking(store, model, question, allowed, max(k, FUSE_DEPTH))], k,
                [1.0, DENSE_WEIGHT])


def lexical_ranking(store: Store, question: str, allowed: set[int] | None,
                    k: int) -> list[tuple[int, float]]:
    """BM25's vote in a fusion: its k best, less those that score next to nothing beside the
    best (BM25_FLOOR)."""
    return above_floor(bm25(store, question, allowed, k), BM25_FLOOR)


def above_floor(hits: list[tuple[int, float]], floor: float) -> list[tuple[int, float]]:
    return [hit for hit in hits if hit[1] >= floor * hits[0][1]]


def bm25(store: Store, question: str, allowed: set[int] | None,
         k: int) -> list[tuple[int, float]]:
    """The k best (passage id, BM25 score) by the store's full-text search, as `search`: any of
    the question's terms, adjacent word pairs or compounds written the other way; those
    holding a number as the question binds it to a word (`bound_numbers`) first; for a "Why"
    question naming an id, those holding the id first, ranked with the words that state a
    cause (CAUSE_TERMS)."""
    terms = search_terms(question)
    terms += (word_pairs(question) + compound_forms(question))[:MAX_TERMS - len(terms)]
    bound = bound_numbers(question)
    # the ids a "Why" question names
    ids = ([t for t in asked_terms(question) if SPECIFIC.fullmatch(t) and not t.isdigit()]
           if WHY.search(question) else [])
    limit = SEARCH_FETCH * k
    while True:
        with store.read() as conn:
            # the passages writing a number after its word as the question does come first,
            # or those about the id a "Why" names, the one stating a cause best
            first = (q.search_passages(conn, terms, limit, bound) if bound
                     else q.search_passages(conn, terms + CAUSE_TERMS, limit, ids) if ids
                     else [])
            rest = q.search_passages(conn, terms, limit)
        ahead = {hit.id for hit in first}
        hits = first + [hit for hit in rest if hit.id not in ahead]
        picked: dict[str, tuple[int, float]] = {}
        for hit in hits:
            if (allowed is None or hit.id in allowed) and hit.text_hash not in picked:
                picked[hit.text_hash] = (hit.id, float(hit.score))
            if len(picked) == k:
                return list(picked.values())
        if len(rest) < limit:  # every match was read
            return list(picked.values())
        limit *= 8


def bound_numbers(question: str) -> list[str]:
    """The numbers the question gives after a word, with the word, as phrases: "TID 3" of
    "How many bytes did TID 3 send?". A passage holding one names what the question names;
    Spark's many passages of "(TID 838)" hold more of its other words, and a 3 elsewhere."""
    return [f"{word} {number}" for word, number in numbers_after_words(question_words(question))
            if word.lower() not in STOP_WORDS]


def fuse(rankings: Sequence[Sequence[tuple[int, float]]], k: int,
         weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: the k passages with the highest sum of weight / (RRF_K + rank)
    over the rankings (best first each) that hold them, as (passage id, that sum); weights
    default to 1 each; a tie goes to the earlier ranking's order."""
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, (passage_id, _) in enumerate(ranking, 1):
            fused[passage_id] = fused.get(passage_id, 0.0) + weight / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: -item[1])[:k]


# -- dense -----------------------------------------------------------------------------------

@functools.cache
def dense_model() -> DenseModel | None:
    """The dense model, loaded once per process; None when it is not installed."""
    return load_dense_model()


def dense_id(store: Store, model: DenseModel) -> str:
    """The memory id of the dense vectors in this store. Each daemon keeps them in a matrix
    file of its own, whose rows it numbers as it appends, so on a fleet the id carries the
    node: under one id, a text embedded by one model node would map to a row of that node's
    file alone, and the other node would rank it from whatever its own file holds there."""
    return f"{model.id}@{store.node}" if store.node else model.id


def dense_matrix(store: Store, model: DenseModel) -> MemoryMatrix:
    return MemoryMatrix(store.memory_dir, dense_id(store, model), (1, DIM), "float32")


def embed_backlog(store: Store, model: DenseModel, batch_size: int) -> int:
    """Compute and store the vectors of up to batch_size live texts that have none yet;
    returns how many (0: none waits). Rows reach the matrix file before the store maps them,
    so a crash leaves at worst an unmapped row."""
    with store.read() as conn:
        items = q.backlog(conn, dense_id(store, model), batch_size)
    if not items:
        return 0
    vectors = model.embed([text for _, text in items])
    try:
        rows = dense_matrix(store, model).append([v.tobytes() for v in vectors])
    except MemoryFileError as e:  # disk full: shown by `kbd status` until a write works
        store.note_fault("dense vectors", e)
        raise
    store.note_fault("dense vectors", None)
    store.write(lambda conn: q.add_memories(
        conn, dense_id(store, model), zip([h for h, _ in items], rows, strict=True)))
    return len(items)


def dense_ranking(store: Store, model: DenseModel, question: str, allowed: set[int] | None,
                  k: int) -> list[tuple[int, float]]:
    """The k allowed passages (id, cosine) nearest the question, among those with a vector,
    one per distinct text (its newest passage)."""
    with store.read() as conn:
        # (passage id, row), oldest passage first
        pairs = q.memory_rows(conn, dense_id(store, model))
    passage_of = {row: pid for pid, row in pairs if allowed is None or pid in allowed}
    if not passage_of:
        return []
    rows = np.fromiter(passage_of, dtype=np.int64, count=len(passage_of))
    scores = dense_matrix(store, model).matrix()[rows, 0] @ model.embed([question])[0]
    best = np.argsort(-scores, kind="stable")[:k]
    return [(passage_of[int(rows[i])], float(scores[i])) for i in best]


def asked_terms(question: str) -> list[str]:
    """The question's terms that a line answering it should hold: its search terms less stop
    words, the words that name what is asked (evidence.ANSWER_WORDS) and times of day
    ("after 10:00" bounds the lines, kbd.runtime.aggregate; no line need hold 10:00)."""
    return [t for t in search_terms(question) if t.lower() not in STOP_WORDS
            and t.lower() not in ANSWER_WORDS and not TIME_OF_DAY.fullmatch(t)]


def weak_evidence(question: str, texts: list[str]) -> bool:
    """Whether the texts (passages with their headings and file names) are no evidence for
    the question: none holds any of its asked terms, or one of its names (an id, a version,
    an acronym, a capitalized word, a quoted word) is in none of them, as `Kafka` is in
    "Which Kafka topic did the Spark job read from?" over Spark's logs: they are about
    something else of the same kind."""
    terms = asked_terms(question)
    words = search_terms(question)  # `user` of "user name" makes `username` a match
    matched = set().union(*(matched_terms(terms, text, words) for text in texts))
    first = question.split()[0].strip(string.punctuation + "¿¡") if question.split() else ""
    quoted = quoted_words(question)
    return not matched or any((is_name(t) or t.lower() in quoted) and t != first
                              for t in set(terms) - matched)


def is_name(term: str) -> bool:
    """An id, version, path, acronym or capitalized word: what a question names, not asks.
    A bare number is not one: a count or a small id is often written otherwise."""
    if term.isdigit():
        return False
    return bool(re.search(r"\d|[_/]|\w[-.]\w", term) or term[:1].isupper()
                or len(term) >= 3 and re.search(r"[A-Z]", term[1:]))
