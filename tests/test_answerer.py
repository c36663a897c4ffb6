"""The answerer's training: examples from log lines, and a few CPU steps on a tiny model."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import examples  # noqa: E402


def test_examples_answer_from_the_shown_lines_or_say_not_found_the_same_for_one_seed():
    made = examples.make([], synthetic=7, count=200, negatives=0.2, seed=3)
    assert len(made) == 200
    assert examples.make([], synthetic=7, count=200, negatives=0.2, seed=3) == made  # seeded
    for e in made:
        assert [p[0] for p in e["passages"]] == list(range(1, len(e["passages"]) + 1))
        if e["answer"] == examples.NOT_FOUND:
            continue
        cite = re.search(r" \[(\d+)\]", e["answer"])
        lead = e["answer"][:cite.start()].strip('"').removesuffix(" ...")
        cited = int(cite[1])
        assert lead[:20] in e["passages"][cited - 1][2], e
    assert 0.1 < sum(e["answer"] == examples.NOT_FOUND for e in made) / len(made) < 0.5


def test_fit_writes_a_small_adapter_with_its_training_metadata_the_same_for_one_seed(tmp_path):
    base = tmp_path / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(base)
    rng = random.Random(0)
    rows = [[rng.randrange(3, 64) for _ in range(rng.randint(8, 20))] for _ in range(12)]
    ids = [i for row in rows for i in row]
    starts = np.cumsum([0] + [len(r) for r in rows])
    np.savez_compressed(tmp_path / "ex.npz", ids=np.array(ids), starts=starts,
                        answer_at=np.array([len(r) - 4 for r in rows]), pad=0, eos=2)
    outs = [tmp_path / "adapter.safetensors", tmp_path / "again.safetensors"]
    for out in outs:  # twice, the same seed: the same adapter
        subprocess.run([sys.executable, str(ROOT / "train" / "answerer.py"), "fit",
                        str(tmp_path / "ex.npz"), "--base", str(base), "--out", str(out),
                        "--steps", "3", "--batch", "4", "--rank", "4", "--eval-examples", "2",
                        "--device", "cpu"], check=True, capture_output=True, cwd=ROOT)
    with safe_open(outs[0], "pt") as f, safe_open(outs[1], "pt") as again:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        keys = list(f.keys())
        assert all(torch.equal(f.get_tensor(k), again.get_tensor(k)) for k in keys)
        assert json.loads(again.metadata()["final_loss"]) == meta["final_loss"]
    assert meta["steps"] == 3 and meta["seed"] == 0 and meta["examples"] == 10
    assert len(meta["base_sha256"]) == 64
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert len(keys) == 2 * 7 * 2  # A and B, 7 projections, 2 layers


def test_the_adapter_is_added_into_the_weights_it_names(tmp_path):
    import torch
    from safetensors.torch import save_file

    from kbd.model.text import TextModelError, TextModelFiles, adapter_info, apply_adapter

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2))
    a, b = torch.randn(4, 32), torch.randn(32, 4)
    path = tmp_path / "answerer.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.lora_A.weight": a.half(),
               "model.layers.0.self_attn.q_proj.lora_B.weight": b.half()}, path,
              metadata={"rank": "4", "alpha": "8", "seed": "0"})
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    apply_adapter(model, path, TextModelFiles(tmp_path))
    added = model.model.layers[0].self_attn.q_proj.weight - before
    assert torch.allclose(added, b.half().float() @ a.half().float() * 2, atol=1e-3)
    assert adapter_info(path)["seed"] == 0
    save_file({"model.layers.9.mlp.up_proj.lora_A.weight": a.half(),
               "model.layers.9.mlp.up_proj.lora_B.weight": b.half()}, path,
              metadata={"rank": "4", "alpha": "8"})
    try:
        apply_adapter(model, path, TextModelFiles(tmp_path))
    except TextModelError as e:
        assert "model.layers.9.mlp.up_proj" in str(e)
    else:
        raise AssertionError("an adapter for another model was applied")


def test_the_answerers_not_found_is_a_decline_and_its_answer_ends_at_its_citation():
    from kbd.model.text import first_cited
    from kbd.runtime import evidence
    from kbd.runtime.engines import NOT_FOUND, Evidence

    line = evidence.Line(7, "Dec 10 sshd[24503]: Invalid user oracle from 187.141.143.180")
    found = Evidence("Which IP tried the invalid user oracle?", [(1, 11, 2.0)],
                     [evidence.Shown(1, "OpenSSH.log", [line], [line])],
                     {"oracle": 1.0, "invalid": 0.5})
    declined = found.reply("Not found in the sources.", held=1)
    assert (declined.status, declined.text) == ("not-found", NOT_FOUND)
    said = found.reply("187.141.143.180 [1]", held=1)
    assert (said.status, said.text, said.extractive) == ("ok", "187.141.143.180 [1]", False)
    assert first_cited('187.141.143.180 [1] ("Invalid user oracle from ...").') == \
        "187.141.143.180 [1]"
    assert first_cited('"sshd[24503]: Invalid user oracle" [2].') == \
        '"sshd[24503]: Invalid user oracle" [2]'
    assert first_cited("Not found in the sources. Try again.") == "Not found in the sources."
