"""Which levers move compression throughput on the GPU? A measurement for the GPU issue.

Builds the same-shape random 7B CLaRa as bench/clara_gpu.py (fewer layers with --layers: the
per-layer cost is what moves) and compresses 256 passages of 250 tokens with kbd's encoder
(kbd/model/encode.py) at batch 64 and 128, with a kernel profile of one batch of each. Then
it asks questions the way the daemon does (top-5, up to 128 new tokens), timing the first
ones after the warm-up. One lever (--lever) is alternated on and off: the norms folded into
the products, the q/k/v product with the rotary embedding in its kernel's epilogue, or
SiLU(gate)·up in the gate/up product's.
Earlier runs compared transformers' layers, compiled, the adapter on the outputs or in the
weights, cuDNN's attention kernel or flash's, and cuBLAS or cuBLASLt (bench/NOTES.md).

    python bench/compress_levers.py --out bench/results/compress_levers.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from profiling import kernel_profile, timed

from kbd.model.checkpoint import ENCODER
from kbd.model.encode import stacked
from kbd.model.kernels import merge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import WORDS, random_7b_clara  # noqa: E402


def merge_check(clara) -> dict:
    """kbd/model/kernels/merge.py's kernel against torch.addmm on layer 0's weight groups
    (bf16): the largest difference in units of the result's largest value, and milliseconds of
    each."""
    out = {}
    for name, (weight, _, a_parts, b_parts) in zip(
            ("qkv", "o", "gate_up", "down"), clara.encoder.groups[ENCODER][0], strict=True):
        a, b = stacked(a_parts, b_parts)
        kernel = merge.add_product(weight, b, a, clara.encoder.scale)
        reference = torch.addmm(weight, b, a, alpha=clara.encoder.scale)
        out[name] = {
            "rank": a.shape[0],
            "max_diff_of_max": ((kernel.float() - reference.float()).abs().max()
                                / reference.float().abs().max()).item(),
            "kernel_ms": 1000 * timed(lambda w=weight, a=a, b=b: merge.add_product(
                w, b, a, clara.encoder.scale), 10),
            "addmm_ms": 1000 * timed(lambda w=weight, a=a, b=b: torch.addmm(
                w, b, a, alpha=clara.encoder.scale), 10),
        }
    return out


def differences(a: torch.Tensor, b: torch.Tensor) -> dict:
    cosine = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    return {"max_diff_of_max": ((a - b).abs().max() / b.abs().max()).item(),
            "min_cosine": cosine.min().item(), "median_cosine": cosine.median().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/compress_levers.json"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lever", default="fold_norms",
                        choices=("fold_norms", "qkv_kernel", "gate_up_kernel"),
                        help="the encoder's switch alternated on and off")
    args = parser.parse_args()
    rng = random.Random(0)
    clara = random_7b_clara(args.layers)
    results: dict = {"gpu": torch.cuda.get_device_name(), "layers": args.layers,
                     "warm_up_s": clara.warm_up_s, "variants": {}}
    docs = [" ".join(rng.choice(WORDS) for _ in range(250)) for _ in range(256)]
    # what a whole call spends besides the GPU: tokenizing, and the GPU waiting on the host
    results["tokenize_256_s"] = timed(lambda: clara.passage_tokenizer.encoder_ids(docs),
                                      args.repeat)
    # of which the tokenizers library itself (the rest: transformers' wrapping of its output)
    backend = clara.tokenizer.backend_tokenizer
    wrapped = [f"<ENC>{clara.tokenizer.bos_token}{d}{clara.tokenizer.eos_token}" for d in docs]
    results["tokenize_256_backend_s"] = timed(
        lambda: backend.encode_batch(wrapped, add_special_tokens=False), args.repeat)
    for batch in (64, 128):
        clara.compress_batch_size = batch
        s = timed(lambda: clara.compress(docs), args.repeat)
        results["variants"][f"batch{batch}"] = {
            "passages_per_s": len(docs) / s,
            "profile": kernel_profile(lambda b=batch: clara.compress(docs[:b])),
        }
        print(batch, json.dumps(results["variants"][f"batch{batch}"]), flush=True)
    clara.compress_batch_size = 64
    results["whole_256_batch64"] = kernel_profile(lambda: clara.compress(docs))
    # the daemon's shape: one call a batch, so one merge of the adapter a batch
    s = timed(lambda: [clara.compress(docs[i:i + 64]) for i in range(0, len(docs), 64)],
              args.repeat)
    results["calls_of_64_passages_per_s"] = len(docs) / s
    results["merge"] = merge_check(clara)
    # the lever on and off, alternated so that both meet the same heat (the first of each
    # compiles)
    by_lever = {"on": [], "off": []}
    for on in (True, False) * 4:
        setattr(clara.encoder, args.lever, on)
        by_lever["on" if on else "off"].append(len(docs) / timed(lambda: clara.compress(docs), 2))
        print(args.lever, on, by_lever, flush=True)
    results[f"passages_per_s_by_{args.lever}"] = by_lever
    # how far the lever moves the memory vectors, beside how far cuBLAS alone moves them when
    # the same passages are compressed in a batch of another size (bf16 rounding)
    memory = {}
    for on in (False, True):
        setattr(clara.encoder, args.lever, on)
        memory[on] = clara.compress(docs[:64]).float()
    setattr(clara.encoder, args.lever, False)
    clara.compress_batch_size = 128
    memory["batch128"] = clara.compress(docs[:128])[:64].float()
    clara.compress_batch_size = 64
    setattr(clara.encoder, args.lever, True)
    results[f"{args.lever}_memory"] = {
        "on_vs_off": differences(memory[True], memory[False]),
        "off_batch128_vs_batch64": differences(memory["batch128"], memory[False])}

    # the daemon's first questions after the warm-up: nothing may compile now
    memory = clara.compress(docs[:64])
    asks = {}
    for label, questions in (("1", ["which node failed ?"]), ("1_again", ["what failed ?"]),
                             ("3", ["a ?", "b ?", "c ?"])):
        start = time.perf_counter()
        clara.answer_from_memory(questions, memory, top_k=5, max_new_tokens=128)
        torch.cuda.synchronize()
        asks[label] = time.perf_counter() - start
        print("ask", label, asks[label], flush=True)
    results["ask_after_warm_up_s"] = asks
    results["query_s"] = timed(lambda: clara.encode_queries(["which node failed ?"]), 5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
