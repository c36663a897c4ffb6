"""Compression's two widest matrix products in one Triton kernel that finishes their work in
its epilogue, where cuBLAS would write the product and another kernel read it back.

Compression multiplies ~17,000 token rows (a 64-passage batch) by each layer's weights.
- gate/up, [2f, d]: cuBLAS writes both halves of the result, [rows, 2f], and a second kernel
  reads them back to write SiLU(gate)·up, [rows, f]: 1.5 GB of memory traffic a layer.
  Here a gate tile and the matching up tile come as one TMA box, are multiplied with x as
  one 128 x 256 product (one product rather than a gate and an up product of half the width,
  each reading its x tile from shared memory: less energy, and at the power cap time
  follows energy), and SiLU(gate)·up alone is written. The gate and up products are rounded
  to the weight's type before SiLU, as the separate products round them.
- q/k/v, [(heads + 2 kv heads) · head, d]: the rotary embedding turns q and k in the
  epilogue, rounded as torch's compiled rotary kernel rounds them, which otherwise reads
  them back and writes them again, 0.35 GB a layer.
Where a norm's weight is folded into the weight (kbd/model/encode.py), each output row is
multiplied by its row's norm scale (row_scales(), a kernel of its own) in the epilogue, so the
products read the residual stream itself and no normed copy of it is written.
Where that cannot run (no Triton, a GPU before Hopper, float32, sizes TMA or the tiles
cannot describe) torch does the same sums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kbd.model import kernels
from kbd.model.kernels import launched, tl, triton, usable


@dataclass(frozen=True)
class Tiles:
    """How the kernel cuts the work: a tile of the output (rows, and columns of each half),
    the depth of a load, loads in flight (stages), warps a program; group: rows of tiles
    visited together, so the weight columns they share stay in L2."""

    rows: int = 128
    columns: int = 128
    depth: int = 64
    group: int = 8
    stages: int = 3
    warps: int = 8


TILES = Tiles()  # the fastest measured on an H100
failed: list[str] = []  # why the kernel could not run here, once it could not


def available(device: torch.device) -> bool:
    """Whether the kernel may run on this device: TMA loads need a Hopper GPU or later (or
    Triton's interpreter, on the CPU, for the tests)."""
    return usable(device, failed) and (
        kernels.INTERPRETED or torch.cuda.get_device_capability(device)[0] >= 9)


def described(dtype: torch.dtype, *sizes: int) -> bool:
    """Whether TMA can describe rows of these sizes (strides of multiples of 16 bytes) in a
    type the kernel multiplies (16-bit; any under the interpreter)."""
    return (all(size % 8 == 0 for size in sizes)
            and (dtype in (torch.bfloat16, torch.float16) or kernels.INTERPRETED))


def swiglu(x: torch.Tensor, weight: torch.Tensor,
           row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU of the first half of x Wᵀ times its second half, by the kernel where it fits
    (call only where available() said so); with row_scale (x's shape less its last size),
    each row of the product multiplied by its scale first."""
    if described(x.dtype, weight.shape[0] // 2, weight.shape[1]):  # the output's rows: half
        return gate_up(x, weight, row_scale)
    return swiglu_reference(x, weight, row_scale)


def swiglu_reference(x: torch.Tensor, weight: torch.Tensor,
                     row_scale: torch.Tensor | None = None) -> torch.Tensor:
    gate, up = scaled(F.linear(x, weight), row_scale).chunk(2, dim=-1)
    return F.silu(gate) * up


def scaled(y: torch.Tensor, row_scale: torch.Tensor | None) -> torch.Tensor:
    """y with each row times its scale, in float32, rounded once, as the kernel rounds."""
    if row_scale is None:
        return y
    return (y.float() * row_scale[..., None]).to(y.dtype)


@torch.library.custom_op("kbd::gate_up", mutates_args=())
def gate_up(x: torch.Tensor, weight: torch.Tensor,
            row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """swiglu() by the kernel (an operator of its own, so compiled code calls it as it is)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    weight = weight.contiguous()
    half = weight.shape[0] // 2

    def by_kernel() -> torch.Tensor:
        out = rows.new_empty(rows.shape[0], half)
        launch_swiglu(rows, weight, out, row_scale=row_scale)
        return out.view(*x.shape[:-1], half)

    return launched(failed, "the gate/up kernel", by_kernel,
                    lambda: swiglu_reference(x, weight, row_scale))


@gate_up.register_fake
def _(x, weight, row_scale=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x [b, heads, t, hd] with cos, sin [b, t, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def rotary_fits(dtype: torch.dtype, hidden: int, columns: int, rotated: int,
                head: int) -> bool:
    """Whether the kernel can take a q/k/v product of `columns`, the first `rotated` turned,
    `head` a head: q/k tiles apart from v's, whole heads a tile."""
    wide = 2 * TILES.columns
    return (described(dtype, hidden, columns) and rotated % wide == 0 and wide % head == 0
            and head & (head - 1) == 0)


def rotary_reference(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, rotated: int, head: int,
                     row_scale: torch.Tensor | None = None) -> torch.Tensor:
    y = scaled(F.linear(x, weight), row_scale)
    b, t, _ = y.shape
    turned = rotate(y[..., :rotated].reshape(b, t, -1, head).transpose(1, 2), cos, sin)
    return torch.cat((turned.transpose(1, 2).reshape(b, t, rotated), y[..., rotated:]), -1)


@torch.library.custom_op("kbd::qkv_rotary", mutates_args=())
def qkv_rotary(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rotated: int, head: int, row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x Wᵀ for x [b, t, d], its first `rotated` columns (q and k) turned by the rotary
    embedding, cos and sin [1, t, head] (halves alike, as Llama-shaped models make them), by
    the kernel (call only where available() and rotary_fits() said so); with row_scale
    [b, t], each row of the product multiplied by its scale first."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    weight = weight.contiguous()

    def by_kernel() -> torch.Tensor:
        out = rows.new_empty(rows.shape[0], weight.shape[0])
        launch_rotary(rows, weight, out, cos[0].contiguous(), sin[0].contiguous(), x.shape[1],
                      rotated, head, row_scale=row_scale)
        return out.view(*x.shape[:-1], weight.shape[0])

    return launched(failed, "the q/k/v kernel", by_kernel,
                    lambda: rotary_reference(x, weight, cos, sin, rotated, head, row_scale))


@qkv_rotary.register_fake
def _(x, weight, cos, sin, rotated, head, row_scale=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def row_scales_reference(h: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(h.float().pow(2).mean(-1) + eps)


@torch.library.custom_op("kbd::row_scales", mutates_args=())
def row_scales(h: torch.Tensor, eps: float) -> torch.Tensor:
    """1/√(mean(h²) + eps) of each row of h, in float32, [h's shape less its last size]: what
    the products multiply in where a norm is folded into them. A kernel of its own, since
    torch's compiled reduction reads the stream well below memory speed."""
    rows = h.reshape(-1, h.shape[-1]).contiguous()

    def by_kernel() -> torch.Tensor:
        out = torch.empty(rows.shape[0], device=h.device, dtype=torch.float32)
        launch_row_scales(rows, out, eps)
        return out.view(h.shape[:-1])

    return launched(failed, "the row-scale kernel", by_kernel,
                    lambda: row_scales_reference(h, eps))


@row_scales.register_fake
def _(h, eps):
    return h.new_empty(h.shape[:-1], dtype=torch.float32)


def launch_row_scales(rows: torch.Tensor, out: torch.Tensor, eps: float, per_program: int = 4,
                      chunk: int = 1024, warps: int = 8) -> None:
    """out = row_scales() of rows [m, d]: `per_program` rows a program, read `chunk` columns
    at a time."""
    m, width = rows.shape
    row_scale_kernel()[(triton.cdiv(m, per_program),)](
        rows, out, m, width, eps, ROWS=per_program,
        CHUNK=min(chunk, triton.next_power_of_2(width)), num_warps=warps)


@functools.cache
def row_scale_kernel():
    @triton.jit(do_not_specialize=["m"])  # the rows, left general: see kernel()
    def row_scale(h_ptr, out_ptr, m, width, eps, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        total = tl.zeros([ROWS, CHUNK], dtype=tl.float32)
        for start in tl.range(0, width, CHUNK):
            columns = start + tl.arange(0, CHUNK)
            x = tl.load(h_ptr + rows[:, None].to(tl.int64) * width + columns[None, :],
                        mask=(rows < m)[:, None] & (columns < width)[None, :], other=0.0)
            x = x.to(tl.float32)
            total += x * x
        tl.store(out_ptr + rows, tl.rsqrt(tl.sum(total, 1) / width + eps), mask=rows < m)

    return row_scale


def launch_swiglu(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                  tiles: Tiles | None = None, row_scale: torch.Tensor | None = None) -> None:
    """out = SiLU(gate)·up of x Wᵀ, gate and up its halves."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    (m, k), n = x.shape, out.shape[1]
    t = tiles or TILES
    run(t, TensorDescriptor.from_tensor(x, [t.rows, t.depth]),
        # the weight as [2, f, d]: a box holds a gate tile and, after it, the same up tile
        TensorDescriptor.from_tensor(weight.view(2, n, k), [2, t.columns, t.depth]),
        TensorDescriptor.from_tensor(out, [t.rows, t.columns]), out,
        triton.cdiv(m, t.rows) * triton.cdiv(n, t.columns), swiglu=True, row_scale=row_scale)


def launch_rotary(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, width: int, rotated: int, head: int,
                  tiles: Tiles | None = None, row_scale: torch.Tensor | None = None) -> None:
    """out = x Wᵀ, its first `rotated` columns turned by the rotary embedding (cos, sin
    [width, head]; the rows of x are at positions 0 .. width - 1 in turn)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, n = out.shape
    t = tiles or TILES
    run(t, TensorDescriptor.from_tensor(x, [t.rows, t.depth]),
        TensorDescriptor.from_tensor(weight, [2 * t.columns, t.depth]),
        TensorDescriptor.from_tensor(out, [t.rows, 2 * t.columns]), out,
        triton.cdiv(m, t.rows) * triton.cdiv(n, 2 * t.columns), swiglu=False, cos=cos,
        sin=sin, width=width, rotated=rotated, head=head, row_scale=row_scale)


def run(t: Tiles, x_desc, w_desc, out_desc, out: torch.Tensor, count: int, swiglu: bool,
        cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, width: int = 1,
        rotated: int = 0, head: int = 2, row_scale: torch.Tensor | None = None) -> None:
    """The kernel over `count` output tiles, one program an SM, each walking its share
    (tensors it does not read are given as `out`, for a pointer)."""
    programs = count if kernels.INTERPRETED else min(
        count, torch.cuda.get_device_properties(out.device).multi_processor_count)
    (m, k), n = x_desc.shape, w_desc.shape[-2]
    kernel()[(programs,)](
        x_desc, w_desc, out_desc, out if cos is None else cos, out if sin is None else sin,
        out if row_scale is None else row_scale.reshape(-1).float(), m, n, k, width, rotated,
        programs, OUT=DTYPES[out.dtype], ROWS=t.rows, COLUMNS=t.columns, DEPTH=t.depth,
        GROUP=t.group, SWIGLU=swiglu, HEAD=head, SCALED=row_scale is not None,
        num_stages=t.stages, num_warps=t.warps)


DTYPES = {} if tl is None else {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
                                torch.float32: tl.float32}


@functools.cache
def kernel():
    """The Triton kernel, made at its first use: Triton makes an interpreted one where
    TRITON_INTERPRET=1 is set by then (the tests set it). SWIGLU: SiLU(gate)·up of each
    gate tile and its up tile; otherwise the product's columns in tiles of 2 * COLUMNS, those
    before `rotated` (q and k) turned by the rotary embedding of their row's position (the row
    modulo `width`), HEAD columns a head. SCALED: each row of the product times its scale
    first.
    Triton compiles a kernel for each pattern of its integers' divisibility by 16: the sizes
    that change from batch to batch (rows, a row's positions, programs) are left general, so
    the kernels compiled at warm-up serve every batch, none compiled while a batch waits (a
    compile takes seconds)."""

    @triton.jit(do_not_specialize=["m", "width", "programs"])
    def product(x_desc, w_desc, out_desc, cos_ptr, sin_ptr, scale_ptr, m, n, k, width,
                rotated, programs, OUT: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr,
                DEPTH: tl.constexpr, GROUP: tl.constexpr, SWIGLU: tl.constexpr,
                HEAD: tl.constexpr, SCALED: tl.constexpr):
        # persistent: each program walks the output tiles a grid's width apart, the two loops
        # pipelined as one, so a tile's first loads overlap the tile before's epilogue
        tiles_m = tl.cdiv(m, ROWS)
        tiles_n = tl.cdiv(n, COLUMNS) if SWIGLU else tl.cdiv(n, 2 * COLUMNS)
        per_group = GROUP * tiles_n
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, programs, flatten=True):
            first_m = (tile // per_group) * GROUP
            group_rows = min(tiles_m - first_m, GROUP)
            row = (first_m + (tile % per_group) % group_rows) * ROWS
            column = ((tile % per_group) // group_rows) * (COLUMNS if SWIGLU else 2 * COLUMNS)
            acc = tl.zeros([ROWS, 2 * COLUMNS], dtype=tl.float32)
            for depth in tl.range(0, k, DEPTH):
                if SWIGLU:
                    w = w_desc.load([0, column, depth]).reshape(2 * COLUMNS, DEPTH)
                else:
                    w = w_desc.load([column, depth])
                acc = tl.dot(x_desc.load([row, depth]), w.T, acc)
            rows = row + tl.arange(0, ROWS)
            if SCALED:
                acc *= tl.load(scale_ptr + rows, mask=rows < m, other=0.0)[:, None]
            if SWIGLU:
                gate, up = acc.reshape(ROWS, 2, COLUMNS).permute(0, 2, 1).split()
                gate = gate.to(OUT).to(tl.float32)
                up = up.to(OUT).to(tl.float32)
                out_desc.store([row, column], (gate * tl.sigmoid(gate) * up).to(OUT))
            else:
                y = acc.to(OUT)
                if column < rotated:
                    at = (rows % width)[:, None] * HEAD + tl.arange(0, HEAD // 2)[None, :]
                    inside = (rows < m)[:, None]
                    cos = tl.load(cos_ptr + at, mask=inside, other=0.0).to(tl.float32)
                    sin = tl.load(sin_ptr + at, mask=inside, other=0.0).to(tl.float32)
                    cos, sin = cos[:, None, :], sin[:, None, :]
                    first, second = y.to(tl.float32).reshape(
                        ROWS, 2 * COLUMNS // HEAD, 2, HEAD // 2).permute(0, 1, 3, 2).split()
                    y = tl.join(first * cos - second * sin, second * cos + first * sin).permute(
                        0, 1, 3, 2).reshape(ROWS, 2 * COLUMNS).to(OUT)
                out_desc.store([row, column], y)

    return product
