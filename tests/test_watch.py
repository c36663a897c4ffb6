"""kbd.watch: globs and scans, the stability tracker, and real watchers on real folders."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support.harness import wait_for

from kbd.folders import WatchedFolder, folder_for, scan
from kbd.watch import StabilityTracker, Watcher

QUIET_S = 0.3


def settle() -> None:
    """Long enough for anything still pending in a watcher to be released."""
    time.sleep(QUIET_S * 3)


def write(path: Path, text: str = "line\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Recorder:
    """The consumer side of a Watcher: records what it is handed, from the timer thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.released: list[tuple[float, Path]] = []  # (monotonic time, path)
        self.rescans = 0

    def on_ready(self, paths: list[Path]) -> None:
        now = time.monotonic()
        with self._lock:
            self.released.extend((now, p) for p in paths)

    def on_rescan(self) -> None:
        with self._lock:
            self.rescans += 1

    def count(self, path: Path) -> int:
        with self._lock:
            return sum(p == path for _, p in self.released)

    def paths(self) -> list[Path]:
        with self._lock:
            return [p for _, p in self.released]


@pytest.fixture
def watch():
    """watch(folders, **kwargs) -> (watcher, recorder): started, its start-up rescan done, and
    stopped after the test."""
    started: list[Watcher] = []

    def start(folders: list[WatchedFolder], **kwargs) -> tuple[Watcher, Recorder]:
        recorder = Recorder()
        kwargs.setdefault("quiet_s", QUIET_S)
        watcher = Watcher(folders, recorder.on_ready, on_rescan=recorder.on_rescan, **kwargs)
        started.append(watcher)
        watcher.start()
        assert wait_for(lambda: recorder.rescans >= 1), "no start-up rescan"
        return watcher, recorder

    yield start
    for watcher in started:
        watcher.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


class TestFolderFor:
    def test_include_and_exclude(self, tmp_path: Path, root: Path):
        folder = WatchedFolder(
            root, include=("*.log", "reports/*.md"), exclude=("debug.log", "archive/*")
        )
        assert folder_for([folder], root / "app.log") is folder
        assert folder_for([folder], root / "node7" / "app.log") is folder  # the name matches
        assert folder_for([folder], root / "reports" / "q3.md") is folder  # the relative path
        assert folder_for([folder], root / "q3.md") is None
        assert folder_for([folder], root / "node7" / "debug.log") is None  # exclude wins
        assert folder_for([folder], root / "archive" / "old.log") is None
        assert folder_for([folder], tmp_path / "elsewhere.log") is None
        assert folder_for([folder], root) is None  # the root is not a file of its own

    @pytest.mark.parametrize(
        "name", [".#notes.md", "notes.md.swp", "notes.md~", "notes.tmp", ".notes.md.part"]
    )
    def test_temp_files_are_always_excluded(self, root: Path, name: str):
        folder = WatchedFolder(root)
        assert folder_for([folder], root / "sub" / name) is None
        assert folder_for([folder], root / "sub" / "notes.md") is folder

    def test_innermost_folder_decides(self, root: Path):
        outer = WatchedFolder(root, kind="log")
        inner = WatchedFolder(root / "reports", kind="report", include=("*.md",))
        folders = [inner, outer]
        assert folder_for(folders, root / "reports" / "q3.md") is inner
        assert folder_for(folders, root / "reports" / "q3.log") is None
        assert folder_for(folders, root / "app.log") is outer

    def test_paths_and_globs_are_normalised(self, tmp_path: Path, root: Path):
        folder = WatchedFolder(str(tmp_path / "x" / ".." / "root"), include=["*.log"])
        assert folder.path == root and folder.include == ("*.log",)
        hash(folder)  # frozen and hashable, so config reloads can compare folder sets
        assert folder_for([folder], str(root / "a" / ".." / "b.log")) is folder


