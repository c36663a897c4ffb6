"""Train kbd's answerer: a LoRA adapter on the text engine's base model (SmolLM2-135M-Instruct)
that reads numbered lines and answers with the specific they hold and its [n], or "Not found
in the sources.".

    python train/examples.py --logs ../shared/data/loghub --out /tmp/examples.jsonl
    python train/answerer.py tokenize /tmp/examples.jsonl /tmp/examples.npz
    python train/answerer.py fit /tmp/examples.npz --base SmolLM2-135M-Instruct.Q4_1.gguf \
        --out kbd/data/answerer.safetensors

`tokenize` renders every example through the text engine's own prompt
(kbd.model.text.chat_prompt) with the base's tokenizer, so training sees exactly what
inference shows; `fit` needs only the token ids and the base, so it runs on a GPU machine
without kbd installed. On one H100 the shipped adapter took minutes (README, "The answerer").

The adapter is one safetensors file: LoRA pairs keyed as CLaRa's adapters are
(`model.layers.0.self_attn.q_proj.lora_A.weight` [r, in], `...lora_B.weight` [out, r]), in
float16, with its training in the file's metadata: seed, examples, steps, rank, alpha, the
base file's sha256. The training loop is the general one (token ids, a mask of the positions
that count, LoRA on every linear layer of the blocks), so a compressor or query reasoner for
the same base needs other examples and another loss, not another loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_TOKENS = 1024  # an example's prompt + answer; longer ones are left out


def sha256(path: Path) -> str:  # kbd's own is not imported: `fit` runs without kbd
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_base(base: Path, dtype=torch.float32):
    """The base model (a .gguf file, dequantized, or a model folder) and its files' id."""
    from transformers import AutoModelForCausalLM

    if base.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(base.parent, gguf_file=base.name,
                                                    dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)


def base_checksum(base: Path) -> str:
    return sha256(base if base.is_file() else base / "model.safetensors")


def tokenize(examples: Path, out: Path, base: str = "smollm2") -> None:
    """The examples as token ids: prompt (as the text engine renders it) then answer + eos."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kbd.model.text import chat_prompt, load_tokenizer, locate

    tokenizer = load_tokenizer(locate(base))
    ids, starts, answer_at = [], [0], []
    for line in examples.read_text().splitlines():
        e = json.loads(line)
        prompt = tokenizer(chat_prompt(tokenizer, e["question"], e["passages"]),
                           add_special_tokens=False)["input_ids"]
        answer = tokenizer(e["answer"], add_special_tokens=False)["input_ids"]
        row = prompt + answer + [tokenizer.eos_token_id]
        if len(row) > MAX_TOKENS:
            continue
        ids.extend(row)
        answer_at.append(len(prompt))
        starts.append(len(ids))
    np.savez_compressed(out, ids=np.array(ids, dtype=np.int32), starts=np.array(starts),
                        answer_at=np.array(answer_at), pad=tokenizer.pad_token_id,
                        eos=tokenizer.eos_token_id)
    print(f"{len(answer_at)} examples, {len(ids)} tokens -> {out}")


class Examples:
    def __init__(self, path: Path):
        data = np.load(path)
        self.ids, self.starts, self.answer_at = data["ids"], data["starts"], data["answer_at"]
        self.pad, self.eos = int(data["pad"]), int(data["eos"])

    def __len__(self) -> int:
        return len(self.answer_at)

    def row(self, i: int) -> tuple[np.ndarray, int]:
        return self.ids[self.starts[i]:self.starts[i + 1]], int(self.answer_at[i])

    def batch(self, rows: list[int], device) -> dict[str, torch.Tensor]:
        """Right-padded ids, their mask, and labels only at the answer's tokens."""
        got = [self.row(i) for i in rows]
        width = max(len(ids) for ids, _ in got)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (row, at) in enumerate(got):
            ids[r, :len(row)] = torch.from_numpy(row.astype(np.int64))
            labels[r, at:len(row)] = ids[r, at:len(row)]
            mask[r, :len(row)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "labels": labels.to(device)}


