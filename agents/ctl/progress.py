"""Following an operation through the controller's EVENTs: which instance is where, done or not.

Pure state: `Tracker.feed()` takes one EVENT (a dict of docs/api.md's event stream) and
returns the human-sized updates it caused; `finished`, `succeeded`, `failed` and
`pending` answer the caller's loop. An instance is over only on an event with
`"final": true` (operation.done / operation.error): an `instance.*.error` before it may
still be followed by a retry. It never reads the network or prints; the client feeds it
and the CLI shows the updates.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, NamedTuple

Event = dict[str, Any]

# The state an operation leaves its instance in when the final event does not say.
END_STATE: dict[str, str] = {"create": "running", "delete": "deleted", "reboot": "running"}


# A NamedTuple and a plain class rather than dataclasses: importing dataclasses (and
# inspect with it) cost every agentctl command about 8 ms.
class Update(NamedTuple):
    """One line of progress: what happened to which instance (or one of its ports)."""

    instance_uuid: str | None
    name: str
    what: str  # snake_case fact: create_started, port_wired, guest_started, running, failed ...
    detail: str = ""
    port_id: str | None = None
    final: bool = False
    ok: bool = True


class InstanceProgress:
    def __init__(self, uuid: str, name: str, port_ids: set[str] | None = None) -> None:
        self.uuid = uuid
        self.name = name
        self.port_ids: set[str] = port_ids if port_ids is not None else set()
        self.wired: set[str] = set()
        self.noted: set[tuple[str, str]] = set()  # (event, reason) shown once
        self.state: Literal["pending", "done", "failed"] = "pending"
        self.end_state: str | None = None  # what the final event says (running, deleted ...)
        self.reason: str | None = None
        self.elapsed_ms: float | None = None

    def __repr__(self) -> str:
        return f"InstanceProgress({self.name!r}, {self.uuid!r}, state={self.state!r})"


def parse_at(value: object) -> datetime | None:
    """An EVENT's `at` (RFC 3339); None when unreadable, which only loses a duration."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def port_where(ev: Event) -> str:
    """`tap.. in brq..` for a port event, else its port id.

    The contract's EVENT has no device/bridge fields: they are read when present, else
    from `step`, where the controller puts "tap.. in brq.." for port events.
    """
    where = " in ".join(str(ev[k]) for k in ("device", "bridge") if ev.get(k))
    if where:
        return where
    if ev.get("step"):
        return str(ev["step"])
    return f"port {str(ev['port_id'])[:8]}" if ev.get("port_id") else ""


class Tracker:
    """Progress of one operation (one request) over a set of instances."""

    def __init__(self, operation: str, instances: Iterable[tuple[str, str, Iterable[str]]]) -> None:
        self.operation = operation
        self.instances: dict[str, InstanceProgress] = {
            uuid: InstanceProgress(uuid=uuid, name=name, port_ids=set(ports))
            for uuid, name, ports in instances
        }
        self._port_owner = {p: i.uuid for i in self.instances.values() for p in i.port_ids}
        # The first event of the request (api.received): durations count from there.
        self.started_at: datetime | None = None

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

    def feed(self, ev: Event) -> list[Update]:
        at = parse_at(ev.get("at"))
        if self.started_at is None and at is not None:
            self.started_at = at
        inst = self.instances.get(str(ev.get("instance_uuid")))
        if inst is None and ev.get("port_id") is not None:
            owner = self._port_owner.get(str(ev["port_id"]))
            inst = self.instances.get(owner) if owner else None
        if inst is None or inst.state != "pending":
            return []  # another instance's, a request-wide one, or late after the end
        if ev.get("final") is True:
            return [self._final(inst, ev, at)]
        return self._step(inst, ev)

    def _final(self, inst: InstanceProgress, ev: Event, at: datetime | None) -> Update:
        if at is not None and self.started_at is not None:
            inst.elapsed_ms = (at - self.started_at).total_seconds() * 1000
        state = ev.get("state")
        if ev.get("event") == "operation.error" or state == "error":
            inst.state = "failed"
            inst.end_state = "error"
            inst.reason = ev.get("reason") or "the controller reported an error without a reason"
            return Update(inst.uuid, inst.name, "failed", inst.reason, final=True, ok=False)
        inst.state = "done"
        op = str(ev.get("operation") or self.operation)
        inst.end_state = str(state or END_STATE.get(op, "done"))
        detail = f"{inst.elapsed_ms:.0f} ms" if inst.elapsed_ms is not None else ""
        return Update(inst.uuid, inst.name, inst.end_state, detail, final=True)

    def _step(self, inst: InstanceProgress, ev: Event) -> list[Update]:
        name = str(ev.get("event", ""))
        reason = str(ev.get("reason") or "no reason given")
        port = str(ev["port_id"]) if ev.get("port_id") is not None else None
        kind, _, phase = name.rpartition(".")
        if kind.startswith("instance."):
            op = kind.removeprefix("instance.")
            if phase == "start":
                return [Update(inst.uuid, inst.name, f"{op}_started")]
            if phase == "progress":
                return [Update(inst.uuid, inst.name, str(ev.get("step") or "progress"))]
            if phase == "error":  # not the end: the controller may retry; the final event says
                return [Update(inst.uuid, inst.name, f"{op}_error", reason, ok=False)]
            return []  # .end: the final operation.done follows and is the line shown
        if name == "port.vif_plugged" and port is not None and port not in inst.wired:
            inst.wired.add(port)
            return [Update(inst.uuid, inst.name, "port_wired", port_where(ev), port_id=port)]
        if name == "port.plug_failed":
            return [Update(inst.uuid, inst.name, "port_failed", reason, port_id=port, ok=False)]
        if name == "port.vif_unplugged":
            return [Update(inst.uuid, inst.name, "port_unwired", port_where(ev), port_id=port)]
        if name == "operation.retried":
            return [Update(inst.uuid, inst.name, "retried", reason)]
        if ev.get("reason") and (name, reason) not in inst.noted:
            # An event the contract does not name (casts.failed ...) that carries a reason:
            # it tells why nothing moves. Once per reason, as the controller retries often.
            inst.noted.add((name, reason))
            return [Update(inst.uuid, inst.name, name.replace(".", "_"), reason, port, ok=False)]
        return []  # api.received, casts.sent, port.received: the plan table said it already
