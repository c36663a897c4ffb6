"""SiLU(x Gᵀ)·(x Uᵀ) for many rows in one kernel: the first product of compression's MLP.

Compression multiplies ~17,000 token rows (a 64-passage batch) by each layer's fused gate/up
weight [2f, d]. cuBLAS writes both halves of the result, [rows, 2f], and a second kernel reads
them back to write SiLU(gate)·up, [rows, f]: 1.5 GB of memory traffic a layer, 15 ms of a
batch on an H100. Here a Triton kernel loads a gate tile and the matching up tile as one TMA
box, multiplies them with x as one 128 x 256 product, and writes SiLU(gate)·up alone
(bench/results/gate_up_probe.json: 5.3 against 6.1 ms a layer on a cool GPU, 2% less at the
700 W power cap, where time follows energy; one product rather than a gate and an up product
of half the width, each reading its x tile from shared memory: 2.5% less again,
bench/results/gate_up_variants.json). The gate and up products are rounded to the weight's
type before SiLU, as the separate products round them.
Where that cannot run (no Triton, a GPU before Hopper, float32, sizes TMA cannot describe)
torch does the same sum.
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


TILES = Tiles()  # the fastest measured on an H100 (bench/results/gate_up_variants.json)
failed: list[str] = []  # why the kernel could not run here, once it could not


def available(device: torch.device) -> bool:
    """Whether the kernel may run on this device: TMA loads need a Hopper GPU or later (or
    Triton's interpreter, on the CPU, for the tests)."""
    return usable(device, failed) and (
        kernels.INTERPRETED or torch.cuda.get_device_capability(device)[0] >= 9)


def swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SiLU of the first half of x Wᵀ times its second half, by the kernel where it fits
    (call only where available() said so)."""
    half, depth = weight.shape[0] // 2, weight.shape[1]
    fits = half % 8 == 0 and depth % 8 == 0  # TMA strides: multiples of 16 bytes
    if fits and (x.dtype in (torch.bfloat16, torch.float16) or kernels.INTERPRETED):
        return gate_up(x, weight)
    return reference(x, weight)


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, weight).chunk(2, dim=-1)
    return F.silu(gate) * up


@torch.library.custom_op("kbd::gate_up", mutates_args=())
def gate_up(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """swiglu() by the kernel (an operator of its own, so compiled code calls it as it is)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    weight = weight.contiguous()
    half = weight.shape[0] // 2

    def by_kernel() -> torch.Tensor:
        out = rows.new_empty(rows.shape[0], half)
        launch(rows, weight, out)
        return out.view(*x.shape[:-1], half)

    return launched(failed, "the gate/up kernel", by_kernel, lambda: reference(x, weight))


@gate_up.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


def launch(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
           tiles: Tiles = TILES) -> None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    (m, k), n = x.shape, out.shape[1]
    t = tiles
    count = triton.cdiv(m, t.rows) * triton.cdiv(n, t.columns)
    programs = count if kernels.INTERPRETED else min(
        count, torch.cuda.get_device_properties(x.device).multi_processor_count)
    kernel()[(programs,)](
        TensorDescriptor.from_tensor(x, [t.rows, t.depth]),
        # the weight as [2, f, d]: a box holds a gate tile and, after it, the same up tile
        TensorDescriptor.from_tensor(weight.view(2, n, k), [2, t.columns, t.depth]),
        TensorDescriptor.from_tensor(out, [t.rows, t.columns]), m, n, k, programs,
        OUT=DTYPES[out.dtype], ROWS=t.rows, COLUMNS=t.columns, DEPTH=t.depth, GROUP=t.group,
        num_stages=t.stages, num_warps=t.warps)


DTYPES = {} if tl is None else {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
                                torch.float32: tl.float32}


@functools.cache
def kernel():
    """The Triton kernel, made at its first use: Triton makes an interpreted one where
    TRITON_INTERPRET=1 is set by then (the tests set it)."""

    @triton.jit
    def gate_up_silu(x_desc, w_desc, out_desc, m, n, k, programs, OUT: tl.constexpr,
                     ROWS: tl.constexpr, COLUMNS: tl.constexpr, DEPTH: tl.constexpr,
                     GROUP: tl.constexpr):
        # persistent: each program walks the output tiles a grid's width apart, the two loops
        # pipelined as one, so a tile's first loads overlap the tile before's SiLU and store
        tiles_m, tiles_n = tl.cdiv(m, ROWS), tl.cdiv(n, COLUMNS)
        per_group = GROUP * tiles_n
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, programs, flatten=True):
            first_m = (tile // per_group) * GROUP
            group_rows = min(tiles_m - first_m, GROUP)
            row = (first_m + (tile % per_group) % group_rows) * ROWS
            column = ((tile % per_group) // group_rows) * COLUMNS
            acc = tl.zeros([ROWS, 2 * COLUMNS], dtype=tl.float32)
            for depth in tl.range(0, k, DEPTH):
                w = w_desc.load([0, column, depth]).reshape(2 * COLUMNS, DEPTH)
                acc = tl.dot(x_desc.load([row, depth]), w.T, acc)
            gate, up = acc.reshape(ROWS, 2, COLUMNS).permute(0, 2, 1).split()
            gate = gate.to(OUT).to(tl.float32)
            up = up.to(OUT).to(tl.float32)
            out_desc.store([row, column], (gate * tl.sigmoid(gate) * up).to(OUT))

    return gate_up_silu
