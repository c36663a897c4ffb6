"""Compression and query encoding: final hidden states at the memory tokens of texts.

One pass of the transformer body, for the Llama-shaped decoders StaticDecoder runs, that leaves
out what a full forward through transformers spends on results nobody reads:
- rows are padded on the right, so causal attention alone keeps every real token from seeing
  padding: no mask, and attention runs the fused flash kernel;
- the last layer's output projection and MLP run at the memory tokens only, the one place its
  states are read; no vocabulary logits at all;
- q/k/v and gate/up are one matrix product each, on the decoder's fused weights; on a Hopper
  GPU, where the adapter is in the weights, one kernel computes each and finishes its work in
  the epilogue (kbd/model/kernels/products.py): the rotary embedding of q and k, SiLU(gate)·up;
- there the norm before each is folded into it: the norm's weight into the weight's copy, and
  each row's 1/RMS into the epilogue, so the products read the residual stream itself and no
  normed copy of it is written (a 64-passage batch's stream is 141 MB);
- where the adapter is in the weights, the output and down projections add into the
  residual stream in their own epilogue;
- an adapter is added to the output (x Aᵀ Bᵀ) for a small batch, such as questions, and to a
  copy of the weight for a large one, compression, where that moves less memory
  (kbd/model/kernels/merge.py);
- a call of several batches runs layer by layer: each layer's weights get the adapter once
  for all of its batches (up to WAVE_BYTES of their states), not once a batch;
- each batch is tokenized, and its ids sent through pinned memory without a wait, while the
  GPU computes the batch before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kbd.model.decode import Dims, Fused, compiled, static, unwrapped
from kbd.model.kernels import merge, products
from kbd.model.kernels.products import rotate

# rows (tokens) of a call from which an adapter is added to the weights rather than the
# outputs: per layer that costs a pass over its weights against ~250 KB of outputs a row
MERGE_ROWS = 4096
# states of the batches that go through a layer together: their residual streams, and as much
# again for what a layer makes on the way
WAVE_BYTES = 2 * 1024**3

Parts = tuple[torch.Tensor, ...]
Group = tuple[torch.Tensor, torch.Tensor | None, Parts | None, Parts | None]


def adapter_parts(projections: list, adapter: str) -> tuple[Parts, Parts] | tuple[None, None]:
    """One adapter's A and B of each projection of a fused group, the wrappers' own tensors
    (a projection without it gets rank 0); (None, None) when none has it, or it is merged."""
    parts = []
    for p in projections:
        if adapter in getattr(p, "names", ()):
            parts.append((getattr(p, f"{adapter}_A"), getattr(p, f"{adapter}_B")))
        else:
            w = unwrapped(p).weight
            parts.append((w.new_zeros(0, w.shape[1]), w.new_zeros(w.shape[0], 0)))
    if all(a.shape[0] == 0 for a, _ in parts):
        return None, None
    return tuple(static(a) for a, _ in parts), tuple(static(b) for _, b in parts)


def project(x: torch.Tensor, group: Group, scale: float) -> torch.Tensor:
    """x through a fused group of projections and the active adapter, if not merged: its A
    stacked, its B block-diagonal (built per call, a few hundred KB, rather than kept beside
    the wrappers')."""
    weight, bias, a_parts, b_parts = group
    if a_parts is None:
        return F.linear(x, weight, bias)
    a, b = stacked(a_parts, b_parts)
    return F.linear(x, weight, bias) + F.linear(F.linear(x, a) * scale, b)


def add_projection(h: torch.Tensor, x: torch.Tensor, group: Group,
                   scale: float) -> torch.Tensor:
    """h + x through a projection group. With the adapter in the weights (compression), the
    product adds into h in its own epilogue, in place; with the adapter beside them (a small
    batch, questions), out of place, where the add joins the next kernel: there the products
    are short and the host's calls, not memory, set the time."""
    weight, bias, a_parts, _ = group
    if a_parts is not None:
        return h + project(x, group, scale)
    add_product(h, x, weight)
    return h if bias is None else h.add_(bias)


@torch.library.custom_op("kbd::add_product", mutates_args=("h",))
def add_product(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """h += x Wᵀ in place, by the product's epilogue. Added by a kernel after the product, as
    torch.compile would have it, the output is written, read back and h read and written
    again: 0.3 GB a product of a 64-passage batch. (An operator of its own, so compiled
    code calls it as it is and updates h where it lies.)"""
    h.view(-1, h.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight.t())


def stacked(a_parts: Parts, b_parts: Parts) -> tuple[torch.Tensor, torch.Tensor]:
    if len(a_parts) == 1:
        return a_parts[0], b_parts[0]
    return torch.cat(a_parts), torch.block_diag(*b_parts)


def merged(group: Group, scale: float, columns: torch.Tensor | None = None) -> Group:
    """The group with its adapter added to a copy of the weight, and that copy's columns
    scaled by `columns` where given (a norm's weight folded in)."""
    weight, bias, a_parts, b_parts = group
    if a_parts is None:
        if columns is None:
            return group
        # no adapter here, the norm's weight alone: a zero adapter of rank 1 (not 0: an empty
        # tensor has no address to give the kernel), so the copy takes the same single pass
        a_parts, b_parts = (weight.new_zeros(1, weight.shape[1]),), (weight.new_zeros(
            weight.shape[0], 1),)
    a, b = stacked(a_parts, b_parts)
    return merge.add_product(weight, b, a, scale, columns), bias, None, None


def rms_epsilon(norm) -> float | None:
    """The epsilon of a norm that computes weight · x / √(mean(x²) + ε), as Llama's RMSNorm and
    its copies do, else None. Checked on a probe row, not by class: Gemma's, say, scales by
    1 + weight."""
    eps, weight = getattr(norm, "variance_epsilon", None), getattr(norm, "weight", None)
    if eps is None or weight is None or weight.dim() != 1:
        return None
    probe = torch.linspace(-2.0, 3.0, weight.shape[0], device=weight.device)
    with torch.no_grad():
        got = norm(probe.to(weight.dtype)[None])[0].float()
    normed = (probe * torch.rsqrt(probe.pow(2).mean() + eps)).to(weight.dtype).float()
    return float(eps) if torch.allclose(got, weight.float() * normed, rtol=1e-2,
                                        atol=1e-3) else None


class Encoder:
    def __init__(self, model, fused: list[Fused], adapters: list[str], scale: float,
                 pad_id: int, compile_layers: bool = False):
        self.model = model
        self.body = model.model
        self.layers = list(self.body.layers)
        self.scale = scale  # of every adapter: lora_alpha / r
        self.pad = pad_id
        self.device = model.get_input_embeddings().weight.device
        config = model.config
        self.dims = Dims.of(config)
        self._run_layer = compiled(self._layer) if compile_layers else self._layer
        # SiLU(gate)·up and the rotary embedding in their products' kernel, where the adapter
        # is in the weights
        self.gate_up_kernel = products.available(self.device)
        d = self.dims
        self.rotated = (d.heads + d.kv_heads) * d.head_dim  # q and k, the columns it turns
        self.qkv_kernel = self.gate_up_kernel and products.rotary_fits(
            model.get_input_embeddings().weight.dtype, config.hidden_size, sum(d.qkv_split),
            self.rotated, d.head_dim)
        # the norms' weights folded into the products' (where both take the kernel): needs
        # plain RMS norms, one epsilon, and no q/k/v bias to add after the row scales
        epsilons = {rms_epsilon(norm) for layer in self.layers
                    for norm in (layer.input_layernorm, layer.post_attention_layernorm)}
        self.epsilon = epsilons.pop() if len(epsilons) == 1 else None
        self.fold_norms = (self.epsilon is not None and all(f.qkv_bias is None for f in fused))
        # per adapter, per layer: (q/k/v, o, gate/up, down), each (weight, bias, As, Bs)
        self.groups: dict[str, list[tuple[Group, ...]]] = {}
        for adapter in adapters:
            self.groups[adapter] = []
            for layer, f in zip(self.layers, fused, strict=True):
                attn, mlp = layer.self_attn, layer.mlp
                sets = (((f.qkv, f.qkv_bias), [attn.q_proj, attn.k_proj, attn.v_proj]),
                        ((f.o, unwrapped(attn.o_proj).bias), [attn.o_proj]),
                        ((f.gate_up, None), [mlp.gate_proj, mlp.up_proj]),
                        ((f.down, unwrapped(mlp.down_proj).bias), [mlp.down_proj]))
                self.groups[adapter].append(tuple(
                    (*base, *adapter_parts(projs, adapter)) for base, projs in sets))

    def _layer(self, layer, groups: tuple[Group, ...], h, cos, sin,
               keep: torch.Tensor | None, folded: bool) -> torch.Tensor:
        """One decoder layer over the residual stream h, [b, t, d], which its output and MLP
        products add into (in place where the adapter is merged: add_projection). With keep
        ([b, m] positions), only those rows come out of it, [b, m, d]. folded: the norms'
        weights are in the q/k/v and gate/up weights (_merged), which both take the kernel."""
        qkv, o, gate_up, down = groups
        b, t, _ = h.shape
        d = self.dims
        x, row_scale = self._normed(layer.input_layernorm, h, folded)
        if self.qkv_kernel and qkv[1] is None and qkv[2] is None:  # no bias, no adapter outputs
            q, k, v = products.qkv_rotary(x, qkv[0], cos, sin, self.rotated, d.head_dim,
                                          row_scale).split(d.qkv_split, dim=-1)
            q = q.view(b, t, d.heads, d.head_dim).transpose(1, 2)
            k = k.view(b, t, d.kv_heads, d.head_dim).transpose(1, 2)
        else:
            q, k, v = project(x, qkv, self.scale).split(d.qkv_split, dim=-1)
            q = rotate(q.view(b, t, d.heads, d.head_dim).transpose(1, 2), cos, sin)
            k = rotate(k.view(b, t, d.kv_heads, d.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, t, d.kv_heads, d.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                             scale=layer.self_attn.scaling)
        out = out.transpose(1, 2).reshape(b, t, -1)
        if keep is not None:
            rows = keep[..., None]
            out = out.gather(1, rows.expand(-1, -1, out.shape[-1]))
            h = h.gather(1, rows.expand(-1, -1, h.shape[-1]))
        h = add_projection(h, out, o, self.scale)
        x, row_scale = self._normed(layer.post_attention_layernorm, h, folded)
        if self.gate_up_kernel and gate_up[2] is None:  # no adapter outputs to add after it
            act = products.swiglu(x, gate_up[0], row_scale)
        else:
            gate, up = project(x, gate_up, self.scale).split([d.ffn, d.ffn], dim=-1)
            act = layer.mlp.act_fn(gate) * up
        return add_projection(h, act, down, self.scale)

    def _normed(self, norm, h: torch.Tensor,
                folded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the products after a norm read: its output; or, with its weight folded into
        theirs, h itself and each row's 1/RMS, which their kernel multiplies in."""
        if folded:
            return h, products.row_scales(h, self.epsilon)
        return norm(h), None

    def _merged(self, layer, groups: tuple[Group, ...], fold: bool) -> tuple[Group, ...]:
        """A layer's groups with the adapter in copies of their weights, and with fold the
        norms' weights in the q/k/v and gate/up copies."""
        norms = ((layer.input_layernorm.weight, None, layer.post_attention_layernorm.weight,
                  None) if fold else (None,) * 4)
        return tuple(merged(group, self.scale, norm)
                     for group, norm in zip(groups, norms, strict=True))

    def uncompile(self) -> bool:
        """Run the layers as they are from now on; False if they already were."""
        was = self._run_layer != self._layer
        self._run_layer = self._layer
        return was

    @torch.inference_mode()
    def memory_states(self, batches: list[Sequence[str]],
                      tokenize: Callable[[Sequence[str]], list[list[int]]], longest: int,
                      n_mem: int, adapter: str) -> list[torch.Tensor]:
        """Final hidden states at the last n_mem tokens of every text: [b, n_mem, d] for each
        batch. tokenize(batch) gives its token rows, none longer than `longest`; it runs as
        the first layer reaches the batch, so the host tokenizes one batch while the GPU
        computes the one before."""
        states = []
        for wave in self._waves(batches, longest):
            states += self._run_wave(wave, tokenize, n_mem, adapter)
        return states

    def _waves(self, batches: list[Sequence[str]], longest: int) -> list[list[Sequence[str]]]:
        """Consecutive batches whose states fit in WAVE_BYTES together (at least one), at
        their longest possible rows, since they are not tokenized yet."""
        hidden = self.model.config.hidden_size
        element = self.model.get_input_embeddings().weight.element_size()
        waves, size = [], 0
        for batch in batches:
            need = 2 * len(batch) * longest * hidden * element
            if not waves or size + need > WAVE_BYTES:
                waves.append([])
                size = 0
            waves[-1].append(batch)
            size += need
        return waves

    def _run_wave(self, wave: list[Sequence[str]], tokenize, n_mem: int,
                  adapter: str) -> list[torch.Tensor]:
        """The batches of a wave through every layer, layer by layer: [b, n_mem, d] each."""
        first = tokenize(wave[0])
        # the first batch holds the shortest texts: a wave has at least its tokens a batch
        merge_adapter = len(wave) * sum(map(len, first)) >= MERGE_ROWS
        fold = merge_adapter and self.fold_norms and self.qkv_kernel and self.gate_up_kernel
        inputs, streams = [], []
        for i, layer in enumerate(self.layers):
            groups = self.groups[adapter][i]
            if merge_adapter:
                groups = self._merged(layer, groups, fold)
            last = i == len(self.layers) - 1
            for j, batch in enumerate(wave):
                if i == 0:  # made here, so the host makes them while the GPU computes the last
                    inputs.append(self._inputs(first if j == 0 else tokenize(batch), n_mem))
                    streams.append(inputs[j][0])
                _, cos, sin, keep = inputs[j]
                streams[j] = self._run_layer(layer, groups, streams[j], cos, sin,
                                             keep if last else None, fold)
        return [self.body.norm(h)[:len(batch)] for h, batch in zip(streams, wave, strict=True)]

    def _inputs(self, rows: list[list[int]], n_mem: int) -> tuple[torch.Tensor, ...]:
        """Embeddings, rotary cos and sin, and the memory positions of a batch's rows,
        padded on the right."""
        if len(rows) == 1 and self._run_layer != self._layer:
            # torch.compile fixes a size of 1 into the code: a lone row runs as two, so one
            # compiled layer serves every batch (and the warm-up compiles half as much)
            rows = rows * 2
        width = max(map(len, rows))
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        keep = torch.tensor([len(r) for r in rows])[:, None] - n_mem + torch.arange(n_mem)
        ids, keep = to_device(torch.from_numpy(ids), self.device), to_device(keep, self.device)
        h = self.body.embed_tokens(ids)
        cos, sin = self.body.rotary_emb(h, torch.arange(width, device=self.device)[None])
        return h, cos, sin, keep


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on the device, through pinned memory without a wait where that is a GPU."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t
