"""Probe: the decode step's row-times-matrix products (one question, bf16) through cuBLAS and
through kbd/model/kernels/gemv.py's kernel at several tile shapes,
each over eight weights in turn (as
eight layers: nothing stays in L2), timed as CUDA graph replays. Prints and writes GB/s of
weight read per shape and the best tile shape for each.

    python bench/gemv_probe.py bench/results/gemv_probe.json
"""

from __future__ import annotations

import itertools
import json
import sys

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench_cudagraph

from kbd.model.kernels import gemv

# (name, output rows, inputs, gated, residual) of a Mistral-7B layer and its lm_head
SHAPES = [("qkv", 6144, 4096, False, False), ("o", 4096, 4096, False, True),
          ("gate_up", 14336, 4096, True, False), ("down", 4096, 14336, False, True),
          ("lm_head", 32000, 4096, False, False)]
COPIES = 8
CONFIGS = [c for c in itertools.product((1, 2, 4), (512, 1024, 2048), (4, 8), (2, 3, 4))
           if c[0] * c[1] <= 4096]


def launch(x, w, res, y, rows, k, gated, config):
    per_program, columns, warps, stages = config
    gemv.kernel()[(triton.cdiv(rows, per_program),)](
        x, w, y if res is None else res, y, rows, k, GATED=gated, RESIDUAL=res is not None,
        ROWS=per_program, COLUMNS=columns, num_warps=warps, num_stages=stages)


def probe(rows: int, k: int, gated: bool, residual: bool) -> dict:
    dev, dt = "cuda", torch.bfloat16
    weights = [torch.randn((2 if gated else 1) * rows, k, device=dev, dtype=dt) * 0.02
               for _ in range(COPIES)]
    x = torch.randn(1, k, device=dev, dtype=dt)
    res = torch.randn(1, rows, device=dev, dtype=dt) if residual else None
    nbytes = weights[0].numel() * 2
    reference = gemv._torch(x, weights[0], res, gated)

    def cublas():
        for w in weights:
            y = F.linear(x, w)
            if gated:
                g, u = y.chunk(2, dim=-1)
                y = F.silu(g) * u
            if res is not None:
                y = res + y

    ms = do_bench_cudagraph(cublas, rep=25) / COPIES
    entry = {"cublas_gbps": nbytes / ms / 1e6, "cublas_us": ms * 1000, "kernel": {}}
    y = torch.empty(1, rows, device=dev, dtype=dt)
    for config in CONFIGS:
        launch(x, weights[0], res, y, rows, k, gated, config)
        error = (y.float() - reference.float()).abs().max().item()
        ms = do_bench_cudagraph(
            lambda c=config: [launch(x, w, res, y, rows, k, gated, c) for w in weights],
            rep=25) / COPIES
        entry["kernel"]["x".join(map(str, config))] = {"gbps": nbytes / ms / 1e6,
                                                       "us": ms * 1000, "max_error": error}
    entry["best"] = max(entry["kernel"], key=lambda c: entry["kernel"][c]["gbps"])
    return entry


def main() -> None:
    out: dict = {"gpu": torch.cuda.get_device_name(), "config": "rows x columns x warps x stages",
                 "shapes": {}}
    for name, rows, k, gated, residual in SHAPES:
        entry = probe(rows, k, gated, residual)
        best = entry["kernel"][entry["best"]]
        print(name, "cublas", round(entry["cublas_gbps"]), "GB/s", round(entry["cublas_us"], 1),
              "us; best", entry["best"], round(best["gbps"]), "GB/s", round(best["us"], 1),
              "us, error", best["max_error"], flush=True)
        out["shapes"][name] = entry
    src = torch.empty(2 * 1024**3, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = do_bench_cudagraph(lambda: dst.copy_(src), rep=25)
    out["copy_read_plus_write_gbps"] = 2 * src.numel() / ms / 1e6
    print("copy", round(out["copy_read_plus_write_gbps"]), "GB/s read+write", flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
