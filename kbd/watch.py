"""Everything between the filesystem and the ingest queue: which files count, when they are ready.

The watchdog handler only notes paths in a StabilityTracker; a timer thread hands the paths that
have gone quiet to `on_ready` and asks the consumer to rescan now and then, because inotify drops
events when its queue overflows and sees nothing on network mounts (use `polling` there). An
overflow asks for a rescan at once: watchdog reports it only in its log, so the Watcher listens
there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR
from time import monotonic, time_ns
from typing import NamedTuple

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from kbd.folders import WatchedFolder, folder_for, owner, walk

log = logging.getLogger("kbd.watch")

# Only events that mean the content may have changed, or whether kbd may read it (attrib: a
# permission flipped back makes an unreadable file, or every file under a directory, readable
# without changing it): ingest opens and reads every file, and "opened"/"closed_no_write"
# events would queue it again forever. Directory "modified" events say nothing about which
# file changed.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
    FileAttribEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent, DirAttribEvent,
]
_CHANGES = {
    EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED, EVENT_TYPE_MOVED,
    EVENT_TYPE_DELETED, EVENT_TYPE_ATTRIB,
}
_RETRY_S = 30.0  # how long to wait before trying again to watch a root that could not be watched
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"  # "Inotify queue overflowed; ... were lost"


class _Stat(NamedTuple):
    size: int
    mtime_ns: int
    inode: int


@dataclass
class _Pending:
    last_event: float  # monotonic time of the latest note() or stat change
    stat: _Stat | None  # None: missing (or unreadable) when last looked at
    since: float  # monotonic time its changes began, or it was last handed out as growing


class StabilityTracker:
    """A path is released once it has been quiet for quiet_s and two stat()s quiet_s apart agree
    (size, mtime_ns, inode); a change restarts the wait; a path that vanished is released too
    (so the consumer can mark it deleted). Monotonic clock, injectable `now` for tests.

    Edge cases:
    - a path noted again after its release is released again: once per change, never twice for one;
    - a path that cannot be stat()ed for another reason (permissions) is released like a vanished
      one, so the consumer records the failure instead of the tracker retrying it forever;
    - the stat taken in note() is the first of the two, so a file written once is released after
      about quiet_s;
    - a path that keeps changing (a busy log) never goes quiet, so `growing()` hands it out
      every max_wait_s while it changes, and it stays pending: the consumer reads what is there
      so far, and the release once it goes quiet reads the rest.
    Thread-safe: note() runs on observer threads, ready() and growing() on the timer thread.
    """

    def __init__(self, quiet_s: float, max_wait_s: float = 5.0):
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()

    def note(self, path: Path, now: float | None = None) -> None:
        """Something happened at `path`: (re)start its wait."""
        now = monotonic() if now is None else now
        entry = _Pending(now, _stat(path), now)
        with self._lock:
            if (before := self._pending.get(path)) is not None:
                entry.since = before.since  # the changes go on: max_wait_s counts from the first
            self._pending[path] = entry

    def growing(self, now: float | None = None) -> list[Path]:
        """Paths that have kept changing for max_wait_s without going quiet; each is handed out
        again max_wait_s later if it still has not, and stays pending for ready()."""
        now = monotonic() if now is None else now
        overdue = []
        with self._lock:
            for path, entry in self._pending.items():
                if now - entry.since >= self.max_wait_s and now - entry.last_event < self.quiet_s:
                    entry.since = now
                    overdue.append(path)
        return overdue

    def ready(self, now: float | None = None) -> list[Path]:
        """Paths that are stable (or gone) now; each is forgotten once returned."""
        now = monotonic() if now is None else now
        with self._lock:
            due = {p: e for p, e in self._pending.items() if now - e.last_event >= self.quiet_s}
        # stat() outside the lock: a slow mount must not hold up the observer threads
        stats = {path: _stat(path) for path in due}
        released = []
        with self._lock:
            for path, entry in due.items():
                if self._pending.get(path) is not entry:
                    continue  # noted again meanwhile: its wait restarted
                stat = stats[path]
                if stat is None or stat == entry.stat:
                    del self._pending[path]
                    released.append(path)
                else:  # changed without an event (polling, or a missed event): wait again
                    entry.last_event, entry.stat = now, stat
        return released

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def claim(self, path: Path) -> bool:
        """Whether `path` is left to this tracker rather than read by a rescan now: it waits
        here already, or it changed within quiet_s and its event may still be on the way (it
        is then noted, and handed out as any other)."""
        with self._lock:
            if path in self._pending:
                return True
        stat = _stat(path)
        if stat is None or time_ns() - stat.mtime_ns >= self.quiet_s * 1e9:
            return False
        self.note(path)
        return True


class _Watch(NamedTuple):
    observer: BaseObserver
    watch: ObservedWatch
    root_id: tuple[int, int]  # (st_dev, st_ino) of the root when scheduled
    handler: _Dispatch


class Watcher:
    """Watches folders and calls `on_ready(paths)` with the paths that changed and went quiet.

    Each path handed to `on_ready` is either an existing regular file to (re)ingest, or not: it
    vanished, or is a directory (one that was deleted or moved away, or a watched root that went
    missing), or could not be stat()ed. For those the consumer should forget what it stored at or
    under the path *that no longer exists on disk*, checking rather than assuming, because the
    directory may have come back by then with new files that are reported separately.

    `on_growing(paths)` gets the files that have kept changing for max_wait_s (busy logs), again
    every max_wait_s while they do; each is still handed to `on_ready` once it goes quiet.

    `on_rescan()` asks the consumer to reconcile its store with `scan(folders)`: once at start-up,
    every rescan_interval_s (the safety net for dropped events), when a root (re)appears and after
    `update()`. The callbacks run on one thread, one at a time; an exception in any is logged
    and watching goes on (the next rescan picks up what an `on_ready` that failed missed).
    """

    def __init__(
        self,
        folders: Sequence[WatchedFolder],
        on_ready: Callable[[list[Path]], None],
        quiet_s: float = 2.0,
        rescan_interval_s: float = 300.0,
        on_rescan: Callable[[], None] | None = None,
        max_wait_s: float = 5.0,
        on_growing: Callable[[list[Path]], None] | None = None,
    ):
        self.tracker = StabilityTracker(quiet_s, max_wait_s)
        self.on_ready = on_ready
        self.on_growing = on_growing
        self.on_rescan = on_rescan
        self.rescan_interval_s = rescan_interval_s
        self._folders = tuple(folders)
        self._tick_s = max(quiet_s / 4, 0.02)
        self._observers: dict[float | None, BaseObserver] = {}  # poll interval (None: inotify)
        self._watches: dict[tuple[Path, float | None], _Watch] = {}
        self._retry_at: dict[tuple[Path, float | None], float] = {}  # roots we failed to watch
        # directories kbd could not read, so watchdog watches nothing under them, and those
        # readable again, whose roots are watched anew; filled from watchdog's threads
        self._locked: set[Path] = set()
        self._reopened: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._rescan_due = True  # the start-up rescan
        self._lock = threading.Lock()  # the timer thread and update() both change the watches
        self._stopping = threading.Event()
        self._overflowed = threading.Event()  # set from watchdog's thread, without our lock
        self._alarm = _OverflowAlarm(self._overflowed)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Schedule the observers on the roots that exist, then run the timer thread, whose first
        act is the start-up `on_rescan()`."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("a Watcher starts once")
        overflow_log = logging.getLogger(_OVERFLOW_LOGGER)
        overflow_log.addHandler(self._alarm)
        if not overflow_log.isEnabledFor(logging.WARNING):  # log_level = "error" would hide it
            overflow_log.setLevel(logging.WARNING)
        with self._lock:
            self._sync()
        self._thread = threading.Thread(target=self._run, name="kbd-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and join every thread; safe to call more than once."""
        self._stopping.set()
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._alarm)
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            observers = list(self._observers.values())
            self._observers.clear()
            self._watches.clear()
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join()

    def update(self, folders: Sequence[WatchedFolder]) -> None:
        """Replace the folder set (config reload): watches follow, and a rescan is asked for so the
        consumer ingests what new folders hold and forgets what removed ones held."""
        with self._lock:
            if tuple(folders) == self._folders:
                return
            self._folders = tuple(folders)
            self._rescan_due = True
            if self._thread is not None and not self._stopping.is_set():
                self._sync()

    # --- timer thread

    def _run(self) -> None:
        next_rescan = monotonic() + self.rescan_interval_s
        while not self._stopping.is_set():
            with self._lock:
                _call("updating the watches", self._sync)
                rescan, self._rescan_due = self._rescan_due, False
            if self._overflowed.is_set():  # events were lost: only a rescan can find them
                self._overflowed.clear()
                rescan = True
            if rescan or monotonic() >= next_rescan:
                next_rescan = monotonic() + self.rescan_interval_s
                if self.on_rescan is not None:
                    _call("on_rescan", self.on_rescan)
            # paths of folders removed by update() while they waited are dropped here
            paths = [p for p in self.tracker.ready() if owner(self._folders, p) is not None]
            if paths:
                _call("on_ready", self.on_ready, paths)
            if self.on_growing is not None:
                growing = [p for p in self.tracker.growing()
                           if owner(self._folders, p) is not None]
                if growing:
                    _call("on_growing", self.on_growing, growing)
            self._stopping.wait(self._tick_s)

    def _sync(self) -> None:
        """Make the watches match the roots that exist now. Called with self._lock held.

        A root that was deleted, moved away or replaced loses its watch (watchdog's emitter stops
        by itself when its root is deleted) and is noted, so the consumer forgets what went with
        it; once a root exists again it is watched again and a rescan is asked for. A watch whose
        emitter died under a root that is still there is tried again after _RETRY_S.
        """
        wanted: dict[tuple[Path, float | None], tuple[int, int] | None] = {}
        for folder in self._folders:
            interval = folder.poll_interval_s if folder.polling else None
            wanted[(folder.path, interval)] = _dir_id(folder.path)
        with self._dirs_lock:
            reopened, self._reopened = self._reopened, set()
        for key, watch in list(self._watches.items()):
            lost = key not in wanted or wanted[key] != watch.root_id or not _is_alive(watch)
            if not lost and not any(d.is_relative_to(key[0]) for d in reopened):
                continue
            del self._watches[key]
            watch.observer.unschedule(watch.watch)
            if key in wanted and wanted[key] == watch.root_id and not _is_alive(watch):
                # the root is still there, so its emitter died (the daemon reports how): a
                # new one would likely die the same way, so not at once
                log.warning("the watch on %s stopped; watching it again in %.0f s, and rescans "
                            "still see its files", key[0], _RETRY_S)
                self._retry_at[key] = monotonic() + _RETRY_S
            elif key in wanted and lost:
                log.info("lost the watch on %s; watching it again once it exists", key[0])
                self.tracker.note(key[0])
        # forget failures of folders that are no longer configured
        self._retry_at = {k: t for k, t in self._retry_at.items() if k in wanted}
        now = monotonic()
        for key, root_id in wanted.items():
            if root_id is None or key in self._watches or self._retry_at.get(key, 0.0) > now:
                continue
            path, interval = key
            # inotify does not follow a root that is a symlink: watch where it leads
            handler = _Dispatch(self._on_event, Path(os.path.realpath(path)), path)
            try:
                observer = self._observer(interval)
                watch = observer.schedule(
                    handler, str(handler.real_root), recursive=True, event_filter=_EVENT_FILTER
                )
            except Exception as e:  # inotify limits (OSError), a tree too deep for watchdog's
                # polling snapshot (RecursionError): either way, try again later, not every tick
                if key not in self._retry_at:  # one warning per outage, not one per retry
                    log.warning(
                        "cannot watch %s: %s (hint: for inotify limits raise "
                        "fs.inotify.max_user_watches, or set polling = true for this folder); "
                        "retrying every %.0f s, and rescans still see its files",
                        path, e, _RETRY_S,
                    )
                self._retry_at[key] = now + _RETRY_S
                continue
            self._retry_at.pop(key, None)
            self._watches[key] = _Watch(observer, watch, root_id, handler)
            unreadable = _unreadable_dirs(path)
            with self._dirs_lock:
                self._locked |= unreadable
            self._rescan_due = True  # files may have arrived while it was not watched
            log.info("watching %s%s", path, f" (polling every {interval} s)" if interval else "")

    def _observer(self, poll_interval_s: float | None) -> BaseObserver:
        """One inotify Observer, and one PollingObserver per poll interval (watchdog polls all the
        watches of one observer at the same rate)."""
        observer = self._observers.get(poll_interval_s)
        if observer is None:
            if poll_interval_s is None:
                observer = Observer()
            else:
                observer = PollingObserver(timeout=poll_interval_s)
            observer.start()  # before any schedule(), so a root that cannot be watched fails there
            self._observers[poll_interval_s] = observer
        return observer

    # --- observer threads

    def _on_event(self, event: FileSystemEvent, src: Path, dest: Path | None) -> None:
        """Note what changed, nothing more: this runs on an observer thread. `src` and `dest`
        are the event's paths spelled under the configured root."""
        try:
            if event.event_type not in _CHANGES:
                return
            folders = self._folders
            if not event.is_directory:
                for path in (src, dest):
                    if path is not None and folder_for(folders, path) is not None:
                        self.tracker.note(path)
                return
            gone = event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED)
            if gone and owner(folders, src) is not None:
                # the directory's old path stands for everything that was under it
                self.tracker.note(src)
            if event.event_type == EVENT_TYPE_ATTRIB and not self._readable_now(src):
                return
            if event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED, EVENT_TYPE_ATTRIB):
                # a directory moved in arrives whole, and one made readable again shows what
                # it held all along; no emitter reports their files one by one
                for path in walk(dest or src):
                    if folder_for(folders, path) is not None:
                        self.tracker.note(path)
        except Exception:  # an exception would end the observer's thread, and all watching with it
            log.exception("cannot handle %s", event)


    def _readable_now(self, directory: Path) -> bool:
        """Track a directory whose mode changed: one kbd cannot read is remembered; one that
        was so and is readable again has its root watched anew (watchdog could not watch
        under it) and rescanned for what changed meanwhile."""
        readable = os.access(directory, os.R_OK | os.X_OK)
        with self._dirs_lock:
            if not readable:
                self._locked.add(directory)
            elif directory in self._locked:
                self._locked.discard(directory)
                self._reopened.add(directory)
        return readable


