"""Ingest one path: preflight -> decide -> read -> parse -> chunk -> store.

Each stage is a plain function over one IngestJob; the list in `STAGES` is the pipeline. A
stage may finish the job early (unchanged file, a move, a vanished path). All database changes
for a file happen in the one transaction of the store stage, so a crash at any point leaves
the file either fully ingested or untouched, and the next scan finds it again.

Growing logs are read from the start of their last passage (that passage is redone, the rest
kept); a log whose inode changed (logrotate `create`) is looked for among its siblings and
follows its inode; a log that shrank or whose first bytes changed (`copytruncate`, or a
rewrite) is read again from the start. Problems with a file are recorded as a failure row
(shown by `kbd status`), retried when the file changes, and never stop other files.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import stat as stat_module
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kbd.background import Background
from kbd.errors import IngestFailure
from kbd.folders import WatchedFolder, folder_for, scan, spelled_inside
from kbd.ingest.chunk import Passage, chunk
from kbd.ingest.parsers import PDF_TIMEOUT_S, Parsed, ParseError, detect_kind, parse
from kbd.ingest.parsers.log import whole_lines
from kbd.store import Row, Store, StoreError
from kbd.store import queries as q

log = logging.getLogger("kbd.ingest")

HEAD_BYTES = 4096  # a rewritten or truncated-and-refilled log shows in its first bytes
STORE_RETRY_S = (1.0, 30.0)  # first and longest wait before a path waits its turn again
# failures that can pass without the file changing (a permission flipped back, a folder's
# follow_symlinks turned on): retried on every event and rescan, where other failures wait for
# the file's size or mtime to change
TRANSIENT_FAILURES = frozenset({"unreadable", "symlink-outside"})


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 512 * 2**20
    pdf_timeout_s: float = PDF_TIMEOUT_S

    @classmethod
    def configured(cls, ingest) -> Limits:
        """The limits of the config's [ingest] table (an IngestConfig)."""
        return cls(max_file_bytes=ingest.max_file_mb * 2**20,
                   pdf_timeout_s=ingest.pdf_timeout_s)


@dataclass
class IngestJob:
    path: Path
    folder: str | None
    kind: str  # log | report | auto
    force: bool = False  # read even if size, mtime and inode are unchanged
    growing: bool = False  # still being written: read a log's whole lines, anything else later
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    stat: os.stat_result | None = None
    document: Row | None = None
    mode: str = "new"  # new | append | rewrite
    data: bytes = b""
    start_line: int = 1
    start_byte: int = 0
    first_ordinal: int = 0
    head: bytes = b""
    parsed: Parsed | None = None
    passages: list[Passage] = field(default_factory=list)
    outcome: str = ""  # what happened, for logs and tests
    rotated: bool = False

    @property
    def done(self) -> bool:
        return bool(self.outcome)


