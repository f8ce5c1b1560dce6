"""The l2-agent's core: what to wire for a port, and when a network's bridge may go.

`L2Manager` turns port messages into kernel state through a small `LinkOps` protocol
(the netlink edge in production, a namespace in functional tests, a tiny stateful fake
in unit tests), records what it was asked in the `PortStore`, and reports vif events
through an `EventSink`. Policy lives here:

- the record is written before the kernel is touched, so a crash mid-plug is finished
  by the next start-up reconcile;
- all kernel work for one network holds that network's lock, so the last port leaving
  can never tear a bridge down under a port being plugged into it;
- a plug that fails removes what that attempt created (no half-made devices);
- the state the last message asks for wins. Messages for one port are handed to the
  manager one at a time in order of arrival (see dispatch.py). A `port_deleted` leaves a
  tombstone: a `port_updated` arriving after it is ignored (an update never brings a
  deleted port back), while a `port_created` after it does (a create is the one message
  that asks for a port to exist). The wire has no sequence numbers, so arrival order
  is the only order there is.

It must not import pyroute2 or the broker libraries, nor parse wire envelopes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import IPv4Address
from typing import Protocol
from uuid import UUID

import structlog

from agents.l2 import names
from agents.l2.errors import (
    DeviceNotFound,
    L2Error,
    UnknownNetwork,
    UnmappedPhysnet,
    WiringMismatch,
)
from agents.l2.metrics import L2Metrics
from agents.l2.netlink import Link
from agents.l2.settings import L2Config
from agents.l2.store import PortRecord, PortStore, now
from common.config import NetworkSpec
from common.messages import (
    MTU_MIN,
    Message,
    Port,
    PortCreated,
    PortDeleted,
    PortInfo,
    PortState,
    PortUpdated,
    VifEvent,
)

log = structlog.get_logger()


class LinkOps(Protocol):
    """The kernel as the manager needs it (agents.l2.netlink.Netlink in production)."""

    namespace: str

    def links(self) -> list[Link]: ...
    def link(self, name: str) -> Link | None: ...
    def add_tap(self, name: str) -> Link: ...
    def add_bridge(self, name: str, mtu: int) -> Link: ...
    def add_vxlan(
        self,
        name: str,
        vni: int,
        *,
        mtu: int,
        port: int,
        local: IPv4Address | None = None,
        device: str | None = None,
        group: IPv4Address | None = None,
    ) -> Link: ...
    def add_vlan(self, name: str, device: str, vid: int, mtu: int) -> Link: ...
    def add_flood_entry(self, vxlan: str, peer: IPv4Address) -> None: ...
    def flood_entries(self, vxlan: str) -> set[str]: ...
    def set(
        self,
        link: Link,
        *,
        master: Link | None = None,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None: ...
    def delete(self, name: str) -> bool: ...


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
        self._links = links
        self._store = store
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # guards the three dicts below
        self._records: dict[UUID, PortRecord] = {}
        self._status: dict[UUID, _Status] = {}
        self._by_tap: dict[str, UUID] = {}
        self._net_locks: dict[UUID, threading.Lock] = {}
        # Bridge of each network last seen fully wired; read and written only under
        # that network's lock.
        self._ready: dict[UUID, Link] = {}

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
        self._update_gauges()

    def _set_status(self, port_id: UUID, state: PortState, reason: str | None = None) -> None:
        with self._lock:
            if port_id in self._status:
                self._status[port_id] = _Status(state, reason)
        self._update_gauges()

    def _update_gauges(self) -> None:
        for state, count in self.counts().items():
            if state != "tombstones":
                self._metrics.ports.labels(state=state).set(count)

    def record(self, port_id: UUID) -> PortRecord | None:
        with self._lock:
            return self._records.get(port_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {"wired": 0, "down": 0, "failed": 0, "pending": 0}
            for status in self._status.values():
                out[status.state] += 1
            out["tombstones"] = sum(1 for r in self._records.values() if r.wanted == "absent")
            return out

    def _present_on(self, network_id: UUID) -> list[UUID]:
        with self._lock:
            return [
                r.port_id
                for r in self._records.values()
                if r.wanted == "present" and r.network_id == network_id
            ]

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

    @contextmanager
    def _network_lock(self, network_id: UUID) -> Iterator[None]:
        with self._lock:
            lock = self._net_locks.setdefault(network_id, threading.Lock())
        with lock:
            yield

    def _network(self, network_id: UUID) -> NetworkSpec:
        net = self.config.network_by_uuid(network_id)
        if net is None:
            raise UnknownNetwork(network_id=network_id, host=self.host)
        return net

    # ------------------------------------------------------------------ messages

    def port_created(self, msg: PortCreated, received: float | None = None) -> None:
        self._apply(msg.port, msg.request_id, received)

    def port_updated(self, msg: PortUpdated, received: float | None = None) -> None:
        record = self.record(msg.port.id)
        if record is not None and record.wanted == "absent":
            log.info("port_update_after_delete_ignored", deleted_at=record.updated_at.isoformat())
            return
        self._apply(msg.port, msg.request_id, received)

    def port_deleted(self, msg: PortDeleted, received: float | None = None) -> None:
        started = received if received is not None else self._clock()
        record = self.record(msg.port_id)
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
            )
        )
        try:
            self._unwire(msg.port_id, network_id)
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
                self._unwire(port.id, previous.network_id)
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
            )
        )
        self._plug(port, request_id, started, always_report=True)

    def ensure(self, port_id: UUID, why: str) -> None:
        """Make the kernel match the record of `port_id` again (reconcile, a vanished device)."""
        record = self.record(port_id)
        if record is None or record.wanted != "present" or record.port is None:
            return
        self._plug(
            record.port, record.request_id, self._clock(), always_report=why == "reconcile", why=why
        )

    # ------------------------------------------------------------------ plug / unplug

    def _plug(
        self,
        port: Port,
        request_id: str | None,
        started: float,
        *,
        always_report: bool,
        why: str = "message",
    ) -> bool:
        tap = names.tap_name(port.id)
        bridge = names.bridge_name(port.network_id)
        try:
            changed = self._wire(port)
        except L2Error as err:
            self._set_status(port.id, "failed", err.reason)
            self._metrics.plugs.labels(result="failed").inc()
            self._metrics.plug_seconds.labels(result="failed").observe(self._clock() - started)
            if why != "message":
                self._metrics.rewires.labels(result="failed").inc()
            self._events.error(
                "port.plug_failed",
                VifEvent(
                    request_id=request_id,
                    host=self.host,
                    port_id=port.id,
                    network_id=port.network_id,
                    instance_uuid=port.instance_uuid,
                    device=tap,
                    bridge=bridge,
                    reason=err.reason,
                ),
                request_id=request_id,
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
            # vif_plugged only for a tap that is in its bridge and up (checked in _wire).
            self._events.info(
                "port.vif_plugged",
                VifEvent(
                    request_id=request_id,
                    host=self.host,
                    port_id=port.id,
                    network_id=port.network_id,
                    instance_uuid=port.instance_uuid,
                    device=tap,
                    bridge=bridge,
                ),
                request_id=request_id,
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

    def _timed(self, step: str, t0: float) -> float:
        t1 = self._clock()
        self._metrics.step_seconds.labels(step=step).observe(t1 - t0)
        return t1

    def _wire(self, port: Port) -> bool:
        """Bring the kernel to the port's wanted state. True if anything had to change.

        The network part (bridge, uplink) is checked against the kernel unless this agent
        has seen it wired since it last changed; then the bridge known from that check is
        used. A deletion behind our back clears that knowledge (`device_vanished`), and a
        stale entry makes the fast path fail over to a full check. The tap is always
        checked. Raises an L2Error after removing what this attempt created.
        """
        net = self._network(port.network_id)  # before any lock or device: nothing to undo
        with self._network_lock(net.uuid):
            if net.uuid in self._ready:
                try:
                    return self._wire_locked(port, net, full=False)
                except L2Error as err:
                    log.info("fast_path_retry", reason=err.reason)
            return self._wire_locked(port, net, full=True)

    def _wire_locked(self, port: Port, net: NetworkSpec, *, full: bool) -> bool:
        tap = names.tap_name(port.id)
        mac = names.host_mac(port.mac)
        mtu = port.mtu or net.mtu
        created: list[str] = []
        changed = False
        try:
            t = self._clock()
            if full or net.uuid not in self._ready:
                self._ready.pop(net.uuid, None)
                br, made = self._ensure_bridge(net, created)
                t = self._timed("bridge", t)
                made |= self._ensure_uplink(net, br, created)
                t = self._timed("uplink", t)
                self._ready[net.uuid] = br
                changed |= made
            br = self._ready[net.uuid]
            dev = self._links.link(tap)
            if dev is None:
                dev = self._links.add_tap(tap)
                created.append(tap)
            elif dev.kind != "tun":
                raise WiringMismatch(device=tap, problem=f"exists as a {dev.kind or 'plain'} link")
            t = self._timed("tap", t)
            if (dev.mac, dev.mtu, dev.master, dev.up) != (mac, mtu, br.index, port.admin_state_up):
                # MAC, MTU, master and state in one request.
                self._links.set(dev, master=br, up=port.admin_state_up, mtu=mtu, mac=mac)
                changed = True
            t = self._timed("attach", t)
            after = self._links.link(tap)
            if after is None or after.master != br.index or after.up != port.admin_state_up:
                raise WiringMismatch(
                    device=tap,
                    problem=f"master={getattr(after, 'master', None)} (bridge is {br.index}), "
                    f"up={getattr(after, 'up', None)}",
                )
            self._timed("verify", t)
        except L2Error:
            self._ready.pop(net.uuid, None)
            for name in reversed(created):
                try:
                    self._links.delete(name)
                except L2Error as undo:
                    log.error("plug_undo_failed", device=name, reason=undo.reason)
            raise
        return changed

    def _ensure_bridge(self, net: NetworkSpec, created: list[str]) -> tuple[Link, bool]:
        bridge = names.bridge_name(net.uuid)
        br = self._links.link(bridge)
        if br is None:
            # STP off and forward delay 0: a port forwards at once (no 15 s listening
            # phase), as neutron's linuxbridge agent does; the provider net has no loops.
            br = self._links.add_bridge(bridge, net.mtu)
            created.append(bridge)
        elif br.kind != "bridge":
            raise WiringMismatch(device=bridge, problem=f"exists as a {br.kind or 'plain'} link")
        if br.up and br.mtu == net.mtu and bridge not in created:
            return br, False
        if bridge in created:
            # The bridge MTU must follow the network, not its smallest port. The kernel
            # stops auto-adjusting a bridge's MTU to its ports' minimum only once the MTU
            # was changed through the bridge's ndo_change_mtu (BROPT_MTU_SET_BY_USER);
            # setting the value it already has is a no-op that does not count. So: two
            # real changes, ending at the network's MTU.
            self._links.set(br, mtu=net.mtu - 1 if net.mtu > MTU_MIN else net.mtu + 1)
        self._links.set(br, up=True, mtu=net.mtu)
        return br, True

    def _uplink_name(self, net: NetworkSpec) -> str | None:
        if net.type == "vxlan":
            assert net.segmentation_id is not None  # NetworkSpec validates this
            return names.vxlan_name(net.segmentation_id)
        device = self._physdev(net)
        if net.type == "vlan":
            assert net.segmentation_id is not None
            return names.vlan_name(device, net.segmentation_id)
        return device

    def _physdev(self, net: NetworkSpec) -> str:
        device = self._l2.physical_interface_mappings.get(net.physnet or "")
        if device is None:
            raise UnmappedPhysnet(network_id=net.uuid, physnet=net.physnet)
        return device

    def _ensure_uplink(self, net: NetworkSpec, br: Link, created: list[str]) -> bool:
        name = self._uplink_name(net)
        assert name is not None
        link = self._links.link(name)
        made = False
        if link is None:
            if net.type == "flat":
                raise DeviceNotFound(device=name, namespace=self._links.namespace or "(own)")
            if net.type == "vxlan":
                link = self._create_vxlan(net, name)
            else:
                assert net.segmentation_id is not None
                link = self._links.add_vlan(name, self._physdev(net), net.segmentation_id, net.mtu)
            created.append(name)
            made = True
        elif net.type == "vxlan" and (link.kind != "vxlan" or link.vni != net.segmentation_id):
            raise WiringMismatch(
                device=name, problem=f"exists with kind={link.kind} vni={link.vni}"
            )
        elif net.type == "vxlan":
            missing = {str(p) for p in self._l2.vxlan_peers} - self._links.flood_entries(name)
            for peer in sorted(missing):
                self._links.add_flood_entry(name, IPv4Address(peer))
            made |= bool(missing)
        if link.master != br.index or not link.up:
            self._links.set(link, master=br, up=True)
            made = True
        return made

    def _create_vxlan(self, net: NetworkSpec, name: str) -> Link:
        l2 = self._l2
        # Without a local address, device or peers the VXLAN still carries traffic
        # between the ports of this host (a single-host deployment); it only reaches
        # other hosts once [l2] names the tunnel endpoint.
        assert net.segmentation_id is not None
        link = self._links.add_vxlan(
            name,
            net.segmentation_id,
            mtu=net.mtu,
            port=l2.vxlan_port,
            local=l2.vxlan_local_ip,
            device=l2.vxlan_device,
            group=l2.vxlan_group,
        )
        for peer in l2.vxlan_peers:
            # Unicast mode: flood broadcast/unknown frames to every peer VTEP.
            self._links.add_flood_entry(name, peer)
        return link

    def _unwire(self, port_id: UUID, network_id: UUID | None) -> None:
        tap = names.tap_name(port_id)
        if network_id is None:
            self._links.delete(tap)
            return
        with self._network_lock(network_id):
            self._links.delete(tap)
            if self._present_on(network_id):
                return
            self._teardown_network(network_id)

    def _teardown_network(self, network_id: UUID) -> None:
        """Remove a network's bridge and uplink; the caller holds the network lock and
        has checked that no recorded port still wants it."""
        net = self.config.network_by_uuid(network_id)
        if net is not None and net.type != "flat":
            try:
                uplink = self._uplink_name(net)
            except L2Error:
                uplink = None
            if uplink is not None and self._links.delete(uplink):
                log.info("uplink_removed", device=uplink)
        self._ready.pop(network_id, None)
        # Deleting the bridge releases a flat network's physical device; it is never deleted.
        if self._links.delete(names.bridge_name(network_id)):
            log.info("bridge_removed", bridge=names.bridge_name(network_id))

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
            self._ready.clear()
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
        replugged = failed = 0
        for record in records.values():
            if record.wanted == "present" and record.port is not None:
                with structlog.contextvars.bound_contextvars(port_id=str(record.port_id)):
                    self.ensure(record.port_id, why="reconcile")
                with self._lock:
                    status = self._status.get(record.port_id)
                if status is None or status.state == "failed":
                    failed += 1
                else:
                    replugged += 1
        removed = self._remove_leftovers()
        elapsed = self._clock() - started
        self._metrics.reconcile.labels(action="replugged").inc(replugged)
        self._metrics.reconcile.labels(action="failed").inc(failed)
        self._metrics.reconcile.labels(action="removed_device").inc(len(removed))
        self._metrics.reconcile.labels(action="pruned_tombstone").inc(pruned)
        self._metrics.reconcile_seconds.observe(elapsed)
        self._update_gauges()
        report = ReconcileReport(replugged, failed, tuple(removed), pruned, elapsed)
        log.info(
            "reconcile_done",
            replugged=replugged,
            failed=failed,
            removed=len(removed),
            pruned_tombstones=pruned,
            elapsed_ms=round(elapsed * 1000, 1),
        )
        return report

    def _remove_leftovers(self) -> list[str]:
        """Delete devices with our naming that no recorded port wants. Taps first, then
        uplinks, then bridges; anything not named like ours is never touched."""
        with self._lock:
            wanted_nets = {
                r.network_id
                for r in self._records.values()
                if r.wanted == "present" and r.network_id is not None
            }
            wanted_taps = set(self._by_tap)
        wanted_bridges = {names.bridge_name(n) for n in wanted_nets}
        wanted_vxlans: set[str] = set()
        for net_id in wanted_nets:
            net = self.config.network_by_uuid(net_id)
            if net is not None and net.type == "vxlan" and net.segmentation_id is not None:
                wanted_vxlans.add(names.vxlan_name(net.segmentation_id))
        links = self._links.links()
        removed: list[str] = []
        for test, wanted in (
            (names.owns_tap, wanted_taps),
            (names.owns_vxlan, wanted_vxlans),
            (names.owns_bridge, wanted_bridges),
        ):
            for link in links:
                if test(link.name) and link.name not in wanted:
                    try:
                        if self._links.delete(link.name):
                            removed.append(link.name)
                            log.info("leftover_device_removed", device=link.name)
                    except L2Error as err:
                        log.error(
                            "leftover_device_remove_failed", device=link.name, reason=err.reason
                        )
        return removed

    def device_vanished(self, device: str) -> list[UUID]:
        """A device was deleted behind our back: forget what we knew of its network and
        return the ports to re-check (each in its own serial queue)."""
        affected = self.ports_affected_by(device)
        if not names.owns_tap(device):
            with self._lock:
                nets = {r.network_id for p in affected if (r := self._records.get(p)) is not None}
            for net_id in nets:
                if net_id is not None:
                    with self._network_lock(net_id):
                        self._ready.pop(net_id, None)
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
