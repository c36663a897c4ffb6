"""GPU: ranking once the index no longer fits on the GPU.

MemoryIndex keeps blocks of 4-bit codes in host memory once the GPU has less than
HEADROOM_BYTES free beside them, page-locked, and streams them in for each question. This
builds the same 100,000 random rows (Mistral-7B's memory shape) through refresh() with every
block on the GPU, then in host memory (the headroom set past the GPU's size), then the host
blocks copied to pageable memory to compare; it times one question's top-5 over each and
checks that all three rank alike.

    PYTHONPATH=. python3 bench/index_spill.py --out bench/results/index_spill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from clara_gpu import GIB, random_rows

from kbd.model import index as index_module
from kbd.model.index import MemoryIndex


def timed(fn, repeat: int) -> float:
    """Median wall seconds of fn() after one warm-up call, the GPU waited for."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/index_spill.json"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    shape = (16, 4096)
    rows = random_rows(args.rows, shape)
    query = torch.randn(1, shape[0] * shape[1], device="cuda", dtype=torch.bfloat16)
    results: dict = {"gpu": torch.cuda.get_device_name(), "rows": args.rows}
    picks = {}
    for where in ("gpu", "host", "host_pageable"):
        if where != "gpu":
            index_module.HEADROOM_BYTES = torch.cuda.get_device_properties(0).total_memory
        index = MemoryIndex(rows, "cuda")
        index.refresh()
        if where == "host_pageable":
            index.codes = [c.clone() for c in index.codes]  # a copy is not page-locked
        devices = {c.device.type for c in index.codes}
        picks[where] = index.search(query, 5)[0][0].tolist()
        results[where] = {"blocks_on": sorted(devices),
                          "pinned": all(c.is_pinned() for c in index.codes),
                          "codes_gib": sum(c.numel() for c in index.codes) / GIB,
                          "rank_s": timed(lambda i=index: i.search(query, 5), args.repeat)}
        print(where, results[where], flush=True)
        del index
    results["same_top5"] = picks["gpu"] == picks["host"] == picks["host_pageable"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
