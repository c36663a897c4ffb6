"""The products' kernel (kbd/model/kernels/products.py) on the
CPU, by Triton's interpreter: the same
numbers as torch's steps at sizes off its tiles, for SiLU(gate)·up and for the rotary
embedding, and compression through it the same memory as transformers' forward. Run by
tests/test_products.py with TRITON_INTERPRET=1 set before triton is imported."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DOCS, counted

from kbd.model import encode
from kbd.model.decode import rotate
from kbd.model.kernels import products

assert os.environ.get("TRITON_INTERPRET") == "1", "run by tests/test_products.py"


@pytest.fixture
def kernel_calls(monkeypatch):
    yield counted(monkeypatch, products, "gate_up")
    assert not products.failed, products.failed


@pytest.fixture
def uneven_norms(pair):
    """Norm weights other than the random model's ones (which folding would not move), the
    same in both models of the pair; put back after."""
    norms = [norm.weight for clara in pair for layer in clara.model.model.layers
             for norm in (layer.input_layernorm, layer.post_attention_layernorm)]
    kept = [weight.detach().clone() for weight in norms]
    per_model = len(norms) // 2
    with torch.no_grad():
        for i, weight in enumerate(norms):  # norm i of each model from seed i
            seeded = torch.Generator().manual_seed(i % per_model)
            weight.copy_(1 + 0.5 * torch.randn(weight.shape, generator=seeded))
    yield
    with torch.no_grad():
        for weight, old in zip(norms, kept, strict=True):
            weight.copy_(old)


@pytest.fixture
def rotary_calls(monkeypatch):
    yield counted(monkeypatch, products, "qkv_rotary")
    assert not products.failed, products.failed


# rows, depth and outputs off the 128 x 128 x 64 tiles (masked by TMA), and over several
@pytest.mark.parametrize(("rows", "depth", "half"), [(37, 72, 40), (300, 64, 136),
                                                     (1, 8, 8), (129, 200, 264)])
def test_kernel_equals_torch(kernel_calls, rows, depth, half):
    torch.manual_seed(rows + depth + half)
    weight = torch.randn(2 * half, depth) / depth**0.5
    x = torch.randn(1, rows, depth)
    got = products.swiglu(x, weight)
    assert kernel_calls, "the kernel did not run"
    assert got.shape == (1, rows, half)
    torch.testing.assert_close(got, products.swiglu_reference(x, weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("half", "depth"), [(12, 10), (12, 16), (16, 10)])
def test_sizes_tma_cannot_describe_go_through_torch(kernel_calls, half, depth):
    """Rows of a 16-bit x, weight or output that are not whole 16-byte steps."""
    weight, x = torch.randn(2 * half, depth), torch.randn(3, depth)
    torch.testing.assert_close(products.swiglu(x, weight), products.swiglu_reference(x, weight))
    assert not kernel_calls


# rows off the 128-row tiles and positions wrapping mid-tile; heads of 32, 64 and 128 columns
# (8, 4 and 2 to a 256-column tile); tiles of q/k before one of v
@pytest.mark.parametrize(("rows", "width", "depth", "head", "heads", "kv_heads"), [
    (300, 7, 72, 32, 6, 2), (37, 37, 64, 64, 2, 2), (130, 65, 16, 128, 2, 2),
    (1, 1, 8, 32, 4, 4)])
def test_rotary_kernel_equals_torch(rotary_calls, rows, width, depth, head, heads, kv_heads):
    torch.manual_seed(rows + depth + head)
    rotated = (heads + kv_heads) * head
    assert products.rotary_fits(torch.float32, depth, rotated + kv_heads * head, rotated, head)
    weight = torch.randn(rotated + kv_heads * head, depth) / depth**0.5
    x = torch.randn(rows, width, depth)  # rows of `width` positions each
    angles = torch.rand(1, width, head // 2) * 6
    angles = torch.cat((angles, angles), dim=-1)
    got = products.qkv_rotary(x, weight, angles.cos(), angles.sin(), rotated, head)
    assert rotary_calls, "the kernel did not run"
    y = x @ weight.T
    q_k = y[..., :rotated].reshape(rows, width, -1, head).transpose(1, 2)
    want = rotate(q_k, angles.cos(), angles.sin()).transpose(1, 2).reshape(rows, width, -1)
    torch.testing.assert_close(got[..., :rotated], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[..., rotated:], y[..., rotated:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("rows", "width"), [(37, 72), (1, 8), (9, 1500)])
def test_row_scales_equal_torch(rows, width):
    """Rows off a program's 4 and widths off its 1,024-column loads, masked."""
    h = torch.randn(rows, width) * 3 + 1
    torch.testing.assert_close(products.row_scales(h, 1e-5),
                               torch.rsqrt(h.pow(2).mean(-1) + 1e-5))
    assert not products.failed, products.failed


def test_heads_across_tiles_or_v_in_a_q_k_tile_do_not_fit():
    assert not products.rotary_fits(torch.float32, 64, 384, 320, 32)  # v from column 320
    assert not products.rotary_fits(torch.float32, 64, 1536, 1024, 512)  # a head over 2 tiles
    assert not products.rotary_fits(torch.float32, 64, 288, 192, 48)
    assert not products.rotary_fits(torch.float32, 60, 384, 256, 32)  # 120-byte rows


@pytest.mark.parametrize("fold", [True, False])
def test_compression_through_the_kernel(pair, uneven_norms, kernel_calls, rotary_calls,
                                        monkeypatch, fold):
    """Adapters merged into the weights (as for a batch of passages on a GPU), so q/k/v and
    the MLP take the kernel (at tiles small enough for the tiny model's 6 heads of 16), with
    the norms folded into them or not: the memory of transformers' forward with the adapter
    beside it."""
    fast, plain = pair
    scale_calls = counted(monkeypatch, products, "row_scales")
    assert fast.encoder.gate_up_kernel and fast.encoder.fold_norms
    assert not fast.encoder.qkv_kernel, "96 q/k columns are not whole 256-column tiles"
    monkeypatch.setattr(products, "TILES", products.Tiles(rows=32, columns=16, depth=16))
    d = fast.encoder.dims
    assert products.rotary_fits(torch.float32, fast.model.config.hidden_size,
                                sum(d.qkv_split), fast.encoder.rotated, d.head_dim)
    monkeypatch.setattr(fast.encoder, "qkv_kernel", True)
    monkeypatch.setattr(fast.encoder, "fold_norms", fold)
    monkeypatch.setattr(encode, "MERGE_ROWS", 1)
    torch.testing.assert_close(fast.compress(DOCS), plain.compress(DOCS), atol=1e-4,
                               rtol=1e-4)
    layers = len(fast.model.model.layers)
    assert len(kernel_calls) == len(rotary_calls) == layers, "one call each a layer"
    # folded, each call gets the rows' scales, and the residual stream itself, not normed
    assert all((call[-1] is not None) == fold for call in kernel_calls + rotary_calls)
    assert len(scale_calls) == (2 * layers if fold else 0)


def test_questions_keep_the_adapter_beside_the_product(pair, kernel_calls, rotary_calls,
                                                       monkeypatch):
    """A few short questions are not worth merging the adapter: no kernel, same vectors."""
    fast, plain = pair
    monkeypatch.setattr(fast.encoder, "qkv_kernel", True)
    torch.testing.assert_close(fast.encode_queries(DOCS[:2]), plain.encode_queries(DOCS[:2]),
                               atol=1e-4, rtol=1e-4)
    assert not kernel_calls and not rotary_calls
