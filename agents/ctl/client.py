"""The Python client API of agents: what agentctl does, usable by any program.

    with Client.from_config(load(CtlConfig, files)) as client:
        plan = client.plan_build("node1", name="web", count=2)
        outcome = client.send_build(plan, wait=True, on_update=print)

Owns the operations: checking that an agent serves the host before casting, watching
events BEFORE casting so none is missed, following an operation to its end, cleaning up
after a failed build, finding instances by name, and gathering the l2-agents' port
records for fixed-IP allocation. Which agents exist and live is `discovery`'s question;
decisions (uuids, MACs, addresses, progress) are made by the pure `plan` and `progress`.

Must not print or exit: it returns results and raises typed errors; the CLI presents them.
"""

from __future__ import annotations

import random
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import TracebackType
from typing import Any

import structlog

from agents.ctl import plan as planning
from agents.ctl.discovery import TOPIC_OF_KIND, AgentDirectory, OnWarning, log_warning
from agents.ctl.errors import (
    AmbiguousName,
    InstanceNotFound,
)
from agents.ctl.progress import EventFilter, Operation, PortTracker, Tracker, Update
from agents.ctl.seen import AgentStatus, SeenStore
from agents.ctl.settings import CtlConfig, state_dir
from common.errors import (
    AgentsError,
    InvalidMessage,
    NoAgentForHost,
    RemoteCallTimeout,
    RemoteError,
)
from common.messages import (
    UUID,
    ConsoleLog,
    DeleteInstance,
    InstanceInfo,
    InstanceList,
    InstanceRef,
    Message,
    Port,
    PortDeleted,
    PortInfo,
    PortList,
    RebootInstance,
    new_request_id,
)
from common.rpc import (
    Event,
    EventWatcher,
    Messaging,
    RpcClient,
    expect,
    vif_events_topic,
    watching,
)

log = structlog.get_logger()

OnUpdate = Callable[[Update], None]


def _ignore(_update: Update) -> None:
    return None


@dataclass
class Outcome:
    """How an operation ended for each instance it covered."""

    operation: Operation
    request_id: str
    host: str
    waited: bool
    tracker: Tracker
    timed_out: bool = False
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.waited or (
            not self.timed_out and not self.tracker.failed and self.tracker.finished
        )


