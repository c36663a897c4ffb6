"""Crash: kill -9 of the daemon at random moments while it ingests and compresses a burst of
files, and while a standing question runs; a restart after each.

kbd promises: after every restart the store is consistent (no orphan rows, no doubled
passage, every file it holds whole) and it goes on to hold every file exactly once with all
its lines; a scheduled run that was killed was either recorded before the kill or is made up
for at the restart (the catch-up run), and recorded then.
"""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.harness import Kbd, Outcome, TinyModel, make_logs, poll, started, wait_for

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
