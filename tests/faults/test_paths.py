"""Paths a watched folder may hold that are not plain UTF-8 files inside it, under the real
daemon on its real socket (issue 20, items 1, 2 and 9):

- a file name that is not UTF-8 is stored byte for byte and never stops the files after it:
  at start, on reload (`kbd watch add`), in `kbd ingest --once`; `kbd status` and
  `kbd docs list --json` print it;
- a symlink that leads outside the watched folders is not read unless its folder says
  follow_symlinks, and is listed as failed with its reason; one that leads to a file kbd
  ingests anyway is not stored a second time;
- a watched root that is itself a symlink gets live events;
- a directory made readable again (chmod 755 after 000) has its files retried at once, not at
  the next rescan (an hour away here).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from support.harness import Kbd, TinyModel, make_logs, unprivileged_unavailable, wait_for

from kbd.store.schema import documents, passages

NO_RESCAN = {"rescan_interval_s": 3600.0}  # whatever gets in is seen through events


def named(folder: Path, name: bytes) -> Path:
    """folder/name for a name of any bytes, as Python spells it (os.fsdecode)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def write_name(folder: Path, name: bytes, text: str) -> Path:
    path = named(folder, name)
    path.write_text(text)
    return path


def live_texts(kbd: Kbd) -> dict[str, str]:
    """Each live document's path and the text of its live passages."""
    engine = create_engine(kbd.loaded_config().database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(documents.c.path, passages.c.text)
                                .join(passages, passages.c.document_id == documents.c.id)
                                .where(documents.c.deleted_at.is_(None), passages.c.live))
            texts: dict[str, str] = {}
            for path, text in rows:
                texts[path] = texts.get(path, "") + text
            return texts
    finally:
        engine.dispose()


def seconds_until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    wait_for(predicate, timeout=timeout, what=what)
    return time.monotonic() - start


def failures(kbd: Kbd) -> dict[str, str]:
    return {f["path"]: f["code"] for f in kbd.status()["failed_files"]}


def test_name_not_utf8_stops_nothing(tmp_path: Path, tiny_model: TinyModel):
    def fill(folder: Path) -> Path:
        make_logs(folder, 100, lines=2, name="a")
        bad = write_name(folder, b"m\xff.log", "2026-11-23 10:00:00 the line of m-xff\n")
        make_logs(folder, 100, lines=2, name="z")
        make_logs(named(folder, b"d\xfe"), 1, lines=2)
        return bad

    once = Kbd(tmp_path / "once", tiny_model)
    fill(once.watched)
    result = once.cli("ingest", "--once", "--no-compress")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("202 files: 202 added"), result.stdout
    assert once.consistency().clean

    with Kbd(tmp_path / "daemon", tiny_model, ingest=NO_RESCAN) as kbd:
        bad = fill(kbd.watched)
        kbd.start()
        kbd.settled(202)
        assert kbd.consistency().clean
        assert "the line of m-xff" in live_texts(kbd)[str(bad)]  # the name's bytes round-trip

        status = kbd.cli("status")
        assert status.returncode == 0 and "documents:" in status.stdout, status.stderr
        listed = kbd.cli("docs", "list", "--json", "--limit", "1000")
        assert listed.returncode == 0, listed.stderr
        paths = {os.fsencode(d["path"]) for d in json.loads(listed.stdout)["documents"]}
        assert os.fsencode(bad) in paths and len(paths) == 202
        under = kbd.cli("docs", "list", "--prefix", str(named(kbd.watched, b"d\xfe")))
        assert under.returncode == 0 and under.stdout.endswith("1 documents\n"), under.stderr
        shown = kbd.cli("docs", "show", str(bad))
        assert shown.returncode == 0 and "the line of m-xff" in shown.stdout, shown.stderr

        # reload: the scan meets the bad name first, then the new folder's files
        added = tmp_path / "added"
        make_logs(added, 5, name="b")
        write_name(added, b"n\xfe\xfd.log", "2026-11-23 10:00:00 the line of n-xfe\n")
        assert kbd.cli("watch", "add", str(added)).returncode == 0
        kbd.settled(208)
        assert kbd.consistency().clean


