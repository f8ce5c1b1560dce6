"""ipam: the lowest free addresses of a pool, gateway and edges excluded; MACs under fa:16:3e."""

from __future__ import annotations

import random
import uuid
from ipaddress import IPv4Address, IPv4Network

import pytest

from agents.controller import ipam
from common.config import NetworkSpec


def net(cidr: str | None = "10.0.0.0/29", **kw: object) -> NetworkSpec:
    return NetworkSpec(
        name="n",
        uuid=uuid.uuid4(),
        type="vxlan",
        segmentation_id=5,
        cidr=IPv4Network(cidr) if cidr else None,
        **kw,  # type: ignore[arg-type]
    )


def test_lowest_free_skipping_used_and_gateway() -> None:
    n = net(gateway=IPv4Address("10.0.0.1"))
    got = ipam.free_addresses(n, [IPv4Address("10.0.0.3")], 3)
    assert got == [IPv4Address("10.0.0.2"), IPv4Address("10.0.0.4"), IPv4Address("10.0.0.5")]


def test_pool_bounds_are_respected() -> None:
    n = net(
        cidr="10.0.0.0/24",
        allocation_start=IPv4Address("10.0.0.100"),
        allocation_end=IPv4Address("10.0.0.101"),
    )
    assert ipam.free_addresses(n, [], 2) == [IPv4Address("10.0.0.100"), IPv4Address("10.0.0.101")]
    with pytest.raises(ipam.NetworkExhausted, match="10.0.0.100 - 10.0.0.101"):
        ipam.free_addresses(n, [IPv4Address("10.0.0.100")], 2)


def test_no_cidr_gives_no_addresses() -> None:
    assert ipam.free_addresses(net(cidr=None), [], 2) == [None, None]


def test_exhausted_names_network_and_count() -> None:
    n = net()  # /29: .1 - .6
    with pytest.raises(ipam.NetworkExhausted) as err:
        ipam.free_addresses(n, [], 7)
    assert "wanted 7" in str(err.value) and "'n'" in str(err.value)


def test_mac_is_unicast_under_openstack_prefix() -> None:
    rng = random.Random(1)
    macs = {ipam.new_mac(rng) for _ in range(1000)}
    assert len(macs) == 1000
    assert all(m.startswith("fa:16:3e:") and len(m) == 17 for m in macs)


def test_used_addresses_as_numbers_count_the_same() -> None:
    """The store hands the used addresses over as numbers (`address_int`, cheaper than
    IPv4Address for a network of thousands of ports); text that is no address takes
    nothing from the pool."""
    n = net(gateway=IPv4Address("10.0.0.1"))
    used = [ipam.address_int(a) for a in ("10.0.0.3", "10.0.0.2", "not-an-ip", "10.0.0")]
    assert used[:2] == [int(IPv4Address("10.0.0.3")), int(IPv4Address("10.0.0.2"))]
    assert used[2:] == [-1, -1]
    assert ipam.free_addresses(n, used, 2) == [IPv4Address("10.0.0.4"), IPv4Address("10.0.0.5")]
