"""CLaRa inference: compress passages once, encode questions, rank, generate.

kbd implements the model itself on top of a plain transformers causal LM (no remote code):
three LoRA adapters share one base. The encoder adapter turns a passage into n_mem memory
vectors (the final hidden states at appended memory tokens); the query reasoner turns a
question into a vector of the same shape; cosine ranking picks the top-k memories; the decoder
adapter answers from a chat prompt whose memory-token embeddings are replaced by them.

Shapes: n passages, b questions, k selected, m = n_mem memory tokens, d = hidden size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jinja2.exceptions import TemplateError
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from kbd.errors import CapabilityError, CheckpointError, InputError
from kbd.model.checkpoint import (
    DECODER,
    ENCODER,
    QUERY_REASONER,
    Checkpoint,
    attention_implementation,
    check_base_shape,
    describe,
    fingerprint,
    load_tokenizer,
    pick_device,
    read_base_config,
    read_checkpoint,
    resolve_base,
)
from kbd.model.decode import StaticDecoder, fuse_layers, supports
from kbd.model.encode import MERGE_ROWS, Encoder, to_device
from kbd.model.index import MemoryIndex
from kbd.model.tokens import PassageTokenizer

log = logging.getLogger("kbd.model")

ANSWER_SYSTEM = (
    "You are a helpful assistant. Your task is to extract relevant information from provided "
    "documents and to answer to questions as briefly as possible."
)
PARAPHRASE_SYSTEM = (
    "You are a helpful assistant. Your task is follow the instructions to paraphrase the "
    "background information."
)
LORA_SCALE = 2.0  # lora_alpha / r: alpha = 2r in every published checkpoint
PROMPT_MAX_TOKENS = 1024  # the authors truncate decoder prompts here
RANK_CHUNK_ROWS = 2048  # rows of memory turned to float32 at once while ranking


@dataclass
class Answer:
    text: str
    indices: list[int]  # chosen candidates, best first
    scores: list[float]  # their cosine scores


class LoraLinear(nn.Module):
    """A linear layer with named LoRA adapters of which at most one is active.

    Same arithmetic as PEFT: base(x) + B(A(x)) * alpha / r, with alpha = 2r. One adapter (the
    decoder's, which every generated token uses) is merged into the base weights, so decoding
    pays nothing per layer; each other adapter then carries its difference from it, a LoRA of
    rank 2r: [A; A_merged] and [B, -B_merged]."""

    def __init__(self, base: nn.Linear, scale: float):
        super().__init__()
        self.base = base
        self.scale = scale
        self.active: str | None = None
        self.merged: str | None = None
        self.names: list[str] = []

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        w = self.base.weight
        self.register_buffer(f"{name}_A", a.to(w.device, w.dtype), persistent=False)
        self.register_buffer(f"{name}_B", b.to(w.device, w.dtype), persistent=False)
        self.names.append(name)

    @torch.no_grad()
    def merge(self, name: str, others: list[str]) -> None:
        """Fold adapter `name` into the weights; `others` (every other adapter of the model,
        present on this layer or not) become differences from it."""
        a, b = getattr(self, f"{name}_A"), getattr(self, f"{name}_B")
        w = self.base.weight
        w.copy_((w.float() + (b.float() @ a.float()) * self.scale).to(w.dtype))
        for other in others:
            if other in self.names:
                a_other, b_other = getattr(self, f"{other}_A"), getattr(self, f"{other}_B")
                setattr(self, f"{other}_A", torch.cat([a_other, a]))
                setattr(self, f"{other}_B", torch.cat([b_other, -b], dim=1))
            else:
                self.add(other, a, -b)
        delattr(self, f"{name}_A")
        delattr(self, f"{name}_B")
        self.names.remove(name)
        self.merged = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.active is None or self.active == self.merged:
            return y
        a, b = getattr(self, f"{self.active}_A"), getattr(self, f"{self.active}_B")
        # accumulate into the base output inside the GEMM: no full-size temporaries
        y.view(-1, y.shape[-1]).addmm_(F.linear(x, a).view(-1, a.shape[0]), b.T,
                                       alpha=self.scale)
        return y


def install_lora(model: nn.Module, checkpoint: Checkpoint) -> list[LoraLinear]:
    """Wrap every adapted linear layer of the model, the decoder adapter merged into the
    weights; returns the wrappers."""
    layers: dict[str, LoraLinear] = {}
    for adapter, pairs in checkpoint.adapters.items():
        for path, (a, b) in pairs.items():
            if path not in layers:
                parent, _, child = path.rpartition(".")
                layers[path] = LoraLinear(model.get_submodule(path), LORA_SCALE)
                setattr(model.get_submodule(parent), child, layers[path])
            layers[path].add(adapter, a, b)
    others = [name for name in checkpoint.adapters if name != DECODER]
    for layer in layers.values():
        if DECODER in layer.names:
            layer.merge(DECODER, others)
    return list(layers.values())


def memory_to_bytes(memory: torch.Tensor) -> bytes:
    """Raw bytes of a memory tensor, as the store keeps them (bf16 survives via int16)."""
    t = memory.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def memory_from_bytes(data: bytes, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    raw_dtype = torch.int16 if dtype == torch.bfloat16 else dtype
    t = torch.frombuffer(bytearray(data), dtype=raw_dtype).reshape(tuple(shape))
    return t.view(dtype) if dtype == torch.bfloat16 else t


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise InputError(f"{what}s must be a list of strings, not one string")
    if not texts:
        raise InputError(f"no {what}s given")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"{what} {i} is empty or whitespace only")


class Clara:
    """A loaded CLaRa checkpoint on top of its base model."""

    def __init__(self, checkpoint: Checkpoint, model: PreTrainedModel, tokenizer, fp: str):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.path = checkpoint.path
        self.fingerprint = fp
        self.adapters = sorted(checkpoint.adapters)
        self.tokenizer = tokenizer
        self.passage_tokenizer = PassageTokenizer(tokenizer, checkpoint.config)
        self.model = model.eval()
        self.n_mem = self.config.n_mem
        self.hidden = model.config.hidden_size
        self.mem_ids = self.passage_tokenizer.mem_ids
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.compress_batch_size = 16 if self.device.type == "cpu" else 64
        self.warm_up_s = 0.0
        self._lora = install_lora(model, checkpoint)
        # None: transformers' forward and generate(), for models kbd's own loops do not know
        self.decoder: StaticDecoder | None = None
        self.encoder: Encoder | None = None
        if supports(model):
            compile_them = self.device.type == "cuda"
            fused = fuse_layers(model)
            self.decoder = StaticDecoder(model, fused, model.generation_config.eos_token_id,
                                         tokenizer.pad_token_id, compile_step=compile_them)
            self.encoder = Encoder(model, fused, [ENCODER, QUERY_REASONER], LORA_SCALE,
                                   tokenizer.pad_token_id, compile_layers=compile_them)
        if tokenizer.chat_template is None:
            raise CheckpointError(f"{checkpoint.path}: the tokenizer has no chat template")

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        base_model: str | Path | PreTrainedModel | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> Clara:
        """Load a checkpoint folder onto a local base model folder (or an already built model,
        as the benchmarks do). Everything is verified before the base's weights are read."""
        ckpt = read_checkpoint(checkpoint)
        if isinstance(base_model, PreTrainedModel):
            if not ckpt.has_tokenizer:
                raise CheckpointError(f"{ckpt.path}: a prebuilt base needs tokenizer files here")
            model, base_dir = base_model, None
            tokenizer = load_tokenizer(ckpt, ckpt.path)
            check_base_shape(ckpt, model.config, ckpt.path)
        else:
            base_dir = resolve_base(ckpt, base_model)
            tokenizer = load_tokenizer(ckpt, base_dir)
            check_base_shape(ckpt, read_base_config(base_dir), base_dir)
            device, torch_dtype = pick_device(device, dtype)
            multi_gpu = device == "cuda" and torch.cuda.device_count() > 1
            model = AutoModelForCausalLM.from_pretrained(
                base_dir,
                dtype=torch_dtype,
                attn_implementation=attention_implementation(device),
                # accelerate spreads the layers over several GPUs when one is too small
                device_map="auto" if multi_gpu else {"": device},
            )
        model.resize_token_embeddings(ckpt.embed.shape[0], mean_resizing=False)
        for module, weight in ((model.get_input_embeddings(), ckpt.embed),
                               (model.get_output_embeddings(), ckpt.lm_head)):
            module.weight.data.copy_(weight.to(module.weight.dtype))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        clara = cls(ckpt, model, tokenizer, fingerprint(ckpt.path, base_dir))
        if clara.device.type == "cuda":
            clara.warm_up()
        return clara

    # -- adapters ------------------------------------------------------------------------

    @contextmanager
    def _adapter(self, name: str) -> Iterator[None]:
        for layer in self._lora:
            layer.active = name
        try:
            yield
        finally:
            for layer in self._lora:
                layer.active = None

    def _require(self, adapter: str, action: str) -> None:
        if adapter not in self.adapters:
            raise CapabilityError(
                f"{self.path}: a {self.config.stage_name} checkpoint "
                f"({self.config.training_stage}) has no {adapter}, so it cannot {action}",
                hint="use a CLaRa E2E checkpoint (training_stage stage2) to rank passages",
            )

    # -- encoding ------------------------------------------------------------------------

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows],
                            device=self.device)
        return ids, mask

    @torch.inference_mode()
    def _memory_states(self, texts: Sequence[str], adapter: str) -> tuple[torch.Tensor, list[int]]:
        """Final hidden states at the memory positions, [n, m, d], and the tokens each text
        lost to doc_max_length. Runs the transformer body only (no vocabulary logits) on
        batches of texts of similar length (little padding), in characters: that is known
        before tokenizing, so each batch can be tokenized while the GPU computes the last."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        size = self.compress_batch_size
        batches = [[texts[i] for i in order[start:start + size]]
                   for start in range(0, len(order), size)]
        cut: list[int] = []  # in the order tokenized, that of `order`

        def tokenize(batch: Sequence[str]) -> list[list[int]]:
            rows, dropped = self.passage_tokenizer.encoder_ids(batch)
            cut.extend(dropped)
            return rows

        if self.encoder is not None and adapter in self.encoder.groups:
            states = self.encoder.memory_states(batches, tokenize,
                                                self.passage_tokenizer.longest_row,
                                                self.n_mem, adapter)
        else:
            states = []
            with self._adapter(adapter):
                for batch in batches:
                    ids, mask = self._left_pad(tokenize(batch))
                    # positions count real tokens only; RoPE is relative, so this equals the
                    # reference's absolute positions over its fixed-width padding
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    hidden = self.model.base_model(
                        input_ids=ids, attention_mask=mask, position_ids=positions,
                        use_cache=False).last_hidden_state  # [batch, T, d]
                    states.append(hidden[:, -self.n_mem:])
        by_length = torch.cat(states)
        memory = torch.empty_like(by_length).index_copy_(
            0, to_device(torch.tensor(order), self.device), by_length)
        dropped = [0] * len(texts)
        for i, n in zip(order, cut, strict=True):
            dropped[i] = n
        return memory, dropped

    def compress(self, passages: Sequence[str], return_dropped: bool = False):
        """Memory for each passage: [n, m, d]. With return_dropped, also the number of tokens
        each passage lost to the doc_max_length limit (0 when it fit)."""
        _check_texts(passages, "passage")
        memory, dropped = self._memory_states(passages, ENCODER)
        if any(dropped):
            log.warning("%d of %d passages exceed doc_max_length=%d and were truncated",
                        sum(1 for d in dropped if d), len(passages), self.config.doc_max_length)
        return (memory, dropped) if return_dropped else memory

    def encode_queries(self, questions: Sequence[str]) -> torch.Tensor:
        """Query vectors from the query reasoner: [b, m * d]."""
        self._require(QUERY_REASONER, "encode questions for ranking")
        _check_texts(questions, "question")
        return self._memory_states(questions, QUERY_REASONER)[0].flatten(1)

    @staticmethod
    @torch.inference_mode()
    def similarity(query_vectors: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Cosine similarity in float32: [b, n]. memory [n, m, d] or [n, m*d] may live on any
        device; it is streamed to the queries' device in chunks."""
        if memory.shape[0] == 0:
            raise InputError("no stored memory to rank")
        q = F.normalize(query_vectors.float().flatten(1), dim=-1)  # [b, m*d]
        if memory.flatten(1).shape[1] != q.shape[1]:
            raise InputError(
                f"memory vectors have {memory.flatten(1).shape[1]} values, queries "
                f"{q.shape[1]}: they come from different models"
            )
        return torch.cat([
            q @ F.normalize(chunk.to(q.device).float().flatten(1), dim=-1).T
            for chunk in memory.split(RANK_CHUNK_ROWS)
        ], dim=1)

    @staticmethod
    def rank(query_vectors: torch.Tensor, memory: torch.Tensor, k: int):
        """Cosine top-k of each query over stored memory, best first.
        Returns (indices [b, k'], scores [b, k']), k' = min(k, n)."""
        if k < 1:
            raise InputError(f"top-k must be at least 1, got {k}")
        scores = Clara.similarity(query_vectors, memory)
        top_scores, top_idx = scores.topk(min(k, scores.shape[1]), dim=-1)
        return top_idx, top_scores

    # -- generation ----------------------------------------------------------------------

    def _chat(self, system: str, user: str) -> str:
        user = user.replace(":\\ ", ": ")  # the authors' prompt clean-up, kept for fidelity
        template = self.tokenizer.apply_chat_template
        try:
            return template([{"role": "system", "content": system},
                             {"role": "user", "content": user}],
                            tokenize=False, add_generation_prompt=True, enable_thinking=False)
        except TemplateError:  # the template rejects a system role
            return template([{"role": "user", "content": f"{system}\n{user}"}],
                            tokenize=False, add_generation_prompt=True, enable_thinking=False)

    def _slots(self, k: int) -> str:
        return ("".join(self.config.mem_tokens) + "<SEP>") * k

    @torch.inference_mode()
    def _generate(self, prompts: list[str], memory: list[torch.Tensor], max_new_tokens: int,
                  min_new_tokens: int = 0, streamer=None) -> list[str]:
        """Greedy answers to chat prompts whose memory slots take the given memory [k_i, m, d]."""
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        rows = self.tokenizer(prompts, add_special_tokens=False, truncation=True,
                              max_length=PROMPT_MAX_TOKENS)["input_ids"]
        ids, mask = self._left_pad(rows)
        embeds = self.model.get_input_embeddings()(ids)  # [b, T, d]
        # the reference lays passage j at first_mem + j * (m + sep); with sep the <SEP> between
        # slots keeps its own embedding
        stride = self.n_mem + int(self.config.sep)
        for i, (row, mem) in enumerate(zip(rows, memory, strict=True)):
            mem = mem.reshape(-1, self.n_mem, self.hidden)  # [k, m, d]
            first = ids.shape[1] - len(row) + row.index(self.mem_ids[0])
            starts = first + stride * torch.arange(mem.shape[0])
            positions = (starts[:, None] + torch.arange(self.n_mem)).flatten()
            if positions[-1] >= ids.shape[1]:
                raise InputError(f"question {i}: prompt too long for {mem.shape[0]} passages")
            embeds[i, positions.to(self.device)] = mem.to(embeds).flatten(0, 1)
        with self._adapter(DECODER):
            if self.decoder is not None:
                out = self.decoder.generate(embeds, mask, max_new_tokens, min_new_tokens,
                                            streamer)
            else:
                out = self.model.generate(
                    inputs_embeds=embeds, attention_mask=mask, do_sample=False, top_p=None,
                    temperature=None, max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens, streamer=streamer,
                    pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def generate(self, questions: Sequence[str], selected_memory, max_new_tokens: int = 128,
                 min_new_tokens: int = 0, streamer=None) -> list[str]:
        """Answers from selected memory: [b, k, m, d] or one [k_i, m, d] tensor per question,
        in rank order. min_new_tokens forces full-length generation for timing."""
        _check_texts(questions, "question")
        if len(selected_memory) != len(questions):
            raise InputError(f"{len(questions)} questions but {len(selected_memory)} memory sets")
        prompts = [self._chat(ANSWER_SYSTEM, f"Background:\n{self._slots(len(m))}\n\nQuestion:{q}")
                   for q, m in zip(questions, selected_memory, strict=True)]
        return self._generate(prompts, list(selected_memory), max_new_tokens, min_new_tokens,
                              streamer)

    # -- whole questions -----------------------------------------------------------------

    def answer_from_memory(self, questions: Sequence[str], memory, top_k: int | None = None,
                           max_new_tokens: int = 128, min_new_tokens: int = 0,
                           allowed: Sequence[torch.Tensor | None] | None = None,
                           streamer=None) -> list[Answer]:
        """Rank stored memory with the query reasoner and answer from the top-k.

        memory: a MemoryIndex (the daemon's store: 4-bit ranking, exact re-ranking), one
        [n, m, d] tensor that every question ranks over exactly, or a list with one [n_i, m, d]
        tensor per question (the reference's candidate lists).
        allowed: with a shared index or tensor, per question the rows it may choose from (None:
        all); indices in the answers are rows of `memory` either way."""
        queries = self.encode_queries(questions)  # [b, m*d]
        k = top_k or self.config.generation_top_k
        if k < 1:
            raise InputError(f"top-k must be at least 1, got {k}")
        if isinstance(memory, MemoryIndex):
            picks = [(mem, idx, top) for idx, top, mem in memory.search(queries, k, allowed)]
        else:
            picks = self._exact_picks(queries, memory, k, allowed)
        texts = self.generate(questions, [p[0] for p in picks], max_new_tokens, min_new_tokens,
                              streamer)
        return [Answer(text, i.tolist(), s.tolist())
                for text, (_, i, s) in zip(texts, picks, strict=True)]

    def _exact_picks(self, queries: torch.Tensor, memory, k: int, allowed) -> list[tuple]:
        """Exact float32 cosine top-k: (memory [k, m, d], rows [k], scores [k]) a query."""
        if isinstance(memory, torch.Tensor):
            scores = self.similarity(queries, memory)  # [b, n], one pass over the memory
            rows_of = allowed or [None] * len(queries)
            pools = [(scores[i], None if rows is None else rows.to(scores.device))
                     for i, rows in enumerate(rows_of)]
            mems = [memory] * len(queries)
        else:
            if len(memory) != len(queries):
                raise InputError(f"{len(queries)} questions but {len(memory)} candidate sets")
            pools = [(self.similarity(q[None], mem)[0], None)
                     for q, mem in zip(queries, memory, strict=True)]
            mems = list(memory)
        picks = []
        for (score, rows), mem in zip(pools, mems, strict=True):
            if rows is not None:
                if rows.numel() == 0:
                    raise InputError("no candidate passages to rank")
                score = score[rows]
            top, idx = score.topk(min(k, score.shape[0]))
            idx = idx if rows is None else rows[idx]
            picks.append((mem[idx.to(mem.device)], idx.cpu(), top.cpu()))
        return picks

    def answer(self, questions: Sequence[str], candidates: Sequence[Sequence[str]],
               top_k: int | None = None, max_new_tokens: int = 128,
               min_new_tokens: int = 0) -> list[Answer]:
        """The reference's generate_from_questions: compress each question's candidates, rank
        them, answer from the top-k. Identical passages are compressed once."""
        self._require(QUERY_REASONER, "rank candidates")
        _check_texts(questions, "question")
        if len(candidates) != len(questions):
            raise InputError(f"{len(questions)} questions but {len(candidates)} candidate lists")
        for i, cands in enumerate(candidates):
            if not cands:
                raise InputError(f"question {i} has no candidate passages")
        unique = list(dict.fromkeys(p for cands in candidates for p in cands))
        row = {p: i for i, p in enumerate(unique)}
        memory = self.compress(unique)
        per_question = [memory[torch.tensor([row[p] for p in cands], device=self.device)]
                        for cands in candidates]
        return self.answer_from_memory(questions, per_question, top_k, max_new_tokens,
                                       min_new_tokens)

    def answer_given(self, questions: Sequence[str], documents: Sequence[Sequence[str]],
                     max_new_tokens: int = 128) -> list[str]:
        """Answer each question from all its documents in the given order (Instruct, E2E)."""
        _check_texts(questions, "question")
        if len(documents) != len(questions):
            raise InputError(f"{len(questions)} questions but {len(documents)} document lists")
        memory = [self.compress(docs) for docs in documents]
        return self.generate(questions, memory, max_new_tokens)

    def paraphrase(self, passages: Sequence[str], max_new_tokens: int = 128) -> list[str]:
        """What the model kept of each passage, told back from its memory alone."""
        memory = self.compress(passages)
        prompt = self._chat(PARAPHRASE_SYSTEM, f"Background: {self._slots(1)} means the same as")
        return self._generate([prompt] * len(passages), list(memory[:, None]), max_new_tokens)

    def warm_up(self) -> None:
        """Compile and record now, rather than while the first questions wait: the encoder
        for small batches and for a large one (whose adapter goes into the weights), and the
        decode step for one row and for several."""
        start = time.perf_counter()
        try:
            self._encode_warm_up()
        except Exception as e:  # no compiler for this GPU (triton)
            if self.encoder is None or not self.encoder.uncompile():
                raise
            log.warning("compiling the encoder failed, encoding uncompiled: %s", e)
        memory = torch.zeros(1, self.n_mem, self.hidden, dtype=self.dtype, device=self.device)
        for n in (1, 2):
            self.generate(["warm up"] * n, [memory] * n, max_new_tokens=2)
        self.warm_up_s = time.perf_counter() - start
        log.info("compiled and recorded in %.1f s", self.warm_up_s)

    def _encode_warm_up(self) -> None:
        long = "warm up " * self.config.doc_max_length  # cut at doc_max_length tokens
        self.compress(["warm up"] * 2)
        if QUERY_REASONER in self.adapters:  # E2E checkpoints only
            self.encode_queries(["warm up"])
        self.compress([long] * (MERGE_ROWS // self.config.doc_max_length + 1))

    def info(self) -> dict:
        return describe(self.checkpoint, self.fingerprint) | {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }
