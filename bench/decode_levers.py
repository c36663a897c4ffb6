"""Which levers move single-stream decoding on the GPU? A measurement for the GPU issue.

Builds the same-shape random 7B CLaRa as bench/clara_gpu.py and times one question, top-5
memory, 64 new tokens (forced), under:
  merged    - generate() of transformers, the decoder adapter merged into the base weights
  static    - the same with a static KV cache (transformers compiles the decode step)
  kbd       - kbd's StaticDecoder: static cache, each step one CUDA graph replay
and kbd's decoder for 8 and 32 questions at once.
(The first measurement also had "lora": the adapter applied per layer; see bench/NOTES.md.)

    python bench/decode_levers.py --out bench/results/decode_levers.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kbd.model.decode import StaticDecoder, fuse_layers
from kbd.model.testing import random_7b_clara


def timed(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_levers.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    clara = random_7b_clara(args.layers)
    memory = torch.randn(5, clara.n_mem, clara.hidden, dtype=torch.bfloat16, device="cuda")
    question = ["what caused the disk full error on the hdfs node ?"]
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}

    def generate(questions=question, **extra):
        return lambda: clara.generate(questions, [memory] * len(questions), max_new_tokens=64,
                                      min_new_tokens=64, **extra)

    results["kbd_s"] = timed(generate(), args.repeat)
    for n in (8, 32):
        results[f"kbd_{n}_questions_s"] = timed(generate(question * n), args.repeat)
    decoder, clara.decoder = clara.decoder, None
    results["merged_s"] = timed(generate(), args.repeat)
    clara.model.generation_config.cache_implementation = "static"
    try:
        results["static_s"] = timed(generate(), args.repeat)
    except Exception as e:  # noqa: BLE001 - a lever that fails is a finding too
        results["static_error"] = repr(e)[:500]
    clara.decoder = StaticDecoder(clara.model, fuse_layers(clara.model),
                                  clara.model.generation_config.eos_token_id,
                                  clara.tokenizer.pad_token_id, compile_step=True)
    start = time.perf_counter()
    results["kbd_compiled_s"] = timed(generate(), args.repeat)
    results["kbd_compiled_first_call_s"] = time.perf_counter() - start
    for n in (8, 32):
        results[f"kbd_compiled_{n}_questions_s"] = timed(generate(question * n), args.repeat)
    clara.decoder = decoder
    for key in ("merged_s", "static_s", "kbd_s", "kbd_compiled_s"):
        if key in results:
            results[key.replace("_s", "_tokens_per_s")] = 64 / results[key]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
