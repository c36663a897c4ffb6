"""A fleet of daemons on one PostgreSQL store: a document's identity (and a failed file's)
includes the node whose disk holds it, `nodes` holds each daemon's heartbeat, and `firings`
each scheduled firing some node claimed, so it runs once in the fleet. A model node's memory
id names the node (its matrix file is on its own disk), so the id column is wider. Existing
rows keep the empty node: a single-host store reads as before.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

TS = sa.DateTime(timezone=True)
NODE = sa.String(63)


def upgrade() -> None:
    op.add_column("documents", sa.Column("node", NODE, nullable=False, server_default=""))
    op.drop_index("ix_documents_live_path", table_name="documents")
    op.create_index("ix_documents_live_node_path", "documents", ["node", "path"], unique=True,
                    sqlite_where=sa.text("deleted_at IS NULL"),
                    postgresql_where=sa.text("deleted_at IS NULL"))
    with op.batch_alter_table("failures") as batch:  # SQLite changes a constraint by a copy
        batch.add_column(sa.Column("node", NODE, nullable=False, server_default=""))
        batch.drop_constraint("uq_failures_path", type_="unique")
        batch.create_unique_constraint("uq_failures_node_path", ["node", "path"])
    with op.batch_alter_table("memories") as batch:
        batch.alter_column("fingerprint", type_=sa.String(96), existing_type=sa.String(32),
                           existing_nullable=False)
    op.create_table(
        "nodes",
        sa.Column("name", NODE, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("schema_revision", sa.String(32), nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("heartbeat_s", sa.Float, nullable=False),
        sa.Column("stopped_at", TS),
        sa.Column("backlog", sa.BigInteger),
        sa.Column("documents", sa.BigInteger),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
    )
    op.create_table(
        "firings",
        sa.Column("job", sa.String(64), nullable=False),
        sa.Column("fire_time", TS, nullable=False),
        sa.Column("question_id", sa.Integer),
        sa.Column("node", NODE, nullable=False),
        sa.Column("node_started_at", TS, nullable=False),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("done_at", TS),
        sa.Column("answer_id", sa.Integer),
        sa.Column("taken_over", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("job", "fire_time", name="pk_firings"),
    )
