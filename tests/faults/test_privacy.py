"""Another local user reads nothing kbd stores (issue 20, item 2).

The daemon, `kbd digest` and `kbd ingest --once` run with umask 000, the laxest there is, in a
folder every user may enter; then `nobody` tries to read the database (SQLite read-only, as
`sqlite3 'file:...?mode=ro'` does), list the data folder, and read a memory matrix and a digest.
Then the data as an older kbd left it (0644 files in 0755 folders), which `nobody` can read, is
opened by `kbd ingest --once` and by the daemon at start.

kbd promises: every file it made is 0600 and every folder 0700, `nobody` reads none of them,
and a store left open is tightened at start, saying so in the log.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from support.harness import (
    Kbd,
    Outcome,
    TinyModel,
    Unavailable,
    make_logs,
    python_for,
    shared_dir,
    tried_as,
)

TIGHTENED = "was open to other users"


def privacy(work: Path, model: TinyModel, *, files: int = 5) -> Outcome:
    out = Outcome("private store")
    python = python_for("nobody")
    if python is None:
        raise Unavailable("cannot try reads as nobody: needs root, runuser and a Python that "
                          "nobody may run")
    with Kbd(work, model, umask=0) as kbd:
        kbd.start_settled(files)
        made = kbd.cli("digest", "--since", "1h")
        out.expect(made.returncode == 0, f"kbd digest failed: {made.stderr[-300:]}")
        reports = made.stdout.split()
        checked(kbd, python, reports, out, "daemon and digest, umask 000")
        assert kbd.stop() == 0

        loosen(kbd, python, reports, out)
        make_logs(kbd.watched, 2, first=files)
        ingested = kbd.cli("ingest", "--once")
        out.expect(ingested.returncode == 0, f"kbd ingest --once: {ingested.stderr[-300:]}")
        out.expect(TIGHTENED in ingested.stderr, "ingest --once did not say it tightened")
        checked(kbd, python, reports, out, "ingest --once on an older kbd's store")

        loosen(kbd, python, reports, out)
        kbd.start()
        out.expect(TIGHTENED in kbd.log_text(), "the daemon did not say it tightened")
        checked(kbd, python, reports, out, "daemon start on an older kbd's store")
        out.absorb(kbd.consistency(), "at the end")
    return out


def checked(kbd: Kbd, python: str, reports: list[str], out: Outcome, when: str) -> None:
    """Modes of everything kbd made, and what nobody reads of it."""
    data = kbd.loaded_config().home
    made = [data, *data.rglob("*"), kbd.socket.parent, *kbd.socket.parent.iterdir()]
    for path in made:
        mode = stat.S_IMODE(path.stat().st_mode)
        out.expect(not mode & 0o077, f"{when}: {path} is mode {mode:04o}")
    read = tried_as("nobody", python, attempts(kbd, reports))
    out.figures["modes checked"] = out.figures.get("modes checked", 0) + len(made)
    out.figures["reads tried"] = out.figures.get("reads tried", 0) + len(read) - 1
    out.expect(read["watched folder"] == "ok",
               f"{when}: nobody cannot reach the test folders, so the check proves nothing")
    leaks = {what: got for what, got in read.items() if what != "watched folder" and got == "ok"}
    out.expect(not leaks, f"{when}: nobody read {sorted(leaks)}")
    out.leaked += len(leaks)
    out.runs += 1


def attempts(kbd: Kbd, reports: list[str]) -> dict[str, str]:
    """What nobody tries, as Python statements (tests/harness.py tried_as)."""
    data, database = kbd.loaded_config().home, kbd.database_file
    memory = sorted(str(p) for p in (data / "memory").glob("*.bin"))
    assert memory and reports, (memory, reports)
    return {
        "watched folder": f"os.listdir({str(kbd.watched)!r})",
        # immutable: a read-only reader needs no -shm, which it could not make in our folder
        "database": f"sqlite3.connect('file:{database}?mode=ro&immutable=1', uri=True)"
                    ".execute('SELECT * FROM sqlite_master').fetchall()",
        "database file": f"open({str(database)!r}, 'rb').read(100)",
        "data folder": f"os.listdir({str(data)!r})",
        "memory matrix": f"open({memory[0]!r}, 'rb').read(1)",
        "digest": f"open({reports[0]!r}).read()",
    }


def loosen(kbd: Kbd, python: str, reports: list[str], out: Outcome) -> None:
    """The data folder as an older kbd left it: files 0644, folders 0755, which nobody reads
    (else the checks after it would prove nothing)."""
    data = kbd.loaded_config().home
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    read = tried_as("nobody", python, attempts(kbd, reports))
    out.expect(read["database"] == "ok", f"nobody cannot read a 0644 store: {read['database']}")


def test_nobody_reads_what_kbd_stores(tiny_model):
    with shared_dir() as work:
        try:
            out = privacy(work, tiny_model)
        except Unavailable as e:
            pytest.skip(str(e))
    assert out.failures == [] and out.leaked == 0 and out.data_lost == 0 and out.runs == 3
