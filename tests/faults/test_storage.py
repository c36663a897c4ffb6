"""Storage faults under a running daemon: its data folder fills up (a small tmpfs mounted
over it), another process holds the SQLite write lock, the database file becomes read-only
(the immutable attribute, which binds root too; file modes do not).

kbd promises: the daemon stays up and answers; `kbd status` names the fault in words ("disk
full writing ..."); nothing is written half (integrity_check passes); once the fault goes
away kbd recovers by itself, and every file that arrived meanwhile is stored, none lost. A
daemon started on a read-only database exits 1 with a clear error instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.harness import Kbd, Outcome, TinyModel, make_logs, poll, wait_for

from kbd.errors import KbdError

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")  # in WAL mode: the write lock; readers go on
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""
# writes wait this long for a lock before kbd reports it: SQLite's busy timeout (30 s) for
# each of the store's 4 tries (kbd.store.BUSY_TIMEOUT_MS, WRITE_TRIES), plus back-off
LOCK_SHOWN_AFTER_S = 4 * 30 + 5


def tmpfs_unavailable() -> str | None:
    """Why a small tmpfs cannot be mounted here (None: it can)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a small tmpfs needs root"
    probe = tempfile.mkdtemp(prefix="kbd-tmpfs-")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                                 capture_output=True, text=True)
        if mounted.returncode:
            return f"cannot mount tmpfs (needs CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        subprocess.run(["umount", probe], check=True)
        return None
    finally:
        os.rmdir(probe)


def immutable_unavailable(folder: Path) -> str | None:
    """Why `chattr +i` cannot make a file in `folder` read-only for root (None: it can)."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        return "chattr +i needs root and e2fsprogs"
    probe = Path(tempfile.mkstemp(dir=folder)[1])
    try:
        if set_immutable([probe], True):
            return f"the filesystem of {folder} has no immutable attribute"
        set_immutable([probe], False)
        return None
    finally:
        probe.unlink()


def set_immutable(paths: list[Path], on: bool) -> int:
    return subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)],
                          capture_output=True).returncode


@contextmanager
def small_disk(folder: Path, size_mb: int) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full; the file, to delete when space should return."""
    filler = folder / "filler"
    # unbuffered: the write that finds the disk full raises, and close has nothing to flush
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 2**16)
    return filler


def fault(kbd: Kbd, codes: tuple[str, ...], timeout: float) -> dict | None:
    """The first fault of those codes that status shows within the timeout, or None."""
    return poll(lambda: next((f for f in kbd.status()["faults"] if f["code"] in codes), None),
                timeout)


def recovered(kbd: Kbd, out: Outcome, when: str, timeout: float = 120) -> None:
    """Every file stored, the backlog compressed and no fault left, within the timeout."""
    out.absorb(kbd.converged(timeout=timeout), when)
    try:
        kbd.settled(len(kbd.files()), timeout=timeout)
        wait_for(lambda: kbd.status()["faults"] == [], timeout=30)
    except AssertionError as e:
        out.failures.append(f"{when}: {e}")


def disk_full(work: Path, model: TinyModel, *, cycles: int = 1, files: int = 20,
              size_mb: int = 24) -> Outcome:
    out = Outcome("disk full")
    with Kbd(work, model) as kbd, small_disk(kbd.home / "data", size_mb) as data:
        kbd.start_settled(files)
        for cycle in range(1, cycles + 1):
            filler = fill(data)
            make_logs(kbd.watched, files, first=cycle * files)
            shown = fault(kbd, ("disk-full",), timeout=60)
            out.expect(shown and "disk full writing" in shown["message"],
                       f"cycle {cycle}: status shows no disk-full fault")
            said = kbd.cli("status").stdout
            out.expect("fault: " in said and "disk full writing" in said,
                       f"cycle {cycle}: `kbd status` does not say the disk is full")
            out.expect(kbd.proc.poll() is None, f"cycle {cycle}: the daemon died")
            filler.unlink()
            recovered(kbd, out, f"cycle {cycle}, after space came back")
            out.runs += 1
    return out


