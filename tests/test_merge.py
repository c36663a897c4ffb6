"""The adapter-merging kernel (kbd/model/kernels/merge.py), run on the CPU by Triton's interpreter,
against torch.addmm; and the encoder merging once per layer for a whole wave of batches.
Merged weights give transformers' states as other sums in another order: float32 results a
few 1e-5 apart."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import DOCS, counted
from support.tiny import WORDS

from kbd.model import encode, kernels
from kbd.model.kernels import merge

MIXED = [DOCS[0], "disk " * 200, "node", DOCS[3], "full " * 40, DOCS[1], DOCS[2], "a b c"]


@pytest.fixture
def interpreted(monkeypatch):
    """kbd.model.kernels.merge with its kernel under Triton's interpreter (CPU tensors)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kernels, "INTERPRETED", True)
    importlib.reload(merge)
    yield merge
    monkeypatch.delenv("TRITON_INTERPRET")
    importlib.reload(merge)


@pytest.mark.parametrize(("rows", "columns", "rank"), [(70, 300, 5), (128, 256, 32),
                                                       (96, 520, 96), (1, 17, 1)])
@pytest.mark.parametrize("scaled", [False, True])
def test_kernel_equals_addmm(interpreted, rows, columns, rank, scaled):
    """Columns scaled too where a norm's weight is folded in: (W + s·B A)·diag(g)."""
    torch.manual_seed(rows + columns + rank)
    w, b, a = torch.randn(rows, columns), torch.randn(rows, rank), torch.randn(rank, columns)
    g = torch.rand(columns) + 0.5 if scaled else None
    assert kernels.usable(w.device, interpreted.failed)
    got = interpreted.add_product(w, b, a, 2.0, g)
    want = torch.addmm(w, b, a, alpha=2.0) * (1 if g is None else g)
    # float32 sums of up to 96 products of magnitude ~20, in the kernel's order or BLAS's
    # (which follows its thread count): ~1e-5 apart, once seen at 1.3e-5
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(merge.by_torch(w, b, a, 2.0, g), want, atol=5e-5, rtol=1e-5)
    assert got.data_ptr() != w.data_ptr()  # a copy: the weight itself is left as it was


def test_a_norm_folded_where_there_is_no_adapter(interpreted, monkeypatch):
    """A group the adapter leaves out still gets the norm's weight in its columns, by the same
    kernel, and the weight itself is left as it was."""
    w, g = torch.randn(70, 300), torch.rand(300) + 0.5
    kept = w.clone()
    calls = counted(monkeypatch, interpreted, "add_product")
    got, bias, a_parts, b_parts = encode.merged((w, None, None, None), 2.0, g)
    torch.testing.assert_close(got, w * g)
    assert calls and bias is None and a_parts is None and b_parts is None
    assert torch.equal(w, kept)
    assert encode.merged((w, None, None, None), 2.0) == (w, None, None, None)


def test_compression_through_the_kernel(pair, interpreted, monkeypatch):
    fast, plain = pair
    monkeypatch.setattr(encode, "MERGE_ROWS", 1)
    calls = counted(monkeypatch, interpreted, "add_product")
    torch.testing.assert_close(fast.compress(MIXED), plain.compress(MIXED), atol=1e-4,
                               rtol=1e-4)
    assert calls


def test_one_merge_per_layer_for_a_wave_of_batches(pair, monkeypatch):
    """Eight passages in batches of two, waves of two batches: four batches, two waves, so
    each layer's four weight groups get the adapter twice, not four times."""
    fast, plain = pair
    passages = [" ".join(WORDS[i:i + 30]) for i in range(8)]
    monkeypatch.setattr(fast, "compress_batch_size", 2)
    monkeypatch.setattr(encode, "MERGE_ROWS", 1)
    # the states _waves() counts for two rows of the longest possible length (passages are
    # not tokenized when the waves are made): twice the residual stream, float32
    per_batch = 2 * 2 * fast.passage_tokenizer.longest_row * fast.model.config.hidden_size * 4
    monkeypatch.setattr(encode, "WAVE_BYTES", 2 * per_batch)
    calls = counted(monkeypatch, merge, "add_product")
    torch.testing.assert_close(fast.compress(passages), plain.compress(passages), atol=1e-4,
                               rtol=1e-4)
    assert len(calls) == 2 * 4 * len(fast.model.model.layers)


def test_a_kernel_that_cannot_run_falls_back_to_addmm(interpreted, monkeypatch):
    """A GPU Triton cannot compile for: addmm from then on, and the reason kept."""

    class Uncompilable:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("no ptxas for this GPU")
            return launch

    monkeypatch.setattr(interpreted, "_add_product", Uncompilable())
    monkeypatch.setattr(interpreted, "failed", [])
    w, b, a = torch.randn(8, 8), torch.randn(8, 2), torch.randn(2, 8)
    torch.testing.assert_close(interpreted.add_product(w, b, a, 2.0),
                               torch.addmm(w, b, a, alpha=2.0))
    assert "no ptxas" in interpreted.failed[0]
    assert not kernels.usable(w.device, interpreted.failed)
