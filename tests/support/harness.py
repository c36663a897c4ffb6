"""The daemon as a real subprocess, and the check that its store holds what the files hold.

Shared by the daemon tests, the crash tests, the fault suite (tests/faults/) and
bench/load.py, which runs the fault suite's scenarios longer.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from kbd.api.client import Client
from kbd.config import Config, load_config
from kbd.errors import KbdError
from kbd.folders import scan
from kbd.ingest.parsers.log import render  # JSON lines are stored as readable text
from kbd.store.matrix import MemoryMatrix
from kbd.store.queries import as_utc
from kbd.store.schema import answer_sources, answers, documents, failures, memories, passages
from kbd.store.schema import questions as questions_table


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


def poll(predicate, timeout: float):
    """wait_for that gives up quietly: predicate()'s first true value, or None."""
    try:
        return wait_for(predicate, timeout=timeout, tolerate=(KbdError,))
    except AssertionError:
        return None


@dataclass(frozen=True)
class TinyModel:
    """A tiny CLaRa checkpoint and its base (support.tiny), as the daemon's [model]."""

    checkpoint: Path
    base: Path

    @classmethod
    def written(cls, folder: Path) -> TinyModel:
        """A tiny base and checkpoint written under `folder`, for a run outside pytest's
        fixtures (the benchmarks)."""
        from support.tiny import write_base_model, write_checkpoint

        base = write_base_model(folder / "base")
        return cls(write_checkpoint(folder / "checkpoint", base), base)

    def toml(self) -> str:
        return (f'[model]\ncheckpoint = "{self.checkpoint}"\nbase = "{self.base}"\n'
                f'device = "cpu"\ncompress_batch_size = 16\n')


# root without the capabilities that let it read and search any file: file modes bind it as
# they bind any other user, yet it still runs the interpreter and reads the checkpoints that
# only root may read (pytest's temporary folders, a pyenv under /root)
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


