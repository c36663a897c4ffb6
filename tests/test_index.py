"""The stored-memory index: 4-bit ranking with exact re-ranking gives the exact float32 top-k
on memory the model produced, across blocks, appends and candidate restrictions."""

from __future__ import annotations

import random

import pytest
import torch
from support.tiny import WORDS

from kbd.model import index as index_module
from kbd.model.clara import Clara, memory_to_bytes
from kbd.model.index import MemoryIndex
from kbd.store.matrix import MemoryMatrix


def sentences(n: int, seed: int, words: tuple[int, int] = (8, 60)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


@pytest.fixture(scope="module")
def stored(e2e, tmp_path_factory):
    """600 passages compressed by the tiny model, written to a real matrix file."""
    memory = e2e.compress(sentences(600, seed=1))
    matrix = MemoryMatrix(tmp_path_factory.mktemp("memory"), "fp", (e2e.n_mem, e2e.hidden),
                          "float32")
    matrix.append([memory_to_bytes(row) for row in memory])
    return memory, matrix


def test_top_k_equals_exact_ranking(e2e, stored):
    memory, matrix = stored
    index = MemoryIndex(matrix, "cpu")
    assert index.refresh() == 600
    queries = e2e.encode_queries(sentences(300, seed=2, words=(3, 12)))
    exact_rows, exact_scores = Clara.rank(queries, memory, 5)
    picks = index.search(queries, 5)
    agree = sum(rows.tolist() == want.tolist()
                for (rows, _, _), want in zip(picks, exact_rows, strict=True))
    assert agree == len(queries)
    for (rows, scores, mem), want in zip(picks, exact_scores, strict=True):
        torch.testing.assert_close(scores, want, atol=1e-5, rtol=0)
        assert torch.equal(mem, memory[rows])


def test_codes_alone_rank_well(e2e, stored):
    """The 4-bit scores are close to the exact ones: the re-ranked pool is not doing all the
    work (a broken quantizer fails here even when re-ranking hides it)."""
    memory, matrix = stored
    index = MemoryIndex(matrix, "cpu")
    index.refresh()
    queries = e2e.encode_queries(sentences(50, seed=3, words=(3, 12)))
    exact = Clara.similarity(queries, memory)
    assert (index.coarse(queries) - exact).abs().max() < 0.02


def test_blocks_appends_and_allowed_rows(e2e, stored, tmp_path, monkeypatch):
    memory, _ = stored
    monkeypatch.setattr(index_module, "BLOCK_ROWS", 64)
    monkeypatch.setattr(index_module, "CHUNK_BYTES", 40 * 1024)
    matrix = MemoryMatrix(tmp_path, "fp", (e2e.n_mem, e2e.hidden), "float32")
    index = MemoryIndex(matrix, "cpu")
    queries = e2e.encode_queries(sentences(20, seed=4, words=(3, 12)))
    for end in (10, 150, 151, 600):  # grows the last block, then opens new ones
        matrix.append([memory_to_bytes(row) for row in memory[matrix.rows():end]])
        assert index.refresh() > 0 and index.rows == end
        rows = [p[0].tolist() for p in index.search(queries, 3)]
        assert rows == Clara.rank(queries, memory[:end], 3)[0].tolist()
    assert len(index.codes) == 10 and all(len(c) <= 64 for c in index.codes)
    assert index.refresh() == 0
    allowed = [torch.arange(i, 600, 7) for i in range(len(queries))]
    for (rows, _, _), pool, q in zip(index.search(queries, 4, allowed), allowed, queries,
                                     strict=True):
        exact = Clara.similarity(q[None], memory[pool])[0]
        assert rows.tolist() == pool[exact.topk(4).indices].tolist()


def test_a_block_grows_by_doubling(e2e, stored, tmp_path, monkeypatch):
    """Refreshing after every few rows copies the block a few times, not at every refresh (it
    once did: up to 1 GiB of GPU memory allocated and copied again for each new batch)."""
    memory, _ = stored
    monkeypatch.setattr(index_module, "FIRST_ROWS", 4)
    matrix = MemoryMatrix(tmp_path, "fp", (e2e.n_mem, e2e.hidden), "float32")
    index = MemoryIndex(matrix, "cpu")
    grown = []
    real = index._grow
    monkeypatch.setattr(index, "_grow", lambda rows: grown.append(rows) or real(rows))
    for end in range(3, 100, 3):
        matrix.append([memory_to_bytes(row) for row in memory[matrix.rows():end]])
        index.refresh()
    assert len(grown) == 6  # room for 4, 8, 16, 32, 64, then 128 rows, in 33 refreshes
    assert len(index._room) == 128 and len(index.codes) == 1 and len(index.codes[0]) == 99
    queries = e2e.encode_queries(sentences(10, seed=5, words=(3, 12)))
    assert ([p[0].tolist() for p in index.search(queries, 3)]
            == Clara.rank(queries, memory[:99], 3)[0].tolist())


def test_answers_from_index_equal_exact_answers(e2e, stored):
    memory, matrix = stored
    index = MemoryIndex(matrix, "cpu")
    index.refresh()
    questions = ["what error happened on node 7 ?", "who did login as root ?"]
    allowed = [torch.arange(0, 600, 2), None]
    got = e2e.answer_from_memory(questions, index, top_k=3, max_new_tokens=12, allowed=allowed)
    want = e2e.answer_from_memory(questions, memory, top_k=3, max_new_tokens=12,
                                  allowed=allowed)
    assert [(a.text, a.indices) for a in got] == [(a.text, a.indices) for a in want]


def test_empty_index_and_no_candidates(e2e, stored, tmp_path):
    _, matrix = stored
    queries = e2e.encode_queries(["disk full ?"])
    empty = MemoryIndex(MemoryMatrix(tmp_path, "fp", (e2e.n_mem, e2e.hidden), "float32"), "cpu")
    with pytest.raises(Exception, match="no stored memory"):
        empty.search(queries, 3)
    index = MemoryIndex(matrix, "cpu")
    index.refresh()
    with pytest.raises(Exception, match="no candidate passages"):
        index.search(queries, 3, [torch.tensor([], dtype=torch.long)])
