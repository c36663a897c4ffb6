"""The store's tables. Only kbd.store imports SQLAlchemy.

A document is one file at one path; it keeps its passages, which are cut for one tokenizer.
A passage's memory is keyed by (text hash, model fingerprint), so identical passages anywhere
are compressed once, and re-cutting or moving a file costs no compression when the text is
the same. Passages of changed or deleted documents are retired (live = false), never deleted
while an answer may cite them. Each answer, standing or ad hoc, keeps the passages it came
from (answer_sources); deleting a standing question keeps its answers. In a fleet sharing one
PostgreSQL store a document is one file at one path on one node (docs/fleet.md).
"""

from __future__ import annotations

import re

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

_STORED_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def stored_text(value: str) -> str:
    """A file path, or text that names one, as the database can hold it: a byte of a name that
    is not UTF-8 (which Python carries as a lone surrogate, PEP 383) is written \\xNN, and a
    backslash is doubled, so every path comes back byte for byte. Text that is UTF-8 and has
    no backslash is stored as it is."""
    escaped = value.replace("\\", "\\\\").encode("utf-8", "surrogateescape")
    return escaped.decode("utf-8", "backslashreplace")


def loaded_text(stored: str) -> str:
    """The text stored_text() wrote, its paths as os.fsdecode gives them."""
    return _STORED_ESCAPE.sub(
        lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), stored)


