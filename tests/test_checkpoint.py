"""Loading refuses broken or mismatched checkpoints with a message naming the file and the
problem; `kbd model info` and `kbd model answer` print the documented JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import DOCS
from support.tiny import write_base_model

from kbd.cli import cli
from kbd.errors import CheckpointError
from kbd.model.clara import Clara


@pytest.fixture
def broken(tmp_path, e2e_dir) -> Path:
    """A private copy of the E2E checkpoint that a test may damage."""
    return Path(shutil.copytree(e2e_dir, tmp_path / "broken"))


def load(folder, base):
    return Clara.load(folder, base, device="cpu")


def edit_config(folder: Path, **changes) -> None:
    raw = json.loads((folder / "config.json").read_text())
    raw.update(changes)
    (folder / "config.json").write_text(json.dumps(raw))


class TestRefusals:
    @pytest.mark.parametrize("name", ["config.json", "adapters.pth",
                                      "decoder_first_last_layers.pth"])
    def test_missing_file(self, broken, base_dir, name):
        (broken / name).unlink()
        with pytest.raises(CheckpointError, match=f"{name}: missing"):
            load(broken, base_dir)

    def test_missing_folder(self, tmp_path, base_dir):
        with pytest.raises(CheckpointError, match="does not exist"):
            load(tmp_path / "nowhere", base_dir)

    def test_not_clara(self, broken, base_dir):
        edit_config(broken, model_type="mistral")
        with pytest.raises(CheckpointError, match=r"config.json: model_type is 'mistral'"):
            load(broken, base_dir)

    def test_config_not_json(self, broken, base_dir):
        (broken / "config.json").write_text("{not json")
        with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
            load(broken, base_dir)

    def test_unknown_stage(self, broken, base_dir):
        edit_config(broken, training_stage="stage9")
        with pytest.raises(CheckpointError, match="training_stage 'stage9'"):
            load(broken, base_dir)

    def test_missing_adapter(self, broken, base_dir):
        adapters = torch.load(broken / "adapters.pth", weights_only=True)
        del adapters["query_reasoner_adapter"]
        torch.save(adapters, broken / "adapters.pth")
        with pytest.raises(CheckpointError,
                           match=r"adapters.pth: adapter 'query_reasoner_adapter' is missing"):
            load(broken, base_dir)

    def test_wrong_rank(self, broken, base_dir):
        edit_config(broken, lora_r=8)
        with pytest.raises(CheckpointError, match="adapters.pth: .*expected rank lora_r=8"):
            load(broken, base_dir)

    def test_corrupt_weights_file(self, broken, base_dir):
        (broken / "adapters.pth").write_bytes(b"\x00garbage" * 10)
        with pytest.raises(CheckpointError, match="adapters.pth: cannot be read"):
            load(broken, base_dir)

    def test_embedding_rows_do_not_match_tokenizer(self, broken, base_dir):
        layers = torch.load(broken / "decoder_first_last_layers.pth", weights_only=True)
        layers = {k: torch.cat([v, v[:1]]) for k, v in layers.items()}
        torch.save(layers, broken / "decoder_first_last_layers.pth")
        with pytest.raises(CheckpointError, match=r"decoder_first_last_layers.pth: 532 "
                                                  r"embedding rows, but the tokenizer"):
            load(broken, base_dir)

    def test_tokens_out_of_order(self, broken, base_dir):
        """Without tokenizer files the base's tokenizer is extended; a base with a different
        vocabulary size puts CLaRa's ids elsewhere and is refused."""
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (broken / name).unlink(missing_ok=True)
        assert load(broken, base_dir).mem_ids[0] == 512  # extended base tokenizer works
        other = write_base_model(broken.parent / "base600", vocab_size=600)
        with pytest.raises(CheckpointError, match="must follow the base vocabulary|rows"):
            load(broken, other)

    def test_base_of_another_width(self, e2e_dir, tmp_path):
        other = write_base_model(tmp_path / "wide", hidden=96, heads=4, kv_heads=2)
        with pytest.raises(CheckpointError, match="hidden size 96"):
            load(e2e_dir, other)

    def test_base_with_other_layers(self, e2e_dir, tmp_path):
        other = write_base_model(tmp_path / "deep", layers=3)
        with pytest.raises(CheckpointError, match="adapters.pth: encoder_adapter does not fit"):
            load(e2e_dir, other)

    def test_base_with_other_ffn(self, e2e_dir, tmp_path):
        other = write_base_model(tmp_path / "ffn", ffn=96)
        with pytest.raises(CheckpointError, match="adapters.pth: .*mlp.*64->128.*64->96"):
            load(e2e_dir, other)

    def test_base_not_found(self, e2e_dir, tmp_path):
        with pytest.raises(CheckpointError, match="base model not found") as err:
            load(e2e_dir, tmp_path / "no-base")
        assert "--base" in str(err.value)

    def test_base_from_config_when_local(self, e2e_dir):
        assert load(e2e_dir, None).n_mem == 16  # decoder_model_name is the local base folder


