"""Notifications: a standing question says when its runs are sent (notify) and where
(channels), and an outbox table holds every event to send, written in the same transaction
as the answer or digest that makes it, so a crash can neither lose one nor send one that
was never recorded.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("questions", sa.Column("notify", sa.String(8), nullable=False,
                                         server_default="never"))
    op.add_column("questions", sa.Column("channels", sa.Text, nullable=False,
                                         server_default="[]"))
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("question_id", sa.Integer),
        sa.Column("answer_id", sa.Integer),
        sa.Column("digest_id", sa.Integer),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("receipt", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("key", name="uq_events_key"),
    )
    op.create_index("ix_events_status_channel", "events", ["status", "channel", "id"])
