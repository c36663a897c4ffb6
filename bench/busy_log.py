"""CPU: write -> searchable for a busy log through the real daemon (tiny CLaRa checkpoint): a
line every 0.1 s for --seconds, each in two halves, so the file never goes quiet for
debounce_s (2 s) and is read every ingest.max_wait_s while it grows. Writes p50 / p95 / max
per max_wait_s to bench/results/busy_log.json.

    PYTHONPATH=. python3 bench/busy_log.py                     # about a minute on 2 cores

The scenario is the fault suite's own (tests/faults/test_busy_log.py), run longer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # harness.py and the faults package

from faults.test_busy_log import busy_log  # noqa: E402
from support.harness import TinyModel  # noqa: E402
from support.tiny import write_base_model, write_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-wait-s", type=float, nargs="+", default=[5.0, 2.0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/busy_log.json")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="kbd-bench-busy-") as folder:
        base = write_base_model(Path(folder) / "base")
        model = TinyModel(write_checkpoint(Path(folder) / "checkpoint", base), base)
        for max_wait_s in args.max_wait_s:
            work = Path(folder) / f"max_wait_{max_wait_s:g}"
            work.mkdir()
            out = busy_log(work, model, seconds=args.seconds, max_wait_s=max_wait_s)
            runs[f"max_wait_s={max_wait_s:g}"] = out.as_json()
            print(f"max_wait_s {max_wait_s:g}: {json.dumps(out.as_json())}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setting": {"machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "model": "tiny CLaRa, CPU",
                    "seconds": args.seconds, "command": " ".join(["python3", *sys.argv])},
        "runs": runs}, indent=2) + "\n")
    return int(any(r["failures"] or r["data_lost"] for r in runs.values()))


if __name__ == "__main__":
    sys.exit(main())
