"""`kbd daemon`: one process that watches, ingests, owns the model and serves the API.

    watcher --ready paths--> ingest worker --> store <-- model worker (compress, answer)
                                                  ^
    API server (Unix socket) --ask--> model worker, everything else --> store

SIGTERM / SIGINT stop taking work, let the model finish (or abandon) its batch and close the
store; SIGHUP reloads the config's watched folders. Under systemd (Type=notify) kbd reports
READY=1 once the model is loaded (or known to be absent), STATUS= lines with the document
count and backlog, and pings the watchdog. A second daemon on the same data refuses to start
and names the first one's pid.

In a fleet on one PostgreSQL store ([node] role, docs/fleet.md) an ingest node builds the
watcher and ingest worker only (its questions go to a model node through the store), a model
node the model worker, the scheduler and the server of those routed asks only; each claims
its node name instead of the whole store, and heartbeats its `nodes` row.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from functools import partial
from pathlib import Path

from kbd.api.server import serve
from kbd.config import Config, check_secrets, check_watchable, load_config
from kbd.errors import AlreadyRunning, KbdError
from kbd.ingest.pipeline import Ingester, IngestWorker, Limits
from kbd.node import Heartbeat, NoScheduler, fleet_status
from kbd.private import private_fd, private_home, write_private
from kbd.questions.scheduler import FleetNode, Scheduler
from kbd.retrieve import dense_id
from kbd.runtime.routed import AskServer, RemoteModel
from kbd.store import Store
from kbd.store import queries as q
from kbd.watch import Watcher

log = logging.getLogger("kbd.daemon")


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd set it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as e:
            log.warning("systemd notify failed: %s", e)


class InstanceLock:
    """An exclusive flock on <home>/kbd.lock, with our pid in <home>/kbd.pid."""

    def __init__(self, home: Path):
        private_home(home)
        self.pid_file = home / "kbd.pid"
        self._fd = private_fd(home / "kbd.lock", os.O_RDWR)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self._fd)
            other = self.pid_file.read_text().strip() if self.pid_file.exists() else "unknown"
            raise AlreadyRunning(f"another kbd daemon (pid {other}) is using {home}",
                                 hint="stop it first, or give this one another KBD_HOME") from e
        write_private(self.pid_file, f"{os.getpid()}\n")

    def release(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        os.close(self._fd)


class StoreRevision:
    """A counter that moves whenever the store's passages or memory change, so cached
    candidate lists know when to reload."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def bump(self) -> None:
        with self._lock:
            self._value += 1

    def __call__(self) -> int:
        return self._value


