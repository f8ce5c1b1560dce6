"""The build pipeline: from an accepted build_instance to a running guest or a visible error.

It owns:
- `InstanceTable`: builds in flight, per-instance locks and tombstones of deleted
  instances, shared with delete so that a delete racing a build ends with nothing left
  and a late duplicate of the build cannot bring the instance back;
- `BuildPipeline`: a bounded pool (`max_concurrent_builds`) running each build
  through its steps: image and disk, XML (driver.get_guest_xml), the vif-plugged
  wait, define, start; timing each step; and on any failure cleaning up and leaving an
  error record (a defined, never-started domain whose record holds the fault), so
  get_instance says why even after a restart;
- `drain()`: on SIGTERM, builds get the grace to finish; the rest are handed back
  (cleaned up and reported `instance.create.handed_back`), never failed: the
  controller still holds the request and sends it again, to this agent after its
  restart.

The order of a build (start -> ports_plugged -> guest_defined -> guest_started -> end)
follows docs/design.md: the guest is defined and started only once its taps exist.
It must not parse wire messages (the manager does) nor import libvirt.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import structlog

from agents.compute import driver
from agents.compute.errors import (
    BuildAborted,
    GuestXmlError,
    HypervisorError,
    ImageError,
    UnknownFlavor,
    VifPlugFailed,
    VifPlugTimeout,
)
from agents.compute.guest import InstanceMetadata, parse_guest
from agents.compute.images import DiskImage, ImageStore
from agents.compute.records import Domain, GuestHost, read_record, write_record
from agents.compute.reporter import Reporter
from agents.compute.settings import ComputeConfig
from agents.compute.telemetry import BUILD_STEPS, ComputeMetrics
from agents.compute.waiter import Expectation, VifWaiter
from common.agent import Ticket
from common.messages import BuildInstance

log = structlog.get_logger()

TOMBSTONE_TTL = 3600.0
MAX_TOMBSTONES = 10_000
DELETED = "deleted while building"
STOPPED_BEFORE_BEGIN = "agent stopped before the build began"
STOPPED_DURING = "agent stopped before the build completed"
HANDED_BACK = (STOPPED_BEFORE_BEGIN, STOPPED_DURING)


@dataclass
class BuildTask:
    """One accepted build, from the endpoint to its end."""

    message: BuildInstance
    received: float
    expectation: Expectation
    cancelled: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # The journal entry of the cast: forgotten when the build ends, kept when handed back.
    ticket: Ticket | None = None
    handed_back: bool = False

    @property
    def uuid(self) -> UUID:
        return self.message.instance.uuid

    def cancel(self, reason: str) -> None:
        self.cancelled = reason
        self.expectation.abort(reason)


@dataclass
class _LockSlot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class InstanceTable:
    """Builds in flight, per-instance locks and tombstones, under one lock."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, tombstones: Path | None = None
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._builds: dict[UUID, BuildTask] = {}
        self._locks: dict[UUID, _LockSlot] = {}
        self._tombstones: OrderedDict[UUID, float] = OrderedDict()
        self.counts = {"builds_ok": 0, "builds_failed": 0, "deletes": 0}
        # Kept on disk too: a stale build delivered after a restart must not bring a
        # deleted instance back.
        self._tombstone_file = tombstones
        if tombstones is not None:
            self._load_tombstones(tombstones)

    def _load_tombstones(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
            items = sorted((float(at), UUID(uuid)) for uuid, at in dict(saved).items())
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as err:
            log.error("tombstones_unreadable", path=str(path), error=str(err))
            return
        now_wall, now = time.time(), self._clock()
        for at, uuid in items:
            if now_wall - at < TOMBSTONE_TTL:
                self._tombstones[uuid] = now - (now_wall - at)

    def _save_tombstones(self) -> None:
        """Atomically (temporary file, fsync, rename); called with the lock held."""
        if self._tombstone_file is None:
            return
        now_wall, now = time.time(), self._clock()
        data = {str(u): now_wall - (now - at) for u, at in self._tombstones.items()}
        path = self._tombstone_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    def admit(self, msg: BuildInstance, received: float, waiter: VifWaiter) -> BuildTask | str:
        """Register a build, or say why not: "duplicate" (in flight) or "deleted"."""
        uuid = msg.instance.uuid
        with self._lock:
            if uuid in self._builds:
                return "duplicate"
            if uuid in self._tombstones:
                return "deleted"
            # Register the vif waiters now, before the build is even queued: an event
            # arriving from here on lands on them, earlier ones are in the waiter's
            # recent-events memory.
            expectation = waiter.expect(p.id for p in msg.instance.ports)
            task = BuildTask(message=msg, received=received, expectation=expectation)
            self._builds[uuid] = task
            return task

    def finish(self, task: BuildTask) -> None:
        task.expectation.close()
        with self._lock:
            if self._builds.get(task.uuid) is task:
                del self._builds[task.uuid]
        task.done.set()

    def get(self, uuid: UUID) -> BuildTask | None:
        with self._lock:
            return self._builds.get(uuid)

    def tasks(self) -> list[BuildTask]:
        with self._lock:
            return list(self._builds.values())

    def tombstone(self, uuid: UUID) -> BuildTask | None:
        """Mark `uuid` deleted; returns its build in flight, if any."""
        with self._lock:
            now = self._clock()
            self._tombstones[uuid] = now
            self._tombstones.move_to_end(uuid)
            while self._tombstones and (
                len(self._tombstones) > MAX_TOMBSTONES
                or next(iter(self._tombstones.values())) < now - TOMBSTONE_TTL
            ):
                self._tombstones.popitem(last=False)
            try:
                self._save_tombstones()
            except OSError as err:  # the delete goes on; only a restart could forget it
                log.error("tombstones_not_saved", error=str(err))
            return self._builds.get(uuid)

    def count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts, building=len(self._builds))

    @contextmanager
    def locked(self, uuid: UUID) -> Iterator[None]:
        """Serialise everything done to one instance (build, delete, reboot).

        A lock lives while anyone holds or waits for it (counted), so a waiter and a
        newcomer can never end up holding two different locks for one instance.
        """
        with self._lock:
            slot = self._locks.setdefault(uuid, _LockSlot())
            slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            with self._lock:
                slot.users -= 1
                if slot.users == 0:
                    del self._locks[uuid]


