"""Deciding builds: names, MACs, fixed IPs from the held set, bad input naming valid choices."""

from __future__ import annotations

import random
import uuid
from ipaddress import IPv4Address

import pytest

from agents.ctl import plan
from agents.ctl.errors import NetworkExhausted, UnknownChoice
from agents.ctl.settings import CtlConfig
from common.config import NetworkSpec
from common.errors import InvalidInput
from common.messages import Port, PortInfo

NET = NetworkSpec(
    name="net1",
    uuid=uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31"),
    type="vxlan",
    segmentation_id=1001,
    cidr="10.10.0.0/29",
    gateway="10.10.0.1",
)
NET2 = NetworkSpec(name="other", uuid=uuid.uuid4(), type="vxlan", segmentation_id=7)


def config() -> CtlConfig:
    return CtlConfig.model_validate(
        {
            "networks": {"net1": NET.model_dump(), "other": NET2.model_dump()},
            "flavors": {"m1.tiny": {"name": "m1.tiny", "vcpus": 1, "memory_mb": 128}},
        }
    )


def info(ip: str | None, net: uuid.UUID = NET.uuid, port_id: uuid.UUID | None = None) -> PortInfo:
    port = Port(id=port_id or uuid.uuid4(), network_id=net, mac="fa:16:3e:00:00:01", fixed_ip=ip)
    return PortInfo(port=port, host="node1", state="wired", device="tapx", bridge="brqx")


def test_mac_is_under_the_openstack_prefix_and_unicast() -> None:
    rng = random.Random(1)
    macs = {plan.new_mac(rng) for _ in range(200)}
    assert all(m.startswith("fa:16:3e:") for m in macs)
    assert len(macs) > 190  # random tails, not a constant


def test_allocate_takes_lowest_free_skipping_gateway_and_held() -> None:
    held = {IPv4Address("10.10.0.2"), IPv4Address("10.10.0.4")}
    assert plan.allocate(NET, held, 2) == [IPv4Address("10.10.0.3"), IPv4Address("10.10.0.5")]


def test_allocate_exhausted_names_network_and_range() -> None:
    held = {IPv4Address(f"10.10.0.{i}") for i in range(2, 7)}
    with pytest.raises(NetworkExhausted) as err:
        plan.allocate(NET, held, 1)
    assert "net1" in str(err.value) and "10.10.0.6" in str(err.value)


def test_allocate_without_cidr_gives_no_address() -> None:
    assert plan.allocate(NET2, set(), 2) == [None, None]


def test_held_addresses_only_counts_the_network() -> None:
    ports = [info("10.10.0.2"), info("10.10.0.3", net=NET2.uuid), info(None)]
    assert plan.held_addresses(ports, NET.uuid) == {IPv4Address("10.10.0.2")}


def test_make_plan_gives_distinct_addresses_macs_and_consistent_ids() -> None:
    cfg = config()
    p = plan.make_plan(
        host="node1",
        request_id="req-1",
        names=plan.instance_names("web", 3, random.Random(2)),
        flavor=plan.pick_flavor(cfg, None),
        image="tiny",
        networks=plan.pick_networks(cfg, ["net1", "other"]),
        held={NET.uuid: {IPv4Address("10.10.0.2")}},
        rng=random.Random(3),
    )
    names = [b.instance.name for b in p.builds]
    assert names == ["web-1", "web-2", "web-3"]
    ports = [port for b in p.builds for port in b.instance.ports]
    assert len(ports) == 6 and len(p.ports) == 6
    assert len({port.mac for port in ports}) == 6
    net1_ips = [port.fixed_ip for port in ports if port.network_id == NET.uuid]
    assert net1_ips == [IPv4Address(f"10.10.0.{i}") for i in (3, 4, 5)]
    # each port knows its instance, and the port_created casts carry the same ports
    for b in p.builds:
        assert all(port.instance_uuid == b.instance.uuid for port in b.instance.ports)
        assert p.ports_of(b.instance.uuid) == list(b.instance.ports)
    assert {m.port.id for m in p.ports} == {port.id for port in ports}


def test_default_network_is_the_first_configured() -> None:
    assert plan.pick_networks(config(), None)[0].name == "net1"


def test_network_by_uuid_is_accepted() -> None:
    assert plan.pick_networks(config(), [str(NET2.uuid)])[0].name == "other"


def test_bad_flavor_and_network_list_the_valid_ones() -> None:
    with pytest.raises(UnknownChoice, match=r"unknown flavor 'm9'; valid: m1.tiny"):
        plan.pick_flavor(config(), "m9")
    with pytest.raises(UnknownChoice, match=r"valid: net1, other"):
        plan.pick_networks(config(), ["nope"])


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 64])
def test_bad_names_are_refused_with_the_value(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        plan.instance_names(bad, 1, random.Random())
    assert repr(bad) in str(err.value)


def test_bad_host_and_count_are_refused() -> None:
    with pytest.raises(InvalidInput, match="--host"):
        plan.check_host("no_underscores")
    with pytest.raises(InvalidInput, match="--count"):
        plan.instance_names("a", 0, random.Random())


def test_conflicts_name_the_other_holders_of_my_addresses() -> None:
    a, b, c = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    recorded = [
        info("10.10.0.3", port_id=a),
        info("10.10.0.3", port_id=b),
        info("10.10.0.4", port_id=c),
    ]
    mine = [recorded[1].port, recorded[2].port]
    # b shares its address with a (whoever sees that gives up); c is alone
    assert plan.conflicts(recorded, mine) == {b: [a]}
    # the same address on another network is no conflict; a port without one neither
    other_net = info("10.10.0.4", net=NET2.uuid)
    assert plan.conflicts([*recorded, other_net], [recorded[2].port, info(None).port]) == {}
