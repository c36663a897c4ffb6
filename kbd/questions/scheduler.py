"""Standing questions on APScheduler 3.x, inside the daemon. The database is the one source of
truth: jobs are rebuilt from it at start and after every change made over the API.

A run selects the question's candidates (scope, kinds, time window), hands it to the model
worker as a scheduled request (questions due together are answered as one batch there), and
the worker records the answer with its sources. One question never runs twice at once. Runs
missed while the daemon was down run once at start, coalesced, if they are within the
misfire grace time.

A schedule shorter than a run is raised at run time, not refused: a firing that falls due
while the question's previous run is still going (or that waited past the misfire grace
time) is skipped, so the question runs as often as its runs allow. The first skip of a
question is logged once; each stretch of skipped firings is recorded as one `skipped`
answer when the run that caused it ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from kbd.errors import KbdError
from kbd.questions.specs import spec_of, trigger_for
from kbd.retrieve import Scope
from kbd.store import Store
from kbd.store import questions as qs

if TYPE_CHECKING:  # torch stays out of the scheduler's import
    from kbd.runtime.worker import ModelUnavailable

log = logging.getLogger("kbd.scheduler")

RUN_TIMEOUT_S = 3600.0
MAX_MISSED_STEPS = 100_000  # fire times walked to find the latest missed one
# APScheduler's warnings for each skipped or missed firing (thousands a minute with many
# short intervals): the scheduler records skips itself and warns once per question
APS_SKIP_WARNINGS = ('Execution of job "%s" skipped', 'Run time of job "%s" was missed')


class QuietSkips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(APS_SKIP_WARNINGS)


QUIET_SKIPS = QuietSkips()


@dataclass
class Skipped:
    """Firings of one question skipped since its last recorded stretch."""

    first: datetime
    last: datetime
    count: int = 0

    def reason(self) -> str:
        span = f"at {self.first:%H:%M:%S}" if self.count == 1 else \
            f"from {self.first:%H:%M:%S} to {self.last:%H:%M:%S}"
        return (f"{self.count} firing{'s' * (self.count != 1)} skipped {span} UTC: the "
                "question's previous run was still going")


class Scheduler:
    def __init__(self, store: Store, submit: Callable, misfire_grace_s: int = 3600,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store = store
        self.submit = submit  # the model worker's submit(AskRequest) -> Future
        self.now = now
        self.misfire_grace_s = misfire_grace_s
        self._aps = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_s})
        self._aps.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            logging.getLogger(name).addFilter(QUIET_SKIPS)
        self._stopping = threading.Event()
        self._running: set[int] = set()
        self._skipped: dict[int, Skipped] = {}
        self._warned: set[int] = set()  # questions whose skips were logged
        self._lock = threading.Lock()

    def start(self) -> None:
        self._aps.start()
        with self.store.read() as conn:
            ids = [q["id"] for q in qs.list_questions(conn, enabled=True)]
        for question_id in ids:
            self.sync(question_id, catch_up=True)

    def stop(self) -> None:
        self._stopping.set()
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def add_job(self, func: Callable, trigger, job_id: str) -> None:
        """Other periodic work of the daemon (digests)."""
        self._aps.add_job(func, trigger=trigger, id=job_id, replace_existing=True)

    def sync(self, question_id: int, catch_up: bool = False) -> None:
        """Make the question's job match the database (added, changed, paused or deleted)."""
        self.remove(question_id)
        self._warned.discard(question_id)  # a changed schedule may fit its runs now
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
        """Run one question now; None if it is already running (or gone, or kbd stops)."""
        if self._stopping.is_set():
            # a firing still queued in APScheduler's thread pool: submitted to the stopped
            # model worker, it would wait an hour and keep the process from exiting
            return None
        with self._lock:
            running = question_id in self._running
            self._running.add(question_id)
        if running:
            self._note_skip(question_id, [self.now()])
            return None
        try:
            return self._run(question_id)
        finally:
            with self._lock:
                self._running.discard(question_id)
            self._record_skips(question_id)

    def _on_skip(self, event: JobEvent) -> None:
        """APScheduler did not start a firing: the question's job was still running (or
        waited past the misfire grace time, when no run of it follows to record it)."""
        question_id = question_of(event.job_id)
        if question_id is None:
            return
        if event.code == EVENT_JOB_MISSED:
            self._note_skip(question_id, [event.scheduled_run_time])
            self._record_skips(question_id)
        else:
            self._note_skip(question_id, event.scheduled_run_times)

    def _note_skip(self, question_id: int, times: list[datetime]) -> None:
        times = [t.astimezone(UTC) for t in times]  # triggers fire in the question's zone
        with self._lock:
            skipped = self._skipped.setdefault(question_id, Skipped(min(times), max(times)))
            skipped.first, skipped.last = min(skipped.first, *times), max(skipped.last, *times)
            skipped.count += len(times)
            first_skip = question_id not in self._warned
            self._warned.add(question_id)
        if first_skip:
            log.warning("question %d fell due while its previous run was still going: its "
                        "runs take longer than its schedule allows, so it runs when the "
                        "previous run ends and skipped firings are recorded as `skipped` "
                        "answers (logged once for this question)", question_id)

    def _record_skips(self, question_id: int) -> None:
        """One `skipped` answer for the firings skipped since the last one."""
        with self._lock:
            skipped = self._skipped.pop(question_id, None)
        if skipped is None:
            return

        def record(conn) -> None:
            question = qs.get_question(conn, question_id)
            if question is not None:
                qs.record_answer(conn, question_id=question_id, question=question["text"],
                                 started_at=skipped.first, finished_at=skipped.last,
                                 model=None, engine="scheduler", status="skipped",
                                 error=skipped.reason(), text=None, candidates=0, sources=[])

        try:
            self.store.write(record)
        except KbdError as e:  # a store fault shows in `kbd status`; the skips, here
            log.warning("question %d: %s; recording them failed: %s", question_id,
                        skipped.reason(), e)

    def _run(self, question_id: int) -> dict | None:
        from kbd.runtime.worker import AskRequest  # torch stays out of the scheduler's import

        with self.store.read() as conn:
            question = qs.get_question(conn, question_id)
            covered = qs.covered_through(conn, question_id)
        if question is None:
            self.remove(question_id)
            return None
        spec, started = spec_of(question), self.now()
        # an absolute edge, fixed now: however long the request waits for the model, it
        # reads every passage stored after what the previous run read
        after = covered if spec.since_last_run else None
        request = AskRequest(question=spec.text, top_k=spec.top_k,
                             max_new_tokens=spec.max_new_tokens, question_id=question_id,
                             scheduled=True, scope=Scope(paths=tuple(spec.scope),
                                                         kinds=tuple(spec.kinds),
                                                         since_s=spec.since_s,
                                                         after_passage=after))
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


def question_of(job: str) -> int | None:
    """The question a job runs (its own job or its catch-up run); None for other jobs."""
    kind, _, rest = job.partition("-")
    number = rest.partition("-")[0]
    return int(number) if kind == "question" and number.isdigit() else None
