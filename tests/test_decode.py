"""StaticDecoder against transformers' generate(): the same greedy tokens in float32 on the
CPU, for batches of mixed prompt lengths, early ends, min_new_tokens and streaming."""

from __future__ import annotations

import queue

import pytest
import torch
from conftest import DOCS, QUESTIONS

from kbd.model.clara import Clara
from kbd.model.decode import StaticDecoder, fuse_layers, supports
from kbd.runtime.worker import QueueStreamer

MORE = ["which service failed after the restart ?", "disk full ?",
        "what happened to the block replication on the data node after the crash ?"]


def test_tiny_mistral_is_supported(pair):
    fast, _ = pair
    assert supports(fast.model)
    assert isinstance(fast.decoder, StaticDecoder)


def test_a_model_spread_over_devices_runs_through_transformers(pair, monkeypatch):
    """kbd's loops call the weights directly; accelerate's hooks move activations between
    devices only through the modules' own forward."""
    fast, _ = pair
    monkeypatch.setattr(fast.model, "hf_device_map", {"model.layers.0": 0, "lm_head": 1},
                        raising=False)
    assert not supports(fast.model)


def test_a_model_without_silu_runs_through_transformers(pair, monkeypatch):
    """kbd's products fuse SiLU(gate)·up; another activation keeps transformers' MLP."""
    fast, _ = pair
    monkeypatch.setattr(fast.model.config, "hidden_act", "gelu")
    assert not supports(fast.model)


@pytest.mark.parametrize("max_new_tokens", [1, 9, 40])
def test_same_text_as_generate(pair, max_new_tokens):
    fast, plain = pair
    questions = QUESTIONS + MORE  # prompts of different lengths: left padding
    memory = fast.compress(DOCS)
    selected = [memory[i % len(DOCS):][:3] for i in range(len(questions))]
    got = fast.generate(questions, selected, max_new_tokens)
    want = plain.generate(questions, selected, max_new_tokens)
    assert got == want
    assert any(text.strip() for text in got)


def test_same_answers_from_memory(pair):
    fast, plain = pair
    memory = fast.compress(DOCS)
    got = fast.answer_from_memory(QUESTIONS + MORE, memory, top_k=2, max_new_tokens=20)
    want = plain.answer_from_memory(QUESTIONS + MORE, memory, top_k=2, max_new_tokens=20)
    assert [(a.text, a.indices) for a in got] == [(a.text, a.indices) for a in want]


def test_end_of_sequence_and_min_new_tokens(e2e_dir, base_dir):
    """Make a token the model picks early an end token: rows stop there (pads follow), as
    generate() does, unless min_new_tokens forbids ending that early."""
    fast = Clara.load(e2e_dir, base_dir, device="cpu")
    memory = fast.compress(DOCS)[:2][None].expand(len(QUESTIONS), -1, -1, -1)
    prompts = [fast._chat("", f"Background:\n{fast._slots(2)}\n\nQuestion:{q}")
               for q in QUESTIONS]
    first = fast._generate(prompts, list(memory), 12)
    end = fast.tokenizer.convert_tokens_to_ids(first[0].split()[1])  # word-level: a word, a token
    fast.model.generation_config.eos_token_id = end
    fast.decoder = StaticDecoder(fast.model, fuse_layers(fast.model), end,
                                 fast.tokenizer.pad_token_id)
    plain = Clara.load(e2e_dir, base_dir, device="cpu")
    plain.decoder = None
    plain.model.generation_config.eos_token_id = end
    for min_new in (0, 6):
        got = fast._generate(prompts, list(memory), 12, min_new_tokens=min_new)
        want = plain._generate(prompts, list(memory), 12, min_new_tokens=min_new)
        assert got == want
    short = fast._generate(prompts, list(memory), 12)
    assert len(short[0]) < len(first[0])


def test_streamed_pieces_make_the_answer(pair):
    fast, _ = pair
    memory = fast.compress(DOCS)[:3]
    tokens: queue.Queue = queue.Queue()
    streamed = fast.generate(QUESTIONS[:1], [memory], 16,
                             streamer=QueueStreamer(fast.tokenizer, tokens))
    pieces = []
    while not tokens.empty():
        pieces.append(tokens.get())
    assert len(pieces) > 1
    assert "".join(pieces).strip() == streamed[0].strip()


def test_reused_buffers_give_fresh_results(pair):
    """A second call of the same shape reuses the cache buffers: nothing of the first leaks."""
    fast, plain = pair
    memory = fast.compress(DOCS)
    a = fast.generate(QUESTIONS, [memory[:2], memory[2:4]], 10)
    b = fast.generate(QUESTIONS[::-1], [memory[3:5], memory[:2]], 10)
    assert b == plain.generate(QUESTIONS[::-1], [memory[3:5], memory[:2]], 10)
    assert a == plain.generate(QUESTIONS, [memory[:2], memory[2:4]], 10)
    assert torch.equal(fast.compress(DOCS), memory)
