"""A busy log through the real daemon: a line every 0.1 s, each written in two halves 50 ms
apart, so the file never stays quiet for debounce_s (2 s here, the default).

kbd promises: while the writer still writes, each line is in the stored passages within
ingest.max_wait_s (5 s, the default) + SLACK_S of its line break; no passage ever holds a line
the writer had not finished; once it stops, the store holds every line once (nothing lost).
Figures: write -> searchable p50, p95 and max over every line, through /documents/show.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import quote

from support.harness import Kbd, Outcome, TinyModel, poll

from kbd.errors import KbdError

SLACK_S = 3.0  # one ingest, the poll below and two CPUs shared with the writer and the test
POLL_S = 0.2


def busy_line(i: int) -> str:
    return f"2026-12-06 18:{i // 60 % 60:02d}:{i % 60:02d} busy-{i:05d} served in {i % 97} ms"


def busy_log(work: Path, model: TinyModel, seconds: float = 12.0, every_s: float = 0.1,
             max_wait_s: float | None = None) -> Outcome:
    """The scenario; max_wait_s None leaves ingest.max_wait_s at its default."""
    out = Outcome("busy log")
    ingest = {"debounce_s": 2.0, "rescan_interval_s": 3600.0}
    if max_wait_s is not None:
        ingest["max_wait_s"] = max_wait_s
    with Kbd(work, model, ingest=ingest) as kbd:
        kbd.start()
        max_wait_s = kbd.loaded_config().ingest.max_wait_s
        path = kbd.watched / "busy.log"
        written: list[float] = []  # monotonic time of each line's line break
        stop = threading.Event()

        def write() -> None:
            with path.open("a") as f:
                while not stop.is_set():
                    line = busy_line(len(written))
                    f.write(line[:len(line) // 2])
                    f.flush()
                    time.sleep(every_s / 2)
                    f.write(line[len(line) // 2:] + "\n")
                    f.flush()
                    written.append(time.monotonic())
                    time.sleep(every_s / 2)

        seen: dict[int, float] = {}  # line number -> when it was first found stored
        broken: set[str] = set()

        def look() -> bool:
            now = time.monotonic()
            for line in stored_lines(kbd, path):
                number = re.search(r" busy-(\d{5}) ", line)
                if number and line == busy_line(int(number[1])):
                    seen.setdefault(int(number[1]), now)
                else:
                    broken.add(line)
            return len(seen) == len(written)

        writer = threading.Thread(target=write, name="busy-writer")
        writer.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            look()
            time.sleep(POLL_S)
        stop.set()
        writer.join()
        stopped = time.monotonic()
        out.runs = 1
        # lines written long enough before the stop had to be found while it still wrote
        due = [i for i, at in enumerate(written) if at < stopped - max_wait_s - SLACK_S]
        late = [i for i in due if i not in seen or seen[i] - written[i] > max_wait_s + SLACK_S]
        out.expect(due and not late, f"{len(late)} of {len(due)} lines written while the log "
                   f"was busy were not searchable within {max_wait_s + SLACK_S:g} s")
        out.expect(poll(look, timeout=60), "every line stored once the writer stopped")
        out.expect(not broken, f"half-written lines stored: {sorted(broken)[:3]}")
        out.absorb(kbd.converged(timeout=60), "after the writer stopped")
        delays = sorted(seen[i] - at for i, at in enumerate(written) if i in seen)
        if delays:
            out.figures = {
                "lines": len(written), "every_s": every_s, "debounce_s": 2.0,
                "max_wait_s": max_wait_s,
                "p50_s": round(statistics.median(delays), 2),
                "p95_s": round(delays[int(0.95 * (len(delays) - 1))], 2),
                "max_s": round(delays[-1], 2)}
    return out


def stored_lines(kbd: Kbd, path: Path) -> list[str]:
    """The lines of the document's live passages (none before it is first stored)."""
    try:
        shown = kbd.client.request("GET", f"/documents/show?path={quote(str(path))}")
    except KbdError:
        return []
    return [line for p in shown["passages"] for line in p["text"].split("\n")]


def test_busy_log_is_searchable_while_it_grows(tmp_path, tiny_model):
    out = busy_log(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0, out.as_json()
    assert out.figures["p95_s"] <= out.figures["max_wait_s"] + SLACK_S
