"""Tables of desired state, as SQLAlchemy 2 declarative models.

Uuids are stored as 36-character strings and addresses as dotted strings, so one
schema serves SQLite and PostgreSQL alike. What must never happen twice is a
constraint here, not a hope in code: one address per (network, address), one MAC per
port, one idempotency key per request. The Alembic migrations beside this module
create exactly these tables (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Uuid = String(36)
# SQLite gives AUTOINCREMENT rowids only to INTEGER PRIMARY KEY columns.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Network(Base):
    """A provider network, copied from the config at start (the config is its truth)."""

    __tablename__ = "networks"

    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    segmentation_id: Mapped[int | None] = mapped_column(Integer)
    physnet: Mapped[str | None] = mapped_column(String(63))
    mtu: Mapped[int] = mapped_column(Integer)
    cidr: Mapped[str | None] = mapped_column(String(18))
    gateway: Mapped[str | None] = mapped_column(String(15))
    allocation_start: Mapped[str | None] = mapped_column(String(15))
    allocation_end: Mapped[str | None] = mapped_column(String(15))


class Instance(Base):
    __tablename__ = "instances"

    uuid: Mapped[str] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    host: Mapped[str] = mapped_column(String(253), index=True)
    flavor: Mapped[str] = mapped_column(String(63))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(63))
    # what the host last reported (building, running, ..., deleted, error)
    state: Mapped[str] = mapped_column(String(16))
    # the operation in flight: create, delete, reboot, or None
    task: Mapped[str | None] = mapped_column(String(16))
    fault: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class Port(Base):
    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("network_id", "fixed_ip", name="uq_ports_network_ip"),)

    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(
        Uuid, ForeignKey("instances.uuid", ondelete="CASCADE"), index=True
    )
    network_id: Mapped[str] = mapped_column(Uuid, ForeignKey("networks.id"))
    host: Mapped[str] = mapped_column(String(253), index=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    fixed_ip: Mapped[str | None] = mapped_column(String(15))
    mtu: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    # pending (cast, not yet heard), wired, failed, unwired
    state: Mapped[str] = mapped_column(String(16))
    device: Mapped[str | None] = mapped_column(String(15))
    bridge: Mapped[str | None] = mapped_column(String(15))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class Operation(Base):
    """One asked-for change to one instance: the record that survives a lost cast."""

    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_open", "state", "updated_at"),)

    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    instance_uuid: Mapped[str] = mapped_column(
        Uuid, ForeignKey("instances.uuid", ondelete="CASCADE"), index=True
    )
    host: Mapped[str] = mapped_column(String(253))
    hard: Mapped[bool] = mapped_column(Boolean, default=False)
    # pending (committed, not cast yet), sent, done, error
    state: Mapped[str] = mapped_column(String(16))
    fault: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    # the last news: a cast sent, or an event of the host about this operation
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Agent(Base):
    """The host table: one row per (host, kind) heard, fed by heartbeats."""

    __tablename__ = "agents"

    host: Mapped[str] = mapped_column(String(253), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    last_seen: Mapped[datetime]
    uptime_s: Mapped[float] = mapped_column(Float)
    vcpus: Mapped[int | None] = mapped_column(Integer)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the images a compute-agent can boot; None: it did not say (an older agent)
    images: Mapped[list[str] | None] = mapped_column(JSON)


class Event(Base):
    """The timeline: every hop of every operation, with where and when it happened."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    # when it happened, by the clock of the process that saw it
    at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    operation_id: Mapped[str | None] = mapped_column(Uuid)
    operation: Mapped[str | None] = mapped_column(String(16))
    instance_uuid: Mapped[str | None] = mapped_column(Uuid, index=True)
    instance: Mapped[str | None] = mapped_column(String(63))
    port_id: Mapped[str | None] = mapped_column(Uuid)
    host: Mapped[str | None] = mapped_column(String(253))
    source: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(64))
    step: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    final: Mapped[bool] = mapped_column(Boolean, default=False)


class IdempotencyKey(Base):
    """A create request's key and its first answer: a retried create builds nothing new."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(128))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class ReleasedPort(Base):
    """A port whose row was deleted (its instance deleted or its build failed), kept for
    the events retention so a restarted l2-agent can be told it is gone for sure
    (`DesiredState.released_ports`). No foreign keys: it outlives what it names."""

    __tablename__ = "released_ports"
    __table_args__ = (Index("ix_released_ports_host_released_at", "host", "released_at"),)

    id: Mapped[str] = mapped_column(Uuid, primary_key=True)
    host: Mapped[str] = mapped_column(String(253))
    network_id: Mapped[str] = mapped_column(Uuid)
    instance_uuid: Mapped[str] = mapped_column(Uuid)
    released_at: Mapped[datetime] = mapped_column(index=True)
