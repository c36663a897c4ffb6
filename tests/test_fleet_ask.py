"""Routed asks (issue 25; docs/fleet.md "Routed asks"): `kbd ask` on an ingest node answered
by a model node through the PostgreSQL store, with no network listener of kbd's own. The
claims in process on one store; the rest with real daemons on the throwaway PostgreSQL
server and the tiny checkpoint on the CPU."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, select, text
from support.harness import Kbd, fleet_toml, postgresql_database, wait_for

from kbd.config import ModelConfig
from kbd.runtime.routed import AskServer, RemoteModel, options_of
from kbd.runtime.worker import AskRequest, ModelWorker
from kbd.store import Store
from kbd.store import asks as ak
from kbd.store import fleet as fl
from kbd.store.schema import answers, ask_chunks, asks


@pytest.fixture
def fleet_url(postgres_server):
    with postgresql_database(postgres_server) as url:
        yield url


def register(store: Store, name: str, role: str = "model"):
    return store.write(lambda conn: fl.upsert_node(
        conn, name, role=role, version="x", schema_revision="x", pid=1, heartbeat_s=3.0))


# -- the store ------------------------------------------------------------------------------

def test_each_ask_is_claimed_by_exactly_one_node(fleet_url, tmp_path):
    """Two model nodes claiming at once from 40 asks: SKIP LOCKED gives each ask to one."""
    stores = [Store.open(fleet_url, tmp_path / n, node=n) for n in ("gpu-1", "gpu-2")]
    try:
        lives = [register(s, s.node) for s in stores]
        ids = [stores[0].write(lambda conn, n=n: ak.insert_ask(conn, "web-1", f"q{n}", {}))
               for n in range(40)]
        claimed: dict[str, list[int]] = {"gpu-1": [], "gpu-2": []}

        def claim_all(store: Store, life) -> None:
            while (got := store.write(lambda conn: ak.claim_ask(conn, store.node, life))):
                claimed[store.node].append(got.id)
        threads = [threading.Thread(target=claim_all, args=(s, life))
                   for s, life in zip(stores, lives, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(claimed["gpu-1"] + claimed["gpu-2"]) == ids, claimed
        with stores[0].read() as conn:
            owners = dict(conn.execute(select(asks.c.id, asks.c.claimed_by)).all())
        assert all(owners[i] == node for node, got in claimed.items() for i in got)
        print({node: len(got) for node, got in claimed.items()})
    finally:
        for store in stores:
            store.close()


def test_an_ask_stalls_when_its_node_stops_and_its_chunks_go_with_it(fleet_url, tmp_path):
    store = Store.open(fleet_url, tmp_path / "m", node="gpu-1")
    try:
        life = register(store, "gpu-1")
        first = store.write(lambda conn: ak.insert_ask(conn, "web-1", "q", {"top_k": 2}))
        second = store.write(lambda conn: ak.insert_ask(conn, "web-1", "q2", {}))
        mine = store.write(lambda conn: ak.claim_ask(conn, "gpu-1", life))
        assert (mine.id, mine.asker, mine.options) == (first, "web-1", {"top_k": 2})
        assert store.write(lambda conn: ak.add_chunk(conn, mine, 0, "token", "di"))
        assert store.write(lambda conn: ak.add_chunk(conn, mine, 1, "token", "sk"))
        with store.read() as conn:
            assert ak.chunks_after(conn, first, 1) == [(1, "token", "sk")]
            assert ak.stalled(conn, [first, second]) == {}  # gpu-1 heartbeats
        store.write(lambda conn: fl.stopped(conn, "gpu-1"))
        with store.read() as conn:
            assert ak.stalled(conn, [first, second, 999]) == {
                first: "model node gpu-1 stopped while answering",
                second: "no model node is alive in the fleet",
                999: "the ask is gone from the store"}
        register(store, "gpu-1")  # a new life: its old claim is not held any more
        with store.read() as conn:
            assert ak.stalled(conn, [first]) == {
                first: "model node gpu-1 restarted while answering"}
        store.write(lambda conn: ak.delete_ask(conn, first))  # the asker is done with it
        assert not store.write(lambda conn: ak.add_chunk(conn, mine, 2, "done", "{}"))
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(ask_chunks)).scalar() == 0
        assert store.write(lambda conn: ak.sweep(conn, 3600)) == 0
        assert store.write(lambda conn: ak.sweep(conn, -1)) == 1  # the second, unclaimed
    finally:
        store.close()


def test_a_lost_notification_delays_an_ask_by_a_poll_never_hangs_it(fleet_url, tmp_path,
                                                                     tiny_model):
    """Rows written with no NOTIFY (as if it was lost on a dropped connection): a model node
    finds the ask, and the asker its answer, by their polls within a second or so. The model
    node is in process: the real model worker (tiny checkpoint), on a store with no passages,
    so it answers "nothing-new" at once."""
    web = Store.open(fleet_url, tmp_path / "web", node="web-1")
    gpu = Store.open(fleet_url, tmp_path / "gpu", node="gpu-1")
    remote = RemoteModel(web, "web-1")
    worker = ModelWorker(ModelConfig(checkpoint=tiny_model.checkpoint, base=tiny_model.base,
                                     device="cpu"), gpu, revision=lambda: 0,
                         on_change=lambda: None)
    server = AskServer(gpu, "gpu-1", register(gpu, "gpu-1"), worker.submit)
    try:
        worker.start()
        wait_for(lambda: worker.state == "ready", timeout=120, what="the model loaded")
        remote.start()
        server.start()
        time.sleep(0.5)  # both LISTEN now, and poll
        # an ask whose NOTIFY was lost: the model node claims and answers it on its poll
        began = time.monotonic()
        ask_id = web.write(lambda conn: conn.execute(insert(asks).values(
            asker="web-9", question="which disk ?", options=json.dumps(options_of(
                AskRequest("which disk ?"))), created_at=fl.db_now(conn))
            .returning(asks.c.id)).scalar_one())
        done = wait_for(lambda: chunks(web, ask_id), timeout=10, what="the ask answered")
        assert time.monotonic() - began < ak.POLL_S + 1.5
        (seq, kind, body), = done
        assert (seq, kind, json.loads(body)["status"]) == (0, "done", "nothing-new")
        # an answer whose NOTIFY was lost: the asker reads it on its poll
        server.stop()
        gpu.write(lambda conn: fl.heartbeat(conn, "gpu-1", None))  # alive, however long it took
        request = AskRequest("which volume ?")
        remote.submit(request)
        claimed = gpu.write(lambda conn: ak.claim_ask(conn, "gpu-1", fl.db_now(conn)))
        began = time.monotonic()
        gpu.write(lambda conn: conn.execute(insert(ask_chunks).values(
            ask_id=claimed.id, seq=0, kind="done", body=json.dumps({"answer": "disk 3"}))))
        assert request.future.result(timeout=10) == {"answer": "disk 3"}
        assert time.monotonic() - began < ak.POLL_S + 1.5
        wait_for(lambda: chunks(web, claimed.id) is None, timeout=5, what="the ask deleted")
    finally:
        server.stop()
        remote.stop()
        worker.stop()
        web.close()
        gpu.close()


def chunks(store: Store, ask_id: int) -> list | None:
    """The ask's chunks; None when the ask is gone."""
    with store.read() as conn:
        if conn.execute(select(asks.c.id).where(asks.c.id == ask_id)).first() is None:
            return None
        return ak.chunks_after(conn, ask_id, 0)


