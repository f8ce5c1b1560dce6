"""The compute-agent's RPC endpoint: what arrives from the broker, and the answers.

Every public method is an endpoint method (oslo exposes them on topic `compute`,
server = host) and is the boundary: it validates what arrived, binds request_id and
instance_uuid to the log context, catches everything, logs it once and reports it
(an error notification when an instance uuid can be salvaged, agent.message_rejected
otherwise); nothing raised in a cast may stop the server consuming. RPC casts are
acknowledged before the endpoint runs (docs/platform.md): a build accepted here is the
pipeline's to finish or to fail visibly.

Builds go to `builds.BuildPipeline`; a port.vif_plugged for a running guest goes to
`replug.Replugger` (its tap may have been re-created under QEMU); delete and reboot run
here under the same per-instance lock and tombstones (`builds.InstanceTable`); list/get
read the host's truth (libvirt) through `records`. It must not import libvirt, qemu-img or oslo.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog

from agents.compute.builds import DELETED, BuildPipeline, InstanceTable
from agents.compute.capacity import capacity
from agents.compute.errors import InstanceBuilding, InstanceNotFound
from agents.compute.images import ImageStore
from agents.compute.reconcile import Reconciler
from agents.compute.records import (
    GuestHost,
    building_info,
    instance_info,
    owned_domains,
    read_record,
)
from agents.compute.replug import Replugger, TapState
from agents.compute.reporter import Reporter
from agents.compute.settings import ComputeConfig
from agents.compute.taps import TapProbe
from agents.compute.telemetry import ComputeMetrics
from agents.compute.waiter import PLUGGED, VifWaiter
from common.agent import AgentEndpoint, CastSpec, Intake, Ticket, ping_reply
from common.errors import AgentsError, InvalidMessage
from common.journal import Journal
from common.messages import (
    MAX_IMAGES,
    AgentHeartbeat,
    BuildInstance,
    ConsoleLog,
    DeleteInstance,
    DesiredState,
    InstanceInfo,
    InstanceList,
    InstanceRef,
    Message,
    MessageRejected,
    PingReply,
    RebootInstance,
    VifEvent,
    new_request_id,
    salvage_uuid,
)
from common.rpc import InvalidPayload, expect, expected_errors
from common.workers import KeyedSerialExecutor

log = structlog.get_logger()


class ComputeManager(AgentEndpoint):
    # what the wire may call (common.rpc refuses every other public method by name)
    RPC_METHODS = frozenset(
        {
            "build_instance",
            "delete_instance",
            "reboot_instance",
            "report_state",
            "ping",
            "list_instances",
            "get_instance",
            "get_console_log",
        }
    )

    def __init__(
        self,
        config: ComputeConfig,
        hypervisor: GuestHost,
        images: ImageStore,
        waiter: VifWaiter,
        reporter: Reporter,
        metrics: ComputeMetrics,
        version: str,
        clock: Callable[[], float] = time.monotonic,
        taps: TapState | None = None,
        journal: Journal | None = None,
        executor: KeyedSerialExecutor | None = None,
        tombstones: Path | None = None,
    ) -> None:
        self.host = config.DEFAULT.host
        self.settings = config.compute
        self.hv = hypervisor
        self.images = images
        self.waiter = waiter
        self.reporter = reporter
        self.metrics = metrics
        self.version = version
        self.clock = clock
        self.started_at = datetime.now(UTC)
        self._started_mono = clock()
        self.table = InstanceTable(clock, tombstones)
        # Builds a delete cancelled at the boundary: that delete reports them deleted.
        self._cancelled: set[UUID] = set()
        self._cancelled_lock = threading.Lock()
        self.pipeline = BuildPipeline(
            config, hypervisor, images, waiter, reporter, metrics, self.table, clock
        )
        self._reconciler = Reconciler(hypervisor, images, reporter, metrics, self.host)
        self.replugger = Replugger(
            hypervisor, taps if taps is not None else TapProbe(), self.table, reporter, metrics
        )
        self.pipeline.on_finished = self.replugger.build_finished
        # Deletes and reboots run here, per instance in order of arrival; a build only
        # passes through on its way to the pipeline's own pool (it may wait for its ports).
        casts = {
            "build_instance": CastSpec(BuildInstance, _uuid_of, self._build),
            "delete_instance": CastSpec(
                DeleteInstance, _uuid_of, self._delete_work, admit=self._cancel_build
            ),
            "reboot_instance": CastSpec(RebootInstance, _uuid_of, self._reboot_work),
        }
        self.intake = Intake(
            self.host,
            casts,
            executor or KeyedSerialExecutor(4, name="compute-intake"),
            journal,
            self._reject,
            clock,
        )

    # ================================================================== casts

    def build_instance(self, *args: Any, **kwargs: Any) -> None:
        self._take("build_instance", args, kwargs)

    def delete_instance(self, *args: Any, **kwargs: Any) -> None:
        self._take("delete_instance", args, kwargs)

    def reboot_instance(self, *args: Any, **kwargs: Any) -> None:
        self._take("reboot_instance", args, kwargs)

    # ------------------------------------------------------------------ the work

    def _build(self, msg: BuildInstance, received: float, ticket: Ticket) -> None:
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id, instance_uuid=str(msg.instance.uuid)
        ):
            self.pipeline.submit(msg, received, ticket.defer())

    def _cancel_build(self, msg: DeleteInstance) -> None:
        """At the boundary, before queueing: a build in flight of this instance stops now
        (its vif wait is woken), so the delete behind it does not wait for its ports."""
        task = self.table.tombstone(msg.instance_uuid)
        if task is not None:
            task.cancel(DELETED)
            with self._cancelled_lock:
                self._cancelled.add(msg.instance_uuid)

    def _delete_work(self, msg: DeleteInstance, received: float, _ticket: Ticket) -> None:
        uuid, rid = msg.instance_uuid, msg.request_id
        with structlog.contextvars.bound_contextvars(request_id=rid, instance_uuid=str(uuid)):
            try:
                self._delete(msg)
            except Exception as err:
                level = log.warning if isinstance(err, AgentsError) else log.exception
                level("delete_failed", error=str(err))
                self.metrics.deletes.labels("error").inc()
                self.reporter.instance(
                    "instance.delete.error", uuid, rid, error=True, reason=str(err)
                )

    def _reboot_work(self, msg: RebootInstance, received: float, _ticket: Ticket) -> None:
        uuid, rid = msg.instance_uuid, msg.request_id
        with structlog.contextvars.bound_contextvars(request_id=rid, instance_uuid=str(uuid)):
            kind = "hard" if msg.hard else "soft"
            building = self.table.get(uuid)
            if building is not None:
                # Refused at once: waiting for the build's lock would hold this intake
                # worker through the build's vif wait (the controller never asks this:
                # it refuses a reboot while another operation is open).
                err = InstanceBuilding(
                    instance=str(uuid), request_id=building.message.request_id, action="reboot"
                )
                log.warning("reboot_refused", error=str(err))
                self.metrics.reboots.labels("error").inc()
                self.reporter.instance(
                    "instance.reboot.error", uuid, rid, error=True, state="building",
                    reason=str(err),
                )  # fmt: skip
                return
            self.reporter.instance("instance.reboot.start", uuid, rid, step=kind)
            try:
                with self.table.locked(uuid):
                    domain = self.hv.get(uuid)
                    if domain is None or read_record(domain) is None:
                        raise InstanceNotFound(instance=str(uuid))
                    self.hv.reboot(uuid, msg.hard)
                log.info("instance_rebooted", kind=kind)
                self.metrics.reboots.labels("ok").inc()
                self.reporter.instance("instance.reboot.end", uuid, rid, state="running", step=kind)
            except Exception as err:
                level = log.warning if isinstance(err, AgentsError) else log.exception
                level("reboot_failed", error=str(err))
                self.metrics.reboots.labels("error").inc()
                self.reporter.instance(
                    "instance.reboot.error", uuid, rid, error=True, reason=str(err)
                )

    def report_state(self, ctxt: Any, **extra: Any) -> None:
        try:
            self.emit_heartbeat()
        except Exception as err:
            log.exception("report_state_failed", error=str(err))
            self.metrics.rpc_errors.labels("report_state").inc()

    # ================================================================== calls

    def ping(self, ctxt: Any, **extra: Any) -> PingReply:
        return ping_reply(self.host, "compute", self.version, self.uptime())

    def list_instances(self, ctxt: Any, **extra: Any) -> InstanceList:
        infos: dict[UUID, InstanceInfo] = {}
        for domain, record in owned_domains(self.hv):
            building = self.table.get(domain.uuid) is not None
            infos[domain.uuid] = instance_info(domain, record, self.host, building)
        for task in self.table.tasks():
            if task.uuid not in infos:
                infos[task.uuid] = building_info(task.message.instance, self.host)
        self.metrics.instances.set(len(infos))
        return InstanceList(
            host=self.host, instances=sorted(infos.values(), key=lambda i: (i.name, str(i.uuid)))
        )

    @expected_errors(InstanceNotFound, InvalidMessage)
    def get_instance(self, ctxt: Any, payload: object = None, **extra: Any) -> InstanceInfo:
        ref = self._accept_call("get_instance", payload)
        domain = self.hv.get(ref.instance_uuid)
        record = read_record(domain) if domain is not None else None
        task = self.table.get(ref.instance_uuid)
        if domain is not None and record is not None:
            return instance_info(domain, record, self.host, building=task is not None)
        if task is not None:
            return building_info(task.message.instance, self.host)
        raise InstanceNotFound(instance=str(ref.instance_uuid))

    @expected_errors(InstanceNotFound, InvalidMessage)
    def get_console_log(self, ctxt: Any, payload: object = None, **extra: Any) -> ConsoleLog:
        ref = self._accept_call("get_console_log", payload)
        domain = self.hv.get(ref.instance_uuid)
        if domain is None or read_record(domain) is None:
            raise InstanceNotFound(instance=str(ref.instance_uuid))
        # The path is derived from the uuid, never read from the domain: a domain XML is
        # not trusted to name which file of this host we return.
        path = self.images.console_log_path(ref.instance_uuid)
        tail = self.images.console_tail(path, ref.max_bytes)
        return ConsoleLog(instance_uuid=ref.instance_uuid, text=tail.text, truncated=tail.truncated)

    # ================================================================== vif events

    def on_vif_event(self, event_type: str, payload: object) -> None:
        """Called by the notification listener for every event on vif_events.<host>."""
        if not event_type.startswith("port."):
            return
        if not isinstance(payload, VifEvent):
            problem = (
                payload.error.reason if isinstance(payload, InvalidPayload) else repr(payload)[:200]
            )
            log.warning("vif_event_rejected", event_type=event_type, problem=problem)
            self.metrics.rpc_errors.labels("vif_event").inc()
            return
        if payload.host != self.host:
            log.warning("vif_event_other_host", event_type=event_type, event_host=payload.host)
            return
        log.debug("vif_event", event_type=event_type, port_id=str(payload.port_id))
        self.waiter.on_event(event_type, payload.port_id, payload.reason)
        if event_type == PLUGGED:
            # A build's own event is taken by the waiter above; one for a running guest
            # may mean its tap was re-created under QEMU (replug.py decides).
            self.replugger.on_plugged(payload)

    # ================================================================== life cycle

    def uptime(self) -> float:
        return round(self.clock() - self._started_mono, 3)

    def emit_heartbeat(self) -> None:
        vcpus, memory_mb = capacity(self.settings)
        self.reporter.agent(
            "agent.heartbeat",
            AgentHeartbeat(
                host=self.host,
                kind="compute",
                version=self.version,
                started_at=self.started_at,
                uptime_s=self.uptime(),
                counts=self.table.snapshot(),
                vcpus=vcpus,
                memory_mb=memory_mb,
                images=self.images.names()[:MAX_IMAGES],
            ),
        )

    def apply_desired(self, desired: DesiredState) -> dict[str, int]:
        """Resync: delete what the controller says was deleted and this host still has;
        report what it wants and this host lacks (its own re-drive builds that, with
        the operation's ids). Nothing merely absent from the answer is touched."""
        deleted = missing = 0
        rid = new_request_id()
        for uuid in desired.deleted_instances:
            domain = self.hv.get(uuid)
            ours = domain is not None and read_record(domain) is not None
            if ours or self.table.get(uuid) is not None:
                msg = DeleteInstance(request_id=rid, host=self.host, instance_uuid=uuid)
                self._cancel_build(msg)
                work = functools.partial(self._delete_work, msg, self.clock(), Ticket(None, None))
                self.intake.executor.submit(uuid, work)
                deleted += 1
        for spec in desired.instances:
            if self.hv.get(spec.uuid) is None and self.table.get(spec.uuid) is None:
                log.warning("resync_instance_missing", instance_uuid=str(spec.uuid))
                missing += 1
        return {"instances_deleted": deleted, "instances_missing": missing}

    def healthy(self) -> bool:
        return self.hv.alive()

    def reconcile(self) -> dict[str, int]:
        # Builds the journal still holds are replayed right after this (service.start):
        # their half-made files must not be reported as failed builds.
        return self._reconciler.run(replaying=self.intake.pending_keys("build_instance"))

    def drain(self, grace: float) -> None:
        """SIGTERM: queued work and in-flight builds finish within `grace`, or are handed
        back (left in the journal, reported so); events flushed."""
        deadline = self.clock() + grace
        self.intake.stop(grace)
        self.pipeline.drain(max(0.0, deadline - self.clock()))
        self.replugger.close()
        self.reporter.flush(timeout=5)

    # ================================================================== delete

    def _delete(self, msg: DeleteInstance) -> None:
        uuid, rid = msg.instance_uuid, msg.request_id
        self.reporter.instance("instance.delete.start", uuid, rid, state="deleting")
        task = self.table.tombstone(uuid)  # again: a replayed delete had no admit step
        if task is not None:
            task.cancel(DELETED)  # wakes its vif wait; it cleans up and releases the lock
        with self._cancelled_lock:
            was_building = task is not None or uuid in self._cancelled
            self._cancelled.discard(uuid)
        with self.table.locked(uuid):
            domain = self.hv.get(uuid)
            if domain is not None and read_record(domain) is None:
                raise InstanceNotFound(instance=f"{uuid} (a domain this agent does not own)")
            was_running = self.hv.destroy(uuid)
            had_domain = self.hv.undefine(uuid)
            had_files = self.images.remove_instance_files(uuid)
        self.table.count("deletes")
        if had_domain or had_files or was_building:
            log.info("instance_deleted", was_running=was_running, was_building=was_building)
            self.metrics.deletes.labels("ok").inc()
            self.reporter.instance("instance.delete.end", uuid, rid, state="deleted")
        else:
            log.info("delete_unknown_noop")
            self.metrics.deletes.labels("noop").inc()
            self.reporter.instance(
                "instance.delete.end",
                uuid,
                rid,
                state="deleted",
                reason="not on this host: nothing to delete",
            )

    # ================================================================== input

    def _accept_call(self, method: str, payload: object) -> InstanceRef:
        try:
            ref = expect(payload, InstanceRef)
        except InvalidMessage as err:
            log.warning("message_rejected", method=method, problem=err.reason)
            self.metrics.rpc_errors.labels(method).inc()
            raise
        assert isinstance(ref, InstanceRef)
        return ref

    def _reject(self, method: str, payload: object, problem: str, _rid: str | None) -> None:
        """Report a refused cast: one log line and agent.message_rejected, nothing else.

        No instance.*.error: the controller owns the operations, and a garbled copy may
        carry the uuid of a real build in flight; if the refused message was the real
        one, the controller's re-drive sends it again.
        """
        raw = payload.raw if isinstance(payload, InvalidPayload) else payload
        if isinstance(raw, Message):  # valid but refused (wrong host): still address it
            raw = raw.model_dump(mode="json")
        uuid = salvage_uuid(raw, "instance_uuid", "uuid")
        problem = problem[:2000]
        log.warning(
            "message_rejected",
            method=method,
            problem=problem,
            instance_uuid=str(uuid) if uuid else None,
        )
        self.metrics.rpc_errors.labels(method).inc()
        self.reporter.agent(
            "agent.message_rejected",
            MessageRejected(
                host=self.host, kind="compute", method=method, problem=problem, instance_uuid=uuid
            ),
            error=True,
        )


def _uuid_of(msg: BuildInstance | DeleteInstance | RebootInstance) -> UUID:
    return msg.instance.uuid if isinstance(msg, BuildInstance) else msg.instance_uuid


class VifEventEndpoint:
    """Notification endpoint for vif_events.<host>: hands every event to the manager."""

    def __init__(self, manager: ComputeManager) -> None:
        self._manager = manager

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self._handle(event_type, payload)

    def error(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self._handle(event_type, payload)

    def _handle(self, event_type: str, payload: Any) -> None:
        try:
            self._manager.on_vif_event(event_type, payload)
        except Exception as err:  # the listener must keep consuming
            log.exception("vif_event_failed", event_type=event_type, error=str(err))
