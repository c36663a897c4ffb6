"""The products' kernel (kbd/model/kernels/products.py): where it runs, its fallback when it cannot
compile, and the kernel itself under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_cannot_compile, run_interpreted

from kbd.model.kernels import products


def test_the_kernel_under_tritons_interpreter():
    run_interpreted("products_interpreted.py", passed=18)


def test_not_on_the_cpu(pair):
    fast, _ = pair
    assert not products.available(torch.device("cpu"))
    assert not fast.encoder.gate_up_kernel
    assert not fast.encoder.qkv_kernel


def test_a_kernel_that_cannot_compile_falls_back_to_torch(monkeypatch):
    pytest.importorskip("triton")
    kernel_cannot_compile(monkeypatch, products)
    assert products.available(torch.device("cpu"))
    weight, x = torch.randn(16, 8), torch.randn(5, 8)
    torch.testing.assert_close(products.swiglu(x, weight), products.swiglu_reference(x, weight))
    assert products.failed and "no compiler" in products.failed[0]
    assert not products.available(torch.device("cpu"))  # torch from now on
    # compiled code goes on calling the operators: they try the kernel no more
    torch.testing.assert_close(products.gate_up(x, weight),
                               products.swiglu_reference(x, weight))
    angles = torch.rand(1, 5, 8)
    args = (x[None], torch.randn(48, 8), angles.cos(), angles.sin(), 32, 8)
    torch.testing.assert_close(products.qkv_rotary(*args), products.rotary_reference(*args))
    torch.testing.assert_close(products.row_scales(x, 1e-5),
                               products.row_scales_reference(x, 1e-5))
    assert len(products.failed) == 1
