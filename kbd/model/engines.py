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

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kbd.config import ModelConfig
from kbd.errors import InputError
from kbd.memory import memory_id, open_matrix
from kbd.model.clara import Clara
from kbd.model.index import RESCORE, MemoryIndex
from kbd.model.text import TextModel
from kbd.retrieve import (
    FUSE_DEPTH,
    Candidates,
    Retriever,
    Scope,
    fuse,
    lexical_ranking,
    search,
    unique_rows,
)
from kbd.store import Store
from kbd.store import queries as q

TEXT_TOP_K = 5  # the paper's top-5 setting, CLaRa's generation_top_k

Source = tuple[int, int, float]  # rank (1 = best), passage id, score


class Engine(Protocol):
    name: str  # clara | text: recorded with every answer
    model: str  # the model's id: recorded with every answer
    top_k: int  # passages per answer when a question names none
    tokenizer: Any  # decodes streamed tokens
    device: torch.device
    clara: Clara | None  # the CLaRa model whose ingest backlog the worker compresses
    retriever: Retriever  # its candidates: their snapshot is recorded with each answer

    def pools(self, generation: int, scopes: Sequence[Scope]) -> list[Sized]:
        """Per question, the passages it may be answered from (empty: none in its scope)."""
        ...

    def answer(self, questions: list[str], pools: list, top_k: int, max_new_tokens: int,
               streamer) -> list[tuple[str, list[Source]]]:
        """Per question, the answer's text and its sources, best first."""
        ...


def load_engine(config: ModelConfig, store: Store) -> Engine:
    """Load the configured engine's model (the one that answers; only one is loaded)."""
    if config.active_engine == "text":
        return TextEngine(TextModel.load(config.text_model, config.device, config.dtype), store)
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

    def __init__(self, clara: Clara, store: Store):
        self.clara = clara
        self.model = memory_id(clara)
        self.top_k = clara.config.generation_top_k
        self.tokenizer = clara.tokenizer
        self.device = clara.device
        self.index = MemoryIndex(open_matrix(store, clara), clara.device)
        self.store = store
        self.retriever = Retriever(store, self.model)

    def pools(self, generation: int, scopes: Sequence[Scope]) -> list[ClaraPool]:
        self.index.refresh()
        candidates = self.retriever.candidates(generation)
        pools = []
        for scope in scopes:
            rows, passage_of = unique_rows(candidates, candidates.select(scope))
            pools.append(ClaraPool(rows[rows < self.index.rows], passage_of))
        return pools

    def answer(self, questions: list[str], pools: list[ClaraPool], top_k: int,
               max_new_tokens: int, streamer) -> list[tuple[str, list[Source]]]:
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
            sources.append([(rank, pid, score) for rank, (pid, score) in enumerate(fused, 1)])
        texts = self.clara.generate(questions, memories, max_new_tokens, streamer=streamer)
        return list(zip(texts, sources, strict=True))


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
    clara = None  # no memory to compute: the text engine reads passages as they are stored

    def __init__(self, text_model: TextModel, store: Store, top_k: int = TEXT_TOP_K):
        self.text_model = text_model
        self.model = text_model.name
        self.top_k = top_k
        self.tokenizer = text_model.tokenizer
        self.device = text_model.device
        self.store = store
        self.retriever = Retriever(store, None)

    def pools(self, generation: int, scopes: Sequence[Scope]) -> list[TextPool]:
        candidates = self.retriever.candidates(generation)
        return [TextPool(candidates, candidates.select(scope)) for scope in scopes]

    def answer(self, questions: list[str], pools: list[TextPool], top_k: int,
               max_new_tokens: int, streamer) -> list[tuple[str, list[Source]]]:
        picks = [self._pick(question, pool, top_k)
                 for question, pool in zip(questions, pools, strict=True)]
        with self.store.read() as conn:
            places = q.passage_places(conn, [pid for pick in picks for pid, _ in pick])
        passages = [[(where(places[pid]), places[pid].text) for pid, _ in pick]
                    for pick in picks]
        generated = self.text_model.generate(questions, passages, max_new_tokens,
                                             streamer=streamer)
        # the sources are the passages the prompt held: a long one may have left some out
        return [(text, [(rank, pid, score) for rank, (pid, score) in enumerate(pick[:n], 1)])
                for (text, n), pick in zip(generated, picks, strict=True)]

    def _pick(self, question: str, pool: TextPool, k: int) -> list[tuple[int, float]]:
        hits = search(self.store, question, pool.allowed(), k)
        # no word of the question is in any passage it may read: it reads the newest ones,
        # as CLaRa's ranking would still give it k
        return hits or [(pid, 0.0) for pid in pool.newest(k)]


def where(place) -> str:
    """Where a passage (a row of queries.passage_places) is from, as the prompt shows it:
    file name and lines, or page."""
    name = Path(place.path).name
    if place.first_line is not None:
        return f"{name}:{place.first_line}-{place.last_line}"
    return f"{name} p.{place.page}" if place.page is not None else name
