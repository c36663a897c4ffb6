"""Two daemons on one store: a second `kbd daemon` with the same home, and one with its own
home whose [store] url names the first one's database (a SQLite file, or PostgreSQL).

kbd promises: the second refuses to start, exits 1 and names the first one's pid; the first
runs on untouched; no job runs twice (a standing question every second is answered once per
firing, never twice at once).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from support.harness import Kbd, Outcome, TinyModel, postgresql_database, started

EVERY_S = 1


def two_daemons(work: Path, model: TinyModel, *, attempts: int = 1,
                store_url: str = "") -> Outcome:
    out = Outcome("two daemons")
    extra = f'[store]\nurl = "{store_url}"\n' if store_url else ""
    with Kbd(work / "first", model, extra=extra) as first:
        first.start_settled(5)
        question = first.client.request("POST", "/questions", {
            "text": "which request failed ?", "every": f"{EVERY_S}s", "top_k": 2,
            "max_new_tokens": 4})
        began = time.monotonic()
        url = store_url or first.loaded_config().database_url
        refused = 0
        for n in range(attempts):
            second = Kbd(work / f"second{n}", model, extra=f'[store]\nurl = "{url}"\n')
            for who, kbd in (("same home", first), ("same store", second)):
                # a daemon that wrongly starts runs on: the timeout kills it and fails the run
                attempt = kbd.cli("daemon", timeout=60)
                out.runs += 1
                refused += out.expect(
                    attempt.returncode == 1 and f"pid {first.proc.pid}" in attempt.stderr,
                    f"{who}: a second daemon was not refused with the first one's pid "
                    f"(exit {attempt.returncode}: {attempt.stderr[-300:]})")
        out.expect(first.status()["pid"] == first.proc.pid, "the first daemon stopped answering")
        time.sleep(max(0.0, 3 * EVERY_S - (time.monotonic() - began)))  # runs to compare
        runs = sorted(started(a) for a in first.runs(question["id"]))
        close = [(a, b) for a, b in zip(runs, runs[1:], strict=False)
                 if b - a < timedelta(seconds=EVERY_S / 2)]
        out.expect(not close, f"two runs of one firing: {close[:3]}")
        out.expect(len(runs) <= (time.monotonic() - began) / EVERY_S + 2,
                   f"{len(runs)} runs in {time.monotonic() - began:.0f} s of 1 s firings")
        out.absorb(first.consistency(), "after the second daemons")
    out.figures = {"refused": refused,
                   "store": "postgresql" if store_url.startswith("postgresql") else "sqlite"}
    return out


def test_second_daemon_on_the_same_sqlite_store_is_refused(tmp_path, tiny_model):
    out = two_daemons(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0 and out.runs == 2


def test_second_daemon_on_the_same_postgresql_store_is_refused(tmp_path, tiny_model,
                                                               postgres_server):
    with postgresql_database(postgres_server) as url:
        out = two_daemons(tmp_path, tiny_model, store_url=url)
    assert out.failures == [] and out.data_lost == 0 and out.runs == 2
