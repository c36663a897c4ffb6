"""Retrieval alone: is the gold line among the top-5 passages, by each ranking, in one run.

    python bench/retrieval.py --out bench/results/retrieval.json

The six loghub logs, the probe's own log (bench/retrieval_probe/device.log: glued tokens such
as `7163Calories`) and, where present, the question set's reports are ingested into a SQLite
store cut for SmolLM2's tokenizer, as the text engine cuts them; passage vectors are computed
as the daemon computes them in the background (kept in --work between runs: only new texts are
embedded). Questions: the dev split of each --questions file (the probe's, and the qabench
set's dev.jsonl when present; a held-out file is never read). For each answerable question
and each ranking, the top 5 passages are scored: a hit is a passage of the gold file whose
lines overlap a gold line range (a page-only passage: the gold file alone).

Rankings: `today` (BM25 as before glued tokens were split: the text column alone, the
question's words unsplit), `bm25` (with glued tokens split), `dense` (the dense model alone)
and `hybrid` (the two fused by reciprocal rank: what `kbd ask` uses). Reports recall@1,
recall@5 and MRR@5 overall and per kind, the question's embedding time, and the rate of
passage embedding.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import string
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text as sql

from kbd.ingest.pipeline import Ingester
from kbd.model.tokens import TextPassageTokenizer
from kbd.retrieve import (
    FUSE_DEPTH,
    above_floor,
    bm25,
    dense_model,
    dense_ranking,
    embed_backlog,
    fuse,
    search,
    search_terms,
)
from kbd.store import Store, sqlite_url
from kbd.store import queries as q

HERE = Path(__file__).resolve().parent
LOGHUB = HERE.parents[1] / "shared" / "data" / "loghub"
PROBE = HERE / "retrieval_probe"
QABENCH = HERE / "qa"  # the question set's dev split and reports
TOP_K = 5
EMBED_BATCH = 16
RATE_SAMPLE = 64  # passages embedded again, timed, for the rate (the store may have them all)

Ranking = Callable[[Store, str], list[tuple[int, float]]]


def today(store: Store, question: str) -> list[tuple[int, float]]:
    """BM25 before glued tokens were split: the question's own words, matched in the text
    column alone (search_extra weighted 0)."""
    words = {chunk.strip(string.punctuation).lower() for chunk in question.split()}
    terms = [t for t in search_terms(question) if t.lower() in words]
    if not terms:
        return []
    match = "{text} : (" + " OR ".join('"' + t.replace('"', '""') + '"' for t in terms) + ")"
    with store.read() as conn:
        hits = conn.execute(sql(
            "SELECT p.id, p.text_hash, -bm25(passages_fts, 1.0, 0.0) AS score "
            "FROM passages_fts JOIN passages p ON p.id = passages_fts.rowid "
            "WHERE passages_fts MATCH :match ORDER BY score DESC, p.id DESC LIMIT 40"),
            {"match": match}).all()
    picked: dict[str, tuple[int, float]] = {}
    for hit in hits:
        picked.setdefault(hit.text_hash, (hit.id, hit.score))
    return list(picked.values())[:TOP_K]


def rankings(variants: bool) -> dict[str, Ranking]:
    """The rankings compared; with variants, fusions of other BM25 floors and dense weights
    too (each question's two rankings read once, fused in every way)."""
    model = dense_model()
    found = {"today": today, "bm25": lambda store, question: bm25(store, question, None, TOP_K)}
    if model is None:
        return found
    found["dense"] = lambda store, question: dense_ranking(store, model, question, None, TOP_K)
    found["hybrid"] = lambda store, question: search(store, question, None, TOP_K)
    if not variants:
        return found
    both = functools.cache(lambda store, question: (
        bm25(store, question, None, FUSE_DEPTH),
        dense_ranking(store, model, question, None, FUSE_DEPTH)))
    for floor in (0.1, 0.5, 0.7):
        for weight in (1.0, 0.1, 0.01):
            def fused(store, question, floor=floor, weight=weight):
                lexical, dense = both(store, question)
                return fuse([above_floor(lexical, floor), dense], TOP_K, [1.0, weight])
            found[f"floor={floor},dense={weight}"] = fused
    return found


def data_files(question_files: list[Path]) -> dict[str, Path]:
    """Gold file names (as the question files write them) -> paths to ingest."""
    files = {p.name: p for p in sorted(LOGHUB.glob("*.log"))}
    files["device.log"] = PROBE / "device.log"
    for questions in question_files:
        reports = questions.parent / "reports"
        if reports.is_dir():
            files |= {f"reports/{p.name}": p for p in sorted(reports.iterdir())
                      if p.suffix in (".md", ".rst", ".pdf", ".txt")}
    return files


def read_questions(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["split"] == "dev" and row["answerable"]:
                rows.append(row | {"source": path.parent.name})
    return rows


def is_gold(place, gold: list[dict], files: dict[str, Path]) -> bool:
    for g in gold:
        if place.path != str(files[g["file"]].resolve()):
            continue
        if place.first_line is None:
            return True
        if place.first_line <= g["lines"][1] and g["lines"][0] <= place.last_line:
            return True
    return False


def score(store: Store, rows: list[dict], files: dict[str, Path],
          ranking: Ranking) -> list[int | None]:
    """Per question, the 1-based rank of the first gold passage in the top 5 (None: none)."""
    ranks = []
    for row in rows:
        hits = ranking(store, row["question"])[:TOP_K]
        with store.read() as conn:
            places = q.passage_places(conn, [pid for pid, _ in hits])
        ranks.append(next((rank for rank, (pid, _) in enumerate(hits, 1)
                           if is_gold(places[pid], row["gold"], files)), None))
    return ranks


def metrics(ranks: list[int | None]) -> dict:
    n = len(ranks)
    return {"questions": n,
            "recall@1": round(sum(r == 1 for r in ranks) / n, 3) if n else None,
            "recall@5": round(sum(r is not None for r in ranks) / n, 3) if n else None,
            "mrr@5": round(sum(1 / r for r in ranks if r) / n, 3) if n else None}


def build_store(work: Path, files: dict[str, Path]) -> tuple[Store, dict]:
    from kbd.model.text import load_tokenizer, locate

    store = Store.open(sqlite_url(work / "kbd.sqlite3"), work / "memory")
    ingester = Ingester(store, TextPassageTokenizer(load_tokenizer(locate("smollm2"))))
    for path in files.values():
        ingester.ingest(path)
    model = dense_model()
    while model is not None and embed_backlog(store, model, EMBED_BATCH):
        pass
    with store.read() as conn:
        texts = list(conn.execute(sql("SELECT text FROM passages WHERE live ORDER BY id "
                                      "LIMIT :n"), {"n": RATE_SAMPLE}).scalars())
        passages = q.counts(conn, None)["passages"]
    rate = None
    if model is not None:
        start = time.perf_counter()
        for i in range(0, len(texts), EMBED_BATCH):
            model.embed(texts[i:i + EMBED_BATCH])
        rate = round(len(texts) / (time.perf_counter() - start), 2)
    return store, {"passages": passages, "embed_passages_per_s": rate}


def question_embedding_ms(rows: list[dict]) -> dict | None:
    model = dense_model()
    if model is None:
        return None
    model.embed(["warm up"])
    times = []
    for row in rows:
        start = time.perf_counter()
        model.embed([row["question"]])
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50": round(statistics.median(times), 1),
            "p95": round(times[round(0.95 * (len(times) - 1))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=Path, nargs="*",
                        default=[PROBE / "dev.jsonl", QABENCH / "dev.jsonl"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kbd-bench-retrieval"),
                        help="the store and its vectors, kept between runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "retrieval.json")
    parser.add_argument("--variants", action="store_true",
                        help="also score fusions with other BM25 floors and dense weights")
    args = parser.parse_args()
    question_files = [p for p in args.questions if p.is_file() and "heldout" not in p.name]
    files = data_files(question_files)
    rows = read_questions(question_files)
    args.work.mkdir(parents=True, exist_ok=True)
    store, corpus = build_store(args.work, files)
    results = {}
    for name, ranking in rankings(args.variants).items():
        ranks = score(store, rows, files, ranking)
        by = {"all": metrics(ranks)}
        for key in ("source", "kind"):
            for value in sorted({row[key] for row in rows}):
                by[f"{key}={value}"] = metrics([r for r, row in zip(ranks, rows, strict=True)
                                                if row[key] == value])
        results[name] = by
        results[name]["missed"] = [row["id"] for r, row in zip(ranks, rows, strict=True)
                                   if r is None]
    report = {"machine": platform.processor() or platform.machine(),
              "question_files": [str(p) for p in question_files], "corpus": corpus,
              "question_embedding_ms": question_embedding_ms(rows), "rankings": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, by in results.items():
        print(f"{name:24s} " + "  ".join(
            f"{key}: r@1 {m['recall@1']} r@5 {m['recall@5']} mrr {m['mrr@5']} (n={m['questions']})"
            for key, m in by.items() if key in ("all", "kind=literal", "kind=paraphrase")))
    store.close()


if __name__ == "__main__":
    main()
