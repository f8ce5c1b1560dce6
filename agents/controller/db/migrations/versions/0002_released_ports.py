"""released ports: the ports deleted from `ports`, kept for the events retention

An agent's resync (`desired_state`) tells a restarted l2-agent which ports of its host
are gone for sure; the ports table no longer has them. Hand-written; only a new table
and its indexes, so it runs alike on SQLite (batch mode) and PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "released_ports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.Column("instance_uuid", sa.String(length=36), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("released_ports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_released_ports_host_released_at", ["host", "released_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_released_ports_released_at"), ["released_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("released_ports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_released_ports_released_at"))
        batch_op.drop_index("ix_released_ports_host_released_at")
    op.drop_table("released_ports")
