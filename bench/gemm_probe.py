"""Probe: the encoder's four matrix products at a 64-passage batch (17,216 rows), as cuBLAS
runs them by default and through cuBLASLt, one after another and then back to back for a
while, to see whether the rate holds under sustained load (power and clocks: run beside
nvidia-smi's log)."""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from profiling import back_to_back

ROWS = 64 * 269
SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def rate(fn, flops: float, n: int = 20) -> float:
    return flops / back_to_back(fn, n) / 1e12


def main() -> None:
    dev, dt = "cuda", torch.bfloat16
    weights = {k: torch.randn(*s, device=dev, dtype=dt) * 0.02 for k, s in SHAPES.items()}
    inputs = {k: torch.randn(ROWS, s[1], device=dev, dtype=dt) for k, s in SHAPES.items()}
    out: dict = {}
    for library in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(library)
        for k, (n, kk) in SHAPES.items():
            out[f"{library}_{k}_tflops"] = rate(lambda k=k: F.linear(inputs[k], weights[k]),
                                                2 * ROWS * n * kk)
        print(library, {k: round(v) for k, v in out.items() if k.startswith(library)}, flush=True)
    torch.backends.cuda.preferred_blas_library("cublas")
    layer = sum(2 * ROWS * n * kk for n, kk in SHAPES.values())
    every = []
    for _ in range(30):  # ~30 s of a layer's products back to back
        every.append(rate(lambda: [F.linear(inputs[k], weights[k]) for k in SHAPES], layer, 40))
    out["sustained_tflops_per_second"] = every
    print(json.dumps(out), flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
