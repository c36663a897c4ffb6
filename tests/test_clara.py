"""The CLaRa runtime on tiny checkpoints: shapes, ids, adapters, fidelity to the reference
path, cached == uncached, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUESTIONS
from support.reference import ReferenceClara
from support.tiny import CHAT_TEMPLATE_NO_SYSTEM, write_base_model, write_checkpoint

from kbd.errors import CapabilityError, InputError
from kbd.model.checkpoint import DECODER, ENCODER, QUERY_REASONER
from kbd.model.clara import RANK_CHUNK_ROWS, Clara, memory_from_bytes, memory_to_bytes
from kbd.model.tokens import PassageTokenizer

VARIANTS = {
    "compression-16": {},
    "compression-128": {"compr_rate": 128},
    "one-mem-token": {"different_mem_tokens": False},
    "no-sep": {"sep": False},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, make_checkpoint, base_dir):
    folder = make_checkpoint(**VARIANTS[request.param])
    return Clara.load(folder, base_dir, device="cpu"), ReferenceClara(folder, base_dir)


class TestShapesAndIds:
    def test_memory_and_query_shapes(self, variant):
        clara, _ = variant
        n_mem = 256 // clara.config.compr_rate
        assert clara.n_mem == n_mem
        assert clara.compress(DOCS).shape == (len(DOCS), n_mem, 64)
        assert clara.encode_queries(QUESTIONS).shape == (2, n_mem * 64)

    def test_encoder_input_layout(self, e2e):
        (row,), (dropped,) = e2e.passage_tokenizer.encoder_ids(["disk full"])
        tok = e2e.tokenizer
        enc, sep = tok.convert_tokens_to_ids(["<ENC>", "<SEP>"])
        disk, full = tok.convert_tokens_to_ids(["disk", "full"])
        assert row == [enc, tok.bos_token_id, disk, full, tok.eos_token_id, *e2e.mem_ids]
        assert dropped == 0
        # CLaRa's tokens follow the base vocabulary: MEM0..MEM15, <AE>, <ENC>, <SEP>
        assert e2e.mem_ids == list(range(512, 528))
        assert (enc, sep) == (529, 530)
        assert tok.padding_side == "left"
        assert tok.pad_token_id == tok.bos_token_id

    def test_repeated_mem_token(self, make_checkpoint, base_dir):
        clara = Clara.load(make_checkpoint(different_mem_tokens=False), base_dir, device="cpu")
        assert clara.mem_ids == [512] * 16
        assert len(clara.tokenizer) == 512 + 4


class TestFidelity:
    def test_answer_matches_reference(self, variant):
        clara, ref = variant
        docs = [DOCS, [d + " again" for d in DOCS]]
        texts, ref_idx, ref_scores = ref.generate_from_questions(QUESTIONS, docs, 12)
        answers = clara.answer(QUESTIONS, docs, max_new_tokens=12)
        assert [a.indices for a in answers] == ref_idx.tolist()
        assert [a.text for a in answers] == texts
        got = torch.tensor([a.scores for a in answers])
        torch.testing.assert_close(got, ref_scores, atol=1e-4, rtol=1e-4)

    def test_memory_matches_reference(self, variant):
        clara, ref = variant
        torch.testing.assert_close(clara.compress(DOCS), ref.states(DOCS, ENCODER),
                                   atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(clara.encode_queries(QUESTIONS),
                                   ref.states(QUESTIONS, QUERY_REASONER).flatten(1),
                                   atol=2e-3, rtol=1e-3)

    def test_top_k_option(self, e2e):
        (answer,) = e2e.answer(QUESTIONS[:1], [DOCS], top_k=2, max_new_tokens=4)
        assert len(answer.indices) == 2 and answer.scores[0] >= answer.scores[1]
        (few,) = e2e.answer(QUESTIONS[:1], [DOCS[:3]], max_new_tokens=4)  # k > candidates
        assert sorted(few.indices) == [0, 1, 2]

    def test_deterministic(self, e2e):
        first = e2e.answer(QUESTIONS, [DOCS, DOCS], max_new_tokens=8)
        assert e2e.answer(QUESTIONS, [DOCS, DOCS], max_new_tokens=8) == first


class TestCachedPath:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_bytes_round_trip(self, e2e, dtype):
        memory = e2e.compress(DOCS).to(dtype)
        blobs = [memory_to_bytes(m) for m in memory]
        back = torch.stack([memory_from_bytes(b, dtype, memory.shape[1:]) for b in blobs])
        assert torch.equal(back, memory)

    def test_cached_equals_uncached(self, variant):
        clara, _ = variant
        memory = clara.compress(DOCS)
        stored = torch.stack([memory_from_bytes(memory_to_bytes(m), memory.dtype,
                                                memory.shape[1:]) for m in memory])
        cached = clara.answer_from_memory(QUESTIONS, stored, max_new_tokens=10)
        uncached = clara.answer(QUESTIONS, [DOCS, DOCS], max_new_tokens=10)
        assert [(a.indices, a.text) for a in cached] == [(a.indices, a.text) for a in uncached]
        torch.testing.assert_close(torch.tensor([a.scores for a in cached]),
                                   torch.tensor([a.scores for a in uncached]))

    def test_allowed_rows_restrict_the_choice(self, e2e):
        memory = e2e.compress(DOCS)
        rows = torch.tensor([1, 4, 6])
        (restricted, free) = e2e.answer_from_memory(QUESTIONS[:1] * 2, memory, top_k=2,
                                                    max_new_tokens=5, allowed=[rows, None])
        (subset,) = e2e.answer(QUESTIONS[:1], [[DOCS[i] for i in rows]], top_k=2,
                               max_new_tokens=5)
        assert restricted.indices == [rows[i].item() for i in subset.indices]
        assert restricted.text == subset.text
        assert set(restricted.indices) <= {1, 4, 6}
        assert len(free.indices) == 2

    def test_compressed_once(self, e2e, monkeypatch):
        seen = []
        original = e2e._memory_states
        monkeypatch.setattr(e2e, "_memory_states",
                            lambda rows, adapter: seen.append((len(rows), adapter))
                            or original(rows, adapter))
        e2e.answer(QUESTIONS, [DOCS, DOCS[::-1]], max_new_tokens=2)
        assert seen == [(len(DOCS), ENCODER), (2, QUERY_REASONER)]

    def test_rank_in_chunks(self):
        torch.manual_seed(0)
        memory = torch.randn(RANK_CHUNK_ROWS * 2 + 5, 4, 8)
        queries = torch.randn(3, 32)
        idx, scores = Clara.rank(queries, memory.to(torch.bfloat16), 7)
        exact = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(
            memory.to(torch.bfloat16).float().flatten(1), dim=-1).T
        want_scores, want_idx = exact.topk(7)
        assert torch.equal(idx, want_idx)
        torch.testing.assert_close(scores, want_scores)
        assert (scores[:, :-1] >= scores[:, 1:]).all()


class TestAdapters:
    def test_each_adapter_changes_the_states(self, e2e, e2e_dir, base_dir):
        """Every adapter changes what the model computes, and the merged decoder adapter
        computes what PEFT's unmerged one does."""
        states = {name: e2e._memory_states(DOCS[:2], name)[0]
                  for name in (ENCODER, DECODER, QUERY_REASONER)}
        ref = ReferenceClara(e2e_dir, base_dir)
        torch.testing.assert_close(states[DECODER], ref.states(DOCS[:2], DECODER),
                                   atol=2e-3, rtol=1e-3)
        ref.model.disable_adapters()
        with torch.no_grad():
            ids, mask = ref._encode(DOCS[:2])
            plain = ref.model(input_ids=ids, attention_mask=mask,
                              output_hidden_states=True).hidden_states[-1]
        plain = plain[:, -e2e.n_mem:]
        outputs = [plain, *states.values()]
        for i in range(len(outputs)):
            for j in range(i + 1, len(outputs)):
                assert not torch.allclose(outputs[i], outputs[j], atol=1e-3)
        assert all(layer.active is None for layer in e2e._lora)

    def test_decoder_adapter_is_used_for_generation(self, pair, monkeypatch):
        """transformers' generate() runs the layers with the decoder adapter active; kbd's
        decoder reads the weights it is merged into and gives the same text
        (tests/test_decode.py)."""
        _, plain = pair
        memory = plain.compress(DOCS[:2])
        active = []
        layer = plain.model.model.layers[0].self_attn.o_proj
        original = layer.forward
        monkeypatch.setattr(layer, "forward", lambda x: active.append(layer.active)
                            or original(x))
        plain.generate(QUESTIONS[:1], [memory], max_new_tokens=2)
        assert set(active) == {DECODER}

    def test_no_logits_while_compressing(self, e2e, monkeypatch):
        def no_logits(*_):
            raise AssertionError("lm_head ran during compression")

        monkeypatch.setattr(e2e.model.lm_head, "forward", no_logits)
        e2e.compress(DOCS)
        e2e.encode_queries(QUESTIONS)

    def test_little_padding(self, e2e, monkeypatch):
        """Rows of similar length share a batch, so padding stays small."""
        widths = []
        embed = e2e.model.get_input_embeddings()
        original = embed.forward
        monkeypatch.setattr(embed, "forward", lambda ids: widths.append(tuple(ids.shape))
                            or original(ids))
        monkeypatch.setattr(e2e, "compress_batch_size", 2)
        docs = ["disk " * 100, "full", "disk " * 101, "node"]
        e2e.compress(docs)
        rows, _ = e2e.passage_tokenizer.encoder_ids(docs)
        assert len(widths) == 2
        assert sum(b * w for b, w in widths) - sum(len(r) for r in rows) <= 2


