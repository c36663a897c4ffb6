"""Paths are stored escaped (kbd.store.schema.stored_path): a file name's bytes that are not
UTF-8 as \\xNN and a backslash doubled. No path with such bytes could be stored before, so
doubling the backslashes already stored is all the rewrite there is.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"

PATH_COLUMNS = (("sources", "path"), ("documents", "path"), ("documents", "folder"),
                ("failures", "path"))


def upgrade() -> None:
    for table, column in PATH_COLUMNS:
        op.execute(f"UPDATE {table} SET {column} = replace({column}, '\\', '\\\\') "
                   f"WHERE {column} <> replace({column}, '\\', '\\\\')")
