"""The kernel edge of the compute-agent: does anyone read a tap right now?

One question, answered with one ioctl (SIOCGIFFLAGS) on a socket of this process, so it
is asked in the agent's own network namespace, the one QEMU opens taps in (docs/platform.md:
a `managed='no'` tap must be in the namespace of the process that starts QEMU); it works
without /sys, whichever namespace /sys was mounted for.

Kernel behaviour relied on (drivers/net/tun.c, net/core/dev.c): a tun/tap device has
carrier only while a file descriptor is attached to it (tun_attach turns it on, the
last detach turns it off), and IFF_RUNNING is reported for an up device whose operstate
is up, i.e. that has carrier. A tap that the l2-agent re-created after the old one was
deleted under a running QEMU has no reader: QEMU still holds the fd of the deleted one.

It must not create, change or delete links (the l2-agent owns them), nor import
pyroute2 or libvirt.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

import structlog

log = structlog.get_logger()

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union


class TapProbe:
    """`has_reader(device)`: True/False, or None when this namespace has no such link."""

    def has_reader(self, device: str) -> bool | None:
        name = device.encode()
        if not name or len(name) >= IFNAMSIZ:
            raise ValueError(f"not an interface name: {device!r}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _IFREQ.pack(name, 0))
            except OSError as err:
                if err.errno == errno.ENODEV:
                    return None
                raise
        flags = _IFREQ.unpack(answer)[1]
        return bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)
