"""The manager against the real kernel: netlink in a namespace the test creates,
results read back with iproute2's JSON output (an independent client)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.l2.manager import L2Manager
from agents.l2.metrics import L2Metrics
from agents.l2.netlink import Netlink
from agents.l2.settings import L2Config
from agents.l2.store import PortStore
from agents.lab.procs import REPO, run, unique
from common.config import load
from common.messages import Port, PortCreated, PortDeleted
from common.metrics import Registry
from tests.functional.l2.conftest import (
    FLAT_NET,
    VLAN_NET,
    VXLAN_NET,
    add_veth,
    is_up,
    kind,
    ns_links,
)
from tests.unit.l2.fakes import RecordingSink

pytestmark = pytest.mark.functional

FLAT, VXLAN, VLAN = uuid.UUID(FLAT_NET), uuid.UUID(VXLAN_NET), uuid.UUID(VLAN_NET)


class Host:
    """One l2 manager wired to a real namespace."""

    def __init__(self, ns: str, tmp: Path, l2: str = "") -> None:
        self.ns, self.tmp, self.l2 = ns, tmp, l2
        conf = tmp / "l2.conf"
        conf.write_text(
            f"[DEFAULT]\nhost = node1\n"
            f"[network:vlan1]\nuuid = {VLAN}\ntype = vlan\nsegmentation_id = 42\n"
            "physnet = physnet1\n"
            f"[l2]\nnamespace = {ns}\nphysical_interface_mappings = physnet1:uplink0\n{l2}"
        )
        self.config: L2Config = load(L2Config, [REPO / "etc" / "shared.conf", conf])
        self.netlink = Netlink(ns)
        self.events = RecordingSink()
        self.store = PortStore(tmp / "ports")
        self.manager = L2Manager(
            config=self.config,
            links=self.netlink,
            store=self.store,
            events=self.events,
            metrics=L2Metrics(Registry("l2_ft")),
        )

    def close(self) -> None:
        self.netlink.close()
        self.store.close()

    def create(self, port: Port) -> None:
        self.manager.port_created(PortCreated(request_id="req-1", host="node1", port=port))

    def delete(self, port: Port) -> None:
        self.manager.port_deleted(PortDeleted(request_id="req-2", host="node1", port_id=port.id))


@pytest.fixture
def hosts(netns: str, tmp_path: Path) -> Iterator[list[Host]]:
    made: list[Host] = []
    yield made
    for host in made:
        host.close()


def host(hosts: list[Host], ns: str, tmp: Path, l2: str = "") -> Host:
    tmp.mkdir(parents=True, exist_ok=True)
    h = Host(ns, tmp, l2)
    hosts.append(h)
    return h


def port(network: uuid.UUID, mac: str = "fa:16:3e:00:00:01", **kw: Any) -> Port:
    return Port(id=uuid.uuid4(), network_id=network, mac=mac, **kw)


def tap(p: Port) -> str:
    return f"tap{str(p.id)[:11]}"


def brq(net: uuid.UUID) -> str:
    return f"brq{str(net)[:11]}"


def test_flat_network_bridges_the_mapped_device(
    netns: str, hosts: list[Host], tmp_path: Path
) -> None:
    add_veth(netns, "uplink0", "wire0")
    h = host(hosts, netns, tmp_path)
    p = port(FLAT)
    h.create(p)
    assert h.events.types() == ["port.vif_plugged"]
    links = ns_links(netns)
    bridge = links[brq(FLAT)]
    assert kind(bridge) == "bridge" and is_up(bridge) and bridge["mtu"] == 1500
    data = bridge["linkinfo"]["info_data"]
    assert data["stp_state"] == 0 and data["forward_delay"] == 0
    assert links[tap(p)]["master"] == brq(FLAT) and is_up(links[tap(p)])
    assert kind(links[tap(p)]) == "tun" and links[tap(p)]["address"] == "fe:16:3e:00:00:01"
    assert links["uplink0"]["master"] == brq(FLAT)

    h.delete(p)
    links = ns_links(netns)
    assert brq(FLAT) not in links and tap(p) not in links
    assert "uplink0" in links and "master" not in links["uplink0"]  # released, never deleted
    assert h.events.types() == ["port.vif_plugged", "port.vif_unplugged"]


def test_vxlan_unicast_peers_and_bridge_mtu_follows_network(
    netns: str, hosts: list[Host], tmp_path: Path
) -> None:
    add_veth(netns, "under0", "under1")
    run(["ip", "-n", netns, "addr", "add", "10.99.0.1/24", "dev", "under0"])
    h = host(
        hosts,
        netns,
        tmp_path,
        "vxlan_local_ip = 10.99.0.1\nvxlan_device = under0\nvxlan_peers = 10.99.0.2, 10.99.0.3\n",
    )
    small = port(VXLAN, mtu=1400)  # the first port has a smaller MTU than the network
    h.create(small)
    big = port(VXLAN, mac="fa:16:3e:00:00:02")
    h.create(big)
    links = ns_links(netns)
    assert links[brq(VXLAN)]["mtu"] == 1450
    assert links[tap(small)]["mtu"] == 1400 and links[tap(big)]["mtu"] == 1450
    vx = links["vxlan-1001"]
    data = vx["linkinfo"]["info_data"]
    assert kind(vx) == "vxlan" and data["id"] == 1001 and data["local"] == "10.99.0.1"
    assert data["link"] == "under0" and vx["master"] == brq(VXLAN)
    fdb = json.loads(run(["bridge", "-n", netns, "-j", "fdb", "show", "dev", "vxlan-1001"]).stdout)
    flood = {e.get("dst") for e in fdb if e.get("mac") == "00:00:00:00:00:00"}
    assert flood == {"10.99.0.2", "10.99.0.3"}

    h.delete(small)
    assert "vxlan-1001" in ns_links(netns)  # one port left
    h.delete(big)
    links = ns_links(netns)
    assert "vxlan-1001" not in links and brq(VXLAN) not in links and "under0" in links


def test_vxlan_multicast_group(netns: str, hosts: list[Host], tmp_path: Path) -> None:
    add_veth(netns, "under0", "under1")
    run(["ip", "-n", netns, "addr", "add", "10.99.0.1/24", "dev", "under0"])
    h = host(hosts, netns, tmp_path, "vxlan_device = under0\nvxlan_group = 239.1.1.1\n")
    h.create(port(VXLAN))
    data = ns_links(netns)["vxlan-1001"]["linkinfo"]["info_data"]
    assert data["group"] == "239.1.1.1" and data["link"] == "under0"


def test_vlan_fails_on_this_kernel_naming_8021q_and_leaves_nothing(
    netns: str, hosts: list[Host], tmp_path: Path
) -> None:
    add_veth(netns, "uplink0", "wire0")
    before = set(ns_links(netns))
    h = host(hosts, netns, tmp_path)
    h.create(port(VLAN))
    [sent] = h.events.sent
    assert sent.event_type == "port.plug_failed"
    assert "802.1q" in sent.payload.reason and "uplink0.42" in sent.payload.reason
    assert set(ns_links(netns)) == before


def test_vxlan_carries_frames_between_two_hosts(
    netns: str, hosts: list[Host], tmp_path: Path
) -> None:
    """Two namespaces joined by a veth underlay; an address on each bridge; ping over VNI 1001."""
    other = unique("l2t")
    run(["ip", "netns", "add", other])
    try:
        run(
            [
                "ip",
                "-n",
                netns,
                "link",
                "add",
                "under0",
                "type",
                "veth",
                "peer",
                "name",
                "under0",
                "netns",
                other,
            ]
        )
        for ns, addr, peer in (
            (netns, "10.99.0.1", "10.99.0.2"),
            (other, "10.99.0.2", "10.99.0.1"),
        ):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "under0"])
            run(["ip", "-n", ns, "link", "set", "under0", "up"])
            h = host(
                hosts,
                ns,
                tmp_path / ns,
                f"vxlan_local_ip = {addr}\nvxlan_device = under0\nvxlan_peers = {peer}\n",
            )
            h.create(port(VXLAN))
            assert h.events.types() == ["port.vif_plugged"]
        run(["ip", "-n", netns, "addr", "add", "192.168.77.1/24", "dev", brq(VXLAN)])
        run(["ip", "-n", other, "addr", "add", "192.168.77.2/24", "dev", brq(VXLAN)])
        ping = subprocess.run(
            ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "2", "192.168.77.2"],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        run(["ip", "netns", "del", other], check=False)


def test_reconcile_against_the_kernel(netns: str, hosts: list[Host], tmp_path: Path) -> None:
    h = host(hosts, netns, tmp_path)
    kept, gone = port(VXLAN), port(VXLAN, mac="fa:16:3e:00:00:02")
    h.create(kept)
    h.create(gone)
    h.delete(gone)
    # Behind the agent's back: its tap goes, a stray tap/bridge with our naming appear,
    # and devices that only look similar are there too.
    run(["ip", "-n", netns, "link", "del", tap(kept)])
    run(["ip", "-n", netns, "tuntap", "add", "dev", tap(gone), "mode", "tap"])  # proven gone
    # brq(VLAN): an empty bridge of a network this host is configured for, unused: ours
    # and unwanted. stray_br, vxlan-4242: our naming, but of no network of this host
    # (another system's, neutron's say): kept.
    stray_tap, stray_br = f"tap{str(uuid.uuid4())[:11]}", f"brq{str(uuid.uuid4())[:11]}"
    for name, args in (
        (stray_tap, ["tuntap", "mode", "tap"]),
        (stray_br, ["bridge"]),
        (brq(VLAN), ["bridge"]),
        ("vxlan-4242", ["vxlan", "id", "4242", "dstport", "4789"]),
        ("tapforeign", ["tuntap", "mode", "tap"]),
        ("brq-mine", ["bridge"]),
    ):
        if args[0] == "tuntap":
            run(["ip", "-n", netns, "tuntap", "add", "dev", name, "mode", "tap"])
        else:
            run(["ip", "-n", netns, "link", "add", name, "type", *args])
    h.close()
    hosts.remove(h)

    fresh = host(hosts, netns, tmp_path)
    report = fresh.manager.reconcile()
    assert (report.replugged, report.failed) == (1, 0)
    # the tombstoned port's tap and our unused bridge go; unknown devices are kept and
    # reported
    assert set(report.removed_devices) == {tap(gone), brq(VLAN)}
    assert sorted(report.kept_unknown) == sorted([stray_tap, stray_br, "vxlan-4242"])
    links = ns_links(netns)
    assert links[tap(kept)]["master"] == brq(VXLAN) and is_up(links[tap(kept)])
    assert {"tapforeign", "brq-mine", stray_tap, stray_br, "vxlan-4242"} <= set(links)
    assert brq(VLAN) not in links
    assert fresh.events.types() == ["port.vif_plugged"]


def test_link_reader_agrees_with_iproute2(netns: str, hosts: list[Host], tmp_path: Path) -> None:
    """The edge's own RTM_GETLINK parser against `ip -d -j link` on a wired namespace."""
    add_veth(netns, "uplink0", "wire0")
    h = host(hosts, netns, tmp_path)
    h.create(port(FLAT))
    h.create(port(VXLAN, mac="fa:16:3e:00:00:02", mtu=1400))
    ours = {link.name: link for link in h.netlink.links()}
    theirs = ns_links(netns)
    assert set(ours) == set(theirs)
    index = {link["ifindex"]: name for name, link in theirs.items()}
    for name, link in theirs.items():
        mine = ours[name]
        assert mine.index == link["ifindex"] and mine.mtu == link["mtu"]
        assert mine.up == ("UP" in link["flags"]) and mine.mac == link.get("address")
        assert (index.get(mine.master) if mine.master else None) == link.get("master")
        assert mine.kind == kind(link)
    assert ours["vxlan-1001"].vni == 1001
    assert (ours[brq(FLAT)].stp_state, ours[brq(FLAT)].forward_delay) == (0, 0)
    assert h.netlink.link("nosuchdev") is None
