"""Question ids are never handed out twice, so an old answer's question id never points at
a newer question. PostgreSQL's sequence already never reuses one. SQLite reuses the highest
rowid after a delete unless the table is AUTOINCREMENT, which only CREATE TABLE can say: the
table is rebuilt with it, keeping every row and id (ids of questions deleted before this
revision are unknown, so new ids start after the highest one kept).

Foreign keys stay on in the migration's transaction (the pragma cannot change inside one),
and dropping the old table sets answers.question_id null (ON DELETE SET NULL): the links are
kept aside first and put back on the rebuilt table.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"

TS = sa.DateTime(timezone=True)
COLUMNS = ("id, text, schedule_kind, cron, interval_s, timezone, scope, kinds, since_s, "
           "since_last_run, top_k, max_new_tokens, enabled, created_at, updated_at, "
           "last_run_at, next_run_at")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("CREATE TEMP TABLE kbd_answer_links AS "
               "SELECT id, question_id FROM answers WHERE question_id IS NOT NULL")
    op.create_table(
        "questions_rebuilt",
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
        sqlite_autoincrement=True,
    )
    op.execute(f"INSERT INTO questions_rebuilt ({COLUMNS}) SELECT {COLUMNS} FROM questions")
    op.drop_table("questions")
    op.rename_table("questions_rebuilt", "questions")
    op.execute("UPDATE answers SET question_id = (SELECT k.question_id FROM kbd_answer_links k "
               "WHERE k.id = answers.id) WHERE id IN (SELECT id FROM kbd_answer_links)")
    op.execute("DROP TABLE kbd_answer_links")