class TestBadInput:
    @pytest.mark.parametrize("passages", [["ok", ""], ["ok", "  \n\t "], []])
    def test_empty_passage(self, e2e, passages):
        with pytest.raises(InputError, match="empty|no passage"):
            e2e.compress(passages)

    @pytest.mark.parametrize("questions", [[""], ["   "], "a string"])
    def test_bad_question(self, e2e, questions):
        with pytest.raises(InputError):
            e2e.encode_queries(questions)

    def test_overlong_passage_truncated_like_reference(self, e2e, e2e_dir, base_dir):
        long = " ".join(["disk"] * 270)  # 270 passage tokens, doc_max_length is 256
        memory, dropped = e2e.compress([long, "full"], return_dropped=True)
        assert dropped == [270 + 3 - (256 + 3), 0]
        ref = ReferenceClara(e2e_dir, base_dir)
        torch.testing.assert_close(memory[:1], ref.states([long], ENCODER), atol=2e-3,
                                   rtol=1e-3)
        exact = " ".join(["disk"] * 256)
        assert e2e.compress([exact], return_dropped=True)[1] == [0]

    def test_mixed_lengths_batch_equals_single(self, e2e):
        docs = [DOCS[0], "disk " * 200, "node", DOCS[3]]
        batch = e2e.compress(docs)
        single = torch.cat([e2e.compress([d]) for d in docs])
        torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)

    def test_rank_rejects_foreign_memory(self, e2e):
        with pytest.raises(InputError, match="different models"):
            Clara.rank(e2e.encode_queries(QUESTIONS), torch.randn(3, 2, 64), 2)

    def test_mismatched_lists(self, e2e):
        with pytest.raises(InputError, match="candidate lists"):
            e2e.answer(QUESTIONS, [DOCS])
        with pytest.raises(InputError, match="no candidate"):
            e2e.answer(QUESTIONS[:1], [[]])


