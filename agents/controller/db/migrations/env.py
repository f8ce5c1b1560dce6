"""Alembic environment: runs migrations on the connection the store hands over.

The store (agents.controller.db.store) calls Alembic with `config.attributes
["connection"]` set, so migrations run inside the controller's own engine with its
SQLite pragmas; there is no alembic.ini and no URL in a file.
"""

from __future__ import annotations

from alembic import context

from agents.controller.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
