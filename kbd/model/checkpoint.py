"""Read and verify a CLaRa checkpoint folder in the layout Apple publishes.

A folder holds config.json, adapters.pth (adapter name -> PEFT LoRA state dict),
decoder_first_last_layers.pth (the resized embedding and lm_head matrices) and possibly
tokenizer files. The base model (Mistral-7B-Instruct-v0.2 for the published ones) is not in
the folder; the user names a local copy. Every check here refuses with a CheckpointError that
names the file and what is wrong, before any large weight is read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as transformers_logging

from kbd.errors import CheckpointError, InputError

ENCODER, DECODER, QUERY_REASONER = "encoder_adapter", "decoder_adapter", "query_reasoner_adapter"
# training_stage -> (published name, adapters that stage must carry)
STAGES = {
    "stage1": ("base", (ENCODER, DECODER)),
    "stage1_2": ("instruct", (ENCODER, DECODER)),
    "stage2": ("e2e", (ENCODER, DECODER, QUERY_REASONER)),
}
REQUIRED_FILES = ("config.json", "adapters.pth", "decoder_first_last_layers.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ClaraConfig:
    """The fields of a CLaRa config.json that inference depends on, spelled as the file does."""

    decoder_model_name: str  # hub id or the authors' path; the user supplies a local copy
    doc_max_length: int = 256  # passage tokens one memory summarises
    compr_rate: int = 16  # memory tokens per passage = doc_max_length // compr_rate
    different_mem_tokens: bool = True  # <MEM0>..<MEMn-1> rather than one repeated <MEM>
    sep: bool = True  # a <SEP> embedding follows each passage's memory in the prompt
    generation_top_k: int = 5
    lora: bool = True
    lora_r: int = 16
    training_stage: str = "stage2"
    max_new_tokens: int = 128

    @property
    def n_mem(self) -> int:
        return self.doc_max_length // self.compr_rate

    @property
    def stage_name(self) -> str:
        return STAGES[self.training_stage][0]

    @property
    def mem_tokens(self) -> list[str]:
        if self.different_mem_tokens:
            return [f"<MEM{i}>" for i in range(self.n_mem)]
        return ["<MEM>"] * self.n_mem

    @property
    def added_tokens(self) -> list[str]:
        """The tokens CLaRa adds to the base tokenizer, in the order their ids follow."""
        return list(dict.fromkeys(self.mem_tokens)) + ["<AE>", "<ENC>", "<SEP>"]


@dataclass
class Checkpoint:
    path: Path
    config: ClaraConfig
    adapters: dict[str, dict[str, torch.Tensor]]  # name -> {module path: (A [r, in], B [out, r])}
    embed: torch.Tensor  # [vocab + added, hidden]
    lm_head: torch.Tensor  # [vocab + added, hidden]
    has_tokenizer: bool


def read_config(path: Path) -> ClaraConfig:
    file = path / "config.json"
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e
    if raw.get("model_type") != "CLaRa":
        raise CheckpointError(
            f"{file}: model_type is {raw.get('model_type')!r}, not 'CLaRa'",
            hint="point --checkpoint at a CLaRa folder such as CLaRa-7B-E2E/compression-16",
        )
    fields = {k: raw[k] for k in ClaraConfig.__dataclass_fields__ if k in raw}
    if "decoder_model_name" not in fields:
        raise CheckpointError(f"{file}: decoder_model_name is missing")
    config = ClaraConfig(**fields)
    if config.training_stage not in STAGES:
        raise CheckpointError(
            f"{file}: training_stage {config.training_stage!r} is not one kbd knows "
            f"({', '.join(STAGES)})"
        )
    if not config.lora:
        raise CheckpointError(f"{file}: lora is false; kbd loads the published LoRA checkpoints")
    if config.compr_rate <= 0 or config.doc_max_length % config.compr_rate:
        raise CheckpointError(
            f"{file}: doc_max_length {config.doc_max_length} is not a multiple of "
            f"compr_rate {config.compr_rate}"
        )
    return config


def _load_pth(file: Path) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{file}: cannot be read as a torch state dict ({e})") from e


def _split_lora(file: Path, name: str, state: dict, r: int) -> dict[str, tuple]:
    """Group an adapter's flat state dict into module path -> (A, B) and check ranks."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["ab"]] = tensor
        elif key not in (EMBED, LM_HEAD):
            raise CheckpointError(f"{file}: {name} has an unexpected key {key!r}")
    if not pairs:
        raise CheckpointError(f"{file}: {name} holds no LoRA weights")
    out = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{file}: {name} has lora_A or lora_B missing for {module}")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise CheckpointError(
                f"{file}: {name}.{module} has shapes A{list(a.shape)} B{list(b.shape)}, "
                f"expected rank lora_r={r}"
            )
        out[module] = (a, b)
    return out


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read config, adapters and the resized embeddings; check them against one another."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise CheckpointError(
                f"{path / name}: missing from the checkpoint",
                hint="a CLaRa folder holds config.json, adapters.pth and "
                "decoder_first_last_layers.pth",
            )
    config = read_config(path)

    file = path / "adapters.pth"
    raw_adapters = _load_pth(file)
    if not isinstance(raw_adapters, dict):
        raise CheckpointError(f"{file}: expected a dict of adapter name -> state dict")
    for name in STAGES[config.training_stage][1]:
        if name not in raw_adapters:
            raise CheckpointError(
                f"{file}: adapter {name!r} is missing (found {sorted(raw_adapters)}); "
                f"a {config.stage_name} checkpoint ({config.training_stage}) needs it"
            )
    adapters = {
        name: _split_lora(file, name, state, config.lora_r)
        for name, state in raw_adapters.items()
        if name in (ENCODER, DECODER, QUERY_REASONER)
    }

    file = path / "decoder_first_last_layers.pth"
    first_last = _load_pth(file)
    for key in (EMBED, LM_HEAD):
        if key not in first_last:
            raise CheckpointError(f"{file}: {key} is missing")
    embed, lm_head = first_last[EMBED], first_last[LM_HEAD]
    # An adapter's dict may carry the embeddings too; loading it the PEFT way overwrites the
    # model's, so the last adapter that carries them wins, as it did for the authors.
    for state in raw_adapters.values():
        embed = state.get(EMBED, embed)
        lm_head = state.get(LM_HEAD, lm_head)
    if embed.shape != lm_head.shape or embed.dim() != 2:
        raise CheckpointError(
            f"{file}: {EMBED} {list(embed.shape)} and {LM_HEAD} {list(lm_head.shape)} disagree"
        )
    has_tokenizer = any((path / name).is_file() for name in TOKENIZER_FILES)
    return Checkpoint(path, config, adapters, embed, lm_head, has_tokenizer)


