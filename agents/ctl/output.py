"""Presenting results: aligned tables, progress, event and timeline lines, JSON for scripts.

Pure functions from the controller's JSON (dicts of docs/api.md) and the progress
state to text or to JSON-ready dicts; the CLI decides where the text goes. Optional
fields are read with `.get()` (the contract checks only what must be there). Nothing
here talks to the controller or decides an exit code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agents.ctl.progress import InstanceProgress, Update, parse_at, port_where

if TYPE_CHECKING:
    from agents.ctl.client import Outcome

Json = dict[str, Any]


def to_json(value: Any) -> str:
    return json.dumps(value, default=str)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


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


def ago(when: object, now: datetime | None = None) -> str:
    at = parse_at(when)
    if at is None or at.tzinfo is None:
        return "-"
    now = now or datetime.now(UTC)
    return f"{duration(max(0.0, (now - at).total_seconds()))} ago"


def short(uuid: object) -> str:
    return str(uuid)[:8]


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


# ----------------------------------------------------------------------- operations


def update_line(update: Update) -> str:
    """`web-1 port_wired tap1 in brq2`, `web-1 running 12 ms`, `web-1 failed <reason>`."""
    who = update.name or short(update.instance_uuid)
    return f"{who} {update.what} {update.detail}".rstrip()


def update_json(update: Update) -> Json:
    return {
        "event": update.what,
        "instance_uuid": update.instance_uuid,
        "name": update.name or None,
        "port_id": update.port_id,
        "detail": update.detail or None,
        "final": update.final,
        "ok": update.ok,
    }


PLAN_HEADERS = ("NAME", "UUID", "HOST", "FLAVOR", "NETWORK", "IP", "MAC")


def plan_rows(instances: Sequence[Json]) -> list[list[object]]:
    rows: list[list[object]] = []
    for inst in instances:
        ports = inst["ports"]
        rows.append(
            [
                inst["name"],
                inst["uuid"],
                _dash(inst["host"]),
                _dash(inst.get("flavor")),
                ", ".join(_dash(p.get("network") or p.get("network_id")) for p in ports) or "-",
                ", ".join(_dash(p.get("fixed_ip")) for p in ports) or "-",
                ", ".join(_dash(p.get("mac")) for p in ports) or "-",
            ]
        )
    return rows


def _result_state(prog: InstanceProgress | None) -> str:
    if prog is None:
        return "sent"
    if prog.state == "done":
        return prog.end_state or "done"
    return "error" if prog.state == "failed" else "timed_out"


def build_result(accepted: Json, outcome: Outcome | None) -> Json:
    """The summary document of `send build` (the last JSON line with --json)."""
    instances = []
    for inst in accepted["instances"]:
        prog = outcome.tracker.instances.get(inst["uuid"]) if outcome else None
        instances.append(
            {
                "uuid": inst["uuid"],
                "name": inst["name"],
                "host": inst["host"],
                "flavor": inst.get("flavor"),
                "image": inst.get("image"),
                "state": _result_state(prog),
                "reason": prog.reason if prog else None,
                "elapsed_ms": round(prog.elapsed_ms, 1) if prog and prog.elapsed_ms else None,
                "ports": inst["ports"],
            }
        )
    return {
        "request_id": accepted["request_id"],
        "operation": accepted["operation"],
        "ok": outcome.ok if outcome else True,
        "timed_out": outcome.timed_out if outcome else False,
        "elapsed_s": round(outcome.elapsed_s, 3) if outcome else None,
        "instances": instances,
    }


_OP_STATE = {"done": "done", "failed": "error", "pending": "timed_out"}


def instance_result(accepted: Json, outcome: Outcome | None) -> Json:
    """The summary document of `send delete|reboot`."""
    inst = accepted["instances"][0]
    prog = outcome.tracker.instances.get(inst["uuid"]) if outcome else None
    state = (
        {"done": "done", "failed": "error", "pending": "timed_out"}[prog.state] if prog else "sent"
    )
    return {
        "request_id": accepted["request_id"],
        "operation": accepted["operation"],
        "ok": outcome.ok if outcome else True,
        "timed_out": outcome.timed_out if outcome else False,
        "instance_uuid": inst["uuid"],
        "name": inst["name"],
        "host": inst["host"],
        "state": state,
        "reason": prog.reason if prog else None,
    }


def outcome_text(accepted: Json, outcome: Outcome | None, timeout: float) -> str:
    op, request_id = accepted["operation"], accepted["request_id"]
    if outcome is None:
        insts = accepted["instances"]
        hosts = {i["host"] for i in insts}
        if len(insts) == 1:
            hint = f"agentctl show {insts[0]['name']} --timeline"
        elif len(hosts) == 1 and None not in hosts:
            hint = f"agentctl list --host {hosts.pop()}"
        else:
            hint = "agentctl list"
        return f"{op} accepted ({request_id}); follow it with: {hint}"
    t = outcome.tracker
    lines = [
        f"{op}: {len(t.succeeded)} done, {len(t.failed)} failed, {len(t.pending)} unfinished"
        f" in {outcome.elapsed_s:.1f}s"
    ]
    lines += [f"  {i.name} ({i.uuid}): {i.reason}" for i in t.failed]
    if outcome.timed_out:
        lines += [
            f"  {i.name} ({i.uuid}): no final event within {timeout:g}s; it may still finish"
            f" (agentctl show {i.name} --timeline)"
            for i in t.pending
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------- inventory

INSTANCE_HEADERS = ("NAME", "UUID", "HOST", "STATE", "TASK", "FLAVOR", "IMAGE", "IP", "CREATED")


def _ips(inst: Json) -> str:
    return ", ".join(str(p["fixed_ip"]) for p in inst["ports"] if p.get("fixed_ip")) or "-"


def instance_rows(instances: Sequence[Json], now: datetime | None = None) -> list[list[object]]:
    now = now or datetime.now(UTC)  # once, not per row
    return [
        [
            i["name"],
            i["uuid"],
            _dash(i["host"]),
            i["state"],
            _dash(i.get("task")),
            _dash(i.get("flavor")),
            _dash(i.get("image")),
            _ips(i),
            ago(i.get("created_at"), now),
        ]
        for i in instances
    ]


def instance_details(inst: Json, now: datetime | None = None) -> str:
    flavor = _dash(inst.get("flavor"))
    if inst.get("vcpus") is not None and inst.get("memory_mb") is not None:
        flavor += f" ({inst['vcpus']} vcpu, {inst['memory_mb']} MB)"
    lines = [
        f"name:       {inst['name']}",
        f"uuid:       {inst['uuid']}",
        f"host:       {_dash(inst['host'])}",
        f"state:      {inst['state']}",
        f"task:       {_dash(inst.get('task'))}",
        f"flavor:     {flavor}",
        f"image:      {_dash(inst.get('image'))}",
        f"created:    {_dash(inst.get('created_at'))} ({ago(inst.get('created_at'), now)})",
        f"updated:    {_dash(inst.get('updated_at'))}",
        f"request:    {_dash(inst.get('request_id'))}",
    ]
    if inst.get("fault"):
        lines.append(f"fault:      {inst['fault']}")
    for p in inst["ports"]:
        where = " in ".join(str(p[k]) for k in ("device", "bridge") if p.get(k))
        lines.append(
            f"port:       {p['id']}  {_dash(p.get('state'))}  mac {_dash(p.get('mac'))}"
            f"  ip {_dash(p.get('fixed_ip'))}"
            f"  network {_dash(p.get('network') or p.get('network_id'))}"
            + (f"  {where}" if where else "")
        )
    for op in inst.get("operations") or []:
        if not isinstance(op, dict):
            continue
        fault = f"  ({op['fault']})" if op.get("fault") else ""
        lines.append(
            f"operation:  {_dash(op.get('kind'))}  {_dash(op.get('state'))}"
            f"  {_dash(op.get('request_id'))}  attempts {_dash(op.get('attempts'))}"
            f"  {_dash(op.get('created_at'))}{fault}"
        )
    return "\n".join(lines)


PORT_HEADERS = ("PORT", "HOST", "STATE", "NETWORK", "DEVICE", "BRIDGE", "MAC", "IP", "INSTANCE")


def port_rows(ports: Sequence[Json]) -> list[list[object]]:
    return [
        [
            p["id"],
            _dash(p.get("host")),
            _dash(p.get("state")),
            _dash(p.get("network") or p.get("network_id")),
            _dash(p.get("device")),
            _dash(p.get("bridge")),
            _dash(p.get("mac")),
            _dash(p.get("fixed_ip")),
            _dash(p.get("instance_uuid")),
        ]
        for p in ports
    ]


AGENT_HEADERS = ("HOST", "KIND", "STATE", "VERSION", "UPTIME", "LAST SEEN", "USED", "COUNTS")


def _used(h: Json) -> str:
    if h.get("vcpus") is None or h.get("memory_mb") is None:
        return "-"
    return (
        f"{_dash(h.get('vcpus_used'))}/{h['vcpus']} vcpu"
        f" {_dash(h.get('memory_mb_used'))}/{h['memory_mb']} MB"
    )


def agent_rows(hosts: Sequence[Json], now: datetime | None = None) -> list[list[object]]:
    rows: list[list[object]] = []
    for h in hosts:
        counts = h.get("counts")
        if not isinstance(counts, dict):
            counts = {}
        uptime = h.get("uptime_s")
        rows.append(
            [
                h["host"],
                h["kind"],
                h["state"],
                _dash(h.get("version")),
                duration(uptime) if h["state"] == "up" and isinstance(uptime, int | float) else "-",
                ago(h.get("last_seen"), now),
                _used(h),
                " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-",
            ]
        )
    return rows


# ----------------------------------------------------------------------- events


def _subject(ev: Json) -> str:
    uuid = ev.get("instance_uuid")
    if ev.get("instance"):
        return f"{ev['instance']} ({short(uuid)})" if uuid else str(ev["instance"])
    if uuid:
        return short(uuid)
    return f"port {short(ev['port_id'])}" if ev.get("port_id") else "-"


def event_line(ev: Json) -> str:
    """`HH:MM:SS.mmm  event  source  host  subject  details`, one line, for `watch`."""
    at = str(ev["at"])
    parts = [
        at[11:23] if len(at) >= 23 else at,
        str(ev["event"]).ljust(26),
        _dash(ev.get("source")).ljust(13),
        _dash(ev.get("host")),
        _subject(ev),
    ]
    if ev.get("port_id") and ev.get("instance_uuid"):
        parts.append(f"port={short(ev['port_id'])}")
    parts += [f"{k}={ev[k]}" for k in ("device", "bridge", "step", "state") if ev.get(k)]
    if ev.get("reason"):
        parts.append(f"reason={ev['reason']!r}")
    if ev.get("final"):
        parts.append("final")
    return "  ".join(parts)


def event_text(ev: Json) -> str:
    """The event and what it says: `port.vif_plugged tap1 in brq2`, `operation.done running`."""
    name = str(ev["event"])
    bits = [name]
    if name.startswith("port."):
        bits.append(port_where(ev))  # it shows the step too
    elif ev.get("step"):
        bits.append(str(ev["step"]))
    if name == "casts.sent" and ev.get("host"):
        bits.append(f"to {ev['host']}")
    if ev.get("state") and (ev.get("final") or name.endswith(".end")):
        bits.append(str(ev["state"]))
    if ev.get("reason"):
        bits.append(f"({ev['reason']})")
    return " ".join(b for b in bits if b)


# Events from these sources happen in the controller, whatever host they concern.
_CONTROLLER_SOURCES = ("api", "controller")


def timeline_lines(events: Sequence[Json]) -> list[str]:
    """Events grouped by operation, each `+ms  source  host  event ...` from its first event.

    An operation is its `operation_id` (or, lacking one, request and kind); groups come in
    the order they started, events in the order given.
    """
    groups: dict[tuple[str, ...], list[Json]] = {}
    for ev in events:
        key = (
            (str(ev["operation_id"]),)
            if ev.get("operation_id")
            else (str(ev.get("request_id")), str(ev.get("operation")))
        )
        groups.setdefault(key, []).append(ev)
    rows: list[tuple[str, list[list[str]]]] = []
    for evs in groups.values():
        first = evs[0]
        start = parse_at(first["at"])
        header = "  ".join(
            x
            for x in (
                _dash(first.get("operation")),
                _dash(first.get("request_id")),
                f"operation {short(first['operation_id'])}" if first.get("operation_id") else "",
            )
            if x
        )
        cells = []
        for ev in evs:
            at = parse_at(ev["at"])
            offset = f"+{(at - start).total_seconds() * 1000:.1f} ms" if at and start else "? ms"
            source = _dash(ev.get("source"))
            where = "controller" if source in _CONTROLLER_SOURCES else _dash(ev.get("host"))
            cells.append([offset, source, where, event_text(ev)])
        rows.append((header, cells))
    every = [c for _, cells in rows for c in cells]
    if not every:
        return []
    widths = [max(len(c[i]) for c in every) for i in range(3)]
    lines: list[str] = []
    for header, cells in rows:
        lines.append(header)
        for offset, source, where, text in cells:
            lines.append(
                f"  {offset.rjust(widths[0])}  {source.ljust(widths[1])}"
                f"  {where.ljust(widths[2])}  {text}"
            )
    return lines