class Ingester:
    """Turns paths into documents and passages. `tokenizer` (a PassageTokenizer) may be None:
    documents are then stored uncut and cut later by `recut`. `folders` are the watched
    folders, whose `follow_symlinks` says which symlinks may be read."""

    def __init__(self, store: Store, tokenizer=None, limits: Limits = Limits(),
                 folders: Sequence[WatchedFolder] = ()):
        self.store = store
        self.tokenizer = tokenizer
        self.limits = limits
        self.folders = tuple(folders)

    # -- entry points --------------------------------------------------------------------

    def ingest(self, path: Path, folder: str | None = None, kind: str = "auto",
               force: bool = False, growing: bool = False) -> str:
        """Bring the store up to date with one path; returns the outcome. Never raises for a
        problem with the file itself; raises StoreError when the store cannot be written
        (the path should then be tried again later). `growing`: the file is still being
        written (see IngestJob.growing)."""
        job = IngestJob(Path(os.path.abspath(path)), folder, kind, force=force, growing=growing)
        try:
            for stage in STAGES:
                stage(self, job)
                if job.done:
                    break
        except IngestFailure as e:
            self._fail(job, e)
        except ParseError as e:
            self._fail(job, IngestFailure("parse", e.code, str(e)))
        except StoreError:
            raise  # the store's fault, not the file's: the caller tries the path again later
        except Exception as e:  # a bug met by one path must not stop the scan it is part of
            log.exception("[%s] %s: ingest failed unexpectedly", job.id, job.path)
            self._fail(job, IngestFailure("ingest", "unexpected", f"{job.path}: {e!r}"))
        log.debug("[%s] %s: %s", job.id, job.path, job.outcome)
        return job.outcome

    def ingest_many(self, items: Iterable[tuple[Path, str | None, str]]) -> dict[str, int]:
        """Ingest each (path, folder, kind); how many ended in each outcome."""
        return dict(Counter(self.ingest(path, folder, kind) for path, folder, kind in items))

    def reconcile(self, scanned: Iterable[tuple[Path, str | None, str]],
                  held: Callable[[Path], bool] = lambda path: False) -> dict[str, int]:
        """Start-up and periodic rescan: ingest what changed, retire what is gone. Unchanged
        files (same size, mtime and inode, cut for this tokenizer) are not read, nor are those
        `held` by a watcher that will hand them over itself (a rescan would read a file being
        written, a busy log's half-written last line)."""
        scanned = list(scanned)
        seen = {os.path.abspath(path) for path, _, _ in scanned}
        with self.store.read() as conn:
            gone = [(Path(d.path), None, "auto") for d in q.live_documents(conn)
                    if d.path not in seen]
        ready = [item for item in scanned if not held(item[0])]
        return dict(Counter(self.ingest_many(ready)) + Counter(self.ingest_many(gone)))

    def recut(self) -> int:
        """Cut documents stored before a tokenizer was known, or for another one."""
        if self.tokenizer is None:
            return 0
        with self.store.read() as conn:
            stale = q.documents_to_recut(conn, self.tokenizer.identity)
        for document in stale:
            self.ingest(Path(document.path), document.folder, document.kind, force=True)
        return len(stale)

    # -- failures ------------------------------------------------------------------------

    def _fail(self, job: IngestJob, error: IngestFailure) -> None:
        size = job.stat.st_size if job.stat else None
        mtime = job.stat.st_mtime_ns if job.stat else None

        def record(conn) -> None:
            q.record_failure(conn, str(job.path), error.stage, error.code, error.message,
                             size, mtime)
            if job.document is not None:  # what we had no longer describes the file
                q.retire_passages(conn, job.document.id)
                q.update_document(conn, job.document.id, status="error", error=error.message,
                                  size=size or 0, mtime_ns=mtime or 0)

        self.store.write(record)
        job.outcome = f"failed:{error.code}"
        log.warning("[%s] %s: %s failed (%s): %s", job.id, job.path, error.stage, error.code,
                    error.message)


# -- stages ------------------------------------------------------------------------------

def preflight(ing: Ingester, job: IngestJob) -> None:
    """Stat the path; vanished paths retire their documents; refuse what is not a file."""
    try:
        job.stat = os.stat(job.path)
    except FileNotFoundError:
        job.outcome = vanish(ing, job.path)
        return
    except OSError as e:
        code = "symlink-loop" if e.errno == errno.ELOOP else "unreadable"
        raise IngestFailure("preflight", code, f"{job.path}: {e.strerror}") from e
    if job.path.is_symlink():
        check_symlink(ing, job)
        if job.done:
            return
    mode = job.stat.st_mode
    if stat_module.S_ISDIR(mode):
        job.outcome = "directory"
    elif not stat_module.S_ISREG(mode):
        raise IngestFailure("preflight", "not-a-file",
                            f"{job.path}: not a regular file (a FIFO, socket or device)")
    elif job.stat.st_size > ing.limits.max_file_bytes:
        raise IngestFailure("preflight", "too-large",
                            f"{job.path}: {job.stat.st_size} bytes, over the limit of "
                            f"{ing.limits.max_file_bytes}")
    elif not os.access(job.path, os.R_OK):
        raise IngestFailure("preflight", "unreadable", f"{job.path}: permission denied")


def check_symlink(ing: Ingester, job: IngestJob) -> None:
    """A symlink in a watched folder is read, under its own path, when it leads into a
    watched folder or its folder says follow_symlinks; one that leads to a file kbd ingests
    anyway is left to that file, so the text is stored once. Links named by hand outside the
    watched folders (kbd ingest --once LINK) are read: the user chose them."""
    folder = folder_for(ing.folders, job.path)
    if folder is None:
        return
    target = Path(os.path.realpath(job.path))
    inside = spelled_inside(ing.folders, target)
    if inside is None and not folder.follow_symlinks:
        retire_at(ing, job.path)  # read before, when following was allowed
        raise IngestFailure("preflight", "symlink-outside",
                            f"{job.path}: a symlink to {target}, outside the watched folders "
                            f"(follow_symlinks = true on folder {folder.path} reads it)")
    if inside is not None and folder_for(ing.folders, inside) is not None:
        retire_at(ing, job.path)
        job.outcome = "linked"


