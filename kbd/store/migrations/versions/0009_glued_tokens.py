"""Glued tokens in full-text search: `7163Calories` is found by "calories".

Both tokenizers keep `7163Calories` or `isSimPinSecure` as one token. A new column,
passages.search_extra, holds the parts of a passage's glued tokens (queries.search_extra),
and the full-text index covers it beside the text. Existing passages get theirs here, and the
index is rebuilt over both columns.

SQLite: passages_fts gets a second column, search_extra, read from the column of the same
name; its triggers are made again for two columns. PostgreSQL: the generated search_vector is
made again over text and search_extra.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from kbd.store.queries import search_extra

revision = "0009"
down_revision = "0008"

FILL_ROWS = 1000  # passages read and updated at a time

# The old index leaves before search_extra is filled (its triggers would re-index every row)
DROP = {
    "sqlite": ["DROP TRIGGER passages_fts_insert", "DROP TRIGGER passages_fts_delete",
               "DROP TRIGGER passages_fts_update", "DROP TABLE passages_fts"],
    "postgresql": ["DROP INDEX ix_passages_search_vector",
                   "ALTER TABLE passages DROP COLUMN search_vector"],
}

SQLITE = [
    "CREATE VIRTUAL TABLE passages_fts USING fts5(text, search_extra, content='passages', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER passages_fts_insert AFTER INSERT ON passages WHEN new.live BEGIN "
    "INSERT INTO passages_fts (rowid, text, search_extra) "
    "VALUES (new.id, new.text, new.search_extra); END",
    "CREATE TRIGGER passages_fts_delete AFTER DELETE ON passages WHEN old.live BEGIN "
    "INSERT INTO passages_fts (passages_fts, rowid, text, search_extra) "
    "VALUES ('delete', old.id, old.text, old.search_extra); END",
    # one trigger, so that the old entry always leaves before the new one comes in
    "CREATE TRIGGER passages_fts_update AFTER UPDATE OF live, text, search_extra ON passages "
    "BEGIN INSERT INTO passages_fts (passages_fts, rowid, text, search_extra) "
    "SELECT 'delete', old.id, old.text, old.search_extra WHERE old.live; "
    "INSERT INTO passages_fts (rowid, text, search_extra) "
    "SELECT new.id, new.text, new.search_extra WHERE new.live; END",
    "INSERT INTO passages_fts (rowid, text, search_extra) "
    "SELECT id, text, search_extra FROM passages WHERE live",
]

POSTGRESQL = [
    "ALTER TABLE passages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
    "(to_tsvector('english', text || ' ' || coalesce(search_extra, ''))) STORED",
    "CREATE INDEX ix_passages_search_vector ON passages USING gin (search_vector)",
]


def fill_search_extra(conn: sa.Connection) -> None:
    """Every passage's search_extra, a batch of rows at a time."""
    last = 0
    while True:
        rows = conn.execute(sa.text("SELECT id, text FROM passages WHERE id > :last "
                                    "ORDER BY id LIMIT :n"), {"last": last, "n": FILL_ROWS}).all()
        if not rows:
            return
        conn.execute(sa.text("UPDATE passages SET search_extra = :extra WHERE id = :id"),
                     [{"id": r.id, "extra": search_extra(r.text)} for r in rows])
        last = rows[-1].id


def upgrade() -> None:
    conn = op.get_bind()
    for statement in DROP[conn.dialect.name]:
        op.execute(statement)
    op.add_column("passages", sa.Column("search_extra", sa.Text))
    fill_search_extra(conn)
    for statement in SQLITE if conn.dialect.name == "sqlite" else POSTGRESQL:
        op.execute(statement)
