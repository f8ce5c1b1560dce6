"""Re-plugging a running guest's NIC onto a tap that the l2-agent re-created.

QEMU holds an open fd of the tap it started with. When that tap is deleted under it
(by hand, or by anything) and the l2-agent puts a new tap of the same name into the
bridge, QEMU never sees the new one: its fd still points at the deleted device and the
guest is cut off for good (measured: /proc/<qemu>/fdinfo of the tun fd shows `iff:`
empty after the delete). The l2-agent reports the re-wired tap with `port.vif_plugged`
(after its restart/reconcile or a netlink-event re-wire); this module answers that by
detaching the guest's interface and attaching it again, so QEMU opens the new tap.

When, exactly (the rule is deliberately narrow, since a re-plug cuts the guest's link
for a few seconds):
- the tap has no reader (taps.py: no carrier): a tap QEMU still holds is never touched,
  which is what an l2-agent restart that re-reports every port looks like;
- the port belongs to an instance of ours that is running, is not being built (a
  build consumes its own vif_plugged through the waiter) and has no fault;
- the event was emitted after the guest was last started (record.started_at): an
  event older than the guest is the one its build waited for;
- the port is a pre-created tap (`vif_type` ethernet): libvirt owns bridge-type taps.
All of it is checked again under the instance's lock (builds.InstanceTable.locked), so a
re-plug never races a build, delete or reboot of the same instance, and a second event
for the same tap finds it read again and does nothing (idempotent).

Work happens on a small pool, never on the notification listener's thread (a re-plug
takes 2-3 s: detach waits for the guest's ACPI hot-unplug). Every re-plug is reported
(`instance.interface.replugged` / `instance.interface.error`) and counted by outcome.
It must not import libvirt (hypervisor.py) nor touch links (the l2-agent owns them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Literal, Protocol
from uuid import UUID

import structlog

from agents.compute import vif
from agents.compute.builds import InstanceTable
from agents.compute.errors import ReplugFailed
from agents.compute.guest import Interface, interface_macs, parse_guest
from agents.compute.records import GuestHost, owned_domains, read_record
from agents.compute.reporter import Reporter
from agents.compute.telemetry import ComputeMetrics
from common.errors import AgentsError
from common.messages import VifEvent

log = structlog.get_logger()

REPLUGGED = "instance.interface.replugged"
REPLUG_ERROR = "instance.interface.error"

Outcome = Literal[
    "replugged",  # detached and attached again
    "restarted",  # the guest would not release its NIC: restarted, which reopened the tap
    "attached",  # the tap has a reader (QEMU): nothing to do
    "tap_missing",  # no such link in this namespace: nothing this agent can re-plug
    "not_ours",  # no instance of ours has this port
    "building",  # its build is in flight and consumes the event itself
    "not_running",  # shut off, paused, crashed or in error
    "older_than_guest",  # the event predates the guest's start: it was the build's
    "not_a_tap",  # a bridge-type port: libvirt made that tap, not the l2-agent
]


class TapState(Protocol):
    def has_reader(self, device: str) -> bool | None: ...


class Replugger:
    def __init__(
        self,
        hypervisor: GuestHost,
        taps: TapState,
        table: InstanceTable,
        reporter: Reporter,
        metrics: ComputeMetrics,
        workers: int = 2,
        removal_timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.hv = hypervisor
        self.taps = taps
        self.table = table
        self.reporter = reporter
        self.metrics = metrics
        self.removal_timeout = removal_timeout
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._queued: set[UUID] = set()
        # vif_plugged events that arrived while their instance was being built
        self._deferred: dict[UUID, list[VifEvent]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replug")

    # ------------------------------------------------------------------ entry

    def on_plugged(self, event: VifEvent) -> None:
        """From the listener thread: hold what arrives during a build, queue the rest."""
        if event.instance_uuid is not None and self.table.get(event.instance_uuid) is not None:
            # Usually the build's own event. But a tap re-created while the guest was
            # being started is not the one QEMU opened: looked at again when the build
            # ends (build_finished), with the facts of that moment.
            self.metrics.replugs.labels("building").inc()
            with self._lock:
                self._deferred.setdefault(event.instance_uuid, []).append(event)
            return
        with self._lock:
            if event.port_id in self._queued:
                return  # a check of this port is queued and will see the same tap
            self._queued.add(event.port_id)
        try:
            self._pool.submit(self._run, event)
        except RuntimeError:  # stopping: the pool is shut down
            with self._lock:
                self._queued.discard(event.port_id)
            log.info("replug_check_dropped_stopping", port_id=str(event.port_id))

    def build_finished(self, uuid: UUID) -> None:
        """A build of `uuid` ended: check again each port reported plugged more than once
        during it. The first report is the build's own (its vif wait takes it); a
        second one means the tap was made again after QEMU may have opened the first."""
        with self._lock:
            events = self._deferred.pop(uuid, [])
        per_port: dict[UUID, list[VifEvent]] = {}
        for event in events:
            per_port.setdefault(event.port_id, []).append(event)
        for reports in per_port.values():
            if len(reports) > 1:
                self.on_plugged(reports[-1].model_copy(update={"at": datetime.now(UTC)}))

    def close(self) -> None:
        """Finish the re-plug in progress; checks still queued are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, event: VifEvent) -> None:
        with self._lock:
            # From here a new event of this port queues a new check (which will find the
            # tap read again if this one re-plugs it).
            self._queued.discard(event.port_id)
        with structlog.contextvars.bound_contextvars(
            request_id=event.request_id,
            port_id=str(event.port_id),
            instance_uuid=str(event.instance_uuid) if event.instance_uuid else None,
        ):
            try:
                outcome = self.check(event)
            except Exception as err:  # the worker's boundary: counted and logged once
                log.exception("replug_check_crashed", error=str(err))
                self.metrics.replugs.labels("error").inc()
                return
            self.metrics.replugs.labels(outcome).inc()

    # ------------------------------------------------------------------ decision

    def check(self, event: VifEvent) -> Outcome | Literal["error"]:
        """Decide, and re-plug when needed; returns what happened."""
        tap = vif.tap_name(event.port_id)
        reader = self.taps.has_reader(tap)
        if reader is None:
            log.debug("replug_skipped_tap_missing", device=tap)
            return "tap_missing"
        if reader:
            log.debug("replug_not_needed", device=tap)
            return "attached"
        uuid = event.instance_uuid or self._owner_of(event.port_id)
        if uuid is None:
            return "not_ours"
        if self.table.get(uuid) is not None:
            return "building"
        with self.table.locked(uuid):
            if self.table.get(uuid) is not None:
                return "building"
            domain = self.hv.get(uuid)
            record = read_record(domain) if domain is not None else None
            if domain is None or record is None:
                return "not_ours"
            port = next((p for p in record.ports if p.id == str(event.port_id)), None)
            if port is None:
                return "not_ours"
            if record.fault is not None or not domain.active or domain.state != "running":
                return "not_running"
            if record.started_at is not None and event.at <= record.started_at:
                return "older_than_guest"
            if port.vif_type == "bridge":
                return "not_a_tap"
            iface = next(
                (
                    i
                    for i in parse_guest(domain.xml).interfaces
                    if i.net_type == "ethernet" and i.target_dev == tap
                ),
                None,
            )
            if iface is None:
                return "not_a_tap"
            if self.taps.has_reader(tap) is not False:  # again, under the lock
                return "attached"
            started = self.clock()

            def failed(err: Exception) -> Literal["error"]:
                self.reporter.instance(
                    REPLUG_ERROR,
                    uuid,
                    event.request_id,
                    error=True,
                    state=domain.state,
                    step="replug",
                    name=record.name,
                    reason=f"port {event.port_id} (tap {tap}): {err}",
                    since=started,
                )
                return "error"

            try:
                self._replug(uuid, event.port_id, iface)
            except ReplugFailed as err:
                # A guest that does not answer ACPI hot-unplug (still booting, or slow
                # under TCG) keeps a NIC on a tap that no longer exists: cut off for
                # good. Restarting it (destroy + start) reopens every tap by name.
                log.warning("interface_replug_failed", device=tap, error=str(err))
                try:
                    self.hv.reboot(uuid, hard=True)
                except Exception as reboot_err:
                    log.exception("replug_restart_failed", error=str(reboot_err))
                else:
                    log.info("guest_restarted_for_tap", device=tap)
                    self.reporter.instance(
                        REPLUGGED,
                        uuid,
                        event.request_id,
                        state="running",
                        step="restarted",
                        name=record.name,
                        reason=f"tap {tap} of port {event.port_id} was re-created and the "
                        f"guest did not release its NIC ({err.fields.get('problem')}): "
                        "restarted, which reopened the tap",
                        since=started,
                    )
                    return "restarted"
                return failed(err)
            except Exception as err:
                # libvirt refusing (a driver without hot-plug, a vanished domain) is a
                # named failure, reported below; only a bug deserves a traceback
                level = log.warning if isinstance(err, AgentsError) else log.exception
                level("interface_replug_failed", device=tap, error=str(err))
                return failed(err)
        elapsed = self.clock() - started
        log.info("interface_replugged", device=tap, elapsed_ms=round(elapsed * 1000, 1))
        self.reporter.instance(
            REPLUGGED,
            uuid,
            event.request_id,
            state="running",
            step="replugged",
            name=record.name,
            reason=f"tap {tap} of port {event.port_id} was re-created: NIC detached and "
            "attached again",
            since=started,
        )
        return "replugged"

    def _owner_of(self, port_id: UUID) -> UUID | None:
        """The instance holding `port_id`, for an event that does not name it."""
        wanted = str(port_id)
        for domain, record in owned_domains(self.hv):
            if any(p.id == wanted for p in record.ports):
                return domain.uuid
        return None

    # ------------------------------------------------------------------ action

    def _replug(self, uuid: UUID, port_id: UUID, iface: Interface) -> None:
        xml = iface.to_xml()
        mac = iface.mac.lower()
        if mac in self._live_macs(uuid, port_id):
            self.hv.detach_device(uuid, xml)
            deadline = self.clock() + self.removal_timeout
            # detach may return before QEMU reported DEVICE_DELETED (hypervisor.py):
            # attaching the same MAC before then would be refused as a duplicate.
            while mac in self._live_macs(uuid, port_id):
                if self.clock() > deadline:
                    raise ReplugFailed(
                        port=str(port_id),
                        instance=str(uuid),
                        problem=f"the guest did not release the NIC within "
                        f"{self.removal_timeout}s (no ACPI hot-unplug?)",
                    )
                self.sleep(0.1)
            log.info("interface_detached", mac=mac)
        # else: a previous attempt detached it and failed to attach: just attach.
        self.hv.attach_device(uuid, xml)

    def _live_macs(self, uuid: UUID, port_id: UUID) -> set[str]:
        live = self.hv.live_xml(uuid)
        if live is None:
            raise ReplugFailed(
                port=str(port_id), instance=str(uuid), problem="the guest stopped meanwhile"
            )
        return interface_macs(live)
