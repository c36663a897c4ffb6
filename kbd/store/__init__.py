"""The knowledge store: SQLite by default, PostgreSQL by URL, schema managed by Alembic.

SQLite runs in WAL mode with foreign keys on and a busy timeout. Writes open with
BEGIN IMMEDIATE: a read-then-write transaction that starts deferred takes its write lock only
at the first write and then fails at once with "database is locked" if another writer got in
first, which a busy timeout cannot help. Writes that still meet a lock are retried a few times
with jittered, capped back-off before the error reaches the caller.

A write that fails (disk full, database locked or read-only, server gone) raises a StoreError
that says which in words, and stays in `faults` (shown by `kbd status`) until a write works
again; callers keep their work and retry it, so a passing fault loses nothing. A daemon
`claim()`s its store, so a second daemon on the same database refuses to start; in a fleet
(docs/fleet.md) each node claims its node name instead, and shares the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy import Row as Row  # a stored record, as queries return it (ingest holds one)
from sqlalchemy.exc import OperationalError

from kbd.errors import KbdError, StoreError
from kbd.private import private_fd, private_folder

log = logging.getLogger("kbd.store")

BUSY_TIMEOUT_MS = 30_000
WRITE_TRIES = 4


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL",
                           f"busy_timeout={BUSY_TIMEOUT_MS}"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            read_only = conn.get_execution_options().get("kbd_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (bigint) for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# session-level advisory lock keys: "a kbd daemon holds this PostgreSQL database" (exclusive
# for a single-host daemon, shared by the nodes of a fleet), and the migrations' (one node
# upgrades the schema, the others wait and find it done)
CLAIM_KEY = lock_key("kbd daemon")
MIGRATE_KEY = lock_key("kbd migrate")


def _is_locked(error: OperationalError) -> bool:
    return "locked" in str(error.orig).lower() or "busy" in str(error.orig).lower()


def _problem(error: OperationalError) -> tuple[str, str, str]:
    """(code, message about {where}, hint) for a database error, from SQLite's and
    PostgreSQL's own messages."""
    said = str(error.orig).lower()
    if "full" in said or "no space left" in said:
        return "disk-full", "disk full writing {where}", \
            "free space on its disk; kbd retries by itself"
    if "readonly" in said or "read-only" in said:
        return "read-only", "{where} is read-only", \
            "make the database file and its folder writable again; kbd retries by itself"
    if "disk i/o error" in said:
        return "io-error", "cannot write {where}", \
            "check that the file is writable (not immutable) and the disk healthy"
    if _is_locked(error):
        return "locked", "{where} is locked by another process", \
            "another process holds a write lock on the database; kbd retries by itself"
    return "store", "cannot use {where}", "check the store URL and that the database is reachable"


