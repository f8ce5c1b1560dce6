"""A tiny stateful stand-in for the netlink edge, and a recording event sink.

The fake keeps links in a dict and enforces the few kernel rules the manager relies on
(names are unique, a master must exist, deleting a bridge releases its ports). A test
injects a fault by naming a link kind the "kernel" does not support.
"""

from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from agents.l2.errors import DeviceNotFound, KernelFeatureMissing, NetlinkFailure
from agents.l2.netlink import Link
from common.messages import Message


class FakeLinks:
    def __init__(self, unsupported: tuple[str, ...] = ("vlan",), namespace: str = "fake") -> None:
        self.namespace = namespace
        self.unsupported = set(unsupported)
        self.by_name: dict[str, Link] = {}
        self.fdb: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str]] = []
        self._next = 2
        self.fail_set_on: set[str] = set()

    def _add(
        self, name: str, kind: str | None, mtu: int, mac: str | None = None, **kw: Any
    ) -> Link:
        self.calls.append(("add", name))
        if kind in self.unsupported:
            raise KernelFeatureMissing(
                device=name,
                feature=f"{kind} support",
                errno=errno.EOPNOTSUPP,
                problem="Operation not supported",
            )
        if name in self.by_name:
            raise NetlinkFailure(
                op="add",
                device=name,
                namespace=self.namespace,
                errno=errno.EEXIST,
                problem="File exists",
            )
        link = Link(
            index=self._next,
            name=name,
            kind=kind,
            master=None,
            up=False,
            mtu=mtu,
            mac=mac or f"02:00:00:00:00:{self._next:02x}",
            **kw,
        )
        self.by_name[name] = link
        self._next += 1
        return link

    def plain(self, name: str, mtu: int = 1500) -> None:
        """A device that is not ours (a physical NIC, a veth)."""
        self._add(name, None, mtu)

    def links(self) -> list[Link]:
        return list(self.by_name.values())

    def link(self, name: str) -> Link | None:
        return self.by_name.get(name)

    def _get(self, name: str, index: int | None = None) -> Link:
        link = self.by_name.get(name)
        if link is None or (index is not None and link.index != index):
            raise DeviceNotFound(device=name, namespace=self.namespace)  # as ENODEV would
        return link

    def add_tap(self, name: str) -> Link:
        return self._add(name, "tun", 1500)

    def add_bridge(self, name: str, mtu: int) -> Link:
        return self._add(name, "bridge", mtu, stp_state=0, forward_delay=0)

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
    ) -> Link:
        if device is not None:
            self._get(device)
        return self._add(name, "vxlan", mtu, vni=vni)

    def add_vlan(self, name: str, device: str, vid: int, mtu: int) -> Link:
        self._get(device)
        return self._add(name, "vlan", mtu)

    def add_flood_entry(self, vxlan: str, peer: IPv4Address) -> None:
        self._get(vxlan)
        self.fdb.setdefault(vxlan, set()).add(str(peer))

    def flood_entries(self, vxlan: str) -> set[str]:
        return set(self.fdb.get(vxlan, set()))

    def set(
        self,
        target: Link,
        *,
        master: Link | None = None,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        name = target.name
        self.calls.append(("set", name))
        link = self._get(name, target.index)  # by index, as the real edge does
        if name in self.fail_set_on:
            raise NetlinkFailure(
                op="set",
                device=name,
                namespace=self.namespace,
                errno=errno.EBUSY,
                problem="Device or resource busy",
            )
        changes: dict[str, Any] = {}
        if master is not None:
            changes["master"] = self._get(master.name, master.index).index
        if up is not None:
            changes["up"] = up
        if mtu is not None:
            changes["mtu"] = mtu
        if mac is not None:
            changes["mac"] = mac
        self.by_name[name] = dataclasses.replace(link, **changes)

    def delete(self, name: str) -> bool:
        self.calls.append(("del", name))
        link = self.by_name.pop(name, None)
        if link is None:
            return False
        self.fdb.pop(name, None)
        for other in list(self.by_name.values()):
            if other.master == link.index:  # the kernel releases the ports of a deleted bridge
                self.by_name[other.name] = dataclasses.replace(other, master=None)
        return True

    def master_of(self, name: str) -> str | None:
        index = self.by_name[name].master
        return next((lk.name for lk in self.by_name.values() if lk.index == index), None)


@dataclass
class Sent:
    priority: str
    event_type: str
    payload: Any
    request_id: str | None


@dataclass
class RecordingSink:
    sent: list[Sent] = field(default_factory=list)

    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self.sent.append(Sent("info", event_type, payload, request_id))

    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self.sent.append(Sent("error", event_type, payload, request_id))

    def types(self) -> list[str]:
        return [s.event_type for s in self.sent]

    def clear(self) -> None:
        self.sent.clear()
