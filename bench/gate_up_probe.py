"""Probe: the encoder's gate/up product with SiLU(gate)·up in its epilogue, as a Triton
kernel (TMA loads, wgmma), against cuBLAS's product followed by the fused SiLU kernel that
torch.compile makes, at a 64-passage batch (17,216 rows). Alternated for a while, so both meet
the same heat and power cap. Prints TFLOP/s of each and the largest difference.

    python bench/gate_up_probe.py bench/results/gate_up_probe.json
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from profiling import back_to_back
from triton.tools.tensor_descriptor import TensorDescriptor

ROWS, HIDDEN, FFN = 64 * 269, 4096, 14336


@triton.jit
def gate_up_silu(a_desc, g_desc, u_desc, c_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, GROUP: tl.constexpr, SMS: tl.constexpr,
                 PERSISTENT: tl.constexpr, STAGES: tl.constexpr):
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    tiles = tiles_m * tiles_n
    steps = tl.cdiv(K, BK)
    first = tl.program_id(0)
    stride = SMS if PERSISTENT else tiles
    for tile in tl.range(first, tiles, stride, num_stages=1):
        group = tile // (GROUP * tiles_n)
        first_m = group * GROUP
        size = min(tiles_m - first_m, GROUP)
        pid_m = first_m + (tile % (GROUP * tiles_n)) % size
        pid_n = (tile % (GROUP * tiles_n)) // size
        om, on = pid_m * BM, pid_n * BN
        acc_g = tl.zeros([BM, BN], dtype=tl.float32)
        acc_u = tl.zeros([BM, BN], dtype=tl.float32)
        for s in tl.range(0, steps, num_stages=STAGES):
            ok = s * BK
            a = a_desc.load([om, ok])
            acc_g = tl.dot(a, g_desc.load([on, ok]).T, acc_g)
            acc_u = tl.dot(a, u_desc.load([on, ok]).T, acc_u)
        g = acc_g.to(tl.bfloat16).to(tl.float32)
        u = acc_u.to(tl.bfloat16).to(tl.float32)
        c_desc.store([om, on], (g * tl.sigmoid(g) * u).to(tl.bfloat16))


def fused(x, w, cfg):
    bm, bn, bk, group, persistent, stages, warps = cfg
    m, k = x.shape
    n = w.shape[0] // 2
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    a = TensorDescriptor.from_tensor(x, [bm, bk])
    g = TensorDescriptor.from_tensor(w[:n], [bn, bk])
    u = TensorDescriptor.from_tensor(w[n:], [bn, bk])
    c = TensorDescriptor.from_tensor(out, [bm, bn])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    grid = (min(sms, tiles) if persistent else tiles,)
    gate_up_silu[grid](a, g, u, c, m, n, k, BM=bm, BN=bn, BK=bk, GROUP=group, SMS=sms,
                       PERSISTENT=persistent, STAGES=stages, num_warps=warps)
    return out


@torch.compile
def silu_mul(y):
    gate, up = y.chunk(2, dim=-1)
    return F.silu(gate) * up


def reference(x, w):
    return silu_mul(F.linear(x, w))


def per_call_ms(fn, n=10) -> float:
    return back_to_back(fn, n) * 1000


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(ROWS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * FFN, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.02
    flops = 2 * ROWS * 2 * FFN * HIDDEN
    want = reference(x, w)
    out: dict = {"gpu": torch.cuda.get_device_name(), "rows": ROWS,
                 "config": "BM, BN (each of gate and up), BK, group, persistent, stages, warps",
                 "configs": {}}
    configs = [(128, 128, 64, 8, False, 3, 8), (128, 128, 64, 8, True, 3, 8),
               (128, 128, 64, 8, False, 4, 8), (128, 64, 64, 8, False, 4, 4),
               (128, 64, 64, 8, False, 4, 8), (64, 128, 64, 8, False, 4, 4),
               (128, 128, 32, 8, False, 5, 8)]
    usable = []
    for cfg in configs:
        key = str(cfg)
        try:
            got = fused(x, w, cfg)
            diff = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
            ms = per_call_ms(lambda c=cfg: fused(x, w, c))
        except Exception as e:  # a config this GPU or Triton cannot build
            out["configs"][key] = {"error": repr(e)[:300]}
            print(key, "error", repr(e)[:300], flush=True)
            continue
        out["configs"][key] = {"ms": ms, "tflops": flops / ms / 1e9, "max_diff_of_max": diff}
        print(key, round(ms, 3), "ms", round(flops / ms / 1e9), "TFLOP/s, diff", diff,
              flush=True)
        usable.append((ms, cfg))
    ms = per_call_ms(lambda: reference(x, w))
    out["cublas_then_silu"] = {"ms": ms, "tflops": flops / ms / 1e9}
    print("cublas + silu", round(ms, 3), "ms", round(flops / ms / 1e9), "TFLOP/s", flush=True)
    if usable:
        best = min(usable)[1]
        rounds = []
        for _ in range(8):  # alternated, ~2.5 s each, so both meet the same heat
            rounds.append({"cublas_then_silu_ms": per_call_ms(lambda: reference(x, w), 400),
                           "fused_ms": per_call_ms(lambda: fused(x, w, best), 400)})
            print(rounds[-1], flush=True)
        out["alternated"] = {"config": str(best), "rounds": rounds}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
