"""`kbd ingest --once` and `kbd status` through the real entry point, with a config file."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.harness import (
    Kbd,
    make_logs,
    nobody_can_run_python,
    pdf_bytes,
    pdf_page,
    shared_dir,
    wait_for,
)


def kbd(env: dict, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", user, "--"] if user else []
    return subprocess.run([*prefix, sys.executable, "-m", "kbd", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def home_with(home: Path, folder: Path, model: str = "") -> dict:
    """The environment of a kbd run whose home (the test's KBD_HOME, tests/conftest.py) has a
    config watching `folder`."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'{model}\n[[folders]]\npath = "{folder}"\n')
    return dict(os.environ)


def test_ingest_then_status_without_model(tmp_path, kbd_home):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.log").write_text("2026-11-23 10:00:00 disk full on node 7\n")
    (folder / "junk.log").write_bytes(b"\x00\x01\x02" * 100)
    env = home_with(kbd_home, folder, '[model]\nengine = "clara"\n')
    done = kbd(env, "ingest", "--once", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcomes"] == {"added": 1, "failed:binary": 1, "recut": 0}
    shown = kbd(env, "status", "--json")
    assert shown.returncode == 3, shown.stderr  # no daemon: read from the store, exit 3
    status = json.loads(shown.stdout)
    assert status["documents"] == {"unchunked": 1}
    assert status["model"].startswith("not configured")
    assert [f["code"] for f in status["failed_files"]] == ["binary"]
    assert str(folder / "junk.log") in status["failed_files"][0]["message"]
    text = kbd(env, "status")
    assert "failed: " in text.stdout and "junk.log" in text.stdout


def test_model_configured_cuts_and_compresses(tmp_path, e2e_dir, base_dir, kbd_home):
    folder = tmp_path / "logs"
    folder.mkdir()
    for i in range(3):
        (folder / f"s{i}.log").write_text(f"2026-11-23 10:00:0{i} service {i} started\n" * 5)
    model = f'[model]\ncheckpoint = "{e2e_dir}"\nbase = "{base_dir}"\ndevice = "cpu"\n'
    env = home_with(kbd_home, folder, model)
    first = json.loads(kbd(env, "ingest", "--once", "--json").stdout)
    assert first["outcomes"]["added"] == 3 and first["compressed"] == 3
    again = json.loads(kbd(env, "ingest", "--once", "--json").stdout)
    assert again["outcomes"]["unchanged"] == 3 and again["compressed"] == 0
    status = json.loads(kbd(env, "status", "--json").stdout)
    assert status["backlog"] == 0 and status["passages"] == 3


def test_bad_config_is_a_clear_error(tmp_path, kbd_home):
    env = home_with(kbd_home, tmp_path)
    (kbd_home / "config.toml").write_text("[ingest]\ndebounce = 3\n")
    result = kbd(env, "status")
    assert result.returncode == 1
    assert "ingest.debounce: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not nobody_can_run_python(),
                    reason="needs root, and an interpreter and kbd that `nobody` may run")
def test_unreadable_file_as_another_user():
    """Root reads every file, so kbd runs as `nobody` here, over a file only root may read."""
    with shared_dir(prefix="kbd-perm-") as root:
        folder = root / "logs"
        folder.mkdir()
        secret = folder / "secret.log"
        secret.write_text("2026-11-23 root only\n")
        secret.chmod(0o600)
        (folder / "open.log").write_text("2026-11-23 anyone\n")
        # a home of its own, in a folder `nobody` may enter
        env = home_with(root / "home", folder) | {"KBD_HOME": str(root / "home")}
        nobody = pwd.getpwnam("nobody")
        for path in (root / "home",):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
            os.chown(path / "config.toml", nobody.pw_uid, nobody.pw_gid)
        env["HOME"] = str(root / "home")
        done = kbd(env, "ingest", "--once", "--json", user="nobody")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["outcomes"] == {"added": 1, "failed:unreadable": 1,
                                                      "recut": 0}


# -- errors people met as tracebacks (issue 20, item 8) ---------------------------------------

def test_a_store_from_a_newer_kbd_is_one_line_for_status_and_daemon(tmp_path, kbd_home):
    folder = tmp_path / "logs"
    make_logs(folder, 1)
    env = home_with(kbd_home, folder, '[model]\nengine = "clara"\n')
    assert kbd(env, "ingest", "--once").returncode == 0
    database = kbd_home / "data" / "kbd.sqlite3"
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999_from_the_future'")
    for command in ("status", "daemon"):
        refused = kbd(env, command)
        said = refused.stderr.strip().splitlines()
        assert refused.returncode == 1, (command, refused.stderr)
        assert len(said) == 1, (command, refused.stderr[-2000:])
        assert "written by a newer kbd" in said[0] and "0999_from_the_future" in said[0]
        assert str(database) in said[0]
    with sqlite3.connect(database) as conn:  # untouched
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0999_from_the_future",)]


def test_a_second_ingest_once_is_refused_naming_the_first(tmp_path, kbd_home):
    folder = tmp_path / "logs"
    make_logs(folder, 300)
    env = home_with(kbd_home, folder, '[model]\nengine = "clara"\n')
    lock = kbd_home / "data" / "kbd.sqlite3.lock"
    first = subprocess.Popen([sys.executable, "-m", "kbd", "ingest", "--once", "--json"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lock.exists() and f"pid {first.pid}" in lock.read_text(), timeout=60,
                 what="the first ingest to claim the store")
        first.send_signal(signal.SIGSTOP)  # held mid-ingest, however fast this machine is
        assert first.poll() is None, "the first ingest ended before the second could start"
        # the database's write lock held too (by the stopped ingest, or else here), as when
        # the first is stopped mid-transaction: the second is refused by name all the same
        with contextlib.closing(sqlite3.connect(kbd_home / "data" / "kbd.sqlite3", timeout=0,
                                                isolation_level=None)) as writer:
            with contextlib.suppress(sqlite3.OperationalError):
                writer.execute("BEGIN IMMEDIATE")
            second = kbd(env, "ingest", "--once")
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads(out)["outcomes"]["added"] == 300
    assert second.returncode == 1, second.stderr
    assert f"in use by kbd ingest --once pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr and "IntegrityError" not in second.stderr


def test_ingest_once_beside_a_running_daemon_is_refused(tmp_path):
    with Kbd(tmp_path, None, extra='[model]\nengine = "clara"\n') as daemon:
        daemon.start()
        make_logs(daemon.watched, 20)
        refused = daemon.cli("ingest", "--once")
        assert refused.returncode == 1, refused.stderr
        assert f"in use by kbd daemon pid {daemon.proc.pid}" in refused.stderr
        assert "Traceback" not in refused.stderr
        wait_for(lambda: daemon.live_documents() == 20, what="the daemon's own ingest")
        assert daemon.stop() == 0


def pdf_with_cff_font(lines: list[str]) -> bytes:
    """A one-page PDF whose font embeds a CFF program (FontFile3, Type1C) and has no
    ToUnicode map: pypdf reads its encoding with fontTools, and without it warns, quoting the
    whole font dictionary, for every page that uses the font (issue 20, item 10)."""
    stream = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({x}) Tj T*" for x in lines) + " ET"
    program = bytes(range(256)) * 4  # not a font fontTools can read: pypdf then goes on
    return pdf_bytes({
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: "<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /ABCDEF+Report /FontDescriptor 6 0 R >>",
        4: pdf_page(5),
        5: f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        6: "<< /Type /FontDescriptor /FontName /ABCDEF+Report /Flags 32 /ItalicAngle 0 "
           "/FontBBox [0 -200 1000 800] /Ascent 800 /Descent -200 /CapHeight 700 /StemV 80 "
           "/FontFile3 7 0 R >>",
        7: f"<< /Subtype /Type1C /Length {len(program)} >>\nstream\n"
           + program.decode("latin-1") + "\nendstream",
    })


def test_a_pdf_font_needing_fonttools_is_read_without_noise(tmp_path, e2e_dir, base_dir, kbd_home):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "incident.pdf").write_bytes(pdf_with_cff_font(
        ["Incident 42: disk full on node 7", "The replica was restored at 10:32"]))
    model = f'[model]\ncheckpoint = "{e2e_dir}"\nbase = "{base_dir}"\ndevice = "cpu"\n'
    env = home_with(kbd_home, folder, model)  # its tokenizer cuts passages
    done = kbd(env, "ingest", "--once", "--no-compress", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcomes"]["added"] == 1
    assert "font dictionary" not in done.stderr and "/FontDescriptor" not in done.stderr, \
        done.stderr[:2000]
    with sqlite3.connect(kbd_home / "data" / "kbd.sqlite3") as conn:
        stored = " ".join(text for (text,) in conn.execute("SELECT text FROM passages"))
    assert "disk full on node 7" in stored and "restored at 10:32" in stored
