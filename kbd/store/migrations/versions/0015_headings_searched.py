"""A report's heading in full-text search: "How long did run R1 take in the capacity test?"
finds the table under "Capacity test CT-77 > Results", not only the passage of the title.

queries.search_extra now adds a passage's heading (its report's title and section) to what
the index holds beside the text. Existing passages with a heading get it here; the index
follows the column (SQLite's triggers, PostgreSQL's generated search_vector).

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

from kbd.store.queries import search_extra

revision = "0015"
down_revision = "0014"

FILL_ROWS = 1000  # passages read and updated at a time


def upgrade() -> None:
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(sa.text(
            "SELECT id, text, heading FROM passages WHERE id > :last AND heading IS NOT NULL "
            "AND heading != '' ORDER BY id LIMIT :n"), {"last": last, "n": FILL_ROWS}).all()
        if not rows:
            return
        conn.execute(sa.text("UPDATE passages SET search_extra = :extra WHERE id = :id"),
                     [{"id": r.id, "extra": search_extra(r.text, r.heading)} for r in rows])
        last = rows[-1].id
