"""One row through a linear layer, read at memory speed: the decode step's matrix products.

A decode step of a single question multiplies one row by every weight of the model, so its
time is the time to read the weights once. cuBLAS reads them in short rows and leaves the
work around its products (a split-K reduction, residual adds, SiLU) to kernels of their own;
here one Triton kernel a product reads them in long rows, nearer memory speed
(docs/performance.md), and does the work around it in the same pass: the residual
add after o_proj and down_proj, SiLU(gate)·up after the fused gate/up product (a program
reads a gate row and the matching up row). Other batch sizes, the CPU, and machines where
Triton cannot compile use torch.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kbd.model.kernels import launched, products, tl, triton, usable

# weight rows a program reads per load, and how long a stretch of each: measured best for
# every product of a Mistral-7B step
ROWS_READ, COLUMNS, WARPS, STAGES = 2, 2048, 8, 3
failed: list[str] = []  # why the kernel could not run here, once it could not


def linear(x: torch.Tensor, weight: torch.Tensor, add: torch.Tensor | None = None,
           gated: bool = False) -> torch.Tensor:
    """x Wᵀ + add (a bias, or the residual stream); gated (and no add): SiLU of the first
    half of the outputs times the second half."""
    if x.numel() == x.shape[-1] and usable(x.device, failed):
        return one_row(x, weight, add, gated)
    return _torch(x, weight, add, gated)


def _torch(x: torch.Tensor, weight: torch.Tensor, add: torch.Tensor | None,
           gated: bool) -> torch.Tensor:
    if gated:
        return products.swiglu_reference(x, weight)
    if add is None or add.dim() == 1:
        return F.linear(x, weight, add)
    # the residual added by the product's own epilogue, not by a kernel after it
    return torch.addmm(add.flatten(0, -2), x.flatten(0, -2), weight.t()).view_as(add)


@torch.library.custom_op("kbd::one_row", mutates_args=())
def one_row(x: torch.Tensor, weight: torch.Tensor, add: torch.Tensor | None,
            gated: bool) -> torch.Tensor:
    """linear() of one row by the kernel (an operator of its own, so compiled code calls it
    as it is)."""
    x, weight = x.contiguous(), weight.contiguous()
    add = None if add is None else add.contiguous()
    k = x.shape[-1]
    rows = weight.shape[0] // 2 if gated else weight.shape[0]
    per_program = ROWS_READ // 2 if gated else ROWS_READ

    def launch() -> torch.Tensor:
        out = x.new_empty(*x.shape[:-1], rows)
        kernel()[(triton.cdiv(rows, per_program),)](
            x, weight, out if add is None else add, out, rows, k, GATED=gated,
            ADD=add is not None, ROWS=per_program, COLUMNS=COLUMNS, num_warps=WARPS,
            num_stages=STAGES)
        return out

    return launched(failed, "the one-row kernel", launch, lambda: _torch(x, weight, add, gated))


@one_row.register_fake
def _(x, weight, add, gated):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2 if gated else weight.shape[0])


@functools.cache
def kernel():
    """The Triton kernel, made at its first use: Triton makes an interpreted one where
    TRITON_INTERPRET=1 is set by then (the tests set it, and clear this cache)."""

    @triton.jit
    def gemv(x_ptr, w_ptr, add_ptr, out_ptr, rows, k, GATED: tl.constexpr,
             ADD: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
        # 64-bit offsets: a vocabulary of 256k rows by 8k columns passes 2^31 elements
        row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        in_rows = row < rows
        acc = tl.zeros([ROWS, COLUMNS], dtype=tl.float32)
        acc_up = tl.zeros([ROWS, COLUMNS], dtype=tl.float32)
        for start in range(0, k, COLUMNS):
            column = start + tl.arange(0, COLUMNS)
            in_columns = column < k
            x = tl.load(x_ptr + column, mask=in_columns, other=0.0).to(tl.float32)
            inside = in_rows[:, None] & in_columns[None, :]
            w = tl.load(w_ptr + row[:, None] * k + column[None, :], mask=inside, other=0.0)
            acc += w.to(tl.float32) * x[None, :]
            if GATED:
                up = tl.load(w_ptr + (row + rows)[:, None] * k + column[None, :], mask=inside,
                             other=0.0)
                acc_up += up.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        if GATED:
            # rounded as torch's separate products would round them
            gate = y.to(out_ptr.dtype.element_ty).to(tl.float32)
            up = tl.sum(acc_up, axis=1).to(out_ptr.dtype.element_ty).to(tl.float32)
            y = gate * tl.sigmoid(gate) * up
        if ADD:
            y += tl.load(add_ptr + row, mask=in_rows, other=0.0).to(tl.float32)
        tl.store(out_ptr + row, y.to(out_ptr.dtype.element_ty), mask=in_rows)

    return gemv
