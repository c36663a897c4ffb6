"""GPU: how long the daemon takes to be ready, and a file's last write to searchable passages.

Writes a same-shape random Mistral-7B base and CLaRa checkpoint to disk, starts `kbd daemon`
on them as a subprocess with one watched log folder, and times:
  start_to_ready_s     process start -> /status says the model is ready (weights read from
                       disk, layers compiled, decode step recorded)
  write_to_searchable  for --files log files written one after another, the last write ->
                       /status shows the new passages stored and none waiting for compression
                       (so the next question ranks them); p50 / p95, debounce 0.5 s included
  ask_s                one `kbd ask` over the socket afterwards, end to end
  bulk                 one large log (--bulk-lines lines): its write -> all its passages
                       stored and compressed, as passages a second (cutting, compressing and
                       storing together, the daemon's own ingest rate)

    python bench/daemon_gpu.py --out bench/results/daemon_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kbd.api.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import (  # noqa: E402
    WORDS,
    make_tokenizer,
    mistral_config,
    random_base,
    write_checkpoint,
)


def write_model(folder: Path) -> tuple[Path, Path]:
    """A random same-shape Mistral-7B base folder and its CLaRa checkpoint, bf16."""
    config = mistral_config(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336,
                            vocab_size=32000)
    base = random_base(config, dtype=torch.bfloat16, device="cuda")
    base.save_pretrained(folder / "base")
    make_tokenizer(32000).save_pretrained(folder / "base")
    checkpoint = write_checkpoint(folder / "ck", base, lora_r=16, tokenizer=make_tokenizer(32000),
                                  dtype=torch.bfloat16)
    del base
    torch.cuda.empty_cache()
    return checkpoint, folder / "base"


def wait(client: Client, daemon: subprocess.Popen, done, timeout_s: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode}")
        try:
            status = client.request("GET", "/status")
            if done(status):
                return status
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.02)
    raise TimeoutError("the daemon did not get there in time")


def log_lines(rng: random.Random, n: int, file_no: int) -> str:
    return "".join(
        f"2026-11-24 10:{file_no % 60:02d}:{i % 60:02d} INFO node {rng.randint(1, 40)} "
        + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + "\n"
        for i in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/daemon_gpu.json"))
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--bulk-lines", type=int, default=24000)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint, base = write_model(work)
        watched = work / "logs"
        watched.mkdir()
        config = work / "config.toml"
        config.write_text(
            f'home = "{work / "home"}"\n[model]\ncheckpoint = "{checkpoint}"\nbase = "{base}"\n'
            f'[ingest]\ndebounce_s = 0.5\n[server]\nsocket = "{work / "kbd.sock"}"\n'
            f'[scheduler]\ndigest_cron = ""\n[[folders]]\npath = "{watched}"\nkind = "log"\n')
        client = Client(work / "kbd.sock")
        start = time.monotonic()
        daemon = subprocess.Popen([sys.executable, "-m", "kbd", "--config", str(config),
                                   "daemon"], env=os.environ | {"PYTHONUNBUFFERED": "1"})
        try:
            status = wait(client, daemon, lambda s: s["model"] == "ready")
            results: dict = {"gpu": torch.cuda.get_device_name(),
                             "start_to_ready_s": time.monotonic() - start}
            latencies = []
            for i in range(args.files):
                before = status["passages"]
                path = watched / f"app-{i}.log"
                path.write_text(log_lines(rng, 60, i))
                written = time.monotonic()
                status = wait(client, daemon, lambda s, b=before: s["passages"] > b
                              and s["backlog"] == 0)
                latencies.append(time.monotonic() - written)
            latencies.sort()
            results["write_to_searchable"] = {
                "files": len(latencies), "debounce_s": 0.5,
                "p50_s": statistics.median(latencies),
                "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
                "passages": status["passages"]}
            asked = time.monotonic()
            answer = client.request("POST", "/ask", {"question": "which node failed ?"})
            results["ask_s"] = time.monotonic() - asked
            results["ask_sources"] = len(answer["sources"])
            before = status["passages"]
            (watched / "bulk.log").write_text(log_lines(rng, args.bulk_lines, 99))
            written = time.monotonic()
            status = wait(client, daemon, lambda s, b=before: s["passages"] > b
                          and s["backlog"] == 0)
            took = time.monotonic() - written
            added = status["passages"] - before
            results["bulk"] = {"lines": args.bulk_lines, "passages": added, "s": took,
                               "passages_per_s": added / took}
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
