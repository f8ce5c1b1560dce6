"""Presenting results: aligned tables and event lines for a terminal, JSON for scripts.

Pure functions from models to text (or to JSON-ready dicts); the CLI decides where the
text goes. Nothing here reads the broker or decides an exit code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agents.ctl.plan import BuildPlan
from agents.ctl.progress import InstanceProgress, Update
from agents.ctl.seen import AgentStatus
from common.messages import AgentHeartbeat, InstanceEvent, InstanceInfo, Message, PortInfo, VifEvent
from common.rpc import Event


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=False, default=str)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines = [line.rstrip() for line in lines]
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(when: datetime, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{duration(max(0.0, (now - when).total_seconds()))} ago"


def short(uuid: object) -> str:
    return str(uuid)[:8]


# ----------------------------------------------------------------------- build progress


def update_line(update: Update) -> str:
    who = update.name or short(update.instance_uuid)
    what = update.what.replace("_", " ")
    if update.port_id is not None:
        what = f"port {short(update.port_id)} {what.removeprefix('port ')}"
    line = f"{who}: {what}"
    return f"{line} ({update.detail})" if update.detail else line


def update_json(update: Update) -> dict[str, Any]:
    return {
        "event": update.what,
        "instance_uuid": str(update.instance_uuid) if update.instance_uuid else None,
        "name": update.name or None,
        "port_id": str(update.port_id) if update.port_id else None,
        "detail": update.detail or None,
        "ok": update.ok,
    }


def plan_rows(plan: BuildPlan) -> list[list[object]]:
    rows: list[list[object]] = []
    for build in plan.builds:
        inst = build.instance
        addrs = ", ".join(str(p.fixed_ip or "-") for p in inst.ports)
        macs = ", ".join(p.mac for p in inst.ports)
        rows.append([inst.name, inst.uuid, plan.host, inst.flavor, inst.image, addrs, macs])
    return rows


PLAN_HEADERS = ("NAME", "UUID", "HOST", "FLAVOR", "IMAGE", "IP", "MAC")


_RESULT_STATE = {"done": "running", "failed": "error", "pending": "timed_out"}


def instance_result(
    plan: BuildPlan, progress: dict[Any, InstanceProgress] | None
) -> list[dict[str, Any]]:
    out = []
    for build in plan.builds:
        inst = build.instance
        prog = progress.get(inst.uuid) if progress else None
        state = "sent" if prog is None else _RESULT_STATE[prog.state]
        out.append(
            {
                "uuid": str(inst.uuid),
                "name": inst.name,
                "host": plan.host,
                "flavor": inst.flavor,
                "image": inst.image,
                "state": state,
                "reason": prog.reason if prog else None,
                "elapsed_ms": prog.elapsed_ms if prog else None,
                "ports": [p.model_dump(mode="json") for p in inst.ports],
            }
        )
    return out


# ----------------------------------------------------------------------- inventory

INSTANCE_HEADERS = ("NAME", "UUID", "HOST", "STATE", "FLAVOR", "IMAGE", "IP", "UPTIME")


def instance_rows(instances: Sequence[InstanceInfo]) -> list[list[object]]:
    return [
        [
            i.name,
            i.uuid,
            i.host,
            i.state,
            i.flavor or "-",
            i.image or "-",
            ", ".join(str(p.fixed_ip) for p in i.ports if p.fixed_ip) or "-",
            duration(i.uptime_s),
        ]
        for i in instances
    ]


def instance_details(info: InstanceInfo) -> str:
    lines = [
        f"name:       {info.name}",
        f"uuid:       {info.uuid}",
        f"host:       {info.host}",
        f"state:      {info.state}",
        f"flavor:     {info.flavor or '-'}",
        f"image:      {info.image or '-'}",
        f"created:    {info.created_at.isoformat() if info.created_at else '-'}",
        f"uptime:     {duration(info.uptime_s)}",
    ]
    if info.fault:
        lines.append(f"fault:      {info.fault}")
    for p in info.ports:
        lines.append(
            f"port:       {p.id}  mac {p.mac}  ip {p.fixed_ip or '-'}  network {p.network_id}"
            f"  tap{str(p.id)[:11]}"
        )
    return "\n".join(lines)


PORT_HEADERS = ("PORT", "STATE", "DEVICE", "BRIDGE", "MAC", "IP", "INSTANCE", "REASON")


def port_rows(ports: Sequence[PortInfo]) -> list[list[object]]:
    return [
        [
            p.port.id,
            p.state,
            p.device,
            p.bridge,
            p.port.mac,
            p.port.fixed_ip or "-",
            p.port.instance_uuid or "-",
            p.reason or "",
        ]
        for p in ports
    ]


AGENT_HEADERS = ("HOST", "KIND", "STATE", "VERSION", "UPTIME", "LAST SEEN", "COUNTS")


def agent_rows(agents: Sequence[AgentStatus], now: datetime | None = None) -> list[list[object]]:
    return [
        [
            a.host,
            a.kind,
            a.state,
            a.version,
            duration(a.uptime_s) if a.state == "up" else "-",
            ago(a.last_seen, now),
            " ".join(f"{k}={v}" for k, v in sorted(a.counts.items())) or "-",
        ]
        for a in agents
    ]


# ----------------------------------------------------------------------- events


def event_json(ev: Event) -> dict[str, Any]:
    payload = ev.payload.model_dump(mode="json") if isinstance(ev.payload, Message) else ev.payload
    return {
        "event_type": ev.event_type,
        "priority": ev.priority,
        "publisher_id": ev.publisher_id,
        "timestamp": ev.timestamp,
        "request_id": ev.request_id,
        "payload": payload,
    }


def event_line(ev: Event) -> str:
    """`HH:MM:SS.mmm  event.type  host  subject  details`, one line, for a terminal."""
    stamp = ev.timestamp[11:23] if len(ev.timestamp) >= 23 else ev.timestamp
    p = ev.payload
    parts = [stamp, ev.event_type.ljust(26)]
    if isinstance(p, InstanceEvent):
        parts += [
            p.host,
            f"{p.name} ({short(p.instance_uuid)})" if p.name else short(p.instance_uuid),
        ]
        parts += [f"{k}={v}" for k, v in (("state", p.state), ("step", p.step)) if v]
        if p.elapsed_ms is not None:
            parts.append(f"elapsed={p.elapsed_ms:.0f}ms")
        if p.reason:
            parts.append(f"reason={p.reason!r}")
    elif isinstance(p, VifEvent):
        parts += [p.host, f"port {short(p.port_id)}"]
        if p.instance_uuid:
            parts.append(f"instance={short(p.instance_uuid)}")
        parts += [f"{k}={v}" for k, v in (("device", p.device), ("bridge", p.bridge)) if v]
        if p.reason:
            parts.append(f"reason={p.reason!r}")
    elif isinstance(p, AgentHeartbeat):
        parts += [
            p.host,
            f"kind={p.kind}",
            f"version={p.version}",
            f"uptime={duration(p.uptime_s)}",
        ]
        parts += [f"{k}={v}" for k, v in sorted(p.counts.items())]
    elif isinstance(p, Message):
        data = p.model_dump(mode="json")
        host = data.pop("host", "?")
        data.pop("at", None)
        shown = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, {}, []))
        parts += [str(host), shown]
    else:
        parts += [ev.publisher_id, f"(unreadable payload) {str(p)[:120]}"]
    return "  ".join(parts)
