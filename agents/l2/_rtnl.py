"""Reading links over a plain rtnetlink socket: part of the netlink edge, private to it.

pyroute2 decodes every attribute of every link message in Python (about 1.4 ms per
link here; a dump of 1,000 taps took 1.4 s), while the agent needs six fields. This
module asks the kernel for links (RTM_GETLINK by name, or a dump, with statistics
skipped through IFLA_EXT_MASK) and reads just those fields with `struct`. Writes stay
with pyroute2 in netlink.py.

`parse_links()` is pure (bytes in, links out); `LinkReader` owns one socket, which must
have been created in the wanted namespace (a socket keeps the namespace it was made in).
It must not change anything in the kernel.
"""

from __future__ import annotations

import errno as errnos
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_BR_FORWARD_DELAY = 1
IFLA_BR_STP_STATE = 5
IFLA_VXLAN_ID = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NLATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class Link:
    """One link as the kernel reports it (`up` is IFF_UP, admin state: a tap nobody
    opened still reads operstate DOWN)."""

    index: int
    name: str
    kind: str | None
    master: int | None
    up: bool
    mtu: int
    mac: str | None
    stp_state: int | None = None
    forward_delay: int | None = None
    vni: int | None = None


class RtnlError(OSError):
    """The kernel answered a request with an error (errno in .errno)."""


def _attrs(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end)."""
    out: dict[int, tuple[int, int]] = {}
    pos = start
    while pos + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(buf, pos)
        if length < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = (pos + _NLATTR.size, min(pos + length, end))
        pos += (length + 3) & ~3
    return out


def _u32(buf: bytes, span: tuple[int, int] | None) -> int | None:
    if span is None or span[1] - span[0] < 4:
        return None
    return int(struct.unpack_from("=I", buf, span[0])[0])


def _string(buf: bytes, span: tuple[int, int] | None) -> str | None:
    if span is None:
        return None
    return buf[span[0] : span[1]].split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_link(buf: bytes, start: int, end: int) -> Link:
    """One RTM_NEWLINK payload (ifinfomsg + attributes) between start and end."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(buf, start)
    attrs = _attrs(buf, start + _IFINFOMSG.size, end)
    mac_span = attrs.get(IFLA_ADDRESS)
    mac = (
        ":".join(f"{b:02x}" for b in buf[mac_span[0] : mac_span[1]])
        if mac_span and mac_span[1] - mac_span[0] == 6
        else None
    )
    kind = stp = fwd = vni = None
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        inner = _attrs(buf, *info)
        kind = _string(buf, inner.get(IFLA_INFO_KIND))
        data = inner.get(IFLA_INFO_DATA)
        if data is not None and kind == "bridge":
            fields = _attrs(buf, *data)
            stp, fwd = (
                _u32(buf, fields.get(IFLA_BR_STP_STATE)),
                _u32(buf, fields.get(IFLA_BR_FORWARD_DELAY)),
            )
        elif data is not None and kind == "vxlan":
            vni = _u32(buf, _attrs(buf, *data).get(IFLA_VXLAN_ID))
    master = _u32(buf, attrs.get(IFLA_MASTER))
    return Link(
        index=index,
        name=_string(buf, attrs.get(IFLA_IFNAME)) or "",
        kind=kind,
        master=master or None,
        up=bool(flags & IFF_UP),
        mtu=_u32(buf, attrs.get(IFLA_MTU)) or 0,
        mac=mac,
        stp_state=stp,
        forward_delay=fwd,
        vni=vni,
    )


def parse_messages(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each netlink message in one datagram."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(buf):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, pos)
        if length < _NLMSGHDR.size:
            return
        yield kind, pos + _NLMSGHDR.size, min(pos + length, len(buf))
        pos += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (((length + 3) & ~3) - length)


class LinkReader:
    """RTM_GETLINK over one socket. Thread-safe (requests are serialised)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.bind((0, 0))
        self._lock = threading.Lock()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, flags: int, attrs: bytes) -> list[Link]:
        with self._lock:
            self._seq += 1
            body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + attrs
            header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, flags, self._seq, 0)
            self._sock.send(header + body)
            out: list[Link] = []
            while True:
                data = self._sock.recv(1024 * 1024)
                for kind, start, end in parse_messages(data):
                    if kind == NLMSG_ERROR:
                        code = -int(struct.unpack_from("=i", data, start)[0])
                        if code == 0:
                            return out
                        raise RtnlError(code, os.strerror(code))
                    if kind == NLMSG_DONE:
                        return out
                    if kind == RTM_NEWLINK:
                        out.append(parse_link(data, start, end))
                if not flags & NLM_F_DUMP and out:
                    return out

    def get(self, name: str) -> Link | None:
        mask = _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        try:
            found = self._request(NLM_F_REQUEST, _attr(IFLA_IFNAME, name.encode() + b"\0") + mask)
        except RtnlError as err:
            if err.errno == errnos.ENODEV:
                return None
            raise
        return found[0] if found else None

    def dump(self) -> list[Link]:
        mask = _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        return self._request(NLM_F_REQUEST | NLM_F_DUMP, mask)
