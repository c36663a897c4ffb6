"""Shared fixtures: tiny CLaRa checkpoints in the published layout, built once per session."""

from __future__ import annotations

import os
import sys
import time
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


def wait_for(predicate, timeout: float = 60.0, what: str = "condition",
             tolerate: tuple[type[Exception], ...] = ()):
    """Poll until predicate() gives something true and return it; fail after timeout.
    Exceptions of the `tolerate` types count as "not yet" (a daemon still starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except tolerate:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL 15 cluster on a Unix socket, run as the postgres user when we
    are root (PostgreSQL refuses to run as root). Skipped, with the reason, where it cannot
    start."""
    import shutil
    import socket
    import subprocess
    import tempfile

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL not installed ({PG_BIN / 'initdb'} missing)")
    folder = Path(tempfile.mkdtemp(prefix="kbd-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "kbd", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                        str(folder / "log"), "-w", "-o",
                        f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off",
                        "start"], check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        pytest.skip(f"PostgreSQL could not start: {e} {detail.decode(errors='replace')[-300:]}")
    yield f"postgresql+psycopg://kbd@/postgres?host={folder}&port={port}"
    subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                    "stop"], capture_output=True, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kbd.sqlite3'}"
        return
    import uuid

    from sqlalchemy import create_engine, text

    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield server.replace("/postgres?", f"/{name}?")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def store(store_url, tmp_path):
    from kbd.store import Store

    s = Store.open(store_url, tmp_path / "memory")
    yield s
    s.close()
