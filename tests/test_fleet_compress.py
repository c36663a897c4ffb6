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
from sqlalchemy import create_engine, func, select, update
from support.harness import Kbd, fleet_toml, make_logs, postgresql_database, wait_for

from kbd.node import Heartbeat
from kbd.runtime.compress import Compressor
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


def claim(store: Store, limit: int, lease_s: float = 60) -> v.Lease | None:
    """The next batch for the store's node, as its compressor claims it."""
    return v.claim_next(store, MODEL, lease_s, limit)


def write(store: Store, lease: v.Lease) -> tuple[list[str], list[str]]:
    return store.write(lambda conn: v.store_vectors(
        conn, lease, {h: vector(h) for h, _ in lease.items}))


def test_leases_split_the_backlog_and_a_stale_batch_is_not_written(fleet_url, tmp_path):
    gpu1 = Store.open(fleet_url, tmp_path / "g1", node="gpu-1")
    gpu2 = Store.open(fleet_url, tmp_path / "g2", node="gpu-2")
    try:
        add_passages(gpu1, [f"line {i}" for i in range(10)] + ["line 0"])  # one text twice
        first, second = claim(gpu1, 4), claim(gpu2, 4)
        third, nothing = claim(gpu2, 4), claim(gpu1, 4)
        assert nothing is None  # every text is held
        held = [h for lease in (first, second, third) for h, _ in lease.items]
        assert len(held) == len(set(held)) == 10
        # gpu-1's lease expires (it stalled); gpu-2 takes its batch over, and writes it
        gpu1.write(lambda conn: conn.execute(update(leases).where(leases.c.node == "gpu-1")
                                             .values(expires_at=func.now())))
        taken = claim(gpu2, 8)
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
    nor shares its texts with it."""
    store = Store.open(fleet_url, tmp_path / "m", node="gpu-2")
    try:
        add_passages(store, [f"line {i}" for i in range(6)])
        assert store.write(lambda conn: v.queue_backlog(conn, MODEL, 100)) == 6
        with store.engine.connect() as slow:
            with slow.begin():
                first = v.claim_batch(slow, MODEL, "gpu-1", 60, 3)
                started = time.monotonic()
                other = claim(store, 6)  # gpu-2's, while gpu-1's claim is open
                assert time.monotonic() - started < 5
            assert {h for h, _ in first.items}.isdisjoint(h for h, _ in other.items)
            assert len(first.items) + len(other.items) == 6
    finally:
        store.close()


def test_a_live_node_renews_its_lease_and_keeps_a_slow_batch(fleet_url, tmp_path, e2e):
    """A batch computed and stored over three times lease_s stays its node's while the node
    beats: each heartbeat renews the lease, so another node claiming meanwhile takes the
    other texts, and the slow batch is written whole (not taken over and computed twice).
    A lease nobody renews lapses: the other node's unrenewed claim is then taken over."""
    gpu1 = Store.open(fleet_url, tmp_path / "g1", node="gpu-1")
    gpu2 = Store.open(fleet_url, tmp_path / "g2", node="gpu-2")
    compressor = Compressor(gpu1, e2e, lease_s=1.0)
    heartbeat = Heartbeat(gpu1, "gpu-1", "model", on_beat=compressor.renew, every_s=0.3)
    try:
        add_passages(gpu1, [f"line {i} of a slow batch" for i in range(6)])
        heartbeat.register()
        heartbeat.start()
        assert compressor.step(3) == 0  # claimed and computed, not yet stored
        slow = set(compressor.pending.hashes)
        time.sleep(3)  # three leases long
        other = v.claim_next(gpu2, compressor.model, 1.0, 6)
        assert {h for h, _ in other.items}.isdisjoint(slow) and len(other.items) == 3
        assert compressor.finish() == 3  # its own still: nothing stale, nothing lost
        assert compressor.renew() == 0  # written and released: nothing held
        heartbeat.stop()
        time.sleep(1.2)  # gpu-2 renews nothing here: its claim lapses
        compressor.step(3)
        taken = set(compressor.pending.hashes)
        assert taken == {h for h, _ in other.items}
        assert compressor.finish() == 3
        with gpu1.read() as conn:
            rows = conn.execute(select(memories.c.text_hash, memories.c.row).where(
                memories.c.fingerprint == compressor.model)).all()
            assert v.lease_rows(conn) == []
        assert sorted(r.row for r in rows) == list(range(6))
        assert {r.text_hash for r in rows} == slow | taken
    finally:
        heartbeat.stop()
        gpu1.close()
        gpu2.close()


def test_a_node_copy_follows_the_store_by_notify_and_by_poll(fleet_url, tmp_path):
    gpu1 = Store.open(fleet_url, tmp_path / "g1", node="gpu-1")
    gpu2 = Store.open(fleet_url, tmp_path / "g2", node="gpu-2")
    followers = []
    try:
        add_passages(gpu1, [f"line {i}" for i in range(4)])
        write(gpu1, claim(gpu1, 2))
        copy = v.SharedMatrix(gpu2, MODEL, SHAPE, "bfloat16")
        assert copy.sync() == 2 and copy.rows() == 2  # built from the store
        heard = threading.Event()
        followers.append(v.MemoryFollower(copy, lambda n: heard.set(), poll_s=60))
        followers[0].start()
        time.sleep(0.5)  # listening
        write(gpu1, claim(gpu1, 2))
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


# -- daemons --------------------------------------------------------------------------------

LEASE_S = 3


