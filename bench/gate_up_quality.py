"""How far the gate/up kernel (kbd/model/products.py) moves compression's memory, against float32.

The same-shape random 7B CLaRa of bench/clara_gpu.py compresses 64 passages of 250 tokens in
bf16 twice, SiLU(gate)·up in the gate/up product's kernel and after cuBLAS's product; then the
same weights, cast to float32, compress them through transformers' forward with the adapter
beside each projection (the straightforward path). For each bf16 result: the cosine of every
passage's memory to float32's, and for how many passages it is the closer of the two.

    python bench/gate_up_quality.py --out bench/results/gate_up_quality.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from kbd.model.testing import WORDS, random_7b_clara


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gate_up_quality.json"))
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(250)) for _ in range(64)]
    clara = random_7b_clara(args.layers)
    bf16 = {}
    for name, kernel in (("kernel", True), ("cublas_then_silu", False)):
        clara.encoder.gate_up_kernel = kernel
        bf16[name] = clara.compress(docs).float().flatten(1)
    clara.encoder = clara.decoder = None  # transformers' forward from here
    clara.model.float()
    exact = clara.compress(docs).float().flatten(1)
    cosine = {name: F.cosine_similarity(m, exact) for name, m in bf16.items()}
    results = {"gpu": torch.cuda.get_device_name(), "layers": args.layers, "passages": 64,
               "kernel_closer_for": int((cosine["kernel"] > cosine["cublas_then_silu"]).sum()),
               "kernel_vs_cublas_then_silu_median_cosine": F.cosine_similarity(
                   bf16["kernel"], bf16["cublas_then_silu"]).median().item()}
    for name, c in cosine.items():
        results[f"{name}_to_float32"] = {"min_cosine": c.min().item(),
                                         "median_cosine": c.median().item()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
