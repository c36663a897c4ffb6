"""CPU benchmark of the text engine: SmolLM2-135M-Instruct answering over the loghub logs.

    python bench/text_engine.py --out bench/results/text_engine.json

The path of `kbd ask`: the six loghub logs cut with SmolLM2's tokenizer into a SQLite store,
then the model worker: full-text (BM25) retrieval of the top-5 passages, the instruct model
reading their matching lines as text, greedy decoding (up to 64 new tokens, stopping at the
first sentence's end, a loop or the model's end),
the answer recorded with its sources. Reports the model's load time, each question's latency
(p50 and p95 over --repeat rounds after a warm-up round), retrieval alone, prompt and answer
tokens, decoding with generation forced to 64 tokens, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from kbd.config import ModelConfig
from kbd.ingest.pipeline import Ingester
from kbd.model.text import Passage
from kbd.model.tokens import PassageTokenizer
from kbd.retrieve import search
from kbd.runtime.engines import TEXT_TOP_K, TextEngine, gather
from kbd.runtime.worker import AskRequest, ModelWorker
from kbd.store import Store, sqlite_url
from kbd.store import queries as q

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"
QUESTIONS = [
    "Which blocks did the NameSystem add to the invalid set?",
    "Which user names were tried in invalid ssh logins?",
    "Which IP addresses failed ssh authentication on the combo host?",
    "Why did mod_jk workers go into an error state?",
    "Which Spark executor registered signal handlers?",
    "What did the MRAppMaster create for the application attempt?",
    "When did the kernel log an error?",
    "Which datanode received blocks of size 67108864?",
]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[round(p * (len(ordered) - 1))]


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    current = next(int(line.split()[1]) for line in
                   Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return current / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt_passages(store: Store, question: str) -> list[Passage]:
    """The sources the question's prompt shows (its passages' matching lines), as the engine
    shows them; none where the evidence is weak and the model is not asked."""
    hits = search(store, question, None, TEXT_TOP_K)
    with store.read() as conn:
        places = q.passage_places(conn, [pid for pid, _ in hits])
    return gather(question, hits, bool(hits), places).passages()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/text_engine.json"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig(engine="text", device="cpu")
    results: dict = {"setting": {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "load_average_at_start": os.getloadavg(), "store": "sqlite",
        "text_model": config.text_model, "top_k": TEXT_TOP_K,
        "max_new_tokens": TextEngine.max_new_tokens,
        "repeat": args.repeat, "questions": QUESTIONS}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = [Path(shutil.copy(p, tmp / p.name)) for p in sorted(LOGHUB.glob("*.log"))]
        store = Store.open(sqlite_url(tmp / "kbd.sqlite3"), tmp / "memory")
        start = time.perf_counter()
        ingester = Ingester(store, PassageTokenizer.configured(config))
        ingester.ingest_many((p, None, "log") for p in files)
        with store.read() as conn:
            passages = q.counts(conn, None)["passages"]
        results["ingest"] = {"files": len(files), "passages": passages,
                             "s": time.perf_counter() - start}

        start = time.perf_counter()
        worker = ModelWorker(config, store, revision=lambda: 1, on_change=lambda: None)
        worker.start()
        while worker.state == "loading":
            time.sleep(0.05)
        assert worker.state == "ready", worker.state
        current, peak = rss_mib()
        results["load"] = {"s": time.perf_counter() - start, "rss_mib": current,
                           "peak_rss_mib": peak}

        def ask(question: str) -> tuple[float, dict]:
            start = time.perf_counter()
            reply = worker.submit(AskRequest(question=question)).result()
            return time.perf_counter() - start, reply

        for question in QUESTIONS:  # warm-up
            ask(question)
        latencies, replies = [], []
        for _ in range(args.repeat):
            for question in QUESTIONS:
                seconds, reply = ask(question)
                latencies.append(seconds)
                replies.append((question, reply))
        model = worker.engine.text_model
        prompt_tokens = [len(model.prompt(qn, prompt_passages(store, qn),
                                          TextEngine.max_new_tokens)[0]) for qn, _ in replies]
        answer_tokens = [len(model.tokenizer(r["answer"])["input_ids"]) for _, r in replies]
        retrieval = []
        for _ in range(args.repeat):
            for question in QUESTIONS:
                start = time.perf_counter()
                search(store, question, None, 5)
                retrieval.append(time.perf_counter() - start)
        results["ask"] = {
            "questions": len(latencies), "p50_s": statistics.median(latencies),
            "p95_s": percentile(latencies, 0.95), "mean_s": statistics.mean(latencies),
            "prompt_tokens_mean": statistics.mean(prompt_tokens),
            "answer_tokens_mean": statistics.mean(answer_tokens),
            "retrieval_p50_ms": 1000 * statistics.median(retrieval),
            "retrieval_p95_ms": 1000 * percentile(retrieval, 0.95),
            "answers": [{"question": qn, "answer": r["answer"],
                         "sources": [f"{Path(s['path']).name}:{s['lines'][0]}-{s['lines'][1]}"
                                     for s in r["sources"]]}
                        for qn, r in replies[:len(QUESTIONS)]],
        }
        question, reply = replies[0]
        start = time.perf_counter()
        model.generate([question], [prompt_passages(store, reply)], 64, min_new_tokens=64)
        forced = time.perf_counter() - start
        results["forced_64_tokens"] = {"s": forced, "tokens_per_s": 64 / forced,
                                       "prompt_tokens": prompt_tokens[0]}
        worker.stop()
        store.close()
    results["peak_rss_mib"] = rss_mib()[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in results.items() if k != "setting"}, indent=1,
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
