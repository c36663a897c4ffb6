"""Each answer records the snapshot it was given: covered_through, the highest passage id up
to which every live passage was a candidate. A `--since-last-run` question reads passages
after its previous run's covered_through, so a run that waits in the model's queue still
covers every line stored before it is answered, and no line falls between two runs.

Answers recorded before this revision get the highest passage id stored when they started,
as the window that started at last_run_at used to approximate.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column("answers", sa.Column("covered_through", sa.Integer))
    op.execute("UPDATE answers SET covered_through = (SELECT max(p.id) FROM passages p "
               "WHERE p.created_at <= answers.started_at) "
               "WHERE status IN ('ok', 'nothing-new')")
