"""What the hosts report, applied to the database: observed state, faults, the timeline.

Each agent notification is applied in its own transaction, and the broker message is
acknowledged only after that commits (the bus does that), so an event is never lost
between the broker and the database; applying one twice changes nothing more than
applying it once (states are set, not toggled; a finished operation stays finished).

Returns the casts the report makes necessary: when a guest is gone (delete finished,
or a build failed), its ports are unwired and their addresses released here, after
the guest, never before it.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from agents.controller.db.models import Agent, Instance, Operation, Port
from agents.controller.db.store import Cast, Store, utcnow
from common.messages import AgentHeartbeat, InstanceEvent, Message, MessageRejected, VifEvent


@dataclass
class Applied:
    casts: list[Cast] = field(default_factory=list)
    timeline: bool = False  # new timeline events were written


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, event_type: str, payload: Message) -> Applied:
        if isinstance(payload, AgentHeartbeat):
            self.store.db.retrying(lambda s: self._heartbeat(s, payload))
            return Applied()
        return self.store.db.retrying(lambda s: self._apply(s, event_type, payload))

    def _apply(self, s: Session, event_type: str, payload: Message) -> Applied:
        if isinstance(payload, VifEvent):
            return self._vif(s, event_type, payload)
        if isinstance(payload, InstanceEvent):
            return self._instance(s, event_type, payload)
        if isinstance(payload, MessageRejected):
            self.store.add_event(
                s,
                payload.at,
                None,
                None,
                source=f"{payload.kind}-agent" if payload.kind == "l2" else "compute-agent",
                event=event_type,
                host=payload.host,
                step=payload.method,
                reason=payload.problem,
            )
            return Applied(timeline=True)
        return Applied()

    # ------------------------------------------------------------------ agents

    def _heartbeat(self, s: Session, hb: AgentHeartbeat) -> None:
        row = s.get(Agent, (hb.host, hb.kind)) or Agent(host=hb.host, kind=hb.kind)
        row.version = hb.version
        row.started_at = hb.started_at
        row.last_seen = utcnow()
        row.uptime_s = hb.uptime_s
        row.counts = dict(hb.counts)
        if hb.kind == "compute":
            row.vcpus = hb.vcpus
            row.memory_mb = hb.memory_mb
        s.add(row)

    # ------------------------------------------------------------------ ports

    def _vif(self, s: Session, event_type: str, ev: VifEvent) -> Applied:
        port = s.get(Port, str(ev.port_id))
        inst_uuid = port.instance_uuid if port else _str(ev.instance_uuid)
        inst = s.get(Instance, inst_uuid) if inst_uuid else None
        op = self._operation(s, inst, ev.request_id, None)
        if port is not None:
            if event_type == "port.vif_plugged":
                port.state, port.reason = "wired", None
                port.device, port.bridge = ev.device, ev.bridge
            elif event_type == "port.plug_failed":
                port.state, port.reason = "failed", ev.reason
            elif event_type == "port.vif_unplugged":
                port.state = "unwired"
        if op is not None:
            op.updated_at = utcnow()
        if ev.received_at is not None:
            self.store.add_event(
                s,
                ev.received_at,
                op,
                inst,
                source="l2-agent",
                event="port.received",
                host=ev.host,
                port_id=str(ev.port_id),
                request_id=ev.request_id,
            )
        where = " in ".join(x for x in (ev.device, ev.bridge) if x)
        self.store.add_event(
            s,
            ev.at,
            op,
            inst,
            source="l2-agent",
            event=event_type,
            host=ev.host,
            step=where or None,
            reason=ev.reason,
            port_id=str(ev.port_id),
            request_id=ev.request_id,
        )
        return Applied(timeline=True)

    # ------------------------------------------------------------------ instances

    def _instance(self, s: Session, event_type: str, ev: InstanceEvent) -> Applied:
        inst = s.get(Instance, str(ev.instance_uuid))
        parts = event_type.split(".")
        kind = parts[1] if len(parts) == 3 else None
        phase = parts[2] if len(parts) == 3 else None
        op = self._operation(s, inst, ev.request_id, kind)
        now = utcnow()
        applied = Applied(timeline=True)
        if phase == "start" and ev.elapsed_ms is not None:
            self.store.add_event(
                s,
                ev.at - timedelta(milliseconds=ev.elapsed_ms),
                op,
                inst,
                source="compute-agent",
                event=f"instance.{kind}.received",
                host=ev.host,
                request_id=ev.request_id,
            )
        self.store.add_event(
            s,
            ev.at,
            op,
            inst,
            source="compute-agent",
            event=event_type,
            host=ev.host,
            step=ev.step,
            state=ev.state,
            reason=ev.reason,
            request_id=ev.request_id,
        )
        if inst is None or inst.deleted_at is not None:
            return applied  # not ours, or gone: the timeline keeps the report, nothing else
        if op is None:
            # No operation of ours is in flight: a late report of a finished one, or the
            # host speaking for itself (a guest crashed, a start-up reconcile). Only a
            # plain observation is taken over; it ends nothing.
            if phase not in ("end", "error") and ev.state is not None and inst.task is None:
                inst.state = ev.state
                inst.updated_at = now
            return applied
        op.updated_at = now
        if phase == "handed_back":
            # The agent stopped before it could finish and undid its work: cast it again
            # now; the message waits in the host's queue until the agent is back.
            applied.casts = self.store.casts_for(s, op)
            return applied
        if phase in ("start", "progress"):
            if ev.state is not None:
                inst.state = ev.state
            return applied
        if phase == "end":
            inst.fault = None
            inst.task = None
            inst.updated_at = now
            if op.kind == "delete":
                inst.state = "deleted"
                inst.deleted_at = now
                applied.casts = self.store.release_ports(s, inst, now)
            else:
                inst.state = ev.state or "running"
            self.store.finish_operation(s, op, now, "done", None, inst)
        elif phase == "error":
            reason = ev.reason or "the agent reported an error without a reason"
            inst.fault = reason
            inst.task = None
            inst.updated_at = now
            if op.kind == "create":
                inst.state = "error"
                applied.casts = self.store.release_ports(s, inst, now)
            elif ev.state is not None:
                inst.state = ev.state
            self.store.finish_operation(s, op, now, "error", reason, inst)
        return applied

    def _operation(
        self, s: Session, inst: Instance | None, request_id: str | None, kind: str | None
    ) -> Operation | None:
        """The open operation this report belongs to: same request id, else same kind."""
        if inst is None:
            return None
        ops = self.store.open_operations(s, inst.uuid)
        for op in ops:
            if request_id is not None and op.request_id == request_id:
                return op
        for op in ops:
            if kind is not None and op.kind == kind and request_id is None:
                return op
        return None


def _str(value: uuidlib.UUID | None) -> str | None:
    return None if value is None else str(value)


__all__ = ["Applied", "Records", "datetime"]
