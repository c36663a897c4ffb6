"""Faults of the daemon itself, on the real daemon subprocess without a model:

- a thread that dies: a folder tree 1,200 levels deep in a polled folder makes watchdog's
  polling snapshot recurse past Python's limit, and its emitter thread dies;
- failures that outlive their cause: files refused as too large, then max_file_mb raised.

kbd promises: a thread that dies is a fault in /status (its name and error) and in `kbd
status` (exit 4), its traceback is in the log, and the rest of the daemon works on; a file
refused as too large is stored, and its failure gone, once it fits the limit.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support.harness import Kbd, wait_for

DEPTH = 1200  # Python's recursion limit is 1,000 frames


def deep_tree(root: Path, depth: int) -> None:
    """`depth` nested folders named d (one level at a time: os.makedirs recurses too)."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)


def remove_deep_tree(root: Path, depth: int) -> None:
    """What deep_tree made, deepest first (shutil.rmtree recurses)."""
    fds = [os.open(root, os.O_RDONLY)]
    for _ in range(depth - 1):
        fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
    for fd in reversed(fds):
        os.rmdir("d", dir_fd=fd)
        os.close(fd)


def test_a_thread_that_dies_is_a_fault_in_status(tmp_path):
    polled = tmp_path / "polled"
    polled.mkdir()
    extra = f'[[folders]]\npath = "{polled}"\npolling = true\npoll_interval_s = 0.2\n'
    with Kbd(tmp_path, None, ingest={"rescan_interval_s": 3600.0}, extra=extra) as kbd:
        kbd.start()
        assert kbd.status()["healthy"] and kbd.cli("status").returncode == 0
        deep_tree(polled, DEPTH)
        try:
            fault = wait_for(lambda: next((f for f in kbd.status()["faults"]
                                           if f["code"] == "thread-died"), None),
                             timeout=30, what="the emitter's death in /status")
            assert fault["place"] == "thread PollingEmitter"
            assert fault["message"].startswith("RecursionError: maximum recursion depth")
            assert kbd.status()["healthy"] is False
            said = kbd.cli("status")
            assert said.returncode == 4
            assert "fault: thread PollingEmitter: RecursionError" in said.stdout
            assert "thread PollingEmitter died" in kbd.log_text()
            (kbd.watched / "after.log").write_text("2026-12-06 18:00:00 still ingesting\n")
            wait_for(lambda: kbd.live_documents() == 1, timeout=30,
                     what="ingestion going on without the polled folder's watch")
        finally:
            kbd.stop(signal.SIGTERM)
            remove_deep_tree(polled, DEPTH)


def test_too_large_failures_go_once_the_limit_is_raised(tmp_path):
    with Kbd(tmp_path, None, ingest={"max_file_mb": 1}) as kbd:
        big = kbd.watched / "big.log"
        big.write_text("".join(f"2026-12-06 18:00:00 line {i:06d} {'x' * 60}\n"
                               for i in range(20_000)))  # about 1.6 MB
        kbd.start()

        def failed() -> list[tuple[str, str]]:
            return [(f["path"], f["code"]) for f in kbd.status()["failed_files"]]

        wait_for(lambda: failed() == [(str(big), "too-large")], timeout=30,
                 what="big.log refused as too large")
        kbd.stop()
        kbd.config.write_text(kbd.config.read_text().replace("max_file_mb = 1\n",
                                                             "max_file_mb = 2\n"))
        kbd.start()
        wait_for(lambda: kbd.live_documents() == 1 and failed() == [], timeout=60,
                 what="big.log stored and its failure gone")
