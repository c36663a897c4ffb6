"""Greedy decoding from a static key/value cache, each step replayed as one CUDA graph.

transformers' generate() launches about a thousand kernels a token from Python and grows its
cache as it goes, so a 7B model decodes far below the rate at which the GPU can read its
weights (docs/performance.md). Here the prompt runs once (prefill) into preallocated key/value
buffers, and every later token is one replay of a recorded graph: embed, every layer, norm,
logits, greedy pick, with the step counters kept on the GPU, so the host looks at the result
only every few steps to see whether every sequence has ended.

Works for Llama-shaped decoders with SiLU MLPs (Mistral, Llama, Qwen2): the layers' own norms
and the model's rotary embedding are called as they are; the products read the base weights,
the decoder adapter merged into them, q/k/v and gate/up fused, through
kbd/model/kernels/gemv.py (one kernel a product for a single question); attention over the
cache is written here. The output equals generate()'s greedy output: same positions for
left-padded prompts, same min_new_tokens rule, pads after the end.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kbd.model.kernels import gemv
from kbd.model.kernels.products import rotate

log = logging.getLogger("kbd.model")

SUPPORTED = {"mistral", "llama", "qwen2"}
CHECK_EVERY = 8  # steps between end-of-sequence checks; each check waits for the GPU
LENGTH_BUCKET = 128  # cache lengths round up to this, so a graph serves many prompts
KEEP_BYTES = 512 * 1024**2  # key/value buffers kept between calls (a large batch records anew)


def supports(model) -> bool:
    """Whether kbd's own loops (this decoder, the encoder) can run this model: they call the
    weights directly, so the model must sit on one device (not spread by accelerate)."""
    devices = set(getattr(model, "hf_device_map", {"": None}).values())
    return (model.config.model_type in SUPPORTED
            and getattr(model.config, "sliding_window", None) is None
            and getattr(model.config, "hidden_act", "silu") == "silu"
            and len(devices) <= 1)


def unwrapped(projection) -> torch.nn.Linear:
    """The base linear layer of a projection, under kbd's LoRA wrapper if it has one."""
    return getattr(projection, "base", projection)


