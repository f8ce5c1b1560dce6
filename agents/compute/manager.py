"""The compute-agent's RPC endpoint and build pipeline.

It owns what happens to an instance on this host: accepting build/delete/reboot casts,
running builds on its own bounded pool (`max_concurrent_builds`), the per-instance lock
and tombstones that make a duplicate build or a delete racing a build end cleanly, the
instance notifications, answering list/get/console/ping calls, the start-up reconcile,
and draining in-flight builds on stop.

Every public method is an endpoint method (oslo exposes them to the broker) and is the
boundary: it validates what arrived, catches everything, logs it once and reports it;
nothing raised here may stop the server consuming. RPC casts are acknowledged before
the endpoint runs (PLATFORM.md), so a build accepted here is ours to finish or to fail
visibly: there is no redelivery.

It must not import libvirt, qemu-img or oslo: those arrive as collaborators (the
`GuestHost` protocol, `ImageStore`, a `Notifier`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import structlog

from agents.compute import driver
from agents.compute.errors import (
    BuildAborted,
    GuestXmlError,
    HypervisorError,
    ImageError,
    InstanceNotFound,
    UnknownFlavor,
    VifPlugFailed,
    VifPlugTimeout,
)
from agents.compute.guest import METADATA_NS, METADATA_PREFIX, Guest, InstanceMetadata, parse_guest
from agents.compute.hypervisor import Domain
from agents.compute.images import DiskImage, ImageStore
from agents.compute.settings import ComputeConfig
from agents.compute.telemetry import BUILD_STEPS, ComputeMetrics
from agents.compute.waiter import Expectation, VifWaiter
from common.errors import AgentsError, InvalidMessage
from common.messages import (
    AgentHeartbeat,
    BuildInstance,
    ConsoleLog,
    DeleteInstance,
    InstanceEvent,
    InstanceInfo,
    InstanceList,
    InstanceRef,
    InstanceState,
    Message,
    MessageRejected,
    PingReply,
    Port,
    RebootInstance,
    VifEvent,
    salvage_uuid,
)
from common.rpc import InvalidPayload, expect

log = structlog.get_logger()

TOMBSTONE_TTL = 3600.0
MAX_TOMBSTONES = 10_000


class GuestHost(Protocol):
    """What the manager needs from the hypervisor edge (hypervisor.Hypervisor)."""

    def define(self, uuid: UUID, xml: str) -> None: ...
    def start(self, uuid: UUID) -> None: ...
    def destroy(self, uuid: UUID) -> bool: ...
    def undefine(self, uuid: UUID) -> bool: ...
    def reboot(self, uuid: UUID, hard: bool) -> None: ...
    def set_metadata(self, uuid: UUID, element_xml: str, prefix: str, namespace: str) -> None: ...
    def get(self, uuid: UUID) -> Domain | None: ...
    def list_with_metadata(self, namespace: str) -> list[Domain]: ...
    def alive(self) -> bool: ...


class Notifier(Protocol):
    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None: ...
    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None: ...


@dataclass
class BuildTask:
    """One accepted build, from the endpoint to its end."""

    message: BuildInstance
    received: float
    expectation: Expectation
    cancelled: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def uuid(self) -> UUID:
        return self.message.instance.uuid

    def cancel(self, reason: str) -> None:
        self.cancelled = reason
        self.expectation.abort(reason)


class _Failed(Exception):
    """Internal: a build step failed; carries whether to keep an error record."""

    def __init__(self, error: Exception, keep_record: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.keep_record = keep_record


class ComputeManager:
    def __init__(
        self,
        config: ComputeConfig,
        hypervisor: GuestHost,
        images: ImageStore,
        waiter: VifWaiter,
        notifier: Notifier,
        metrics: ComputeMetrics,
        version: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = config.compute
        self.host = config.DEFAULT.host
        self.hv = hypervisor
        self.images = images
        self.waiter = waiter
        self.notifier = notifier
        self.metrics = metrics
        self.version = version
        self.clock = clock
        self.started_at = datetime.now(UTC)
        self._started_mono = clock()
        self._networks = {net.uuid: net for net in config.networks.values()}
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent_builds, thread_name_prefix="build"
        )
        self._lock = threading.Lock()
        self._builds: dict[UUID, BuildTask] = {}
        self._instance_locks: dict[UUID, threading.Lock] = {}
        self._tombstones: OrderedDict[UUID, float] = OrderedDict()
        self._stopping = threading.Event()
        self._counts = {"builds_ok": 0, "builds_failed": 0, "deletes": 0}

    # ================================================================== casts

    def build_instance(self, ctxt: Any, payload: object = None, **extra: Any) -> None:
        received = self.clock()
        try:
            msg = self._accept("build_instance", payload, BuildInstance)
            assert isinstance(msg, BuildInstance)
            self._submit_build(msg, received)
        except InvalidMessage as err:
            self._reject("build_instance", err, payload, "instance.create.error")
        except Exception as err:  # the boundary: nothing may stop the server consuming
            log.exception("build_instance_failed", error=str(err))
            self.metrics.rpc_errors.labels("build_instance").inc()

    def delete_instance(self, ctxt: Any, payload: object = None, **extra: Any) -> None:
        try:
            msg = self._accept("delete_instance", payload, DeleteInstance)
            assert isinstance(msg, DeleteInstance)
        except InvalidMessage as err:
            self._reject("delete_instance", err, payload, "instance.delete.error")
            return
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id, instance_uuid=str(msg.instance_uuid)
        ):
            try:
                self._delete(msg)
            except Exception as err:
                log.exception("delete_failed", error=str(err))
                self.metrics.deletes.labels("error").inc()
                self._emit_error(
                    "instance.delete.error", msg.instance_uuid, msg.request_id, reason=str(err)
                )

    def reboot_instance(self, ctxt: Any, payload: object = None, **extra: Any) -> None:
        try:
            msg = self._accept("reboot_instance", payload, RebootInstance)
            assert isinstance(msg, RebootInstance)
        except InvalidMessage as err:
            self._reject("reboot_instance", err, payload, "instance.reboot.error")
            return
        uuid, rid = msg.instance_uuid, msg.request_id
        with structlog.contextvars.bound_contextvars(request_id=rid, instance_uuid=str(uuid)):
            self._emit("instance.reboot.start", uuid, rid, step="hard" if msg.hard else "soft")
            try:
                with self._instance_lock(uuid):
                    domain = self.hv.get(uuid)
                    if domain is None or self._metadata(domain) is None:
                        raise InstanceNotFound(instance=str(uuid))
                    self.hv.reboot(uuid, msg.hard)
                log.info("instance_rebooted", hard=msg.hard)
                self.metrics.reboots.labels("ok").inc()
                self._emit("instance.reboot.end", uuid, rid, state="running")
            except Exception as err:
                level = log.warning if isinstance(err, AgentsError) else log.exception
                level("reboot_failed", error=str(err))
                self.metrics.reboots.labels("error").inc()
                self._emit_error("instance.reboot.error", uuid, rid, reason=str(err))

    def report_state(self, ctxt: Any, **extra: Any) -> None:
        try:
            self.emit_heartbeat()
        except Exception as err:
            log.exception("report_state_failed", error=str(err))
            self.metrics.rpc_errors.labels("report_state").inc()

    # ================================================================== calls

    def ping(self, ctxt: Any, **extra: Any) -> PingReply:
        return PingReply(
            host=self.host, kind="compute", version=self.version, uptime_s=self.uptime()
        )

    def list_instances(self, ctxt: Any, **extra: Any) -> InstanceList:
        infos: dict[UUID, InstanceInfo] = {}
        for domain in self.hv.list_with_metadata(METADATA_NS):
            info = self._info(domain)
            if info is not None:
                infos[info.uuid] = info
        with self._lock:
            building = [t for t in self._builds.values() if t.uuid not in infos]
        for task in building:
            infos[task.uuid] = self._building_info(task)
        self.metrics.instances.set(len(infos))
        return InstanceList(host=self.host, instances=sorted(infos.values(), key=lambda i: i.name))

    def get_instance(self, ctxt: Any, payload: object = None, **extra: Any) -> InstanceInfo:
        ref = self._accept_call("get_instance", payload)
        domain = self.hv.get(ref.instance_uuid)
        info = self._info(domain) if domain is not None else None
        if info is not None:
            return info
        with self._lock:
            task = self._builds.get(ref.instance_uuid)
        if task is not None:
            return self._building_info(task)
        raise InstanceNotFound(instance=str(ref.instance_uuid))

    def get_console_log(self, ctxt: Any, payload: object = None, **extra: Any) -> ConsoleLog:
        ref = self._accept_call("get_console_log", payload)
        domain = self.hv.get(ref.instance_uuid)
        if domain is None or self._metadata(domain) is None:
            raise InstanceNotFound(instance=str(ref.instance_uuid))
        # The path is derived from the uuid, never read from the domain: a domain XML is
        # not trusted to name which file of this host we return.
        tail = self.images.console_tail(
            self.images.console_log_path(ref.instance_uuid), ref.max_bytes
        )
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

    # ================================================================== life cycle

    def uptime(self) -> float:
        return round(self.clock() - self._started_mono, 3)

    def emit_heartbeat(self) -> None:
        with self._lock:
            counts = dict(self._counts, building=len(self._builds))
        self.notifier.info(
            "agent.heartbeat",
            AgentHeartbeat(
                host=self.host,
                kind="compute",
                version=self.version,
                started_at=self.started_at,
                uptime_s=self.uptime(),
                counts=counts,
            ),
        )

    def healthy(self) -> bool:
        return self.hv.alive()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._builds)

    def drain(self, grace: float) -> None:
        """SIGTERM: let in-flight builds finish within `grace`, then fail the rest visibly.

        Queued builds that have not begun fail at once ("agent stopping"); builds that
        are still waiting for vifs at the deadline are aborted. Each failed build leaves
        an error record (a defined, never-started domain with its fault) that
        get_instance and list_instances report after a restart, and an
        instance.create.error.
        """
        self._stopping.set()
        deadline = self.clock() + grace
        with self._lock:
            tasks = list(self._builds.values())
        log.info("draining_builds", in_flight=len(tasks), grace_s=grace)
        for task in tasks:
            task.done.wait(max(0.0, deadline - self.clock()))
        for task in tasks:
            if not task.done.is_set():
                task.cancel("agent stopped before the build completed")
        self._pool.shutdown(wait=True)

    # ================================================================== reconcile

    def reconcile(self) -> dict[str, int]:
        """Make libvirt and this host's files agree with what this agent owns; report it.

        - a running or shut-off owned domain: counted, left alone;
        - an owned domain with a fault: an error record, left for the operator;
        - an owned domain defined but never started (agent died between define and start):
          the build is finished (started) or, if that fails, turned into an error record;
        - instance files without a domain (agent died before define): removed, and the
          build reported failed;
        - domains without our metadata: never looked at further.
        """
        counts = {"running": 0, "stopped": 0, "error": 0, "finished": 0, "failed": 0, "orphans": 0}
        owned: set[UUID] = set()
        for domain in self.hv.list_with_metadata(METADATA_NS):
            meta = self._metadata(domain)
            if meta is None:
                continue
            owned.add(domain.uuid)
            with structlog.contextvars.bound_contextvars(
                instance_uuid=str(domain.uuid), request_id=meta.request_id
            ):
                if meta.fault is not None:
                    counts["error"] += 1
                elif domain.active:
                    counts["running"] += 1
                elif meta.started_at is not None:
                    counts["stopped"] += 1
                else:
                    counts[self._finish_half_built(domain, meta)] += 1
        for uuid in self.images.instance_dirs():
            if uuid in owned:
                continue
            self.images.remove_instance_files(uuid)
            counts["orphans"] += 1
            log.warning("reconcile_orphan_files_removed", instance_uuid=str(uuid))
            self._emit_error(
                "instance.create.error",
                uuid,
                None,
                reason="build interrupted before the guest was defined; its files were removed",
            )
        for action, n in counts.items():
            if n:
                self.metrics.reconcile.labels(action).inc(n)
        self.metrics.instances.set(len(owned))
        log.info("reconcile_done", **counts)
        return counts

    def _finish_half_built(self, domain: Domain, meta: InstanceMetadata) -> str:
        uuid = domain.uuid
        try:
            self.hv.start(uuid)
            meta.started_at = datetime.now(UTC)
            self._write_metadata(uuid, meta)
        except AgentsError as err:
            log.warning("reconcile_finish_failed", error=str(err))
            meta.fault = f"half-built at agent start and could not be started: {err}"
            self._write_metadata(uuid, meta)
            self._emit_error("instance.create.error", uuid, meta.request_id, reason=meta.fault)
            return "failed"
        log.info("reconcile_build_finished")
        self._emit("instance.create.end", uuid, meta.request_id, state="running", step="reconciled")
        return "finished"

    # ================================================================== build

    def _submit_build(self, msg: BuildInstance, received: float) -> None:
        uuid = msg.instance.uuid
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id, instance_uuid=str(uuid)
        ):
            with self._lock:
                if uuid in self._builds:
                    log.info("build_duplicate_in_flight")
                    self.metrics.builds.labels("duplicate").inc()
                    return
                tombstoned = uuid in self._tombstones
                if not tombstoned:
                    # Register the vif waiters now, before the build is even queued: an
                    # event arriving from here on lands on them, and earlier ones are in
                    # the waiter's recent-events memory.
                    expectation = self.waiter.expect(p.id for p in msg.instance.ports)
                    task = BuildTask(message=msg, received=received, expectation=expectation)
                    self._builds[uuid] = task
                    self.metrics.builds_in_flight.inc()
            if tombstoned:
                log.info("build_refused_deleted")
                self.metrics.builds.labels("refused").inc()
                self._emit_error(
                    "instance.create.error", uuid, msg.request_id, reason="instance was deleted"
                )
                return
            try:
                self._pool.submit(self._run_build, task)
            except RuntimeError:  # pool shut down: we are stopping
                self._run_build(task)

    def _run_build(self, task: BuildTask) -> None:
        msg = task.message
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id, instance_uuid=str(task.uuid)
        ):
            try:
                with self._instance_lock(task.uuid):
                    self._build(task)
            except Exception as err:  # a bug must still end the build visibly
                log.exception("build_crashed", error=str(err))
                self._emit_error(
                    "instance.create.error", task.uuid, msg.request_id, reason=str(err)
                )
                self.metrics.builds.labels("error").inc()
            finally:
                task.expectation.close()
                with self._lock:
                    self._builds.pop(task.uuid, None)
                    self.metrics.builds_in_flight.dec()
                task.done.set()

    def _build(self, task: BuildTask) -> None:
        _msg, spec, uuid, rid = (
            task.message,
            task.message.instance,
            task.uuid,
            task.message.request_id,
        )
        self._emit("instance.create.start", uuid, rid, state="building", name=spec.name)
        self._observe("queued", task.received)
        existing = self.hv.get(uuid)
        if existing is not None:
            self._report_duplicate(task, existing)
            return
        xml: str | None = None
        try:
            if task.cancelled or self._stopping.is_set():
                # Not begun before SIGTERM (or a delete): fail it now, visibly.
                reason = task.cancelled or "agent stopped before the build began"
                keep = task.cancelled is None or "deleted" not in reason
                xml = self._render(task) if keep else None
                raise _Failed(BuildAborted(instance=str(uuid), reason=reason), keep_record=keep)
            t = self.clock()
            xml = self._render(task)
            self._observe("prepare", t)

            t = self.clock()
            self._wait_for_vifs(task)
            self._observe("vif_wait", t)
            self._emit("instance.create.progress", uuid, rid, step="ports_plugged", task=task)
            self._check_cancelled(task)

            t = self.clock()
            self.hv.define(uuid, xml)
            self._observe("define", t)
            self._emit("instance.create.progress", uuid, rid, step="guest_defined", task=task)
            self._check_cancelled(task)

            t = self.clock()
            self.hv.start(uuid)
            self._mark_started(uuid, xml)
            self._observe("start", t)
            self._emit("instance.create.progress", uuid, rid, step="guest_started", task=task)
        except _Failed as failed:
            self._fail_build(task, failed.error, xml if failed.keep_record else None)
            return
        except (HypervisorError, ImageError, OSError) as err:
            self._fail_build(task, err, xml)
            return
        except (UnknownFlavor, GuestXmlError, ValueError) as err:
            self._fail_build(task, err, None)
            return
        total = self._observe("total", task.received)
        with self._lock:
            self._counts["builds_ok"] += 1
        self.metrics.builds.labels("ok").inc()
        log.info("build_done", name=spec.name, elapsed_ms=round(total * 1000, 3))
        self._emit("instance.create.end", uuid, rid, state="running", name=spec.name, task=task)

    def _render(self, task: BuildTask) -> str:
        spec = task.message.instance
        image = self.images.resolve(spec.image)
        flavor = driver.pick_flavor(self.config.flavors, spec.flavor)
        self.images.prepare_instance_dir(spec.uuid)
        disk = None
        if isinstance(image, DiskImage):
            disk = self.images.create_overlay(spec.uuid, image, flavor.disk_gb)
        paths = driver.InstancePaths(console_log=self.images.console_log_path(spec.uuid), disk=disk)
        return driver.get_guest_xml(
            spec,
            self.config.flavors,
            image,
            paths,
            self._networks,
            self.settings.domain_type,
            request_id=task.message.request_id,
        )

    def _wait_for_vifs(self, task: BuildTask) -> None:
        try:
            task.expectation.wait(self.settings.vif_plugging_timeout)
        except VifPlugTimeout as err:
            self.metrics.vif_plugging_timeouts.inc()
            if self.settings.vif_plugging_is_fatal:
                raise _Failed(err, keep_record=True) from err
            log.warning("vif_plugging_timeout_ignored", error=str(err))
        except VifPlugFailed as err:
            raise _Failed(err, keep_record=True) from err
        except BuildAborted as err:
            raise _Failed(
                BuildAborted(instance=str(task.uuid), reason=err.fields["reason"]),
                keep_record="deleted" not in str(err),
            ) from err

    def _check_cancelled(self, task: BuildTask) -> None:
        if task.cancelled is not None:
            raise _Failed(
                BuildAborted(instance=str(task.uuid), reason=task.cancelled),
                keep_record="deleted" not in task.cancelled,
            )

    def _mark_started(self, uuid: UUID, xml: str) -> None:
        meta = parse_guest(xml).metadata
        if meta is not None:
            meta.started_at = datetime.now(UTC)
            self._write_metadata(uuid, meta)

    def _write_metadata(self, uuid: UUID, meta: InstanceMetadata) -> None:
        self.hv.set_metadata(uuid, meta.to_bare_xml(), METADATA_PREFIX, METADATA_NS)

    def _fail_build(self, task: BuildTask, err: Exception, record_xml: str | None) -> None:
        """Clean up a failed build; keep an error record when the reason is worth showing."""
        uuid, rid = task.uuid, task.message.request_id
        reason = str(err)
        log.warning("build_failed", error=reason, error_type=type(err).__name__)
        try:
            self.hv.destroy(uuid)
            self.hv.undefine(uuid)
            self.images.remove_instance_files(uuid)
            if record_xml is not None:
                guest: Guest = parse_guest(record_xml)
                if guest.metadata is not None:
                    guest.metadata.fault = reason
                self.hv.define(uuid, guest.to_xml())
        except Exception as cleanup_err:
            log.exception("build_cleanup_failed", error=str(cleanup_err))
            reason = f"{reason} (clean-up failed: {cleanup_err})"
        with self._lock:
            self._counts["builds_failed"] += 1
        self.metrics.builds.labels("error").inc()
        self._emit_error("instance.create.error", uuid, rid, reason=reason, task=task)

    def _report_duplicate(self, task: BuildTask, domain: Domain) -> None:
        uuid, rid = task.uuid, task.message.request_id
        meta = self._metadata(domain)
        self.metrics.builds.labels("duplicate").inc()
        if meta is None:
            log.error("build_uuid_taken_by_foreign_domain", domain=domain.name)
            self._emit_error(
                "instance.create.error",
                uuid,
                rid,
                reason=f"a domain not managed by this agent ({domain.name}) has this uuid",
            )
        elif meta.fault is not None:
            log.info("build_duplicate_of_failed", fault=meta.fault)
            self._emit_error("instance.create.error", uuid, rid, reason=meta.fault)
        else:
            log.info("build_duplicate_ignored", state=domain.state)
            self._emit("instance.create.end", uuid, rid, state=domain.state, step="already_built")

    # ================================================================== delete

    def _delete(self, msg: DeleteInstance) -> None:
        uuid, rid = msg.instance_uuid, msg.request_id
        self._emit("instance.delete.start", uuid, rid, state="deleting")
        with self._lock:
            self._tombstones[uuid] = self.clock()
            self._tombstones.move_to_end(uuid)
            while len(self._tombstones) > MAX_TOMBSTONES or (
                self._tombstones
                and next(iter(self._tombstones.values())) < self.clock() - TOMBSTONE_TTL
            ):
                self._tombstones.popitem(last=False)
            task = self._builds.get(uuid)
        if task is not None:
            task.cancel("deleted while building")
        with self._instance_lock(uuid):
            domain = self.hv.get(uuid)
            if domain is not None and self._metadata(domain) is None:
                raise InstanceNotFound(instance=f"{uuid} (a domain this agent does not own)")
            was_running = self.hv.destroy(uuid)
            had_domain = self.hv.undefine(uuid)
            had_files = self.images.remove_instance_files(uuid)
        with self._lock:
            self._counts["deletes"] += 1
        if had_domain or had_files or task is not None:
            log.info("instance_deleted", was_running=was_running, was_building=task is not None)
            self.metrics.deletes.labels("ok").inc()
            self._emit("instance.delete.end", uuid, rid, state="deleted")
        else:
            log.info("delete_unknown_noop")
            self.metrics.deletes.labels("noop").inc()
            self._emit(
                "instance.delete.end",
                uuid,
                rid,
                state="deleted",
                reason="not on this host: nothing to delete",
            )

    # ================================================================== helpers

    @contextmanager
    def _instance_lock(self, uuid: UUID) -> Iterator[None]:
        with self._lock:
            lock = self._instance_locks.setdefault(uuid, threading.Lock())
        with lock:
            yield
        with self._lock:
            if not lock.locked() and self._instance_locks.get(uuid) is lock:
                del self._instance_locks[uuid]

    def _accept(self, method: str, payload: object, model: type[Message]) -> Message:
        msg = expect(payload, model)
        host = getattr(msg, "host", self.host)
        if host != self.host:
            raise InvalidMessage(
                schema=model.SCHEMA, problem=f"addressed to host {host!r}, this is {self.host!r}"
            )
        return msg

    def _accept_call(self, method: str, payload: object) -> InstanceRef:
        try:
            ref = expect(payload, InstanceRef)
        except InvalidMessage as err:
            log.warning("message_rejected", method=method, problem=err.reason)
            self.metrics.rpc_errors.labels(method).inc()
            raise
        assert isinstance(ref, InstanceRef)
        return ref

    def _reject(self, method: str, err: InvalidMessage, payload: object, event_type: str) -> None:
        raw = payload.raw if isinstance(payload, InvalidPayload) else payload
        if isinstance(raw, Message):  # valid but refused (wrong host): still address it
            raw = raw.model_dump(mode="json")
        uuid = salvage_uuid(raw, "instance_uuid", "uuid")
        log.warning(
            "message_rejected",
            method=method,
            problem=err.reason,
            instance_uuid=str(uuid) if uuid else None,
        )
        self.metrics.rpc_errors.labels(method).inc()
        try:
            self.notifier.error(
                "agent.message_rejected",
                MessageRejected(
                    host=self.host, kind="compute", method=method, problem=err.reason[:2000]
                ),
            )
            if uuid is not None:
                self._emit_error(event_type, uuid, None, reason=err.reason[:2000])
        except Exception as notify_err:
            log.exception("reject_report_failed", error=str(notify_err))

    def _metadata(self, domain: Domain) -> InstanceMetadata | None:
        try:
            return parse_guest(domain.xml).metadata
        except GuestXmlError as err:
            log.warning("domain_xml_unreadable", domain=domain.name, error=str(err))
            return None

    def _info(self, domain: Domain) -> InstanceInfo | None:
        meta = self._metadata(domain)
        if meta is None:
            return None
        state: InstanceState = domain.state
        with self._lock:
            building = domain.uuid in self._builds
        if meta.fault is not None:
            state = "error"
        elif building:
            state = "building"
        uptime = None
        if domain.active and meta.started_at is not None:
            uptime = max(0.0, (datetime.now(UTC) - meta.started_at).total_seconds())
        return InstanceInfo(
            uuid=domain.uuid,
            name=meta.name,
            host=self.host,
            state=state,
            flavor=meta.flavor,
            image=meta.image,
            ports=[
                Port.model_validate(
                    {
                        "id": p.id,
                        "network_id": p.network_id,
                        "mac": p.mac,
                        "fixed_ip": p.fixed_ip,
                        "mtu": p.mtu,
                        "vif_type": p.vif_type,
                        "nic_model": p.nic_model,
                        "instance_uuid": meta.uuid,
                    }
                )
                for p in meta.ports
            ],
            created_at=meta.created_at,
            uptime_s=uptime,
            fault=meta.fault,
        )

    def _building_info(self, task: BuildTask) -> InstanceInfo:
        spec = task.message.instance
        return InstanceInfo(
            uuid=spec.uuid,
            name=spec.name,
            host=self.host,
            state="building",
            flavor=spec.flavor,
            image=spec.image,
            ports=list(spec.ports),
            created_at=spec.created_at,
        )

    def _observe(self, step: str, since: float) -> float:
        assert step in BUILD_STEPS
        elapsed = self.clock() - since
        self.metrics.build_step_seconds.labels(step).observe(elapsed)
        return elapsed

    def _event(
        self,
        uuid: UUID,
        rid: str | None,
        state: InstanceState | None = None,
        step: str | None = None,
        reason: str | None = None,
        name: str | None = None,
        task: BuildTask | None = None,
    ) -> InstanceEvent:
        elapsed = round((self.clock() - task.received) * 1000, 3) if task is not None else None
        if task is not None and name is None:
            name = task.message.instance.name
        return InstanceEvent(
            request_id=rid,
            host=self.host,
            instance_uuid=uuid,
            name=name,
            state=state,
            step=step,
            reason=reason,
            elapsed_ms=elapsed,
        )

    def _emit(self, event_type: str, uuid: UUID, rid: str | None, **kw: Any) -> None:
        try:
            self.notifier.info(event_type, self._event(uuid, rid, **kw), request_id=rid)
        except Exception as err:  # a lost notification must not fail the build itself
            log.exception("notify_failed", event_type=event_type, error=str(err))

    def _emit_error(self, event_type: str, uuid: UUID, rid: str | None, **kw: Any) -> None:
        kw.setdefault("state", "error")
        try:
            self.notifier.error(event_type, self._event(uuid, rid, **kw), request_id=rid)
        except Exception as err:
            log.exception("notify_failed", event_type=event_type, error=str(err))


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
