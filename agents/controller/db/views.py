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

from sqlalchemy import ColumnElement, Row, select
from sqlalchemy.orm import Session

from agents.controller.db.models import Agent, Event, Instance, Network, Operation, Port
from common.messages import Port as WirePort

if TYPE_CHECKING:
    from agents.controller.scheduler import HostLoad


# The ports table's columns, for reads that want rows rather than ORM objects (much
# cheaper per row); a row has the same attribute names.
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

    `rows` may be ORM objects or plain rows of the instances table; ports are read as
    plain rows. The listing of GET /v1/instances has its faster `instance_list`.
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


# What a listing reads, in this order: only the columns the API shows, taken as tuples
# (a row's attribute access costs more than the query at a thousand rows).
_LIST_INSTANCE_COLUMNS = (
    Instance.uuid,
    Instance.name,
    Instance.host,
    Instance.flavor,
    Instance.vcpus,
    Instance.memory_mb,
    Instance.image,
    Instance.state,
    Instance.task,
    Instance.fault,
    Instance.request_id,
    Instance.created_at,
    Instance.updated_at,
    Instance.deleted_at,
)
_LIST_ORDER = (Instance.host, Instance.name, Instance.uuid)
_LIST_PORT_COLUMNS = (
    Port.instance_uuid,
    Port.id,
    Port.network_id,
    Port.mac,
    Port.fixed_ip,
    Port.mtu,
    Port.state,
    Port.device,
    Port.bridge,
    Port.reason,
)


def instance_list(s: Session, where: Sequence[ColumnElement[bool]]) -> list[dict[str, Any]]:
    """The instances matching `where`, sorted by host, name, uuid (docs/api.md), each as
    `_instance` shapes it.

    Two queries whatever their number (the ports' picks the instances again by the same
    conditions, so no list of uuids is sent), and plain tuples: a listing of a thousand
    instances on SQLite is about 5 ms of SQL and as much again building the dicts.
    """
    networks = _network_names(s)
    by_instance: dict[str, list[dict[str, Any]]] = {}
    wanted = select(Instance.uuid).where(*where)
    for owner, pid, net, mac, ip, mtu, state, device, bridge, reason in s.execute(
        select(*_LIST_PORT_COLUMNS)
        .where(Port.instance_uuid.in_(wanted))
        .order_by(Port.instance_uuid, Port.position)
    ).tuples():
        view = {
            "id": pid,
            "network_id": net,
            "network": networks.get(net),
            "mac": mac,
            "fixed_ip": ip,
            "mtu": mtu,
            "state": state,
            "device": device,
            "bridge": bridge,
        }
        if reason:
            view["reason"] = reason
        by_instance.setdefault(owner, []).append(view)
    out = []
    for row in s.execute(
        select(*_LIST_INSTANCE_COLUMNS).where(*where).order_by(*_LIST_ORDER)
    ).tuples():
        uuid, name, host, flavor, vcpus, memory_mb, image, state, task, fault, rid, c, u, d = row
        out.append(
            {
                "uuid": uuid,
                "name": name,
                "host": host,
                "flavor": flavor,
                "vcpus": vcpus,
                "memory_mb": memory_mb,
                "image": image,
                "state": state,
                "task": task,
                "fault": fault,
                "request_id": rid,
                "created_at": _iso(c),
                "updated_at": _iso(u),
                "deleted_at": _iso(d),
                "ports": by_instance.get(uuid, []),
            }
        )
    return out


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
        out["images"] = a.images
    return out
