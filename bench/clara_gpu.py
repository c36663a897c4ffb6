"""GPU benchmark of kbd's CLaRa runtime on a same-shape random Mistral-7B CLaRa.

The setting of ../shared/BENCHMARKS.md: Mistral-7B-Instruct-v0.2 shape, three LoRA adapters
(r=16), compression-16, doc_max_length 256, top-5, bf16, 250-token passages, generation forced
to 64 new tokens. Random weights cost the same FLOPs and memory as the real ones.

    python bench/clara_gpu.py --out bench/results/clara_gpu.json

Writes one JSON file: every timing is the median of --repeat runs after a warm-up, with the
GPU synchronised around each; peak memory is torch's max_memory_allocated for that scenario.
"Uncached" compresses the candidates at question time as the reference does; "cached" reads
memory compressed before. The stored index is kbd's MemoryIndex (4-bit codes on the GPU,
exact re-ranking from the matrix rows) over --stored random rows; its quality is measured on
memory the model produced, against exact float32 ranking.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from kbd.model import index as index_module
from kbd.model.clara import Clara, attention_implementation
from kbd.model.index import MemoryIndex
from kbd.model.text import TextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/tiny.py
from support.tiny import WORDS, random_7b_clara  # noqa: E402

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


class Rows:
    """A matrix file's stand-in held in host memory: rows(), matrix()[...] of bf16 bits."""

    def __init__(self, data: np.ndarray, shape: tuple[int, int]):
        self.data, self.shape, self.dtype = data, shape, "bfloat16"

    def rows(self) -> int:
        return len(self.data)

    def matrix(self) -> np.ndarray:
        return self.data


class Tiled(Rows):
    """n rows that repeat a small pool: row i is pool row i % len(pool)."""

    def __init__(self, pool: np.ndarray, n: int, shape: tuple[int, int]):
        super().__init__(pool, shape)
        self.n = n

    def rows(self) -> int:
        return self.n

    def matrix(self):
        return self

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.data[rows % len(self.data)]


def random_rows(n: int, shape: tuple[int, int]) -> Rows:
    """n random bf16 rows, drawn on the GPU a chunk at a time."""
    data = np.empty((n, *shape), dtype=np.uint16)
    for start in range(0, n, 4096):
        chunk = torch.randn(min(4096, n - start), *shape, dtype=torch.bfloat16, device="cuda")
        data[start:start + len(chunk)] = chunk.view(torch.int16).cpu().numpy().view(np.uint16)
    return Rows(data, shape)


def model_rows(memory: torch.Tensor) -> Rows:
    bits = memory.detach().contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
    return Rows(bits, tuple(memory.shape[1:]))


def simulated_index(n: int, shape: tuple[int, int]) -> MemoryIndex:
    """An index of n rows whose 4-bit codes are random (ranking cost does not depend on the
    values); only the rows re-ranked exactly are drawn, from a small random pool."""
    index = MemoryIndex(Tiled(random_rows(4096, shape).data, n, shape), "cuda")
    for start in range(0, n, index_module.BLOCK_ROWS):
        rows = min(index_module.BLOCK_ROWS, n - start)
        index.codes.append(torch.randint(0, 256, (rows, index.half), dtype=torch.uint8,
                                         device="cuda"))
        index.scales.append(torch.rand(rows, device="cuda") * 1e-3)
    index.rows = n
    return index


