"""Load: clients asking without pause while a burst of files is ingested and a standing
question fires every few seconds.

kbd promises: every request gets an answer (no error, none dropped), every file that arrives
is in the store with all its lines, and every firing of the standing question is answered
and recorded, or coalesced into the run still in progress (APScheduler's max_instances=1):
a steady stream of `kbd ask` delays standing questions by one batch but never starves them,
so at least every other firing runs.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from support.harness import Kbd, Outcome, TinyModel, make_logs, started

SEED_FILES = 20  # ingested before the load starts, so the first questions have sources


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def load(work: Path, model: TinyModel, *, clients: int = 4, seconds: float = 10,
         files: int = 200, every_s: int = 3) -> Outcome:
    out = Outcome("load")
    with Kbd(work, model) as kbd:
        kbd.start_settled(SEED_FILES, lines=20)
        question = kbd.client.request("POST", "/questions", {
            "text": "which request failed with a timeout ?", "every": f"{every_s}s",
            "top_k": 2, "max_new_tokens": 4})
        created = datetime.now(UTC)
        latencies: list[float] = []  # list.append is atomic: the threads share these
        errors: list[str] = []  # a request with no reply ends here too (the client times out)
        stop_at = time.monotonic() + seconds

        def ask(n: int) -> None:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    reply = kbd.client.request("POST", "/ask", {
                        "question": f"what happened to request {n} ?", "top_k": 2,
                        "max_new_tokens": 4})
                    if not isinstance(reply.get("answer"), str):
                        raise ValueError(f"no answer text in {reply}")
                    latencies.append(time.monotonic() - start)
                except Exception as e:  # each one is a broken promise, counted and named
                    errors.append(f"{type(e).__name__}: {e}")

        def arrive() -> None:  # the files arrive in batches spread over the load
            batch = max(1, files // 20)
            for first in range(SEED_FILES, SEED_FILES + files, batch):
                make_logs(kbd.watched, min(batch, SEED_FILES + files - first), lines=20,
                          first=first)
                time.sleep(seconds / 25)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(clients)]
        threads.append(threading.Thread(target=arrive))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ended = datetime.now(UTC)
        found = kbd.converged(timeout=60 + files / 10)
        out.absorb(found, "after the load")
        out.expect(not errors, f"{len(errors)} requests failed, first: {errors[:1]}")
        fired = int((ended - created).total_seconds() // every_s)
        answers = [a for a in kbd.answers(question["id"]) if started(a) <= ended]
        recorded = [a for a in answers if a["status"] != "skipped"]
        # each stretch of firings skipped while a run went on is one skipped answer
        coalesced = sum(int(a["error"].split()[0]) for a in answers if a["status"] == "skipped")
        out.expect(len(recorded) >= fired - coalesced - 1,
                   f"the standing question fired {fired} times, {coalesced} coalesced, but "
                   f"only {len(recorded)} answers were recorded")
        out.expect(len(recorded) >= fired // 2, f"the standing question starved: "
                                                 f"{len(recorded)} runs of {fired} firings")
        out.runs = len(latencies) + len(errors)
        out.figures = {
            "clients": clients, "seconds": seconds, "files": files, "answered": len(latencies),
            "errors": len(errors), "requests_per_s": round(len(latencies) / seconds, 1),
            "p50_s": round(percentile(latencies, 0.50), 3),
            "p95_s": round(percentile(latencies, 0.95), 3),
            "max_s": round(max(latencies, default=0.0), 3),
            "standing_fired": fired, "standing_recorded": len(recorded),
            "standing_coalesced": coalesced,
            "files_in_store": kbd.live_documents()}
    return out


def test_load(tmp_path, tiny_model):
    out = load(tmp_path, tiny_model)
    assert out.failures == [] and out.data_lost == 0
    assert out.figures["answered"] > 0
    assert out.figures["files_in_store"] == SEED_FILES + 200
