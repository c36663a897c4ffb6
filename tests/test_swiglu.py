"""The gate/up kernel (kbd/model/swiglu.py): where it runs, its fallback when it cannot
compile, and the kernel itself under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_cannot_compile, run_interpreted

from kbd.model import swiglu


def test_the_kernel_under_tritons_interpreter():
    run_interpreted("swiglu_interpreted.py", passed=7)


def test_not_on_the_cpu(pair):
    fast, _ = pair
    assert not swiglu.available(torch.device("cpu"))
    assert not fast.encoder.gate_up_kernel


def test_a_kernel_that_cannot_compile_falls_back_to_torch(monkeypatch):
    pytest.importorskip("triton")
    kernel_cannot_compile(monkeypatch, swiglu)
    assert swiglu.available(torch.device("cpu"))
    weight, x = torch.randn(16, 8), torch.randn(5, 8)
    torch.testing.assert_close(swiglu.swiglu(x, weight), swiglu.reference(x, weight))
    assert swiglu.failed and "no compiler" in swiglu.failed[0]
    assert not swiglu.available(torch.device("cpu"))  # torch from now on
    # compiled code goes on calling the operator: it tries the kernel no more
    torch.testing.assert_close(swiglu.gate_up(x, weight), swiglu.reference(x, weight))
    assert len(swiglu.failed) == 1