def fuse(projections: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight for several projections of the same input (q, k, v; gate, up), so it is
    read in one matrix product; each projection keeps a view of its rows, so nothing is
    stored twice and the other code paths see the same numbers."""
    linears = [unwrapped(p) for p in projections]
    weight = static(torch.cat([lin.weight.detach() for lin in linears]))
    biases = [lin.bias for lin in linears]
    bias = None if biases[0] is None else static(torch.cat([b.detach() for b in biases]))
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(weight[start:start + rows], requires_grad=False)
        if bias is not None:
            lin.bias = torch.nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows
    return weight, bias


@dataclass(frozen=True)
class Dims:
    """A model's sizes as plain numbers, which compiled() keeps as constants: splitting and
    viewing by them keeps the fused elementwise kernels free of symbolic sizes."""

    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @classmethod
    def of(cls, config) -> Dims:
        head_dim = (getattr(config, "head_dim", None)
                    or config.hidden_size // config.num_attention_heads)
        return cls(config.num_attention_heads, config.num_key_value_heads, head_dim,
                   config.intermediate_size)

    @property
    def qkv_split(self) -> list[int]:
        kv = self.kv_heads * self.head_dim
        return [self.heads * self.head_dim, kv, kv]


@dataclass
class Fused:
    """A layer's base weights as the decoder and the encoder read them, q/k/v and gate/up
    fused."""

    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def fuse_layers(model) -> list[Fused]:
    fused = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, qkv_bias = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        fused.append(Fused(qkv, qkv_bias, static(unwrapped(attn.o_proj).weight),
                           fuse([mlp.gate_proj, mlp.up_proj])[0],
                           static(unwrapped(mlp.down_proj).weight)))
    return fused


def static(t: torch.Tensor) -> torch.nn.Parameter:
    """The same storage as a Parameter: torch.compile keeps a Parameter's sizes as constants
    where other tensors get symbolic ones, so kernels are not indexed by a weight's symbolic
    row stride, which made the q/k/v kernel slower."""
    return t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t, requires_grad=False)


def compiled(fn):
    """torch.compile for every shape kbd meets, with only batch and length symbolic.
    - Plain numbers are constants: with dynamic=True torch.compile otherwise takes the model's
      sizes (heads, head size, MLP width, from Dims) and scales as inputs, and the elementwise
      kernels indexed by them ran many times slower (64-bit division by a runtime value).
    - Duck sizing is off: with it a length that happens to equal a model dimension (a cache of
      128 and the head size, 128) is fixed into the compiled code, and the next length
      compiles again, for half a minute, while a question waits."""
    import torch._dynamo.config as dynamo_config
    import torch.fx.experimental._config as fx_config

    fx_config.use_duck_shape = False
    dynamo_config.specialize_int = True
    dynamo_config.specialize_float = True
    return torch.compile(fn, dynamic=True)


@dataclass
class Session:
    """The buffers of one (batch, cache length) shape, and its recorded step."""

    keys: list[torch.Tensor]  # per layer [b, kv heads, L, hd]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [b, 1, 1, L] bool: which cache columns each sequence may attend to
    token: torch.Tensor  # [b] the last picked token, the next step's input
    position: torch.Tensor  # [b] its rotary position
    column: torch.Tensor  # [1] the cache column it is written to (the same for all rows)
    step: torch.Tensor  # [1] tokens generated so far
    min_new: torch.Tensor  # [1] end-of-sequence is forbidden before this many
    finished: torch.Tensor  # [b] bool
    out: torch.Tensor  # [b, L] generated tokens
    graph: torch.cuda.CUDAGraph | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class StaticDecoder:
    def __init__(self, model, fused: list[Fused], eos_ids: int | list[int] | None, pad_id: int,
                 compile_step: bool = False):
        self.model = model
        self.body = model.model
        config = model.config
        self.dims = Dims.of(config)
        self.groups = self.dims.heads // self.dims.kv_heads
        eos = [] if eos_ids is None else [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.eos = torch.tensor(eos, dtype=torch.long, device=self.device)
        self.pad = pad_id
        self.use_graphs = self.device.type == "cuda"
        # one compiled layer serves every layer (their weights are its inputs) and the prefill:
        # norms, rotary embedding, activation and residual adds become a few fused kernels
        self._run_layer = compiled(self._layer) if compile_step else self._layer
        self.layers = list(self.body.layers)
        self.fused = fused
        self.wrappers = [p for layer in self.layers
                         for p in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                   layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj)]
        self._sessions: OrderedDict[tuple[int, int], Session] = OrderedDict()

    # -- one forward pass over the cache -------------------------------------------------

    def _attention(self, attn, f: Fused, x, cos, sin, keys, values, columns, mask,
                   residual) -> torch.Tensor:
        """The residual stream after the layer's attention."""
        b, t, _ = x.shape
        d = self.dims
        q, k, v = gemv.linear(x, f.qkv, f.qkv_bias).split(d.qkv_split, dim=-1)
        q = q.view(b, t, d.heads, d.head_dim).transpose(1, 2)  # [b, h, t, hd]
        k = k.view(b, t, d.kv_heads, d.head_dim).transpose(1, 2)  # [b, kv, t, hd]
        v = v.view(b, t, d.kv_heads, d.head_dim).transpose(1, 2)
        keys.index_copy_(2, columns, rotate(k, cos, sin))
        values.index_copy_(2, columns, v)
        # the query heads sharing one key head become one longer query: no copy of the cache
        q = rotate(q, cos, sin).reshape(b, d.kv_heads, self.groups * t, d.head_dim)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             scale=attn.scaling)  # [b, kv, g * t, hd]
        out = out.reshape(b, d.heads, t, d.head_dim).transpose(1, 2).reshape(b, t, -1)
        return gemv.linear(out, f.o, residual)

    def _layer(self, layer, f: Fused, h, cos, sin, keys, values, columns,
               mask) -> torch.Tensor:
        """One layer over the residual stream h, [b, t, d]."""
        h = self._attention(layer.self_attn, f, layer.input_layernorm(h), cos, sin, keys,
                            values, columns, mask, h)
        act = gemv.linear(layer.post_attention_layernorm(h), f.gate_up, gated=True)
        return gemv.linear(act, f.down, h)

    def _forward(self, s: Session, embeds, positions, columns, mask) -> torch.Tensor:
        """Logits at the last position, [b, vocab] float32; writes keys and values of the
        t positions at cache `columns`. mask: [b, 1, t, L] bool."""
        cos, sin = self.body.rotary_emb(embeds, positions)
        if embeds.shape[1] > 1:
            mask = mask.repeat(1, 1, self.groups, 1)  # rows follow the folded query heads
        h = embeds
        for layer, f, keys, values in zip(self.layers, self.fused, s.keys, s.values,
                                          strict=True):
            h = self._run_layer(layer, f, h, cos, sin, keys, values, columns, mask)
        last = self.body.norm(h[:, -1])
        return gemv.linear(last, unwrapped(self.model.lm_head).weight).float()

    def _pick(self, s: Session, logits: torch.Tensor) -> None:
        """Greedy token for each row; written to s.out at s.step; counters advance."""
        if self.eos.numel():
            early = s.step < s.min_new  # [1]
            logits[:, self.eos] = logits[:, self.eos].masked_fill(early, float("-inf"))
        token = logits.argmax(-1).masked_fill(s.finished, self.pad)
        s.out.index_copy_(1, s.step, token[:, None])
        if self.eos.numel():
            s.finished |= torch.isin(token, self.eos)
        s.token.copy_(token)
        s.step += 1

    def _step(self, s: Session) -> None:
        """One new token for every row: the part recorded as a CUDA graph."""
        s.mask.index_fill_(-1, s.column, True)
        embeds = self.model.get_input_embeddings()(s.token[:, None])  # [b, 1, d]
        logits = self._forward(s, embeds, s.position[:, None], s.column, s.mask)
        s.position += 1
        s.column += 1
        self._pick(s, logits)

    # -- sessions ------------------------------------------------------------------------

    def _session(self, b: int, length: int) -> Session:
        key = (b, length)
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        shape = (b, self.dims.kv_heads, length, self.dims.head_dim)
        # zeros, not empty: a masked column still multiplies its value by 0, and 0 * NaN is NaN
        new = {"dtype": self.dtype, "device": self.device}
        s = Session(
            keys=[torch.zeros(shape, **new) for _ in self.layers],
            values=[torch.zeros(shape, **new) for _ in self.layers],
            mask=torch.zeros(b, 1, 1, length, dtype=torch.bool, device=self.device),
            **{name: torch.zeros(n, dtype=torch.long, device=self.device) for name, n in
               (("token", b), ("position", b), ("column", 1), ("step", 1), ("min_new", 1))},
            finished=torch.zeros(b, dtype=torch.bool, device=self.device),
            out=torch.zeros(b, length, dtype=torch.long, device=self.device),
        )
        if self.use_graphs:
            s.graph = self._record(s)
        self._sessions[key] = s
        return s

    def _record(self, s: Session) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()  # warm-up runs off the main stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            try:
                self._step(s)
            except Exception as e:  # no compiler for this GPU (triton): run the layers as they are
                if self._run_layer == self._layer:
                    raise
                log.warning("compiling the decode step failed, decoding uncompiled: %s", e)
                self._run_layer = self._layer
                self._step(s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(s)
        return graph

    # -- generation ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                 min_new_tokens: int = 0, streamer=None) -> torch.Tensor:
        """Greedy continuation of left-padded prompt embeddings [b, T, d] with attention mask
        [b, T]; returns the new tokens [b, n], pads after each row's end."""
        # the fused weights hold the base alone: an adapter applied on top would be skipped
        assert all(getattr(p, "active", None) in (None, getattr(p, "merged", None))
                   for p in self.wrappers), "StaticDecoder runs only merged or no adapters"
        b, prompt = mask.shape
        length = -(-(prompt + max_new_tokens) // LENGTH_BUCKET) * LENGTH_BUCKET
        s = self._session(b, length)
        real = mask.bool()
        s.mask.zero_()
        s.mask[:, 0, 0, :prompt] = real
        s.finished.zero_()
        s.step.zero_()
        s.min_new.fill_(min_new_tokens)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [b, T], as generate() counts
        columns = torch.arange(prompt, device=self.device)
        causal = columns[:, None] >= torch.arange(length, device=self.device)  # [T, L]
        # a padding row attends to itself, so no row of the prefill is all masked (NaN)
        own = columns[:, None] == torch.arange(length, device=self.device)
        prefill_mask = (causal & s.mask[:, :, 0, None, :]) | own  # [b, 1, T, L]
        # a copy made here is an inference tensor whoever made embeds: the compiled layer
        # would otherwise compile again for a caller's ordinary tensor
        embeds = embeds.to(self.dtype, copy=True)
        logits = self._forward(s, embeds, positions, columns, prefill_mask)
        s.position.copy_(positions[:, -1] + 1)
        s.column.fill_(prompt)
        self._pick(s, logits)
        if streamer is not None:
            streamer.put(torch.empty(b, 0, dtype=torch.long))  # generate() sends the prompt
            streamer.put(s.out[:, 0].cpu())
        done = 1
        while done < max_new_tokens:
            if (streamer is not None or done % CHECK_EVERY == 0) and bool(s.finished.all()):
                break
            if s.graph is not None:
                s.graph.replay()
            else:
                self._step(s)
            if streamer is not None:
                streamer.put(s.out[:, done].cpu())
            done += 1
        if streamer is not None:
            streamer.end()
        out = s.out[:, :done].clone()
        while sum(x.nbytes for x in self._sessions.values()) > KEEP_BYTES:
            self._sessions.popitem(last=False)  # oldest first, this one last
        return out