class _OverflowAlarm(logging.Handler):
    """Sets `overflowed` when watchdog logs that the inotify queue overflowed."""

    def __init__(self, overflowed: threading.Event):
        super().__init__(logging.WARNING)
        self.overflowed = overflowed

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Inotify queue overflowed"):
            self.overflowed.set()


class _Dispatch(FileSystemEventHandler):
    """Hands the events of the watch on `real_root` on, their paths spelled under `root`."""

    def __init__(self, on_event: Callable[[FileSystemEvent, Path, Path | None], None],
                 real_root: Path, root: Path):
        self.on_event = on_event
        self.real_root = real_root
        self.root = root

    def dispatch(self, event: FileSystemEvent) -> None:
        src = self.spelled(event.src_path)
        self.on_event(event, src, self.spelled(event.dest_path) if event.dest_path else None)

    def spelled(self, path: str | bytes) -> Path:
        real = Path(os.fsdecode(path))
        # a move out of the watched tree has a destination outside it: keep that as it is
        if real.is_relative_to(self.real_root):
            return self.root / real.relative_to(self.real_root)
        return real


def _unreadable_dirs(root: Path) -> set[Path]:
    """The directories under root that cannot be listed now."""
    found: set[Path] = set()
    for _ in os.walk(root, onerror=lambda error: found.add(Path(error.filename))):
        pass
    return found


def _stat(path: Path) -> _Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Stat(st.st_size, st.st_mtime_ns, st.st_ino)


def _dir_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if S_ISDIR(st.st_mode) else None


def _is_alive(watch: _Watch) -> bool:
    return any(e.watch == watch.watch and e.is_alive() for e in list(watch.observer.emitters))


def _call(what: str, callback: Callable[..., None], *args: object) -> None:
    """Run a callback on the timer thread; whatever it raises is logged, never fatal."""
    try:
        callback(*args)
    except Exception:
        log.exception("%s failed", what)
