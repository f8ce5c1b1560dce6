"""agentctl agents and ports: what the controller hears from the agents' heartbeats and
holds for the ports, checked against the l2-agent's own record and the kernel."""

from __future__ import annotations

import json

import pytest

from agents.lab.lab import Lab
from agents.lab.procs import wait_for

pytestmark = pytest.mark.functional


def test_agents_lists_live_agents_with_version_uptime_capacity_then_down(lab: Lab) -> None:
    node = lab.add_host("node1", compute={"compute": {"vcpus": 16, "memory_mb": 8192}})
    res = lab.agentctl("--json", "agents")
    assert res.returncode == 0, res.stderr
    agents = {(a["host"], a["kind"]): a for a in json.loads(res.stdout)}
    assert set(agents) == {(node.host, "compute"), (node.host, "l2")}
    for agent in agents.values():
        assert agent["state"] == "up" and agent["version"] and agent["uptime_s"] >= 0
    compute = agents[(node.host, "compute")]
    assert (compute["vcpus"], compute["memory_mb"]) == (16, 8192)
    assert (compute["vcpus_used"], compute["memory_mb_used"]) == (0, 0)
    # terminal output: one aligned row per agent, with the headers
    text = lab.agentctl("agents").stdout
    assert text.split()[:3] == ["HOST", "KIND", "STATE"] and "VERSION" in text
    assert node.host in text and "0/16 vcpu" in text

    # a build is counted against the host's capacity
    assert lab.agentctl("send", "build", "--flavor", "m1.small", "--wait").returncode == 0
    compute = {
        (a["host"], a["kind"]): a for a in json.loads(lab.agentctl("--json", "agents").stdout)
    }[(node.host, "compute")]
    assert (compute["vcpus_used"], compute["memory_mb_used"]) == (1, 512)

    node.stop("l2-agent")

    def l2_state() -> str:
        agents = json.loads(lab.agentctl("--json", "agents").stdout)
        return str(next(a["state"] for a in agents if a["kind"] == "l2"))

    wait_for(lambda: l2_state() == "down", 15, 0.3, "the l2-agent marked down")
    node.start("l2-agent")  # heard again: up
    assert l2_state() == "up"


def test_ports_of_the_controller_match_the_l2_agents_and_the_kernel(lab: Lab) -> None:
    node1 = lab.add_host("node1")
    node2 = lab.add_host("node2")
    res = lab.agentctl("--json", "ports", "--host", node1.host)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []
    ghost = lab.scope.host("ghost")
    res = lab.agentctl("--json", "ports", "--host", ghost)  # a filter: nothing matches
    assert res.returncode == 0 and json.loads(res.stdout) == []

    for node, name in ((node1, "a"), (node2, "b"), (node1, "c")):
        res = lab.agentctl("send", "build", "--host", node.host, "--name", name, "--wait")
        assert res.returncode == 0, res.stdout + res.stderr
    every = json.loads(lab.agentctl("--json", "ports").stdout)
    assert len(every) == 3 and {p["state"] for p in every} == {"wired"}
    for node in (node1, node2):
        ports = json.loads(lab.agentctl("--json", "ports", "--host", node.host).stdout)
        assert {p["host"] for p in ports} == {node.host}
        recorded = {
            r["port_id"]: (r["port"]["fixed_ip"], r["port"]["mac"])
            for r in node.recorded_ports()
            if r["wanted"] == "present"
        }
        assert recorded == {p["id"]: (p["fixed_ip"], p["mac"]) for p in ports}
        links = node.links()
        assert all(links[p["device"]].get("master") == p["bridge"] for p in ports)
    text = lab.agentctl("ports").stdout
    assert text.split()[:3] == ["PORT", "HOST", "STATE"]
    assert all(p["id"] in text and p["fixed_ip"] in text for p in every)
