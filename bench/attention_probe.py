"""Probe: the encoder's attention at a 64-passage batch of 269-token rows (the 7B shape: 32
heads, 8 kv heads, head size 128), from the fused q/k/v product's output to the input of the
output projection. torch's way, compiled as the encoder compiles its layer (one kernel rotating
q and k into cuDNN's layout, cuDNN's attention, the layout back), against kbd's kernel
(kbd/model/attention.py) under several tilings. Prints milliseconds a call and the largest
difference from torch's result.

    python bench/attention_probe.py bench/results/attention_probe.json
"""

from __future__ import annotations

import json
import sys

import torch
import triton
from profiling import back_to_back

from kbd.model import attention
from kbd.model.decode import compiled

B, T, HEADS, KV_HEADS, HD = 64, 269, 32, 8, 128
# (queries, keys, warps, stages)
CONFIGS = [(128, 64, 8, 2), (128, 64, 4, 2), (128, 128, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3),
           (64, 128, 4, 2), (128, 32, 4, 2), (64, 32, 4, 2)]


def main() -> None:
    torch.manual_seed(0)
    qkv = torch.randn(B, T, (HEADS + 2 * KV_HEADS) * HD, device="cuda", dtype=torch.bfloat16)
    inv = 1.0 / (1e6 ** (torch.arange(0, HD, 2, device="cuda").float() / HD))
    angles = torch.arange(T, device="cuda").float()[:, None] * inv[None]
    emb = torch.cat([angles, angles], -1)[None]
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    scale = HD ** -0.5
    torch_way = compiled(attention.reference)
    want = torch_way(qkv, cos, sin, HEADS, KV_HEADS, scale)
    results: dict = {"gpu": torch.cuda.get_device_name(), "shape": [B, T, HEADS, KV_HEADS, HD]}
    ms = back_to_back(lambda: torch_way(qkv, cos, sin, HEADS, KV_HEADS, scale), 50) * 1000
    results["torch_ms"] = ms
    print("torch (compiled rotary + cuDNN)", round(ms, 4), "ms", flush=True)
    out = torch.empty_like(want)
    best = None
    for queries, keys, warps, stages in CONFIGS:
        name = f"q{queries}_k{keys}_w{warps}_s{stages}"

        def launch(q=queries, k=keys, w=warps, s=stages):
            attention._causal[(triton.cdiv(T, q), HEADS, B)](
                qkv, cos, sin, out, T, 0, scale * 1.4426950408889634, HEADS=HEADS,
                KV_HEADS=KV_HEADS, HALF=HD // 2, QUERIES=q, KEYS=k, num_warps=w, num_stages=s)
        try:
            launch()
            torch.cuda.synchronize()
            diff = (out.float() - want.float()).abs().max().item()
            ms = back_to_back(launch, 50) * 1000
        except Exception as e:  # a tiling this GPU or Triton cannot build
            results[name] = {"error": repr(e)[:300]}
            print(name, "error", repr(e)[:300], flush=True)
            continue
        results[name] = {"ms": ms, "max_abs_diff": diff}
        print(name, round(ms, 4), "ms, max diff", diff, flush=True)
        if best is None or ms < best[0]:
            best = (ms, name, launch)
    rounds = []
    for _ in range(5):  # alternated, so both meet the same heat
        rounds.append({"torch_ms": back_to_back(
            lambda: torch_way(qkv, cos, sin, HEADS, KV_HEADS, scale), 200) * 1000,
            best[1] + "_ms": back_to_back(best[2], 200) * 1000})
        print(rounds[-1], flush=True)
    results["alternated"] = rounds
    # the kernel's own operator, as the encoder calls it
    got = attention.causal_attention(qkv, cos, sin, HEADS, KV_HEADS, scale)
    results["operator_max_abs_diff"] = (got.float() - want.float()).abs().max().item()
    results["operator_failed"] = attention.failed
    print("operator", results["operator_max_abs_diff"], attention.failed, flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