class Kbd:
    """A home folder, a config and a daemon process. `ingest` adds to [ingest], `extra` is
    TOML appended to the config (more [[folders]], [store], [scheduler]); `unprivileged`
    runs the daemon without the capabilities that let root read every file (UNPRIVILEGED),
    for permission faults."""

    def __init__(self, root: Path, model: TinyModel | None, *, ingest: dict | None = None,
                 extra: str = "", unprivileged: bool = False, umask: int = -1):
        self.home = root / "home"
        self.watched = root / "watched"
        self.home.mkdir(parents=True)
        self.watched.mkdir()
        self.config = self.home / "config.toml"
        self.socket = self.home / "run" / "kbd.sock"
        self.unprivileged = unprivileged
        self.umask = umask  # the daemon's and the CLI's; -1: this process's
        settings = {"debounce_s": 0.3} | (ingest or {})
        self.config.write_text(
            f'home = "{self.home / "data"}"\n{model.toml() if model else ""}\n[ingest]\n'
            + "".join(f"{k} = {v!r}\n" for k, v in settings.items())
            + f'\n[server]\nsocket = "{self.socket}"\n{extra}\n'
            f'[[folders]]\npath = "{self.watched}"\n')
        self.env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"} | {
            "KBD_HOME": str(self.home), "KBD_CONFIG": str(self.config)}
        self.proc: subprocess.Popen | None = None
        self.client = Client(self.socket, timeout_s=300)

    def __enter__(self) -> Kbd:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGKILL)

    # -- the process -------------------------------------------------------------------------

    def start(self) -> subprocess.Popen:
        self.launch()
        return self.answering()

    def launch(self) -> None:
        """Start the daemon without waiting for it: daemons launched together start at once
        (a start takes seconds on a busy machine)."""
        self.log = open(self.home / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        # setpriv execs the interpreter, so the pid stays the daemon's (kill -9 hits it)
        prefix = UNPRIVILEGED if self.unprivileged and os.geteuid() == 0 else []
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "kbd", "daemon"],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     umask=self.umask)

    def answering(self) -> subprocess.Popen:
        """Wait until the launched daemon answers on its socket."""
        wait_for(self._answering, timeout=120, what="the daemon's socket", tolerate=(KbdError,))
        return self.proc

    def start_settled(self, files: int, lines: int = 40) -> None:
        """Start with `files` logs in the watched folder, and wait until all are stored."""
        self.start()
        make_logs(self.watched, files, lines=lines)
        self.settled(files)

    def _answering(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n"
                                 f"{self.log_text()[-3000:]}")
        return self.client.request("GET", "/status")["pid"] == self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kbd", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, umask=self.umask)

    def log_text(self) -> str:
        return (self.home / "daemon.log").read_text(errors="replace")

    # -- what it says ------------------------------------------------------------------------

    def status(self) -> dict:
        return self.client.request("GET", "/status")

    def live_documents(self) -> int:
        return sum(n for s, n in self.status()["documents"].items() if s != "deleted")

    def settled(self, documents: int, timeout: float = 120) -> dict:
        def ready():
            status = self.status()
            live = sum(n for s, n in status["documents"].items() if s != "deleted")
            return status if (live == documents and status["backlog"] == 0
                              and status["model"] == "ready") else None
        return wait_for(ready, timeout=timeout, tolerate=(KbdError,),
                        what=f"{documents} documents ingested and compressed")

    def answers(self, question_id: int) -> list[dict]:
        return self.client.request("GET", f"/answers?question_id={question_id}&limit=1000")[
            "answers"]

    def runs(self, question_id: int) -> list[dict]:
        """The question's answers that are runs: not the records of skipped firings."""
        return [a for a in self.answers(question_id) if a["status"] != "skipped"]

    # -- what it stored ----------------------------------------------------------------------

    def loaded_config(self) -> Config:
        return load_config(self.config)

    @property
    def database_file(self) -> Path:
        return Path(self.loaded_config().database_url.removeprefix("sqlite:///"))

    def files(self) -> list[Path]:
        """The files of the watched folders that the daemon should hold, as it scans them."""
        return [path for _, path in scan(self.loaded_config().folders)]

    def consistency(self, failed_ok: Iterable[Path] = (), partial: bool = False) -> Consistency:
        config = self.loaded_config()
        return check_consistent(config.database_url, config.memory_dir,
                                [p for p in self.files() if p not in set(failed_ok)], partial)

    def converged(self, timeout: float = 120, failed_ok: Iterable[Path] = ()) -> Consistency:
        """Wait until the store matches the files (or the timeout); the last check."""
        failed_ok = list(failed_ok)
        deadline = time.monotonic() + timeout
        while True:
            found = self.consistency(failed_ok)
            if found.clean or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def started(answer: dict) -> datetime:
    """When an answer from the API started, as an aware datetime."""
    return datetime.fromisoformat(answer["started_at"])


# -- files -------------------------------------------------------------------------------------

def fleet_toml(url: str, name: str, role: str, *folders: Path,
               lease_s: int | None = None) -> str:
    """A fleet node's config: the shared store, its [node] name and role, its folders."""
    return (f'[store]\nurl = "{url}"\n[node]\nname = "{name}"\nrole = "{role}"\n'
            + (f"lease_s = {lease_s}\n" if lease_s is not None else "")
            + "".join(f'[[folders]]\npath = "{f}"\n' for f in folders))