# -- daemons --------------------------------------------------------------------------------

def tcp_listeners(pid: int) -> list[str]:
    """The TCP sockets (local address:port in hex) that process `pid` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def ask_json(node: Kbd, question: str, *args: str) -> tuple[dict, float]:
    began = time.monotonic()
    run = node.cli("ask", question, "--json", *args, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout), time.monotonic() - began


def test_asks_on_ingest_nodes_are_answered_by_a_model_node(fleet_url, tmp_path, tiny_model):
    """Three ingest nodes and a model node: every node's files are searchable, and `kbd ask`
    on an ingest node (the real CLI, --json and plain) cites the other nodes' files with their
    node names; a streamed ask streams; an ask on the model node takes no database hop. A
    second model node: concurrent asks each answered by exactly one. The node answering a
    streamed ask killed (-9) mid-answer: the asker gets an error within the silent window;
    the other model node stopped (SIGTERM): an ask fails at once. No daemon listens on TCP."""
    with (Kbd(tmp_path / "w1", tiny_model, extra=fleet_toml(fleet_url, "web-1", "ingest"))
          as web1,
          Kbd(tmp_path / "w2", tiny_model, extra=fleet_toml(fleet_url, "web-2", "ingest"))
          as web2,
          Kbd(tmp_path / "w3", tiny_model, extra=fleet_toml(fleet_url, "web-3", "ingest"))
          as web3,
          Kbd(tmp_path / "g1", tiny_model, extra=fleet_toml(fleet_url, "gpu-1", "model"))
          as gpu1,
          Kbd(tmp_path / "g2", tiny_model, extra=fleet_toml(fleet_url, "gpu-2", "model"))
          as gpu2):
        webs = {"web-1": web1, "web-2": web2, "web-3": web3}
        for name, web in webs.items():
            (web.watched / f"{name}.log").write_text("".join(
                f"2026-11-23 10:0{i}:00 {name} volume quota exceeded on disk {i}\n"
                for i in range(5)))
            web.start()
        gpu1.start()
        engine = create_engine(fleet_url)
        gpu1.settled(3, timeout=120)
        for web in webs.values():
            assert tcp_listeners(web.proc.pid) == []
        assert tcp_listeners(gpu1.proc.pid) == []

        # an ingest node asks; the model node answers from every node's files
        reply, took = ask_json(web1, "which volume quota exceeded ?", "--top-k", "50")
        assert reply["status"] == "answered" and reply["model"].endswith("@shared"), reply
        cited = {(s["node"], Path(s["path"]).name) for s in reply["sources"]}
        assert cited == {(n, f"{n}.log") for n in webs}, cited
        plain = web1.cli("ask", "which volume quota exceeded ?", "--top-k", "50")
        assert plain.returncode == 0, plain.stderr[-3000:]
        assert "web-2:" in plain.stdout and "web-3:" in plain.stdout, plain.stdout
        print(f"routed ask through the CLI: {took:.2f} s")

        # streamed, as `kbd ask` on a terminal reads it
        events = list(web2.client.stream("/ask", {"question": "which disk ?", "stream": True,
                                                  "max_new_tokens": 16}))
        done = events[-1]["done"]
        assert all("token" in e for e in events[:-1]) and len(events) > 1, events
        assert "".join(e["token"] for e in events[:-1]).strip() == done["answer"]

        # the model node answers its own asks locally: no ask row is even numbered
        def numbered():
            with engine.connect() as conn:
                return conn.execute(text("SELECT last_value FROM asks_id_seq")).scalar()
        before = numbered()
        ask_json(gpu1, "which volume quota exceeded ?")
        assert numbered() == before

        # two model nodes: each of 8 concurrent asks answered by exactly one
        gpu2.start()
        wait_for(lambda: gpu2.status()["model"] == "ready", timeout=60, what="gpu-2 ready")
        assert tcp_listeners(gpu2.proc.pid) == []
        replies = {}

        def ask_one(n: int) -> None:
            node = list(webs.values())[n % 3]
            replies[n] = ask_json(node, f"which volume quota exceeded on disk {n} ?")[0]
        threads = [threading.Thread(target=ask_one, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert sorted(replies) == list(range(8))
        with engine.connect() as conn:
            recorded = conn.execute(select(answers.c.question, answers.c.model)
                                    .where(answers.c.question.like("%on disk %"))).all()
        assert sorted(q for q, _ in recorded) == sorted(
            f"which volume quota exceeded on disk {n} ?" for n in range(8)), recorded
        # the fleet's memory id, whichever model node answered (recorded once each, above)
        assert {r["model"] for r in replies.values()} == {reply["model"]}

        # the node answering a long streamed ask is killed -9 mid-answer
        stream = web1.client.stream("/ask", {"question": "which volume ?", "stream": True,
                                             "max_new_tokens": 2048})
        first = next(stream)
        assert "token" in first, first
        with engine.connect() as conn:
            (claimer,) = conn.execute(select(asks.c.claimed_by)).scalars().all()
        killed, other = (gpu1, gpu2) if claimer == "gpu-1" else (gpu2, gpu1)
        killed.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        rest = list(stream)
        waited = time.monotonic() - killed_at
        assert "error" in rest[-1], rest[-3:]
        assert rest[-1]["error"]["message"].startswith(
            f"model node {claimer} went silent"), rest[-1]
        assert waited < 3 * 3 + 5, waited  # the silent window (3 heartbeats) and a poll
        print(f"killed mid-answer after {len(rest)} more events: error after {waited:.1f} s")

        # the other model node stopped as asked: an ask fails at once, exit 1, as unavailable
        assert other.stop() == 0
        began = time.monotonic()
        refused = web3.cli("ask", "which volume ?", timeout=60)
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "no model node is alive in the fleet" in refused.stderr, refused.stderr
        assert time.monotonic() - began < 5
        with engine.connect() as conn:  # every ask was deleted by its asker
            assert conn.execute(select(func.count()).select_from(asks)).scalar() == 0
        engine.dispose()
