"""Paths, and the messages that name them, are stored escaped (kbd.store.schema.stored_text):
a file name's bytes that are not UTF-8 as \\xNN and a backslash doubled. No text with such
bytes could be stored before, so doubling the backslashes already stored is all there is.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"

ESCAPED_COLUMNS = (("sources", "path"), ("documents", "path"), ("documents", "folder"),
                   ("documents", "error"), ("failures", "path"), ("failures", "message"))


def upgrade() -> None:
    for table, column in ESCAPED_COLUMNS:
        op.execute(f"UPDATE {table} SET {column} = replace({column}, '\\', '\\\\') "
                   f"WHERE {column} <> replace({column}, '\\', '\\\\')")
