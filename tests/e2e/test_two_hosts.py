"""Issue 6: two hosts, real guests, one network; the whole system proved end to end.

node1 and node2 are network namespaces, each running its own l2-agent and compute-agent
as processes started with the systemd units' command lines and configs rendered from
the etc/ samples, beside one agents-controller (SQLite) in the root namespace: the lab
of agents/lab. libvirt is qemu:///embed rooted in each host's directory, domain type
qemu (TCG). The hosts share net1 (VXLAN 1001) over a veth underlay; node1 also has the
flat network `provider`, its physnet mapped to a veth whose far end holds the gateway.
Everything is driven with agentctl as a subprocess against the lab's controller, and
checked with tools independent of the project (`ip`, `ping`, /proc), a watcher on the
broker, and the l2-agents' own records.

Order: builds (item 3), flat network (4), restart of node1's agents (6), kill -9 of
node2's l2-agent and its tap deleted (7), then delete everything (5), since items 6 and
7 need running guests. At most 3 guests. A timing table per guest is printed (item 8).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import pytest

from agents.lab.broker import BrokerScope
from agents.lab.host import AGENTS, LabHost
from agents.lab.lab import Lab
from agents.lab.links import provider_uplink, underlay
from agents.lab.procs import wait_for
from common.config import BaseConfig, MessagingSettings, NetworkSpec, load
from common.rpc import vif_events_topic
from tests.e2e.observe import ConsoleWatch, EventRecorder

pytestmark = pytest.mark.e2e

UNDERLAY = ("172.31.255.1", "172.31.255.2")  # private test range, only inside the namespaces
HOST_ON_NET1 = {"node1": "10.10.0.2/24", "node2": "10.10.0.3/24"}  # outside net1's pool
PHYS_DEVICE = "phys1"  # node1's physnet1 uplink
SCENARIO_BUDGET_S = 300  # issue 6 item 8: under 5 minutes


@dataclass
class Guest:
    name: str
    node: LabHost
    uuid: UUID
    ip: str
    port_id: UUID
    network: NetworkSpec
    sent_at: float
    peer: str = ""  # the address whose "AGENTS-PING ip=X ok" proves its reachability
    times: dict[str, float | None] = field(default_factory=dict)

    @property
    def tap(self) -> str:
        return f"tap{str(self.port_id)[:11]}"


@pytest.fixture
def lab(root: None, broker_scope: BrokerScope, guest_image_dir: Path) -> Iterator[Lab]:
    # Not pytest's tmp_path: QEMU's monitor socket lives under the embed root and a unix
    # socket path must stay under 108 bytes (sun_path). Lab.create() makes it in /tmp.
    lab = Lab.create(prefix="ae2e-", image_dir=guest_image_dir, scope=broker_scope)
    try:
        lab.start_controller()
        node1 = lab.add_host(
            "node1",
            driver="qemu",
            agents=(),
            l2={
                "l2": {
                    "physical_interface_mappings": f"physnet1:{PHYS_DEVICE}",
                    "vxlan_local_ip": UNDERLAY[0],
                    "vxlan_peers": UNDERLAY[1],
                }
            },
        )
        node2 = lab.add_host(
            "node2",
            driver="qemu",
            agents=(),
            l2={
                "l2": {
                    "physical_interface_mappings": "",
                    "vxlan_local_ip": UNDERLAY[1],
                    "vxlan_peers": UNDERLAY[0],
                }
            },
        )
        underlay(node1, node2, *UNDERLAY)
        provider = lab.networks()["provider"]
        assert provider.gateway is not None and provider.cidr is not None
        provider_uplink(node1, PHYS_DEVICE, f"{provider.gateway}/{provider.cidr.prefixlen}")
        yield lab
    finally:
        print(lab.logs())  # pytest shows it when the test failed
        lab.close()


def messaging_settings(lab: Lab) -> MessagingSettings:
    return load(BaseConfig, [lab.write_shared()]).messaging


def build(lab: Lab, node: LabHost, name: str, network: str, consoles: ConsoleWatch) -> Guest:
    sent = time.monotonic()
    doc = lab.agentctl_json(
        "send", "build", "--host", node.host, "--name", name, "--network", network,
        "--wait", "--timeout", "120",
    )  # fmt: skip
    assert doc["ok"], doc
    (inst,) = doc["instances"]
    assert inst["state"] == "running", inst
    (port,) = inst["ports"]
    guest = Guest(
        name=name,
        node=node,
        uuid=UUID(inst["uuid"]),
        ip=port["fixed_ip"],
        port_id=UUID(port["id"]),
        network=lab.networks()[network],
        sent_at=sent,
    )
    consoles.add(guest.uuid)
    return guest


def console_log(lab: Lab, guest: Guest) -> str:
    result = lab.agentctl("console-log", guest.name, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def bridge_of(guest: Guest) -> str:
    return f"brq{str(guest.network.uuid)[:11]}"


def wait_marker(consoles: ConsoleWatch, guest: Guest, marker: str, timeout: float) -> float:
    def seen() -> float | None:
        return consoles.seen(guest.uuid, marker)

    try:
        return float(wait_for(seen, timeout, 0.2, what=f"{marker} on {guest.name}'s console"))
    except TimeoutError as err:
        raise AssertionError(f"{err}; console:\n{consoles.text(guest.uuid)[-3000:]}") from err


def timing_table(guests: list[Guest], recorder: EventRecorder) -> str:
    columns = ("port wired", "guest started", "guest ready", "peer ping answered")
    rows = []
    for g in guests:
        wired = recorder.first("port.vif_plugged", port_id=g.port_id)
        started = recorder.first(
            "instance.create.progress", instance_uuid=g.uuid, step="guest_started"
        ) or recorder.first("instance.create.end", instance_uuid=g.uuid)
        g.times.update({"port wired": wired, "guest started": started})
        at = [g.times.get(c) for c in columns]
        cells = ["-" if t is None else f"{t - g.sent_at:7.2f}" for t in at]
        rows.append([f"{g.name}@{g.node.name}", g.ip, f"{g.peer}", *cells])
    header = ["guest", "ip", "peer", *(f"{c} (s)" for c in columns)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["seconds after `agentctl send build` was started:"]
    for r in [header, *rows]:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def link_snapshot(node: LabHost, names: list[str]) -> dict[str, tuple[object, object]]:
    links = node.links()
    return {n: (links[n]["ifindex"], links[n].get("master")) for n in names if n in links}


def defined_domains(node: LabHost) -> list[str]:
    """Persistent domain definitions in the host's embed root (libvirt's configDir)."""
    return sorted(p.name for p in (node.embed_root / "etc" / "qemu").glob("*.xml"))


def test_two_hosts_real_guests_one_network(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    problems: list[str] = []
    node1, node2 = lab.hosts["node1"], lab.hosts["node2"]
    for node in (node1, node2):
        for agent in AGENTS:
            node.start(agent, wait=False)
    for node in (node1, node2):
        for agent in AGENTS:
            node.wait_serving(agent)  # consuming, and heard by the controller

    settings = messaging_settings(lab)
    keys = [
        f"{settings.events_topic}.#",
        *(f"{vif_events_topic(n.host)}.*" for n in (node1, node2)),
    ]
    assert lab.controller is not None
    with EventRecorder(settings, keys) as recorder, ConsoleWatch(lab.controller) as consoles:
        # ---- item 3: a guest per host on the shared VXLAN network
        g1 = build(lab, node1, "g1", "net1", consoles)
        g2 = build(lab, node2, "g2", "net1", consoles)
        g1.peer, g2.peer = g2.ip, g1.ip
        for g in (g1, g2):
            g.times["guest ready"] = wait_marker(consoles, g, "ready", 90)
            assert f"AGENTS-GUEST-READY name={g.name} ip={g.ip}" in console_log(lab, g)
        for g in (g1, g2):
            g.times["peer ping answered"] = wait_marker(consoles, g, f"ping:{g.peer}", 90)
            assert f"AGENTS-PING ip={g.peer} ok" in console_log(lab, g)
        for g in (g1, g2):
            g.node.sh("ip", "addr", "add", HOST_ON_NET1[g.node.name], "dev", bridge_of(g))
            wait_for(
                lambda g=g: g.node.pings(g.ip), 30, 0.5, what=f"{g.node.name} to ping {g.name}"
            )

        # ---- item 4: the flat network on node1; its guest answers the host
        g3 = build(lab, node1, "g3", "provider", consoles)
        g3.peer = str(g3.network.gateway)
        g3.times["guest ready"] = wait_marker(consoles, g3, "ready", 90)
        wait_for(lambda: node1.pings(g3.ip), 30, 0.5, what="node1 to ping g3 on the flat network")
        g3.times["peer ping answered"] = wait_marker(consoles, g3, f"ping:{g3.peer}", 60)
        assert node1.links()[PHYS_DEVICE].get("master") == bridge_of(g3)

        with capsys.disabled():  # the table belongs in CI's output, pass or fail
            print("\n" + timing_table([g1, g2, g3], recorder))

        # ---- item 6: restart both agents of node1 while its guests run
        wired = [g1.tap, g3.tap, bridge_of(g1), bridge_of(g3), "vxlan-1001", PHYS_DEVICE]
        before_links = link_snapshot(node1, wired)
        assert set(before_links) == set(wired), sorted(node1.links())
        before_qemu = node1.qemu_pids()
        assert len(before_qemu) == 2, before_qemu
        assert len(defined_domains(node1)) == 2, defined_domains(node1)
        mark = time.monotonic()
        for agent in ("compute-agent", "l2-agent"):
            status = node1.stop(agent, signal.SIGTERM)
            assert status == 0, f"{agent} exited {status} on SIGTERM"
        for agent in ("l2-agent", "compute-agent"):
            node1.start(agent)
        listed = lab.agentctl_json("list", "--host", node1.host)
        states = {i["name"]: i["state"] for i in listed}
        assert states == {"g1": "running", "g3": "running"}, states
        ports = lab.agentctl_json("ports", "--host", node1.host)
        port_states = {p["id"]: p["state"] for p in ports}
        assert port_states == {str(g1.port_id): "wired", str(g3.port_id): "wired"}, port_states
        recorded = {r["port_id"] for r in node1.recorded_ports() if r["wanted"] == "present"}
        assert recorded == {str(g1.port_id), str(g3.port_id)}, recorded
        assert node1.qemu_pids() == before_qemu, "a guest was restarted"
        assert link_snapshot(node1, wired) == before_links, "a link was re-created or moved"
        assert node1.pings(g1.ip) and node1.pings(g3.ip)
        for g in (g1, g3):
            redone = [
                e
                for e in recorder.about(mark, instance_uuid=g.uuid)
                + recorder.about(mark, port_id=g.port_id)
                if e.startswith(("instance.create", "instance.delete"))
                or e in ("port.vif_unplugged", "port.plug_failed")
            ]
            assert not redone, f"{g.name}: {redone} after the restart"

        # ---- item 7: kill -9 node2's l2-agent, delete g2's tap behind its back, restart
        node2.stop("l2-agent", signal.SIGKILL)
        node2.sh("ip", "link", "del", g2.tap)
        assert not node2.pings(g2.ip, timeout=1)
        node2.start("l2-agent")
        wait_for(
            lambda: node2.links().get(g2.tap, {}).get("master") == bridge_of(g2),
            30, 0.3, what=f"{g2.tap} back in {bridge_of(g2)}",
        )  # fmt: skip
        # Checked, but not fatal yet: item 5 below still runs and reports, so one run
        # tells everything that is wrong. QEMU keeps the fd of the deleted tap; a new tap
        # of the same name is not attached to the guest until something re-plugs its NIC.
        try:
            wait_for(lambda: node2.pings(g2.ip), 45, 0.5, what="g2 to answer node2 again")
        except TimeoutError as err:
            problems.append(f"item 7: {err} (its tap was re-created and is in the bridge)")
        assert node2.qemu_pids(), "g2's QEMU is gone"

        # ---- item 5: delete every guest; nothing is left, the agents still run
        for g in (g1, g2, g3):
            consoles.forget(g.uuid)
            doc = lab.agentctl_json("send", "delete", g.name, "--wait")
            assert doc["ok"], doc
        for node in (node1, node2):
            assert lab.agentctl_json("list", "--host", node.host) == []
            assert not node.qemu_pids()
            assert not defined_domains(node), defined_domains(node)
            left = sorted(n for n in node.links() if n.startswith(("tap", "brq", "vxlan-")))
            assert not left, f"{node.name} still has {left}"
            assert not list(node.instances_dir.glob("*/*")), sorted(node.instances_dir.rglob("*"))
            for agent in ("l2-agent", "compute-agent"):
                assert node.running(agent), f"{agent} of {node.name} died"
            assert not [r for r in node.recorded_ports() if r["wanted"] == "present"]
        heard = lab.controller.hosts()
        for node in (node1, node2):
            for kind in ("compute", "l2"):
                assert heard[(node.host, kind)]["state"] == "up", heard
        assert PHYS_DEVICE in node1.links(), "the physical uplink must outlive the bridge"

    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"scenario took {elapsed:.1f}s")
    assert not problems, "\n".join(problems)
    assert elapsed < SCENARIO_BUDGET_S, f"scenario took {elapsed:.0f}s"
