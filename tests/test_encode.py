"""kbd's encoder (kbd/model/encode.py) against transformers' forward: the same memory and
query vectors in float32 on the CPU, with the work it leaves out really left out, and no
recompiling for lengths and batch sizes met after the warm-up."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import DOCS, QUESTIONS

from kbd.model import encode
from kbd.model.checkpoint import ENCODER
from kbd.model.clara import Clara
from kbd.model.decode import StaticDecoder, fuse_layers

MIXED = [DOCS[0], "disk " * 200, "node", DOCS[3], "full " * 40, DOCS[1]]


@pytest.mark.parametrize("batch", [1, 2, 16])
def test_same_states_as_transformers(pair, batch, monkeypatch):
    fast, plain = pair
    monkeypatch.setattr(fast, "compress_batch_size", batch)
    torch.testing.assert_close(fast.compress(MIXED), plain.compress(MIXED), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(fast.encode_queries(QUESTIONS), plain.encode_queries(QUESTIONS),
                               atol=1e-5, rtol=1e-5)


def test_adapter_in_the_weights_equals_adapter_on_the_outputs(pair, monkeypatch):
    fast, _ = pair
    on_outputs = fast.compress(MIXED)
    monkeypatch.setattr(encode, "MERGE_ROWS", 1)
    merged = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: merged.append(1) or real(*a, **k))
    torch.testing.assert_close(fast.compress(MIXED), on_outputs, atol=1e-5, rtol=1e-5)
    assert merged  # the other path really ran


def test_each_batch_is_tokenized_as_the_first_layer_reaches_it(pair, monkeypatch):
    """The host tokenizes a batch after the GPU has the batch before it, not all first; the
    truncation counts still come back in the caller's order."""
    fast, plain = pair
    monkeypatch.setattr(fast, "compress_batch_size", 2)
    events = []
    tokenizer, encoder = fast.passage_tokenizer, fast.encoder
    real_ids, real_layer = tokenizer.encoder_ids, encoder._run_layer
    monkeypatch.setattr(tokenizer, "encoder_ids",
                        lambda texts: events.append(("tokenize", len(texts)))
                        or real_ids(texts))
    monkeypatch.setattr(encoder, "_run_layer", lambda layer, *a: events.append(
        ("layer", encoder.layers.index(layer))) or real_layer(layer, *a))
    long = "disk " * 300  # over doc_max_length
    texts = [*MIXED[:4], long]
    memory, dropped = fast.compress(texts, return_dropped=True)
    assert events[:4] == [("tokenize", 2), ("layer", 0), ("tokenize", 2), ("layer", 0)]
    assert events.count(("tokenize", 2)) + events.count(("tokenize", 1)) == 3
    assert dropped == [0, 0, 0, 0, 300 + 3 - (256 + 3)]
    torch.testing.assert_close(memory, plain.compress(texts), atol=1e-5, rtol=1e-5)


def test_last_layer_runs_its_mlp_at_memory_tokens_only(pair, monkeypatch):
    fast, _ = pair
    shapes = []
    act = fast.model.model.layers[-1].mlp.act_fn
    real = act.forward
    monkeypatch.setattr(act, "forward", lambda x: shapes.append(tuple(x.shape)) or real(x))
    fast.compress(DOCS[:3])
    assert shapes == [(3, fast.n_mem, fast.model.config.intermediate_size)]


def test_a_merged_projection_adds_into_the_stream_with_its_bias():
    h, x = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    weight, bias = torch.randn(4, 5), torch.randn(4)
    expected = h + x @ weight.T + bias
    out = encode.add_projection(h, x, (weight, bias, None, None), 2.0)
    torch.testing.assert_close(out, expected)
    assert out.data_ptr() == h.data_ptr()


class Graphs(list):
    """A torch.compile backend that keeps every graph it is given and runs it as it is."""

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> object:
        self.append(gm)
        return gm.forward


def compiled_clara(checkpoint, base_dir, monkeypatch) -> tuple[Clara, Graphs]:
    """A CPU Clara whose encoder and decoder are compiled as on a GPU, through a backend that
    keeps the graphs."""
    torch._dynamo.reset()
    graphs = Graphs()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=graphs, **kw))
    clara = Clara.load(checkpoint, base_dir, device="cpu")
    fused = fuse_layers(clara.model)
    clara.decoder = StaticDecoder(clara.model, fused, clara.model.generation_config.eos_token_id,
                                  clara.tokenizer.pad_token_id, compile_step=True)
    clara.encoder = encode.Encoder(clara.model, fused, list(clara.encoder.groups),
                                   clara.encoder.scale, clara.tokenizer.pad_token_id,
                                   compile_layers=True)
    return clara, graphs


def symbols(value) -> set:
    sizes = value.shape if isinstance(value, torch.Tensor) else [value]
    return set().union(*(s.node.expr.free_symbols for s in sizes if isinstance(s, torch.SymInt)))


