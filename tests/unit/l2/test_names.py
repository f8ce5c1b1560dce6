from __future__ import annotations

import uuid

import pytest

from agents.l2 import names
from agents.l2.errors import InvalidDeviceName

PORT = uuid.UUID("3f0e1c2d-4b5a-4c6d-8e7f-9a0b1c2d3e4f")
NET = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")


def test_openstack_names() -> None:
    assert names.tap_name(PORT) == "tap3f0e1c2d-4b"
    assert names.bridge_name(NET) == "brq5d3c0f6e-8a"
    assert names.vxlan_name(16777215) == "vxlan-16777215"
    assert names.vlan_name("eth1", 42) == "eth1.42"
    for name in (names.tap_name(PORT), names.bridge_name(NET), names.vxlan_name(16777215)):
        assert len(name) <= names.IFNAME_MAX


def test_long_vlan_name_is_shortened_deterministically_and_distinctly() -> None:
    a = names.vlan_name("enp129s0f1np1", 4094)
    b = names.vlan_name("enp129s0f1np2", 4094)
    assert len(a) == len(b) == 15
    assert a.endswith(".4094") and b.endswith(".4094")
    assert a != b
    assert a == names.vlan_name("enp129s0f1np1", 4094)


@pytest.mark.parametrize("bad", ["", "x" * 16, "a/b", "a:b", "a b", "."])
def test_check_refuses_names_the_kernel_refuses(bad: str) -> None:
    with pytest.raises(InvalidDeviceName) as err:
        names.check(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize(("vni", "vid"), [(0, 0), (16777216, 4095)])
def test_segment_ids_out_of_range(vni: int, vid: int) -> None:
    with pytest.raises(InvalidDeviceName):
        names.vxlan_name(vni)
    with pytest.raises(InvalidDeviceName):
        names.vlan_name("eth1", vid)


def test_host_mac_has_first_octet_fe() -> None:
    assert names.host_mac("FA:16:3E:01:02:03") == "fe:16:3e:01:02:03"


def test_ownership_matches_only_our_naming() -> None:
    assert names.owns_tap(names.tap_name(PORT))
    assert names.owns_bridge(names.bridge_name(NET))
    assert names.owns_vxlan("vxlan-1001")
    for foreign in (
        "tap0",
        "tapfoo",
        "tap3f0e1c2d-4bx",
        "brq-foo",
        "br-int",
        "vxlan0",
        "vxlan-01",
        "eth0",
        "virbr0",
    ):
        assert not (
            names.owns_tap(foreign) or names.owns_bridge(foreign) or names.owns_vxlan(foreign)
        )