def retire_at(ing: Ingester, path: Path) -> None:
    """Retire the live document at `path`, if any."""
    def retire(conn) -> None:
        doc = q.live_document(conn, str(path))
        if doc is not None:
            q.retire_document(conn, doc.id)

    ing.store.write(retire)


def decide(ing: Ingester, job: IngestJob) -> None:
    """Compare with what the store knows: unchanged, a move, new lines, or a rewrite."""
    st = job.stat
    with ing.store.read() as conn:
        job.document = q.live_document(conn, str(job.path))
        failure = q.failure_for(conn, str(job.path))
    # a file refused as too large that passed preflight now fits a raised max_file_mb
    refit = failure and (failure.stage, failure.code) == ("preflight", "too-large")
    unchanged_failure = failure and failure.code not in TRANSIENT_FAILURES and not refit and (
        failure.size, failure.mtime_ns) == (st.st_size, st.st_mtime_ns)
    if unchanged_failure and not job.force:
        job.outcome = "failed-unchanged"  # retried once the file changes
        return
    doc = job.document
    if doc is None:
        job.outcome = follow_move(ing, job)
        return
    if (doc.device, doc.inode) != (st.st_dev, st.st_ino):
        rotate_away(ing, doc, job.path)  # logrotate `create`: the old file has a new name
        job.document, job.rotated = None, True
        return
    same = (doc.size, doc.mtime_ns) == (st.st_size, st.st_mtime_ns)
    current = ing.tokenizer is None or doc.tokenizer == ing.tokenizer.identity
    if same and current and doc.status != "error" and not job.force:
        job.outcome = "unchanged"
        return
    job.head = read_head(job.path)
    grown = (st.st_size >= doc.offset
             and doc.head_hash == file_checksum(job.head[:doc.head_len or 0]))
    if (doc.kind == "log" and not job.path.name.endswith(".gz") and grown and current
            and doc.status == "ready"):
        job.mode = "append"
    else:
        job.mode = "rewrite"
        job.rotated = doc.kind == "log" and not grown


def wait_if_growing(ing: Ingester, job: IngestJob) -> None:
    """A file still being written is read now only if it is a log, whose whole lines can be
    searched while it grows; anything else waits until it goes quiet (a half-copied report
    would be parsed wrong, and a gzip stream cannot be read before its end)."""
    if not job.growing or job.mode == "append":
        return
    try:
        head = job.head or read_head(job.path)
    except OSError as e:
        raise IngestFailure("read", "unreadable", f"{job.path}: {e.strerror}") from e
    if job.path.name.endswith(".gz") or detect_kind(job.path, head, job.kind) != "log":
        job.outcome = "growing"


def read(ing: Ingester, job: IngestJob) -> None:
    """Read the bytes to parse: from the last passage's start when a log grew, else all."""
    if job.mode == "append":
        with ing.store.read() as conn:
            kept = q.live_passages(conn, job.document.id)
        if kept:
            last = kept[-1]
            job.start_byte, job.start_line = last.byte_start, last.first_line
            # pieces of one split line share its start byte: redo them all
            job.first_ordinal = min(p.ordinal for p in kept if p.byte_start == last.byte_start)
    try:
        with open(job.path, "rb") as f:
            f.seek(job.start_byte)
            # what the stat saw and no more, so the size stored matches the bytes read: what
            # was written since comes with its own event, as new lines to append
            job.data = f.read(max(0, job.stat.st_size - job.start_byte))
    except OSError as e:
        raise IngestFailure("read", "unreadable", f"{job.path}: {e.strerror}") from e
    if job.growing:  # its last line may be half written: it waits for its line break
        job.data = job.data[:whole_lines(job.data)]
        read_before = job.document.offset if job.mode == "append" else 0
        if job.start_byte + len(job.data) <= read_before:
            job.outcome = "growing"  # no whole line since the last read
            return
    if not job.head:
        job.head = job.data[:HEAD_BYTES] if job.start_byte == 0 else read_head(job.path)


def parse_stage(ing: Ingester, job: IngestJob) -> None:
    kind = job.document.kind if job.document is not None and job.mode == "append" else job.kind
    job.parsed = parse(job.path, job.data, kind, start_line=job.start_line,
                       start_byte=job.start_byte, max_bytes=ing.limits.max_file_bytes,
                       pdf_timeout_s=ing.limits.pdf_timeout_s)


