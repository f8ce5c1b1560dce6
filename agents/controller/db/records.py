"""What the hosts report, applied to the database: observed state, faults, the timeline.

Agent notifications are applied in batches, one transaction each (`apply_batch`), and
the broker messages are acknowledged only after it commits (the bus does that), so an
event is never lost between the broker and the database; applying one twice changes
nothing more than applying it once (states are set, not toggled; a finished operation
stays finished; a redelivered event's timeline rows are not written twice).

Returns the casts the report makes necessary: when a guest is gone (delete finished,
or a build failed), its ports are unwired and their addresses released here, after
the guest, never before it.

`apply_listing` takes a host's whole answer to `list_instances` (the controller's
level-triggered host sync) and makes the observed states match it; it never asks a
host to change anything.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from agents.controller.db import views
from agents.controller.db.models import Agent, Instance, Operation, Port, ReleasedPort
from agents.controller.db.store import OPEN_STATES, Cast, Store, utcnow
from common.messages import (
    AgentHeartbeat,
    InstanceEvent,
    InstanceInfo,
    Message,
    MessageRejected,
    VifEvent,
    new_request_id,
)

# The faults the host sync sets; it clears only its own.
STOPPED_OUTSIDE = "stopped outside agents"
GONE_PREFIX = "the guest is gone from host "


def gone_fault(host: str) -> str:
    return f"{GONE_PREFIX}{host} (not built or removed outside agents)"


@dataclass
class SyncChange:
    uuid: str
    name: str
    old: str
    new: str
    fault: str | None


@dataclass
class ListingReport:
    """What a host's listing changed, and what it listed that is not ours to change."""

    changed: list[SyncChange] = field(default_factory=list)
    skipped: int = 0  # busy (open operation) or changed since the host was asked
    foreign: list[str] = field(default_factory=list)  # unknown to the database
    deleted: list[str] = field(default_factory=list)  # deleted here, still on the host
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # (uuid, db host)
    failed: list[str] = field(default_factory=list)  # in state error here (a failed build)
    # what the listing makes necessary: a gone guest's ports unwired, a stopped one
    # started again
    casts: list[Cast] = field(default_factory=list)