class TestScan:
    def test_recursive_filtered_and_no_symlink_loops(self, tmp_path: Path, root: Path):
        write(root / "a.log")
        write(root / "sub" / "deeper" / "b.log")
        write(root / "sub" / "skip.txt")
        write(root / "sub" / "c.log.swp")
        os.mkfifo(root / "pipe.log")
        (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # would recurse forever
        (root / "link.log").symlink_to(write(tmp_path / "target.log"))
        (root / "broken.log").symlink_to(tmp_path / "missing.log")
        folder = WatchedFolder(root, include=("*.log",))
        found = [path for _, path in scan([folder])]
        assert sorted(found) == sorted(
            [root / "a.log", root / "link.log", root / "sub" / "deeper" / "b.log"]
        )

    def test_nested_folders_yield_each_file_once(self, root: Path):
        outer = WatchedFolder(root)
        inner = WatchedFolder(root / "reports")
        write(root / "a.log")
        write(root / "reports" / "q3.md")
        assert list(scan([outer, inner])) == [
            (outer, root / "a.log"),
            (inner, root / "reports" / "q3.md"),
        ]

    def test_missing_root_is_fine(self, tmp_path: Path, root: Path):
        write(root / "a.log")
        folders = [WatchedFolder(tmp_path / "not-yet"), WatchedFolder(root)]
        assert [path for _, path in scan(folders)] == [root / "a.log"]

    def test_unreadable_directory_is_skipped_with_a_log_line(self, root, monkeypatch, caplog):
        write(root / "a.log")
        write(root / "locked" / "secret.log")
        real_scandir = os.scandir

        def scandir(path):  # chmod 000 does not stop root, which CI may run as
            if os.fspath(path) == os.fspath(root / "locked"):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
        with caplog.at_level(logging.WARNING, logger="kbd.watch"):
            found = [path for _, path in scan([WatchedFolder(root)])]
        assert found == [root / "a.log"]
        assert any("locked" in r.getMessage() and r.name == "kbd.watch" for r in caplog.records)


class TestStabilityTracker:
    """Real files, injected clock."""

    def test_released_once_after_the_quiet_period(self, tmp_path: Path):
        path = write(tmp_path / "a.log")
        tracker = StabilityTracker(quiet_s=1.0)
        tracker.note(path, now=0.0)
        assert tracker.ready(now=0.9) == []
        assert tracker.pending() == 1
        assert tracker.ready(now=1.0) == [path]
        assert tracker.ready(now=5.0) == []
        assert tracker.pending() == 0
        tracker.note(path, now=6.0)  # a new change: released again
        assert tracker.ready(now=7.0) == [path]

    def test_a_new_event_restarts_the_wait(self, tmp_path: Path):
        path = write(tmp_path / "a.log")
        tracker = StabilityTracker(quiet_s=1.0)
        tracker.note(path, now=0.0)
        tracker.note(path, now=0.8)
        assert tracker.ready(now=1.5) == []
        assert tracker.ready(now=1.8) == [path]

    def test_a_change_without_an_event_restarts_the_wait(self, tmp_path: Path):
        path = write(tmp_path / "a.log")
        tracker = StabilityTracker(quiet_s=1.0)
        tracker.note(path, now=0.0)
        with path.open("a") as f:  # e.g. a polling mount between two polls
            f.write("more\n")
        assert tracker.ready(now=1.0) == []  # this stat differs from the one taken at note()
        assert tracker.ready(now=1.9) == []
        assert tracker.ready(now=2.0) == [path]  # two stats a quiet period apart agree

    def test_a_replaced_file_is_not_stable_even_with_the_same_size_and_mtime(self, tmp_path: Path):
        path = write(tmp_path / "a.log", "v1\n")
        tracker = StabilityTracker(quiet_s=1.0)
        tracker.note(path, now=0.0)
        new = write(tmp_path / "a.log.new", "v2\n")
        os.utime(new, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        os.replace(new, path)  # only the inode tells
        assert tracker.ready(now=1.0) == []
        assert tracker.ready(now=2.0) == [path]

    def test_a_vanished_path_is_released(self, tmp_path: Path):
        path = write(tmp_path / "a.log")
        tracker = StabilityTracker(quiet_s=1.0)
        tracker.note(path, now=0.0)
        tracker.note(tmp_path / "gone-dir", now=0.0)  # a deleted directory is noted the same way
        path.unlink()
        assert tracker.ready(now=0.5) == []
        assert sorted(tracker.ready(now=1.0)) == sorted([path, tmp_path / "gone-dir"])


    def test_a_path_that_keeps_changing_is_handed_out_every_max_wait(self, tmp_path: Path):
        path = write(tmp_path / "busy.log")
        quiet = write(tmp_path / "quiet.log")
        tracker = StabilityTracker(quiet_s=1.0, max_wait_s=3.0)
        tracker.note(quiet, now=0.0)
        handed_out = []
        for tenth in range(70):  # an event every 0.1 s for 7 s: it never goes quiet
            now = tenth / 10
            tracker.note(path, now=now)
            assert path not in tracker.ready(now=now)
            handed_out += [now for p in tracker.growing(now=now) if p == path]
        assert handed_out == [3.0, 6.0]
        assert tracker.ready(now=7.9) == [path]  # still released once it has gone quiet
        assert tracker.growing(now=20.0) == []
        assert tracker.pending() == 0


    def test_a_rescan_leaves_pending_and_just_changed_files_to_the_tracker(self, tmp_path):
        tracker = StabilityTracker(quiet_s=1.0)
        noted, fresh, old = (write(tmp_path / n) for n in ("noted.log", "fresh.log", "old.log"))
        os.utime(noted, (0, 0))
        os.utime(old, (0, 0))
        tracker.note(noted)
        assert tracker.claim(noted) and tracker.claim(fresh)  # its event may be on the way
        assert not tracker.claim(old)
        assert tracker.pending() == 2  # fresh.log is released like any noted path


class TestWatcher:
    def test_create_modify_delete_and_globs(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root, include=("*.log",), exclude=("debug*",))])
        ignored = [write(root / "notes.txt"), write(root / "debug.log"), write(root / ".#a.log")]
        path = write(root / "a.log")
        assert wait_for(lambda: rec.count(path) == 1)
        with path.open("a") as f:
            f.write("more\n")
        assert wait_for(lambda: rec.count(path) == 2)
        path.unlink()
        assert wait_for(lambda: rec.count(path) == 3)
        settle()
        assert rec.count(path) == 3
        assert not set(ignored) & set(rec.paths())

    def test_root_that_is_a_symlink(self, watch, tmp_path: Path):
        """inotify does not follow a linked root: its events come from where it leads, and
        are spelled under the link, as files are stored."""
        real = tmp_path / "real"
        real.mkdir()
        link = tmp_path / "link"
        link.symlink_to(real)
        _, rec = watch([WatchedFolder(link)])
        write(real / "a.log")
        write(real / "sub" / "b.log")
        assert wait_for(lambda: rec.count(link / "a.log") == 1
                        and rec.count(link / "sub" / "b.log") == 1)
        assert not [p for p in rec.paths() if p.is_relative_to(real)]

    def test_directory_made_readable_retries_its_files(self, watch, root: Path):
        """A chmod changes no file under the directory, yet makes them all readable."""
        inner = [write(root / "dir" / "a.log"), write(root / "dir" / "deep" / "b.log")]
        _, rec = watch([WatchedFolder(root)])
        (root / "dir").chmod(0o700)
        assert wait_for(lambda: all(rec.count(p) == 1 for p in inner))

    def test_rename_and_atomic_save(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root)])
        old = write(root / "old.md")
        assert wait_for(lambda: rec.count(old) == 1)
        new = root / "new.md"
        old.rename(new)
        assert wait_for(lambda: rec.count(old) == 2 and rec.count(new) == 1)
        temp = write(root / "new.md.tmp", "saved atomically\n")
        os.replace(temp, new)
        assert wait_for(lambda: rec.count(new) == 2)
        settle()
        assert rec.count(new) == 2
        assert temp not in rec.paths()

    def test_reading_a_released_file_does_not_release_it_again(self, root: Path):
        rec = Recorder()

        def ingest(paths: list[Path]) -> None:  # as the consumer will: open and read each file
            for path in paths:
                path.read_bytes()
            rec.on_ready(paths)

        watcher = Watcher([WatchedFolder(root)], ingest, quiet_s=QUIET_S)
        watcher.start()
        try:
            path = write(root / "a.log")
            assert wait_for(lambda: rec.count(path) == 1)
            settle()
            assert rec.count(path) == 1
        finally:
            watcher.stop()

    def test_slow_writer_is_released_once_after_it_stops(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root)])
        path = root / "growing.log"
        with path.open("ab") as f:
            for _ in range(20):  # 100 bytes every 50 ms for about a second
                f.write(b"x" * 99 + b"\n")
                f.flush()
                time.sleep(0.05)
        stopped = time.monotonic()
        assert wait_for(lambda: rec.count(path) == 1)
        settle()
        assert rec.count(path) == 1
        [(released_at, _)] = [r for r in rec.released if r[1] == path]
        assert released_at >= stopped

    def test_busy_writer_is_handed_out_while_it_writes_and_released_after(self, watch,
                                                                          root: Path):
        growing = Recorder()
        _, rec = watch([WatchedFolder(root)], max_wait_s=0.5, on_growing=growing.on_ready)
        path = root / "busy.log"
        with path.open("ab") as f:
            for _ in range(40):  # a line every 50 ms for 2 s: never quiet for QUIET_S
                f.write(b"x" * 99 + b"\n")
                f.flush()
                time.sleep(0.05)
        stopped = time.monotonic()
        assert 2 <= growing.count(path) <= 5
        assert all(at < stopped for at, _ in growing.released)
        assert wait_for(lambda: rec.count(path) == 1)
        settle()
        assert rec.count(path) == 1

    def test_directory_moved_in_renamed_and_moved_out(self, watch, tmp_path: Path, root: Path):
        _, rec = watch([WatchedFolder(root, include=("*.log",))])
        outside = tmp_path / "outside" / "batch"
        write(outside / "a.log")
        write(outside / "deep" / "b.log")
        write(outside / "c.txt")
        (root / "batch").parent.mkdir(exist_ok=True)
        shutil.move(outside, root / "batch")
        moved_in = [root / "batch" / "a.log", root / "batch" / "deep" / "b.log"]
        assert wait_for(lambda: all(rec.count(p) == 1 for p in moved_in))

        (root / "batch").rename(root / "renamed")
        assert wait_for(lambda: rec.count(root / "batch") >= 1)  # the old directory path: gone
        assert wait_for(lambda: rec.count(root / "renamed" / "deep" / "b.log") == 1)

        shutil.move(root / "renamed", tmp_path / "away")
        assert wait_for(lambda: rec.count(root / "renamed") >= 1)
        assert not (root / "renamed").exists()
        settle()
        assert root / "batch" / "c.txt" not in rec.paths()
        # the directory's path stands for the files that left with it
        assert rec.count(root / "renamed" / "a.log") == 1

    def test_burst_of_2000_files_is_released_exactly_once(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root)])
        paths = {write(root / f"d{i % 4}" / f"f{i:04}.log", f"{i}\n") for i in range(2000)}
        assert wait_for(lambda: paths <= set(rec.paths()), timeout=30)
        settle()
        counts = Counter(rec.paths())
        assert {p: n for p, n in counts.items() if p in paths and n != 1} == {}

    def test_rescan_at_start_and_periodically(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root)], rescan_interval_s=0.3)
        assert rec.rescans == 1  # start-up, well before the first interval is over
        assert wait_for(lambda: rec.rescans >= 4, timeout=3)

    def test_an_inotify_overflow_asks_for_a_rescan_at_once(self, watch, root: Path):
        """watchdog reports a queue overflow only in its log; the Watcher hears it there.
        (tests/faults/test_filesystem.py overflows a real queue.)"""
        _, rec = watch([WatchedFolder(root)], rescan_interval_s=3600)
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        assert wait_for(lambda: rec.rescans == 2, timeout=2)

    def test_a_permission_change_is_an_event(self, watch, root: Path):
        """A file made readable again changes neither size nor mtime."""
        path = write(root / "a.log")
        _, rec = watch([WatchedFolder(root)])
        settle()
        path.chmod(0o600)
        assert wait_for(lambda: rec.count(path) == 1)

    def test_a_callback_that_raises_does_not_stop_later_callbacks(self, root: Path, caplog):
        seen: list[Path] = []
        rescans: list[float] = []

        def on_ready(paths: list[Path]) -> None:
            seen.extend(paths)
            raise RuntimeError("consumer bug")

        def on_rescan() -> None:
            rescans.append(time.monotonic())
            raise RuntimeError("store locked")

        watcher = Watcher([WatchedFolder(root)], on_ready, QUIET_S, 0.2, on_rescan)
        watcher.start()
        try:
            first = write(root / "first.log")
            assert wait_for(lambda: first in seen)
            second = write(root / "second.log")
            assert wait_for(lambda: second in seen)
            assert wait_for(lambda: len(rescans) >= 3)
        finally:
            watcher.stop()
        errors = [r for r in caplog.records if r.name == "kbd.watch" and r.levelno == logging.ERROR]
        assert {r.getMessage() for r in errors} == {"on_ready failed", "on_rescan failed"}

    @pytest.mark.parametrize("pause", [True, False], ids=["slow", "immediate"])
    def test_root_deleted_and_recreated(self, watch, root: Path, pause: bool):
        _, rec = watch([WatchedFolder(root)])
        before = write(root / "before.log")
        assert wait_for(lambda: rec.count(before) == 1)
        rescans = rec.rescans
        shutil.rmtree(root)
        if pause:  # the consumer learns that the root is gone
            assert wait_for(lambda: rec.count(root) >= 1)
            assert wait_for(lambda: rec.count(before) == 2)
        root.mkdir()
        assert wait_for(lambda: rec.rescans > rescans)  # watched again, and told to reconcile
        after = write(root / "after.log")
        assert wait_for(lambda: rec.count(after) == 1)

    def test_root_moved_away_and_replaced(self, watch, tmp_path: Path, root: Path):
        _, rec = watch([WatchedFolder(root)])
        rescans = rec.rescans
        root.rename(tmp_path / "old")
        root.mkdir()  # at once: the root's path exists all along, but it is another directory
        assert wait_for(lambda: rec.rescans > rescans)
        after = write(root / "after.log")
        write(tmp_path / "old" / "ghost.log")  # inotify would report it under the old name
        assert wait_for(lambda: rec.count(after) == 1)
        settle()
        assert root / "ghost.log" not in rec.paths()

    def test_root_missing_at_start_is_watched_once_it_appears(self, watch, tmp_path: Path):
        root = tmp_path / "later"
        _, rec = watch([WatchedFolder(root)])
        root.mkdir()
        assert wait_for(lambda: rec.rescans == 2)
        path = write(root / "a.log")
        assert wait_for(lambda: rec.count(path) == 1)

    def test_update_adds_and_removes_folders(self, watch, tmp_path: Path):
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        watcher, rec = watch([WatchedFolder(first)])
        watcher.update([WatchedFolder(first), WatchedFolder(second)])
        assert wait_for(lambda: rec.rescans == 2)  # the consumer reconciles the new folder set
        added = write(second / "a.log")
        assert wait_for(lambda: rec.count(added) == 1)

        watcher.update([WatchedFolder(second)])
        dropped = write(first / "dropped.log")
        kept = write(second / "kept.log")
        assert wait_for(lambda: rec.count(kept) == 1)
        settle()
        assert rec.count(dropped) == 0
        assert rec.rescans == 3

    def test_stop_joins_every_thread_and_is_idempotent(self, root: Path):
        before = set(threading.enumerate())
        folders = [WatchedFolder(root), WatchedFolder(root, polling=True)]
        watcher = Watcher(folders, lambda paths: None)
        watcher.start()
        assert len(set(threading.enumerate()) - before) >= 3  # timer, and an observer of each kind
        watcher.stop()
        watcher.stop()
        assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []


class TestPolling:
    def test_polling_sees_create_modify_delete(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root, polling=True, poll_interval_s=0.1)])
        path = write(root / "sub" / "a.log")
        assert wait_for(lambda: rec.count(path) == 1)
        path.write_text("changed, and longer\n")
        assert wait_for(lambda: rec.count(path) == 2)
        path.unlink()
        assert wait_for(lambda: rec.count(path) == 3)

    def test_polled_root_deleted_and_recreated(self, watch, root: Path):
        _, rec = watch([WatchedFolder(root, polling=True, poll_interval_s=0.1)])
        rescans = rec.rescans
        shutil.rmtree(root)
        assert wait_for(lambda: rec.count(root) >= 1)
        root.mkdir()
        assert wait_for(lambda: rec.rescans > rescans)
        path = write(root / "a.log")
        assert wait_for(lambda: rec.count(path) == 1)