def gpu_serial() -> str | None:
    """The GPU's serial number, so runs on one GPU can be told from runs on another (H100s
    differ by a few percent at the power cap)."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=serial", "--format=csv,noheader",
                               "-i", str(torch.cuda.current_device())], capture_output=True,
                              text=True, timeout=30).stdout.strip() or None
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/clara_gpu.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stored", type=int, default=100_000, help="passages in the index")
    parser.add_argument("--layers", type=int, default=32, help="fewer for a quick try")
    parser.add_argument("--quality", type=int, default=4096,
                        help="passages compressed for the ranking-quality check")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    rng = random.Random(0)
    results: dict = {"reference": REFERENCE, "setting": {
        "gpu": torch.cuda.get_device_name(), "gpu_serial": gpu_serial(),
        "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "attention": attention_implementation("cuda"), "layers": args.layers,
        "repeat": args.repeat, "passage_tokens": 250, "new_tokens": 64, "top_k": 5,
    }}

    t0 = time.perf_counter()
    clara = random_7b_clara(args.layers)
    torch.cuda.synchronize()
    results["build_s"] = time.perf_counter() - t0
    results["weights_gib"] = torch.cuda.memory_allocated() / GIB
    results["warm_up_s"] = clara.warm_up_s  # compiling and recording at load

    docs = [passage(rng, 250) for _ in range(256)]
    q1 = ["what caused the disk full error on the hdfs node ?"]
    q8 = [f"question {i}: which service failed after the restart ?" for i in range(8)]
    gen = {"max_new_tokens": 64, "min_new_tokens": 64}

    for batch in (16, 64, 128):
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

    # the same base reading the top-5 passages as raw text: kbd's text engine (engine = "text",
    # kbd/model/text.py) with its own prompt, timed through the same decoder as CLaRa ("s")
    # and through the text engine's own generate, as the daemon runs it ("engine_s")
    tok = clara.tokenizer
    embed = clara.model.get_input_embeddings()
    text_engine = TextModel(clara.model, tok, "random-7b")
    shown = [(f"bench.log:{250 * i + 1}-{250 * (i + 1)}", doc) for i, doc in enumerate(docs[:5])]
    for label, questions in (("1", q1), ("8", q8)):
        rows = [text_engine.prompt(q, shown, 64)[0] for q in questions]
        enc = tok.pad({"input_ids": rows}, return_tensors="pt").to("cuda")
        s, peak, _ = timed(lambda e=enc: clara.decoder.generate(
            embed(e["input_ids"]), e["attention_mask"], 64, 64), args.repeat)
        engine_s, engine_peak, _ = timed(lambda q=questions: text_engine.generate(
            q, [shown] * len(q), 64, min_new_tokens=64), args.repeat)
        results[f"text_rag_{label}"] = {"s": s, "engine_s": engine_s,
                                        "prompt_tokens": enc["input_ids"].shape[1],
                                        "peak_gib": peak, "engine_peak_gib": engine_peak}
    results["clara_prompt_tokens"] = len(tok(clara._chat(
        "x", f"Background:\n{clara._slots(5)}\n\nQuestion:{q1[0]}"))["input_ids"])

    # ranking quality on memory the model produced: 4-bit + exact re-ranking vs exact float32
    produced = clara.compress([passage(rng, rng.randint(20, 250)) for _ in range(args.quality)])
    index = MemoryIndex(model_rows(produced), "cuda")
    index.refresh()
    asked = [passage(rng, rng.randint(4, 16)) for _ in range(1000)]
    queries = torch.cat([clara.encode_queries(asked[i:i + 100]) for i in range(0, 1000, 100)])
    exact = Clara.rank(queries, produced, 5)[0].cpu()
    agree = sum(p[0].tolist() == e.tolist()
                for i in range(0, 1000, 100)
                for p, e in zip(index.search(queries[i:i + 100], 5), exact[i:i + 100],
                                strict=True))
    codes_only = (index.coarse(queries).topk(5).indices.cpu() == exact).all(dim=1)
    results["quality"] = {"passages": args.quality, "queries": 1000,
                          "top5_agreement": agree / 1000,
                          "top5_agreement_codes_only": codes_only.float().mean().item()}
    del produced, index

    # the daemon's path over a large store: MemoryIndex on the GPU beside the model
    shape = (clara.n_mem, clara.hidden)
    rows = random_rows(args.stored, shape)
    torch.cuda.synchronize()
    start = time.perf_counter()
    index = MemoryIndex(rows, "cuda")
    index.refresh()
    torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    query = clara.encode_queries(q1)
    rank_s, _, _ = timed(lambda i=index: i.search(query, 5), args.repeat)
    one_s, one_peak, _ = timed(lambda i=index: clara.answer_from_memory(q1, i, **gen),
                               args.repeat)
    q32 = [f"standing question {i}: which service failed after the restart ?" for i in range(32)]
    many_s, many_peak, _ = timed(lambda i=index: clara.answer_from_memory(q32, i, **gen),
                                 args.repeat)
    results["stored_index"] = {
        "passages": args.stored, "held_as": "4-bit codes on the GPU + exact rows in host memory",
        "index_gib": sum(c.numel() for c in index.codes) / GIB, "build_s": build_s,
        "rank_s": rank_s, "answer_1_s": one_s, "answer_1_peak_gib": one_peak,
        "answer_32_s": many_s, "answer_32_peak_gib": many_peak,
    }
    del index, rows

    # how ranking time and memory grow: 10k / 100k / 1M rows (random codes)
    results["scaling"] = {}
    for n in (10_000, 100_000, 1_000_000):
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        index = simulated_index(n, shape)
        held = (torch.cuda.memory_allocated() - before) / GIB
        rank_s, _, _ = timed(lambda i=index: i.search(query, 5), args.repeat)
        results["scaling"][str(n)] = {"rank_s": rank_s, "index_gib": held}
        del index

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    summary = {k: v for k, v in results.items() if k not in ("reference", "setting")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
