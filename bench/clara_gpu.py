"""GPU benchmark of kbd's CLaRa runtime on a same-shape random Mistral-7B CLaRa.

The setting of ../shared/BENCHMARKS.md: Mistral-7B-Instruct-v0.2 shape, three LoRA adapters
(r=16), compression-16, doc_max_length 256, top-5, bf16, 250-token passages, generation forced
to 64 new tokens. Random weights cost the same FLOPs and memory as the real ones.

    python bench/clara_gpu.py --out bench/results/clara_gpu.json

Writes one JSON file: every timing is the median of --repeat runs after a warm-up, with the
GPU synchronised around each; peak memory is torch's max_memory_allocated for that scenario.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
import transformers

from kbd.model.clara import Clara, attention_implementation
from kbd.model.testing import WORDS, random_7b_clara

GIB = 1024**3
REFERENCE = {  # ../shared/BENCHMARKS.md, the authors' code on one H100
    "weights_gib": 13.75,
    "one_question_20_candidates_s": 3.65,
    "eight_questions_20_candidates_s": 5.20,
    "one_question_100_candidates_s": 4.30,
    "peak_gib_1x20_8x20_1x100": [16.4, 35.3, 27.2],
    "compress_passages_per_s_batch16_64": [77, 90],
    "decode_tokens_per_s": 22,
    "text_rag_1_8_questions_s": [3.15, 3.30],
}


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """(median seconds, peak GiB, last result) of fn() after one warm-up run."""
    result = fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / GIB, result


def passage(rng: random.Random, n_tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_tokens))  # one token per word


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/clara_gpu.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stored", type=int, default=100_000, help="passages in the index")
    parser.add_argument("--layers", type=int, default=32, help="fewer for a quick try")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    rng = random.Random(0)
    results: dict = {"reference": REFERENCE, "setting": {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "attention": attention_implementation("cuda"), "layers": args.layers,
        "repeat": args.repeat, "passage_tokens": 250, "new_tokens": 64, "top_k": 5,
    }}

    t0 = time.perf_counter()
    clara = random_7b_clara(args.layers)
    torch.cuda.synchronize()
    results["build_s"] = time.perf_counter() - t0
    results["weights_gib"] = torch.cuda.memory_allocated() / GIB

    docs = [passage(rng, 250) for _ in range(256)]
    q1 = ["what caused the disk full error on the hdfs node ?"]
    q8 = [f"question {i}: which service failed after the restart ?" for i in range(8)]
    gen = {"max_new_tokens": 64, "min_new_tokens": 64}

    for batch in (16, 64):
        clara.compress_batch_size = batch
        s, peak, _ = timed(lambda: clara.compress(docs), args.repeat)
        results[f"compress_batch{batch}"] = {"passages_per_s": len(docs) / s, "s": s,
                                             "peak_gib": peak}
    clara.compress_batch_size = 64

    for label, questions, n in (("1x20", q1, 20), ("8x20", q8, 20), ("1x100", q1, 100)):
        cands = [docs[i * n:(i + 1) * n] if n * len(questions) <= len(docs) else docs[:n]
                 for i in range(len(questions))]
        uncached, peak_u, _ = timed(lambda q=questions, c=cands: clara.answer(q, c, **gen),
                                    args.repeat)
        memory = [clara.compress(c) for c in cands]
        cached, peak_c, _ = timed(
            lambda q=questions, m=memory: clara.answer_from_memory(q, m, **gen), args.repeat)
        compress_s, _, _ = timed(lambda c=cands: [clara.compress(x) for x in c], args.repeat)
        query_s, _, queries = timed(lambda q=questions: clara.encode_queries(q), args.repeat)
        selected = [m[:5] for m in memory]
        generate_s, _, _ = timed(lambda q=questions, s=selected: clara.generate(q, s, **gen),
                                 args.repeat)
        results[f"answer_{label}"] = {
            "uncached_s": uncached, "cached_s": cached, "compress_s": compress_s,
            "query_s": query_s, "generate_s": generate_s,
            "peak_gib_uncached": peak_u, "peak_gib_cached": peak_c,
        }
    results["decode_tokens_per_s"] = 64 / results["answer_1x20"]["generate_s"]

    # the same base reading the top-5 passages as raw text (no adapter, no memory)
    tok = clara.tokenizer
    for label, questions in (("1", q1), ("8", q8)):
        prompts = [tok.apply_chat_template(
            [{"role": "user", "content": "\n\n".join(docs[:5]) + f"\n\nQuestion:{q}"}],
            tokenize=False, add_generation_prompt=True) for q in questions]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
        s, peak, _ = timed(lambda e=enc: clara.model.generate(
            **e, do_sample=False, max_new_tokens=64, min_new_tokens=64,
            pad_token_id=tok.pad_token_id), args.repeat)
        results[f"text_rag_{label}"] = {"s": s, "prompt_tokens": enc["input_ids"].shape[1],
                                        "peak_gib": peak}

    # ranking over a large store held on the GPU in bf16 (random vectors: ranking cost does
    # not depend on their values)
    stored = torch.randn(args.stored, clara.n_mem, clara.hidden, dtype=torch.bfloat16,
                         device="cuda")
    query = clara.encode_queries(q1)
    rank_s, rank_peak, _ = timed(lambda: Clara.rank(query, stored, 5), args.repeat)
    full_s, full_peak, _ = timed(lambda: clara.answer_from_memory(q1, stored, **gen),
                                 args.repeat)
    results["stored_index"] = {
        "passages": args.stored, "index_gib": stored.numel() * 2 / GIB,
        "rank_s": rank_s, "rank_peak_gib": rank_peak,
        "answer_cached_s": full_s, "answer_peak_gib": full_peak,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    summary = {k: v for k, v in results.items() if k not in ("reference", "setting")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
