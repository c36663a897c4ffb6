"""CPU: ask latency through the database hop (an ingest node's `kbd ask`, answered by a model
node through PostgreSQL: docs/fleet.md "Routed asks") against the same ask made locally on
the model node. Real daemons on a throwaway PostgreSQL server, the tiny CLaRa checkpoint on
the CPU; writes p50 / p95 / mean per path to bench/results/fleet_ask.json, and the same as the
`ask_latency` section of bench/results/fleet.json (whose other sections it keeps).

    PYTHONPATH=. python3 bench/fleet_ask.py                     # about two minutes on 2 cores

Each question of the set is asked --rounds times on each path, the two paths alternating, over
the daemon's socket API as `kbd ask` sends it (the CLI's own start-up is not timed): whole
answers (POST /ask) and, streamed, the time to the first text piece. Beside them, the hop's
database steps alone, in one process (db_steps): what the hop costs PostgreSQL, apart from
the processes and threads it wakes on the way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the daemon harness

from fleet import write_sections  # noqa: E402
from support.harness import (  # noqa: E402
    Kbd,
    TinyModel,
    fleet_toml,
    make_logs,
    postgresql_database,
    postgresql_server,
)

from kbd.store import Store  # noqa: E402
from kbd.store import asks as ak  # noqa: E402
from kbd.store import fleet as fl  # noqa: E402

QUESTIONS = [
    "which request failed with timeout ?", "which worker failed ?", "what happened at 10:05 ?",
    "did service 3 fail ?", "which requests were ok ?", "what failed on worker 2 ?",
    "how many requests timed out ?", "which service had a timeout at 10:15 ?",
    "was request 20 ok ?", "what did worker 6 do ?",
]


def timed_ask(node: Kbd, question: str, max_new_tokens: int) -> float:
    began = time.perf_counter()
    reply = node.client.request("POST", "/ask", {"question": question,
                                                 "max_new_tokens": max_new_tokens})
    assert reply["status"] == "answered", reply
    return time.perf_counter() - began


def first_piece(node: Kbd, question: str, max_new_tokens: int) -> float:
    """Seconds to the first streamed text piece (the rest of the stream is read, untimed)."""
    began, first = time.perf_counter(), None
    for event in node.client.stream("/ask", {"question": question, "stream": True,
                                             "max_new_tokens": max_new_tokens}):
        assert "error" not in event, event
        if first is None:
            first = time.perf_counter() - began
    return first


def summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
            "mean_ms": round(statistics.fmean(ms), 1), "max_ms": round(ms[-1], 1)}


def measure(ingest: Kbd, model: Kbd, rounds: int, max_new_tokens: int) -> dict:
    paths = {"local (model node)": model, "routed (ingest -> model node)": ingest}
    whole = {name: [] for name in paths}
    streamed = {name: [] for name in paths}
    for node in paths.values():  # warm up: first asks load caches on both sides
        for question in QUESTIONS[:2]:
            timed_ask(node, question, max_new_tokens)
    for _ in range(rounds):
        for question in QUESTIONS:
            for name, node in paths.items():
                whole[name].append(timed_ask(node, question, max_new_tokens))
                streamed[name].append(first_piece(node, question, max_new_tokens))
    out = {"whole_answer": {n: summary(s) for n, s in whole.items()},
           "first_piece_streamed": {n: summary(s) for n, s in streamed.items()}}
    local, routed = paths
    out["hop_p50_ms"] = {kind: round(out[kind][routed]["p50_ms"] - out[kind][local]["p50_ms"], 1)
                         for kind in ("whole_answer", "first_piece_streamed")}
    return out


def db_steps(url: str, memory_dir: Path, n: int = 50) -> dict:
    """Median ms of each database step of one routed ask, on a store of its own: the asker's
    insert (with its check for a live model node), the model node's claim, its answer chunk,
    the asker's read and its delete, their sum, and the time from the insert's start to a
    LISTENing connection woken by its NOTIFY (within the insert's time)."""
    store = Store.open(url, memory_dir, node="gpu-1")
    life = store.write(lambda conn: fl.upsert_node(
        conn, "gpu-1", role="model", version="bench", schema_revision="bench", pid=1,
        heartbeat_s=3.0))
    listener = ak.Listener(store, ak.ASKS_CHANNEL)
    listener.wait(0.01)  # connected and listening
    rounds = []
    try:
        for _ in range(n):
            rounds.append(route_once(store, listener, life))
    finally:
        listener.close()
        store.close()
    medians = {k: round(statistics.median(r[k] for r in rounds) * 1000, 2) for k in rounds[0]}
    steps = ("insert", "claim", "chunk", "read", "delete")
    return medians | {"total": round(sum(medians[k] for k in steps), 2)}


def route_once(store: Store, listener: ak.Listener, life) -> dict[str, float]:
    """One ask through the store's steps, each timed (seconds)."""
    took: dict[str, float] = {}

    @contextmanager
    def step(name: str):
        began = time.perf_counter()
        yield
        took[name] = time.perf_counter() - began

    def insert(conn) -> int:
        assert ak.live_model_nodes(conn)
        return ak.insert_ask(conn, "web-1", "which disk ?", {})
    woken: list[float] = []
    waiter = threading.Thread(target=lambda: (listener.wait(5.0),
                                              woken.append(time.perf_counter())))
    waiter.start()
    time.sleep(0.01)  # the waiter is in wait()
    began = time.perf_counter()
    with step("insert"):
        ask_id = store.write(insert)
    waiter.join()
    # NOTIFY is sent at commit: the listener wakes before the insert's write() returns
    took["insert_to_listener_woken"] = woken[0] - began
    with step("claim"):
        claimed = store.write(lambda conn: ak.claim_ask(conn, "gpu-1", life))
    with step("chunk"):
        store.write(lambda conn: ak.add_chunk(conn, claimed, 0, "done", "{}"))
    with step("read"), store.read() as conn:
        ak.chunks_after(conn, ask_id, 0)
    with step("delete"):
        store.write(lambda conn: ak.delete_ask(conn, ask_id))
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=20, help="logs on the ingest node")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/fleet_ask.json")
    parser.add_argument("--fleet", type=Path, default=ROOT / "bench/results/fleet.json",
                        help="the fleet figures, whose ask_latency section this writes")
    args = parser.parse_args()
    with (tempfile.TemporaryDirectory(prefix="kbd-bench-fleet-ask-") as folder,
          postgresql_server() as server, postgresql_database(server) as url):
        tmp = Path(folder)
        with postgresql_database(server) as steps_url:
            steps = db_steps(steps_url, tmp / "steps")
        model = TinyModel.written(tmp)
        with (Kbd(tmp / "web", model, extra=fleet_toml(url, "web-1", "ingest")) as ingest,
              Kbd(tmp / "gpu", model, extra=fleet_toml(url, "gpu-1", "model")) as gpu):
            make_logs(ingest.watched, args.files)
            ingest.start()
            gpu.start()
            gpu.settled(args.files, timeout=300)
            load_before = os.getloadavg()[0]
            results = measure(ingest, gpu, args.rounds, args.max_new_tokens)
            load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            ingest.stop()
            gpu.stop()
    results["db_steps_p50_ms"] = steps
    print(json.dumps(results, indent=1))
    record = {
        "setting": {"machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_1min_before_after": load,  # other work on the same cores
                    "store": "PostgreSQL 15 on a Unix socket, same host",
                    "model": "tiny CLaRa, CPU", "files": args.files, "rounds": args.rounds,
                    "questions": len(QUESTIONS), "max_new_tokens": args.max_new_tokens,
                    "command": " ".join(["python3", *sys.argv])},
        "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    write_sections(args.fleet, {"ask_latency": record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
