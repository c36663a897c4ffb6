"""Standing questions, the answers given (standing or ad hoc) and the passages they cite.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "questions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("schedule_kind", sa.String(16), nullable=False),
        sa.Column("cron", sa.Text),
        sa.Column("interval_s", sa.Integer),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("scope", sa.Text, nullable=False, server_default="[]"),
        sa.Column("kinds", sa.Text, nullable=False, server_default="[]"),
        sa.Column("since_s", sa.Integer),
        sa.Column("since_last_run", sa.Boolean, nullable=False,
                  server_default=sa.text("false")),
        sa.Column("top_k", sa.Integer, nullable=False, server_default="5"),
        sa.Column("max_new_tokens", sa.Integer, nullable=False, server_default="128"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("last_run_at", TS),
        sa.Column("next_run_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_questions"),
    )

    op.create_table(
        "answers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("question_id", sa.Integer),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("text", sa.Text),
        sa.Column("change", sa.String(16)),
        sa.Column("candidates", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_answers"),
        sa.ForeignKeyConstraint(["question_id"], ["questions.id"], ondelete="SET NULL",
                                name="fk_answers_question_id_questions"),
    )
    op.create_index("ix_answers_question_id_started_at", "answers",
                    ["question_id", "started_at"])

    op.create_table(
        "answer_sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("answer_id", sa.Integer, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("passage_id", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_answer_sources"),
        sa.ForeignKeyConstraint(["answer_id"], ["answers.id"], ondelete="CASCADE",
                                name="fk_answer_sources_answer_id_answers"),
        sa.ForeignKeyConstraint(["passage_id"], ["passages.id"],
                                name="fk_answer_sources_passage_id_passages"),
        sa.UniqueConstraint("answer_id", "rank", name="uq_answer_sources_answer_id_rank"),
    )
    op.create_index("ix_answer_sources_passage_id", "answer_sources", ["passage_id"])