def resolve_base(checkpoint: Checkpoint, base: str | Path | None) -> Path:
    """The local folder of the base model: the one named, or the config's if it is local."""
    candidate = Path(base or checkpoint.config.decoder_model_name).expanduser()
    if not (candidate / "config.json").is_file():
        named = base or f"decoder_model_name {checkpoint.config.decoder_model_name!r}"
        raise CheckpointError(
            f"base model not found: {named} is not a local folder with a config.json",
            hint="download the base model (mistralai/Mistral-7B-Instruct-v0.2) and pass its "
            "folder with --base",
        )
    return candidate


def load_tokenizer(checkpoint: Checkpoint, base_dir: Path):
    """The checkpoint's tokenizer, or the base's plus CLaRa's tokens, verified against the
    embedding rows. Padding is on the left; without a pad token, pad is bos."""
    config = checkpoint.config
    if checkpoint.has_tokenizer:
        source = checkpoint.path
        # AutoTokenizer reads config.json too and warns that "CLaRa" is no model type it knows
        level = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
        except (ValueError, OSError, KeyError) as e:
            # no tokenizer_class in tokenizer_config.json sends AutoTokenizer to config.json,
            # whose model_type "CLaRa" it does not know: read tokenizer.json directly
            if not (source / "tokenizer.json").is_file():
                raise CheckpointError(f"{source}: tokenizer files cannot be read ({e})") from e
            tokenizer = PreTrainedTokenizerFast.from_pretrained(source, padding_side="left")
        finally:
            transformers_logging.set_verbosity(level)
        base_len = None
    else:
        source = base_dir
        tokenizer = AutoTokenizer.from_pretrained(base_dir, padding_side="left")
        base_len = len(tokenizer)
        existing = list(tokenizer.special_tokens_map.get("additional_special_tokens", []) or [])
        tokenizer.add_special_tokens(
            {"additional_special_tokens": existing + config.added_tokens}
        )
    ids = tokenizer.convert_tokens_to_ids(config.added_tokens)
    unk = tokenizer.unk_token_id
    missing = [t for t, i in zip(config.added_tokens, ids, strict=True) if i is None or i == unk]
    if missing:
        raise CheckpointError(f"{source}: tokenizer lacks CLaRa's tokens {missing}")
    first = ids[0]
    if ids != list(range(first, first + len(ids))) or (base_len is not None and first != base_len):
        raise CheckpointError(
            f"{source}: CLaRa's tokens {config.added_tokens[:2]}..{config.added_tokens[-1]} have "
            f"ids {ids[:2]}..{ids[-1]}; they must follow the base vocabulary in order"
        )
    rows = checkpoint.embed.shape[0]
    if len(tokenizer) != rows:
        raise CheckpointError(
            f"{checkpoint.path / 'decoder_first_last_layers.pth'}: {rows} embedding rows, but "
            f"the tokenizer from {source} has {len(tokenizer)} tokens"
        )
    if tokenizer.bos_token_id is None:
        raise CheckpointError(f"{source}: tokenizer has no bos token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.bos_token_id
    return tokenizer


def read_base_config(base_dir: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(base_dir)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{base_dir / 'config.json'}: not a usable model config ({e})") from e


def check_base_shape(checkpoint: Checkpoint, base_config: PretrainedConfig, base_dir: Path) -> None:
    """Refuse a base of another shape before its weights are read: build it on the meta
    device and compare every LoRA target and the embedding width."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(base_config)
    hidden = base_config.hidden_size
    if checkpoint.embed.shape[1] != hidden:
        raise CheckpointError(
            f"{base_dir}: hidden size {hidden}, but the checkpoint's embeddings are "
            f"{checkpoint.embed.shape[1]} wide",
            hint="the base must be the model the checkpoint was trained on",
        )
    file = checkpoint.path / "adapters.pth"
    modules = dict(skeleton.named_modules())
    targets = {name for name, m in modules.items()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"}
    base_layers = {_layer_of(name) for name in targets}
    for adapter, pairs in checkpoint.adapters.items():
        extra = sorted(set(pairs) - targets)
        layers = {_layer_of(name) for name in pairs}
        if extra or layers != base_layers:
            raise CheckpointError(
                f"{file}: {adapter} does not fit the base model in {base_dir}: LoRA on "
                f"{len(layers)} decoder layers, the base has {len(base_layers)}"
                + (f"; {len(extra)} LoRA modules the base lacks, e.g. {extra[0]}" if extra
                   else ""),
                hint="the base must be the model the checkpoint was trained on",
            )
        for name, (a, b) in pairs.items():
            linear = modules[name]
            if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
                raise CheckpointError(
                    f"{file}: {adapter}.{name} is {a.shape[1]}->{b.shape[0]}, the base "
                    f"layer in {base_dir} is {linear.in_features}->{linear.out_features}"
                )


def _layer_of(module: str) -> str:
    """'model.layers.3.mlp.up_proj' -> 'model.layers.3'"""
    head, _, rest = module.partition(".layers.")
    return f"{head}.layers.{rest.split('.', 1)[0]}"


def fingerprint(checkpoint_dir: Path, base_dir: Path | None) -> str:
    """An id that changes when any weight file changes. Checkpoint files are hashed whole;
    the base's weight files (gigabytes) by name, size, and their first and last MiB."""
    digest = hashlib.sha256()
    for file in sorted(p for p in checkpoint_dir.iterdir() if p.is_file()):
        if file.suffix in (".json", ".pth", ".model", ".safetensors", ".txt"):
            digest.update(file.name.encode())
            with file.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    if base_dir is not None:
        for file in sorted(p for p in base_dir.iterdir() if p.is_file()):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
            with file.open("rb") as f:
                digest.update(f.read(1 << 20))
                f.seek(max(0, file.stat().st_size - (1 << 20)))
                digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def describe(checkpoint: Checkpoint, fp: str) -> dict:
    """What `kbd model info` prints; needs no base weights."""
    config = checkpoint.config
    return {
        "checkpoint": str(checkpoint.path),
        "stage": config.stage_name,
        "training_stage": config.training_stage,
        "compr_rate": config.compr_rate,
        "doc_max_length": config.doc_max_length,
        "memory_tokens": config.n_mem,
        "hidden_size": checkpoint.embed.shape[1],
        "adapters": sorted(checkpoint.adapters),
        "different_mem_tokens": config.different_mem_tokens,
        "sep": config.sep,
        "generation_top_k": config.generation_top_k,
        "fingerprint": fp,
    }


def pick_device(device: str, dtype: str) -> tuple[str, torch.dtype]:
    """The device and dtype to load weights onto, from the config's words ("auto" and names)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device cuda was asked for, but torch sees no CUDA GPU")
    if dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return device, DTYPES[dtype]


def attention_implementation(device: str) -> str:
    if device.startswith("cuda") and find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
