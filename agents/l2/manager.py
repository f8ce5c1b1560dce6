"""The l2-agent's core: which message wins, what is recorded, what is reported.

`L2Manager` turns port messages into wanted state, records it in the `PortStore`, has
`Wiring` make the kernel match, and reports vif events through an `EventSink`:

- the record is written before the kernel is touched, so a crash mid-plug is finished
  by the next start-up reconcile;
- vif_plugged is reported only for a tap that is in its bridge and up, plug_failed with
  the reason otherwise, vif_unplugged after a delete;
- a network's bridge goes when its last recorded port goes (Wiring asks, under the
  network's lock, whether any recorded port still wants it);
- which message wins: messages carry the controller's revision of the port (neutron's
  revision_number); one older than the recorded revision is stale and ignored (a
  create delivered after the delete cannot bring a released port back). A tombstone
  the controller versioned also wins over an unversioned create. Between unversioned
  messages the state the last one asks for wins, in order of arrival per port
  (common.workers): a `port_updated` never brings a deleted port back, a `port_created`
  does (a create is the one message that asks for a port to exist).

It must not import pyroute2 or the broker libraries, nor parse wire envelopes.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol
from uuid import UUID

import structlog

from agents.l2 import names
from agents.l2.errors import L2Error, UnknownNetwork
from agents.l2.metrics import L2Metrics
from agents.l2.settings import L2Config
from agents.l2.store import PortRecord, PortStore, now
from agents.l2.wiring import Link, LinkOps, Wiring
from common.config import NetworkSpec
from common.messages import (
    Message,
    Port,
    PortCreated,
    PortDeleted,
    PortInfo,
    PortState,
    PortUpdated,
    VifEvent,
    utcnow,
)

log = structlog.get_logger()


class EventSink(Protocol):
    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None: ...
    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None: ...


@dataclass
class _Status:
    state: PortState
    reason: str | None = None


@dataclass(frozen=True)
class ReconcileReport:
    replugged: int
    failed: int
    removed_devices: tuple[str, ...]
    pruned_tombstones: int
    seconds: float
    # devices with our naming that nothing proves unwanted: reported, left alone
    kept_unknown: tuple[str, ...] = ()


class L2Manager:
    def __init__(
        self,
        *,
        config: L2Config,
        links: LinkOps,
        store: PortStore,
        events: EventSink,
        metrics: L2Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.host = config.DEFAULT.host
        self._l2 = config.l2
        self._wiring = Wiring(
            links=links,
            settings=config.l2,
            networks=config.network_by_uuid,
            observe=lambda step, seconds: metrics.step_seconds.labels(step=step).observe(seconds),
            clock=clock,
        )
        self._store = store
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # guards the three dicts below
        self._records: dict[UUID, PortRecord] = {}
        self._status: dict[UUID, _Status] = {}
        self._by_tap: dict[str, UUID] = {}
        for state in ("wired", "down", "failed", "pending"):
            # Counted when scraped, not on every change (O(ports) per count).
            metrics.ports.labels(state=state).set_function(functools.partial(self._count, state))

    # ------------------------------------------------------------------ records

    def _remember(self, record: PortRecord) -> None:
        self._store.put(record)
        with self._lock:
            old = self._records.get(record.port_id)
            if old is not None and old.wanted == "present":
                self._by_tap.pop(names.tap_name(record.port_id), None)
            self._records[record.port_id] = record
            if record.wanted == "present":
                self._by_tap[names.tap_name(record.port_id)] = record.port_id
                self._status.setdefault(record.port_id, _Status("pending"))
            else:
                self._status.pop(record.port_id, None)

    def _set_status(self, port_id: UUID, state: PortState, reason: str | None = None) -> None:
        with self._lock:
            if port_id in self._status:
                self._status[port_id] = _Status(state, reason)

    def _count(self, state: PortState) -> int:
        with self._lock:
            return sum(1 for status in self._status.values() if status.state == state)

    def record(self, port_id: UUID) -> PortRecord | None:
        with self._lock:
            return self._records.get(port_id)

    def remove_released_tap(self, port_id: UUID) -> bool:
        """The controller says this port was released, and no record of ours explains its
        tap: the tap is proven unwanted. Returns whether one was deleted."""
        if self.record(port_id) is not None:
            return False  # our own record decides (a port_deleted for it is queued)
        tap = names.tap_name(port_id)
        deleted = self._wiring.remove_tap(tap)
        if deleted:
            log.info("released_tap_removed", device=tap, port_id=str(port_id))
        return deleted

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {"wired": 0, "down": 0, "failed": 0, "pending": 0}
            for status in self._status.values():
                out[status.state] += 1
            out["tombstones"] = sum(1 for r in self._records.values() if r.wanted == "absent")
            return out

    def _wanted(self, network_id: UUID) -> bool:
        """Does any recorded port still want this network?"""
        with self._lock:
            return any(
                r.wanted == "present" and r.network_id == network_id for r in self._records.values()
            )

    def port_infos(self) -> list[PortInfo]:
        with self._lock:
            items = [
                (r, self._status.get(r.port_id))
                for r in self._records.values()
                if r.port is not None and r.wanted == "present"
            ]
        return [
            PortInfo(
                port=r.port,
                host=self.host,
                state=s.state if s else "pending",
                device=names.tap_name(r.port_id),
                bridge=names.bridge_name(r.port.network_id),
                reason=s.reason if s else None,
            )
            for r, s in items
            if r.port is not None
        ]

    def _network(self, network_id: UUID) -> NetworkSpec:
        net = self.config.network_by_uuid(network_id)
        if net is None:
            raise UnknownNetwork(network_id=network_id, host=self.host)
        return net

    # ------------------------------------------------------------------ messages

    def _stale(self, record: PortRecord | None, revision: int | None, method: str) -> bool:
        """Is a message of `revision` older than what `record` already holds?"""
        if record is None or record.revision is None:
            return False
        versioned_tombstone = record.wanted == "absent" and method != "port_deleted"
        if revision is None and not versioned_tombstone:
            return False
        if revision is not None and revision >= record.revision:
            return False
        log.info(
            "stale_port_message_ignored",
            method=method,
            revision=revision,
            recorded_revision=record.revision,
            recorded=record.wanted,
        )
        self._metrics.stale_messages.inc()
        return True

    def port_created(self, msg: PortCreated, received: float | None = None) -> None:
        if self._stale(self.record(msg.port.id), msg.port.revision, "port_created"):
            return
        self._apply(msg.port, msg.request_id, received)

    def port_updated(self, msg: PortUpdated, received: float | None = None) -> None:
        record = self.record(msg.port.id)
        if self._stale(record, msg.port.revision, "port_updated"):
            return
        if record is not None and record.wanted == "absent":
            log.info("port_update_after_delete_ignored", deleted_at=record.updated_at.isoformat())
            return
        self._apply(msg.port, msg.request_id, received)

    def port_deleted(self, msg: PortDeleted, received: float | None = None) -> None:
        started = received if received is not None else self._clock()
        record = self.record(msg.port_id)
        if self._stale(record, msg.revision, "port_deleted"):
            return
        network_id = msg.network_id
        if record is not None and record.network_id is not None:
            network_id = record.network_id
        self._remember(
            PortRecord(
                port_id=msg.port_id,
                network_id=network_id,
                wanted="absent",
                request_id=msg.request_id,
                updated_at=now(),
                revision=msg.revision,
            )
        )
        try:
            self._wiring.unplug(msg.port_id, network_id, self._wanted)
        except L2Error as err:
            self._metrics.unplugs.labels(result="failed").inc()
            log.error("port_unplug_failed", reason=err.reason)
            return
        self._metrics.unplugs.labels(result="ok").inc()
        self._metrics.step_seconds.labels(step="unplug").observe(self._clock() - started)
        self._events.info(
            "port.vif_unplugged",
            VifEvent(
                request_id=msg.request_id,
                host=self.host,
                port_id=msg.port_id,
                network_id=network_id,
                device=names.tap_name(msg.port_id),
            ),
            request_id=msg.request_id,
        )
        log.info("port_unplugged", network_id=str(network_id) if network_id else None)

    def _apply(self, port: Port, request_id: str | None, received: float | None) -> None:
        started = received if received is not None else self._clock()
        previous = self.record(port.id)
        if (
            previous is not None
            and previous.wanted == "present"
            and previous.network_id is not None
            and previous.network_id != port.network_id
        ):
            # The port moved to another network: leave the old bridge first.
            self._remember(previous.model_copy(update={"wanted": "absent", "port": None}))
            try:
                self._wiring.unplug(port.id, previous.network_id, self._wanted)
            except L2Error as err:
                log.error("port_move_unplug_failed", reason=err.reason)
        self._remember(
            PortRecord(
                port_id=port.id,
                network_id=port.network_id,
                wanted="present",
                port=port,
                request_id=request_id,
                updated_at=now(),
                revision=port.revision,
            )
        )
        self._plug(port, request_id, started, always_report=True)

    def ensure(self, port_id: UUID, why: str, known: Link | None = None) -> None:
        """Make the kernel match the record of `port_id` again (reconcile, a vanished device)."""
        record = self.record(port_id)
        if record is None or record.wanted != "present" or record.port is None:
            return
        self._plug(
            record.port,
            record.request_id,
            self._clock(),
            always_report=why == "reconcile",
            why=why,
            known=known,
        )

    # ------------------------------------------------------------------ plug / unplug

    def _vif_event(
        self,
        port: Port,
        request_id: str | None,
        reason: str | None = None,
        received: float | None = None,
    ) -> VifEvent:
        """The payload of port.vif_plugged / port.plug_failed for `port` on this host.

        `received` (this agent's monotonic clock) is when the port message was taken,
        carried as a wall-clock time for the controller's timeline.
        """
        received_at = (
            None if received is None else utcnow() - timedelta(seconds=self._clock() - received)
        )
        return VifEvent(
            received_at=received_at,
            request_id=request_id,
            host=self.host,
            port_id=port.id,
            network_id=port.network_id,
            instance_uuid=port.instance_uuid,
            device=names.tap_name(port.id),
            bridge=names.bridge_name(port.network_id),
            reason=reason,
        )

    def _plug(
        self,
        port: Port,
        request_id: str | None,
        started: float,
        *,
        always_report: bool,
        why: str = "message",
        known: Link | None = None,
    ) -> bool:
        tap = names.tap_name(port.id)
        bridge = names.bridge_name(port.network_id)
        try:
            net = self._network(port.network_id)  # before any device: nothing to undo
            changed = self._wiring.plug(port, net, known)
        except L2Error as err:
            self._set_status(port.id, "failed", err.reason)
            self._metrics.plugs.labels(result="failed").inc()
            self._metrics.plug_seconds.labels(result="failed").observe(self._clock() - started)
            if why != "message":
                self._metrics.rewires.labels(result="failed").inc()
            self._events.error(
                "port.plug_failed",
                self._vif_event(
                    port, request_id, err.reason, started if why == "message" else None
                ),
                request_id,
            )
            log.error("port_plug_failed", reason=err.reason, why=why, error=type(err).__name__)
            return False
        state: PortState = "wired" if port.admin_state_up else "down"
        self._set_status(port.id, state)
        if not (changed or always_report):
            return True
        self._metrics.plugs.labels(result=state).inc()
        if why != "message":
            self._metrics.rewires.labels(result="ok").inc()
        if state == "wired":
            # vif_plugged only for a tap that is in its bridge and up (checked by Wiring.plug).
            self._events.info(
                "port.vif_plugged",
                self._vif_event(port, request_id, None, started if why == "message" else None),
                request_id,
            )
        elapsed = self._clock() - started
        self._metrics.plug_seconds.labels(result=state).observe(elapsed)
        log.info(
            "port_plugged",
            state=state,
            device=tap,
            bridge=bridge,
            why=why,
            changed=changed,
            elapsed_ms=round(elapsed * 1000, 3),
        )
        return True

    # ------------------------------------------------------------------ start-up, events

    def reconcile(self) -> ReconcileReport:
        """Load the record, re-wire every recorded port, remove our own leftovers."""
        started = self._clock()
        records = self._store.load()
        cutoff = now() - timedelta(seconds=self._l2.tombstone_ttl)
        pruned = 0
        with self._lock:
            self._records.clear()
            self._status.clear()
            self._by_tap.clear()
        self._wiring.forget_all()
        for record in records.values():
            if record.wanted == "absent" and record.updated_at < cutoff:
                self._store.remove(record.port_id)
                pruned += 1
                continue
            with self._lock:
                self._records[record.port_id] = record
                if record.wanted == "present":
                    self._by_tap[names.tap_name(record.port_id)] = record.port_id
                    self._status[record.port_id] = _Status("pending")
        wanted = [r.port_id for r in records.values() if r.wanted == "present" and r.port]
        # Ports in parallel: kernel work still serialises on each network's lock, but
        # reporting vif_plugged (a broker round trip each) overlaps. Nothing consumes
        # messages yet, so no message for these ports can interleave.
        # One dump of the namespace instead of a read per port.
        snapshot = {link.name: link for link in self._wiring.links()}
        with ThreadPoolExecutor(self._l2.workers, thread_name_prefix="l2-reconcile") as pool:
            list(pool.map(lambda p: self._reconcile_port(p, snapshot), wanted))
        with self._lock:
            failed = sum(
                1 for p in wanted if self._status.get(p, _Status("failed")).state == "failed"
            )
        replugged = len(wanted) - failed
        with self._lock:
            wanted_nets = {
                r.network_id
                for r in self._records.values()
                if r.wanted == "present" and r.network_id is not None
            }
            wanted_taps = set(self._by_tap)
            gone_taps = {
                names.tap_name(r.port_id) for r in self._records.values() if r.wanted == "absent"
            }
        if self._store.trustworthy():
            own_nets = {net.uuid for net in self.config.networks.values()}
            removed, kept = self._wiring.remove_leftovers(
                gone_taps, wanted_taps, wanted_nets, own_nets
            )
        else:
            # A record set aside as corrupt, or none where one was expected: nothing is
            # proven gone, so nothing is deleted until an operator looks. A first start
            # on a host with no device named like ours has nothing to look at.
            removed, kept = [], []
            reason = self._store.distrust_reason()
            named_like_ours = sorted(
                name
                for name in snapshot
                if names.owns_tap(name) or names.owns_bridge(name) or names.owns_vxlan(name)
            )
            if self._store.created and not self._store.set_aside() and not named_like_ours:
                log.info("record_directory_created", directory=str(self._store.directory))
            else:
                log.error(
                    "reconcile_deletions_stopped",
                    reason=reason,
                    devices_named_like_ours=len(named_like_ours),
                )
        elapsed = self._clock() - started
        self._metrics.reconcile.labels(action="replugged").inc(replugged)
        self._metrics.reconcile.labels(action="failed").inc(failed)
        self._metrics.reconcile.labels(action="removed_device").inc(len(removed))
        self._metrics.reconcile.labels(action="pruned_tombstone").inc(pruned)
        self._metrics.reconcile_seconds.observe(elapsed)
        report = ReconcileReport(replugged, failed, tuple(removed), pruned, elapsed, tuple(kept))
        log.info(
            "reconcile_done",
            replugged=replugged,
            failed=failed,
            removed=len(removed),
            kept_unknown=len(kept),
            pruned_tombstones=pruned,
            elapsed_ms=round(elapsed * 1000, 1),
        )
        return report

    def _reconcile_port(self, port_id: UUID, snapshot: dict[str, Link]) -> None:
        with structlog.contextvars.bound_contextvars(port_id=str(port_id)):
            self.ensure(port_id, why="reconcile", known=snapshot.get(names.tap_name(port_id)))

    def device_vanished(self, device: str) -> list[UUID]:
        """A device was deleted behind our back: forget what we knew of its network and
        return the ports to re-check (each in its own serial queue)."""
        affected = self.ports_affected_by(device)
        if not names.owns_tap(device):
            with self._lock:
                nets = {r.network_id for p in affected if (r := self._records.get(p)) is not None}
            for net_id in nets:
                if net_id is not None:
                    self._wiring.forget(net_id)
        return affected

    def ports_affected_by(self, device: str) -> list[UUID]:
        """Ports whose wiring depends on `device` (a tap, bridge or vxlan uplink of ours)."""
        if names.owns_tap(device):
            with self._lock:
                port_id = self._by_tap.get(device)
            return [port_id] if port_id is not None else []
        with self._lock:
            present = [r for r in self._records.values() if r.wanted == "present" and r.network_id]
        if names.owns_bridge(device):
            return [
                r.port_id
                for r in present
                if r.network_id is not None and names.bridge_name(r.network_id) == device
            ]
        if names.owns_vxlan(device):
            out = []
            for r in present:
                assert r.network_id is not None
                net = self.config.network_by_uuid(r.network_id)
                if (
                    net is not None
                    and net.type == "vxlan"
                    and f"vxlan-{net.segmentation_id}" == device
                ):
                    out.append(r.port_id)
            return out
        return []