class FsText(TypeDecorator):
    """A text column of file paths, or of messages that name them, through stored_text() and
    loaded_text(): SQLite and PostgreSQL refuse text with lone surrogates, and Linux file
    names need not be UTF-8."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect) -> str | None:
        return None if value is None else stored_text(value)

    def process_result_value(self, value: str | None, dialect) -> str | None:
        return None if value is None else loaded_text(value)


# A row id that grows with the logs (passages, their memory, answers, their sources, events,
# asks): 64 bits, as a fleet's passages pass 2^31 within days (docs/fleet.md, migration 0014).
# SQLite's INTEGER is 64 bits already, and INTEGER PRIMARY KEY is its rowid (AUTOINCREMENT
# only on INTEGER): there it stays INTEGER.
ROW_ID = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

sources = Table(
    "sources", metadata,  # the watched folders, as the config last named them
    Column("id", Integer, primary_key=True),
    Column("path", FsText, nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("include", Text, nullable=False),  # JSON list of globs
    Column("exclude", Text, nullable=False),
    Column("polling", Boolean, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True)),
)

documents = Table(
    "documents", metadata,
    Column("id", ROW_ID, primary_key=True),
    # the fleet node whose disk holds the file; "" for a single-host daemon (role all)
    Column("node", String(63), nullable=False, server_default=""),
    Column("path", FsText, nullable=False),
    Column("folder", FsText),  # the watched folder it came through
    Column("kind", String(16), nullable=False),  # log | report
    Column("device", BigInteger),
    Column("inode", BigInteger),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("head_hash", String(64)),  # the first HEAD_BYTES: a rewritten log changes it
    Column("head_len", Integer),
    Column("content_hash", String(64)),  # whole content, when it was read whole
    Column("offset", BigInteger, nullable=False, server_default="0"),  # bytes ingested
    Column("tokenizer", String(32)),  # passages were cut for this tokenizer (null: not cut)
    Column("status", String(16), nullable=False),  # ready | unchunked | error | deleted
    Column("error", FsText),
    Column("rotations", Integer, nullable=False, server_default="0"),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_documents_live_node_path", "node", "path", unique=True,
          sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
    Index("ix_documents_identity", "device", "inode"),
    Index("ix_documents_content", "content_hash"),
)

passages = Table(
    "passages", metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("document_id", ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("text_hash", String(64), nullable=False),
    # the parts of its glued tokens, indexed beside the text (queries.search_extra)
    Column("search_extra", Text),
    Column("token_count", Integer, nullable=False),
    Column("first_line", Integer),
    Column("last_line", Integer),
    Column("page", Integer),
    Column("byte_start", BigInteger),
    Column("byte_end", BigInteger),
    Column("heading", Text),
    Column("split", Boolean, nullable=False, server_default=text("false")),
    Column("tokenizer", String(32), nullable=False),
    Column("live", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True)),
    Index("ix_passages_document_live", "document_id", "live", "ordinal"),
    Index("ix_passages_text_hash", "text_hash"),
)

memories = Table(
    "memories", metadata,
    Column("id", ROW_ID, primary_key=True),
    Column("text_hash", String(64), nullable=False),
    Column("fingerprint", String(96), nullable=False),  # memory id: model.dtype[@node]
    Column("row", BigInteger, nullable=False),  # row in the fingerprint's memory matrix file
    Column("created_at", DateTime(timezone=True), nullable=False),
    # a fleet's memory, shared in the store (bf16 bytes); its row is then the fleet's row
    # number, which each model node's copy of the matrix follows. Null: in the matrix file
    Column("vector", LargeBinary),
    UniqueConstraint("fingerprint", "text_hash"),
    Index("ix_memories_fingerprint_row", "fingerprint", "row", unique=True,
          sqlite_where=text("vector IS NOT NULL"), postgresql_where=text("vector IS NOT NULL")),
)

leases = Table(
    "leases", metadata,  # a fleet's compression backlog, queued; held by a model node
    Column("fingerprint", String(96), primary_key=True),  # memory id
    Column("text_hash", String(64), primary_key=True),
    Column("passage_id", ROW_ID, nullable=False),  # its oldest passage: claims go in order
    Column("node", String(63), nullable=False),  # "": queued, no node has claimed it
    Column("token", String(32), nullable=False),  # the claim: its batch's vectors are written
    Column("claimed_at", DateTime(timezone=True), nullable=False),  # only while it holds
    Column("expires_at", DateTime(timezone=True), nullable=False),  # database clock
    Column("taken_over", Integer, nullable=False, server_default="0"),  # claims after the first
)

failures = Table(
    "failures", metadata,
    Column("id", Integer, primary_key=True),
    Column("node", String(63), nullable=False, server_default=""),
    Column("path", FsText, nullable=False),
    Column("stage", String(16), nullable=False),
    Column("code", String(32), nullable=False),
    Column("message", FsText, nullable=False),
    Column("size", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("node", "path"),
)

questions = Table(
    "questions", metadata,  # standing questions, asked on a schedule
    Column("id", Integer, primary_key=True),
    Column("text", Text, nullable=False),
    Column("schedule_kind", String(16), nullable=False),  # cron | interval
    Column("cron", Text),  # 5-field crontab, read in the question's timezone
    Column("interval_s", Integer),
    Column("timezone", String(64), nullable=False, server_default="UTC"),  # IANA name
    Column("scope", Text, nullable=False, server_default="[]"),  # JSON list of paths or globs
    Column("kinds", Text, nullable=False, server_default="[]"),  # JSON list; empty: all kinds
    Column("since_s", Integer),  # only passages from the last since_s seconds; null: all
    Column("since_last_run", Boolean, nullable=False, server_default=text("false")),
    Column("top_k", Integer, nullable=False, server_default="5"),
    Column("max_new_tokens", Integer, nullable=False, server_default="128"),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_run_at", DateTime(timezone=True)),
    Column("next_run_at", DateTime(timezone=True)),  # the scheduler fills it
    # when its runs are sent to people (change | always | never), and through which
    # [notify.NAME] channels: a JSON list of names
    Column("notify", String(8), nullable=False, server_default="never"),
    Column("channels", Text, nullable=False, server_default="[]"),
    sqlite_autoincrement=True,  # an id is never reused: old answers never name a new question
)

answers = Table(
    "answers", metadata,  # every answer given, standing or ad hoc (question_id null)
    Column("id", ROW_ID, primary_key=True),
    Column("question_id", ForeignKey("questions.id", ondelete="SET NULL")),
    Column("question", Text, nullable=False),  # the text as asked
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("model", Text),  # the model / memory id the answer came from
    Column("engine", String(32), nullable=False),  # clara | text
    Column("status", String(16), nullable=False),  # ok | not-found | nothing-new | failed | skipped
    Column("error", Text),  # why it failed, or which firings were skipped
    Column("text", Text),
    Column("change", String(16)),  # first | unchanged | changed | new-sources; null: not ok
    Column("candidates", Integer, nullable=False),  # passages ranked
    # every live passage with an id up to this one was a candidate: a since-last-run window
    # starts after it (null: no snapshot, as for failed and skipped runs)
    Column("covered_through", ROW_ID),
    Index("ix_answers_question_id_started_at", "question_id", "started_at"),
)

answer_sources = Table(
    "answer_sources", metadata,  # the passages an answer came from, best first
    Column("id", ROW_ID, primary_key=True),
    Column("answer_id", ForeignKey("answers.id", ondelete="CASCADE"), nullable=False),
    Column("rank", Integer, nullable=False),  # 1-based
    Column("passage_id", ForeignKey("passages.id"), nullable=False),  # cited: never deleted
    Column("score", Float, nullable=False),
    UniqueConstraint("answer_id", "rank"),
    Index("ix_answer_sources_passage_id", "passage_id"),
)

digests = Table(
    "digests", metadata,  # every digest written: the period it covers and its files
    Column("id", Integer, primary_key=True),
    Column("generated_at", DateTime(timezone=True), nullable=False),  # the period's end
    Column("since", DateTime(timezone=True), nullable=False),  # the period's start
    Column("paths", Text, nullable=False),  # JSON list of the files written
)

events = Table(
    "events", metadata,  # the outbox: what is to be sent, one row per event and channel
    Column("id", ROW_ID, primary_key=True),  # a channel gets its events in id order
    # the stable id: a repeat after a crash carries it (Message-ID, the webhook's key)
    Column("key", String(64), nullable=False, unique=True),
    Column("channel", String(128), nullable=False),  # a [notify.NAME] of the config
    Column("kind", String(16), nullable=False),  # answer | failed | skipped | digest | test
    Column("question_id", Integer),  # no foreign key: the event outlives a deleted question
    Column("answer_id", ROW_ID),
    Column("digest_id", Integer),
    Column("payload", Text, nullable=False),  # JSON, fixed when the event is made
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),  # delivered or given up
    Column("last_error", Text),
    Column("receipt", Text),  # what the receiver said: HTTP 200, 250 ..., exit 0
    Index("ix_events_status_channel", "status", "channel", "id"),
)

nodes = Table(
    "nodes", metadata,  # the daemons sharing this store, each upserted at start, heartbeating
    Column("name", String(63), primary_key=True),
    Column("role", String(16), nullable=False),  # all | ingest | model
    Column("version", String(32), nullable=False),  # kbd's
    Column("schema_revision", String(32), nullable=False),  # the newest its code knows
    Column("pid", Integer),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_s", Float, nullable=False),  # its period: silent after 3 missed
    Column("stopped_at", DateTime(timezone=True)),  # stopped as asked, not silent
    Column("backlog", BigInteger),  # passages waiting for compression, as it last saw them
    Column("documents", BigInteger),  # live documents of this node
)

firings = Table(
    "firings", metadata,  # one row per scheduled firing some node claimed: run once per fleet
    Column("job", String(64), primary_key=True),  # question-<id> | digest
    Column("fire_time", DateTime(timezone=True), primary_key=True),
    Column("question_id", Integer),  # no foreign key: the record outlives a deleted question
    Column("node", String(63), nullable=False),  # who claimed it ...
    Column("node_started_at", DateTime(timezone=True), nullable=False),  # ... in which life
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True)),  # its answer (or digest) was recorded
    Column("answer_id", ROW_ID),
    Column("taken_over", Integer, nullable=False, server_default="0"),  # claims after the first
)

asks = Table(
    "asks", metadata,  # a question asked on a node without a model, until its answer is relayed
    Column("id", ROW_ID, primary_key=True),
    Column("asker", String(63), nullable=False),  # the node whose client waits
    Column("question", Text, nullable=False),
    Column("options", Text, nullable=False),  # JSON: top_k, max_new_tokens, scope, stream ...
    Column("created_at", DateTime(timezone=True), nullable=False),  # the database's clock
    Column("claimed_by", String(63)),  # the model node answering it ...
    Column("claimer_started_at", DateTime(timezone=True)),  # ... in which life
    Column("claimed_at", DateTime(timezone=True)),
)

ask_chunks = Table(
    "ask_chunks", metadata,  # an ask's answer as it comes: text pieces, then done or error
    Column("ask_id", ForeignKey("asks.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),  # 0, 1, 2 ... in the order written
    Column("kind", String(8), nullable=False),  # token | done | error
    Column("body", Text, nullable=False),  # the text piece, or the answer's (error's) JSON
)

# Full-text search over live passages (migrations 0005, 0006) is dialect-specific and has no table
# here: on SQLite the FTS5 table passages_fts, its shadow tables and triggers; on PostgreSQL
# the generated column passages.search_vector and its GIN index. Queries name them in SQL.
FULL_TEXT = ("passages_fts", "search_vector", "ix_passages_search_vector")


def include_object(obj, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """Alembic autogenerate's filter: the full-text objects are made by hand, leave them be."""
    return not (reflected and compare_to is None and (name or "").startswith(FULL_TEXT))
