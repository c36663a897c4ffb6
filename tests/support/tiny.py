"""Build CLaRa checkpoints in the published layout from random weights, with no download.

Tests use tiny ones (a few hundred thousand parameters, CPU); the GPU benchmark uses the
Mistral-7B-Instruct-v0.2 shape, which costs the same FLOPs and memory as the real weights.
Every adapter gets non-zero LoRA weights (A and B both random) so that each one changes what
the model computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from kbd.model.checkpoint import (
    DECODER,
    EMBED,
    ENCODER,
    LM_HEAD,
    QUERY_REASONER,
    STAGES,
    ClaraConfig,
)

# Mistral's own chat template in spirit: [INST] blocks; a system message joins the first turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set sys = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[INST] {{ sys if sys is defined else '' }}"
    "{{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# The stricter kind of template, which refuses a system role outright.
CHAT_TEMPLATE_NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

WORDS = """the a an of to in and or is was are be on at by for with from as that this it not
error warning info debug failed failure success connection closed opened session user root
disk full space memory out kernel panic block node data server client request response time
timeout retry started stopped service daemon process pid port host address network packet
read write file directory path permission denied invalid password authentication login
logout ssh sshd apache hadoop hdfs spark job task stage executor container worker master
replica replication heartbeat lost received sent bytes size offset log line report summary
question answer what when where why how which who did does happen happened cause caused
fix fixed restart restarted shutdown reboot crash crashed exception java null pointer
""".split()

SPECIALS = ["<unk>", "<s>", "</s>"]


def make_tokenizer(vocab_size: int = 512, chat_template: str = CHAT_TEMPLATE):
    """A word-level tokenizer built offline: specials, common log words, digits and
    punctuation, then filler words up to vocab_size. Unknown words map to <unk>."""
    symbols = list("0123456789.,:;!?()[]{}<>=/-_'\"#@%&*+|")
    vocab_list = SPECIALS + list(dict.fromkeys(WORDS)) + symbols
    vocab_list += [f"w{i}" for i in range(vocab_size - len(vocab_list))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
         pre_tokenizers.Digits(individual_digits=True)]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def mistral_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                   ffn: int = 128, vocab_size: int = 512, init_std: float = 0.02) -> MistralConfig:
    return MistralConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=ffn, vocab_size=vocab_size,
        max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, sliding_window=None, initializer_range=init_std,
    )


def random_base(config: MistralConfig, seed: int = 0, dtype=torch.float32,
                device: str = "cpu") -> MistralForCausalLM:
    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM(config).to(dtype)
    return model.eval()


def write_base_model(folder: Path, seed: int = 0, chat_template: str = CHAT_TEMPLATE,
                     init_std: float = 0.3, **shape) -> Path:
    """A random Mistral-shaped base model with its tokenizer, saved like a hub download.
    Weights are larger than a trained model's (init_std) so that greedy text varies with
    the memory it reads, which makes equality of answers a strong check."""
    config = mistral_config(init_std=init_std, **shape)
    folder.mkdir(parents=True, exist_ok=True)
    random_base(config, seed).save_pretrained(folder)
    make_tokenizer(config.vocab_size, chat_template).save_pretrained(folder)
    return folder


def lora_state(model: torch.nn.Module, r: int, seed: int, std: float = 0.1) -> dict:
    """A PEFT-style LoRA state dict for every linear layer of the decoder blocks."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            state[f"{name}.lora_A.weight"] = torch.randn(r, module.in_features, generator=gen) * std
            state[f"{name}.lora_B.weight"] = (
                torch.randn(module.out_features, r, generator=gen) * std
            )
    return state


def write_checkpoint(
    folder: Path,
    base: Path | MistralForCausalLM,
    training_stage: str = "stage2",
    compr_rate: int = 16,
    doc_max_length: int = 256,
    different_mem_tokens: bool = True,
    sep: bool = True,
    lora_r: int = 4,
    generation_top_k: int = 5,
    with_tokenizer: bool = True,
    tokenizer=None,
    seed: int = 1,
    dtype=torch.float32,
) -> Path:
    """A CLaRa checkpoint folder for `base` (a folder written by write_base_model, or a model
    in memory with `tokenizer` given): config.json, adapters.pth,
    decoder_first_last_layers.pth and, with_tokenizer, the extended tokenizer."""
    if isinstance(base, Path):
        model = MistralForCausalLM.from_pretrained(base)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
        name = str(base)
    else:
        model, name = base, "mistralai/Mistral-7B-Instruct-v0.2"
    config = ClaraConfig(
        decoder_model_name=name, doc_max_length=doc_max_length, compr_rate=compr_rate,
        different_mem_tokens=different_mem_tokens, sep=sep, generation_top_k=generation_top_k,
        lora_r=lora_r, training_stage=training_stage,
    )
    folder.mkdir(parents=True, exist_ok=True)
    raw = {field: getattr(config, field) for field in ClaraConfig.__dataclass_fields__}
    raw |= {"model_type": "CLaRa", "pad_token_id": 2, "pure_inference": False}
    (folder / "config.json").write_text(json.dumps(raw, indent=2))

    names = STAGES[training_stage][1]
    adapters = {n: lora_state(model, lora_r, seed + i) for i, n in enumerate(names)}
    torch.save({n: {k: v.to(dtype) for k, v in s.items()} for n, s in adapters.items()},
               folder / "adapters.pth")

    base_rows = model.get_input_embeddings().weight.shape[0]
    added = len(config.added_tokens)
    gen = torch.Generator().manual_seed(seed + 10)

    def extend(w: torch.Tensor) -> torch.Tensor:  # the resized matrix: base rows + new rows
        new_rows = torch.randn(added, w.shape[1], generator=gen) * 0.02
        return torch.cat([w.detach().float().cpu(), new_rows]).to(dtype)

    torch.save({EMBED: extend(model.get_input_embeddings().weight),
                LM_HEAD: extend(model.get_output_embeddings().weight)},
               folder / "decoder_first_last_layers.pth")
    if with_tokenizer:
        tokenizer.add_special_tokens({"additional_special_tokens": config.added_tokens})
        assert len(tokenizer) == base_rows + added, "base tokenizer and vocabulary disagree"
        tokenizer.save_pretrained(folder)
    return folder


__all__ = [
    "CHAT_TEMPLATE", "CHAT_TEMPLATE_NO_SYSTEM", "DECODER", "ENCODER", "QUERY_REASONER",
    "make_tokenizer", "mistral_config", "random_base", "write_base_model", "write_checkpoint",
]


def random_7b_clara(layers: int = 32, compr_rate: int = 16):
    """A same-shape random Mistral-7B-Instruct-v0.2 CLaRa (three r=16 adapters, bf16) on the
    GPU, as the benchmarks use it: same FLOPs and memory as the real weights."""
    import tempfile

    from kbd.model.checkpoint import attention_implementation
    from kbd.model.clara import Clara

    config = mistral_config(hidden=4096, layers=layers, heads=32, kv_heads=8, ffn=14336,
                            vocab_size=32000)
    config._attn_implementation = attention_implementation("cuda")
    base = random_base(config, dtype=torch.bfloat16, device="cuda")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "ck", base, lora_r=16, compr_rate=compr_rate,
                                      doc_max_length=256, tokenizer=make_tokenizer(32000),
                                      dtype=torch.bfloat16)
        return Clara.load(checkpoint, base_model=base)
