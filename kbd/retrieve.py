"""Which stored passages a question may be answered from: scope, kinds and time window.

The candidate list (live passages with memory under the loaded model, with their document
path, kind and ingest time) is read from the store once and kept until the store changes, so
a stream of questions costs no database reads; a filter is then a few array operations.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kbd.store import Store
from kbd.store import queries as q


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
    """Candidates for one model, re-read from the store only when its generation moved."""

    def __init__(self, store: Store, model: str):
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