def db_locked(work: Path, model: TinyModel, *, hold_s: float = 8, files: int = 20) -> Outcome:
    out = Outcome("database locked")
    with Kbd(work, model) as kbd:
        kbd.start_settled(files)
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, kbd.database_file,
                                   str(hold_s)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            make_logs(kbd.watched, files, first=files)
            asked: list[dict | KbdError] = []
            asking = threading.Thread(target=ask, args=(kbd, asked))
            asking.start()
            slowest = 0.0
            while time.monotonic() - locked_at < min(hold_s - 1, 10):
                begin = time.monotonic()
                kbd.status()
                slowest = max(slowest, time.monotonic() - begin)
                time.sleep(0.5)
            out.expect(slowest < 2, f"status took {slowest:.1f} s while the lock was held")
            long = hold_s > LOCK_SHOWN_AFTER_S  # writes give up: a fault, and clear errors
            if long:
                shown = fault(kbd, ("locked",), timeout=locked_at + hold_s - time.monotonic())
                out.expect(shown and "locked by another process" in shown["message"],
                           "status shows no locked fault")
            holder.wait(timeout=hold_s + 30)
            asking.join(timeout=150)
            answer = asked[0] if asked else None
            out.expect(isinstance(answer, dict) and answer["status"] == "answered" or long and
                       isinstance(answer, KbdError) and "locked by another" in answer.message,
                       f"the question asked during the lock got {answer!r}")
            recovered(kbd, out, "after the lock was released")
            out.runs += 1
            out.figures = {"hold_s": hold_s, "slowest_status_s": round(slowest, 3)}
        finally:
            holder.kill()
    return out


def ask(kbd: Kbd, replies: list) -> None:
    """A question whose answer must be recorded: its reply, or the error it got."""
    try:
        replies.append(kbd.client.request("POST", "/ask", {"question": "which request failed ?",
                                                          "max_new_tokens": 4}))
    except KbdError as e:
        replies.append(e)


def read_only(work: Path, model: TinyModel, *, cycles: int = 1, files: int = 20) -> Outcome:
    out = Outcome("database read-only")
    with Kbd(work, model) as kbd:
        kbd.start_settled(files)
        database = kbd.database_file
        for cycle in range(1, cycles + 1):
            frozen = [p for p in database.parent.glob(database.name + "*") if p.is_file()
                      and not p.name.endswith(".lock")]
            set_immutable(frozen, True)
            try:
                make_logs(kbd.watched, files, first=cycle * files)
                shown = fault(kbd, ("io-error", "read-only"), timeout=60)
                out.expect(shown and str(database) in shown["message"],
                           f"cycle {cycle}: status shows no fault naming {database}")
                out.expect(kbd.proc.poll() is None, f"cycle {cycle}: the daemon died")
            finally:
                set_immutable(frozen, False)
            recovered(kbd, out, f"cycle {cycle}, once writable again")
            out.runs += 1
        assert kbd.stop() == 0
        set_immutable([database], True)
        try:
            refused = kbd.cli("daemon", timeout=120)
        finally:
            set_immutable([database], False)
        out.expect(refused.returncode == 1 and "read-only" in refused.stderr
                   and "Traceback" not in refused.stderr,
                   f"a daemon on a read-only database: exit {refused.returncode}, "
                   f"{refused.stderr[-300:]}")
        kbd.start()
        recovered(kbd, out, "restarted once writable")
        out.runs += 1
    return out


@pytest.mark.skipif(bool(reason := tmpfs_unavailable()), reason=str(reason))
def test_disk_full(tmp_path, tiny_model):
    out = disk_full(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0 and out.runs == 1


def test_database_locked_by_another_process(tmp_path, tiny_model):
    out = db_locked(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0 and out.runs == 1


def test_database_read_only(tmp_path, tiny_model):
    if reason := immutable_unavailable(tmp_path):
        pytest.skip(reason)
    out = read_only(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0 and out.runs == 2
