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
import sys
import time
from pathlib import Path

import torch
from profiling import kernel_profile, timed

from kbd.model.decode import StaticDecoder, fuse_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import random_7b_clara  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_levers.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--kbd-only", action="store_true",
                        help="leave out transformers' generate() and the recompiled decoder")
    args = parser.parse_args()
    clara = random_7b_clara(args.layers)
    memory = torch.randn(5, clara.n_mem, clara.hidden, dtype=torch.bfloat16, device="cuda")
    question = ["what caused the disk full error on the hdfs node ?"]
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}

    def generate(questions=question, **extra):
        return lambda: clara.generate(questions, [memory] * len(questions), max_new_tokens=64,
                                      min_new_tokens=64, **extra)

    results["kbd_s"] = timed(generate(), args.repeat)
    results["kbd_tokens_per_s"] = 64 / results["kbd_s"]
    # one question's decode steps, kernel by kernel: the graph replays alone, not the prefill
    session = next(s for (b, _), s in clara.decoder._sessions.items() if b == 1)
    results["kbd_step_profile"] = kernel_profile(session.graph.replay, calls=64)
    for n in (8, 32):
        results[f"kbd_{n}_questions_s"] = timed(generate(question * n), args.repeat)
    if args.kbd_only:
        write(args.out, results)
        return
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
    for key in ("merged_s", "static_s", "kbd_compiled_s"):
        if key in results:
            results[key.replace("_s", "_tokens_per_s")] = 64 / results[key]
    write(args.out, results)


def write(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
