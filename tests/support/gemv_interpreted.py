"""The decode step's one-row kernel (kbd/model/kernels/gemv.py) on the CPU, by Triton's interpreter:
the same numbers as torch for every product a layer makes, and the same greedy text as
transformers' generate() when a single question decodes through it. The interpreter must be
on before triton is imported, so tests/test_gemv.py runs this file in a pytest of its own with
TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DOCS, QUESTIONS, counted

from kbd.model.kernels import gemv

assert os.environ.get("TRITON_INTERPRET") == "1", "run by tests/test_gemv.py"


@pytest.fixture
def kernel_calls(monkeypatch):
    yield counted(monkeypatch, gemv, "one_row")
    assert not gemv.failed, gemv.failed


# rows and inputs off the kernel's tile sizes too, so its masks are exercised
@pytest.mark.parametrize(("rows", "k"), [(96, 64), (37, 70), (5, 4100)])
@pytest.mark.parametrize("kind", ["plain", "gated", "residual", "bias"])
def test_one_row_equals_torch(kernel_calls, rows, k, kind):
    torch.manual_seed(rows * k)
    weight = torch.randn((2 if kind == "gated" else 1) * rows, k) / k**0.5
    x = torch.randn(1, 1, k)
    add = {"residual": torch.randn(1, 1, rows), "bias": torch.randn(rows)}.get(kind)
    got = gemv.linear(x, weight, add, gated=kind == "gated")
    assert kernel_calls, "the kernel did not run"
    want = torch.nn.functional.linear(x, weight)
    if kind == "gated":
        gate, up = want.chunk(2, dim=-1)
        want = torch.nn.functional.silu(gate) * up
    elif add is not None:
        want = want + add
    assert got.shape == (1, 1, rows)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_one_question_decodes_through_the_kernel(pair, kernel_calls):
    fast, plain = pair
    memory = fast.compress(DOCS)[:3]
    got = fast.generate(QUESTIONS[:1], [memory], 12)
    assert kernel_calls
    assert got == plain.generate(QUESTIONS[:1], [memory], 12)
    assert got[0].strip()
