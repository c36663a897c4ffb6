"""Digest runs: when each digest was written, the period it covers, and its files.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "digests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generated_at", TS, nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("paths", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_digests"),
    )