def make_logs(folder: Path, files: int, lines: int = 40, first: int = 0,
              name: str = "svc") -> list[Path]:
    """`files` logs of `lines` distinct lines each (numbered from `first`)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for n in range(first, first + files):
        path = folder / f"{name}{n:05d}.log"
        with path.open("w") as f:
            for i in range(lines):
                f.write(f"2026-11-23 10:{i % 60:02d}:00 service {n} worker {i % 7} request {i} "
                        f"{'failed with timeout' if i % 5 == 0 else 'ok'}\n")
        made.append(path)
    return made


def file_text(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    # as the parsers read it: invalid bytes and NUL characters become U+FFFD
    return data.decode("utf-8", errors="replace").replace("\0", "\ufffd")


def log_lines(path: Path) -> list[str]:
    return [line.removesuffix("\r") for line in file_text(path).split("\n")]


def log_passage(lines: list[str], first: int, last: int) -> str:
    """What a passage of lines first..last of a log holds: its non-blank lines, JSON lines
    rendered as readable text (kbd.ingest.parsers.log.render), joined."""
    return "\n".join(render(line) for line in lines[first - 1:last] if line.strip())


def nonblank_lines(path: Path) -> list[int]:
    return [i for i, line in enumerate(file_text(path).split("\n"), 1) if line.strip()]


def lines_of(rows) -> list[int]:
    """Every line number the passages cover, in order (split pieces count once)."""
    out: list[int] = []
    for p in rows:
        span = list(range(p.first_line, p.last_line + 1))
        if out and p.split and out[-1] == p.first_line:
            span = span[1:]
        out += span
    return out


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal PDF by hand: one page per entry, each line of text drawn in Helvetica."""
    page_ids = [4 + 2 * k for k in range(len(pages))]
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for page_id, lines in zip(page_ids, pages, strict=True):
        stream = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({x}) Tj T*" for x in lines) + " ET"
        objects[page_id] = pdf_page(page_id + 1)
        objects[page_id + 1] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    return pdf_bytes(objects)


def pdf_page(contents: int) -> str:
    """A Letter page of the page tree (object 2), drawing object `contents` in font 3."""
    return (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
            f"<< /Font << /F1 3 0 R >> >> /Contents {contents} 0 R >>")


