"""Rows turned into the JSON shapes of the API (docs/api.md) and into wire models.

Pure apart from the reads it needs to fill an instance's ports; it never writes.
SQLite hands datetimes back without a zone; everything here is UTC, so `utc()` puts
the zone back before anything leaves.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from agents.controller.db.models import Agent, Event, Instance, Network, Operation, Port
from common.messages import Port as WirePort

if TYPE_CHECKING:
    from agents.controller.scheduler import HostLoad


# The tables' columns, for reads that want rows rather than ORM objects (much cheaper
# per row); a row has the same attribute names.
INSTANCE_COLUMNS = tuple(Instance.__table__.c)
PORT_COLUMNS = tuple(Port.__table__.c)


def utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite's: UTC without the zone
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


# A port's revision on the wire (Port.revision): the controller creates a port once and
# deletes it once, so two numbers are enough; a port update would need a column.
PORT_CREATED_REVISION = 1
PORT_DELETED_REVISION = 2


def wire_port(p: Port) -> WirePort:
    return WirePort(
        revision=PORT_CREATED_REVISION,
        id=uuidlib.UUID(p.id),
        network_id=uuidlib.UUID(p.network_id),
        mac=p.mac,
        fixed_ip=IPv4Address(p.fixed_ip) if p.fixed_ip else None,
        mtu=p.mtu,
        instance_uuid=uuidlib.UUID(p.instance_uuid),
    )


def _network_names(s: Session) -> dict[str, str]:
    return {row.id: row.name for row in s.execute(select(Network.id, Network.name))}


def port(p: Port | Row[Any], networks: dict[str, str], with_owner: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id,
        "network_id": p.network_id,
        "network": networks.get(p.network_id),
        "mac": p.mac,
        "fixed_ip": p.fixed_ip,
        "mtu": p.mtu,
        "state": p.state,
        "device": p.device,
        "bridge": p.bridge,
    }
    if p.reason:
        out["reason"] = p.reason
    if with_owner:
        out["instance_uuid"] = p.instance_uuid
        out["host"] = p.host
    return out


def ports(s: Session, rows: Sequence[Port], with_owner: bool = False) -> list[dict[str, Any]]:
    networks = _network_names(s)
    return [port(p, networks, with_owner) for p in rows]


def _instance(inst: Instance | Row[Any], port_views: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uuid": inst.uuid,
        "name": inst.name,
        "host": inst.host,
        "flavor": inst.flavor,
        "vcpus": inst.vcpus,
        "memory_mb": inst.memory_mb,
        "image": inst.image,
        "state": inst.state,
        "task": inst.task,
        "fault": inst.fault,
        "request_id": inst.request_id,
        "created_at": _iso(inst.created_at),
        "updated_at": _iso(inst.updated_at),
        "deleted_at": _iso(inst.deleted_at),
        "ports": port_views,
    }


def instance(s: Session, inst: Instance) -> dict[str, Any]:
    return instances(s, [inst])[0]


def instances(s: Session, rows: Sequence[Instance | Row[Any]]) -> list[dict[str, Any]]:
    """Several instances with their ports, in two queries whatever their number.

    `rows` may be ORM objects or plain rows of the instances table (`INSTANCE_COLUMNS`);
    ports are read as plain rows: a list of a thousand instances builds no ORM object.
    """
    if not rows:
        return []
    networks = _network_names(s)
    by_instance: dict[str, list[dict[str, Any]]] = {}
    uuids = [i.uuid for i in rows]
    for chunk_start in range(0, len(uuids), 500):
        chunk = uuids[chunk_start : chunk_start + 500]
        for p in s.execute(
            select(*PORT_COLUMNS).where(Port.instance_uuid.in_(chunk)).order_by(Port.position)
        ):
            by_instance.setdefault(p.instance_uuid, []).append(port(p, networks))
    return [_instance(i, by_instance.get(i.uuid, [])) for i in rows]


def operation(op: Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "request_id": op.request_id,
        "kind": op.kind,
        "instance_uuid": op.instance_uuid,
        "host": op.host,
        "hard": op.hard,
        "state": op.state,
        "fault": op.fault,
        "attempts": op.attempts,
        "created_at": _iso(op.created_at),
        "updated_at": _iso(op.updated_at),
        "finished_at": _iso(op.finished_at),
    }


def event(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": _iso(e.at),
        "request_id": e.request_id,
        "operation_id": e.operation_id,
        "operation": e.operation,
        "instance_uuid": e.instance_uuid,
        "instance": e.instance,
        "port_id": e.port_id,
        "host": e.host,
        "source": e.source,
        "event": e.event,
        "step": e.step,
        "state": e.state,
        "reason": e.reason,
        "final": e.final,
    }


def agent(a: Agent, alive: bool, load: HostLoad | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "host": a.host,
        "kind": a.kind,
        "state": "up" if alive else "down",
        "version": a.version,
        "started_at": _iso(a.started_at),
        "last_seen": _iso(a.last_seen),
        "uptime_s": a.uptime_s,
        "counts": a.counts or {},
    }
    if a.kind == "compute":
        out["vcpus"] = a.vcpus
        out["memory_mb"] = a.memory_mb
        out["vcpus_used"] = load.vcpus_used if load else 0
        out["memory_mb_used"] = load.memory_mb_used if load else 0
    return out
