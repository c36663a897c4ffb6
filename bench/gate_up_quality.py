"""How far the products' kernel (kbd/model/kernels/products.py) moves compression's memory, against
float32.

The same-shape random 7B CLaRa of bench/clara_gpu.py compresses 64 passages of 250 tokens in
bf16 three ways: kbd's (q/k/v and gate/up by the kernel, the norms folded into them), the
kernel without the fold, and cuBLAS's products with torch's rotary and SiLU kernels after
them. Then the same weights, cast to float32, compress them through transformers' forward
with the adapter beside each projection (the straightforward path). For each bf16 result:
the cosine of every passage's memory to float32's, and for how many passages it is closer
than cuBLAS's. (The random model's norm weights are ones, so the fold moves only rounding.)

    python bench/gate_up_quality.py --out bench/results/gate_up_quality.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import WORDS, random_7b_clara  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gate_up_quality.json"))
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(250)) for _ in range(64)]
    clara = random_7b_clara(args.layers)
    bf16 = {}
    switches = ("gate_up_kernel", "qkv_kernel", "fold_norms")
    for name, on in (("kbd", (True, True, True)), ("kernel_unfolded", (True, True, False)),
                     ("cublas", (False, False, False))):
        for switch, value in zip(switches, on, strict=True):
            setattr(clara.encoder, switch, value)
        bf16[name] = clara.compress(docs).float().flatten(1)
    clara.encoder = clara.decoder = None  # transformers' forward from here
    clara.model.float()
    exact = clara.compress(docs).float().flatten(1)
    cosine = {name: F.cosine_similarity(m, exact) for name, m in bf16.items()}
    results = {"gpu": torch.cuda.get_device_name(), "layers": args.layers, "passages": 64}
    for name, c in cosine.items():
        results[f"{name}_to_float32"] = {"min_cosine": c.min().item(),
                                         "median_cosine": c.median().item()}
        if name != "cublas":
            results[f"{name}_closer_than_cublas_for"] = int((c > cosine["cublas"]).sum())
            results[f"{name}_vs_cublas_median_cosine"] = F.cosine_similarity(
                bf16[name], bf16["cublas"]).median().item()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
