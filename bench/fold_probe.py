"""Probe: what folding the norms into compression's products (kbd/model/encode.py) costs, per
layer of a 64-passage batch (64 x 269 rows, Mistral-7B's shape): each row's 1/RMS by torch's
compiled reduction or by kbd's Triton kernel
(kbd/model/kernels/products.py) at several cuts, against
the norm it replaces (which writes the normed stream too); and the merge kernel
(kbd/model/kernels/merge.py) with the norm's weight scaling the columns or without. Timed cool, then
alternated at the power cap.

    python bench/fold_probe.py bench/results/fold_probe.json
"""

from __future__ import annotations

import functools
import json
import sys

import torch
from profiling import back_to_back

from kbd.model.decode import compiled
from kbd.model.kernels import merge, products

ROWS, HIDDEN, QKV, FFN, RANK, EPS = 64 * 269, 4096, 6144, 14336, 16, 1e-5


def norm(h, weight):
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    return weight * x.to(h.dtype)


def row_scale(h):
    return torch.rsqrt(h.float().pow(2).mean(-1) + EPS)


def main() -> None:
    torch.manual_seed(0)
    h = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16) * 3
    g = (1 + 0.1 * torch.randn(HIDDEN, device="cuda")).bfloat16()
    want = row_scale(h)
    results: dict = {"gpu": torch.cuda.get_device_name(), "rows": ROWS, "cool_ms": {},
                     "max_rel_diff": {}}
    fns = {"norm_compiled": functools.partial(compiled(norm), h, g),
           "row_scale_compiled": functools.partial(compiled(row_scale), h)}
    got = torch.empty_like(want)
    for cut in ((1, 4096, 8), (2, 2048, 8), (4, 1024, 8), (8, 512, 8), (4, 1024, 4),
                (16, 256, 4)):
        name = "row_scale_kernel_{}x{}_w{}".format(*cut)
        products.launch_row_scales(h, got, EPS, *cut)
        results["max_rel_diff"][name] = ((got - want).abs() / want).max().item()
        fns[name] = functools.partial(products.launch_row_scales, h, got, EPS, *cut)
    for name, (out_rows) in (("qkv", QKV), ("gate_up", 2 * FFN)):
        w = torch.randn(out_rows, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.02
        b = torch.randn(out_rows, RANK, device="cuda", dtype=torch.bfloat16) * 0.02
        a = torch.randn(RANK, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.02
        fns[f"merge_{name}"] = functools.partial(merge.add_product, w, b, a, 2.0)
        fns[f"merge_{name}_scaled"] = functools.partial(merge.add_product, w, b, a, 2.0, g)
    for name, fn in fns.items():
        ms = back_to_back(fn, 50) * 1000
        results["cool_ms"][name] = ms
        print(name, round(ms, 4), "ms", flush=True)
    rounds = []
    for _ in range(3):  # at the cap: the products heat the GPU between rounds
        heat = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16)
        back_to_back(lambda x=heat: x @ x[:HIDDEN].T, 400)
        rounds.append({name: back_to_back(fn, 200) * 1000 for name, fn in fns.items()})
        print({k: round(v, 4) for k, v in rounds[-1].items()}, flush=True)
    results["after_heat_ms"] = rounds
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
