"""agents.images: the images each compute-agent reports it can boot

The API refuses a create whose image no live compute host has (and the scheduler
places only on hosts that have it). NULL: the agent did not say (an older agent); such
a host is taken at its word for any image. Hand-written; one nullable column, so it runs
alike on SQLite (batch mode) and PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("images", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("images")
