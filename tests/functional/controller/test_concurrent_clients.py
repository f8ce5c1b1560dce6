"""Many operators at once: 20 agentctl processes, 5 builds each, one network, 3 hosts.

The controller holds desired state in one database: addresses, MACs and hosts are
decided in a transaction per request, so however the requests interleave every build
ends running, on a host the scheduler chose (no --host), with an address nobody else
holds. Checked three ways: the controller's GET /v1/instances, `agentctl ports` per
host, and each l2-agent's own record of the ports it wired (its state files).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from ipaddress import IPv4Address, IPv4Network

import pytest

from agents.lab.lab import Lab
from tests.functional.conftest import json_lines

pytestmark = pytest.mark.functional

CLIENTS = 20
COUNT = 5
HOSTS = 3
ROOMY = {"compute": {"vcpus": 64, "memory_mb": 65536}}


def test_twenty_agentctl_processes_building_at_once(lab: Lab) -> None:
    assert lab.controller is not None
    nodes = [lab.add_host(f"node{i}", compute=ROOMY) for i in range(1, HOSTS + 1)]
    started = time.monotonic()
    build = ["--json", "send", "build", "--count", str(COUNT), "--network", "net1", "--wait"]
    procs = [
        subprocess.Popen(
            lab.agentctl_cmd(*build, "--name", f"c{i}", "--timeout", "120"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lab.agentctl_env(),
        )
        for i in range(CLIENTS)
    ]
    results = [(proc, *proc.communicate(timeout=180)) for proc in procs]
    took = time.monotonic() - started
    print(f"{CLIENTS} clients x {COUNT} builds: {took:.1f}s")
    failed = [(p.args, p.returncode, out[-2000:], err) for p, out, err in results if p.returncode]
    assert not failed, failed

    # every client saw its own five end running
    for i, (_, out, _) in enumerate(results):
        summary = json_lines(out)[-1]
        assert summary["ok"] is True and not summary["timed_out"], summary
        names = sorted(inst["name"] for inst in summary["instances"])
        assert names == sorted(f"c{i}-{k}" for k in range(1, COUNT + 1))
        assert {inst["state"] for inst in summary["instances"]} == {"running"}

    # the controller: 100 instances running, spread over the hosts, addresses distinct
    instances = lab.controller.get("/v1/instances")
    assert len(instances) == CLIENTS * COUNT
    stuck = [i for i in instances if i["state"] != "running"]
    assert not stuck, "\n".join(timeline(lab, i["uuid"]) for i in stuck[:3])
    assert {i["task"] for i in instances} == {None}
    per_host = Counter(i["host"] for i in instances)
    assert set(per_host) == {n.host for n in nodes}, per_host
    assert min(per_host.values()) >= CLIENTS * COUNT // HOSTS // 2, per_host  # spread
    ips = [p["fixed_ip"] for i in instances for p in i["ports"]]
    macs = [p["mac"] for i in instances for p in i["ports"]]
    assert len(ips) == CLIENTS * COUNT and len(set(ips)) == len(ips)
    assert len(set(macs)) == len(macs)
    assert all(IPv4Address(ip) in IPv4Network("10.10.0.0/24") for ip in ips)

    # each host: agentctl ports (the controller's view) and the l2-agent's own record
    seen: dict[str, str] = {}
    for node in nodes:
        res = lab.agentctl("--json", "ports", "--host", node.host)
        assert res.returncode == 0, res.stderr
        ports = json.loads(res.stdout)
        assert len(ports) == per_host[node.host]
        assert {p["state"] for p in ports} == {"wired"}
        recorded = {
            r["port_id"]: r["port"]["fixed_ip"]
            for r in node.recorded_ports()
            if r["wanted"] == "present"
        }
        assert recorded == {p["id"]: p["fixed_ip"] for p in ports}, node.host
        for port_id, ip in recorded.items():
            assert ip not in seen, f"{ip} held by {port_id} and {seen[ip]}"
            seen[ip] = port_id
    assert sorted(seen) == sorted(ips)


def timeline(lab: Lab, uuid: str) -> str:
    """An instance's state and every hop the controller recorded for it, for a failure."""
    assert lab.controller is not None
    doc = lab.controller.get(f"/v1/instances/{uuid}/timeline")
    inst = doc["instance"]
    hops = [
        f"  {e['id']:>5} {e['at']} {e['source']:<13} {e['event']} {e['step'] or ''}"
        f" state={e['state']} final={e['final']}"
        for e in doc["events"]
    ]
    return "\n".join([f"{inst['name']} {uuid}: state={inst['state']} task={inst['task']}", *hops])
