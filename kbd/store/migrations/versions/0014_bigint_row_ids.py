"""Row ids that grow with the logs become 64-bit on PostgreSQL: at 100 hosts x 1 GB of logs a
day a fleet stores 205 M passages a day, and `integer` ids (2^31) run out within 11 days
(bench/results/fleet.json). Widened: the ids of documents, passages, memories, answers,
answer sources, events and asks, every column that refers to one of them (passages'
document, answer sources' answer and passage, answers' coverage, leases' passage, events'
and firings' answer, ask chunks' ask), and the sequences that number them (a SERIAL's
sequence is `integer` too, and would stop at 2^31 whatever its column). Each table is
rewritten once, under an exclusive lock: on a large store this takes a while, so the owner
upgrades before the nodes start (docs/fleet.md). Question, digest and failure ids stay
`integer`: they do not grow with the logs.

SQLite's INTEGER is 64 bits already, and its INTEGER PRIMARY KEY is the rowid: nothing to do.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"

# a table's columns change in one ALTER TABLE, so each table is rewritten once
WIDENED = {
    "documents": ["id"],
    "passages": ["id", "document_id"],
    "memories": ["id"],
    "leases": ["passage_id"],
    "answers": ["id", "covered_through"],
    "answer_sources": ["id", "answer_id", "passage_id"],
    "events": ["id", "answer_id"],
    "firings": ["answer_id"],
    "asks": ["id"],
    "ask_chunks": ["ask_id"],
}


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for table, columns in WIDENED.items():
        op.execute(f"ALTER TABLE {table} "
                   + ", ".join(f"ALTER COLUMN {column} TYPE bigint" for column in columns))
        if "id" in columns:
            sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"),
                                    {"t": table}).scalar_one()
            op.execute(f"ALTER SEQUENCE {sequence} AS bigint")
