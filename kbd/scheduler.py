"""Standing questions on APScheduler 3.x, inside the daemon. The database is the one source of
truth: jobs are rebuilt from it at start and after every change made over the API.

A run selects the question's candidates (scope, kinds, time window), hands it to the model
worker as a scheduled request (questions due together are answered as one batch there), and
the worker records the answer with its sources. One question never runs twice at once. Runs
missed while the daemon was down run once at start, coalesced, if they are within the
misfire grace time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from kbd.errors import KbdError
from kbd.questions import spec_of, trigger_for
from kbd.retrieve import Scope
from kbd.store import Store
from kbd.store import questions as qs

if TYPE_CHECKING:  # torch stays out of the scheduler's import
    from kbd.model.worker import ModelUnavailable

log = logging.getLogger("kbd.scheduler")

RUN_TIMEOUT_S = 3600.0
MAX_MISSED_STEPS = 100_000  # fire times walked to find the latest missed one


class Scheduler:
    def __init__(self, store: Store, submit: Callable, misfire_grace_s: int = 3600,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store = store
        self.submit = submit  # the model worker's submit(AskRequest) -> Future
        self.now = now
        self.misfire_grace_s = misfire_grace_s
        self._aps = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_s})
        self._running: set[int] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._aps.start()
        with self.store.read() as conn:
            ids = [q["id"] for q in qs.list_questions(conn, enabled=True)]
        for question_id in ids:
            self.sync(question_id, catch_up=True)

    def stop(self) -> None:
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def add_job(self, func: Callable, trigger, job_id: str) -> None:
        """Other periodic work of the daemon (digests)."""
        self._aps.add_job(func, trigger=trigger, id=job_id, replace_existing=True)

    def sync(self, question_id: int, catch_up: bool = False) -> None:
        """Make the question's job match the database (added, changed, paused or deleted)."""
        self.remove(question_id)
        with self.store.read() as conn:
            question = qs.get_question(conn, question_id)
        if question is None or not question["enabled"]:
            return
        trigger = trigger_for(spec_of(question), start_date=question["created_at"])
        job = self._aps.add_job(self.run, trigger=trigger, id=job_id(question_id),
                                args=[question_id], replace_existing=True)
        if catch_up and self._missed(question, trigger):
            log.info("question %d missed a run while kbd was down: running it now",
                     question_id)
            self._aps.add_job(self.run, id=f"{job_id(question_id)}-catch-up",
                              args=[question_id], replace_existing=True)
        self.store.write(lambda conn: qs.update_question(conn, question_id,
                                                         next_run_at=job.next_run_time))

    def _missed(self, question: dict, trigger) -> bool:
        """Did a run fall due while kbd was down, recently enough (misfire grace) to make up
        for? However many were missed, they make one run."""
        now, latest = self.now(), None
        due = trigger.get_next_fire_time(None, question["last_run_at"] or question["created_at"])
        for _ in range(MAX_MISSED_STEPS):
            if due is None or due > now:
                break
            latest = due
            due = trigger.get_next_fire_time(due, due + timedelta(microseconds=1))
        return latest is not None and (now - latest).total_seconds() <= self.misfire_grace_s

    def remove(self, question_id: int) -> None:
        with contextlib.suppress(JobLookupError):
            self._aps.remove_job(job_id(question_id))

    def run(self, question_id: int) -> dict | None:
        """Run one question now; None if it is already running (or gone)."""
        with self._lock:
            if question_id in self._running:
                log.info("question %d is still running: this run is skipped", question_id)
                return None
            self._running.add(question_id)
        try:
            return self._run(question_id)
        finally:
            with self._lock:
                self._running.discard(question_id)

    def _run(self, question_id: int) -> dict | None:
        from kbd.model.worker import AskRequest  # torch stays out of the scheduler's import

        with self.store.read() as conn:
            question = qs.get_question(conn, question_id)
        if question is None:
            self.remove(question_id)
            return None
        spec, started = spec_of(question), self.now()
        since_s = spec.since_s
        if spec.since_last_run and question["last_run_at"] is not None:
            since_s = (started - question["last_run_at"]).total_seconds()
        request = AskRequest(question=spec.text, top_k=spec.top_k,
                             max_new_tokens=spec.max_new_tokens, question_id=question_id,
                             scheduled=True, scope=Scope(paths=tuple(spec.scope),
                                                         kinds=tuple(spec.kinds),
                                                         since_s=since_s))
        result = None
        try:
            result = self.submit(request).result(timeout=RUN_TIMEOUT_S)
        except KbdError as e:
            if e.code == "no-model":  # refused before the worker could record anything
                self._record_failure(question_id, spec.text, started, e)
            log.warning("question %d failed: %s", question_id, e)
        except Exception as e:
            log.warning("question %d failed: %s", question_id, e)
        job = self._aps.get_job(job_id(question_id))
        self.store.write(lambda conn: qs.update_question(
            conn, question_id, last_run_at=started,
            next_run_at=job.next_run_time if job else None))
        return result

    def _record_failure(self, question_id: int, text: str, started: datetime,
                        error: ModelUnavailable) -> None:
        self.store.write(lambda conn: qs.record_answer(
            conn, question_id=question_id, question=text, started_at=started,
            finished_at=self.now(), model=None, engine=error.engine, status="failed",
            error=str(error), text=None, candidates=0, sources=[]))


def job_id(question_id: int) -> str:
    return f"question-{question_id}"
