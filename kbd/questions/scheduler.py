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

In a fleet (docs/fleet.md) every model node runs this scheduler, each with its own
APScheduler (none shares a job store): a firing is claimed in the store before it runs
(store.fleet.claim_firing, keyed on the job and its fire time), only the node that claimed it
runs it, and its answer is recorded only while the claim is still that node's. A claim whose
node died or went silent is taken over by another node (take_over_dead).
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
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from kbd.errors import KbdError
from kbd.questions.specs import spec_of, trigger_for
from kbd.retrieve import Scope
from kbd.store import Store, fleet
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


@dataclass(frozen=True)
class FleetNode:
    """This scheduler's node in a fleet: its firings are claimed under this name and life."""

    name: str
    started_at: datetime


class FiringJob:
    """A job as APScheduler's run_job reads it, its function told the time it fires at
    (APScheduler 3 does not pass it): the key a fleet's nodes claim a firing by."""

    def __init__(self, job, fire_time: datetime):
        self._job = job
        self.kwargs = {**job.kwargs, "fire_time": fire_time}

    def __getattr__(self, name: str):
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


class FiringExecutor(ThreadPoolExecutor):
    """Runs jobs that take a fire_time keyword with the time they fire at (the last one of
    a coalesced run); one that names its own (a catch-up run: the missed firing) keeps it."""

    def _do_submit_job(self, job, run_times):
        if job.kwargs.get("fire_time", False) is None and run_times:
            job = FiringJob(job, run_times[-1])
        super()._do_submit_job(job, run_times)


