"""Which levers move compression throughput on the GPU? A measurement for the GPU issue.

Builds the same-shape random 7B CLaRa as bench/clara_gpu.py (fewer layers with --layers: the
per-layer cost is what moves) and compresses 256 passages of 250 tokens with kbd's encoder
(kbd/model/encode.py) at batch 64 and 128, with a kernel profile of one batch of each. Then
it asks questions the way the daemon does (top-5, up to 128 new tokens), timing the first
ones after the warm-up. Earlier runs compared transformers' layers, compiled, the adapter
on the outputs or in the weights, and cuDNN's attention kernel or flash's (bench/NOTES.md).

    python bench/compress_levers.py --out bench/results/compress_levers.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from decode_levers import timed
from torch.profiler import ProfilerActivity, profile

from kbd.model.testing import WORDS, random_7b_clara

KINDS = (("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")),
         ("attention", ("flash", "fmha", "attention")),
         ("fused (triton)", ("triton",)))


def kernel_profile(fn) -> dict:
    """GPU milliseconds of one call of fn, by kind of kernel, and the ten longest kernels."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = event.device_time / 1000
        name = event.name.lower()
        kind = next((k for k, keys in KINDS if any(key in name for key in keys)), "other")
        by_kind[kind] += ms
        by_name[event.name[:90]] += ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:10]
    return {"total_ms": sum(by_kind.values()), "by_kind_ms": dict(by_kind),
            "top_kernels_ms": dict(top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/compress_levers.json"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    clara = random_7b_clara(args.layers)
    results: dict = {"gpu": torch.cuda.get_device_name(), "layers": args.layers,
                     "warm_up_s": clara.warm_up_s, "variants": {}}
    docs = [" ".join(rng.choice(WORDS) for _ in range(250)) for _ in range(256)]
    for batch in (64, 128):
        clara.compress_batch_size = batch
        s = timed(lambda: clara.compress(docs), args.repeat)
        results["variants"][f"batch{batch}"] = {
            "passages_per_s": len(docs) / s,
            "profile": kernel_profile(lambda b=batch: clara.compress(docs[:b])),
        }
        print(batch, json.dumps(results["variants"][f"batch{batch}"]), flush=True)

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