class Store:
    """Connections to the database, and the folder that holds memory matrices beside it."""

    def __init__(self, url: str, memory_dir: Path, node: str = ""):
        self.url = url
        self.node = node  # the fleet node whose documents this store reads and writes
        self.engine = _make_engine(url)
        self.memory_dir = memory_dir
        self.dialect = self.engine.dialect.name
        # what is wrong now, by place: a write that fails, or (the daemon's) a thread that died
        self.faults: dict[str, KbdError] = {}
        self._claim: Connection | int | None = None  # a daemon's hold on the store

    @classmethod
    def open(cls, url: str, memory_dir: Path, node: str = "", owner: str = "") -> Store:
        """Connect and bring the schema up to date (a database made by an older kbd upgrades).
        An `owner` (a daemon, `kbd ingest --once`) claims the store first: a second one is
        refused naming the first, rather than waiting on the first one's write lock to
        upgrade."""
        database = sqlite_file(url)
        if database is not None:
            private_folder(database.parent)
            # SQLite gives its -wal and -shm the database file's mode: 0600 keeps them private
            os.close(private_fd(database, os.O_RDONLY))
        private_folder(memory_dir)
        store = cls(url, memory_dir, node)
        try:
            if owner:
                store.claim(owner, node=node or None)
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def migrate(self) -> None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":  # held to the commit: one node upgrades
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": MIGRATE_KEY})
                self._refuse_newer(conn, ScriptDirectory.from_config(config))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except OperationalError as e:
            raise self._error(e, "cannot open or upgrade") from e

    def _refuse_newer(self, conn: Connection, scripts: ScriptDirectory) -> None:
        """A schema revision this kbd has no migration for was written by a newer kbd: this
        one cannot know its tables, so it stops before touching them, in one line (the
        revision is read directly: alembic's own context would log two lines first)."""
        if not inspect(conn).has_table("alembic_version"):
            return
        known = {script.revision for script in scripts.walk_revisions()}
        for revision in conn.execute(text("SELECT version_num FROM alembic_version")).scalars():
            if revision not in known:
                raise StoreError(
                    f"{self.where} was written by a newer kbd (schema revision {revision}, "
                    f"this kbd knows up to {scripts.get_current_head()}): upgrade kbd, or "
                    "give this one another store", code="newer-store")

    @staticmethod
    def schema_head() -> str:
        """The newest schema revision this kbd's code knows."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        return ScriptDirectory.from_config(config).get_current_head() or ""

    @property
    def shares_memory(self) -> bool:
        """A fleet node keeps memory vectors in the store, shared (kbd.store.vectors); a
        single host keeps them in its matrix files."""
        return bool(self.node) and self.dialect == "postgresql"

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def where(self) -> str:
        """The database file for SQLite, the URL (without password) otherwise."""
        database = self.engine.url.database
        return database if self.dialect == "sqlite" and database else self.safe_url

    def _error(self, error: OperationalError, doing: str | None = None) -> StoreError:
        """A StoreError that says what is wrong in words; `doing` ("cannot read") replaces
        the words but keeps the code and hint."""
        code, message, hint = _problem(error)
        message = f"{doing} {{where}}" if doing else message
        return StoreError(f"{message.format(where=self.where)} ({error.orig})", hint=hint,
                          code=code)

    def note_fault(self, place: str, error: KbdError | None) -> None:
        """Record that writing to `place` fails now (logged once), or works again."""
        before = self.faults.get(place)
        if error is None:
            if before is not None:
                del self.faults[place]
                log.info("%s: writes work again", place)
            return
        self.faults[place] = error
        if before is None or before.message != error.message:
            log.error("%s: %s (hint: %s)", place, error.message, error.hint)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(kbd_read_only=True, kbd_node=self.node)
                with conn.begin():
                    yield conn
        except OperationalError as e:
            raise self._error(e, "cannot read") from e

    def write(self, work):
        """Run work(conn) in one write transaction; retried when the database is locked."""
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(kbd_node=self.node)
                    with conn.begin():
                        result = work(conn)
                self.note_fault("database", None)
                return result
            except OperationalError as e:
                if not _is_locked(e) or attempt == WRITE_TRIES:
                    error = self._error(e)
                    self.note_fault("database", error)
                    raise error from e
                delay = min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("database locked, retry %d of %d in %.2f s", attempt,
                            WRITE_TRIES - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def claim(self, owner: str, node: str | None = None) -> None:
        """Hold the store for one daemon or `kbd ingest --once` until close(): an exclusive
        flock on a file beside a SQLite database (which names the owner), a session advisory
        lock on PostgreSQL (the session's application_name names it). Another claim raises
        StoreError "already-running" naming the holder, so two processes never ingest the
        same files or run the same jobs at once.

        A fleet node (PostgreSQL only) claims its `node` name instead: the store lock shared
        with the other nodes (so no single-host daemon runs beside them, nor they beside it),
        and an exclusive lock on the name, so two daemons with one node name are refused."""
        if self.dialect == "sqlite":
            if not self.engine.url.database:
                return  # in memory: no other process can open it
            lock_path = f"{self.where}.lock"
            fd = private_fd(Path(lock_path), os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Path(lock_path).read_text().strip() or "unknown"
                os.close(fd)
                raise self._claimed(holder) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{owner}\n".encode())
            self._claim = fd
            return
        conn = self.engine.connect()
        conn.execute(text("SELECT set_config('application_name', :owner, false)"),
                     {"owner": owner[:63]})
        try:
            if node is None:
                self._lock(conn, "pg_try_advisory_lock", CLAIM_KEY, "")
            else:
                self._lock(conn, "pg_try_advisory_lock_shared", CLAIM_KEY, "")
                self._lock(conn, "pg_try_advisory_lock", lock_key(f"kbd node {node}"), node)
        except StoreError:  # a lock taken before the refusal goes with it
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
            conn.close()
            raise
        conn.commit()  # the lock belongs to the session: keep it, not an open transaction
        self._claim = conn

    def _lock(self, conn: Connection, function: str, key: int, node: str) -> None:
        if conn.execute(text(f"SELECT {function}(:key)"), {"key": key}).scalar_one():
            return
        holder = conn.execute(text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
            "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.objid = :low AND a.pid <> pg_backend_pid()"),
            {"low": key & 0xFFFFFFFF}).scalar() or "unknown"
        if node:
            raise StoreError(f"node {node!r} already runs on the store {self.where} "
                             f"({holder})",
                             hint="each daemon of a fleet needs its own [node] name; stop "
                                  "the other one, or name this one differently",
                             code="already-running")
        raise self._claimed(holder)

    def _claimed(self, holder: str) -> StoreError:
        return StoreError(f"the store {self.where} is in use by {holder}",
                          hint="wait for it to end, or stop it: two kbd processes on one store "
                               "would ingest every file and run every job twice",
                          code="already-running")

    def close(self) -> None:
        if isinstance(self._claim, int):
            os.close(self._claim)
        elif self._claim is not None:
            # at once: the server ends a closed session's locks a moment later (a server
            # that is gone took the locks with it)
            with contextlib.suppress(OperationalError):
                self._claim.execute(text("SELECT pg_advisory_unlock_all()"))
            self._claim.invalidate()  # ends the session, and with it the advisory lock
        self._claim = None
        self.engine.dispose()