class _Failed(Exception):
    """A step failed; `keep_record` says whether an error record stays behind."""

    def __init__(self, error: Exception, keep_record: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.keep_record = keep_record


class BuildPipeline:
    def __init__(
        self,
        config: ComputeConfig,
        hypervisor: GuestHost,
        images: ImageStore,
        waiter: VifWaiter,
        reporter: Reporter,
        metrics: ComputeMetrics,
        table: InstanceTable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = config.compute
        self.hv = hypervisor
        self.images = images
        self.waiter = waiter
        self.reporter = reporter
        self.metrics = metrics
        self.table = table
        self.clock = clock
        self._networks = {net.uuid: net for net in config.networks.values()}
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent_builds, thread_name_prefix="build"
        )
        self._stopping = threading.Event()
        # called with the uuid when a build ends, whatever the outcome (the re-plug
        # looks again at taps re-created meanwhile)
        self.on_finished: Callable[[UUID], None] | None = None

    # ------------------------------------------------------------------ entry

    def submit(self, msg: BuildInstance, received: float, ticket: Ticket | None = None) -> None:
        admitted = self.table.admit(msg, received, self.waiter)
        uuid, rid = msg.instance.uuid, msg.request_id
        if not isinstance(admitted, BuildTask) and ticket is not None:
            ticket.done()
        if admitted == "duplicate":
            # The controller casts again what it has not heard of for a while: say the
            # build is under way, so it stops re-driving a build that is only slow
            # (queued behind `max_concurrent_builds`, or its ports still being wired).
            log.info("build_duplicate_in_flight")
            self.metrics.builds.labels("duplicate").inc()
            self.reporter.instance(
                "instance.create.progress",
                uuid,
                rid,
                state="building",
                step="in_flight",
                name=msg.instance.name,
            )
            return
        if admitted == "deleted":
            log.info("build_refused_deleted")
            self.metrics.builds.labels("refused").inc()
            self.reporter.instance(
                "instance.create.error", uuid, rid, error=True, reason="instance was deleted"
            )
            return
        assert isinstance(admitted, BuildTask)
        admitted.ticket = ticket
        self.metrics.builds_in_flight.inc()
        try:
            self._pool.submit(self.run, admitted)
        except RuntimeError:  # the pool is shut down: we are stopping; fail it visibly now
            self.run(admitted)

    def run(self, task: BuildTask) -> None:
        msg = task.message
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id, instance_uuid=str(task.uuid)
        ):
            try:
                with self.table.locked(task.uuid):
                    self._build(task)
            except Exception as err:  # a bug must still end the build visibly
                log.exception("build_crashed", error=str(err))
                self.metrics.builds.labels("error").inc()
                self.reporter.instance(
                    "instance.create.error", task.uuid, msg.request_id, error=True, reason=str(err)
                )
            finally:
                self.table.finish(task)
                self.metrics.builds_in_flight.dec()
                if self.on_finished is not None:
                    self.on_finished(task.uuid)
                if task.ticket is not None:
                    task.ticket.hand_back() if task.handed_back else task.ticket.done()

    # ------------------------------------------------------------------ steps

    def _build(self, task: BuildTask) -> None:
        spec, uuid, rid = task.message.instance, task.uuid, task.message.request_id

        def progress(step: str) -> None:
            self.reporter.instance(
                "instance.create.progress",
                uuid,
                rid,
                step=step,
                name=spec.name,
                since=task.received,
            )

        self.reporter.instance(
            "instance.create.start",
            uuid,
            rid,
            state="building",
            name=spec.name,
            since=task.received,
        )
        self._observe("queued", task.received)
        existing = self.hv.get(uuid)
        if existing is not None:
            self._report_duplicate(task, existing)
            return
        xml: str | None = None
        try:
            if task.cancelled or self._stopping.is_set():
                reason = task.cancelled or STOPPED_BEFORE_BEGIN
                if reason in HANDED_BACK:
                    self._hand_back(task, reason)
                    return
                raise _Failed(BuildAborted(instance=str(uuid), reason=reason), keep_record=False)
            t = self.clock()
            xml, record = self._render(task)
            self._observe("prepare", t)
            progress("xml_rendered")

            t = self.clock()
            self._wait_for_vifs(task)
            self._observe("vif_wait", t)
            progress("ports_plugged")
            self._check_cancelled(task)

            t = self.clock()
            self.hv.define(uuid, xml)
            self._observe("define", t)
            progress("guest_defined")
            self._check_cancelled(task)

            t = self.clock()
            self.hv.start(uuid)
            # "started once" is what reconcile tells a half-built domain by.
            record.started_at = datetime.now(UTC)
            write_record(self.hv, uuid, record)
            self._observe("start", t)
            progress("guest_started")
        except _Failed as failed:
            if isinstance(failed.error, BuildAborted) and failed.error.reason_given in HANDED_BACK:
                self._hand_back(task, failed.error.reason_given)
                return
            self._fail(task, failed.error, xml if failed.keep_record else None)
            return
        except (HypervisorError, ImageError, OSError) as err:
            self._fail(task, err, xml)
            return
        except (UnknownFlavor, GuestXmlError, ValueError) as err:
            self._fail(task, err, None)
            return
        total = self._observe("total", task.received)
        self.table.count("builds_ok")
        self.metrics.builds.labels("ok").inc()
        log.info("build_done", name=spec.name, elapsed_ms=round(total * 1000, 3))
        self.reporter.instance(
            "instance.create.end", uuid, rid, state="running", name=spec.name, since=task.received
        )

    def _render(self, task: BuildTask) -> tuple[str, InstanceMetadata]:
        """Image, disk and the domain XML; also the record it carries (to update later)."""
        spec = task.message.instance
        image = self.images.resolve(spec.image)
        flavor = driver.pick_flavor(self.config.flavors, spec.flavor)
        self.images.prepare_instance_dir(spec.uuid)
        disk = None
        if isinstance(image, DiskImage):
            disk = self.images.create_overlay(spec.uuid, image, flavor.disk_gb)
        paths = driver.InstancePaths(console_log=self.images.console_log_path(spec.uuid), disk=disk)
        rid = task.message.request_id
        xml = driver.get_guest_xml(
            spec, self.config.flavors, image, paths, self._networks, self.settings.domain_type, rid
        )
        return xml, driver.instance_metadata(spec, flavor, paths, rid)

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
            reason = str(err.fields["reason"])
            raise _Failed(
                BuildAborted(instance=str(task.uuid), reason=reason), keep_record=reason != DELETED
            ) from err

    def _check_cancelled(self, task: BuildTask) -> None:
        if task.cancelled is not None:
            raise _Failed(
                BuildAborted(instance=str(task.uuid), reason=task.cancelled),
                keep_record=task.cancelled != DELETED,
            )

    def _fail(self, task: BuildTask, err: Exception, record_xml: str | None) -> None:
        """Clean up a failed build; keep an error record when there is one to show."""
        uuid, rid = task.uuid, task.message.request_id
        reason = str(err)
        log.warning("build_failed", error=reason, error_type=type(err).__name__)
        try:
            self.hv.destroy(uuid)
            self.hv.undefine(uuid)
            self.images.remove_instance_files(uuid)
            if record_xml is not None:
                guest = parse_guest(record_xml)
                if guest.metadata is not None:
                    guest.metadata.fault = reason
                self.hv.define(uuid, guest.to_xml())
        except Exception as cleanup_err:
            log.exception("build_cleanup_failed", error=str(cleanup_err))
            reason = f"{reason} (clean-up failed: {cleanup_err})"
        self.table.count("builds_failed")
        self.metrics.builds.labels("error").inc()
        self.reporter.instance(
            "instance.create.error",
            uuid,
            rid,
            error=True,
            reason=reason,
            name=task.message.instance.name,
            since=task.received,
        )

    def _hand_back(self, task: BuildTask, reason: str) -> None:
        """Undo what this build made and give the request back to the controller.

        Nothing stays behind (no domain, no disk, no error record): the controller's
        operation is still open and it casts the same build again, which this agent
        (restarted) takes like any other.
        """
        uuid, rid = task.uuid, task.message.request_id
        task.handed_back = True
        try:
            self.hv.destroy(uuid)
            self.hv.undefine(uuid)
            self.images.remove_instance_files(uuid)
        except Exception as err:
            log.exception("hand_back_cleanup_failed", error=str(err))
        log.info("build_handed_back", reason=reason)
        self.metrics.builds.labels("handed_back").inc()
        self.reporter.instance(
            "instance.create.handed_back",
            uuid,
            rid,
            reason=f"{reason}; the controller sends it again",
            name=task.message.instance.name,
            since=task.received,
        )

    def _report_duplicate(self, task: BuildTask, domain: Domain) -> None:
        uuid, rid = task.uuid, task.message.request_id
        record = read_record(domain)
        self.metrics.builds.labels("duplicate").inc()
        if record is None:
            log.error("build_uuid_taken_by_foreign_domain", domain=domain.name)
            reason = f"a domain not managed by this agent ({domain.name}) has this uuid"
            self.reporter.instance("instance.create.error", uuid, rid, error=True, reason=reason)
        elif record.fault is not None:
            log.info("build_duplicate_of_failed", fault=record.fault)
            self.reporter.instance(
                "instance.create.error", uuid, rid, error=True, reason=record.fault
            )
        else:
            log.info("build_duplicate_ignored", state=domain.state)
            self.reporter.instance(
                "instance.create.end",
                uuid,
                rid,
                state=domain.state,
                step="already_built",
                name=record.name,
            )

    def _observe(self, step: str, since: float) -> float:
        assert step in BUILD_STEPS
        elapsed = self.clock() - since
        self.metrics.build_step_seconds.labels(step).observe(elapsed)
        return elapsed

    # ------------------------------------------------------------------ stop

    def drain(self, grace: float) -> None:
        """Let in-flight builds finish within `grace`, then hand the rest back.

        Queued builds that have not begun are handed back at once; builds still
        waiting at the deadline are aborted and handed back. Nothing is failed.
        """
        self._stopping.set()
        deadline = self.clock() + grace
        tasks = self.table.tasks()
        log.info("draining_builds", in_flight=len(tasks), grace_s=grace)
        for task in tasks:
            task.done.wait(max(0.0, deadline - self.clock()))
        for task in tasks:
            if not task.done.is_set():
                task.cancel(STOPPED_DURING)
        self._pool.shutdown(wait=True)
