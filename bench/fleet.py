"""Fleet figures (issue 25, docs/fleet.md): the aggregate ingest rate of 1 and of 3 ingest
nodes on one PostgreSQL store, what a stored line costs there, and on paper the store at
100 hosts x 1 GB of logs a day.

    python bench/fleet.py --out bench/results/fleet.json

Each run starts a throwaway PostgreSQL server (tests/support/harness.py) and real `kbd daemon`
processes with role ingest, each with its own home, node name and folder. Once they answer,
copies of the loghub logs are put into their folders (the same files and total volume for 1
and 3 nodes, split evenly) and the clock runs until every file is stored to its last byte in
PostgreSQL, which is when its lines are searchable (the full-text vector is a generated
column of the passage row, indexed in the same transaction); the store is then checked line
by line (no line lost or doubled). The time includes the watcher's debounce (0.3 s).

fleet.json holds sections written by several scripts; this one writes `ingest` and `paper`,
and keeps the others (`ask_latency`: bench/fleet_ask.py, `compression`:
bench/fleet_compress.py) as it finds them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.harness
from support.harness import (  # noqa: E402
    Kbd,
    TinyModel,
    check_consistent,
    fleet_toml,
    postgresql_database,
    postgresql_server,
    wait_for,
)

LOGHUB = ROOT.parents[0] / "shared" / "data" / "loghub"
SECTIONS = {"ingest": "bench/fleet.py", "paper": "bench/fleet.py",
            "ask_latency": "bench/fleet_ask.py", "compression": "bench/fleet_compress.py"}

# On paper: the fleet issue 25 asks about, and the CLaRa checkpoint's memory per passage
# (DESIGN.md: doc_max_length 256 tokens, compr_rate 16 or 128 memory tokens per passage
# = 256 // rate, each a hidden state of Mistral-7B's 4096, stored as bf16)
HOSTS, BYTES_PER_HOST_DAY = 100, 10**9
DOC_MAX_LENGTH, HIDDEN, BF16 = 256, 4096, 2
# GPU compression rate of the 7B model on one H100 (bench/results/clara_gpu.json, batch 64)
CLARA_GPU = ROOT / "bench" / "results" / "clara_gpu.json"
# PostgreSQL's manual (5.11 Table Partitioning): partitioning pays "when a table would
# otherwise be very large", as a rule of thumb when it exceeds the server's memory
SERVER_MEMORY_GIB = 128
INT4_MAX = 2**31 - 1  # passages.id and memories' keys were `integer` columns before 0014


def loghub_files() -> list[Path]:
    return sorted(LOGHUB.glob("*.log"))


def lines_in(path: Path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())


def node_files(nodes: int, copies: int) -> list[list[tuple[Path, str]]]:
    """(source, name) per node: `copies` copies of every loghub log in all, dealt round-robin
    so that each node gets copies/nodes of each log (the same volume on every node)."""
    if copies % nodes:
        raise SystemExit(f"--copies {copies} does not split evenly over {nodes} nodes")
    dealt: list[list[tuple[Path, str]]] = [[] for _ in range(nodes)]
    for copy in range(copies):
        for source in loghub_files():
            dealt[copy % nodes].append((source, f"{source.stem}-{copy}.log"))
    return dealt


def stored_bytes(engine) -> dict[str, tuple[int, int]]:
    """node -> (live documents, bytes ingested)."""
    with engine.connect() as conn:
        return {node: (count, int(total)) for node, count, total in conn.execute(text(
            'SELECT node, count(*), coalesce(sum("offset"), 0) FROM documents '
            "WHERE deleted_at IS NULL GROUP BY node"))}


def ingest_run(url: str, model: TinyModel, work: Path, nodes: int, copies: int) -> dict:
    """Start `nodes` ingest daemons, give each its share of the logs, time until all stored."""
    dealt = node_files(nodes, copies)
    names = [f"web-{i + 1}" for i in range(nodes)]
    expected = {name: (len(files), sum(src.stat().st_size for src, _ in files))
                for name, files in zip(names, dealt, strict=True)}
    engine = create_engine(url)
    with ExitStack() as stack:
        daemons = [stack.enter_context(Kbd(work / name, model,
                                           extra=fleet_toml(url, name, "ingest")))
                   for name in names]
        for daemon in daemons:
            daemon.start()
        began = time.perf_counter()
        for daemon, files in zip(daemons, dealt, strict=True):
            for source, name in files:
                shutil.copyfile(source, daemon.watched / name)
        wait_for(lambda: stored_bytes(engine) == expected, timeout=600,
                 what="every file stored to its last byte")
        seconds = time.perf_counter() - began
        config = daemons[0].loaded_config()
        found = check_consistent(url, config.memory_dir,
                                 [p for d in daemons for p in d.files()])
        for daemon in daemons:
            daemon.stop()
    with engine.connect() as conn:
        passages = conn.execute(text("SELECT count(*) FROM passages")).scalar_one()
    engine.dispose()
    lines = sum(lines_in(src) for files in dealt for src, _ in files)
    volume = sum(size for _, size in expected.values())
    return {"nodes": nodes, "files": sum(len(f) for f in dealt), "lines": lines,
            "bytes": volume, "passages": passages, "seconds": round(seconds, 2),
            "lines_per_s": round(lines / seconds), "mb_per_s": round(volume / 1e6 / seconds, 3),
            "lost_lines": found.lost_lines, "problems": found.problems[:5]}


def median_run(tries: list[dict]) -> dict:
    """The run of median time, with every run's rates beside it."""
    middle = sorted(tries, key=lambda r: r["seconds"])[len(tries) // 2]
    return middle | {"runs_lines_per_s": [r["lines_per_s"] for r in tries],
                     "runs_mb_per_s": [r["mb_per_s"] for r in tries],
                     "lost_lines": sum(r["lost_lines"] for r in tries),
                     "problems": [p for r in tries for p in r["problems"]][:5]}


def store_cost(url: str, lines: int) -> dict:
    """What the store holds per passage, per line and per byte of log (`lines`: the logs'
    non-blank lines), after VACUUM (the GIN index's pending entries merged, as they are in a
    store that has been running)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE passages"))
        conn.execute(text("VACUUM ANALYZE documents"))
        row = conn.execute(text(
            "SELECT count(*), sum(octet_length(text)), sum(pg_column_size(search_vector)), "
            "pg_table_size('passages'), pg_indexes_size('passages'), "
            "pg_relation_size('ix_passages_search_vector'), "
            "pg_total_relation_size('documents'), (SELECT sum(\"offset\") FROM documents), "
            "avg(token_count) FROM passages WHERE live")).one()
    engine.dispose()
    # PostgreSQL's sums are numeric (Decimal): sizes as ints
    passages, text_bytes, vector_bytes, table, indexes, fts, documents, log_bytes = (
        int(x) for x in row[:8])
    total = table + indexes + documents
    return {
        "passages": passages, "lines": lines, "log_bytes": log_bytes,
        "lines_per_passage": round(lines / passages, 2),
        "passage_tokens": round(float(row[8]), 1),
        "log_bytes_per_line": round(log_bytes / lines, 1),
        "passage_text_bytes": round(text_bytes / passages),
        # the full-text index: a stored tsvector column in each row, and its GIN index
        "passage_tsvector_bytes": round(vector_bytes / passages),
        "passages_table_bytes": table, "passages_indexes_bytes": indexes,
        "fts_gin_index_bytes": fts, "documents_bytes": documents,
        "store_bytes_per_passage": round(total / passages),
        "store_bytes_per_line": round(total / lines, 1),
        "store_bytes_per_log_byte": round(total / log_bytes, 2),
    }


def paper(cost: dict, ceiling_mb_per_s: float) -> dict:
    """The store at HOSTS x BYTES_PER_HOST_DAY, from the measured cost per log byte."""
    day_bytes = HOSTS * BYTES_PER_HOST_DAY
    passages_day = day_bytes / cost["log_bytes"] * cost["passages"]
    lines_day = day_bytes / cost["log_bytes_per_line"]
    rows_day = day_bytes * cost["store_bytes_per_log_byte"]
    gpu = json.loads(CLARA_GPU.read_text())["compress_batch64"]["passages_per_s"]
    vectors = {}
    for rate in (16, 128):
        per_passage = DOC_MAX_LENGTH // rate * HIDDEN * BF16
        vectors[f"compression_{rate}"] = {
            "memory_tokens": DOC_MAX_LENGTH // rate, "bytes_per_passage": per_passage,
            "bytes_per_day": round(passages_day * per_passage),
            "tb_per_day": round(passages_day * per_passage / 1e12, 2),
        }
    memory = SERVER_MEMORY_GIB * 2**30
    month_fills = memory / 30 / cost["store_bytes_per_log_byte"] / 1e9
    return {
        "fleet": f"{HOSTS} hosts x {BYTES_PER_HOST_DAY / 1e9:g} GB of logs a day",
        "log_bytes_per_day": day_bytes,
        "lines_per_day": round(lines_day),
        "passage_rows_per_day": round(passages_day),
        "rows_per_s_average": round(passages_day / 86400),
        "log_mb_per_s_average": round(day_bytes / 86400 / 1e6, 2),
        "share_of_measured_ceiling": round(day_bytes / 86400 / 1e6 / ceiling_mb_per_s, 2),
        "store_bytes_per_day_rows_and_fts": round(rows_day),
        "store_gb_per_day_rows_and_fts": round(rows_day / 1e9, 1),
        "vectors_bf16": vectors,
        "h100s_to_compress_a_day": round(passages_day / 86400 / gpu, 1),
        "h100_compress_passages_per_s": round(gpu),
        "int4_passage_ids_run_out_after_days": round(INT4_MAX / passages_day, 1),
        "partitioning": {
            "server_memory_gib": SERVER_MEMORY_GIB,
            "rows_and_fts_exceed_memory_after_hours": round(memory / rows_day * 24, 1),
            "rows_and_fts_30_days_tb": round(30 * rows_day / 1e12, 1),
            # the fleet whose month of passages just fills the server's memory: below it,
            # monthly partitions; above it, a partition a day (or shorter retention)
            "log_gb_per_day_where_a_month_fills_memory": round(month_fills, 2),
            "by": (f"time of ingest (passages.created_at): a partition a month while a "
                   f"month's rows fit the server's memory (logs under {month_fills:.1f} GB a "
                   f"day in all), a partition a day at {HOSTS} x "
                   f"{BYTES_PER_HOST_DAY / 1e9:g} GB a day"),
            "why": ("retention drops the oldest partition whole (DROP TABLE) instead of a "
                    "DELETE and VACUUM of hundreds of millions of rows, and inserts and "
                    "recent-first reads touch the newest partition's indexes only; not by "
                    "node: every ask searches every node's passages, so all node partitions "
                    "would be scanned, and hosts join and leave too rarely for it to pay"),
            "needs": ("a migration not made here: the partition key in the passages primary "
                      "key; the ids are bigint since migration 0014 (integer ids ran out "
                      f"after {INT4_MAX / passages_day:.0f} days at this rate)"),
        },
    }


def write_sections(path: Path, sections: dict) -> dict:
    """Write these sections into the fleet figures at `path`, keeping the other scripts'."""
    results = (json.loads(path.read_text()) if path.exists() else {}) | sections
    for name in SECTIONS:
        results.setdefault(name, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/fleet.json")
    parser.add_argument("--copies", type=int, default=6,
                        help="copies of each loghub log in all (a multiple of 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, median kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbd-fleet-") as tmp:
        work = Path(tmp)
        model = TinyModel.written(work)
        load_before = os.getloadavg()
        tries: dict[int, list[dict]] = {1: [], 3: []}
        cost = None
        with postgresql_server() as server:
            # alternated, so that other work on the machine weighs on both alike
            for attempt in range(args.repeat):
                for nodes in tries:
                    with postgresql_database(server) as url:
                        tries[nodes].append(ingest_run(
                            url, model, work / f"n{nodes}-{attempt}", nodes, args.copies))
                        cost = cost or store_cost(url, tries[1][0]["lines"])
    runs = {f"nodes_{n}": median_run(each) for n, each in tries.items()}
    ceiling = max(r["mb_per_s"] for r in runs.values())
    results = write_sections(args.out, {
        "sections": SECTIONS,
        "ingest": {
            "setting": {
                "python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "load_average_before": [round(x, 2)
                                                                for x in load_before],
                "postgresql": "15, throwaway cluster on a Unix socket, fsync off",
                "runs": f"{args.repeat} of each, alternated; the median by time kept",
                "data": f"{args.copies} copies of each of the {len(loghub_files())} loghub "
                        "logs (/work/shared/data/loghub), split evenly over the nodes",
                "note": f"{os.cpu_count()} cores shared by PostgreSQL and every node (and "
                        "other work on this machine): 3 nodes do not add cores, so the figure "
                        "is the store's ceiling on this host, not how a fleet of hosts scales",
            },
            **runs,
            "store_cost": cost,
        },
        "paper": paper(cost, ceiling),
    })
    print(json.dumps({k: results[k] for k in ("ingest", "paper")}, indent=2))


if __name__ == "__main__":
    main()
