"""Address and MAC choice for new ports: pure functions, no database, no I/O.

The database makes a choice final (unique constraints on (network, address) and on
MAC); this module only proposes. It proposes the lowest free addresses of the pool, so
addresses are predictable for an operator, and a clash with a concurrent transaction
is resolved by the store retrying with a fresh view.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address

from common.config import NetworkSpec
from common.errors import AgentsError

# OpenStack's base MAC (neutron's default `base_mac`): operators recognise it.
MAC_PREFIX = (0xFA, 0x16, 0x3E)


class NetworkExhausted(AgentsError):
    msg_fmt = "network {network!r} has no free address left in {start} - {end} (wanted {wanted})"


def new_mac(rng: random.Random) -> str:
    tail = [rng.randrange(256) for _ in range(3)]
    return ":".join(f"{b:02x}" for b in (*MAC_PREFIX, *tail))


def address_int(text: str) -> int:
    """A dotted IPv4 address as its number, several times cheaper than IPv4Address:
    a create reads every address of the network."""
    try:
        return int.from_bytes(socket.inet_aton(text), "big") if text.count(".") == 3 else -1
    except OSError:
        return -1  # not an address: it takes nothing from the pool


def free_addresses(
    network: NetworkSpec, used: Iterable[IPv4Address | int], count: int
) -> list[IPv4Address | None]:
    """The `count` lowest addresses of the network's pool that are not `used` (given as
    addresses or their numbers).

    A network without a cidr gives no addresses (None per port). Raises
    NetworkExhausted when the pool cannot hold `count` more.
    """
    pool = network.allocation_pool()
    if pool is None:
        return [None] * count
    start, end = pool
    taken = {int(a) for a in used}
    if network.gateway is not None:
        taken.add(int(network.gateway))
    out: list[IPv4Address | None] = []
    addr = int(start)
    last = int(end)
    while len(out) < count and addr <= last:
        if addr not in taken:
            out.append(IPv4Address(addr))
        addr += 1
    if len(out) < count:
        raise NetworkExhausted(network=network.name, start=start, end=end, wanted=count)
    return out
