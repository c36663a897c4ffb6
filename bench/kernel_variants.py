"""Check: does a batch of a new shape make Triton compile a kernel while it waits?

Triton compiles a kernel for each pattern of its integer arguments' divisibility by 16. The
daemon compresses 64-passage batches whose rows differ in length from batch to batch; a kernel
compiled for a pattern the warm-up did not meet costs 1-2 s then (bench/NOTES.md). This loads
the same-shape random 7B CLaRa (2 layers: the kernels are the same), counts the compiled
variants of each of kbd's Triton kernels after the warm-up, compresses twelve 64-passage
batches of 150-250 words each, and counts again, with each call's time.

    python bench/kernel_variants.py bench/results/kernel_variants.json
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from kbd.model.kernels import gemv, merge, products

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import WORDS, random_7b_clara  # noqa: E402


def variants() -> dict[str, int]:
    kernels = {"products": products.kernel(), "row_scales": products.row_scale_kernel(),
               "merge": merge._add_product, "gemv": gemv.kernel()}
    return {name: sum(len(caches[0]) for caches in fn.device_caches.values())
            for name, fn in kernels.items()}


def main() -> None:
    rng = random.Random(0)
    clara = random_7b_clara(2)
    clara.warm_up()
    results: dict = {"gpu": torch.cuda.get_device_name(), "after_warm_up": variants(),
                     "calls": []}
    for _ in range(12):
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(150, 250)))
                for _ in range(64)]
        start = time.perf_counter()
        clara.compress(docs)
        torch.cuda.synchronize()
        results["calls"].append({"s": time.perf_counter() - start, "variants": variants()})
        print(results["calls"][-1], flush=True)
    results["after_batches"] = variants()
    print(json.dumps({k: v for k, v in results.items() if k != "calls"}))
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
