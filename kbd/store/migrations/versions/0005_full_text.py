"""Full-text search over live passages: the text engine ranks them with BM25.

SQLite: an FTS5 table over passages.text with external content (the text is not stored
twice) that holds live passages only, so retired ones are never found and do not skew BM25's
document statistics. Triggers keep it in step with every write to passages, whoever makes it
(ingest, retire, revive, a cascade from documents). Tokenizer: unicode61 splits on anything
but letters and digits, so a log's `blk_-160899` or `10.251.91.84` is a run of tokens that a
quoted phrase finds; porter stems English words, so "connections" finds "connection".

PostgreSQL: a stored generated tsvector (the english configuration: stemmed, stop words
dropped) with a GIN index; ranking is ts_rank_cd, live passages are filtered in the query.

Neither has a SQLAlchemy table; kbd.store.schema.include_object keeps autogenerate off them.
A later SQLite batch migration of `passages` recreates the table and drops its triggers: it
must create them again.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"

SQLITE = [
    "CREATE VIRTUAL TABLE passages_fts USING fts5(text, content='passages', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER passages_fts_insert AFTER INSERT ON passages WHEN new.live BEGIN "
    "INSERT INTO passages_fts (rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER passages_fts_delete AFTER DELETE ON passages WHEN old.live BEGIN "
    "INSERT INTO passages_fts (passages_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "END",
    # one trigger, so that the old entry always leaves before the new one comes in
    "CREATE TRIGGER passages_fts_update AFTER UPDATE OF live, text ON passages BEGIN "
    "INSERT INTO passages_fts (passages_fts, rowid, text) "
    "SELECT 'delete', old.id, old.text WHERE old.live; "
    "INSERT INTO passages_fts (rowid, text) SELECT new.id, new.text WHERE new.live; END",
    "INSERT INTO passages_fts (rowid, text) SELECT id, text FROM passages WHERE live",
]

POSTGRESQL = [
    "ALTER TABLE passages ADD COLUMN search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX ix_passages_search_vector ON passages USING gin (search_vector)",
]


def upgrade() -> None:
    for statement in SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRESQL:
        op.execute(statement)
