"""A fleet's memory vectors live in the store, and model nodes share the compression backlog
under leases. `memories.vector` holds a passage's memory (bf16 bytes) when it is shared: its
`row` is then the fleet-wide row number, dense and unique per memory id, from which each
model node keeps its own copy of the matrix in step. `leases` queues the backlog's texts for
the model nodes, and holds the ones a node is compressing now until `expires_at` (the
database's clock). A single-host
store keeps its vectors in its matrix file: `vector` stays null there.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

TS = sa.DateTime(timezone=True)
SHARED = sa.text("vector IS NOT NULL")


def upgrade() -> None:
    op.add_column("memories", sa.Column("vector", sa.LargeBinary))
    op.create_index("ix_memories_fingerprint_row", "memories", ["fingerprint", "row"],
                    unique=True, sqlite_where=SHARED, postgresql_where=SHARED)
    op.create_table(
        "leases",
        sa.Column("fingerprint", sa.String(96), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("passage_id", sa.Integer, nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("taken_over", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("fingerprint", "text_hash", name="pk_leases"),
    )
