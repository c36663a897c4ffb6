"""How fast a fleet compresses its backlog with 1 and with 2 model nodes sharing it under
leases (docs/fleet.md): real daemons on a throwaway PostgreSQL server, the tiny CLaRa
checkpoint on the CPU. An ingest node stores the logs first; then the model nodes start
together and compress them. The rate is the distinct texts compressed over the span from
the first memory row written to the last (the database's times), so start-up is not in it.
Each case runs with one torch thread per node (as if each node had a core of its own) and
with torch's default (every node takes every core: on one small machine two nodes then
fight over the cores). Writes bench/results/fleet_compress.json, and the same as the
`compression` section of bench/results/fleet.json (bench/fleet.py writes the others).

    PYTHONPATH=. python3 bench/fleet_compress.py             # about 5 minutes on 2 cores
    PYTHONPATH=. python3 bench/fleet_compress.py --files 10  # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the daemon harness

from fleet import write_sections  # noqa: E402
from sqlalchemy import create_engine, func, select  # noqa: E402
from support.harness import (  # noqa: E402
    Kbd,
    TinyModel,
    fleet_toml,
    make_logs,
    postgresql_database,
    postgresql_server,
    wait_for,
)

from kbd.store.schema import documents, memories, passages  # noqa: E402

RESULT = ROOT / "bench" / "results" / "fleet_compress.json"
FLEET = ROOT / "bench" / "results" / "fleet.json"  # its `compression` section


def compress_rate(server: str, model: TinyModel, root: Path, model_nodes: int, files: int,
                  lines: int = 200, threads: int | None = None) -> dict:
    """Compress `files` logs of `lines` lines with this many model nodes (each with this
    many torch threads; None: torch's default); the texts, the seconds from the first memory
    row to the last, the rate, and each node's share."""
    with postgresql_database(server) as url:
        engine = create_engine(url)

        def count(query) -> int:
            with engine.connect() as conn:
                return conn.execute(query).scalar_one()

        web = Kbd(root / "web", model, extra=fleet_toml(url, "web-1", "ingest"))
        gpus = [Kbd(root / f"gpu{i}", model, extra=fleet_toml(url, f"gpu-{i}", "model"))
                for i in range(1, model_nodes + 1)]
        for gpu in gpus:
            gpu.env.pop("OMP_NUM_THREADS", None)
            gpu.env |= {"OMP_NUM_THREADS": str(threads)} if threads else {}
        make_logs(web.watched, files, lines=lines)
        try:
            web.start()
            wait_for(lambda: count(select(func.count()).select_from(documents)
                                   .where(documents.c.status == "ready")) == files,
                     timeout=300, what="the logs ingested")
            texts = count(select(func.count(func.distinct(passages.c.text_hash)))
                          .where(passages.c.live))
            for gpu in gpus:
                gpu.launch()
            wait_for(lambda: count(select(func.count()).select_from(memories)) >= texts,
                     timeout=1800, what="the backlog compressed")
            with engine.connect() as conn:
                first, last = conn.execute(select(func.min(memories.c.created_at),
                                                  func.max(memories.c.created_at))).one()
            shares = {}
            for gpu in gpus:
                gpu.stop()
                shares[gpu.home.parent.name] = sum(
                    int(line.rsplit("compressed ", 1)[1].split()[0])
                    for line in gpu.log_text().splitlines() if "kbd.memory: compressed" in line)
            web.stop()
        finally:
            for daemon in (web, *gpus):
                daemon.__exit__()
            engine.dispose()
    seconds = (last - first).total_seconds()
    return {"model_nodes": model_nodes, "threads_per_node": threads or "torch default",
            "texts": texts, "seconds": round(seconds, 2),
            "texts_per_s": round(texts / seconds, 1), "per_node": shares}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--lines", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbd-fleet-compress-") as tmp, \
            postgresql_server() as server:
        model = TinyModel.written(Path(tmp))
        runs = [compress_rate(server, model, Path(tmp) / f"run{n}-{threads}", n, args.files,
                              args.lines, threads)
                for threads in (1, None) for n in (1, 2)]
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "model": "tiny CLaRa checkpoint (tests/support/tiny.py), CPU, batch 16",
              "files": args.files, "lines": args.lines, "runs": runs,
              "speedup_2_nodes": {str(one["threads_per_node"]): round(
                  two["texts_per_s"] / one["texts_per_s"], 2)
                  for one, two in zip(runs[::2], runs[1::2], strict=True)}}
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    write_sections(FLEET, {"compression": result})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
