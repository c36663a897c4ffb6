"""Alembic environment: kbd runs migrations on a connection it already holds."""

from alembic import context

from kbd.store.schema import include_object, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite",
                  include_object=include_object)
with context.begin_transaction():
    context.run_migrations()