def chunk_stage(ing: Ingester, job: IngestJob) -> None:
    if ing.tokenizer is not None:
        job.passages = chunk(job.parsed, ing.tokenizer.count, ing.tokenizer.max_tokens,
                             first_ordinal=job.first_ordinal)


def store_stage(ing: Ingester, job: IngestJob) -> None:
    """One transaction: the document row and its passages, old ones retired."""
    st, parsed, tokenizer = job.stat, job.parsed, ing.tokenizer
    consumed = job.start_byte + len(job.data)
    fields = {
        "path": str(job.path), "folder": job.folder, "kind": parsed.kind,
        # the size read, not the size seen: a growing log's held-back last line is read later
        "device": st.st_dev, "inode": st.st_ino, "size": consumed, "mtime_ns": st.st_mtime_ns,
        "head_hash": file_checksum(job.head), "head_len": len(job.head), "offset": consumed,
        "content_hash": file_checksum(job.data) if job.start_byte == 0 else None,
        "tokenizer": tokenizer.identity if tokenizer else None,
        "status": "ready" if tokenizer else "unchunked", "error": None,
    }

    def write(conn) -> None:
        q.clear_failure(conn, str(job.path))
        doc = job.document
        if doc is None:
            doc_id = q.insert_document(conn, **fields)
        else:
            doc_id = doc.id
            q.retire_passages(conn, doc_id, from_ordinal=job.first_ordinal)
            extra = {"rotations": doc.rotations + 1} if job.rotated else {}
            q.update_document(conn, doc_id, changed_at=q.utcnow(), **fields, **extra)
        if tokenizer:
            q.insert_passages(conn, doc_id, job.passages, tokenizer.identity)

    ing.store.write(write)
    job.outcome = {"new": "added", "append": "appended", "rewrite": "rewritten"}[job.mode]
    if job.rotated and job.mode == "rewrite":
        job.outcome = "rotated"


STAGES: list[Callable] = [preflight, decide, wait_if_growing, read, parse_stage, chunk_stage,
                          store_stage]


# -- moves, rotation and deletion ----------------------------------------------------------

