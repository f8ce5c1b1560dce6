"""Desired state: creating, deleting and rebooting instances, and reading them back.

Every decision of a create request (uuids, host, MACs, addresses) is made inside one
writing transaction, and the casts that carry it out are returned to the caller, who
publishes them only after the commit: a cast never names something the database does
not hold. An address or MAC taken by a concurrent transaction makes the unique
constraint refuse the commit; the whole transaction is then run again from a fresh
view (`Database.retrying`). On PostgreSQL the network rows are locked first
(`SELECT ... FOR UPDATE`), so concurrent creates on one network queue up instead of
colliding; SQLite serialises writers anyway.

Applying what the agents report is `records`; this module owns what is asked for.
It never talks to the broker and never decides policy (ipam and scheduler do).
"""

from __future__ import annotations

import functools
import random
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import Any, Literal

import structlog
from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from agents.controller import errors, ipam, scheduler
from agents.controller.db import views
from agents.controller.db.engine import Database, after_commit
from agents.controller.db.models import (
    Agent,
    Event,
    IdempotencyKey,
    Instance,
    Network,
    Operation,
    Port,
    ReleasedPort,
)
from common.config import Flavor, NetworkSpec
from common.messages import (
    BuildInstance,
    DeleteInstance,
    DesiredState,
    InstanceSpec,
    Message,
    PortCreated,
    PortDeleted,
    RebootInstance,
)
from common.messages import Port as WirePort

log = structlog.get_logger()

