"""The knowledge store: SQLite by default, PostgreSQL by URL, schema managed by Alembic.

SQLite runs in WAL mode with foreign keys on and a busy timeout. Writes open with
BEGIN IMMEDIATE: a read-then-write transaction that starts deferred takes its write lock only
at the first write and then fails at once with "database is locked" if another writer got in
first, which a busy timeout cannot help. Writes that still meet a lock are retried a few times
with jittered, capped back-off before the error reaches the caller.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError

from kbd.errors import KbdError

log = logging.getLogger("kbd.store")

BUSY_TIMEOUT_MS = 30_000
WRITE_TRIES = 4


class StoreError(KbdError):
    code = "store"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


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


def _is_locked(error: OperationalError) -> bool:
    return "locked" in str(error.orig).lower() or "busy" in str(error.orig).lower()


class Store:
    """Connections to the database, and the folder that holds memory matrices beside it."""

    def __init__(self, url: str, memory_dir: Path):
        self.url = url
        self.engine = _make_engine(url)
        self.memory_dir = memory_dir
        self.dialect = self.engine.dialect.name

    @classmethod
    def open(cls, url: str, memory_dir: Path) -> Store:
        """Connect and bring the schema up to date (a database made by an older kbd upgrades)."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        memory_dir.mkdir(parents=True, exist_ok=True)
        store = cls(url, memory_dir)
        store.migrate()
        return store

    def migrate(self) -> None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        try:
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except OperationalError as e:
            raise StoreError(f"{self.safe_url}: cannot open or upgrade the database ({e.orig})",
                             hint="check the store URL and that the database is reachable") from e

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(kbd_read_only=True)
            with conn.begin():
                yield conn

    def write(self, work):
        """Run work(conn) in one write transaction; retried when the database is locked."""
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except OperationalError as e:
                if not _is_locked(e) or attempt == WRITE_TRIES:
                    raise StoreError(f"{self.safe_url}: write failed ({e.orig})",
                                     hint="another process may hold the database") from e
                delay = min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("database locked, retry %d of %d in %.2f s", attempt,
                            WRITE_TRIES - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()