def lora_state(model, rank: int) -> dict[str, torch.Tensor]:
    """The trained LoRA pairs under the base model's own names, in float16."""
    out = {}
    for name, tensor in model.state_dict().items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        key = name.replace("base_model.model.", "", 1).replace(".default", "")
        out[key] = tensor.detach().to("cpu", torch.float16).contiguous()
    assert out, "no LoRA weights in the model"
    assert all(t.shape[0] == rank or t.shape[1] == rank for t in out.values()), "rank mismatch"
    return out


@torch.no_grad()
def exact_match(model, data: Examples, rows: list[int], device, max_new_tokens: int = 48) -> float:
    """Share of rows whose greedy answer is the target, token for token."""
    right = 0
    for i in rows:
        row, at = data.row(i)
        prompt = torch.from_numpy(row[:at].astype(np.int64))[None].to(device)
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=data.pad, eos_token_id=data.eos)
        right += out[0, at:].tolist()[:len(row) - at] == row[at:].tolist()
    return right / max(1, len(rows))


def fit(args) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto"
                          else "cuda" if torch.cuda.is_available() else "cpu")
    data = Examples(args.examples)
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    held_out, train = order[:args.eval_examples], order[args.eval_examples:]
    model = load_base(args.base).to(device)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                             lora_dropout=0.05, target_modules=TARGETS))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < warmup:
            return args.lr * (step + 1) / warmup
        done = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))

    model.train()
    start, losses = time.perf_counter(), []
    rng = random.Random(args.seed + 1)
    steps = args.steps
    for step in range(args.steps):
        if args.time_limit_s and time.perf_counter() - start > args.time_limit_s:
            steps = step  # the metadata records the steps taken
            print(f"time limit: stopped after {step} steps", flush=True)
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch = data.batch(rng.sample(train, min(args.batch, len(train))), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    train_s = time.perf_counter() - start
    meta = {"kind": "kbd-answerer-lora", "seed": args.seed, "examples": len(train),
            "eval_examples": len(held_out), "steps": steps, "batch": args.batch, "lr": args.lr,
            "rank": args.rank, "alpha": 2 * args.rank, "targets": TARGETS,
            "base": args.base.name, "base_sha256": base_checksum(args.base),
            "examples_sha256": sha256(args.examples), "final_loss": float(np.mean(losses[-50:])),
            "train_s": round(train_s, 1), "device": str(torch.cuda.get_device_name(device)
                                                        if device.type == "cuda" else "cpu")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(model, args.rank), args.out,
              metadata={k: json.dumps(v) for k, v in meta.items()})
    print(json.dumps(meta), f"-> {args.out}", flush=True)
    model.eval()  # after saving: a check of the adapter, not part of it
    model.config.use_cache = True
    print(f"held-out exact match {exact_match(model, data, held_out, device)} over "
          f"{len(held_out)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokenize", help="Examples (JSON lines) to token ids (.npz).")
    tok.add_argument("examples", type=Path)
    tok.add_argument("out", type=Path)
    tok.add_argument("--base", default="smollm2", help="as [model] text_model")
    run = sub.add_parser("fit", help="Train the adapter on tokenized examples.")
    run.add_argument("examples", type=Path)
    run.add_argument("--base", type=Path, required=True, help="the base's .gguf or folder")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--steps", type=int, default=1500)
    run.add_argument("--batch", type=int, default=32)
    run.add_argument("--lr", type=float, default=5e-4)
    run.add_argument("--rank", type=int, default=16)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--eval-examples", type=int, default=100)
    run.add_argument("--time-limit-s", type=float, help="Stop training after this long.")
    run.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.command == "tokenize":
        tokenize(args.examples, args.out, args.base)
    else:
        fit(args)


if __name__ == "__main__":
    main()
