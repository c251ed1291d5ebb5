"""Alembic environment for instil's store. Not run by users directly: ``instil.store.db.migrate`` calls
``alembic.command.upgrade`` with a Config built in code and hands over an open connection, already inside a write
transaction that holds the migration lock (so two processes opening a fresh store never both migrate it).
"""

from __future__ import annotations

from alembic import context

from instil.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "instil's migrations run through instil.store.Store.open(), which passes a connection; "
        "the alembic command line is not supported for this package"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode (copy and move) lets later migrations change tables there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