class Daemon:
    def __init__(self, config_path: Path | None):
        self.config_path = config_path
        self.config: Config = load_config(config_path)
        check_watchable(self.config.folders)
        check_secrets(self.config.notify)  # a channel that could never send refuses the start
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.revision = StoreRevision()

    def run(self) -> int:
        config = self.config
        lock = InstanceLock(config.home)
        threading.excepthook = self._thread_died
        try:
            self._start(config)
            self._loop()
        finally:
            self._shutdown()
            lock.release()
            threading.excepthook = threading.__excepthook__
        return 0

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        """Any thread of the daemon (kbd's, watchdog's, APScheduler's) that ends with an
        exception puts a fault in `kbd status` and the log: a part of kbd that stopped
        working must never look healthy. A thread restarted and dying the same way again
        (a watch) is logged once."""
        place = f"thread {thread_label(args.thread)}"
        error = KbdError(f"{args.exc_type.__name__}: {args.exc_value}", code="thread-died",
                         hint="kbd goes on without it; restart kbd, and see the log's traceback")
        before = self.store.faults.get(place)
        if before is None or before.message != error.message:
            log.error("%s died", place,
                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        self.store.note_fault(place, error)

    # -- wiring ----------------------------------------------------------------------------

    def _start(self, config: Config) -> None:
        from kbd.api.routes import Services, build_router
        from kbd.runtime.worker import ModelWorker
        from kbd.sender import Sender

        node, role = config.node.node_name, config.node.role
        fleet = config.node.fleet
        # one daemon per store, or in a fleet one per node name
        self.store = Store.open(config.database_url, config.memory_dir, node if fleet else "",
                                owner=f"kbd daemon pid {os.getpid()}"
                                + (f" node {node}" if fleet else ""))
        self.heartbeat = None
        if fleet:
            self.heartbeat = Heartbeat(self.store, node, role, backlog=self._backlog,
                                       on_beat=self._on_beat)
            self.heartbeat.register()
        if not fleet:  # the sources table is one host's watched folders
            self.store.write(lambda conn: q.sync_sources(conn, config.folders))
        # an ingest node has no model: its questions go to a model node through the store
        self.model = (RemoteModel(self.store, node) if role == "ingest" else
                      ModelWorker(config.model, self.store, self.revision, self.revision.bump,
                                  on_ready=lambda: notify("READY=1"),
                                  lease_s=config.node.lease_s))
        self.ingest = self.watcher = None
        if role != "model":
            self._start_ingest(config)
        self.scheduler = NoScheduler() if role == "ingest" else Scheduler(
            self.store, self.model.submit, misfire_grace_s=config.scheduler.misfire_grace_s,
            node=FleetNode(node, self.heartbeat.started_at) if fleet else None)
        # a model node answers the questions asked on the ingest nodes
        self.asks = AskServer(self.store, node, self.heartbeat.started_at,
                              self.model.submit) if role == "model" else None
        self.sender = Sender(self.store, config.notify)
        services = Services(store=self.store, submit=self.model.submit, scheduler=self.scheduler,
                            wake_sender=self.sender.wake, config=lambda: self.config,
                            status=self.status, write_digest=self.write_digest)
        self.server = serve(config.socket_path, build_router(services))
        self.server.start()
        self.sender.start()
        self.model.start()
        if self.asks is not None:
            self.asks.start()
        self.scheduler.start()
        if config.scheduler.digest_cron and role != "ingest":
            self.scheduler.add_job(partial(self.write_digest, notify=True),
                                   digest_trigger(config), "digest")
        if self.ingest is not None:
            self.ingest.start()
            self.watcher.start()
        if self.heartbeat is not None:
            self.heartbeat.start()
        if self.model.state != "loading":  # no model to wait for
            notify("READY=1")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        log.info("kbd daemon %d: socket %s, store %s, %d folders%s", os.getpid(),
                 config.socket_path, self.store.safe_url, len(config.folders),
                 f", node {node} role {role}" if fleet else "")

    def _start_ingest(self, config: Config) -> None:
        self.ingester = Ingester(self.store, self._tokenizer(config),
                                 Limits.configured(config.ingest))
        self.ingest = IngestWorker(self.ingester, config.folders, on_done=self._ingested)
        self.watcher = Watcher(config.folders, self.ingest.submit,
                               quiet_s=config.ingest.debounce_s,
                               rescan_interval_s=config.ingest.rescan_interval_s,
                               on_rescan=self.ingest.rescan,
                               max_wait_s=config.ingest.max_wait_s,
                               on_growing=partial(self.ingest.submit, growing=True))
        self.ingest.held = self.watcher.tracker.claim

    def _backlog(self) -> int | None:
        """The compression backlog a model node sees, for its heartbeat."""
        model = self.model.backlog_model()
        if model is None:
            return None
        with self.store.read() as conn:
            return q.backlog_size(conn, model)

    def _on_beat(self) -> None:
        """Each heartbeat of a model node: its compression leases renewed, questions changed
        on other nodes, and firings whose node died."""
        if isinstance(self.scheduler, Scheduler):  # a model node: a ModelWorker, a scheduler
            self.model.renew_leases()
            self.scheduler.refresh()
            self.scheduler.take_over_dead()

    def _tokenizer(self, config: Config):
        from kbd.model.tokens import PassageTokenizer

        try:
            return PassageTokenizer.configured(config.model)
        except KbdError as e:
            log.error("no tokenizer, passages stay uncut: %s", e)
            return None

    def _ingested(self, path: Path, outcome: str) -> None:
        if outcome not in ("unchanged", "failed-unchanged", "missing", "directory", "growing"):
            self.revision.bump()
            self.model.wake()

    # -- the main thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        watchdog_s = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6
        last_status = float("-inf")
        while not self.stopping.wait(timeout=min(watchdog_s or 5.0, 5.0)):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if watchdog_s:
                notify("WATCHDOG=1")
            if time.monotonic() - last_status > 30:
                notify(f"STATUS={self.status_line()}")
                last_status = time.monotonic()

    def reload(self) -> None:
        """SIGHUP: re-read the config; watched folders change without a restart."""
        try:
            config = load_config(self.config_path)
            check_watchable(config.folders)
        except KbdError as e:
            log.error("config not reloaded: %s", e)
            return
        self.config = config
        if self.ingest is None:
            return  # a model node watches nothing
        if not config.node.fleet:
            self.store.write(lambda conn: q.sync_sources(conn, config.folders))
        self.ingest.folders = tuple(config.folders)
        self.watcher.update(config.folders)
        log.info("config reloaded: %d folders", len(config.folders))

    def write_digest(self, since_s: float | None = None, formats=("md", "html"),
                     notify: bool = False) -> dict:
        """A digest of the period since the last one (or the last since_s seconds); a
        scheduled one (notify) is sent to [scheduler] digest_notify."""
        from datetime import UTC, datetime, timedelta

        from kbd.digest import default_since, write_digest

        now = datetime.now(UTC)
        since = now - timedelta(seconds=since_s) if since_s else default_since(self.store, now)
        status = self.status()
        channels = self.config.scheduler.digest_notify if notify else ()
        return write_digest(self.store, self.config.reports_dir, since, now, status["model"],
                            status["backlog"], formats, notify=channels)

    def status_line(self) -> str:
        status = self.status()
        docs = sum(n for s, n in status["documents"].items() if s != "deleted")
        return f"{docs} documents, backlog {status['backlog']}, model {status['model']}"

    def status(self) -> dict:
        dense = self.model.dense
        with self.store.read() as conn:
            stored = q.status(conn, self.model.backlog_model())
            # texts still ranked by BM25 alone: their vectors are computed while the GPU/CPU idles
            stored["dense_backlog"] = (q.backlog_size(conn, dense_id(self.store, dense))
                                       if dense else None)
            stored["notify"] = notify_status(conn, self.config)
        faults = [{"place": place, "code": e.code, "message": e.message, "hint": e.hint}
                  for place, e in list(self.store.faults.items())]
        node = self.config.node
        fleet = {"fleet": {"node": node.node_name, "role": node.role,
                           "nodes": fleet_status(self.store)}} if node.fleet else {}
        return stored | fleet | {"engine": self.model.engine_name, "model": self.model.state,
                                 "store": self.store.safe_url, "healthy": not faults,
                                 "pid": os.getpid(), "faults": faults,
                                 "folders": [str(f.path) for f in self.config.folders]}

    def _shutdown(self) -> None:
        notify("STOPPING=1")
        # the heartbeat last but one: a node is marked stopped once its runs have ended; asks
        # from other nodes are answered (or given up) before the model stops
        for name in ("server", "asks", "scheduler", "watcher", "ingest", "model", "heartbeat",
                     "sender"):
            part = getattr(self, name, None)
            if part is None:
                continue
            try:
                part.stop()
            except Exception:
                log.exception("stopping %s failed", name)
        if getattr(self, "store", None) is not None:  # else it never started: nothing to say
            self.store.close()
            log.info("kbd daemon stopped")


def notify_status(conn, config: Config) -> dict:
    """Events by status, the ones given up (newest first) and the channels that events
    wait for but the config no longer has."""
    from kbd.store import events as ev

    waiting = {e["channel"] for e in ev.recent(conn, status="pending", limit=None)}
    return ev.counts(conn) | {
        "given_up": [{k: e[k] for k in ("id", "key", "channel", "kind", "question_id",
                                        "answer_id", "attempts", "finished_at", "last_error")}
                     for e in ev.recent(conn, status="failed", limit=10)],
        "unknown_channels": sorted(waiting - {c.name for c in config.notify})}


def thread_label(thread: threading.Thread | None) -> str:
    """kbd's threads have names (kbd-watch); a library's keep Python's "Thread-N", new for
    each thread it starts again, so their class (PollingEmitter) names them instead."""
    if thread is None:
        return "unknown"
    return type(thread).__name__ if thread.name.startswith("Thread-") else thread.name


def digest_trigger(config: Config):
    """The digest schedule: a crontab in the configured zone (or this machine's)."""
    from apscheduler.triggers.cron import CronTrigger
    from tzlocal import get_localzone

    from kbd.questions.specs import apscheduler_crontab

    zone = config.scheduler.timezone or get_localzone()
    try:
        return CronTrigger.from_crontab(apscheduler_crontab(config.scheduler.digest_cron),
                                        timezone=zone)
    except (ValueError, KbdError) as e:
        raise KbdError(f"scheduler.digest_cron {config.scheduler.digest_cron!r}: {e}",
                       code="config") from e


class JournalFormatter(logging.Formatter):
    """Under systemd, journald stamps the time itself and reads a <N> syslog priority prefix;
    elsewhere lines carry a time."""

    PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self, journal: bool):
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt if journal else "%(asctime)s " + fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"<{self.PRIORITY.get(record.levelname, 6)}>{line}" if self.journal else line


def run_daemon(config_path: Path | None) -> int:
    level = os.environ.get("KBD_LOG_LEVEL") or load_config(config_path).server.log_level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal="JOURNAL_STREAM" in os.environ))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return Daemon(config_path).run()
