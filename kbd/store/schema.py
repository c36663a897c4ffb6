"""The store's tables. Only kbd.store imports SQLAlchemy.

A document is one file at one path; it keeps its passages, which are cut for one tokenizer.
A passage's memory is keyed by (text hash, model fingerprint), so identical passages anywhere
are compressed once, and re-cutting or moving a file costs no compression when the text is
the same. Passages of changed or deleted documents are retired (live = false), never deleted
while an answer may cite them. Each answer, standing or ad hoc, keeps the passages it came
from (answer_sources); deleting a standing question keeps its answers.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

sources = Table(
    "sources", metadata,  # the watched folders, as the config last named them
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("include", Text, nullable=False),  # JSON list of globs
    Column("exclude", Text, nullable=False),
    Column("polling", Boolean, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True)),
)

documents = Table(
    "documents", metadata,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False),
    Column("folder", Text),  # the watched folder it came through
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
    Column("error", Text),
    Column("rotations", Integer, nullable=False, server_default="0"),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_documents_live_path", "path", unique=True,
          sqlite_where=text("deleted_at IS NULL"), postgresql_where=text("deleted_at IS NULL")),
    Index("ix_documents_identity", "device", "inode"),
    Index("ix_documents_content", "content_hash"),
)

passages = Table(
    "passages", metadata,
    Column("id", Integer, primary_key=True),
    Column("document_id", ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("text_hash", String(64), nullable=False),
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
    Column("id", Integer, primary_key=True),
    Column("text_hash", String(64), nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("row", BigInteger, nullable=False),  # row in the fingerprint's memory matrix file
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("fingerprint", "text_hash"),
)

failures = Table(
    "failures", metadata,
    Column("id", Integer, primary_key=True),
    Column("path", Text, nullable=False, unique=True),
    Column("stage", String(16), nullable=False),
    Column("code", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("size", BigInteger),
    Column("mtime_ns", BigInteger),
    Column("at", DateTime(timezone=True), nullable=False),
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
)

answers = Table(
    "answers", metadata,  # every answer given, standing or ad hoc (question_id null)
    Column("id", Integer, primary_key=True),
    Column("question_id", ForeignKey("questions.id", ondelete="SET NULL")),
    Column("question", Text, nullable=False),  # the text as asked
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("model", Text),  # the model / memory id the answer came from
    Column("engine", String(32), nullable=False),  # clara | text
    Column("status", String(16), nullable=False),  # ok | not-found | nothing-new | failed
    Column("error", Text),
    Column("text", Text),
    Column("change", String(16)),  # first | unchanged | changed | new-sources; null: not ok
    Column("candidates", Integer, nullable=False),  # passages ranked
    Index("ix_answers_question_id_started_at", "question_id", "started_at"),
)

answer_sources = Table(
    "answer_sources", metadata,  # the passages an answer came from, best first
    Column("id", Integer, primary_key=True),
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

# Full-text search over live passages (migration 0005) is dialect-specific and has no table
# here: on SQLite the FTS5 table passages_fts, its shadow tables and triggers; on PostgreSQL
# the generated column passages.search_vector and its GIN index. Queries name them in SQL.
FULL_TEXT = ("passages_fts", "search_vector", "ix_passages_search_vector")


def include_object(obj, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """Alembic autogenerate's filter: the full-text objects are made by hand, leave them be."""
    return not (reflected and compare_to is None and (name or "").startswith(FULL_TEXT))