class TestTolerated:
    def test_tokenizer_config_without_class(self, broken, base_dir):
        """AutoTokenizer would fall back to config.json ("CLaRa"); tokenizer.json is read."""
        config = json.loads((broken / "tokenizer_config.json").read_text())
        config.pop("tokenizer_class", None)
        (broken / "tokenizer_config.json").write_text(json.dumps(config))
        assert load(broken, base_dir).mem_ids[0] == 512

    def test_lora_on_some_projections_only(self, broken, base_dir):
        adapters = torch.load(broken / "adapters.pth", weights_only=True)
        for state in adapters.values():
            for key in [k for k in state if "mlp" in k]:
                del state[key]
        torch.save(adapters, broken / "adapters.pth")
        clara = load(broken, base_dir)
        assert clara.compress(DOCS[:2]).shape == (2, 16, 64)


class TestInfoAndFingerprint:
    def test_info_json(self, e2e_dir):
        result = CliRunner().invoke(cli, ["model", "info", "--checkpoint", str(e2e_dir),
                                          "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert info["stage"] == "e2e" and info["training_stage"] == "stage2"
        assert (info["compr_rate"], info["memory_tokens"], info["hidden_size"]) == (16, 16, 64)
        assert info["adapters"] == ["decoder_adapter", "encoder_adapter",
                                    "query_reasoner_adapter"]
        assert len(info["fingerprint"]) == 16

    def test_fingerprint_follows_weights(self, broken, base_dir):
        before = load(broken, base_dir).fingerprint
        assert load(broken, base_dir).fingerprint == before
        adapters = torch.load(broken / "adapters.pth", weights_only=True)
        key = next(iter(adapters["decoder_adapter"]))
        adapters["decoder_adapter"][key][0, 0] += 1.0
        torch.save(adapters, broken / "adapters.pth")
        assert load(broken, base_dir).fingerprint != before

    def test_info_error_is_clean(self, tmp_path):
        result = CliRunner().invoke(cli, ["model", "info", "--checkpoint", str(tmp_path)])
        assert result.exit_code == 1
        assert "config.json: missing from the checkpoint" in result.output
        assert "Traceback" not in result.output


class TestAnswerCommand:
    def test_answer_json_matches_api(self, e2e, e2e_dir, base_dir):
        args = ["model", "answer", "--checkpoint", str(e2e_dir), "--base", str(base_dir),
                "--device", "cpu", "--dtype", "float32", "--top-k", "3",
                "--max-new-tokens", "6", "--question", "what failed on node 7 ?", "--json"]
        for doc in DOCS:
            args += ["--doc", doc]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert set(out) == {"answer", "indices", "scores"}
        (want,) = e2e.answer(["what failed on node 7 ?"], [DOCS], top_k=3, max_new_tokens=6)
        assert out["answer"] == want.text and out["indices"] == want.indices
        assert out["scores"] == pytest.approx(want.scores, abs=1e-6)

    def test_answer_as_subprocess(self, e2e_dir, base_dir):
        """The installed entry point, as outside checks call it."""
        proc = subprocess.run(
            [sys.executable, "-m", "kbd", "model", "answer", "--checkpoint", str(e2e_dir),
             "--base", str(base_dir), "--device", "cpu", "--max-new-tokens", "4",
             "-q", "who logged in ?", "--doc", DOCS[0], "--doc", DOCS[1], "--json"],
            capture_output=True, text=True, timeout=300, env=os.environ | {"KBD_DEBUG": ""},
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert sorted(out["indices"]) == [0, 1] and len(out["scores"]) == 2

    def test_instruct_refuses_top_k(self, make_checkpoint, base_dir):
        folder = make_checkpoint(training_stage="stage1_2")
        common = ["model", "answer", "--checkpoint", str(folder), "--base", str(base_dir),
                  "--max-new-tokens", "3", "-q", "what failed ?", "--doc", DOCS[0],
                  "--doc", DOCS[1], "--json"]
        refused = CliRunner().invoke(cli, [*common, "--top-k", "1"])
        assert refused.exit_code == 1 and "cannot rank" in refused.output
        given = CliRunner().invoke(cli, common)
        assert given.exit_code == 0, given.output
        assert json.loads(given.stdout)["indices"] == [0, 1]

    def test_empty_doc_is_a_clean_error(self, e2e_dir, base_dir):
        result = CliRunner().invoke(cli, ["model", "answer", "--checkpoint", str(e2e_dir),
                                          "--base", str(base_dir), "-q", "why ?",
                                          "--doc", "fine", "--doc", "  "])
        assert result.exit_code == 1
        assert "passage 1 is empty" in result.output