OPEN_STATES = ("pending", "sent")
# PostgreSQL: how long a timeline row behind a gap in the ids is held back from readers
# (see `events_after`).
EVENT_GAP_HOLD_S = 2.0
AgentKind = Literal["compute", "l2"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Cast:
    """One RPC cast to publish after the commit."""

    kind: AgentKind
    host: str
    method: str
    message: Message
    operation_id: str | None = None
    # which attempt of its operation this cast is (claimed in the transaction that
    # returned it; 0 for a cast that belongs to no operation)
    attempt: int = 0


@dataclass(frozen=True)
class CreateRequest:
    request_id: str
    names: list[str]
    flavor: Flavor
    image: str
    networks: list[NetworkSpec]
    host: str | None = None
    idempotency_key: str | None = None
    body_hash: str = ""


@dataclass
class Accepted:
    """The answer to a create/delete/reboot request, and what to cast for it."""

    response: dict[str, Any]
    casts: list[Cast] = field(default_factory=list)
    replayed: bool = False


class Store:
    def __init__(
        self, db: Database, agent_down_time: float, rng: random.Random | None = None
    ) -> None:
        self.db = db
        self.agent_down_time = timedelta(seconds=agent_down_time)
        self.rng = rng or random.SystemRandom()
        # How far behind the agents this controller applies their events (`heard`): a
        # build burst queues thousands of events ahead of the heartbeats, and silence
        # it cannot have heard yet is not an agent's silence.
        self.event_lag = timedelta(0)

    # ------------------------------------------------------------------ networks

    def sync_networks(self, networks: Iterable[NetworkSpec]) -> None:
        """Make the networks table what the config says (the config is their truth)."""
        wanted = {str(n.uuid): n for n in networks}
        with self.db.writing() as s:
            have = {n.id: n for n in s.scalars(select(Network))}
            for net_id, spec in wanted.items():
                row = have.get(net_id) or Network(id=net_id)
                row.name = f"{spec.name}" if net_id in have else spec.name
                row.type = spec.type
                row.segmentation_id = spec.segmentation_id
                row.physnet = spec.physnet
                row.mtu = spec.mtu
                row.cidr = str(spec.cidr) if spec.cidr else None
                row.gateway = str(spec.gateway) if spec.gateway else None
                pool = spec.allocation_pool()
                row.allocation_start = str(pool[0]) if pool else None
                row.allocation_end = str(pool[1]) if pool else None
                s.add(row)
            s.flush()
            # A network that left the config stays while ports use it (a foreign key
            # holds it); it can no longer be chosen for new ports.

    # ------------------------------------------------------------------ create

    def create(self, req: CreateRequest) -> Accepted:
        return self.db.retrying(lambda s: self._create(s, req))

    def _create(self, s: Session, req: CreateRequest) -> Accepted:
        now = utcnow()
        if req.idempotency_key is not None:
            seen = s.get(IdempotencyKey, req.idempotency_key)
            if seen is not None:
                if seen.body_hash != req.body_hash:
                    raise errors.IdempotencyConflict(
                        field="Idempotency-Key", value=req.idempotency_key
                    )
                return Accepted(response=seen.response, replayed=True)

        # Lock the networks (PostgreSQL): concurrent creates on one network take turns
        # here instead of proposing the same lowest address and retrying. Taken before
        # placing: each create then sees the instances the previous one placed (READ
        # COMMITTED), instead of 8 concurrent creates all picking the same emptiest host.
        net_ids = sorted({str(n.uuid) for n in req.networks})
        s.execute(select(Network.id).where(Network.id.in_(net_ids)).with_for_update())
        hosts = self._place(s, req, now)
        per_net = {n.uuid: n for n in req.networks}
        wanted = {net_id: 0 for net_id in per_net}
        for net in req.networks:
            wanted[net.uuid] += len(req.names)
        addresses: dict[uuidlib.UUID, list[IPv4Address | None]] = {}
        for net_id, count in wanted.items():
            used = s.scalars(
                select(Port.fixed_ip).where(
                    Port.network_id == str(net_id), Port.fixed_ip.is_not(None)
                )
            )
            try:
                addresses[net_id] = ipam.free_addresses(
                    per_net[net_id], (ipam.address_int(a) for a in used if a), count
                )
            except ipam.NetworkExhausted as err:
                raise errors.NetworkExhaustedError(
                    field="networks", value=per_net[net_id].name, problem=str(err)
                ) from err

        casts: list[Cast] = []
        created: list[Instance] = []
        for name, host in zip(req.names, hosts, strict=True):
            inst = Instance(
                uuid=str(uuidlib.uuid4()),
                name=name,
                host=host,
                flavor=req.flavor.name,
                vcpus=req.flavor.vcpus,
                memory_mb=req.flavor.memory_mb,
                disk_gb=req.flavor.disk_gb,
                image=req.image,
                state="building",
                task="create",
                fault=None,
                request_id=req.request_id,
                created_at=now,
                updated_at=now,
                deleted_at=None,
            )
            s.add(inst)
            for position, net in enumerate(req.networks):
                s.add(
                    Port(
                        id=str(uuidlib.uuid4()),
                        instance_uuid=inst.uuid,
                        network_id=str(net.uuid),
                        host=host,
                        mac=ipam.new_mac(self.rng),
                        fixed_ip=_str_or_none(addresses[net.uuid].pop(0)),
                        mtu=net.mtu,
                        position=position,
                        state="pending",
                        created_at=now,
                    )
                )
            op = self._new_operation(s, "create", inst, req.request_id, now)
            self.add_event(
                s, now, op, inst, source="api", event="api.received", host=None, state="building"
            )
            created.append(inst)
        s.flush()
        for inst in created:
            op = self.open_operations(s, inst.uuid)[0]
            casts += self.casts_for(s, op)
        response = {
            "request_id": req.request_id,
            "operation": "create",
            "instances": [views.instance(s, inst) for inst in created],
        }
        if req.idempotency_key is not None:
            s.add(
                IdempotencyKey(
                    key=req.idempotency_key,
                    body_hash=req.body_hash,
                    request_id=req.request_id,
                    response=response,
                    created_at=now,
                )
            )
        return Accepted(response=response, casts=casts)

    def _place(self, s: Session, req: CreateRequest, now: datetime) -> list[str]:
        loads = self._loads(s, now, host=req.host)
        count = len(req.names)
        if req.host is not None:
            load = loads.get(req.host)
            if load is None:
                raise errors.HostUnavailable(
                    field="host", value=req.host, problem="no compute-agent of that host was heard"
                )
            if not load.alive:
                raise errors.HostUnavailable(
                    field="host",
                    value=req.host,
                    problem=f"its compute-agent is down (no heartbeat for more than"
                    f" {self.agent_down_time.total_seconds():.0f}s)",
                )
            if not load.has_image(req.image):
                raise errors.UnknownImage(
                    field="image",
                    value=req.image,
                    problem=f"host {req.host!r} has no such image",
                    valid=sorted(load.images or ()),
                )
            try:
                scheduler.check_host(load, req.flavor, count)
            except scheduler.HostUnfit as err:
                raise errors.HostNoCapacity(field="host", value=req.host, problem=str(err)) from err
            return [req.host] * count
        live = [h for h in loads.values() if h.alive]
        having = [h for h in loads.values() if h.has_image(req.image)]
        if live and not any(h.alive for h in having):
            raise errors.UnknownImage(
                field="image",
                value=req.image,
                problem="no live compute host has it",
                valid=sorted({i for h in live for i in h.images or ()}),
            )
        try:
            return scheduler.place(having, req.flavor, count)
        except scheduler.NoHostFits as err:
            raise errors.NoHost(field="host", value=None, problem=str(err)) from err

    def _loads(
        self, s: Session, now: datetime, host: str | None = None
    ) -> dict[str, scheduler.HostLoad]:
        # plain rows, not ORM objects: every create reads every compute host
        q = select(Agent.host, Agent.last_seen, Agent.vcpus, Agent.memory_mb, Agent.images).where(
            Agent.kind == "compute"
        )
        if host is not None:
            # Taking the host's row lock makes concurrent placements on one host (two
            # controller replicas) count each other's instances.
            q = q.where(Agent.host == host).with_for_update()
        agents = list(s.execute(q))
        of_hosts = [Instance.host == host] if host is not None else []
        used = dict(
            (row.host, (row.vcpus or 0, row.memory_mb or 0))
            for row in s.execute(
                select(
                    Instance.host,
                    func.sum(Instance.vcpus).label("vcpus"),
                    func.sum(Instance.memory_mb).label("memory_mb"),
                )
                .where(Instance.deleted_at.is_(None), Instance.state != "error", *of_hosts)
                .group_by(Instance.host)
            )
        )
        out: dict[str, scheduler.HostLoad] = {}
        for a in agents:
            vcpus_used, mem_used = used.get(a.host, (0, 0))
            out[a.host] = scheduler.HostLoad(
                host=a.host,
                alive=self._heard_since(a.last_seen, now),
                vcpus=a.vcpus or 0,
                memory_mb=a.memory_mb or 0,
                vcpus_used=int(vcpus_used),
                memory_mb_used=int(mem_used),
                images=frozenset(a.images) if a.images is not None else None,
            )
        return out

    def _alive(self, agent: Agent, now: datetime) -> bool:
        return self._heard_since(agent.last_seen, now)

    def _heard_since(self, last_seen: datetime, now: datetime) -> bool:
        """Heard within agent_down_time, counted from where the event queue is: a
        heartbeat still queued behind a backlog is not missing."""
        return now - views.utc(last_seen) <= self.agent_down_time + self.event_lag

    def heard(self, sent_at: datetime) -> None:
        """An event sent at `sent_at` is being applied now: the lag behind the agents
        (never negative; at most 10 x agent_down_time, so a stuck queue still ends in
        `down`)."""
        lag = utcnow() - views.utc(sent_at)
        self.event_lag = max(timedelta(0), min(lag, 10 * self.agent_down_time))

    # ------------------------------------------------------------------ delete, reboot

    def delete(self, ref: str) -> Accepted:
        def work(s: Session) -> Accepted:
            now = utcnow()
            inst = self.resolve(s, ref, lock=True)
            rid = _request_id()
            # A delete overrides whatever else is in flight: the build it races is
            # cancelled by the compute-agent (it refuses a build of a deleted uuid).
            for op in self.open_operations(s, inst.uuid):
                self.finish_operation(s, op, now, "error", "superseded by a delete", inst)
            inst.task = "delete"
            inst.state = "deleting"
            inst.request_id = rid
            inst.updated_at = now
            op = self._new_operation(s, "delete", inst, rid, now)
            self.add_event(s, now, op, inst, source="api", event="api.received", host=None)
            return Accepted(
                response={
                    "request_id": rid,
                    "operation": "delete",
                    "instances": [views.instance(s, inst)],
                },
                casts=self.casts_for(s, op),
            )

        return self.db.retrying(work)

    def reboot(self, ref: str, hard: bool) -> Accepted:
        def work(s: Session) -> Accepted:
            now = utcnow()
            inst = self.resolve(s, ref, lock=True)
            busy = self.open_operations(s, inst.uuid)
            if busy:
                raise errors.InstanceBusy(
                    field="instance", value=ref, task=busy[0].kind, request_id=busy[0].request_id
                )
            rid = _request_id()
            inst.task = "reboot"
            inst.request_id = rid
            inst.updated_at = now
            op = self._new_operation(s, "reboot", inst, rid, now, hard=hard)
            self.add_event(s, now, op, inst, source="api", event="api.received", host=None)
            return Accepted(
                response={
                    "request_id": rid,
                    "operation": "reboot",
                    "instances": [views.instance(s, inst)],
                },
                casts=self.casts_for(s, op),
            )

        return self.db.retrying(work)

    # ------------------------------------------------------------------ operations

    def _new_operation(
        self,
        s: Session,
        kind: str,
        inst: Instance,
        request_id: str,
        now: datetime,
        hard: bool = False,
    ) -> Operation:
        op = Operation(
            id=str(uuidlib.uuid4()),
            request_id=request_id,
            kind=kind,
            instance_uuid=inst.uuid,
            host=inst.host,
            hard=hard,
            state="pending",
            fault=None,
            attempts=0,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        s.add(op)
        return op

    def preload_open_operations(self, s: Session, instance_uuids: Sequence[str]) -> None:
        """Load the open operations of these instances (locked by the caller) in one
        statement; `open_operations` then answers from the session for them."""
        found: dict[str, list[Operation]] = {u: [] for u in instance_uuids}
        for start in range(0, len(instance_uuids), 500):
            for op in s.scalars(
                select(Operation)
                .where(
                    Operation.instance_uuid.in_(instance_uuids[start : start + 500]),
                    Operation.state.in_(OPEN_STATES),
                )
                .order_by(Operation.created_at.desc())
            ):
                found[op.instance_uuid].append(op)
        s.info.setdefault("open_operations", {}).update(found)

    def open_operations(self, s: Session, instance_uuid: str) -> list[Operation]:
        preloaded = s.info.get("open_operations", {}).get(instance_uuid)
        if preloaded is not None:
            # the session's own objects: an operation finished in this transaction is
            # no longer open; none is opened while reports are applied
            return [op for op in preloaded if op.state in OPEN_STATES]
        return list(
            s.scalars(
                select(Operation)
                .where(Operation.instance_uuid == instance_uuid, Operation.state.in_(OPEN_STATES))
                .order_by(Operation.created_at.desc())
            )
        )

    def finish_operation(
        self,
        s: Session,
        op: Operation,
        now: datetime,
        state: Literal["done", "error"],
        fault: str | None,
        inst: Instance | None,
    ) -> None:
        op.state = state
        op.fault = fault
        op.updated_at = now
        op.finished_at = now
        after_commit(
            s,
            functools.partial(
                log.info,
                "operation_finished",
                operation_id=op.id,
                operation=op.kind,
                request_id=op.request_id,
                instance_uuid=op.instance_uuid,
                state=state,
                fault=fault,
            ),
        )
        self.add_event(
            s,
            now,
            op,
            inst,
            source="controller",
            event=f"operation.{state}",
            host=op.host,
            state=(inst.state if inst is not None else None) if state == "done" else "error",
            reason=fault,
            final=True,
        )

    def mark_sent(
        self, sent: Mapping[str, datetime], attempts: Mapping[str, int] | None = None
    ) -> None:
        """The casts of these operations went out at the given times: record the hop.

        `attempts`: which attempt each one was (`Cast.attempt`; default the operation's
        latest). The counter itself was moved when the attempt was claimed, so this
        never counts; a hop older than the latest claim (another replica re-drove the
        operation meanwhile) is left to that claim's own record.
        """
        if not sent:
            return

        def work(s: Session) -> None:
            for op in s.scalars(
                select(Operation)
                .where(Operation.id.in_(list(sent)))
                .order_by(Operation.id)  # one lock order for every writer of a batch
                .with_for_update()
            ):
                now = sent[op.id]
                attempt = (attempts or {}).get(op.id, op.attempts)
                if op.state not in OPEN_STATES or attempt < op.attempts:
                    continue
                retry = attempt > 1
                op.state = "sent"
                op.updated_at = now
                inst = s.get(Instance, op.instance_uuid)
                self.add_event(
                    s,
                    now,
                    op,
                    inst,
                    source="controller",
                    event="operation.retried" if retry else "casts.sent",
                    host=op.host,
                    reason=f"attempt {attempt}" if retry else None,
                )

        self.db.retrying(work)

    def note_cast_failed(self, operation_id: str, reason: str, attempt: int = 0) -> None:
        """A cast could not be published; the operation stays open for the re-drive.

        The attempt it claimed is handed back (a cast that never left does not count
        against `max_attempts`) unless a newer one was claimed meanwhile.
        """

        def work(s: Session) -> None:
            op = s.get(Operation, operation_id, with_for_update=True)
            if op is None:
                return
            if attempt and op.attempts == attempt and op.state in OPEN_STATES:
                op.attempts = attempt - 1
            inst = s.get(Instance, op.instance_uuid)
            self.add_event(
                s,
                utcnow(),
                op,
                inst,
                source="controller",
                event="casts.failed",
                host=op.host,
                reason=reason,
            )

        self.db.retrying(work)

    def stalled(
        self, redrive_after: float, operation_timeout: float, max_attempts: int, limit: int = 200
    ) -> tuple[list[Cast], list[str]]:
        """Re-drive what stalls: casts to send again, and the operations given up on.

        An open operation with no news for `redrive_after` seconds (plus how far this
        controller's event consumer is behind the agents) is cast again with the same
        ids (the agents are idempotent by uuid; one still building says so); one older
        than `operation_timeout` or cast `max_attempts` times fails with a named reason.
        Rows are claimed with SKIP LOCKED on PostgreSQL, so two controllers never drive
        the same operation.

        The claim is what this transaction commits: `updated_at` set to now (no replica
        picks the operation again for `redrive_after`) and `attempts` counted up
        (`casts_for`), both under the row lock; the casts go out after the commit and
        carry the attempt they claimed. A replica killed between the commit and the
        cast leaves the operation open: the next claim, `redrive_after` later, casts it.
        """
        now = utcnow()
        # Quiet counted from where the event queue is, as for the agents' liveness: news
        # of an operation still queued behind a backlog is not an agent's silence, and a
        # re-drive then would only add casts, events and backlog.
        quiet_since = now - timedelta(seconds=redrive_after) - self.event_lag

        def work(s: Session) -> tuple[list[Cast], list[str]]:
            ops = list(
                s.scalars(
                    select(Operation)
                    .where(
                        Operation.state.in_(OPEN_STATES),
                        or_(Operation.state == "pending", Operation.updated_at < quiet_since),
                    )
                    .order_by(Operation.updated_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            casts: list[Cast] = []
            failed: list[str] = []
            for op in ops:
                inst = s.get(Instance, op.instance_uuid)
                age = (now - views.utc(op.created_at)).total_seconds()
                if inst is None:
                    continue
                if age > operation_timeout or op.attempts >= max_attempts:
                    reason = (
                        f"no answer from host {op.host!r} for the {op.kind} after"
                        f" {op.attempts} attempt(s) in {age:.0f}s"
                    )
                    self._give_up(s, op, inst, now, reason)
                    failed.append(op.id)
                    continue
                if op.state == "pending" and views.utc(op.updated_at) > now - timedelta(
                    seconds=min(redrive_after, 10.0)
                ):
                    # its first cast may still be on its way out (a busy controller
                    # publishes after its commit); a second copy now would only race it
                    continue
                op.updated_at = now  # claimed: not picked again before redrive_after
                casts += self.casts_for(s, op)
            return casts, failed

        return self.db.retrying(work)

    def _give_up(
        self, s: Session, op: Operation, inst: Instance, now: datetime, reason: str
    ) -> None:
        inst.fault = reason
        inst.task = None
        inst.updated_at = now
        if op.kind == "create":
            inst.state = "error"
        self.finish_operation(s, op, now, "error", reason, inst)
        if op.kind == "create":
            # Nothing may stay behind for a build that will not happen: the ports are
            # unwired (a hint; the l2-agent is idempotent) and their addresses released.
            self.release_ports(s, inst, now)

    def release_ports(self, s: Session, inst: Instance, now: datetime) -> list[Cast]:
        ports = list(s.scalars(select(Port).where(Port.instance_uuid == inst.uuid)))
        casts = [
            Cast(
                "l2",
                p.host,
                "port_deleted",
                PortDeleted(
                    request_id=inst.request_id,
                    host=p.host,
                    port_id=uuidlib.UUID(p.id),
                    network_id=uuidlib.UUID(p.network_id),
                    # newer than every create of it: a create delivered late is stale
                    revision=views.PORT_DELETED_REVISION,
                ),
            )
            for p in ports
        ]
        # Kept for the events retention: a restarted l2-agent is told these are gone.
        for p in ports:
            if s.get(ReleasedPort, p.id) is None:
                s.add(
                    ReleasedPort(
                        id=p.id,
                        host=p.host,
                        network_id=p.network_id,
                        instance_uuid=p.instance_uuid,
                        released_at=now,
                    )
                )
        s.execute(delete(Port).where(Port.instance_uuid == inst.uuid))
        return casts

    # ------------------------------------------------------------------ casts

    def casts_for(self, s: Session, op: Operation) -> list[Cast]:
        """The casts that carry `op` out, as its next attempt: the attempt is claimed
        here (`op.attempts` counted up in the caller's transaction), so two replicas
        never send, nor count, the same attempt."""
        inst = s.get(Instance, op.instance_uuid)
        if inst is None:
            return []
        op.attempts = (op.attempts or 0) + 1
        attempt = op.attempts
        if op.kind == "create":
            return self._casts_for_create(s, inst, op.id, attempt)
        rid = op.request_id
        uuid = uuidlib.UUID(inst.uuid)
        if op.kind == "delete":
            msg: Message = DeleteInstance(request_id=rid, host=inst.host, instance_uuid=uuid)
            return [Cast("compute", inst.host, "delete_instance", msg, op.id, attempt)]
        msg = RebootInstance(request_id=rid, host=inst.host, instance_uuid=uuid, hard=op.hard)
        return [Cast("compute", inst.host, "reboot_instance", msg, op.id, attempt)]

    def _casts_for_create(
        self, s: Session, inst: Instance, op_id: str | None, attempt: int
    ) -> list[Cast]:
        ports = [views.wire_port(p) for p in self._ports(s, inst.uuid)]
        casts = [
            Cast(
                "l2",
                inst.host,
                "port_created",
                PortCreated(request_id=inst.request_id, host=inst.host, port=p),
                op_id,
                attempt,
            )
            for p in ports
        ]
        casts.append(
            Cast(
                "compute",
                inst.host,
                "build_instance",
                BuildInstance(
                    request_id=inst.request_id, host=inst.host, instance=_spec(inst, ports)
                ),
                op_id,
                attempt,
            )
        )
        return casts

    def _ports(self, s: Session, instance_uuid: str) -> list[Port]:
        return list(
            s.scalars(
                select(Port).where(Port.instance_uuid == instance_uuid).order_by(Port.position)
            )
        )

    # ------------------------------------------------------------------ resync

    def desired_state(self, host: str, kind: AgentKind, retention_days: float) -> DesiredState:
        """What `host`'s agent of `kind` should have, and what it is known to have lost.

        compute: `instances` = every instance of the host that is neither deleted, nor
        failed (state error), nor being deleted (its delete is re-driven by the
        reconciler, so it is in neither list), each as build_instance carries it;
        `deleted_instances` = the host's instances deleted within `retention_days`, and
        those whose create failed (their ports and addresses are released).
        l2: `ports` = every port row of the host; `released_ports` = the host's ports
        released within `retention_days`. Nothing else is known to be gone: an agent
        must leave alone what is merely absent from both lists.
        """
        since = utcnow() - timedelta(days=retention_days)
        with self.db.reading() as s:
            if kind == "compute":
                live = list(
                    s.scalars(
                        select(Instance)
                        .where(
                            Instance.host == host,
                            Instance.deleted_at.is_(None),
                            Instance.state.not_in(("error", "deleting", "deleted")),
                            or_(Instance.task.is_(None), Instance.task != "delete"),
                        )
                        .order_by(Instance.created_at, Instance.uuid)
                    )
                )
                by_instance: dict[str, list[WirePort]] = {}
                uuids = [i.uuid for i in live]
                for start in range(0, len(uuids), 500):
                    for p in s.scalars(
                        select(Port)
                        .where(Port.instance_uuid.in_(uuids[start : start + 500]))
                        .order_by(Port.position)
                    ):
                        by_instance.setdefault(p.instance_uuid, []).append(views.wire_port(p))
                deleted = s.scalars(
                    select(Instance.uuid)
                    .where(
                        Instance.host == host,
                        Instance.deleted_at.is_not(None),
                        Instance.deleted_at >= since,
                    )
                    .order_by(Instance.deleted_at, Instance.uuid)
                )
                # A create that failed or was given up released its ports and addresses:
                # a guest built late for it (a cast still queued for a stopped agent)
                # would run on addresses given to someone else. It is as gone as a
                # deleted one.
                failed = s.scalars(
                    select(Instance.uuid)
                    .where(
                        Instance.host == host,
                        Instance.deleted_at.is_(None),
                        Instance.state == "error",
                        ~select(Port.id).where(Port.instance_uuid == Instance.uuid).exists(),
                    )
                    .order_by(Instance.updated_at, Instance.uuid)
                )
                return DesiredState(
                    host=host,
                    kind="compute",
                    instances=[_spec(i, by_instance.get(i.uuid, [])) for i in live],
                    deleted_instances=[uuidlib.UUID(u) for u in [*deleted, *failed]],
                )
            ports = s.scalars(
                select(Port).where(Port.host == host).order_by(Port.instance_uuid, Port.position)
            )
            released = s.scalars(
                select(ReleasedPort.id)
                .where(ReleasedPort.host == host, ReleasedPort.released_at >= since)
                .order_by(ReleasedPort.released_at, ReleasedPort.id)
            )
            return DesiredState(
                host=host,
                kind="l2",
                ports=[views.wire_port(p) for p in ports],
                released_ports=[uuidlib.UUID(r) for r in released],
            )

    def live_hosts(self, kind: AgentKind) -> list[str]:
        """Hosts whose agent of `kind` sent a heartbeat within agent_down_time."""
        now = utcnow()
        with self.db.reading() as s:
            agents = s.scalars(select(Agent).where(Agent.kind == kind).order_by(Agent.host))
            return [a.host for a in agents if self._alive(a, now)]

    # ------------------------------------------------------------------ timeline

    def add_event(
        self,
        s: Session,
        at: datetime,
        op: Operation | None,
        inst: Instance | None,
        *,
        source: str,
        event: str,
        host: str | None,
        step: str | None = None,
        state: str | None = None,
        reason: str | None = None,
        port_id: str | None = None,
        final: bool = False,
        request_id: str | None = None,
    ) -> None:
        """Add a timeline row. In a session marked `redelivered` (events the broker
        handed over again, applied before: a crash between commit and ack) a row that
        is already there is not added twice."""
        inst_uuid = inst.uuid if inst else None
        if s.info.get("redelivered") and _event_recorded(s, at, event, host, inst_uuid, port_id):
            return
        s.add(
            Event(
                at=at,
                recorded_at=utcnow(),
                request_id=request_id or (op.request_id if op else None),
                operation_id=op.id if op else None,
                operation=op.kind if op else None,
                instance_uuid=inst_uuid,
                instance=inst.name if inst else None,
                port_id=port_id,
                host=host,
                source=source,
                event=event,
                step=step,
                state=state,
                reason=reason,
                final=final,
            )
        )

    # ------------------------------------------------------------------ reading

    def resolve(self, s: Session, ref: str, lock: bool = False) -> Instance:
        """The instance named by uuid, or by a name no other live instance has."""
        as_uuid = _as_uuid(ref)
        if as_uuid is not None:
            q = select(Instance).where(Instance.uuid == str(as_uuid))
            inst = s.scalars(q.with_for_update() if lock else q).first()
            if inst is None or inst.deleted_at is not None:
                raise errors.InstanceNotFound(field="instance", value=ref)
            return inst
        q = select(Instance).where(Instance.name == ref, Instance.deleted_at.is_(None))
        found = list(s.scalars(q.with_for_update() if lock else q))
        if not found:
            raise errors.InstanceNotFound(field="instance", value=ref)
        if len(found) > 1:
            raise errors.AmbiguousName(
                field="instance",
                value=ref,
                count=len(found),
                valid=sorted(f"{i.uuid} on {i.host}" for i in found),
            )
        return found[0]

    def list_instances(
        self, host: str | None = None, state: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        where: list[ColumnElement[bool]] = []
        if state == "deleted":
            where.append(Instance.deleted_at.is_not(None))
        else:
            where.append(Instance.deleted_at.is_(None))
            if state is not None:
                where.append(Instance.state == state)
        if host is not None:
            where.append(Instance.host == host)
        if name is not None:
            where.append(Instance.name == name)
        with self.db.reading() as s:
            return views.instance_list(s, where)

    def show(self, ref: str) -> dict[str, Any]:
        with self.db.reading() as s:
            inst = self.resolve(s, ref)
            out = views.instance(s, inst)
            ops = s.scalars(
                select(Operation)
                .where(Operation.instance_uuid == inst.uuid)
                .order_by(Operation.created_at.desc())
                .limit(20)
            )
            out["operations"] = [views.operation(op) for op in ops]
            return out

    def instance_host(self, ref: str) -> tuple[str, str]:
        with self.db.reading() as s:
            inst = self.resolve(s, ref)
            return inst.uuid, inst.host

    def timeline(self, ref: str) -> dict[str, Any]:
        with self.db.reading() as s:
            inst = self.resolve(s, ref)
            events = s.scalars(
                select(Event).where(Event.instance_uuid == inst.uuid).order_by(Event.at, Event.id)
            )
            return {"instance": views.instance(s, inst), "events": [views.event(e) for e in events]}

    def ports(self, host: str | None = None, instance: str | None = None) -> list[dict[str, Any]]:
        with self.db.reading() as s:
            q = select(Port).order_by(Port.host, Port.instance_uuid, Port.position)
            if host is not None:
                q = q.where(Port.host == host)
            if instance is not None:
                q = q.where(Port.instance_uuid == instance)
            return views.ports(s, list(s.scalars(q)), with_owner=True)

    def hosts(self) -> list[dict[str, Any]]:
        now = utcnow()
        with self.db.reading() as s:
            loads = self._loads(s, now)
            agents = s.scalars(select(Agent).order_by(Agent.host, Agent.kind))
            return [
                views.agent(
                    a, self._alive(a, now), loads.get(a.host) if a.kind == "compute" else None
                )
                for a in agents
            ]

    def operations(
        self, request_id: str | None = None, instance: str | None = None
    ) -> list[dict[str, Any]]:
        with self.db.reading() as s:
            q = select(Operation).order_by(Operation.created_at.desc()).limit(500)
            if request_id is not None:
                q = q.where(Operation.request_id == request_id)
            if instance is not None:
                q = q.where(Operation.instance_uuid == instance)
            return [views.operation(op) for op in s.scalars(q)]

    def operation(self, op_id: str) -> dict[str, Any]:
        with self.db.reading() as s:
            op = s.get(Operation, op_id) if _as_uuid(op_id) else None
            if op is None:
                raise errors.OperationNotFound(field="id", value=op_id)
            return views.operation(op)

    def events_after(
        self,
        after: int,
        *,
        request_id: str | None = None,
        instance: str | None = None,
        host: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Timeline rows after id `after`, in id order, for a reader that resumes after
        the last id it got.

        PostgreSQL hands out ids when rows are inserted, not when they commit: two
        writers (two replicas, or the API beside the event consumer) may commit id 101
        before id 100, and a reader that took 101 would never ask for 100 again. So
        when an id is missing below a row (a writer still open, or one rolled back),
        that row and those after it wait until they are EVENT_GAP_HOLD_S old; a commit
        that takes longer than that is the one case a reader can miss. SQLite
        serialises writers: nothing is held.
        """
        with self.db.reading() as s:
            q = select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
            if request_id is not None:
                q = q.where(Event.request_id == request_id)
            if instance is not None:
                q = q.where(Event.instance_uuid == instance)
            if host is not None:
                # an api/controller hop has no host of its own: keep it when its
                # instance lives on that host
                q = q.where(
                    or_(
                        Event.host == host,
                        and_(
                            Event.host.is_(None),
                            Event.instance_uuid.in_(
                                select(Instance.uuid).where(Instance.host == host)
                            ),
                        ),
                    )
                )
            rows = list(s.scalars(q))
            if rows and not self.db.is_sqlite:
                rows = self._before_gaps(s, after, rows)
            return [views.event(e) for e in rows]

    def _before_gaps(self, s: Session, after: int, rows: list[Event]) -> list[Event]:
        top = rows[-1].id
        floor = max(after, top - 5000)
        ids = (
            select(Event.id.label("id"), func.lag(Event.id).over(order_by=Event.id).label("prev"))
            .where(Event.id > floor, Event.id <= top)
            .subquery()
        )
        gap_end = s.scalar(
            select(func.min(ids.c.id)).where(ids.c.id - func.coalesce(ids.c.prev, floor) > 1)
        )
        if gap_end is None:
            return rows
        settled = utcnow() - timedelta(seconds=EVENT_GAP_HOLD_S)
        out = []
        for row in rows:
            if row.id >= gap_end and views.utc(row.recorded_at) > settled:
                break
            out.append(row)
        return out

    def last_event_id(self) -> int:
        with self.db.reading() as s:
            return int(s.scalar(select(func.max(Event.id))) or 0)

    def prune_events(self, older_than_days: float) -> int:
        cutoff = utcnow() - timedelta(days=older_than_days)
        with self.db.writing() as s:
            pruned = 0
            for stmt in (
                delete(Event).where(Event.recorded_at < cutoff),
                delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff),
                delete(ReleasedPort).where(ReleasedPort.released_at < cutoff),
            ):
                pruned += int(getattr(s.execute(stmt), "rowcount", 0) or 0)
            return pruned


def _spec(inst: Instance, ports: list[WirePort]) -> InstanceSpec:
    """The instance as build_instance carries it (and a compute resync lists it)."""
    return InstanceSpec(
        uuid=uuidlib.UUID(inst.uuid),
        name=inst.name,
        flavor=inst.flavor,
        image=inst.image,
        ports=ports,
        created_at=views.utc(inst.created_at),
    )


def _request_id() -> str:
    return f"req-{uuidlib.uuid4()}"


def _as_uuid(ref: str) -> uuidlib.UUID | None:
    try:
        return uuidlib.UUID(ref)
    except ValueError:
        return None


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


__all__ = ["Accepted", "Cast", "CreateRequest", "Store", "WirePort"]


def _event_recorded(
    s: Session,
    at: datetime,
    event: str,
    host: str | None,
    instance_uuid: str | None,
    port_id: str | None,
) -> bool:
    """A timeline row of this event (same time, name, host, instance, port) exists."""
    conds = [Event.at == at, Event.event == event]
    for column, value in (
        (Event.host, host),
        (Event.instance_uuid, instance_uuid),
        (Event.port_id, port_id),
    ):
        conds.append(column.is_(None) if value is None else column == value)
    return s.scalar(select(Event.id).where(*conds).limit(1)) is not None
