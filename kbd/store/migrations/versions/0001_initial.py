"""Initial schema: documents, passages, memories, failures.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("folder", sa.Text),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("device", sa.BigInteger),
        sa.Column("inode", sa.BigInteger),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64)),
        sa.Column("head_len", sa.Integer),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("offset", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokenizer", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("rotations", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("changed_at", TS, nullable=False),
        sa.Column("deleted_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
    )
    op.create_index("ix_documents_live_path", "documents", ["path"], unique=True,
                    sqlite_where=sa.text("deleted_at IS NULL"),
                    postgresql_where=sa.text("deleted_at IS NULL"))
    op.create_index("ix_documents_identity", "documents", ["device", "inode"])
    op.create_index("ix_documents_content", "documents", ["content_hash"])

    op.create_table(
        "passages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("document_id", sa.Integer, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("first_line", sa.Integer),
        sa.Column("last_line", sa.Integer),
        sa.Column("page", sa.Integer),
        sa.Column("byte_start", sa.BigInteger),
        sa.Column("byte_end", sa.BigInteger),
        sa.Column("heading", sa.Text),
        sa.Column("split", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("tokenizer", sa.String(32), nullable=False),
        sa.Column("live", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retired_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_passages"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE",
                                name="fk_passages_document_id_documents"),
    )
    op.create_index("ix_passages_document_live", "passages", ["document_id", "live", "ordinal"])
    op.create_index("ix_passages_text_hash", "passages", ["text_hash"])

    op.create_table(
        "memories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("row", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memories"),
        sa.UniqueConstraint("fingerprint", "text_hash", name="uq_memories_fingerprint_text_hash"),
    )
    op.create_table(
        "failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("mtime_ns", sa.BigInteger),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_failures"),
        sa.UniqueConstraint("path", name="uq_failures_path"),
    )
