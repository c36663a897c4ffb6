"""Shared fixtures: tiny CLaRa checkpoints in the published layout, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kbd.model.testing import write_base_model, write_checkpoint

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

DOCS = [
    "disk full error on node 7 at 10:32 while writing block data",
    "user root login success from host 10 . 0 . 0 . 1 over ssh",
    "spark executor lost heartbeat and the job was restarted",
    "kernel panic on reboot of the master server",
    "connection closed by client after timeout",
    "hdfs block replica sent bytes to worker node",
    "apache server started and is listening on port 80",
]
QUESTIONS = ["what error happened on node 7 ?", "who did login as root ?"]


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    return write_base_model(tmp_path_factory.mktemp("base") / "mistral-tiny")


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory, base_dir):
    """make_checkpoint(**options) -> folder; one folder per distinct set of options."""
    made: dict[tuple, Path] = {}

    def make(**options) -> Path:
        key = tuple(sorted(options.items()))
        if key not in made:
            folder = tmp_path_factory.mktemp("ckpt") / "clara"
            made[key] = write_checkpoint(folder, base_dir, **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def e2e_dir(make_checkpoint) -> Path:
    return make_checkpoint()


@pytest.fixture(scope="session")
def e2e(e2e_dir, base_dir):
    from kbd.model.clara import Clara

    return Clara.load(e2e_dir, base_dir, device="cpu")
