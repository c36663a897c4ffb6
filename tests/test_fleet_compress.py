"""A fleet's model nodes share the compression backlog under leases and the memory vectors in
the store (issue 25; docs/fleet.md): claims that never overlap, a lease taken over once it
expired, a stale batch never written, rows numbered without gaps, each node's copy of the
matrix kept in step by LISTEN/NOTIFY or by its poll. In process on the throwaway PostgreSQL
server, then with real daemons: two model nodes and an ingest node, a model node killed
(kill -9) or stopped (SIGSTOP) holding a lease, and a model node started after the vectors
exist."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, func, select, text, update
from support.harness import Kbd, make_logs, postgresql_database, wait_for

from kbd.store import Store
from kbd.store import queries as q
from kbd.store import vectors as v
from kbd.store.schema import documents, leases, memories, passages

MODEL = "tiny.bfloat16"
SHAPE = (2, 4)  # a row: 2 memory tokens of 4 values, bf16: 16 bytes


@pytest.fixture
def fleet_url(postgres_server):
    with postgresql_database(postgres_server) as url:
        yield url


def add_passages(store: Store, texts: list[str]) -> None:
    def work(conn):
        doc = q.insert_document(conn, path="/var/log/app.log", kind="log", size=1, mtime_ns=1,
                                status="ready", tokenizer="tok")
        q.insert_passages(conn, doc, [SimpleNamespace(
            ordinal=i, text=t, first_line=i + 1, last_line=i + 1, page=None, byte_start=None,
            byte_end=None, token_count=3, heading=None, split=False)
            for i, t in enumerate(texts)], "tok")
    store.write(work)


def vector(text_hash: str) -> bytes:
    return text_hash.encode()[:16]


def claim(store: Store, node: str, limit: int, lease_s: float = 60) -> v.Lease | None:
    return store.write(lambda conn: v.claim_batch(conn, MODEL, node, lease_s, limit))


def write(store: Store, lease: v.Lease) -> tuple[list[str], list[str]]:
    return store.write(lambda conn: v.store_vectors(
        conn, lease, {h: vector(h) for h, _ in lease.items}))


def test_leases_split_the_backlog_and_a_stale_batch_is_not_written(fleet_url, tmp_path):
    gpu1 = Store.open(fleet_url, tmp_path / "g1", node="gpu-1")
    gpu2 = Store.open(fleet_url, tmp_path / "g2", node="gpu-2")
    try:
        add_passages(gpu1, [f"line {i}" for i in range(10)] + ["line 0"])  # one text twice
        first, second = claim(gpu1, "gpu-1", 4), claim(gpu2, "gpu-2", 4)
        third, nothing = claim(gpu2, "gpu-2", 4), claim(gpu1, "gpu-1", 4)
        assert nothing is None  # every text is held
        held = [h for lease in (first, second, third) for h, _ in lease.items]
        assert len(held) == len(set(held)) == 10
        # gpu-1's lease expires (it stalled); gpu-2 takes its batch over, and writes it
        gpu1.write(lambda conn: conn.execute(update(leases).where(leases.c.node == "gpu-1")
                                             .values(expires_at=func.now())))
        taken = claim(gpu2, "gpu-2", 8)
        assert sorted(taken.items) == sorted(first.items)
        assert write(gpu2, taken) == ([h for h, _ in taken.items], [])
        # gpu-1 wakes: its batch is no longer its own, nothing of it is written
        assert write(gpu1, first) == ([], [h for h, _ in first.items])
        for lease in (second, third):
            assert write(gpu2, lease)[1] == []
        with gpu1.read() as conn:
            rows = conn.execute(select(memories.c.text_hash, memories.c.row)
                                .where(memories.c.fingerprint == MODEL)).all()
            assert v.lease_rows(conn) == []  # every lease released with its vectors
            assert q.backlog_size(conn, MODEL) == 0
        assert sorted(r.row for r in rows) == list(range(10))  # no gap, no row twice
        assert len({r.text_hash for r in rows}) == 10
    finally:
        gpu1.close()
        gpu2.close()


def test_a_claim_in_flight_is_skipped_not_waited_for(fleet_url, tmp_path):
    """FOR UPDATE SKIP LOCKED: a claim not yet committed neither blocks another node's claim
    nor shares its passages with it."""
    store = Store.open(fleet_url, tmp_path / "m", node="gpu-1")
    try:
        add_passages(store, [f"line {i}" for i in range(6)])
        with store.engine.connect() as slow:
            with slow.begin():
                first = v.claim_batch(slow, MODEL, "gpu-1", 60, 3)
                started = time.monotonic()
                other = claim(store, "gpu-2", 6)  # while gpu-1's claim is open
                assert time.monotonic() - started < 5
            assert {h for h, _ in first.items}.isdisjoint(h for h, _ in other.items)
            assert len(first.items) + len(other.items) == 6
    finally:
        store.close()


def test_a_node_copy_follows_the_store_by_notify_and_by_poll(fleet_url, tmp_path):
    gpu1 = Store.open(fleet_url, tmp_path / "g1", node="gpu-1")
    gpu2 = Store.open(fleet_url, tmp_path / "g2", node="gpu-2")
    followers = []
    try:
        add_passages(gpu1, [f"line {i}" for i in range(4)])
        write(gpu1, claim(gpu1, "gpu-1", 2))
        copy = v.SharedMatrix(gpu2, MODEL, SHAPE, "bfloat16")
        assert copy.sync() == 2 and copy.rows() == 2  # built from the store
        heard = threading.Event()
        followers.append(v.MemoryFollower(copy, lambda n: heard.set(), poll_s=60))
        followers[0].start()
        time.sleep(0.5)  # listening
        lease = claim(gpu1, "gpu-1", 2)
        write(gpu1, lease)
        assert heard.wait(10), "no notification within 10 s (the poll is 60 s away)"
        with gpu1.read() as conn:
            assert copy.read([0, 1, 2, 3]) == v.read_rows(conn, MODEL, 0, 4)
        followers[0].stop()
        # a row committed without a notification (one lost while the listener was down) is
        # read by the poll
        gpu1.write(lambda conn: conn.execute(memories.insert().values(
            text_hash="x" * 64, fingerprint=MODEL, row=4, vector=b"y" * 16,
            created_at=q.utcnow())))
        polled = threading.Event()
        followers.append(v.MemoryFollower(copy, lambda n: polled.set(), poll_s=0.5))
        followers[1].start()
        assert polled.wait(10) and copy.rows() == 5
        # a copy that does not end as the store does (another store) is read again
        copy.append([b"z" * 16])
        assert v.SharedMatrix(gpu2, MODEL, SHAPE, "bfloat16").rows() == 0
    finally:
        for follower in followers:
            follower.stop()
        gpu1.close()
        gpu2.close()