class Fleet:
    """What the store says of the compression: read directly, as an operator would."""

    def __init__(self, url: str):
        self.engine = create_engine(url)

    def held(self, node: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(leases.c.text_hash)
                                    .where(leases.c.node == node)).scalars())

    def documents(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(documents)
                                .where(documents.c.status == "ready")).scalar_one()

    def compressed(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(memories.c.text_hash)
                                    .where(memories.c.vector.is_not(None))).scalars())

    def texts(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(passages.c.text_hash)
                                    .where(passages.c.live)).scalars())

    def check_once_each(self) -> int:
        """Every live text has exactly one memory row, rows numbered 0.. with none twice;
        returns how many."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(memories.c.text_hash, memories.c.row,
                                       memories.c.fingerprint)).all()
        assert len({r.fingerprint for r in rows}) == 1, "memory under more than one id"
        hashes = [r.text_hash for r in rows]
        assert len(hashes) == len(set(hashes)), "a text compressed into two memory rows"
        assert set(hashes) == self.texts(), "a text left uncompressed"
        assert sorted(r.row for r in rows) == list(range(len(rows)))
        return len(rows)

    def catch(self, node: str, timeout: float = 180) -> None:
        """Wait until `node` holds a lease (it is compressing a batch)."""
        wait_for(lambda: self.held(node), timeout=timeout, what=f"{node} to hold a lease")


def start_fleet(url: str, root: Path, tiny_model, files: int) -> tuple[Kbd, Kbd, Kbd]:
    web = Kbd(root / "w1", tiny_model, extra=fleet_toml(url, "web-1", "ingest", lease_s=LEASE_S))
    a = Kbd(root / "g1", tiny_model, extra=fleet_toml(url, "gpu-1", "model", lease_s=LEASE_S))
    b = Kbd(root / "g2", tiny_model, extra=fleet_toml(url, "gpu-2", "model", lease_s=LEASE_S))
    make_logs(web.watched, files, lines=200)
    web.start()
    fleet = Fleet(url)
    wait_for(lambda: fleet.documents() == files, timeout=120, what="the logs ingested")
    fleet.engine.dispose()
    a.launch()
    b.launch()
    for node in (a, b):
        node.answering()
        wait_for(lambda node=node: node.status()["model"] == "ready", timeout=60,
                 what="the model loaded")
    return web, a, b


def test_a_killed_model_node_loses_its_lease_and_a_late_node_reads_the_store(
        fleet_url, tmp_path, tiny_model):
    """kill -9 of a model node holding a batch: past its lease the other node compresses it,
    and every passage has one memory row. A model node started afterwards builds its index
    from the store, compresses nothing, and answers citing the ingest node's files."""
    fleet = Fleet(fleet_url)
    web, a, b = start_fleet(fleet_url, tmp_path, tiny_model, files=30)
    with web, a, b:
        wait_for(lambda: "compressed" in a.log_text() and "compressed" in b.log_text(),
                 timeout=60, what="both model nodes compressing")
        fleet.catch("gpu-1")
        a.stop(signal.SIGKILL)
        orphaned = fleet.held("gpu-1")  # the batch it was compressing, and the next
        assert orphaned, "gpu-1 held no lease when killed"
        wait_for(lambda: fleet.compressed() >= fleet.texts(), timeout=120,
                 what="the backlog compressed by gpu-2")
        assert orphaned <= fleet.compressed() and not fleet.held("gpu-1")
        total = fleet.check_once_each()
        assert "compressed" in b.log_text()

        late = Kbd(tmp_path / "g3", tiny_model,
                   extra=fleet_toml(fleet_url, "gpu-3", "model", lease_s=LEASE_S))
        with late:
            late.start()
            wait_for(lambda: late.status()["model"] == "ready", timeout=120,
                     what="gpu-3 ready")
            asked = late.cli("ask", "which request failed with timeout ?", "--json")
            assert asked.returncode == 0, asked.stderr[-2000:]
            sources = json.loads(asked.stdout)["sources"]
            assert sources and {s["node"] for s in sources} == {"web-1"}, sources
            assert all(Path(s["path"]).parent == web.watched for s in sources)
            assert "compressed" not in late.log_text()
            assert late.status()["backlog"] == 0
        assert fleet.check_once_each() == total
    fleet.engine.dispose()


def test_a_stopped_model_node_finds_its_lease_gone(fleet_url, tmp_path, tiny_model):
    """SIGSTOP of a model node holding a batch, past its lease: the other node takes the
    batch over and compresses it; woken (SIGCONT), the stopped node writes none of its
    stale vectors and says so."""
    fleet = Fleet(fleet_url)
    web, a, b = start_fleet(fleet_url, tmp_path, tiny_model, files=30)
    with web, a, b:
        # gpu-2 paused while gpu-1 is caught: racing for the batches, gpu-2 could take them all
        b.proc.send_signal(signal.SIGSTOP)
        try:
            fleet.catch("gpu-1")
            a.proc.send_signal(signal.SIGSTOP)
        finally:
            b.proc.send_signal(signal.SIGCONT)
        try:
            stalled = fleet.held("gpu-1")
            assert stalled, "gpu-1 held no lease when stopped"
            wait_for(lambda: stalled <= fleet.compressed(), timeout=60,
                     what="gpu-2 to take gpu-1's batch over")
        finally:
            a.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "stale lease" in a.log_text(), timeout=30,
                 what="gpu-1 to find its lease gone")
        wait_for(lambda: fleet.compressed() >= fleet.texts(), timeout=120,
                 what="the backlog compressed")
        fleet.check_once_each()
        assert a.proc.poll() is None  # it goes on
    fleet.engine.dispose()