def test_symlinks_outside_are_not_followed(tmp_path: Path, tiny_model: TinyModel):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root:$6$secret-hash-line:19000:0:99999:7:::\n")
    trusting = tmp_path / "trusting"
    trusting.mkdir()
    (trusting / "followed.log").symlink_to(secret)
    with Kbd(tmp_path, tiny_model, ingest=NO_RESCAN,
             extra=f'[[folders]]\npath = "{trusting}"\nfollow_symlinks = true\n') as kbd:
        real = kbd.watched / "real.log"
        real.write_text("2026-11-23 10:00:00 a line inside the watched folder\n")
        (kbd.watched / "inside.log").symlink_to(real)
        kbd.start()
        leak = kbd.watched / "leak.log"
        leak.symlink_to(secret)  # made while watched: its event is refused too
        wait_for(lambda: failures(kbd).get(str(leak)) == "symlink-outside", timeout=60,
                 what="the link outside listed as symlink-outside")
        kbd.settled(2)  # real.log, and followed.log where its folder allows it
        texts = live_texts(kbd)
        assert set(texts) == {str(real), str(trusting / "followed.log")}
        assert "secret-hash-line" in texts[str(trusting / "followed.log")]
        assert failures(kbd) == {str(leak): "symlink-outside"}

        # the folder allows it now: the listed link is read at the reload's rescan
        kbd.config.write_text(kbd.config.read_text().replace(
            f'path = "{kbd.watched}"\n', f'path = "{kbd.watched}"\nfollow_symlinks = true\n'))
        kbd.proc.send_signal(1)  # SIGHUP
        kbd.settled(3)
        assert failures(kbd) == {}
        assert "secret-hash-line" in live_texts(kbd)[str(leak)]


def test_follow_symlinks_must_be_a_boolean(tmp_path: Path):
    kbd = Kbd(tmp_path, None, extra=f'[[folders]]\npath = "{tmp_path}"\nfollow_symlinks = 1\n')
    result = kbd.cli("watch", "list")
    assert result.returncode == 1
    assert "folders[0].follow_symlinks: expected bool, got 1" in result.stderr


def test_symlinked_root_gets_live_events(tmp_path: Path, tiny_model: TinyModel):
    with Kbd(tmp_path, tiny_model, ingest=NO_RESCAN) as kbd:
        real_root = tmp_path / "real"
        kbd.watched.rename(real_root)
        kbd.watched.symlink_to(real_root)  # the configured path is the link
        made = make_logs(kbd.watched, 3, lines=2)
        kbd.start()
        kbd.settled(3)
        with (real_root / made[0].name).open("a") as f:
            f.write("2026-11-23 11:00:00 appended behind the link\n")
        (real_root / "new.log").write_text("2026-11-23 11:00:01 created behind the link\n")
        took = seconds_until(
            lambda: "appended behind the link" in live_texts(kbd).get(str(made[0]), "")
            and "created behind the link" in live_texts(kbd).get(str(kbd.watched / "new.log"),
                                                                 ""),
            timeout=30, what="the changes under the linked root stored")
        print(f"symlinked root: change to stored in {took:.2f} s")
        assert kbd.consistency().clean
        assert set(live_texts(kbd)) == {str(p) for p in [*made, kbd.watched / "new.log"]}


def test_folder_readable_again_is_retried(tmp_path: Path, tiny_model: TinyModel):
    """`locked` is read, then locked while its files change; `sealed` is locked from the
    start, so nothing under it can be watched. Both are opened at once."""
    if why := unprivileged_unavailable():
        pytest.skip(why)
    with Kbd(tmp_path, tiny_model, ingest=NO_RESCAN, unprivileged=True) as kbd:
        locked, sealed = kbd.watched / "locked", kbd.watched / "sealed"
        made = make_logs(locked, 20, lines=2)
        make_logs(sealed, 10, lines=2, name="sealed")
        sealed.chmod(0)
        kbd.start()
        kbd.settled(20)
        locked.chmod(0)
        for path in made:  # we are root: the daemon, bound by file modes, cannot follow
            with path.open("a") as f:
                f.write("2026-11-23 11:00:00 written while the folder was locked\n")
        wait_for(lambda: all(failures(kbd).get(str(p)) == "unreadable" for p in made),
                 timeout=60, what="the locked folder's files listed unreadable")
        assert kbd.live_documents() == 20  # nothing of `sealed` could be read
        locked.chmod(0o755)
        sealed.chmod(0o755)
        took = seconds_until(lambda: not failures(kbd) and kbd.consistency().clean,
                             timeout=30, what="the files of the folders opened stored")
        print(f"folder readable again: chmod to stored in {took:.2f} s")
        # both are watched now: what changes under them is seen without a rescan
        make_logs(locked, 1, lines=2, first=100)
        make_logs(sealed, 1, lines=2, first=100, name="sealed")
        took = seconds_until(lambda: kbd.consistency().clean and kbd.live_documents() == 32,
                             timeout=30, what="files written in the opened folders stored")
        print(f"folder readable again: later write to stored in {took:.2f} s")
