"""The scheduler in process, with the real model worker on the tiny checkpoint and a clock
the test sets: missed runs coalesce into one, stale ones are skipped, a run never overlaps
itself, and the time window selects the right candidates."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from support.harness import wait_for

from kbd.config import ModelConfig
from kbd.ingest.pipeline import Ingester
from kbd.model.tokens import PassageTokenizer
from kbd.questions.scheduler import Scheduler
from kbd.questions.specs import QuestionSpec
from kbd.runtime.compress import compress_backlog
from kbd.runtime.worker import ModelWorker
from kbd.store import questions as qs
from kbd.store.schema import passages, questions


@pytest.fixture
def setup(store, e2e, e2e_dir, base_dir, tmp_path):
    """Two logs ingested and compressed; a real model worker; a scheduler with a set clock."""
    for name, body in (("old.log", "2026-11-20 10:00:00 old disk full error on node 3\n"),
                       ("new.log", "2026-11-23 10:00:00 new kernel panic on node 9\n")):
        (tmp_path / name).write_text(body * 3)
        Ingester(store, PassageTokenizer.load(e2e_dir)).ingest(tmp_path / name)
    compress_backlog(store, e2e)
    worker = ModelWorker(ModelConfig(checkpoint=e2e_dir, base=base_dir, device="cpu"), store,
                         revision=lambda: 0, on_change=lambda: None)
    worker.start()
    clock = {"now": datetime.now(UTC)}
    scheduler = Scheduler(store, worker.submit, misfire_grace_s=600,
                          now=lambda: clock["now"])
    yield store, scheduler, clock, tmp_path
    scheduler.stop()
    worker.stop()


def add_question(store, ago_s: float, last_run_ago_s: float | None, **spec) -> int:
    spec = QuestionSpec(**({"text": "what failed ?", "schedule_kind": "interval",
                            "interval_s": 3600} | spec))
    now = datetime.now(UTC)
    qid = store.write(lambda conn: qs.create_question(conn, **asdict(spec)))
    last = now - timedelta(seconds=last_run_ago_s) if last_run_ago_s is not None else None
    store.write(lambda conn: conn.execute(update(questions).where(questions.c.id == qid).values(
        created_at=now - timedelta(seconds=ago_s), last_run_at=last)))
    return qid


def answers(store, qid):
    with store.read() as conn:
        return qs.answers(conn, qid, limit=None)


def test_missed_runs_coalesce(setup):
    store, scheduler, clock, _ = setup
    missed = add_question(store, ago_s=4 * 3600 + 60, last_run_ago_s=3 * 3600 + 30)
    stale = add_question(store, ago_s=90_000, last_run_ago_s=86_000, interval_s=86_400 * 2)
    scheduler.start()
    wait_for(lambda: answers(store, missed))
    time.sleep(1.0)
    assert len(answers(store, missed)) == 1  # three were missed, one ran
    assert answers(store, stale) == []  # its one missed run is past the grace time
    with store.read() as conn:
        assert qs.get_question(conn, missed)["last_run_at"] is not None
        assert qs.get_question(conn, missed)["next_run_at"] > datetime.now(UTC)


def test_never_twice_at_once(setup):
    store, scheduler, _, _ = setup
    qid = add_question(store, ago_s=10, last_run_ago_s=None)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: scheduler.run(qid), range(4)))
    ran = sum(r is not None for r in results)
    assert ran >= 1
    recorded = answers(store, qid)
    assert len([a for a in recorded if a["status"] == "ok"]) == ran
    # the overlapping runs were skipped, and recorded as skipped answers when a run ended
    skipped = [int(a["error"].split()[0]) for a in recorded if a["status"] == "skipped"]
    assert skipped and sum(skipped) == 4 - ran


def test_time_window_selects_candidates(setup):
    store, scheduler, _, tmp_path = setup
    # old.log's passages were ingested two days ago
    store.write(lambda conn: conn.execute(update(passages).where(
        passages.c.text.like("%old disk full%")).values(
        created_at=datetime.now(UTC) - timedelta(days=2))))
    qid = add_question(store, ago_s=10, last_run_ago_s=None, since_s=86_400, top_k=5)
    result = scheduler.run(qid)
    assert result["status"] == "ok"
    assert [s["path"] for s in result["sources"]] == [str(tmp_path / "new.log")]
    nothing = add_question(store, ago_s=10, last_run_ago_s=None, since_s=60,
                           scope=(str(tmp_path / "old.log"),))
    assert scheduler.run(nothing)["status"] == "nothing-new"
    assert answers(store, nothing)[0]["status"] == "nothing-new"


def test_due_together_answered_as_one_batch(setup, monkeypatch):
    """Scheduled requests waiting together reach the model as one batch."""
    from kbd.runtime.worker import AskRequest

    store, scheduler, _, _ = setup
    worker = scheduler.submit.__self__
    wait_for(lambda: worker.state == "ready")
    batches = []
    original = worker.clara.generate
    monkeypatch.setattr(worker.clara, "generate", lambda questions, *a, **k: (
        batches.append(len(questions)) or original(questions, *a, **k)))
    requests = [AskRequest(question=f"what failed {i} ?", scheduled=True) for i in range(4)]
    with worker._lock:  # all four fall due at the same moment
        worker._scheduled.extend(requests)
    worker.wake()
    assert all(r.future.result(timeout=60)["status"] == "ok" for r in requests)
    assert batches == [4]


def test_failed_run_is_recorded(store):
    """No model: the run is refused, recorded as failed with the reason, and the scheduler
    goes on."""
    worker = ModelWorker(ModelConfig(engine="clara"), store, revision=lambda: 0,
                         on_change=lambda: None)
    scheduler = Scheduler(store, worker.submit)
    qid = add_question(store, ago_s=10, last_run_ago_s=None)
    assert scheduler.run(qid) is None
    (failed,) = answers(store, qid)
    assert failed["status"] == "failed" and "no CLaRa model" in failed["error"]
    assert scheduler.run(qid) is None and len(answers(store, qid)) == 2


def test_firing_queued_at_stop_returns_at_once(setup):
    """A firing still queued in APScheduler's thread pool when the daemon stops (model
    worker first stopped here) must not submit to the stopped worker and wait an hour."""
    store, scheduler, _, _ = setup
    qid = add_question(store, ago_s=10, last_run_ago_s=None)
    scheduler.submit.__self__.stop()
    scheduler.stop()
    done = []
    late = threading.Thread(target=lambda: done.append(scheduler.run(qid)), daemon=True)
    late.start()
    late.join(timeout=10)
    assert done == [None]
    assert answers(store, qid) == []
