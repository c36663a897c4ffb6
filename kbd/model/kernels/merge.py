"""An adapter added to a copy of a weight, W + s·B A, in one pass over the weight; its columns
scaled as well, (W + s·B A)·diag(g), where a norm's weight is folded into it.

Compression adds the encoder's adapter to each layer's weights before its matrix products
(kbd/model/encode.py). torch.addmm does that in two passes: it copies W to the result, then
adds the product into the copy, reading and writing the copy a second time: over a 7B model,
56 GB of memory traffic. Here one Triton kernel reads each tile of W once, adds s·B A
computed on the tensor cores (the rank is small: 32 to 96) and writes the result once: 28 GB,
half the time. Where Triton is not installed or cannot compile
for the GPU, or the tensors are not on a GPU (nor under Triton's interpreter), addmm does the
same sum.
"""

from __future__ import annotations

import torch

from kbd.model.kernels import launched, tl, triton, usable

ROWS, COLUMNS = 64, 256  # a tile of the weight per program
failed: list[str] = []  # why the kernel could not run here, once it could not


def add_product(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float,
                columns: torch.Tensor | None = None) -> torch.Tensor:
    """weight + scale · b @ a as a new tensor, times `columns` [n] column by column where
    given; weight [m, n], b [m, r], a [r, n]."""
    if not usable(weight.device, failed):
        return by_torch(weight, b, a, scale, columns)
    weight, b, a = weight.contiguous(), b.contiguous(), a.contiguous()
    m, n = weight.shape
    rank = b.shape[1]

    def launch() -> torch.Tensor:
        out = torch.empty_like(weight)
        _add_product[(triton.cdiv(m, ROWS), triton.cdiv(n, COLUMNS))](
            weight, b, a, weight if columns is None else columns.contiguous(), out, m, n, rank,
            scale, ROWS=ROWS, COLUMNS=COLUMNS, RANK=max(16, triton.next_power_of_2(rank)),
            SCALED=columns is not None, num_warps=8)
        return out

    return launched(failed, "the adapter-merging kernel", launch,
                    lambda: by_torch(weight, b, a, scale, columns))


def by_torch(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float,
             columns: torch.Tensor | None) -> torch.Tensor:
    if columns is None:
        return torch.addmm(weight, b, a, alpha=scale)
    return (torch.addmm(weight.float(), b.float(), a.float(), alpha=scale)
            * columns.float()).to(weight.dtype)


if triton is not None:

    @triton.jit
    def _add_product(w_ptr, b_ptr, a_ptr, columns_ptr, out_ptr, m, n, rank, scale,
                     ROWS: tl.constexpr, COLUMNS: tl.constexpr, RANK: tl.constexpr,
                     SCALED: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        columns = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
        ranks = tl.arange(0, RANK)  # the rank rounded up to a power of two; the rest masked
        in_rows, in_columns, in_rank = rows < m, columns < n, ranks < rank
        b = tl.load(b_ptr + rows[:, None] * rank + ranks[None, :],
                    mask=in_rows[:, None] & in_rank[None, :], other=0.0)
        a = tl.load(a_ptr + ranks[:, None] * n + columns[None, :],
                    mask=in_rank[:, None] & in_columns[None, :], other=0.0)
        tile = rows[:, None] * n + columns[None, :]
        inside = in_rows[:, None] & in_columns[None, :]
        w = tl.load(w_ptr + tile, mask=inside, other=0.0)
        total = w.to(tl.float32) + scale * tl.dot(b, a, input_precision="ieee")
        if SCALED:
            total *= tl.load(columns_ptr + columns, mask=in_columns, other=0.0).to(
                tl.float32)[None, :]
        tl.store(out_ptr + tile, total.to(w.dtype), mask=inside)
