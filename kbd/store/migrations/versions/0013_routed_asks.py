"""Routed asks: a question asked on a node without a model (an ingest node) is a row in
`asks`, claimed by one model node, and its answer comes back as rows of `ask_chunks` (streamed
text, then the whole answer or an error), read by the asking node (docs/fleet.md). Both
tables hold only asks in flight: the asker deletes its ask when the answer is relayed.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"

TS = sa.DateTime(timezone=True)
NODE = sa.String(63)


def upgrade() -> None:
    op.create_table(
        "asks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("asker", NODE, nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("claimed_by", NODE),
        sa.Column("claimer_started_at", TS),
        sa.Column("claimed_at", TS),
    )
    op.create_table(
        "ask_chunks",
        sa.Column("ask_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(["ask_id"], ["asks.id"], ondelete="CASCADE",
                                name="fk_ask_chunks_ask_id_asks"),
        sa.PrimaryKeyConstraint("ask_id", "seq", name="pk_ask_chunks"),
    )
