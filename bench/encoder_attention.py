"""Probe: the attention block and the gated MLP of kbd's encoder, on one 7B-shaped layer at
a 64 x 269-token batch, in several formulations, compiled as kbd compiles them."""

from __future__ import annotations

import json
import sys

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

fx_config.use_duck_shape = False
H, KV, HD, D, FFN = 32, 8, 128, 4096, 14336
dev = "cuda"


def rot_bhtd(x, cos, sin):  # x [b, h, t, hd], cos [1, t, hd]
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat((-x[..., half:], x[..., :half]), -1) * sin[:, None]


def rot_bthd(x, cos, sin):  # x [b, t, h, hd]
    half = x.shape[-1] // 2
    return x * cos[:, :, None] + torch.cat((-x[..., half:], x[..., :half]), -1) * sin[:, :, None]


def v1(x, w, cos, sin):
    b, t, _ = x.shape
    q, k, v = F.linear(x, w).split([H * HD, KV * HD, KV * HD], -1)
    q = rot_bhtd(q.view(b, t, -1, HD).transpose(1, 2), cos, sin)
    k = rot_bhtd(k.view(b, t, -1, HD).transpose(1, 2), cos, sin)
    v = v.view(b, t, -1, HD).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return o.transpose(1, 2).reshape(b, t, -1)


def v2(x, w, cos, sin, gqa=True):
    b, t, _ = x.shape
    q, k, v = F.linear(x, w).split([H * HD, KV * HD, KV * HD], -1)
    q = rot_bthd(q.view(b, t, -1, HD), cos, sin).transpose(1, 2)
    k = rot_bthd(k.view(b, t, -1, HD), cos, sin).transpose(1, 2)
    v = v.view(b, t, -1, HD).transpose(1, 2)
    if not gqa:
        k = k.repeat_interleave(H // KV, 1)
        v = v.repeat_interleave(H // KV, 1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return o.transpose(1, 2).reshape(b, t, -1)


def v3(x, w, cos, sin):
    return v2(x, w, cos, sin, gqa=False)


def v4(x, w, cos, sin):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return v2(x, w, cos, sin)


def v5(x, w, cos, sin):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return v3(x, w, cos, sin)


def v6(x, w, cos, sin):
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        return v3(x, w, cos, sin)


def mlp_fused(x, w_gu, w_down):
    gate, up = F.linear(x, w_gu).chunk(2, -1)
    return F.linear(F.silu(gate) * up, w_down)


def timed(fn, *args, n=10):
    for _ in range(2):
        fn(*args)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def inputs(b, t):
    x = torch.randn(b, t, D, device=dev, dtype=torch.bfloat16)
    pos = torch.arange(t, device=dev, dtype=torch.float32)
    freq = 1.0 / (10000 ** (torch.arange(0, HD, 2, device=dev).float() / HD))
    ang = torch.cat([pos[:, None] * freq] * 2, -1)[None]
    return x, ang.cos().bfloat16(), ang.sin().bfloat16()


def main():
    torch.manual_seed(0)
    w = torch.randn(H * HD + 2 * KV * HD, D, device=dev, dtype=torch.bfloat16) * 0.02
    w_gu = torch.randn(2 * FFN, D, device=dev, dtype=torch.bfloat16) * 0.02
    w_down = torch.randn(D, FFN, device=dev, dtype=torch.bfloat16) * 0.02
    out = {}
    with torch.inference_mode():
        x, cos, sin = inputs(64, 269)
        xs, coss, sins = inputs(48, 250)
        out["qkv_gemm_only_ms"] = timed(lambda: F.linear(x, w))
        for name, fn in (("v1", v1), ("v2", v2), ("v3", v3), ("v4", v4), ("v5", v5), ("v6", v6)):
            for mode in ("eager", True, None):
                key = f"attn_{name}_{'eager' if mode == 'eager' else 'dyn' if mode else 'auto'}"
                try:
                    f = fn if mode == "eager" else torch.compile(fn, dynamic=mode)
                    f(xs, w, coss, sins)  # another shape first, as kbd meets them
                    out[key] = timed(f, x, w, cos, sin)
                except Exception as e:  # noqa: BLE001 - a formulation that fails is a finding
                    out[key] = repr(e)[:200]
                print(key, out[key], flush=True)
        out["mlp_gemms_only_ms"] = timed(lambda: (F.linear(x, w_gu), F.linear(
            torch.empty(64, 269, FFN, device=dev, dtype=torch.bfloat16), w_down)))
        for mode in ("eager", True, None):
            f = mlp_fused if mode == "eager" else torch.compile(mlp_fused, dynamic=mode)
            f(xs, w_gu, w_down)
            key = f"mlp_{'eager' if mode == 'eager' else 'dyn' if mode else 'auto'}"
            out[key] = timed(f, x, w_gu, w_down)
            print(key, out[key], flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
