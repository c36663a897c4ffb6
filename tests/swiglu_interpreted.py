"""The gate/up kernel (kbd/model/swiglu.py) on the CPU, by Triton's interpreter: the same
numbers as torch's two steps at sizes off its tiles, and compression through it the same
memory as transformers' forward. Run by tests/test_swiglu.py with TRITON_INTERPRET=1 set
before triton is imported."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DOCS, counted

from kbd.model import encode, swiglu

assert os.environ.get("TRITON_INTERPRET") == "1", "run by tests/test_swiglu.py"


@pytest.fixture
def kernel_calls(monkeypatch):
    yield counted(monkeypatch, swiglu, "gate_up")
    assert not swiglu.failed, swiglu.failed


# rows, depth and outputs off the 128 x 128 x 64 tiles (masked by TMA), and over several
@pytest.mark.parametrize(("rows", "depth", "half"), [(37, 72, 40), (300, 64, 136),
                                                     (1, 8, 8), (129, 200, 264)])
def test_kernel_equals_torch(kernel_calls, rows, depth, half):
    torch.manual_seed(rows + depth + half)
    weight = torch.randn(2 * half, depth) / depth**0.5
    x = torch.randn(1, rows, depth)
    got = swiglu.swiglu(x, weight)
    assert kernel_calls, "the kernel did not run"
    assert got.shape == (1, rows, half)
    torch.testing.assert_close(got, swiglu.reference(x, weight), atol=1e-5, rtol=1e-5)


def test_sizes_tma_cannot_describe_go_through_torch(kernel_calls):
    weight, x = torch.randn(2 * 12, 10), torch.randn(3, 10)  # rows of 20 and 24 bytes
    torch.testing.assert_close(swiglu.swiglu(x, weight), swiglu.reference(x, weight))
    assert not kernel_calls


def test_compression_through_the_kernel(pair, kernel_calls, monkeypatch):
    """Adapters merged into the weights (as for a batch of passages on a GPU), so the MLP
    takes the kernel: the memory of transformers' forward with the adapter beside it."""
    fast, plain = pair
    assert fast.encoder.gate_up_kernel
    monkeypatch.setattr(encode, "MERGE_ROWS", 1)
    torch.testing.assert_close(fast.compress(DOCS), plain.compress(DOCS), atol=1e-4,
                               rtol=1e-4)
    layers = len(fast.model.model.layers)
    assert len(kernel_calls) == layers, "one call a layer for one batch"


def test_questions_keep_the_adapter_beside_the_product(pair, kernel_calls):
    """A few short questions are not worth merging the adapter: no kernel, same vectors."""
    fast, plain = pair
    torch.testing.assert_close(fast.encode_queries(DOCS[:2]), plain.encode_queries(DOCS[:2]),
                               atol=1e-4, rtol=1e-4)
    assert not kernel_calls