def pdf_bytes(objects: dict[int, str]) -> bytes:
    """A PDF file of numbered objects (1 the catalog), with its cross-reference table."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in objects.items():
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"\
        .encode()
    return bytes(out)


class Page(HTMLParser):
    """Every element's text (its descendants' included), tags and attributes, and whether
    every element that was opened was closed in order."""

    VOID = {"meta", "br", "hr", "img", "link", "input", "col", "wbr"}

    def __init__(self):
        super().__init__()
        self.open: list[tuple[str, list[str]]] = []
        self.texts: dict[str, list[str]] = {}
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.data: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, name, value) for name, value in attrs]
        if tag not in self.VOID:
            self.open.append((tag, []))

    def handle_endtag(self, tag):
        if not self.open or self.open[-1][0] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1][0] if self.open else None}")
            return
        tag, parts = self.open.pop()
        text = "".join(parts)
        self.texts.setdefault(tag, []).append(" ".join(text.split()))
        if self.open:
            self.open[-1][1].append(text)

    def handle_data(self, data):
        self.data.append(data)
        if self.open:
            self.open[-1][1].append(data)


def parse_page(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.open == [], (parser.errors, parser.open)
    return parser


# -- the consistency check -----------------------------------------------------------------

@dataclass
class Consistency:
    problems: list[str] = field(default_factory=list)
    lost_lines: int = 0  # non-blank lines of the files that no live passage holds

    @property
    def clean(self) -> bool:
        return not self.problems and not self.lost_lines


def check_consistent(url: str, memory_dir: Path, files: Iterable[Path],
                     partial: bool = False) -> Consistency:
    """What kbd promises of its store after any fault, checked on the database itself:
    no orphan rows (passages without a document, sources without their answer or passage,
    memories past the end of their matrix file), no two live passages for one (document,
    ordinal) or one byte range, every file present once with each of its lines live exactly
    once (logs; reports: with live passages) and no live document for a file that is gone,
    and every scheduled run that set last_run_at recorded as an answer. SQLite files also
    pass integrity_check and foreign_key_check. `partial` (ingest still under way): files
    not in the store yet are not counted, but those that are must be whole."""
    found = Consistency()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _check_rows(conn, memory_dir, found)
            _check_files(conn, [Path(os.path.abspath(f)) for f in files], found, partial)
            _check_runs(conn, found)
            if engine.dialect.name == "sqlite":
                if (result := conn.exec_driver_sql("PRAGMA integrity_check").scalar()) != "ok":
                    found.problems.append(f"integrity_check: {result}")
                if broken := conn.exec_driver_sql("PRAGMA foreign_key_check").all():
                    found.problems.append(f"foreign_key_check: {broken[:5]}")
    finally:
        engine.dispose()
    return found


def _count(conn, query) -> int:
    return conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()


def _check_rows(conn, memory_dir: Path, found: Consistency) -> None:
    def missing(table, column, target) -> int:
        return _count(conn, select(table.c.id).where(~select(target.c.id).where(
            target.c.id == column).exists()))

    for what, n in (("passages without their document",
                     missing(passages, passages.c.document_id, documents)),
                    ("sources without their answer",
                     missing(answer_sources, answer_sources.c.answer_id, answers)),
                    ("sources without their passage",
                     missing(answer_sources, answer_sources.c.passage_id, passages))):
        if n:
            found.problems.append(f"{n} {what}")
    for fingerprint, top, rows, distinct in conn.execute(
            select(memories.c.fingerprint, func.max(memories.c.row), func.count(),
                   func.count(func.distinct(memories.c.row)))
            .group_by(memories.c.fingerprint)):
        matrix = memory_matrix(memory_dir, fingerprint)
        if top >= matrix.rows():
            found.problems.append(f"memory row {top} of {fingerprint} past the "
                                  f"{matrix.rows()} rows in {matrix.path}")
        if distinct != rows:
            found.problems.append(f"{rows - distinct} memory rows of {fingerprint} mapped twice")
    doubled = conn.execute(select(documents.c.path).where(documents.c.deleted_at.is_(None))
                           .group_by(documents.c.path).having(func.count() > 1)).all()
    for (path,) in doubled:
        found.problems.append(f"{path}: more than one live document")


def memory_matrix(memory_dir: Path, fingerprint: str) -> MemoryMatrix:
    """A memory file as its .json beside it describes it."""
    described = json.loads((memory_dir / f"{fingerprint}.json").read_text())
    return MemoryMatrix(memory_dir, fingerprint, tuple(described["shape"]), described["dtype"])


def _check_files(conn, files: list[Path], found: Consistency, partial: bool) -> None:
    live = {d.path: d for d in conn.execute(select(documents)
                                            .where(documents.c.deleted_at.is_(None)))}
    failed = {f.path: f for f in conn.execute(select(failures))}
    for path in files:
        expected = nonblank_lines(path)
        doc = live.get(str(path))
        if doc is None and partial:
            continue
        if doc is None:
            why = failed.get(str(path))
            found.problems.append(f"{path}: not in the store" + (
                f" (failed: {why.code}: {why.message})" if why else ""))
            found.lost_lines += len(expected)
            continue
        rows = conn.execute(select(passages).where(passages.c.document_id == doc.id,
                                                   passages.c.live)
                            .order_by(passages.c.ordinal)).all()
        ordinals = [p.ordinal for p in rows]
        if len(ordinals) != len(set(ordinals)):
            found.problems.append(f"{path}: two live passages with one ordinal")
        if doc.kind == "log":
            _check_log(path, expected, rows, found)
        elif expected and not rows:
            found.problems.append(f"{path}: a report with no live passage")
            found.lost_lines += len(expected)
    on_disk = {str(p) for p in files}
    for path in live.keys() - on_disk:
        if not os.path.lexists(path):
            found.problems.append(f"{path}: live in the store, gone from the disk")


def _check_log(path: Path, expected: list[int], rows, found: Consistency) -> None:
    """Each non-blank line held by exactly one passage with the file's text (the pieces of a
    split line hold it together: the line's text, less whitespace at the cuts); byte ranges
    in order and not overlapping."""
    lines, nonblank = log_lines(path), set(expected)
    held: list[int] = []
    pieces: dict[int, list[str]] = {}  # a line too long for one passage: its pieces, in order
    for p in rows:
        if p.split:
            pieces.setdefault(p.first_line, []).append(p.text)
        elif p.text == log_passage(lines, p.first_line, p.last_line):
            held += [i for i in range(p.first_line, p.last_line + 1) if i in nonblank]
    for number, texts in pieces.items():
        if number in nonblank and squeezed(render(lines[number - 1])) == "".join(
                map(squeezed, texts)):
            held.append(number)
    covered = lines_of(rows)
    if len(covered) != len(set(covered)):
        found.problems.append(f"{path}: a line live in two passages")
    missing = set(expected) - set(held)
    if missing:
        found.problems.append(f"{path}: {len(missing)} of {len(expected)} lines not live "
                              f"(first: line {min(missing)})")
        found.lost_lines += len(missing)
    if extra := set(covered) - set(expected):
        found.problems.append(f"{path}: passages for lines the file does not have "
                              f"(first: {min(extra)})")
    spans: dict[tuple[int, int], list] = {}
    for p in rows:
        if p.byte_start is not None:
            spans.setdefault((p.byte_start, p.byte_end), []).append(p)
    if any(len(same) > 1 and not all(p.split for p in same) for same in spans.values()):
        found.problems.append(f"{path}: two live passages for one byte range")
    if any(b[0] < a[1] for a, b in pairwise(sorted(spans))):
        found.problems.append(f"{path}: live passages overlap in bytes")


def squeezed(text: str) -> str:
    return "".join(text.split())


def _check_runs(conn, found: Consistency) -> None:
    """A run sets last_run_at after its answer is recorded: a last_run_at with no answer
    started at or after it is a run that was neither recorded nor retried."""
    for q in conn.execute(select(questions_table.c.id, questions_table.c.last_run_at)
                          .where(questions_table.c.last_run_at.is_not(None))):
        latest = conn.execute(select(func.max(answers.c.started_at))
                              .where(answers.c.question_id == q.id,
                                     answers.c.status != "skipped")).scalar()
        if latest is None or as_utc(latest) < as_utc(q.last_run_at):
            found.problems.append(f"question {q.id}: the run of {q.last_run_at} has no answer")


# -- the fault suite's figures --------------------------------------------------------------

@dataclass
class Outcome:
    """One scenario's figures: how many times the fault was applied (runs), the promises it
    broke (failures, each saying which), the file lines the store lost, and measurements."""

    scenario: str
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    data_lost: int = 0
    leaked: int = 0  # stored things another local user could read
    figures: dict = field(default_factory=dict)

    def expect(self, ok: object, promise: str) -> bool:
        if not ok:
            self.failures.append(promise)
        return bool(ok)

    def absorb(self, found: Consistency, when: str) -> None:
        self.failures += [f"{when}: {p}" for p in found.problems]
        self.data_lost += found.lost_lines

    def as_json(self) -> dict:
        return {"runs": self.runs, "failures": len(self.failures), "data_lost": self.data_lost,
                "leaked": self.leaked, "failed_promises": self.failures[:20], **self.figures}


# -- what the environment offers -----------------------------------------------------------

class Unavailable(Exception):
    """Something a test or scenario needs is not here; the message says what (tests skip
    with it, bench/load.py records it)."""


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextmanager
def postgresql_server() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on a Unix socket, run as the postgres user when we
    are root (PostgreSQL refuses to run as root); its URL (database `postgres`)."""
    if not (PG_BIN / "initdb").exists():
        raise Unavailable(f"PostgreSQL not installed ({PG_BIN / 'initdb'} missing)")
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
        shutil.rmtree(folder, ignore_errors=True)
        detail = getattr(e, "stderr", b"") or b""
        raise Unavailable(f"PostgreSQL could not start: {e} "
                          f"{detail.decode(errors='replace')[-300:]}") from e
    try:
        yield f"postgresql+psycopg://kbd@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgresql_database(server: str) -> Iterator[str]:
    """A fresh, empty database on the server (a URL from postgresql_server), dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield server.replace("/postgres?", f"/{name}?")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


# -- users and sockets ---------------------------------------------------------------------

def unprivileged_unavailable() -> str | None:
    """Why the daemon cannot run bound by file modes here (None: it can)."""
    if os.geteuid() != 0:
        return None  # not root: file modes bind us already
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    with tempfile.NamedTemporaryFile() as secret:
        os.chmod(secret.name, 0)
        probe = subprocess.run([*UNPRIVILEGED, sys.executable, "-c",
                                f"open({secret.name!r}).close()"], capture_output=True)
    return None if probe.returncode else "root keeps reading mode-000 files under setpriv"


def nobody_can_run_python() -> bool:
    """Root reads every file, so permission faults need the daemon or a client as another
    user: true when we are root and `nobody` can import kbd with this interpreter."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return False
    probe = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", "import kbd"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def python_for(user: str) -> str | None:
    """An interpreter `user` can run (this one, or the system's), for probes as that user:
    sqlite3 and the standard library are all they need. None when there is none, or we are
    not root and cannot switch users."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return None
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(["runuser", "-u", user, "--", python, "-c", "import sqlite3"],
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            return python
    return None


def tried_as(user: str, python: str, attempts: dict[str, str]) -> dict[str, str]:
    """Run each attempt (Python statements) as `user`: what each got, "ok" or the error's
    name (PermissionError, sqlite3.OperationalError...)."""
    script = "import json, os, sqlite3\nresults = {}\n" + "".join(
        f"try:\n    {code}\n    results[{name!r}] = 'ok'\n"
        f"except Exception as e:\n    results[{name!r}] = type(e).__name__ + ': ' + str(e)\n"
        for name, code in attempts.items()) + "print(json.dumps(results))\n"
    done = subprocess.run(["runuser", "-u", user, "--", python, "-c", script],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextmanager
def shared_dir(prefix: str = "kbd-faults-") -> Iterator[Path]:
    """A temporary folder other users may enter (pytest's own are root's alone)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def raw_request(socket_path: Path, data: bytes, timeout: float = 20) -> bytes:
    """Send bytes as they are on the daemon's socket; everything it replies until it closes
    (a reply may come, and the daemon close, before all is sent: a body over the limit)."""
    chunks = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def seconds_held_by_a_trickle(socket_path: Path, every_s: float, for_s: float) -> float:
    """A request line, then one header line every `every_s` and never the blank line: how
    long until the daemon closes the connection (`for_s` if it has not by then)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(socket_path))
        began = time.monotonic()
        s.sendall(b"GET /status HTTP/1.1\r\n")
        s.settimeout(every_s)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for line in range(int(for_s / every_s)):
                try:
                    if s.recv(100) == b"":
                        break
                except TimeoutError:
                    s.sendall(b"X-Line-%d: still coming\r\n" % line)
        return time.monotonic() - began


@contextmanager
def database_at(store_url: str, revision: str) -> Iterator:
    """A connection to a new database migrated only up to `revision`, as an older kbd left it;
    what is written through it commits when the block ends."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    engine = create_engine(store_url)
    config = AlembicConfig()
    config.set_main_option("script_location", "kbd:store/migrations")
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            yield conn
    finally:
        engine.dispose()


def smollm2_missing() -> str | None:
    """Why the text engine's SmolLM2 cannot be loaded here (its wheel is not installed), or
    None when it can."""
    from kbd.model.text import TextModelError, locate

    try:
        locate("smollm2")
    except TextModelError as error:
        return str(error)
    return None
