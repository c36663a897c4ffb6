"""Standing questions under a running daemon whose model worker is held up: another process
holds the SQLite write lock, so the worker cannot record the answer in hand and every run
behind it waits in the queue, as behind a long `kbd ask`.

kbd promises: a `--since-last-run` question covers every line stored before its run is
answered, however long the run waited, and each line once; firings skipped because the
previous run is still going are recorded (once per stretch, as `skipped` answers shown by
`kbd answers` and the digest) and warned about once per question; deleting a question while
it runs drops that run's answer with one log line and no foreign-key error; question ids are
never given twice, also across a restart.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.harness import Kbd, make_logs, wait_for

QUEUED_S = 8.0  # how long a run waits in the queue behind the held-up worker
MARKER = "zebra-7731 disk quota exceeded on volume 9"


@pytest.fixture(scope="module")
def kbd(tmp_path_factory, tiny_model) -> Iterator[Kbd]:
    with Kbd(tmp_path_factory.mktemp("standing"), tiny_model) as k:
        k.start()
        make_logs(k.watched, 2, lines=20)
        k.settled(2)
        yield k


@contextmanager
def write_lock(database: Path) -> Iterator[None]:
    """Another process's write lock on the store (WAL readers go on): the daemon's writes,
    its model worker's among them, wait until the block ends."""
    conn = sqlite3.connect(database, isolation_level=None, timeout=60)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("COMMIT")
    finally:
        conn.close()


def add_question(kbd: Kbd, **fields) -> int:
    body = {"text": "which request failed ?", "every": "1h", "max_new_tokens": 4} | fields
    return kbd.client.request("POST", "/questions", body)["id"]


def ask(kbd: Kbd) -> dict:
    return kbd.client.request("POST", "/ask", {"question": "which worker ?",
                                              "max_new_tokens": 4})


def run_now(kbd: Kbd, question_id: int) -> dict:
    return kbd.client.request("POST", f"/questions/{question_id}/run")


def marker_passages(kbd: Kbd) -> set[int]:
    with sqlite3.connect(kbd.database_file) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM passages WHERE live AND text LIKE ?",
                                           (f"%{MARKER}%",))}


def test_since_last_run_covers_a_line_stored_before_a_queued_run(kbd):
    """The second run waits QUEUED_S in the queue; a line stored before it was fired (and
    after the first run) must be in its window, and not again in the third run's."""
    qid = add_question(kbd, since_last_run=True, top_k=10)
    assert run_now(kbd, qid)["status"] == "ok"  # the first run reads everything
    with (kbd.watched / "svc00000.log").open("a") as log:
        log.write(f"2026-11-23 11:00:00 service 0 worker 3 {MARKER}\n")
    stored = wait_for(lambda: marker_passages(kbd), what="the new line stored")
    wait_for(lambda: kbd.status()["backlog"] == 0, what="the new line compressed")
    with ThreadPoolExecutor(2) as pool:
        with write_lock(kbd.database_file):
            asked = pool.submit(ask, kbd)
            time.sleep(1.0)  # the worker answers it, then waits to record it
            second = pool.submit(run_now, kbd, qid)
            time.sleep(QUEUED_S)
        assert asked.result(timeout=120)["answer"] is not None
        second = second.result(timeout=120)
    assert second["status"] == "ok", second
    assert stored <= {s["passage_id"] for s in second["sources"]}
    assert run_now(kbd, qid)["status"] == "nothing-new"  # each line in one window


def skipped_firings(answer: dict) -> int:
    return int(re.match(r"(\d+) firings? skipped", answer["error"]).group(1))


def test_skipped_firings_are_recorded_and_warned_once(kbd):
    qid = add_question(kbd, every="1s", top_k=2)
    wait_for(lambda: kbd.answers(qid), what="a first run")
    with write_lock(kbd.database_file):
        time.sleep(QUEUED_S)  # a run cannot record its answer; its next firings fall due
    skipped = wait_for(lambda: [a for a in kbd.answers(qid) if a["status"] == "skipped"],
                       what="a skipped answer")
    kbd.client.request("POST", f"/questions/{qid}/pause")
    skipped = [a for a in kbd.answers(qid) if a["status"] == "skipped"]
    counts = [skipped_firings(a) for a in skipped]
    assert max(counts) >= QUEUED_S - 3, counts  # one row for the whole stretch
    log = kbd.log_text()
    assert log.count(f"question {qid} fell due while its previous run was still going") == 1
    assert "maximum number of running instances" not in log

    history = kbd.cli("answers", str(qid))
    assert history.returncode == 0, history.stderr
    assert "[skipped]" in history.stdout and "firings skipped" in history.stdout
    written = kbd.cli("digest", "--since", "1h", "--json")
    assert written.returncode == 0, written.stderr
    for path in json.loads(written.stdout)["paths"]:
        assert re.search(r"firings skipped \d+ times? while a run was still going",
                         Path(path).read_text()), path


def test_deleting_a_question_while_it_runs(kbd):
    """The run waits behind the held-up worker while the question is deleted; its answer
    (2,048 tokens: still being generated when the delete lands) is dropped cleanly."""
    qid = add_question(kbd, max_new_tokens=2048)
    with ThreadPoolExecutor(3) as pool:
        with write_lock(kbd.database_file):
            asked = pool.submit(ask, kbd)
            time.sleep(1.0)
            running = pool.submit(run_now, kbd, qid)
            time.sleep(1.0)
            deleted = pool.submit(kbd.client.request, "DELETE", f"/questions/{qid}")
            time.sleep(1.0)
        assert deleted.result(timeout=120) == {"deleted": qid}
        asked.result(timeout=120)
        reply = running.result(timeout=120)
    assert reply["status"] == "ok" and reply["answer_id"] is None  # answered, not recorded
    log = kbd.log_text()
    assert "FOREIGN KEY" not in log
    assert log.count(f"question {qid} was deleted while it ran") == 1
    answers = kbd.client.request("GET", "/answers?limit=1000")["answers"]
    assert all(a["question_id"] != qid for a in answers)


def test_question_ids_are_never_reused(kbd):
    add_question(kbd)
    highest = add_question(kbd)
    kbd.client.request("DELETE", f"/questions/{highest}")
    after_delete = add_question(kbd)
    assert after_delete > highest
    kbd.client.request("DELETE", f"/questions/{after_delete}")
    kbd.stop()
    kbd.start()
    assert add_question(kbd) > after_delete
