"""The store on SQLite and PostgreSQL: migrations, SQLite settings, locking, memory files."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from support.harness import database_at, postgresql_database

from kbd.retrieve import bm25
from kbd.store import Store, sqlite_url
from kbd.store import queries as q
from kbd.store.matrix import MemoryFileError, MemoryMatrix
from kbd.store.queries import utcnow
from kbd.store.questions import answer, record_answer
from kbd.store.schema import include_object, metadata, passages


def passage(ordinal: int, body: str) -> SimpleNamespace:
    return SimpleNamespace(ordinal=ordinal, text=body, first_line=ordinal + 1,
                           last_line=ordinal + 1, page=None, byte_start=ordinal * 10,
                           byte_end=ordinal * 10 + 9, token_count=3, heading=None, split=False)


def autogenerate_context(conn) -> MigrationContext:
    """Alembic's comparison as `alembic revision --autogenerate` makes it (kbd's env.py)."""
    return MigrationContext.configure(conn, opts={"include_object": include_object})


def add_document(store: Store, path: str, texts: list[str]) -> int:
    def work(conn):
        doc = q.insert_document(conn, path=path, kind="log", size=1, mtime_ns=1,
                                status="ready", tokenizer="tok")
        q.insert_passages(conn, doc, [passage(i, t) for i, t in enumerate(texts)], "tok")
        return doc

    return store.write(work)


# the ids that grow with the logs, and every column that refers to one (migration 0014)
ROW_IDS = [("documents", "id"), ("passages", "id"), ("passages", "document_id"),
           ("memories", "id"), ("leases", "passage_id"), ("answers", "id"),
           ("answers", "covered_through"), ("answer_sources", "id"),
           ("answer_sources", "answer_id"), ("answer_sources", "passage_id"), ("events", "id"),
           ("events", "answer_id"), ("firings", "answer_id"), ("asks", "id"),
           ("ask_chunks", "ask_id")]


class TestSchema:
    def test_migrations_match_the_tables(self, store):
        with store.engine.connect() as conn:
            assert compare_metadata(autogenerate_context(conn), metadata) == []
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() \
                == "0015"

    def test_older_database_upgrades_on_open(self, store_url, tmp_path):
        """A database left by a kbd at revision 0001, with data, is upgraded in place."""
        with database_at(store_url, "0001") as conn:
            conn.execute(text("INSERT INTO documents (path, kind, size, mtime_ns, status, "
                              "\"offset\", rotations, first_seen, last_seen, changed_at) VALUES "
                              "('/old.log', 'log', 1, 1, 'ready', 0, 0, CURRENT_TIMESTAMP, "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        store = Store.open(store_url, tmp_path / "memory")
        with store.engine.connect() as conn:
            assert compare_metadata(autogenerate_context(conn), metadata) == []
        with store.read() as conn:
            assert q.live_document(conn, "/old.log").kind == "log"
            assert q.active_sources(conn) == []
        store.close()

    def test_stored_backslashes_survive_the_path_escapes(self, store_url, tmp_path):
        """Before 0006 paths were stored as they are; a backslash in one stays one."""
        with database_at(store_url, "0005") as conn:
            conn.execute(text("INSERT INTO documents (path, kind, size, mtime_ns, status, "
                              "\"offset\", rotations, first_seen, last_seen, changed_at) VALUES "
                              "('/w/a\\xff.log', 'log', 1, 1, 'ready', 0, 0, CURRENT_TIMESTAMP, "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        store = Store.open(store_url, tmp_path / "memory")
        with store.read() as conn:
            assert [d.path for d in q.live_documents(conn)] == ["/w/a\\xff.log"]
        store.close()

    def test_a_reports_heading_becomes_searchable_on_upgrade(self, store_url, tmp_path):
        """0015: a report's passage stored before it is found by its heading's words too; a
        log's passage, with no heading, keeps what it had."""
        with database_at(store_url, "0014") as conn:
            for path, kind in [("/r/ct-77.rst", "report"), ("/l/app.log", "log")]:
                conn.execute(text(
                    "INSERT INTO documents (path, kind, size, mtime_ns, status, \"offset\", "
                    "rotations, first_seen, last_seen, changed_at) VALUES (:path, :kind, 1, 1, "
                    "'ready', 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                    {"path": path, "kind": kind})
            conn.execute(text(
                "INSERT INTO passages (document_id, ordinal, text, text_hash, token_count, "
                "tokenizer, created_at, heading, search_extra) SELECT id, 0, :text, 'h', 4, "
                "'tok', CURRENT_TIMESTAMP, :heading, '' FROM documents WHERE kind = :kind"),
                [{"text": "| R1 | 24 | 41 min |", "heading": "Capacity test CT-77 > Results",
                  "kind": "report"},
                 {"text": "quokka capacity exceeded", "heading": None, "kind": "log"}])
        store = Store.open(store_url, tmp_path / "memory")
        with store.read() as conn:
            assert [p.path for p in q.passages_with_all(conn, ["capacity", "R1"], 10)] == [
                "/r/ct-77.rst"]
            assert [p.path for p in q.passages_with_all(conn, ["capacity"], 10)] == [
                "/r/ct-77.rst", "/l/app.log"]
        store.close()

    def test_row_ids_become_bigint_on_postgresql(self, postgres_server, tmp_path):
        """0014: a PostgreSQL store left at 0013 with data keeps its rows, and the ids that
        grow with the logs become bigint, their sequences too; a passage numbered past 2^31
        is stored, found by full-text search and cited by an answer numbered past it."""
        with postgresql_database(postgres_server) as url:
            with database_at(url, "0013") as conn:
                conn.execute(text(
                    "INSERT INTO documents (path, kind, size, mtime_ns, status, \"offset\", "
                    "rotations, first_seen, last_seen, changed_at) VALUES ('/old.log', 'log', "
                    "1, 1, 'ready', 0, 0, now(), now(), now())"))
                conn.execute(text(
                    "INSERT INTO passages (document_id, ordinal, text, text_hash, token_count, "
                    "tokenizer, created_at) SELECT id, 0, 'an old quokka line', 'h', 4, 'tok', "
                    "now() FROM documents"))
            store = Store.open(url, tmp_path / "memory")
            with store.engine.connect() as conn:
                assert compare_metadata(autogenerate_context(conn), metadata) == []
                types = {(r.table_name, r.column_name): r.data_type for r in conn.execute(text(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = 'public'"))}
                sequences = dict(conn.execute(text(
                    "SELECT sequence_name, data_type FROM information_schema.sequences")).all())
                conn.execute(text(f"SELECT setval('passages_id_seq', {2**31 + 7}), "
                                  f"setval('answers_id_seq', {2**31 + 70})"))
                conn.commit()
            assert {tc: types[tc] for tc in ROW_IDS} == dict.fromkeys(ROW_IDS, "bigint")
            assert types[("questions", "id")] == "integer"  # questions do not grow with logs
            assert {sequences[f"{t}_id_seq"] for t, c in ROW_IDS if c == "id"} == {"bigint"}
            add_document(store, "/big.log", ["a quokka line past two billion"])
            with store.read() as conn:
                assert [p.text for p in q.passages_with_all(conn, ["quokka"], 10)] == [
                    "an old quokka line", "a quokka line past two billion"]
            found = bm25(store, "quokka billion", None, 1)
            assert found[0][0] > 2**31, found
            answer_id = store.write(lambda conn: record_answer(
                conn, question_id=None, question="quokka ?", started_at=utcnow(),
                finished_at=utcnow(), model="m", engine="text", status="ok", error=None, text="it",
                candidates=2, sources=[(1, found[0][0], found[0][1])],
                covered_through=found[0][0]))
            with store.read() as conn:
                cited = answer(conn, answer_id)
            assert answer_id > 2**31
            assert [s["passage_id"] for s in cited["sources"]] == [found[0][0]]
            store.close()

    def test_paths_round_trip_whatever_their_bytes(self, store):
        """A Linux file name need not be UTF-8: os.fsdecode carries such bytes as lone
        surrogates, which neither database takes as text. Backslashes and LIKE's wildcards in
        names stay literal."""
        folder = os.fsdecode(b"/w/d\xe9j\xe0%")  # a Latin-1 name, and a wildcard
        names = [folder + os.fsdecode(n) for n in
                 (b"/m\xff.log", b"/b\\xff.log", b"/\\\\_x.log", "/\u00fc.log".encode())]
        for name in [*names, "/w/d\u00e9j\u00e0/x.log", "/w/dxjx%/y.log"]:
            add_document(store, name, ["text"])
        store.write(lambda conn: q.record_failure(conn, names[0], "read", "unreadable",
                                                  f"{names[0]}: denied", None, None))
        with store.read() as conn:
            assert {d.path for d in q.live_documents(conn, under=folder)} == set(names)
            assert [q.live_document(conn, n).path for n in names] == names
            failure = q.failure_for(conn, names[0])
            assert (failure.path, failure.message) == (names[0], f"{names[0]}: denied")
            assert [f["path"] for f in q.status(conn, None)["failed_files"]] == [names[0]]
            stored = conn.execute(text("SELECT path FROM documents WHERE path LIKE '%m%'"))
            assert stored.scalar_one() == "/w/d\\xe9j\\xe0%/m\\xff.log"

    def test_upgrade_keeps_questions_their_answers_and_coverage(self, store_url, tmp_path):
        """A store of revision 0005 with questions and answers: the questions keep their
        ids and answers their links (SQLite rebuilds the table for AUTOINCREMENT), answers
        get the passage coverage they had, and a deleted question's id is not given again."""
        from datetime import UTC, datetime

        from sqlalchemy import insert

        from kbd.store import questions as sq
        from kbd.store.schema import answers, questions

        future = datetime(2999, 1, 1, tzinfo=UTC)
        past = datetime(2000, 1, 1, tzinfo=UTC)
        with database_at(store_url, "0005") as conn:
            doc = q.insert_document(conn, path="/old.log", kind="log", size=1, mtime_ns=1,
                                    status="ready", tokenizer="tok")
            # by hand: today's insert_passages writes columns a 0005 store lacks
            for ordinal, body in enumerate(("one", "two")):
                conn.execute(text(
                    "INSERT INTO passages (document_id, ordinal, text, text_hash, token_count, "
                    "byte_start, byte_end, split, tokenizer, live, created_at) VALUES "
                    "(:doc, :n, :body, :hash, 3, :n, :n, false, 'tok', true, CURRENT_TIMESTAMP)"),
                    {"doc": doc, "n": ordinal, "body": body, "hash": body})
            first, last = (conn.execute(insert(questions).values(
                text=name, schedule_kind="interval", interval_s=60, created_at=past,
                updated_at=past)).inserted_primary_key[0] for name in ("q1", "q2"))
            for qid, at, status in ((first, future, "ok"), (last, future, "failed"),
                                    (last, past, "ok")):
                conn.execute(insert(answers).values(
                    question_id=qid, question="q", started_at=at, finished_at=at,
                    engine="clara", status=status, text="a", candidates=1))
            newest = conn.execute(text("SELECT max(id) FROM passages")).scalar()
        store = Store.open(store_url, tmp_path / "memory")
        try:
            with store.read() as conn:
                assert [x["text"] for x in sq.list_questions(conn)] == ["q1", "q2"]
                rows = conn.execute(select(answers.c.question_id, answers.c.status,
                                           answers.c.covered_through)
                                    .order_by(answers.c.id)).all()
            assert [tuple(r) for r in rows] == [(first, "ok", newest), (last, "failed", None),
                                                (last, "ok", None)]
            store.write(lambda conn: sq.delete_question(conn, last))
            again = store.write(lambda conn: sq.create_question(
                conn, text="q3", schedule_kind="interval", interval_s=60))
            assert again > last
        finally:
            store.close()

    def test_sources_follow_the_config(self, store, tmp_path):
        from kbd.folders import WatchedFolder

        a, b = WatchedFolder(tmp_path / "a", kind="log"), WatchedFolder(tmp_path / "b")
        store.write(lambda conn: q.sync_sources(conn, [a, b]))
        store.write(lambda conn: q.sync_sources(conn, [WatchedFolder(tmp_path / "a",
                                                                     include=("*.log",))]))
        with store.read() as conn:
            (row,) = q.active_sources(conn)
        assert row.path == str(tmp_path / "a") and row.include == '["*.log"]'
        assert row.kind == "auto"

    def test_reopen_keeps_data(self, store, store_url, tmp_path):
        add_document(store, "/a.log", ["one"])
        again = Store.open(store_url, tmp_path / "memory")
        with again.read() as conn:
            assert q.live_document(conn, "/a.log").kind == "log"
        again.close()

    def test_one_live_document_per_path(self, store):
        doc = add_document(store, "/a.log", ["one"])
        store.write(lambda conn: q.retire_document(conn, doc))
        add_document(store, "/a.log", ["two"])  # a deleted one does not block the path
        with pytest.raises(Exception, match="(?i)unique|duplicate"):
            add_document(store, "/a.log", ["three"])

    def test_unreachable_database_is_a_clear_error(self, tmp_path):
        from kbd.store import StoreError

        with pytest.raises(StoreError, match="cannot open"):
            Store.open("postgresql+psycopg://nobody@/x?host=/nonexistent&port=1",
                       tmp_path / "m")

    def test_one_daemon_claims_a_store(self, store, store_url, tmp_path):
        """A second claim on the same database is refused, naming the holder, until the
        first store closes (tests/faults/test_two_daemons.py: the daemons themselves)."""
        from kbd.store import StoreError

        store.claim("kbd daemon pid 4242")
        other = Store(store_url, tmp_path / "memory")
        with pytest.raises(StoreError, match="pid 4242") as refused:
            other.claim("kbd daemon pid 7")
        assert refused.value.code == "already-running"
        store.close()
        other.claim("kbd daemon pid 7")
        other.close()


class TestSqliteSettings:
    def test_pragmas(self, tmp_path):
        store = Store.open(f"sqlite:///{tmp_path / 'k.db'}", tmp_path / "m")
        with store.read() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000

    def test_concurrent_read_then_write(self, tmp_path):
        """Read-then-write transactions from many threads: BEGIN IMMEDIATE serialises them
        instead of failing with "database is locked"."""
        store = Store.open(f"sqlite:///{tmp_path / 'k.db'}", tmp_path / "m")
        add_document(store, "/counter.log", ["0"])
        errors = []

        def bump() -> None:
            def work(conn):
                row = conn.execute(select(passages.c.id, passages.c.text)).first()
                conn.execute(passages.update().where(passages.c.id == row.id)
                             .values(text=str(int(row.text) + 1)))
            try:
                for _ in range(20):
                    store.write(work)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with store.read() as conn:
            assert conn.execute(select(passages.c.text)).scalar() == "80"


class TestBacklogAndMemory:
    def test_backlog_is_distinct_by_text(self, store):
        add_document(store, "/a.log", ["alpha", "beta", "alpha"])
        add_document(store, "/b.log", ["beta", "gamma"])
        with store.read() as conn:
            waiting = q.backlog(conn, "m1", 10)
            assert sorted(t for _, t in waiting) == ["alpha", "beta", "gamma"]
            assert q.backlog_size(conn, "m1") == 3
        store.write(lambda conn: q.add_memories(conn, "m1", [(q.text_hash("alpha"), 0)]))
        store.write(lambda conn: q.add_memories(conn, "m1", [(q.text_hash("alpha"), 7)]))
        with store.read() as conn:
            assert q.backlog_size(conn, "m1") == 2
            assert q.backlog_size(conn, "other-model") == 3
            rows = q.memory_rows(conn, "m1")
        assert [r for _, r in rows] == [0, 0]  # both "alpha" passages, the first row kept

    def test_retired_passages_leave_the_backlog_and_candidates(self, store):
        doc = add_document(store, "/a.log", ["alpha", "beta"])
        store.write(lambda conn: q.add_memories(conn, "m", [(q.text_hash("alpha"), 0)]))
        store.write(lambda conn: q.retire_document(conn, doc))
        with store.read() as conn:
            assert q.backlog_size(conn, "m") == 0
            assert q.memory_rows(conn, "m") == []
            assert len(conn.execute(select(passages)).all()) == 2  # kept for citations

    def test_matrix_append_and_map(self, tmp_path):
        matrix = MemoryMatrix(tmp_path, "fp.float32", (2, 3), "float32")
        rows = [np.full((2, 3), i, dtype="float32").tobytes() for i in range(3)]
        assert matrix.append(rows[:2]) == [0, 1]
        assert matrix.append(rows[2:]) == [2]
        assert matrix.matrix()[:, 0, 0].tolist() == [0.0, 1.0, 2.0]
        assert matrix.read([1]) == [rows[1]]
        with open(matrix.path, "ab") as f:  # a crash in the middle of a row
            f.write(b"\x01\x02")
        assert matrix.append(rows[:1]) == [3]
        assert matrix.rows() == 4
        with pytest.raises(MemoryFileError, match="holds"):
            MemoryMatrix(tmp_path, "fp.float32", (2, 4), "float32")


def test_what_the_store_writes_is_private_under_umask_000(tmp_path):
    """Issue 20, item 2, for kbd used as a library (the CLI sets its own umask): the
    database and its -wal and -shm, memory matrices and digests are 0600 in 0700 folders
    even when the process's umask would leave them open to everyone."""
    from datetime import UTC, datetime, timedelta

    from kbd.digest import write_digest

    data = tmp_path / "data"
    before = os.umask(0)
    try:
        store = Store.open(sqlite_url(data / "kbd.sqlite3"), data / "memory")
        store.claim("a test")
        MemoryMatrix(store.memory_dir, "fp", (2, 3), "float32").append([bytes(24)])
        now = datetime.now(UTC)
        write_digest(store, data / "reports", now - timedelta(days=1), now, None, 0)
        found = {str(p.relative_to(data)): p.stat().st_mode & 0o777
                 for p in [data, *data.rglob("*")]}
        store.close()
    finally:
        os.umask(before)
    assert {"kbd.sqlite3-wal", "kbd.sqlite3-shm", "memory/fp.bin", "reports"} <= set(found)
    assert {name: oct(mode) for name, mode in found.items() if mode & 0o077} == {}
