"""CPU benchmark of ingestion: files and passages per second, and the delay from a file's last
write to its passages being stored.

    python bench/ingest.py --out bench/results/ingest.json

Passages are cut with the tokenizer of a tiny test checkpoint built on the spot (no download);
a real Mistral tokenizer cuts about the same number of passages per line of log. The store is
SQLite in a temporary folder. The delay is measured through the real watcher (inotify) with its
debounce, which dominates it: a file is only read once it has been quiet for --quiet-s.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from kbd.ingest.pipeline import Ingester, IngestWorker
from kbd.model.tokens import PassageTokenizer
from kbd.store import Store, sqlite_url
from kbd.store import queries as q
from kbd.watch import WatchedFolder, Watcher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import write_base_model, write_checkpoint  # noqa: E402

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"


def open_store(folder: Path) -> Store:
    return Store.open(sqlite_url(folder / "kbd.sqlite3"), folder / "memory")


def passage_count(store: Store) -> int:
    with store.read() as conn:
        return q.counts(conn, None)["passages"]


def bench_files(tokenizer, files: list[Path], work: Path) -> dict:
    store = open_store(work)
    ingester = Ingester(store, tokenizer)
    start = time.perf_counter()
    outcomes = ingester.ingest_many((p, None, "auto") for p in files)
    seconds = time.perf_counter() - start
    passages = passage_count(store)
    store.close()
    return {"files": len(files), "seconds": seconds, "files_per_s": len(files) / seconds,
            "passages": passages, "passages_per_s": passages / seconds, "outcomes": outcomes}


def bench_delay(tokenizer, work: Path, count: int, quiet_s: float) -> dict:
    """Write files one by one into a watched folder; time last write -> stored."""
    folder = work / "watched"
    folder.mkdir(parents=True)
    store = open_store(work)
    written: dict[Path, float] = {}
    delays: list[float] = []
    done = threading.Event()

    def on_done(path: Path, outcome: str) -> None:
        if path in written and outcome == "added":
            delays.append(time.monotonic() - written[path])
            if len(delays) == count:
                done.set()

    folders = [WatchedFolder(folder)]
    worker = IngestWorker(Ingester(store, tokenizer), folders, on_done=on_done)
    watcher = Watcher(folders, worker.submit, quiet_s=quiet_s, on_rescan=worker.rescan)
    worker.start()
    watcher.start()
    for i in range(count):
        path = folder / f"app{i:04d}.log"
        with path.open("w") as f:
            for j in range(20):
                f.write(f"2026-11-23 10:00:{j:02d} app {i} request {j} served in {j * 3} ms\n")
        written[path] = time.monotonic()
        time.sleep(0.02)
    done.wait(timeout=120)
    watcher.stop()
    worker.stop()
    store.close()
    delays.sort()
    return {"files": count, "stored": len(delays), "quiet_s": quiet_s,
            "p50_s": statistics.median(delays),
            "p95_s": delays[int(0.95 * (len(delays) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.json"))
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--delay-files", type=int, default=200)
    parser.add_argument("--quiet-s", type=float, default=0.5)
    args = parser.parse_args()
    results: dict = {"setting": {"python": platform.python_version(),
                                 "machine": platform.machine(), "store": "sqlite"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = write_base_model(tmp / "base")
        tokenizer = PassageTokenizer.load(write_checkpoint(tmp / "ck", base))

        loghub = sorted(LOGHUB.glob("*.log"))
        copies = tmp / "loghub"
        copies.mkdir()
        files = [Path(shutil.copy(p, copies / p.name)) for p in loghub]
        results["loghub"] = bench_files(tokenizer, files, tmp / "w1")

        small = tmp / "small"
        small.mkdir()
        for i in range(args.small_files):
            (small / f"f{i:05d}.log").write_text(
                f"2026-11-23 10:00:00 host{i % 50} sshd[{i}]: session opened for user u{i}\n"
                f"2026-11-23 10:00:01 host{i % 50} sshd[{i}]: session closed\n")
        results["small_files"] = bench_files(tokenizer, sorted(small.iterdir()), tmp / "w2")
        results["write_to_stored"] = bench_delay(tokenizer, tmp / "w3", args.delay_files,
                                                 args.quiet_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