class Client:
    def __init__(
        self,
        config: CtlConfig,
        messaging: Messaging,
        directory: AgentDirectory,
        *,
        rng: random.Random | None = None,
        on_warning: OnWarning = log_warning,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.messaging = messaging
        self.directory = directory
        self.rng = rng or random.SystemRandom()
        self.warn = on_warning
        self.clock = clock

    @classmethod
    def from_config(cls, config: CtlConfig, on_warning: OnWarning = log_warning) -> Client:
        messaging = Messaging(config.messaging)
        seen = SeenStore(state_dir(config.agentctl), config.messaging.control_exchange)
        directory = AgentDirectory(config, messaging, seen, on_warning=on_warning)
        return cls(config, messaging, directory, on_warning=on_warning)

    def close(self) -> None:
        self.messaging.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- agents, hosts

    @property
    def _events_key(self) -> str:
        return f"{self.config.messaging.events_topic}.*"

    def check_broker(self) -> None:
        self.directory.check_broker()

    def require_agent(self, kind: str, host: str) -> None:
        """Raise NoAgentForHost (never served) or AgentDown (queue without consumer)."""
        self.directory.require_agent(kind, host)

    def agents(self, window: float | None = None) -> list[AgentStatus]:
        """Every agent heard now (up) or before (down/silent): see `AgentDirectory.agents`."""
        return self.directory.agents(window)

    def _rpc(self, kind: str, host: str) -> RpcClient:
        return self.messaging.rpc_client(
            TOPIC_OF_KIND[kind], host, timeout=self.config.agentctl.call_timeout
        )

    def _call(
        self,
        kind: str,
        host: str,
        method: str,
        model: type[Message],
        payload: Message | None = None,
    ) -> Any:
        reply = self._rpc(kind, host).call(method, payload)
        return expect(reply, model)

    # ----------------------------------------------------------------- build

    def plan_build(
        self,
        host: str,
        *,
        name: str | None = None,
        count: int = 1,
        flavor: str | None = None,
        image: str | None = None,
        networks: Sequence[str] | None = None,
    ) -> planning.BuildPlan:
        """Decide the instances; addresses come from the live l2-agents' port records."""
        chosen_flavor = planning.pick_flavor(self.config, flavor)
        nets = planning.pick_networks(self.config, networks)
        names = planning.instance_names(name, count, self.rng)
        image_name = planning.check_name("--image", image or self.config.agentctl.default_image)
        host = planning.check_host(host)
        held: dict[UUID, set[IPv4Address]] = {}
        l2_hosts: list[str] = []
        if any(net.cidr is not None for net in nets):
            l2_hosts = sorted({hb.host for hb in self.directory.heartbeats(kinds=("l2",))})
            ports = self._gather_ports(l2_hosts)
            held = {net.uuid: planning.held_addresses(ports, net.uuid) for net in nets}
        return planning.make_plan(
            host=host,
            request_id=new_request_id(),
            names=names,
            flavor=chosen_flavor,
            image=image_name,
            networks=nets,
            held=held,
            rng=self.rng,
            l2_hosts=l2_hosts,
        )

    def _gather_ports(self, hosts: Iterable[str]) -> list[PortInfo]:
        ports: list[PortInfo] = []
        for h in hosts:
            try:
                ports.extend(self._call("l2", h, "list_ports", PortList).ports)
            except (RemoteCallTimeout, RemoteError, InvalidMessage, NoAgentForHost) as err:
                self.warn(
                    f"addresses held on {h} are unknown ({err}); an address may be given twice"
                )
        return ports

    def send_build(
        self,
        plan: planning.BuildPlan,
        *,
        wait: bool = False,
        timeout: float | None = None,
        on_update: OnUpdate = _ignore,
    ) -> Outcome:
        """Cast port_created and build_instance; with `wait`, follow until each instance ends."""
        started = self.clock()
        host = plan.host
        self.require_agent("compute", host)
        l2_state = self.directory.agent_queue("l2", host)
        if not l2_state.exists:
            self.warn(f"no l2-agent has ever served host {host!r}: its ports will not be wired")
        elif l2_state.consumers == 0:
            self.warn(f"the l2-agent of host {host!r} is down: ports are wired when it comes back")
        tracker = Tracker(
            "create",
            [
                (b.instance.uuid, b.instance.name, [p.id for p in b.instance.ports])
                for b in plan.builds
            ],
        )
        outcome = Outcome("create", plan.request_id, host, wait, tracker)
        with watching(
            self.config.messaging, [self._events_key, f"{vif_events_topic(host)}.*"]
        ) as watcher:
            if l2_state.exists:
                l2 = self._rpc("l2", host)
                for port_msg in plan.ports:
                    l2.cast("port_created", port_msg, request_id=plan.request_id)
            compute = self._rpc("compute", host)
            for build in plan.builds:
                compute.cast("build_instance", build, request_id=plan.request_id)
            log.debug(
                "build_sent", request_id=plan.request_id, host=host, instances=len(plan.builds)
            )
            if not wait:
                return outcome
            deadline = started + (timeout or self.config.agentctl.wait_timeout)
            outcome.timed_out = not self._follow(watcher, [tracker], deadline, on_update)
        if plan.allocated:
            self._give_up_clashing_addresses(plan, tracker, on_update)
        if tracker.failed and l2_state.exists:
            # Nothing stays wired for an instance that will never use its ports.
            self._delete_ports(
                host, [p for i in tracker.failed for p in plan.ports_of(i.uuid)], plan.request_id
            )
        outcome.elapsed_s = self.clock() - started
        return outcome

    def _give_up_clashing_addresses(
        self, plan: planning.BuildPlan, tracker: Tracker, on_update: OnUpdate
    ) -> None:
        """Another agentctl may have handed out the same address at the same moment.

        Our ports are recorded now (the instances run), so we look again; an instance
        whose address another port also holds is deleted and reported failed.
        """
        running = list(tracker.succeeded)
        if not running:
            return
        mine = [p for i in running for p in plan.ports_of(i.uuid)]
        clashes = planning.conflicts(self._gather_ports(sorted({*plan.l2_hosts, plan.host})), mine)
        for inst in running:
            clashing = [p for p in plan.ports_of(inst.uuid) if p.id in clashes]
            if not clashing:
                continue
            port = clashing[0]
            reason = (
                f"address {port.fixed_ip} was given at the same time to port(s) "
                f"{', '.join(map(str, clashes[port.id]))} (another agentctl?); instance deleted,"
                " build it again"
            )
            on_update(tracker.fail(inst.uuid, reason))
            msg = DeleteInstance(
                request_id=plan.request_id, host=plan.host, instance_uuid=inst.uuid
            )
            self._rpc("compute", plan.host).cast("delete_instance", msg, request_id=plan.request_id)

    def _follow(
        self,
        watcher: EventWatcher,
        trackers: Sequence[Tracker | PortTracker],
        deadline: float,
        on_update: OnUpdate,
    ) -> bool:
        """Feed events to the trackers until all finish (True) or the deadline (False)."""
        while not all(t.finished for t in trackers):
            left = deadline - self.clock()
            if left <= 0:
                return False
            for ev in watcher.poll(min(left, 0.5)):
                for t in trackers:
                    for update in t.feed(ev.event_type, ev.payload):
                        on_update(update)
        return True

    def _delete_ports(self, host: str, ports: Iterable[Port], request_id: str) -> None:
        l2 = self._rpc("l2", host)
        for port in ports:
            msg = PortDeleted(
                request_id=request_id, host=host, port_id=port.id, network_id=port.network_id
            )
            try:
                l2.cast("port_deleted", msg, request_id=request_id)
            except AgentsError as err:
                self.warn(f"port {port.id} on {host} stays wired: {err}")

    # ----------------------------------------------------------------- find, list, show

    def list_instances(self, host: str | None = None) -> list[InstanceInfo]:
        hosts = [planning.check_host(host)] if host else self.directory.live_hosts("compute")
        if host:
            self.require_agent("compute", host)
        out: list[InstanceInfo] = []
        for h in hosts:
            try:
                out.extend(self._call("compute", h, "list_instances", InstanceList).instances)
            except (RemoteCallTimeout, RemoteError, InvalidMessage) as err:
                if host:
                    raise
                self.warn(f"host {h} did not list its instances: {err}")
        return sorted(out, key=lambda i: (i.host, i.name, str(i.uuid)))

    def find(self, ref: str, host: str | None = None) -> InstanceInfo:
        """The instance named or identified by `ref`, on `host` or on any live compute host."""
        as_uuid = _as_uuid(ref)
        if as_uuid is None:
            planning.check_name("instance", ref)
        matches = [
            i
            for i in self.list_instances(host)
            if i.uuid == as_uuid or (as_uuid is None and i.name == ref)
        ]
        if not matches:
            raise InstanceNotFound(
                ref=ref, where=f"host {host!r}" if host else "any live compute host"
            )
        if len(matches) > 1:
            raise AmbiguousName(
                ref=ref,
                count=len(matches),
                uuids=", ".join(f"{m.uuid} on {m.host}" for m in matches),
            )
        return matches[0]

    def show(self, ref: str, host: str | None = None) -> InstanceInfo:
        found = self.find(ref, host)
        info: InstanceInfo = self._call(
            "compute",
            found.host,
            "get_instance",
            InstanceInfo,
            InstanceRef(instance_uuid=found.uuid),
        )
        return info

    def console_log(self, ref: str, host: str | None = None, tail: int | None = None) -> ConsoleLog:
        found = self.find(ref, host)
        logged: ConsoleLog = self._call(
            "compute",
            found.host,
            "get_console_log",
            ConsoleLog,
            InstanceRef(instance_uuid=found.uuid),
        )
        if tail is not None:
            lines = logged.text.splitlines(keepends=True)
            logged = logged.model_copy(
                update={
                    "text": "".join(lines[-tail:] if tail else []),
                    "truncated": logged.truncated or len(lines) > tail,
                }
            )
        return logged

    def ports(self, host: str) -> PortList:
        host = planning.check_host(host)
        self.require_agent("l2", host)
        ports: PortList = self._call("l2", host, "list_ports", PortList)
        return ports

    # ----------------------------------------------------------------- delete, reboot

    def send_delete(
        self,
        host: str,
        ref: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        on_update: OnUpdate = _ignore,
    ) -> Outcome:
        """Delete the guest, then unwire its ports (after the guest is gone when waiting)."""
        started = self.clock()
        host = planning.check_host(host)
        self.require_agent("compute", host)
        info = self.find(ref, host)
        ports = {p.id: p for p in info.ports}
        l2_state = self.directory.agent_queue("l2", host)
        l2_up = l2_state.consumers > 0
        if l2_up:
            for p in self._gather_ports([host]):
                if p.port.instance_uuid == info.uuid:
                    ports.setdefault(p.port.id, p.port)
        elif l2_state.exists and ports:
            # port_deleted waits in its durable queue and is applied when the agent returns
            self.warn(
                f"the l2-agent of host {host!r} is down: ports are unwired when it comes back"
            )
        request_id = new_request_id()
        tracker = Tracker("delete", [(info.uuid, info.name, ports)])
        outcome = Outcome("delete", request_id, host, wait, tracker)
        with watching(
            self.config.messaging, [self._events_key, f"{vif_events_topic(host)}.*"]
        ) as watcher:
            msg = DeleteInstance(request_id=request_id, host=host, instance_uuid=info.uuid)
            self._rpc("compute", host).cast("delete_instance", msg, request_id=request_id)
            if not wait:
                if l2_state.exists:
                    self._delete_ports(host, ports.values(), request_id)
                return outcome
            deadline = started + (timeout or self.config.agentctl.wait_timeout)
            finished = self._follow(watcher, [tracker], deadline, on_update)
            if finished and not tracker.failed and ports and l2_state.exists:
                self._delete_ports(host, ports.values(), request_id)
                if l2_up:
                    unplug = PortTracker(ports, info.name)
                    finished = self._follow(watcher, [unplug], deadline, on_update)
            outcome.timed_out = not finished
        outcome.elapsed_s = self.clock() - started
        return outcome

    def send_reboot(
        self,
        host: str,
        ref: str,
        *,
        hard: bool = False,
        wait: bool = False,
        timeout: float | None = None,
        on_update: OnUpdate = _ignore,
    ) -> Outcome:
        started = self.clock()
        host = planning.check_host(host)
        self.require_agent("compute", host)
        info = self.find(ref, host)
        request_id = new_request_id()
        tracker = Tracker("reboot", [(info.uuid, info.name, [])])
        outcome = Outcome("reboot", request_id, host, wait, tracker)
        with watching(self.config.messaging, [self._events_key]) as watcher:
            msg = RebootInstance(
                request_id=request_id, host=host, instance_uuid=info.uuid, hard=hard
            )
            self._rpc("compute", host).cast("reboot_instance", msg, request_id=request_id)
            if wait:
                deadline = started + (timeout or self.config.agentctl.wait_timeout)
                outcome.timed_out = not self._follow(watcher, [tracker], deadline, on_update)
        outcome.elapsed_s = self.clock() - started
        return outcome

    # ----------------------------------------------------------------- watch

    def watch(
        self,
        host: str | None = None,
        instance: str | None = None,
        duration: float | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> Iterator[Event]:
        """Every instance, port and agent event (filtered), as it arrives.

        Runs for `duration` seconds, or until the caller stops iterating. `on_ready` is
        called once the private queue is bound: no event after that moment is missed.
        """
        self.check_broker()
        vif_key = f"{vif_events_topic(planning.check_host(host))}.*" if host else "vif_events.#"
        keep = EventFilter(host, instance)
        with watching(self.config.messaging, [self._events_key, vif_key]) as watcher:
            if on_ready is not None:
                on_ready()
            deadline = None if duration is None else self.clock() + duration
            while deadline is None or (left := deadline - self.clock()) > 0:
                for ev in watcher.poll(0.5 if deadline is None else min(left, 0.5)):
                    if keep.matches(ev.payload):
                        yield ev


def _as_uuid(ref: str) -> UUID | None:
    try:
        return uuidlib.UUID(ref)
    except ValueError:
        return None
