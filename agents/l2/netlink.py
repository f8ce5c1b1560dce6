"""The netlink edge: the only module that imports pyroute2.

`Netlink` offers the few link operations the wiring needs, all in one network namespace
(empty = the process's own). A thread that entered the namespace with setns(2) owns the
one `IPRoute` (kept open: opening one costs ~18 ms, docs/platform.md) and runs every write
and every tap creation (TUNSETIFF on /dev/net/tun) there, so nothing ever forks. Reads go
through the small rtnetlink reader in _rtnl.py. pyroute2's `NetlinkError` and OS errors
become typed errors carrying the device, namespace and errno. `LinkEvents` follows
RTNLGRP_LINK in the same namespace from its own thread (kernel push, no polling).

It must not decide anything: no naming, no policy about what to create or remove.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno as errnos
import fcntl
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import structlog
from pyroute2 import AsyncIPRoute, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agents.l2._rtnl import Link, LinkReader

__all__ = ["Link", "LinkEvent", "LinkEvents", "Netlink", "translate"]
from agents.l2.errors import DeviceNotFound, KernelFeatureMissing, NetlinkFailure

log = structlog.get_logger()

# <linux/if_tun.h> and <sched.h>
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
_FEATURES = {
    "vlan": "802.1q VLAN support (CONFIG_VLAN_8021Q)",
    "vxlan": "VXLAN support (CONFIG_VXLAN)",
    "bridge": "Linux bridge support (CONFIG_BRIDGE)",
    "tuntap": "TUN/TAP support (CONFIG_TUN)",
}


def translate(
    err: NetlinkError, *, op: str, device: str, namespace: str, kind: str | None = None
) -> Exception:
    """Map a NetlinkError to our typed error (pure, so the mapping is unit-tested)."""
    code = int(err.code) if err.code is not None else -1
    problem = os.strerror(code) if code > 0 else str(err)
    if code == errnos.ENODEV:
        return DeviceNotFound(device=device, namespace=namespace or "(own)")
    if op == "add" and kind is not None and code == errnos.EOPNOTSUPP:
        # "Unknown device type": the kernel has no driver for this link kind
        # (a kernel without the 8021q module, for instance: docs/platform.md).
        return KernelFeatureMissing(
            device=device, feature=_FEATURES.get(kind, f"{kind} links"), errno=code, problem=problem
        )
    return NetlinkFailure(
        op=op, device=device, namespace=namespace or "(own)", errno=code, problem=problem
    )


def enter_namespace(namespace: str) -> None:
    """Move the calling thread (only it: setns(2) is per thread) into `namespace`."""
    if not namespace:
        return
    try:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            os.close(fd)
    except OSError as err:
        raise NetlinkFailure(
            op="setns",
            device="*",
            namespace=namespace,
            errno=err.errno or -1,
            problem=err.strerror or str(err),
        ) from err


class _InNamespace:
    """A thread that has entered the namespace and runs every netlink call there.

    setns(2) changes the namespace of the calling thread only, so one long-lived thread
    sits in the agent's namespace: sockets it opens and the taps it makes (opening
    /dev/net/tun) belong to that namespace, with no fork. That matters: pyroute2's sync
    IPRoute keeps a socket per thread and, for a namespace, forks a helper to open each
    one (and one per tap), which costs ~25 ms and can hang when forking a process that
    runs other threads. All pyroute2 work therefore goes through this one thread.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        entered: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(entered,), name="l2-netns", daemon=True
        )
        self._thread.start()
        entered.result(timeout=5)

    def _run(self, entered: Future[None]) -> None:
        try:
            enter_namespace(self.namespace)
        except NetlinkFailure as err:
            entered.set_exception(err)
            return
        entered.set_result(None)
        while (item := self._calls.get()) is not None:
            fn, result = item
            try:
                result.set_result(fn())
            except BaseException as err:  # handed to the caller, who raises it
                result.set_exception(err)

    def call(self, fn: Callable[[], Any]) -> Any:
        result: Future[Any] = Future()
        self._calls.put((fn, result))
        return result.result()

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join(2)


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _make_tap(name: str) -> int:
    """Create a persistent tap called `name` in the calling thread's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)
    return socket.if_nametoindex(name)


class Netlink:
    """Link operations in one namespace. Thread-safe: writes run one at a time on the
    namespace thread, reads on a socket of their own (see _rtnl.py)."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        # Entering the namespace first fails clearly when it does not exist (pyroute2's
        # netns= would create it). The IPRoute is made, and only ever used, inside.
        self._inside = _InNamespace(namespace)
        self._ipr = self._inside.call(IPRoute)
        # Reads go over a plain socket made inside the namespace (see _rtnl.py).
        self._reader = LinkReader(
            self._inside.call(
                lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
            )
        )

    def close(self) -> None:
        self._inside.call(self._ipr.close)
        self._inside.close()
        self._reader.close()

    def _call(self, op: str, device: str, fn: Callable[[], Any], kind: str | None = None) -> Any:
        # One thread runs every call, in order (see _InNamespace): no lock needed.
        try:
            return self._inside.call(fn)
        except NetlinkError as err:
            raise translate(err, op=op, device=device, namespace=self.namespace, kind=kind) from err

    def _must(self, name: str) -> Link:
        found = self.link(name)
        if found is None:
            raise DeviceNotFound(device=name, namespace=self.namespace or "(own)")
        return found

    # ------------------------------------------------------------------ reading

    def links(self) -> list[Link]:
        return list(self._read("dump", "*", self._reader.dump))

    def link(self, name: str) -> Link | None:
        """The link called `name`, or None when there is none (absence is not an error here)."""
        found: Link | None = self._read("get", name, lambda: self._reader.get(name))
        return found

    def _read(self, op: str, device: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except OSError as err:
            raise NetlinkFailure(
                op=op,
                device=device,
                namespace=self.namespace or "(own)",
                errno=err.errno or -1,
                problem=err.strerror or str(err),
            ) from err

    # ------------------------------------------------------------------ creating

    def add_tap(self, name: str) -> Link:
        """A persistent tap no process holds yet (QEMU opens it later by name), admin
        down; the caller sets MAC, MTU, master and state in one request afterwards.

        TUNSETIFF re-attaches to an existing tap of that name without complaint, so the
        caller checks for existence first.
        """
        try:
            index = self._inside.call(lambda: _make_tap(name))
        except OSError as err:
            code = err.errno or -1
            if code in (errnos.ENOENT, errnos.ENODEV):
                raise KernelFeatureMissing(
                    device=name,
                    feature=_FEATURES["tuntap"],
                    errno=code,
                    problem=err.strerror or str(err),
                ) from err
            raise NetlinkFailure(
                op="add",
                device=name,
                namespace=self.namespace or "(own)",
                errno=code,
                problem=err.strerror or str(err),
            ) from err
        return Link(index=index, name=name, kind="tun", master=None, up=False, mtu=0, mac=None)

    def add_bridge(self, name: str, mtu: int) -> Link:
        self._call(
            "add",
            name,
            lambda: self._ipr.link(
                "add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0, mtu=mtu
            ),
            kind="bridge",
        )
        return self._must(name)

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
        spec: dict[str, Any] = {
            "ifname": name,
            "kind": "vxlan",
            "vxlan_id": vni,
            "vxlan_port": port,
            "vxlan_learning": True,
            "mtu": mtu,
        }
        if local is not None:
            spec["vxlan_local"] = str(local)
        if device is not None:
            spec["vxlan_link"] = self._must(device).index
        if group is not None:
            spec["vxlan_group"] = str(group)
        self._call("add", name, lambda: self._ipr.link("add", **spec), kind="vxlan")
        return self._must(name)

    def add_vlan(self, name: str, device: str, vid: int, mtu: int) -> Link:
        parent = self._must(device).index
        self._call(
            "add",
            name,
            lambda: self._ipr.link(
                "add", ifname=name, kind="vlan", link=parent, vlan_id=vid, mtu=mtu
            ),
            kind="vlan",
        )
        return self._must(name)

    def add_flood_entry(self, vxlan: str, peer: IPv4Address) -> None:
        """An all-zero FDB entry: flood unknown/broadcast frames to `peer` (unicast VXLAN)."""
        index = self._must(vxlan).index
        self._call(
            "fdb",
            vxlan,
            lambda: self._ipr.fdb(
                "append", ifindex=index, lladdr="00:00:00:00:00:00", dst=str(peer)
            ),
        )

    def flood_entries(self, vxlan: str) -> set[str]:
        index = self._must(vxlan).index
        msgs = self._call("fdb", vxlan, lambda: list(self._ipr.fdb("dump", ifindex=index)))
        return {
            str(m.get_attr("NDA_DST"))
            for m in msgs
            if m.get_attr("NDA_LLADDR") == "00:00:00:00:00:00" and m.get_attr("NDA_DST")
        }

    # ------------------------------------------------------------------ changing

    def set(
        self,
        link: Link,
        *,
        master: Link | None = None,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
    ) -> None:
        """Change `link` (by index: no lookup) in one RTM_NEWLINK request."""
        spec: dict[str, Any] = {}
        if mac is not None:
            spec["address"] = mac
        if mtu is not None:
            spec["mtu"] = mtu
        if master is not None:
            spec["master"] = master.index
        if up is not None:
            spec["state"] = "up" if up else "down"
        if spec:
            self._call("set", link.name, lambda: self._ipr.link("set", index=link.index, **spec))

    def delete(self, name: str) -> bool:
        """Delete `name`; False when it did not exist."""
        try:
            self._call("del", name, lambda: self._ipr.link("del", ifname=name))
        except DeviceNotFound:
            return False
        return True


@dataclass(frozen=True)
class LinkEvent:
    kind: str  # "new" or "del"
    name: str
    index: int


class LinkEvents:
    """Follow RTNLGRP_LINK in a namespace from a thread and hand each event to `on_event`.

    The thread runs its own asyncio loop around pyroute2's AsyncIPRoute: the kernel
    pushes each event (no polling), and stop() cancels the loop from outside at once.
    (The sync IPRoute buffers messages internally, so select() on its socket can leave
    an event undelivered until the next one arrives.)
    """

    def __init__(self, namespace: str, on_event: Callable[[LinkEvent], None]) -> None:
        self.namespace = namespace
        self._on_event = on_event
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="l2-link-events", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        ns = self.namespace or "(own)"
        if not self._ready.wait(timeout):
            raise NetlinkFailure(
                op="bind", device="*", namespace=ns, errno=-1, problem="no event socket"
            )
        if self._error is not None:
            raise NetlinkFailure(
                op="bind", device="*", namespace=ns, errno=-1, problem=str(self._error)
            )

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(task.cancel)
            self._thread.join(5)

    def _run(self) -> None:
        try:
            asyncio.run(self._watch())
        except asyncio.CancelledError:
            pass
        except Exception as err:  # before ready: reported by start(); after: logged
            if not self._ready.is_set():
                self._error = err
                self._ready.set()
            else:
                log.exception("link_events_stopped", namespace=self.namespace)

    async def _watch(self) -> None:
        self._task = asyncio.current_task()
        enter_namespace(self.namespace)  # this thread only; then no fork to open the socket
        ipr = AsyncIPRoute()
        try:
            await ipr.bind()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            while True:
                async for msg in ipr.get():
                    self._dispatch(msg)
        finally:
            ipr.close()

    def _dispatch(self, msg: Any) -> None:
        event = msg.get("event")
        if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
            return
        name = msg.get_attr("IFLA_IFNAME")
        if not name:
            return
        kind = "new" if event == "RTM_NEWLINK" else "del"
        try:
            self._on_event(LinkEvent(kind, str(name), int(msg["index"])))
        except Exception:  # a handler bug must not end the watch
            log.exception("link_event_handler_failed", device=name)