def file_checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def _inode_at(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def follow_move(ing: Ingester, job: IngestJob) -> str:
    """A path the store does not know: if a document had this file's inode and no longer has
    it where it was (a rename, a directory moved, logrotate), the document follows the file
    (nothing is re-read or re-compressed). Returns "" to go on as a new document."""
    st = job.stat
    with ing.store.read() as conn:
        candidates = q.documents_with_identity(conn, st.st_dev, st.st_ino)
    for doc in candidates:
        if doc.deleted_at is None and _inode_at(doc.path) == (st.st_dev, st.st_ino):
            continue  # still there too: a hard link, ingest this path on its own
        if doc.deleted_at is not None and (doc.size, doc.mtime_ns) != (st.st_size,
                                                                        st.st_mtime_ns):
            continue  # an old deleted file whose inode was reused

        def move(conn, doc=doc) -> None:
            if doc.deleted_at is not None:
                q.revive_document(conn, doc, str(job.path))
            else:
                q.update_document(conn, doc.id, path=str(job.path), folder=job.folder)

        ing.store.write(move)
        log.info("[%s] %s: moved from %s", job.id, job.path, doc.path)
        # it may also have grown since: ingest again under its new path
        outcome = ing.ingest(job.path, job.folder, job.kind)
        return "moved" if outcome == "unchanged" else f"moved+{outcome}"
    return ""


def rotate_away(ing: Ingester, doc: Row, path: Path) -> None:
    """The file at a document's path has another inode now. Look for the old inode beside it
    (app.log -> app.log.1); the document follows it there, or is retired if it is gone."""
    old = (doc.device, doc.inode)
    try:
        siblings = sorted(p for p in path.parent.iterdir()
                          if p.name.startswith(path.name) and p.name != path.name)
    except OSError:  # the folder itself is gone
        siblings = []
    for sibling in siblings:
        if _inode_at(str(sibling)) == old:
            def follow(conn, to: str = str(sibling)) -> bool:
                if q.live_document(conn, to) is not None:
                    # a read raced the rename: the move's own event already took a document
                    # there, so this one is a stale twin of it, and the sibling's ingest below
                    # brings that one up to date
                    q.retire_document(conn, doc.id)
                    return False
                q.update_document(conn, doc.id, path=to, rotations=doc.rotations + 1,
                                  changed_at=q.utcnow())
                return True

            if ing.store.write(follow):
                log.info("%s: rotated to %s", path, sibling)
            ing.ingest(sibling, doc.folder, doc.kind)  # lines written before the rotation
            return
    ing.store.write(lambda conn: q.retire_document(conn, doc.id))


def vanish(ing: Ingester, path: Path) -> str:
    """A path that no longer exists: retire its document (or, for a directory, every document
    under it), unless its file lives on under a rotated name beside it."""
    with ing.store.read() as conn:
        doc = q.live_document(conn, str(path))
        under = q.live_documents(conn, under=str(path)) if doc is None else []
    if doc is not None:
        rotate_away(ing, doc, path)
        return "deleted"
    for d in under:
        if not os.path.exists(d.path):
            ing.store.write(lambda conn, d=d: q.retire_document(conn, d.id))
    ing.store.write(lambda conn: q.clear_failure(conn, str(path)))
    return "deleted" if under else "missing"


# -- the queue between the watcher and the ingester ----------------------------------------

RESCAN = Path("\0rescan")  # a queue item, not a path: reconcile everything with the store


class IngestWorker(Background):
    """One thread that ingests queued paths in order. A path already waiting is not queued
    twice, so a burst of events for one file costs one ingest; a path being ingested is queued
    again by an event, since the ingest may have read the file before what the event reports.
    A path queued as growing (see IngestJob.growing) is read in full if it is also queued as
    quiet before its turn.
    When the store cannot be written (disk full, locked, read-only), the path goes back in the
    queue and the worker waits, longer each time up to STORE_RETRY_S[1], so nothing is dropped
    while it lasts."""

    join_s = None  # the file in hand is finished: stopping never cuts an ingest short

    def __init__(self, ingester: Ingester, folders: Sequence[WatchedFolder],
                 on_done: Callable[[Path, str], None] | None = None):
        self.ingester = ingester
        self.folders = folders
        self.on_done = on_done
        self.held: Callable[[Path], bool] = lambda path: False  # paths a watcher will hand over
        self._queue: queue.Queue[Path] = queue.Queue()
        self._queued: set[Path] = set()
        self._growing: set[Path] = set()  # queued paths that are still being written
        self._current: Path | None = None  # the path being ingested
        self._lock = threading.Lock()
        self._retry_s = STORE_RETRY_S[0]
        super().__init__("kbd-ingest")

    @property
    def folders(self) -> tuple[WatchedFolder, ...]:
        """The watched folders; they are the ingester's, whose symlink rule needs them."""
        return self.ingester.folders

    @folders.setter
    def folders(self, folders: Sequence[WatchedFolder]) -> None:
        self.ingester.folders = tuple(folders)

    def submit(self, paths: Iterable[Path], growing: bool = False) -> None:
        with self._lock:
            for path in paths:
                if path not in self._queued:
                    self._queued.add(path)
                    self._queue.put(path)
                    if growing:
                        self._growing.add(path)
                elif not growing:
                    self._growing.discard(path)

    def rescan(self) -> None:
        self.submit([RESCAN])

    def idle(self) -> bool:
        with self._lock:
            return not self._queued and self._current is None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                path = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                self._queued.discard(path)
                growing = path in self._growing
                self._growing.discard(path)
                self._current = path
            try:
                self._handle(path, growing)
                self._retry_s = STORE_RETRY_S[0]
            except StoreError as e:  # the store's fault, not the file's: try it again later
                log.warning("%s waits: %s; next try in %.0f s", path, e.message, self._retry_s)
                self.submit([path])
                self._stop.wait(self._retry_s)
                self._retry_s = min(STORE_RETRY_S[1], 2 * self._retry_s)
            except Exception:  # one bad path must never stop the worker
                log.exception("ingest of %s failed unexpectedly", path)
            finally:
                with self._lock:
                    self._current = None

    def _handle(self, path: Path, growing: bool) -> None:
        if path == RESCAN:
            self.ingester.reconcile(((p, str(f.path), f.kind) for f, p in scan(self.folders)),
                                    self.held)
            return
        folder = folder_for(self.folders, path)
        if folder is None and os.path.lexists(path):
            return  # outside the folders or rejected by their globs
        outcome = self.ingester.ingest(path, str(folder.path) if folder else None,
                                       folder.kind if folder else "auto", growing=growing)
        if self.on_done:
            self.on_done(path, outcome)
