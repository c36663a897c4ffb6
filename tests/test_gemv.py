"""The decode step's one-row products (kbd/model/kernels/gemv.py): which rows take the kernel, the
fallback when it cannot compile, and the kernel itself under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from conftest import counted, kernel_cannot_compile, run_interpreted

from kbd.model.kernels import gemv


def test_the_kernel_under_tritons_interpreter():
    run_interpreted("gemv_interpreted.py", passed=13)


def test_more_rows_go_through_torch(monkeypatch):
    monkeypatch.setattr(gemv, "one_row", lambda *a: pytest.fail("the one-row kernel ran"))
    weight, x, h = torch.randn(16, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 16)
    torch.testing.assert_close(gemv.linear(x, weight, h), x @ weight.T + h)


def test_a_kernel_that_cannot_compile_falls_back_to_torch(monkeypatch):
    pytest.importorskip("triton")
    kernel_cannot_compile(monkeypatch, gemv)
    calls = counted(monkeypatch, gemv, "one_row")
    weight, x = torch.randn(8, 4), torch.randn(1, 4)
    torch.testing.assert_close(gemv.linear(x, weight), x @ weight.T)
    assert gemv.failed and "no compiler" in gemv.failed[0]
    torch.testing.assert_close(gemv.linear(x, weight), x @ weight.T)
    assert len(calls) == 1  # once failed, torch alone
