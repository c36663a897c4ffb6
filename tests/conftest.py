"""Shared fixtures: tiny CLaRa checkpoints in the published layout, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# tests/ is on sys.path (pytest puts the folder of this conftest there): tests/support/ imports
# as `support`
from support.harness import (
    TinyModel,
    Unavailable,
    postgresql_database,
    postgresql_server,
)
from support.tiny import write_base_model, write_checkpoint

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


def counted(monkeypatch, module, name: str) -> list[tuple]:
    """The arguments of every call of module.name from now on (it still runs)."""
    calls: list[tuple] = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(a) or real(*a))
    return calls


def kernel_cannot_compile(monkeypatch, module) -> None:
    """module's Triton kernel raises as on a GPU Triton has no compiler for, with the CPU
    counting as a GPU."""
    from kbd.model import kernels

    def broken():
        raise RuntimeError("no compiler for this GPU")

    monkeypatch.setattr(kernels, "INTERPRETED", True)
    monkeypatch.setattr(module, "kernel", broken)
    monkeypatch.setattr(module, "failed", [])


def run_interpreted(test_file: str, passed: int) -> None:
    """A file of kernel tests (tests/support/*_interpreted.py) in a pytest of its own, with
    TRITON_INTERPRET=1 set before triton is imported, as the interpreter needs; all `passed`
    of its tests must pass."""
    pytest.importorskip("triton")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(Path(__file__).parent / "support" / test_file)],
        env=os.environ | {"TRITON_INTERPRET": "1"}, capture_output=True, text=True,
        timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{passed} passed" in run.stdout, run.stdout[-2000:]


@pytest.fixture(autouse=True)
def kbd_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test runs with a KBD_HOME of its own, never the user's: its config is
    <home>/config.toml, its data <home>/data. The folder is not made: `kbd init` and the
    daemon make what they need. A KBD_CONFIG from the environment is dropped, so the config
    is the one in this home; kbd subprocesses inherit both."""
    home = tmp_path_factory.mktemp("kbd") / "home"
    monkeypatch.setenv("KBD_HOME", str(home))
    monkeypatch.delenv("KBD_CONFIG", raising=False)
    return home


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
def tiny_model(e2e_dir, base_dir) -> TinyModel:
    """The e2e checkpoint and its base, as the daemon subprocess loads them."""
    return TinyModel(e2e_dir, base_dir)


@pytest.fixture(scope="session")
def e2e(e2e_dir, base_dir):
    from kbd.model.clara import Clara

    return Clara.load(e2e_dir, base_dir, device="cpu")


@pytest.fixture(scope="session")
def pair(e2e_dir, base_dir):
    """The e2e checkpoint twice: with kbd's own encoder and decoder, and with transformers'
    forward and generate() in their place, to compare against."""
    from kbd.model.clara import Clara

    fast = Clara.load(e2e_dir, base_dir, device="cpu")
    plain = Clara.load(e2e_dir, base_dir, device="cpu")
    plain.encoder = plain.decoder = None
    return fast, plain


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL 15 cluster (harness.postgresql_server); skipped, with the
    reason, where it cannot start."""
    try:
        with postgresql_server() as url:
            yield url
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kbd.sqlite3'}"
        return
    with postgresql_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def store(store_url, tmp_path):
    from kbd.store import Store

    s = Store.open(store_url, tmp_path / "memory")
    yield s
    s.close()


@pytest.fixture
def sqlite_ingester(tmp_path, e2e_dir):
    """An ingester into a SQLite store, for ranking that only SQLite's BM25 gets right:
    PostgreSQL's ts_rank_cd weighs no word by its rarity, so a common word ("block") scores
    like a block id, and a matched phrase adds little."""
    from kbd.ingest.pipeline import Ingester
    from kbd.model.tokens import PassageTokenizer
    from kbd.store import Store

    store = Store.open(f"sqlite:///{tmp_path / 'kbd.sqlite3'}", tmp_path / "memory")
    yield Ingester(store, PassageTokenizer.load(e2e_dir))
    store.close()