def test_only_batch_and_length_are_symbolic(e2e_dir, base_dir, monkeypatch):
    """The model's sizes and scales are constants in the compiled layers. Taken as inputs (as
    torch.compile takes plain numbers with dynamic=True), the GPU kernels indexed by them ran
    ten times slower. Every symbolic number must be a size of a tensor going in."""
    clara, graphs = compiled_clara(e2e_dir, base_dir, monkeypatch)
    monkeypatch.setattr(encode, "MERGE_ROWS", 600)  # both ways of adding the adapter
    memory = clara.compress(MIXED + ["disk " * 250] * 5)
    clara.answer_from_memory(QUESTIONS[:2], memory, top_k=2, max_new_tokens=4)
    assert len(graphs) >= 3  # encoder, decoder prefill and step
    for gm in graphs:
        inputs = [n.meta["example_value"] for n in gm.graph.find_nodes(op="placeholder")]
        tensors = [v for v in inputs if isinstance(v, torch.Tensor)]
        numbers = [v for v in inputs if not isinstance(v, torch.Tensor)]
        assert all(v.dim() > 0 for v in tensors), "a number went in as a 0-d tensor"
        sizes = set().union(*(symbols(t) for t in tensors))
        assert all(isinstance(v, torch.SymInt) and symbols(v) <= sizes for v in numbers), numbers
    torch._dynamo.reset()


def test_warm_up_of_a_checkpoint_without_query_reasoner(make_checkpoint, base_dir,
                                                         monkeypatch):
    """An Instruct checkpoint cannot encode questions; its warm-up must not take that for a
    compiler failure and give up compiling."""
    clara, graphs = compiled_clara(make_checkpoint(training_stage="stage1_2"), base_dir,
                                   monkeypatch)
    clara.warm_up()
    assert clara.encoder.uncompile()  # it was still compiled
    assert graphs
    torch._dynamo.reset()


def test_no_recompiling_after_warm_up(e2e_dir, base_dir, monkeypatch):
    """The daemon's first question once ran 23 s on the GPU: a cache length of 256 after a
    warm-up at 128 (the head size) compiled the decode step again. Lengths and batch sizes
    after the warm-up's must reuse what it compiled."""
    clara, graphs = compiled_clara(e2e_dir, base_dir, monkeypatch)
    monkeypatch.setattr(encode, "MERGE_ROWS", 600)  # a "large batch" the tiny model reaches
    clara.warm_up()
    compiled = len(graphs)
    assert compiled > 0
    memory = clara.compress(MIXED + ["disk " * 250] * 5)
    for questions in (QUESTIONS[:1], QUESTIONS * 2):
        clara.answer_from_memory(questions, memory, top_k=5, max_new_tokens=150)
    assert len(graphs) == compiled
    torch._dynamo.reset()


def test_projections_add_into_the_residual_stream_where_it_lies(e2e_dir, base_dir):
    """Compiled, with the adapter merged (compression), the output and down projections still
    add into the layer's input in place: torch.compile would otherwise copy the stream to add
    into it, or add in a pass of its own, and each costs a read and a write of the stream on
    the GPU."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    clara = Clara.load(e2e_dir, base_dir, device="cpu")
    encoder = encode.Encoder(clara.model, fuse_layers(clara.model), list(clara.encoder.groups),
                             clara.encoder.scale, clara.tokenizer.pad_token_id,
                             compile_layers=True)
    rows, _ = clara.passage_tokenizer.encoder_ids(DOCS[:2])
    h, cos, sin, _ = encoder._inputs(rows, clara.n_mem)
    stream = h.clone()
    with torch.inference_mode():
        groups = tuple(encode.merged(g, encoder.scale) for g in encoder.groups[ENCODER][0])
        expected = encoder._layer(encoder.layers[0], groups, h.clone(), cos, sin, None, False)
        out, (code,) = run_and_get_code(encoder._run_layer, encoder.layers[0], groups, stream,
                                        cos, sin, None, False)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-3)  # fused norms round apart
    assert out.data_ptr() == stream.data_ptr()
    # o and down, into the stream as it came in, and no copy
    calls = re.findall(r"torch\.ops\.kbd\.add_product\.default\((\w+)", code)
    assert len(calls) == 2 and len(set(calls)) == 1, code
    assert re.fullmatch(r"arg\d+_1", calls[0]) and f"return ({calls[0]}, )" in code, code
    assert "copy_" not in code, code
    torch._dynamo.reset()


class OnePlusWeightNorm(torch.nn.Module):
    """An RMS norm that scales by 1 + weight (Gemma's form), attributes named as Llama's."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(size))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def test_only_plain_rms_norms_are_folded(pair):
    """Folding a norm into the products (on a GPU) needs weight · x / √(mean(x²) + ε)."""
    fast, _ = pair
    layer = fast.model.model.layers[0]
    assert encode.rms_epsilon(layer.input_layernorm) == fast.model.config.rms_norm_eps
    assert fast.encoder.epsilon == fast.model.config.rms_norm_eps
    assert fast.encoder.fold_norms
    assert encode.rms_epsilon(OnePlusWeightNorm(64)) is None
    assert encode.rms_epsilon(torch.nn.LayerNorm(64)) is None