class Scheduler:
    def __init__(self, store: Store, submit: Callable, misfire_grace_s: int = 3600,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 node: FleetNode | None = None):
        self.store = store
        self.submit = submit  # the model worker's submit(AskRequest) -> Future
        self.now = now
        self.misfire_grace_s = misfire_grace_s
        self.node = node  # None: a single-host daemon, which claims nothing
        self._aps = BackgroundScheduler(
            timezone=UTC, executors={"default": FiringExecutor()}, job_defaults={
                "coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_s})
        self._aps.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
            logging.getLogger(name).addFilter(QUIET_SKIPS)
        self._stopping = threading.Event()
        self._running: set[int] = set()
        self._skipped: dict[int, Skipped] = {}
        self._warned: set[int] = set()  # questions whose skips were logged
        self._lock = threading.Lock()
        self._seen: dict[int, tuple] = {}  # question id -> (updated_at, enabled) last synced

    def start(self) -> None:
        self._aps.start()
        with self.store.read() as conn:
            listed = qs.list_questions(conn)
        self._seen = {q["id"]: (q["updated_at"], q["enabled"]) for q in listed}
        for question_id in [q["id"] for q in listed if q["enabled"]]:
            self.sync(question_id, catch_up=True)

    def refresh(self) -> None:
        """In a fleet, questions are added and changed over any node's API: make the jobs
        match the questions whose rows changed since this scheduler last looked."""
        with self.store.read() as conn:
            seen = {q["id"]: (q["updated_at"], q["enabled"]) for q in qs.list_questions(conn)}
        for question_id in sorted(set(self._seen) | set(seen)):
            if self._seen.get(question_id) != seen.get(question_id):
                self.sync(question_id)
        self._seen = seen

    def stop(self) -> None:
        self._stopping.set()
        if self._aps.running:
            self._aps.shutdown(wait=False)

    def add_job(self, func: Callable, trigger, job_id: str) -> None:
        """Other periodic work of the daemon (digests): in a fleet, each firing is claimed
        first, so it runs on one node."""
        if self.node is None:
            self._aps.add_job(func, trigger=trigger, id=job_id, replace_existing=True)
            return
        self._aps.add_job(self._claimed, trigger=trigger, id=job_id, replace_existing=True,
                          args=[func, job_id], kwargs={"fire_time": None})

    def _claimed(self, func: Callable, job: str, fire_time: datetime | None) -> None:
        claim = self._claim(job, fire_time)
        if claim is None:
            return
        func()
        self.store.write(lambda conn: fleet.finish_firing(conn, claim))

    def _claim(self, job: str, fire_time: datetime | None,
               question_id: int | None = None) -> fleet.Claim | None:
        """This node's claim on a firing; None when another node has it (logged)."""
        node = self.node
        claim = self.store.write(lambda conn: fleet.claim_firing(
            conn, job, fire_time, node.name, node.started_at, question_id=question_id))
        if claim is None:
            log.info("%s firing at %s: claimed by another node, skipped", job,
                     f"{fire_time.astimezone(UTC):%H:%M:%S}")
        return claim

    def take_over_dead(self) -> int:
        """Run the firings of standing questions that a node claimed and never finished
        (it died, or went silent): each taken over by one node. A digest's is dropped
        instead: the next digest covers the period since the last one written."""
        if self.node is None or self._stopping.is_set():
            return 0
        with self.store.read() as conn:
            dead = fleet.dead_claims(conn)
        taken = 0
        for claim in dead:
            question_id = question_of(claim.job)
            mine = self.store.write(lambda conn, c=claim: fleet.take_over(
                conn, c, self.node.name, self.node.started_at))
            if mine is None:
                continue
            taken += 1
            if question_id is None:
                self.store.write(lambda conn, c=mine: fleet.finish_firing(conn, c))
                continue
            log.info("%s firing at %s: its node died or gave it up unanswered, running it here",
                     claim.job, f"{claim.fire_time:%H:%M:%S}")
            at = claim.fire_time.timestamp()
            self._aps.add_job(self.run, id=f"{claim.job}-take-over-{at:.0f}",
                              args=[question_id], kwargs={"claim": mine},
                              replace_existing=True)
        return taken

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
                                args=[question_id], replace_existing=True,
                                kwargs={"fire_time": None})
        missed = self._missed(question, trigger) if catch_up else None
        if missed is not None:
            log.info("question %d missed a run while kbd was down: running it now",
                     question_id)
            self._aps.add_job(self.run, id=f"{job_id(question_id)}-catch-up",
                              args=[question_id], kwargs={"fire_time": missed},
                              replace_existing=True)
        self.store.write(lambda conn: qs.update_question(conn, question_id,
                                                         next_run_at=job.next_run_time))

    def _missed(self, question: dict, trigger) -> datetime | None:
        """The latest run that fell due while kbd was down, if recently enough (misfire
        grace) to make up for; however many were missed, they make one run."""
        now, latest = self.now(), None
        due = trigger.get_next_fire_time(None, question["last_run_at"] or question["created_at"])
        for _ in range(MAX_MISSED_STEPS):
            if due is None or due > now:
                break
            latest = due
            due = trigger.get_next_fire_time(due, due + timedelta(microseconds=1))
        if latest is not None and (now - latest).total_seconds() <= self.misfire_grace_s:
            return latest
        return None

    def remove(self, question_id: int) -> None:
        with contextlib.suppress(JobLookupError):
            self._aps.remove_job(job_id(question_id))

    def run(self, question_id: int, fire_time: datetime | None = None,
            claim: fleet.Claim | None = None) -> dict | None:
        """Run one question now; None if it is already running (or gone, or kbd stops, or
        in a fleet another node claimed the firing). A firing (fire_time) is claimed in a
        fleet; a run asked for over the API is not a firing and claims nothing."""
        if self._stopping.is_set():
            # a firing still queued in APScheduler's thread pool: submitted to the stopped
            # model worker, it would wait an hour and keep the process from exiting
            return None
        with self._lock:
            running = question_id in self._running
            self._running.add(question_id)
        if running:
            if claim is not None:  # a take-over: let it be taken again once this run ends
                self.store.write(lambda conn: fleet.release_firing(conn, claim))
            elif fire_time is not None:
                self._defer(question_id, [fire_time])
            self._note_skip(question_id, [self.now()])
            return None
        try:
            if self.node is not None and claim is None and fire_time is not None:
                claim = self._claim(job_id(question_id), fire_time, question_id)
                if claim is None:
                    return None
            return self._run(question_id, claim)
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
            self._defer(question_id, event.scheduled_run_times)
            self._note_skip(question_id, event.scheduled_run_times)

    def _defer(self, question_id: int, fire_times: list[datetime]) -> None:
        """In a fleet, a firing that falls due while this node still runs the question is
        claimed and released for a free node (this one, once its run ends) to take over at
        a heartbeat: the other nodes may all be down or restarting, and a firing no node
        claims is lost. One waits per question; the rest are skipped as on a single host."""
        if self.node is None:
            return
        for fire_time in fire_times:
            if self.store.write(lambda conn, t=fire_time: fleet.defer_firing(
                    conn, job_id(question_id), t, self.node.name, question_id)):
                log.info("question %d firing at %s: this node is still running it, left "
                         "for a free node to take over", question_id,
                         f"{fire_time.astimezone(UTC):%H:%M:%S}")

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
        """One `skipped` answer for the firings skipped since the last one. In a fleet a
        firing this node skips is left to the other nodes, which may well run it: it is
        logged, not recorded (a firing no node ran is a gap in the `firings` table)."""
        with self._lock:
            skipped = self._skipped.pop(question_id, None)
        if skipped is None:
            return
        if self.node is not None:
            log.info("question %d: %s on this node, left to the other nodes", question_id,
                     skipped.reason())
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

    def _run(self, question_id: int, claim: fleet.Claim | None = None) -> dict | None:
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
                             scheduled=True, firing=claim, scope=Scope(paths=tuple(spec.scope),
                                                         kinds=tuple(spec.kinds),
                                                         since_s=spec.since_s,
                                                         after_passage=after))
        result = None
        try:
            result = self.submit(request).result(timeout=RUN_TIMEOUT_S)
        except KbdError as e:
            if e.code == "no-model":  # refused before the worker could record anything
                self._record_failure(question_id, spec.text, started, e, claim)
            log.warning("question %d failed: %s", question_id, e)
        except Exception as e:
            log.warning("question %d failed: %s", question_id, e)
        job = self._aps.get_job(job_id(question_id))
        self.store.write(lambda conn: qs.update_question(
            conn, question_id, last_run_at=started,
            next_run_at=job.next_run_time if job else None))
        return result

    def _record_failure(self, question_id: int, text: str, started: datetime,
                        error: ModelUnavailable, claim: fleet.Claim | None = None) -> None:
        def write(conn) -> None:
            answer_id = qs.record_answer(
                conn, question_id=question_id, question=text, started_at=started,
                finished_at=self.now(), model=None, engine=error.engine, status="failed",
                error=str(error), text=None, candidates=0, sources=[])
            if claim is not None:
                fleet.finish_firing(conn, claim, answer_id)

        self.store.write(write)


def job_id(question_id: int) -> str:
    return f"question-{question_id}"


def question_of(job: str) -> int | None:
    """The question a job runs (its own job or its catch-up run); None for other jobs."""
    kind, _, rest = job.partition("-")
    number = rest.partition("-")[0]
    return int(number) if kind == "question" and number.isdigit() else None
