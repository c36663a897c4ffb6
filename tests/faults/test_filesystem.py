"""Filesystem chaos under one running daemon with four watched folders (three on inotify, one
polled), bound by file modes (root without its override capabilities, harness.UNPRIVILEGED,
where setpriv can do that; else permission flips are left out):

- a log truncated while the daemon is down and refilled past the old offset;
- a rename storm (renames, swaps through excluded temp names, moves between folders);
- deletes while a burst is being ingested;
- symlink loops (a file to itself, two files to each other, a directory to its parent);
- permission flips of ingested files, back and forth;
- a polled folder (create, grow, delete);
- a watched root removed and re-created with other files;
- logrotate `create` and `copytruncate` every second under a writer;
- an inotify queue overflow: the daemon is stopped (SIGSTOP) while tens of thousands of
  events and new files arrive, so the kernel drops what does not fit.

kbd promises: after each, the store converges to exactly what the disk holds: every file
once with every line live once, nothing for files that are gone, loops and unreadable files
listed as failures (never a hang), and all of it without the hourly rescan (set here), from
the events alone, or from the rescan an overflow asks for at once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.harness import Kbd, Outcome, TinyModel, make_logs, poll, unprivileged_unavailable

OVERFLOWED = "Inotify queue overflowed"


def chaos(work: Path, model: TinyModel, *, unprivileged: bool = True, storm_files: int = 40,
          storm_rounds: int = 10, churn_files: int = 150, rotate_s: float = 6) -> Outcome:
    out = Outcome("filesystem chaos")
    polled, rotating, fleeting = work / "polled", work / "rotating", work / "fleeting"
    for folder in (polled, rotating, fleeting):
        folder.mkdir(mode=0o755)
    folders = (f'[[folders]]\npath = "{polled}"\npolling = true\npoll_interval_s = 0.5\n\n'
               f'[[folders]]\npath = "{rotating}"\n\n[[folders]]\npath = "{fleeting}"\n')
    with Kbd(work, model, ingest={"rescan_interval_s": 3600.0}, extra=folders,
             unprivileged=unprivileged) as kbd:
        kbd.start()
        steps = [("truncated while down", lambda: truncated_while_down(kbd)),
                 ("rename storm", lambda: rename_storm(kbd.watched / "storm", storm_files,
                                                       storm_rounds)),
                 ("deletes during ingest", lambda: deletes_during_ingest(
                     kbd.watched / "churn", churn_files)),
                 ("symlink loops", lambda: symlink_loops(kbd, out)),
                 ("polled folder", lambda: polled_folder(polled)),
                 ("root removed and re-created", lambda: root_removed(kbd, fleeting)),
                 ("logrotate under a writer", lambda: rotation(rotating, rotate_s)),
                 ("inotify overflow", lambda: overflow(kbd, out))]
        if unprivileged:
            steps.insert(4, ("permission flips", lambda: permission_flips(kbd, out)))
        timings = {}
        for name, step in steps:
            began = time.monotonic()
            step()
            out.absorb(kbd.converged(timeout=90, failed_ok=looping(kbd)), name)
            timings[name] = round(time.monotonic() - began, 1)
            out.runs += 1
        out.expect(kbd.proc.poll() is None, "the daemon died")
    out.figures = {"permission_flips": unprivileged, "seconds_per_step": timings}
    return out


def looping(kbd: Kbd) -> list[Path]:
    return [kbd.watched / "links" / name for name in ("loop.log", "a.log", "b.log")]


def truncated_while_down(kbd: Kbd) -> None:
    path = kbd.watched / "trunc.log"
    path.write_text("".join(f"2026-11-23 10:00:00 first life line {i}\n" for i in range(100)))
    kbd.converged(timeout=60)  # the first life stored before the daemon goes down
    kbd.stop()
    with path.open("w") as f:  # same inode, truncated, then refilled past the old offset
        f.write("".join(f"2026-11-23 11:00:00 second life line {i}\n" for i in range(150)))
    kbd.start()


def rename_storm(folder: Path, files: int, rounds: int) -> None:
    sub = folder / "sub"
    sub.mkdir(parents=True)
    names = make_logs(folder, files, lines=5)
    for r in range(rounds):
        moved = []
        for n, path in enumerate(names):
            target = (sub if (n + r) % 2 else folder) / f"r{r}-{n}.log"
            path.rename(target)
            moved.append(target)
        for a, b in zip(moved[::2], moved[1::2], strict=False):  # swap through a temp name
            a.rename(a.with_suffix(".tmp"))
            b.rename(a)
            a.with_suffix(".tmp").rename(b)
        names = moved


def deletes_during_ingest(folder: Path, files: int) -> None:
    made = make_logs(folder, files, lines=10)
    for path in made[::2]:
        path.unlink()


def symlink_loops(kbd: Kbd, out: Outcome) -> None:
    links = kbd.watched / "links"
    links.mkdir()
    (links / "ok.log").write_text("2026-11-23 10:00:00 a plain file beside the loops\n")
    (links / "loop.log").symlink_to("loop.log")
    (links / "a.log").symlink_to("b.log")
    (links / "b.log").symlink_to("a.log")
    (links / "up").symlink_to("..")

    def listed() -> bool:
        codes = {f["path"]: f["code"] for f in kbd.status()["failed_files"]}
        return all(codes.get(str(p)) == "symlink-loop" for p in looping(kbd))

    out.expect(poll(listed, 30), "the symlink loops are not listed as failures")


def permission_flips(kbd: Kbd, out: Outcome) -> None:
    """The daemon is bound by file modes here, so mode 000 really hides the files."""
    made = make_logs(kbd.watched / "perm", 6, lines=8)
    kbd.converged(timeout=60)
    for path in made[::2]:
        path.chmod(0)

    def listed() -> bool:
        codes = {f["path"]: f["code"] for f in kbd.status()["failed_files"]}
        return all(codes.get(str(p)) == "unreadable" for p in made[::2])

    out.expect(poll(listed, 30), "files made unreadable are not listed as failures")
    for path in made[::2]:
        path.chmod(0o644)


def polled_folder(folder: Path) -> None:
    made = make_logs(folder, 10, lines=5)
    with made[0].open("a") as f:
        f.write("2026-11-23 10:59:00 grown while polled\n")
    made[1].unlink()


def root_removed(kbd: Kbd, folder: Path) -> None:
    make_logs(folder, 8, lines=5)
    kbd.converged(timeout=60)
    shutil.rmtree(folder)
    kbd.converged(timeout=60)  # its documents retired
    folder.mkdir(mode=0o755)
    make_logs(folder, 8, lines=7, first=4)  # some names come back with other lines


def rotation(folder: Path, seconds: float) -> None:
    """A writer appends to app.log (reopened per line, as loggers that follow `create` do)
    and to copy.log (one O_APPEND handle, as copytruncate expects), while logrotate rotates
    both every second, keeping every rotated file so that the disk still holds every line."""
    config = folder.parent / "logrotate.conf"
    config.write_text(
        f"{folder / 'app.log'} {{\n  rotate 1000\n  create\n  nocompress\n  missingok\n}}\n"
        f"{folder / 'copy.log'} {{\n  rotate 1000\n  copytruncate\n  nocompress\n"
        f"  missingok\n}}\n")
    stop = threading.Event()

    def write() -> None:
        n = 0
        with (folder / "copy.log").open("a") as kept:
            while not stop.is_set():
                with (folder / "app.log").open("a") as f:
                    f.write(f"2026-11-23 10:00:00 app line {n}\n")
                kept.write(f"2026-11-23 10:00:00 copy line {n}\n")
                kept.flush()
                n += 1
                time.sleep(0.005)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1)
            subprocess.run(["logrotate", "-f", "-s", str(folder.parent / "logrotate.state"),
                            str(config)], check=True, capture_output=True)
    finally:
        stop.set()
        writer.join()


def overflow(kbd: Kbd, out: Outcome) -> None:
    """Freeze the daemon, raise more inotify events than the kernel queues, then add files
    whose events are therefore lost; only a rescan can find them."""
    flood = kbd.watched / "flood"
    make_logs(flood, 1, lines=1, name="probe")
    kbd.converged(timeout=30)  # the probe is stored, so its folder is watched
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    log_mark = len(kbd.log_text())
    kbd.proc.send_signal(signal.SIGSTOP)
    try:
        for n in range(queued // 2 + 2000):  # create, close and delete: 3 events each
            temp = flood / f".#{n}"  # an editor's lock name: excluded, so cheap for kbd
            temp.touch()
            temp.unlink()
        make_logs(flood, 50, lines=5)  # their events do not fit in the queue any more
    finally:
        kbd.proc.send_signal(signal.SIGCONT)
    out.expect(poll(lambda: OVERFLOWED in kbd.log_text()[log_mark:], 30),
               f"no inotify overflow was reported (max_queued_events={queued})")


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_filesystem_chaos(tmp_path, tiny_model):
    unprivileged = unprivileged_unavailable() is None  # else: all but the permission flips
    out = chaos(tmp_path, tiny_model, unprivileged=unprivileged)
    assert out.failures == [] and out.data_lost == 0
    assert out.runs == 8 + unprivileged