class TestStages:
    def test_instruct_answers_but_cannot_rank(self, make_checkpoint, base_dir):
        clara = Clara.load(make_checkpoint(training_stage="stage1_2"), base_dir, device="cpu")
        assert clara.config.stage_name == "instruct"
        (text,) = clara.answer_given(QUESTIONS[:1], [DOCS[:3]], max_new_tokens=5)
        assert isinstance(text, str) and text
        with pytest.raises(CapabilityError, match="query_reasoner_adapter"):
            clara.answer(QUESTIONS[:1], [DOCS])
        with pytest.raises(CapabilityError):
            clara.encode_queries(QUESTIONS)

    def test_base_paraphrases(self, make_checkpoint, base_dir):
        clara = Clara.load(make_checkpoint(training_stage="stage1"), base_dir, device="cpu")
        texts = clara.paraphrase(DOCS[:3], max_new_tokens=6)
        assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
        with pytest.raises(CapabilityError):
            clara.answer(QUESTIONS[:1], [DOCS])

    def test_template_without_system_role(self, tmp_path):
        base = write_base_model(tmp_path / "base", chat_template=CHAT_TEMPLATE_NO_SYSTEM)
        clara = Clara.load(write_checkpoint(tmp_path / "ck", base), base, device="cpu")
        prompt = clara._chat("SYSTEM TEXT", "USER TEXT")
        assert prompt == "<s>[INST] SYSTEM TEXT\nUSER TEXT [/INST]"
        assert clara.answer(QUESTIONS[:1], [DOCS], max_new_tokens=3)[0].indices


class TestPassageTokenizer:
    def test_loads_without_weights(self, e2e, e2e_dir, tmp_path):
        bare = tmp_path / "no-weights"
        bare.mkdir()
        for f in e2e_dir.iterdir():  # the tokenizer needs config + tokenizer files only
            (bare / f.name).symlink_to(f)
        tok = PassageTokenizer.load(bare)
        assert tok.identity == e2e.passage_tokenizer.identity
        assert tok.count(["disk full", "disk " * 300]) == [2, 300]
        assert tok.max_tokens == 256

    def test_identity_follows_limit(self, make_checkpoint, e2e):
        other = PassageTokenizer.load(make_checkpoint(doc_max_length=128, compr_rate=16))
        assert other.identity != e2e.passage_tokenizer.identity
