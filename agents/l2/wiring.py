"""Kernel wiring of ports: the bridge, uplink and tap a port needs, and their removal.

`Wiring` owns what the kernel must look like for a port of a network, through a small
`LinkOps` protocol (the netlink edge in production, a namespace in functional tests, a
tiny stateful fake in unit tests):

- all kernel work for one network holds that network's lock, so the last port leaving
  can never tear a bridge down under a port being plugged into it;
- a plug that fails removes what that attempt created (no half-made devices);
- uplinks by network type: flat bridges the mapped device (never deleting it), vxlan
  makes `vxlan-<vni>` (unicast peers as all-zero FDB entries), vlan makes
  `<dev>.<vid>`;
- leftovers are recognised by our naming only (names.owns_*).

It must not know about messages, records or events: the manager decides what is
wanted, this module makes the kernel match.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from typing import Protocol
from uuid import UUID

import structlog

from agents.l2 import names
from agents.l2.errors import DeviceNotFound, L2Error, UnmappedPhysnet, WiringMismatch
from agents.l2.netlink import Link
from agents.l2.settings import L2Settings
from common.config import NetworkSpec
from common.messages import MTU_MIN, Port

__all__ = ["Link", "LinkOps", "Wiring"]

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


class Wiring:
    def __init__(
        self,
        *,
        links: LinkOps,
        settings: L2Settings,
        networks: Callable[[UUID], NetworkSpec | None],
        observe: Callable[[str, float], None] = lambda step, seconds: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._links = links
        self._l2 = settings
        self._networks = networks
        self._observe = observe
        self._clock = clock
        self._lock = threading.Lock()  # guards _net_locks
        self._net_locks: dict[UUID, threading.Lock] = {}
        # Bridge of each network last seen fully wired; read and written only under
        # that network's lock.
        self._ready: dict[UUID, Link] = {}

    @contextmanager
    def _network_lock(self, network_id: UUID) -> Iterator[None]:
        with self._lock:
            lock = self._net_locks.setdefault(network_id, threading.Lock())
        with lock:
            yield

    def links(self) -> list[Link]:
        """Every link in the namespace (one dump)."""
        return self._links.links()

    def forget(self, network_id: UUID) -> None:
        """Check the network against the kernel again at its next plug."""
        with self._network_lock(network_id):
            self._ready.pop(network_id, None)

    def forget_all(self) -> None:
        for network_id in list(self._ready):
            self.forget(network_id)

    def _timed(self, step: str, t0: float) -> float:
        t1 = self._clock()
        self._observe(step, t1 - t0)
        return t1

    def plug(self, port: Port, net: NetworkSpec, known: Link | None = None) -> bool:
        """Bring the kernel to the port's wanted state. True if anything had to change.

        The network part (bridge, uplink) is checked against the kernel unless this agent
        has seen it wired since it last changed; then the bridge known from that check is
        used. A deletion behind our back clears that knowledge (`device_vanished`), and a
        stale entry makes the fast path fail over to a full check. The tap is always
        checked: read now, or taken from `known` (a dump made for this purpose, as in the
        start-up reconcile). Raises an L2Error after removing what this attempt created.
        """
        with self._network_lock(net.uuid):
            if net.uuid in self._ready:
                try:
                    return self._wire_locked(port, net, full=False, known=known)
                except L2Error as err:
                    log.info("fast_path_retry", reason=err.reason)
            return self._wire_locked(port, net, full=True)

    def _wire_locked(
        self, port: Port, net: NetworkSpec, *, full: bool, known: Link | None = None
    ) -> bool:
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
            dev = known if known is not None and known.name == tap else self._links.link(tap)
            if dev is None:
                dev = self._links.add_tap(tap)
                created.append(tap)
            elif dev.kind != "tun":
                raise WiringMismatch(device=tap, problem=f"exists as a {dev.kind or 'plain'} link")
            t = self._timed("tap", t)
            after: Link | None = dev
            if (dev.mac, dev.mtu, dev.master, dev.up) != (mac, mtu, br.index, port.admin_state_up):
                # MAC, MTU, master and state in one request, then read back: vif_plugged
                # is reported only for what the kernel says it did. (Nothing to change
                # means what was just read already is that answer.)
                self._links.set(dev, master=br, up=port.admin_state_up, mtu=mtu, mac=mac)
                changed = True
                after = self._links.link(tap)
            t = self._timed("attach", t)
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

    def unplug(
        self, port_id: UUID, network_id: UUID | None, still_wanted: Callable[[UUID], bool]
    ) -> None:
        """Remove the port's tap; with the network's lock held, ask `still_wanted` whether
        any recorded port still wants the network, and tear it down if none does."""
        tap = names.tap_name(port_id)
        if network_id is None:
            self._links.delete(tap)
            return
        with self._network_lock(network_id):
            self._links.delete(tap)
            if still_wanted(network_id):
                return
            self._teardown_network(network_id)

    def _teardown_network(self, network_id: UUID) -> None:
        """Remove a network's bridge and uplink; the caller holds the network lock and
        has checked that no recorded port still wants it."""
        net = self._networks(network_id)
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

    def remove_leftovers(
        self,
        gone_taps: set[str],
        wanted_taps: set[str],
        wanted_nets: set[UUID],
        own_nets: set[UUID],
    ) -> tuple[list[str], list[str]]:
        """Delete what is proven unwanted; report, and keep, what is merely unknown.

        A tap goes only when its port is known to be gone (`gone_taps`: a tombstone of
        ours, or a port the controller says it released). A tap with our naming that
        no record explains may be another system's (neutron names its taps the same
        way) or ours under a lost record: it stays. A bridge or uplink goes only when it
        is one of `own_nets` (the networks this host is configured for: the name is
        derived from the network's uuid or VNI), no wanted port uses its network and
        no tap is left in the bridge, so removing it can cut nobody off; one of another
        network stays. Anything not named like ours is never touched.
        Returns (removed, kept_unknown).
        """
        wanted_bridges = {names.bridge_name(n) for n in wanted_nets}
        wanted_vxlans = self._vxlan_names(wanted_nets)
        own_bridges = {names.bridge_name(n) for n in own_nets}
        own_vxlans = self._vxlan_names(own_nets)
        removed: list[str] = []
        kept: list[str] = []
        for link in self._links.links():
            if not names.owns_tap(link.name) or link.name in wanted_taps:
                continue
            if link.name in gone_taps:
                self._remove(link.name, removed)
            else:
                kept.append(link.name)
                log.warning("unknown_device_kept", device=link.name)
        links = self._links.links()
        index = {link.index: link for link in links}
        occupied = {
            index[link.master].name
            for link in links
            if link.master in index and names.owns_tap(link.name)
        }
        for link in links:
            if names.owns_bridge(link.name) and link.name not in wanted_bridges:
                if link.name not in own_bridges:
                    kept.append(link.name)
                    log.warning("unknown_device_kept", device=link.name)
                    continue
                if link.name in occupied:
                    kept.append(link.name)
                    log.warning("bridge_in_use_kept", device=link.name)
                    continue
                uplinks = [
                    x.name
                    for x in links
                    if x.master == link.index and x.name in own_vxlans
                    and x.name not in wanted_vxlans
                ]  # fmt: skip
                for name in uplinks:
                    self._remove(name, removed)
                self._remove(link.name, removed)
        for link in self._links.links():  # vxlan uplinks left outside any bridge
            if not names.owns_vxlan(link.name) or link.name in wanted_vxlans:
                continue
            if link.name not in own_vxlans:
                if link.name not in kept:
                    kept.append(link.name)
                    log.warning("unknown_device_kept", device=link.name)
            elif link.master is None:
                self._remove(link.name, removed)
        return removed, kept

    def _vxlan_names(self, nets: set[UUID]) -> set[str]:
        out: set[str] = set()
        for net_id in nets:
            net = self._networks(net_id)
            if net is not None and net.type == "vxlan" and net.segmentation_id is not None:
                out.add(names.vxlan_name(net.segmentation_id))
        return out

    def remove_tap(self, name: str) -> bool:
        """Delete one tap (proven unwanted by the caller); False when it was not there."""
        removed: list[str] = []
        self._remove(name, removed)
        return bool(removed)

    def _remove(self, name: str, removed: list[str]) -> None:
        try:
            if self._links.delete(name):
                removed.append(name)
                log.info("leftover_device_removed", device=name)
        except L2Error as err:
            log.error("leftover_device_remove_failed", device=name, reason=err.reason)
