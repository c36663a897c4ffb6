"""Crash: kill -9 at random moments, then a restart or a run to the end.

- The daemon, while it ingests and compresses a burst of files, and while a standing question
  runs; a restart after each. kbd promises: after every restart the store is consistent (no
  orphan rows, no doubled passage, every file it holds whole) and it goes on to hold every
  file exactly once with all its lines; a scheduled run that was killed was either recorded
  before the kill or is made up for at the restart (the catch-up run), and recorded then.
- `kbd ingest --once`, while it parses, stores and compresses: a run to the end leaves the
  store equal to that of a run never interrupted (every file ingested once, no passage
  missing or doubled, the backlog compressed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select
from support.harness import Kbd, Outcome, TinyModel, make_logs, poll, started, wait_for

from kbd.store.schema import documents, memories, passages

RUN_STARTS = 'Running job "Scheduler.run'  # APScheduler's line as a run begins
CATCH_UP = "missed a run while kbd was down"  # kbd.questions.scheduler's line at start


def crash(work: Path, model: TinyModel, *, kills_ingest: int = 3, kills_scheduled: int = 2,
          files: int = 150, seed: int = 0) -> Outcome:
    rng = random.Random(seed)
    out = Outcome("crash")
    busy = 0
    with Kbd(work, model) as kbd:
        kbd.start()
        batch = files // kills_ingest
        for n in range(kills_ingest):
            # the burst arrives a batch per kill, and the kill comes at a random moment once
            # the batch is being ingested, so that it finds work under way
            make_logs(kbd.watched, batch, first=n * batch)
            poll(lambda n=n: kbd.live_documents() > n * batch, 30)
            time.sleep(rng.uniform(0, 0.5))
            busy += kbd.status()["backlog"] > 0 or kbd.live_documents() < (n + 1) * batch
            kbd.stop(signal.SIGKILL)
            out.runs += 1
            kbd.start()
            out.absorb(kbd.consistency(partial=True), f"restart {n + 1} during ingest")
        out.absorb(kbd.converged(timeout=120 + files / 5), "after the kills during ingest")
        kbd.settled(batch * kills_ingest, timeout=300)

        question = kbd.client.request("POST", "/questions", {
            "text": "which request failed ?", "every": "2s", "top_k": 2, "max_new_tokens": 16})
        wait_for(lambda: kbd.answers(question["id"]), what="a first scheduled answer")
        for n in range(kills_scheduled):
            kill_during_run(kbd, question["id"], f"kill {n + 1} during a run", out)
        out.absorb(kbd.consistency(), "after the kills during scheduled runs")
    out.figures = {"files": batch * kills_ingest, "kills_during_ingest": kills_ingest,
                   "kills_while_work_waited": busy, "kills_during_runs": kills_scheduled}
    return out


def kill_during_run(kbd: Kbd, question_id: int, when: str, out: Outcome) -> None:
    """Kill as a scheduled run starts, restart, and check that the run was recorded before
    the kill or made up for (and recorded) after the restart."""
    runs_seen = kbd.log_text().count(RUN_STARTS)
    wait_for(lambda: kbd.log_text().count(RUN_STARTS) > runs_seen, what="a scheduled run")
    run_started = datetime.now(UTC)
    kbd.stop(signal.SIGKILL)
    killed = datetime.now(UTC)
    out.runs += 1
    log_mark = len(kbd.log_text())
    kbd.start()
    restarted = datetime.now(UTC)
    out.absorb(kbd.consistency(), f"{when}, at the restart")
    out.expect(poll(lambda: any(started(a) >= restarted for a in kbd.runs(question_id)), 30),
               f"{when}: no run recorded within 30 s of the restart")
    window = run_started - timedelta(seconds=1)
    recorded = any(window <= started(a) <= killed for a in kbd.runs(question_id))
    out.expect(recorded or CATCH_UP in kbd.log_text()[log_mark:],
               f"{when}: the run started at {run_started} was neither recorded nor made up for")


def test_kill_9_during_ingest_and_scheduled_runs(tmp_path, tiny_model):
    out = crash(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0
    assert out.runs == 5 and out.figures["kills_while_work_waited"] >= 2


# -- kbd ingest --once -----------------------------------------------------------------------

def setup_home(home: Path, folder: Path, model: TinyModel) -> dict:
    """The environment of a run in `home`: two homes in one test (the interrupted run and
    the reference), so each is named here rather than the test's KBD_HOME."""
    home.mkdir()
    (home / "config.toml").write_text(f'{model.toml()}\n[[folders]]\npath = "{folder}"\n')
    return os.environ | {"KBD_HOME": str(home), "KBD_CONFIG": str(home / "config.toml")}


def run_ingest(env: dict, kill_after_s: float | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "kbd", "ingest", "--once", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_after_s is None:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
        return proc
    time.sleep(kill_after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return proc


def snapshot(home: Path) -> dict:
    engine = create_engine(f"sqlite:///{home / 'data' / 'kbd.sqlite3'}")
    with engine.connect() as conn:
        docs = conn.execute(select(documents.c.id, documents.c.path)
                            .where(documents.c.deleted_at.is_(None))).all()
        live = conn.execute(select(passages.c.document_id, passages.c.ordinal, passages.c.text,
                                   passages.c.text_hash, passages.c.first_line,
                                   passages.c.last_line).where(passages.c.live)).all()
        orphans = conn.execute(select(func.count()).select_from(passages).where(
            ~select(documents.c.id).where(documents.c.id == passages.c.document_id)
            .exists())).scalar()
        memory = conn.execute(select(memories.c.text_hash, memories.c.row)).all()
    engine.dispose()
    path_of = {d.id: d.path for d in docs}
    return {"paths": sorted(path_of.values()), "doc_count": len(docs),
            "passages": sorted((path_of[p.document_id], p.ordinal, p.text, p.first_line,
                                p.last_line) for p in live),
            "hashes": {p.text_hash for p in live}, "orphans": orphans, "memory": memory}


def test_kill_9_of_ingest_once_at_many_points(tmp_path, tiny_model):
    """kill -9 at several moments of a real `kbd ingest --once` (parsing, storing,
    compressing), then a run to the end: the store equals that of a run never interrupted."""
    folder = tmp_path / "logs"
    make_logs(folder, 120)
    clean_home = tmp_path / "clean"
    env = setup_home(clean_home, folder, tiny_model)
    start = time.monotonic()
    run_ingest(env)
    duration = time.monotonic() - start
    want = snapshot(clean_home)
    assert want["doc_count"] == 120 and want["orphans"] == 0

    home = tmp_path / "crashed"
    env = setup_home(home, folder, tiny_model)
    for fraction in (0.35, 0.5, 0.65, 0.8, 0.95):  # import, ingest, compress: all get hit
        run_ingest(env, kill_after_s=duration * fraction)
    run_ingest(env)
    got = snapshot(home)

    assert got["paths"] == want["paths"] and got["doc_count"] == len(set(got["paths"]))
    assert got["passages"] == want["passages"]  # none missing, none doubled
    assert got["orphans"] == 0
    hashes = [h for h, _ in got["memory"]]
    assert len(hashes) == len(set(hashes))  # each text compressed into one mapped row
    assert got["hashes"] <= set(hashes)  # the whole backlog compressed
    matrix_rows = sum(f.stat().st_size for f in (home / "data" / "memory").glob("*.bin"))
    assert matrix_rows > 0 and all(row >= 0 for _, row in got["memory"])
