"""Does adding the output and down projections into the residual stream in cuBLAS's epilogue
(addmm_ into h) beat writing them out and adding them in the next norm's kernel? And does the
gate/up kernel's group of 16 row tiles (half the weight re-reads from memory) beat 8 at the
power cap? Alternated in one run, so every variant meets the same heat.

    python bench/residual_epilogue.py bench/results/residual_epilogue.json
"""

from __future__ import annotations

import json
import random
import sys

import torch
from profiling import kernel_profile, timed

from kbd.model import swiglu
from kbd.model.swiglu import Tiles
from kbd.model.testing import WORDS, random_7b_clara

VARIANTS = {"epilogue, group 8": (True, Tiles()), "next norm, group 8": (False, Tiles()),
            "epilogue, group 16": (True, Tiles(group=16)),
            "next norm, group 16": (False, Tiles(group=16))}


def use(clara, variant: str) -> None:
    epilogue, tiles = VARIANTS[variant]
    clara.encoder.epilogue = epilogue
    swiglu.launch.__defaults__ = (tiles,)


def main() -> None:
    rng = random.Random(0)
    clara = random_7b_clara(32)
    docs = [" ".join(rng.choice(WORDS) for _ in range(250)) for _ in range(256)]
    clara.compress_batch_size = 64
    results: dict = {"gpu": torch.cuda.get_device_name(), "warm_up_s": clara.warm_up_s,
                     "passages_per_s": {v: [] for v in VARIANTS}, "profile": {}, "memory": {}}
    memory = {}
    for variant in VARIANTS:
        use(clara, variant)
        memory[variant] = clara.compress(docs[:64]).float()  # compiles the variant
        results["profile"][variant] = kernel_profile(lambda: clara.compress(docs))
        print(variant, json.dumps(results["profile"][variant])[:1500], flush=True)
    base = memory["next norm, group 8"]
    for variant, m in memory.items():
        cosine = torch.nn.functional.cosine_similarity(m.flatten(1), base.flatten(1))
        results["memory"][variant] = {"min_cosine": cosine.min().item(),
                                      "median_cosine": cosine.median().item()}
    for _ in range(4):
        for variant in VARIANTS:
            use(clara, variant)
            results["passages_per_s"][variant].append(len(docs) / timed(
                lambda: clara.compress(docs), 2))
        print(json.dumps(results["passages_per_s"]), flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results["memory"]), flush=True)


if __name__ == "__main__":
    main()