@dataclass
class Applied:
    casts: list[Cast] = field(default_factory=list)
    timeline: bool = False  # new timeline events were written


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, event_type: str, payload: Message, redelivered: bool = False) -> Applied:
        return self.apply_batch([(event_type, payload)], redelivered)

    def apply_batch(
        self, events: Sequence[tuple[str, Message]], redelivered: bool = False
    ) -> Applied:
        """Apply `events` in order, in one transaction; their casts and timeline flag
        together. `redelivered`: some may have been applied before (timeline rows
        already there are not added again; the rest is idempotent anyway)."""

        def work(s: Session) -> Applied:
            s.info["redelivered"] = redelivered
            self._lock_batch(s, events)
            out = Applied()
            for event_type, payload in events:
                if isinstance(payload, AgentHeartbeat):
                    self._heartbeat(s, payload)
                    continue
                applied = self._apply(s, event_type, payload)
                out.casts.extend(applied.casts)
                out.timeline = out.timeline or applied.timeline
            return out

        return self.store.db.retrying(work)

    def _lock_batch(self, s: Session, events: Sequence[tuple[str, Message]]) -> None:
        """Lock every instance the batch reports on, in one statement and in uuid order,
        and load their ports and open operations: the events then read them from the
        session (no statement each), and two replicas applying batches that share
        instances take the locks in the same order, never in a deadlock (PostgreSQL
        finds one only after `deadlock_timeout`, a second of lag each)."""
        port_ids = {str(p.port_id) for _, p in events if isinstance(p, VifEvent)}
        uuids = {
            str(p.instance_uuid)
            for _, p in events
            if isinstance(p, InstanceEvent | VifEvent) and p.instance_uuid is not None
        }
        if port_ids:
            found = {
                str(row.id): str(row.instance_uuid)
                for row in s.execute(
                    select(Port.id, Port.instance_uuid).where(Port.id.in_(port_ids))
                )
            }
            uuids.update(found.values())
            if missing := port_ids - set(found):  # released already
                uuids.update(
                    str(u)
                    for u in s.scalars(
                        select(ReleasedPort.instance_uuid).where(ReleasedPort.id.in_(missing))
                    )
                )
        if not uuids:
            return
        locked = list(
            s.scalars(
                select(Instance)
                .where(Instance.uuid.in_(sorted(uuids)))
                .order_by(Instance.uuid)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        # The session's identity map holds its objects weakly: a row loaded here and not
        # referenced would be dropped at once, and every event would select it again
        # (autoflushing the timeline rows one INSERT at a time before each). The batch
        # keeps them, in session.info, until its transaction ends.
        if port_ids:  # read under the locks: a delete that released a port meanwhile is seen
            s.info["ports"] = s.scalars(
                select(Port).where(Port.id.in_(port_ids)).execution_options(populate_existing=True)
            ).all()
        self.store.preload_open_operations(s, [i.uuid for i in locked])
        s.info["locked"] = {i.uuid: i for i in locked}

    def _apply(self, s: Session, event_type: str, payload: Message) -> Applied:
        if isinstance(payload, VifEvent):
            return self._vif(s, event_type, payload)
        if isinstance(payload, InstanceEvent):
            return self._instance(s, event_type, payload)
        if isinstance(payload, MessageRejected):
            # On the named instance's timeline (when one was salvaged), and nothing more:
            # a refused message ends no operation.
            inst = s.get(Instance, str(payload.instance_uuid)) if payload.instance_uuid else None
            self.store.add_event(
                s,
                payload.at,
                None,
                inst,
                source=f"{payload.kind}-agent" if payload.kind == "l2" else "compute-agent",
                event=event_type,
                host=payload.host,
                step=payload.method,
                reason=payload.problem,
                port_id=str(payload.port_id) if payload.port_id else None,
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
            row.images = list(hb.images) if hb.images is not None else None
        s.add(row)

    # ------------------------------------------------------------------ ports

    def _vif(self, s: Session, event_type: str, ev: VifEvent) -> Applied:
        port = s.get(Port, str(ev.port_id))
        inst_uuid = port.instance_uuid if port else _str(ev.instance_uuid)
        if inst_uuid is None:  # released already (a vif_unplugged follows the release)
            released = s.get(ReleasedPort, str(ev.port_id))
            inst_uuid = released.instance_uuid if released is not None else None
        inst = _locked(s, inst_uuid)
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
        inst = _locked(s, str(ev.instance_uuid))
        parts = event_type.split(".")
        kind = parts[1] if len(parts) == 3 else None
        phase = parts[2] if len(parts) == 3 else None
        # An end or an error must name its request to end an operation: one without (a
        # start-up reconcile's guess about files it found) goes to the timeline only,
        # and the re-drive finds out what really happened.
        op = self._operation(s, inst, ev.request_id, kind, final=phase in ("end", "error"))
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
            # No operation of ours is in flight: a late report of a finished one (a
            # duplicate cast's `create.start` after the create ended must not set the
            # instance back to building), or the host speaking for itself (a state
            # change found by the agent). Only such a plain observation is taken over.
            lifecycle = kind in ("create", "delete", "reboot")
            if (
                not lifecycle
                and phase not in ("end", "error")
                and ev.state is not None
                and (inst.task is None)
            ):
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

    # ------------------------------------------------------------------ host sync

    def apply_listing(
        self,
        host: str,
        listed: Iterable[InstanceInfo],
        asked_at: datetime,
        margin_s: float = 5.0,
    ) -> ListingReport:
        """Make the observed state of `host`'s instances what its listing says.

        `asked_at`: when `list_instances` was sent. Only instances with no open
        operation and no change since `asked_at - margin_s` are compared (anything
        newer may be missing from, or differ in, a listing taken before it happened;
        the next pass sees it). An instance the host does not list goes to `error`
        with a fault naming the host; one listed in another state takes that state
        (running -> shutoff/crashed sets the fault "stopped outside agents"). Each
        change is a timeline event `instance.sync` (source controller). An instance
        this sync found gone has its ports released and stays in error even if the host
        lists it again (its addresses may be someone else's by then); one stopped
        outside the agents gets a hard-reboot operation that starts it again.
        What the host lists that is not a live instance of that host here is only
        reported.
        """
        seen = {str(i.uuid): i for i in listed}
        quiet_before = asked_at - timedelta(seconds=margin_s)

        def work(s: Session) -> ListingReport:
            report = ListingReport()
            now = utcnow()
            rows = list(
                s.scalars(
                    select(Instance)
                    .where(Instance.host == host, Instance.deleted_at.is_(None))
                    .order_by(Instance.uuid)
                    .with_for_update()
                )
            )
            busy = set(
                s.scalars(
                    select(Operation.instance_uuid).where(
                        Operation.host == host, Operation.state.in_(OPEN_STATES)
                    )
                )
            )
            for inst in rows:
                info = seen.pop(inst.uuid, None)
                if inst.uuid in busy or inst.task is not None or inst.state == "deleting":
                    report.skipped += 1
                    continue
                if views.utc(inst.updated_at) > quiet_before:
                    report.skipped += 1
                    continue
                change = self._compare(inst, info, host)
                if change is None:
                    if info is not None and inst.state == "error":
                        report.failed.append(inst.uuid)
                    continue
                old = inst.state
                inst.state, inst.fault, inst.updated_at = change[0], change[1], now
                self.store.add_event(
                    s,
                    now,
                    None,
                    inst,
                    source="controller",
                    event="instance.sync",
                    host=host,
                    step=f"{old} -> {inst.state}",
                    state=inst.state,
                    reason=inst.fault
                    or f"host {host} lists it {inst.state}, the database had {old}",
                )
                report.changed.append(SyncChange(inst.uuid, inst.name, old, inst.state, inst.fault))
                if info is None and inst.state == "error":
                    # The guest is gone: nothing may keep its ports or addresses.
                    report.casts += self.store.release_ports(s, inst, now)
                elif inst.fault == STOPPED_OUTSIDE:
                    # Desired is running: drive it back there, as an operation of its own
                    # (tracked, re-driven, in the timeline) that starts the guest again.
                    rid = new_request_id()
                    inst.task, inst.request_id = "reboot", rid
                    op = self.store._new_operation(s, "reboot", inst, rid, now, hard=True)
                    self.store.add_event(
                        s, now, op, inst, source="controller", event="operation.started",
                        host=host, reason="stopped outside agents: starting it again",
                    )  # fmt: skip
                    s.flush()
                    report.casts += self.store.casts_for(s, op)
            if seen:
                known = {
                    row.uuid: row
                    for row in s.scalars(select(Instance).where(Instance.uuid.in_(list(seen))))
                }
                for uuid in sorted(seen):
                    row = known.get(uuid)
                    if row is None:
                        report.foreign.append(uuid)
                    elif row.deleted_at is not None:
                        report.deleted.append(uuid)
                    else:
                        report.elsewhere.append((uuid, row.host))
            return report

        return self.store.db.retrying(work)

    @staticmethod
    def _compare(
        inst: Instance, info: InstanceInfo | None, host: str
    ) -> tuple[str, str | None] | None:
        """(state, fault) the instance should take, or None to leave it."""
        ours = inst.fault is not None and inst.fault.startswith(GONE_PREFIX)
        if info is None:
            if inst.state in ("error", "deleted"):
                return None
            return "error", gone_fault(host)
        if inst.state == "error" and not ours:
            return None  # a failed build: the host still has something; reported only
        new = info.state
        if new in ("deleting", "deleted") or (new == inst.state and not ours):
            return None
        if ours:
            # Back on the host after its ports and addresses were released: it stays in
            # error (reported; the agent's resync removes it), never running again.
            return None
        fault = inst.fault
        if new == "error":
            fault = info.fault or f"host {host} reports it in error"
        elif inst.state == "running" and new in ("shutoff", "crashed"):
            fault = STOPPED_OUTSIDE
        elif new == "running" and fault == STOPPED_OUTSIDE:
            fault = None
        return new, fault

    def _operation(
        self,
        s: Session,
        inst: Instance | None,
        request_id: str | None,
        kind: str | None,
        final: bool = False,
    ) -> Operation | None:
        """The open operation this report belongs to: same request id, else (a report
        without one that is not `final`) same kind."""
        if inst is None:
            return None
        ops = self.store.open_operations(s, inst.uuid)
        for op in ops:
            if request_id is not None and op.request_id == request_id:
                return op
        for op in ops:
            if kind is not None and op.kind == kind and request_id is None and not final:
                return op
        return None


def _locked(s: Session, uuid: str | None) -> Instance | None:
    """The instance row `_lock_batch` locked until the commit (PostgreSQL; SQLite
    serialises writers); None for an instance the database does not have.

    Replicas share the event queue, so two reports of one instance (a build's start and
    its end) can be applied at the same moment by two controllers; the lock makes the
    second wait and then read what the first wrote, instead of overwriting it with what
    it read before. A report applied late then finds its operation finished, and
    changes nothing but the timeline.
    """
    locked: dict[str, Instance] = s.info.get("locked", {})
    return locked.get(uuid) if uuid is not None else None


def _str(value: uuidlib.UUID | None) -> str | None:
    return None if value is None else str(value)


__all__ = ["Applied", "ListingReport", "Records", "SyncChange", "datetime", "gone_fault"]
