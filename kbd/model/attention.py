"""Causal self-attention of the encoder, rotary embedding included, read straight from the
fused q/k/v product.

Compression runs attention over ~270-token rows. Through torch that is two kernels and a
layout change: one rotates q and k and copies q, k and v into the [b, heads, t, hd] layout
cuDNN's attention reads (15 ms of a 256-passage call on an H100), then cuDNN's kernel, whose
tiles fit such short rows poorly (38 ms). Here one Triton kernel reads q, k and v where the
q/k/v product wrote them, [b, t, (heads + 2 kv heads) · hd], rotates them as it loads them,
and writes the output as the next product reads it, [b, t, heads · hd]. Each program takes a
block of one head's rows, and the keys up to its last row (causal: padding on the right is
never seen by a real token). Where Triton cannot run, or the head size does not suit its
tiles, torch does the same (reference()).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kbd.model.decode import rotate
from kbd.model.kernels import launched, tl, triton, usable

QUERIES, KEYS, WARPS, STAGES = 64, 32, 4, 2  # a program's rows, keys a step
failed: list[str] = []  # why the kernel could not run here, once it could not


def available(device: torch.device, head_dim: int) -> bool:
    """Whether the kernel may run: a GPU with Triton (or its interpreter), and a head size
    whose halves are a power of two the tensor cores take (16 or more)."""
    half = head_dim // 2
    return (usable(device, failed) and head_dim % 2 == 0 and half >= 16
            and half & (half - 1) == 0)


def reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
              kv_heads: int, scale: float) -> torch.Tensor:
    """The same by torch: [b, t, heads · hd]."""
    b, t, width = qkv.shape
    hd = width // (heads + 2 * kv_heads)
    q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    q = rotate(q.view(b, t, heads, hd).transpose(1, 2), cos, sin)
    k = rotate(k.view(b, t, kv_heads, hd).transpose(1, 2), cos, sin)
    v = v.view(b, t, kv_heads, hd).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)
    return out.transpose(1, 2).reshape(b, t, heads * hd)


@torch.library.custom_op("kbd::causal_attention", mutates_args=())
def causal_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                     kv_heads: int, scale: float) -> torch.Tensor:
    """reference() by the kernel (call where available() said so): qkv [b, t, (heads + 2 kv
    heads) · hd], cos and sin [1 or b, t, hd]. An operator of its own, so compiled code calls
    it as it is."""
    b, t, width = qkv.shape
    hd = width // (heads + 2 * kv_heads)

    def by_kernel() -> torch.Tensor:
        x, c, s = qkv.contiguous(), cos.contiguous(), sin.contiguous()
        out = x.new_empty(b, t, heads * hd)
        _causal[(triton.cdiv(t, QUERIES), heads, b)](
            x, c, s, out, t, 0 if c.shape[0] == 1 else t * hd,  # one set of angles for all rows
            scale * 1.4426950408889634,  # times log2(e): the kernel uses exp2
            HEADS=heads, KV_HEADS=kv_heads, HALF=hd // 2, QUERIES=QUERIES, KEYS=KEYS,
            num_warps=WARPS, num_stages=STAGES)
        return out

    return launched(failed, "the attention kernel", by_kernel,
                    lambda: reference(qkv, cos, sin, heads, kv_heads, scale))


@causal_attention.register_fake
def _(qkv, cos, sin, heads, kv_heads, scale):
    b, t, width = qkv.shape
    return qkv.new_empty(b, t, heads * (width // (heads + 2 * kv_heads)))


if triton is not None:

    @triton.jit
    def _rotated(ptr, cos_ptr, sin_ptr, rows, in_rows, row_width, HALF: tl.constexpr):
        """Both halves of the rotary embedding of a [rows, 2 HALF] slice, rounded to the input's
        type as the separate kernel rounds it; zero past the last row."""
        lo = tl.arange(0, HALF)[None, :]
        at, angle_at = rows[:, None] * row_width + lo, rows[:, None] * 2 * HALF + lo
        mask = in_rows[:, None]
        x1 = tl.load(ptr + at, mask=mask, other=0.0)
        x2 = tl.load(ptr + at + HALF, mask=mask, other=0.0).to(tl.float32)
        c1 = tl.load(cos_ptr + angle_at, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + angle_at + HALF, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + angle_at, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + angle_at + HALF, mask=mask, other=0.0).to(tl.float32)
        out1 = (x1.to(tl.float32) * c1 - x2 * s1).to(x1.dtype)
        out2 = (x2 * c2 + x1.to(tl.float32) * s2).to(x1.dtype)
        return out1, out2

    @triton.jit
    def _causal(qkv_ptr, cos_ptr, sin_ptr, out_ptr, t, angles_stride, qk_scale,
               HEADS: tl.constexpr,
               KV_HEADS: tl.constexpr, HALF: tl.constexpr, QUERIES: tl.constexpr,
               KEYS: tl.constexpr):
        block, head, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        width = (HEADS + 2 * KV_HEADS) * 2 * HALF
        kv = head // (HEADS // KV_HEADS)
        x_ptr = qkv_ptr + b.to(tl.int64) * t * width
        cos_ptr += b.to(tl.int64) * angles_stride
        sin_ptr += b.to(tl.int64) * angles_stride
        rows = block * QUERIES + tl.arange(0, QUERIES)
        q1, q2 = _rotated(x_ptr + head * 2 * HALF, cos_ptr, sin_ptr, rows, rows < t, width, HALF)
        best = tl.full([QUERIES], float("-inf"), tl.float32)
        total = tl.zeros([QUERIES], tl.float32)
        acc = tl.zeros([QUERIES, 2 * HALF], tl.float32)
        k_ptr = x_ptr + (HEADS + kv) * 2 * HALF
        v_ptr = x_ptr + (HEADS + KV_HEADS + kv) * 2 * HALF
        dims = tl.arange(0, 2 * HALF)[None, :]
        for start in tl.range(0, tl.minimum((block + 1) * QUERIES, t), KEYS):
            keys = start + tl.arange(0, KEYS)
            k1, k2 = _rotated(k_ptr, cos_ptr, sin_ptr, keys, keys < t, width, HALF)
            scores = tl.dot(q1, k1.T) + tl.dot(q2, k2.T)
            scores = tl.where(keys[None, :] <= rows[:, None], scores * qk_scale, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, 1))
            p = tl.exp2(scores - new_best[:, None])
            shrink = tl.exp2(best - new_best)
            total = total * shrink + tl.sum(p, 1)
            v = tl.load(v_ptr + keys[:, None] * width + dims, mask=(keys < t)[:, None],
                        other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * shrink[:, None])
            best = new_best
        out = acc / total[:, None]
        at = out_ptr + b.to(tl.int64) * t * HEADS * 2 * HALF
        tl.store(at + rows[:, None] * HEADS * 2 * HALF + head * 2 * HALF + dims,
                 out.to(out_ptr.dtype.element_ty), mask=(rows < t)[:, None])

