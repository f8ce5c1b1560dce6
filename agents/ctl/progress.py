"""Following an operation through its notifications: which instance is where, done or not.

Pure state: `feed()` takes one notification (event type + validated payload) and returns
the human-sized updates it caused; `finished`, `succeeded` and `failed` answer the
caller's loop. It never reads the broker or prints; the client feeds it, the CLI shows
the updates.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from common.messages import UUID, InstanceEvent, VifEvent

Operation = Literal["create", "delete", "reboot"]

# What the operation's `.end` event means for the instance.
_END_STATE: dict[str, str] = {"create": "running", "delete": "deleted", "reboot": "running"}


@dataclass(frozen=True)
class Update:
    """One line of progress: what happened to which instance (or port)."""

    instance_uuid: UUID | None
    name: str
    what: str  # snake_case fact: build_started, port_wired, guest_defined, running, failed ...
    detail: str = ""
    port_id: UUID | None = None
    final: bool = False
    ok: bool = True


@dataclass
class InstanceProgress:
    uuid: UUID
    name: str
    port_ids: set[UUID] = field(default_factory=set)
    wired: set[UUID] = field(default_factory=set)
    port_failures: dict[UUID, str] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    state: Literal["pending", "done", "failed"] = "pending"
    reason: str | None = None
    elapsed_ms: float | None = None


class Tracker:
    """Progress of one operation over a set of instances."""

    def __init__(
        self, operation: Operation, instances: Iterable[tuple[UUID, str, Iterable[UUID]]]
    ) -> None:
        self.operation = operation
        self.instances: dict[UUID, InstanceProgress] = {
            uuid: InstanceProgress(uuid=uuid, name=name, port_ids=set(ports))
            for uuid, name, ports in instances
        }
        self._port_owner = {p: i.uuid for i in self.instances.values() for p in i.port_ids}

    @property
    def finished(self) -> bool:
        return all(i.state != "pending" for i in self.instances.values())

    @property
    def succeeded(self) -> list[InstanceProgress]:
        return [i for i in self.instances.values() if i.state == "done"]

    @property
    def failed(self) -> list[InstanceProgress]:
        return [i for i in self.instances.values() if i.state == "failed"]

    @property
    def pending(self) -> list[InstanceProgress]:
        return [i for i in self.instances.values() if i.state == "pending"]

    def fail(self, uuid: UUID, reason: str) -> Update:
        """Mark an instance failed for a reason found outside its events (an address clash)."""
        inst = self.instances[uuid]
        inst.state = "failed"
        inst.reason = reason
        return Update(inst.uuid, inst.name, "failed", reason, final=True, ok=False)

    def feed(self, event_type: str, payload: object) -> list[Update]:
        if isinstance(payload, InstanceEvent):
            return self._instance_event(event_type, payload)
        if isinstance(payload, VifEvent) and self.operation == "create":
            return self._vif_event(event_type, payload)
        return []

    def _instance_event(self, event_type: str, ev: InstanceEvent) -> list[Update]:
        inst = self.instances.get(ev.instance_uuid)
        prefix = f"instance.{self.operation}."
        if inst is None or not event_type.startswith(prefix) or inst.state != "pending":
            return []
        phase = event_type[len(prefix) :]
        if phase == "start":
            return [Update(inst.uuid, inst.name, f"{self.operation}_started")]
        if phase == "progress":
            step = ev.step or "progress"
            inst.steps.append(step)
            return [Update(inst.uuid, inst.name, step)]
        if phase == "end":
            inst.state = "done"
            inst.elapsed_ms = ev.elapsed_ms
            end_state = ev.state or _END_STATE[self.operation]
            detail = f"{ev.elapsed_ms:.0f} ms" if ev.elapsed_ms is not None else ""
            return [Update(inst.uuid, inst.name, end_state, detail, final=True)]
        if phase == "error":
            inst.state = "failed"
            inst.reason = ev.reason or "the agent reported an error without a reason"
            return [Update(inst.uuid, inst.name, "failed", inst.reason, final=True, ok=False)]
        return []

    def _vif_event(self, event_type: str, ev: VifEvent) -> list[Update]:
        owner = self._port_owner.get(ev.port_id)
        if owner is None:
            return []
        inst = self.instances[owner]
        if event_type == "port.vif_plugged" and ev.port_id not in inst.wired:
            inst.wired.add(ev.port_id)
            where = " in ".join(x for x in (ev.device, ev.bridge) if x)
            return [Update(inst.uuid, inst.name, "port_wired", where, port_id=ev.port_id)]
        if event_type == "port.plug_failed":
            reason = ev.reason or "no reason given"
            inst.port_failures[ev.port_id] = reason
            return [
                Update(inst.uuid, inst.name, "port_failed", reason, port_id=ev.port_id, ok=False)
            ]
        return []


class PortTracker:
    """Waits for the vif_unplugged of a set of ports (after a delete)."""

    def __init__(self, port_ids: Iterable[UUID], name: str = "") -> None:
        self.remaining = set(port_ids)
        self.name = name

    @property
    def finished(self) -> bool:
        return not self.remaining

    def feed(self, event_type: str, payload: object) -> list[Update]:
        if not isinstance(payload, VifEvent) or payload.port_id not in self.remaining:
            return []
        if event_type == "port.vif_unplugged":
            self.remaining.discard(payload.port_id)
            return [
                Update(
                    payload.instance_uuid,
                    self.name,
                    "port_unwired",
                    payload.device or "",
                    payload.port_id,
                )
            ]
        if event_type == "port.plug_failed":
            self.remaining.discard(payload.port_id)
            reason = payload.reason or "no reason given"
            return [
                Update(
                    payload.instance_uuid,
                    self.name,
                    "port_failed",
                    reason,
                    payload.port_id,
                    ok=False,
                )
            ]
        return []


class EventFilter:
    """`watch --host/--instance`: which events to show.

    An instance given by name is matched by name where an event carries one (create
    events do) and by the uuids learned from those afterwards, since delete, reboot and
    port events carry only the uuid; a port is matched by its instance uuid, or by its
    port id once learned (a vif_unplugged may not name the instance).
    """

    def __init__(self, host: str | None = None, instance: str | None = None) -> None:
        self.host = host
        self.name: str | None = None
        self.uuids: set[UUID] = set()
        self.ports: set[UUID] = set()
        if instance is not None:
            try:
                self.uuids.add(uuidlib.UUID(instance))
            except ValueError:
                self.name = instance

    def matches(self, payload: object) -> bool:
        if self.host is not None and getattr(payload, "host", None) != self.host:
            return False
        if self.name is None and not self.uuids:
            return True
        uuid = getattr(payload, "instance_uuid", None)
        port = getattr(payload, "port_id", None)
        if self.name is not None and getattr(payload, "name", None) == self.name:
            if isinstance(uuid, uuidlib.UUID):
                self.uuids.add(uuid)
            return True
        if uuid in self.uuids:
            if isinstance(port, uuidlib.UUID):
                self.ports.add(port)
            return True
        return port in self.ports
