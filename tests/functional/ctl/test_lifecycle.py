"""agentctl's whole instance life cycle against real agents: build, list, show, console-log,
ports, reboot, delete, with fixed IPs allocated from what the l2-agents hold.

Checked with independent clients where it matters: iproute2 for the taps.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address

import pytest

from agents.ctl.client import Client
from agents.ctl.settings import CtlConfig
from common.config import load
from tests.functional.ctl.conftest import Deployment, json_lines
from tests.hosts import wait_for

pytestmark = pytest.mark.functional

NET1_START = IPv4Address("10.10.0.10")  # net1's allocation_start in etc/shared.conf


def test_build_list_show_reboot_delete(deployment: Deployment) -> None:
    node = deployment.add_host("node1")
    dep = deployment

    # ---- build two, on a terminal: live progress per instance and a summary
    res = dep.agentctl(
        "send", "build", "--host", node.name, "--name", "web", "--count", "2", "--wait"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for name in ("web-1", "web-2"):
        for fact in ("create started", "wired", "guest defined", "guest started", "running"):
            assert f"{name}: " in out and fact in out, (fact, out)
    assert "create: 2 done, 0 failed, 0 unfinished" in out

    # ---- list: both running, distinct addresses from the bottom of the pool
    listed = json.loads(dep.agentctl("--json", "list", "--host", node.name).stdout)
    assert sorted(i["name"] for i in listed) == ["web-1", "web-2"]
    assert all(i["state"] == "running" for i in listed)
    ips = sorted(IPv4Address(i["ports"][0]["fixed_ip"]) for i in listed)
    assert ips == [NET1_START, NET1_START + 1]

    # ---- a later build sees the addresses the l2-agent holds and takes the next one
    res = dep.agentctl("--json", "send", "build", "--host", node.name, "--name", "db", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json_lines(res.stdout)[-1]
    assert summary["ok"] is True
    db = summary["instances"][0]
    assert db["state"] == "running" and db["ports"][0]["fixed_ip"] == str(NET1_START + 2)
    assert db["ports"][0]["mac"].startswith("fa:16:3e:")
    # progress lines came first, as JSON lines, each naming the instance
    progress = [line for line in json_lines(res.stdout)[:-1] if line["instance_uuid"] == db["uuid"]]
    assert [p["event"] for p in progress][-1] == "running"
    assert "port_wired" in [p["event"] for p in progress]

    # ---- list of every live host (discovery), terminal table
    res = dep.agentctl("list")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split()[:4] == ["NAME", "UUID", "HOST", "STATE"]
    assert {"web-1", "web-2", "db"} <= {line.split()[0] for line in res.stdout.splitlines()[1:]}

    # ---- show by name and by uuid
    res = dep.agentctl("show", "db")
    assert res.returncode == 0, res.stderr
    assert f"uuid:       {db['uuid']}" in res.stdout and "state:      running" in res.stdout
    shown = json.loads(dep.agentctl("--json", "show", db["uuid"]).stdout)
    assert shown["name"] == "db" and shown["host"] == node.name

    # ---- console-log: the test driver runs no guest, so write what QEMU's serial file
    # would hold where the compute-agent keeps it (instances_dir/<uuid>/console.log)
    console = deployment.tmp / "instances-node1" / db["uuid"] / "console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_text("".join(f"boot line {i}\n" for i in range(1, 11)))
    res = dep.agentctl("console-log", "db", "--tail", "3")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "boot line 8\nboot line 9\nboot line 10\n"
    logged = json.loads(dep.agentctl("--json", "console-log", db["uuid"]).stdout)
    assert logged["instance_uuid"] == db["uuid"] and logged["text"].count("boot line") == 10

    # ---- ports: three wired, each on a tap that the kernel has, in the network's bridge
    ports = json.loads(dep.agentctl("--json", "ports", "--host", node.name).stdout)["ports"]
    assert len(ports) == 3 and {p["state"] for p in ports} == {"wired"}
    links = node.links()
    for p in ports:
        assert links[p["device"]].get("master") == p["bridge"]
    text = dep.agentctl("ports", "--host", node.name).stdout
    assert "DEVICE" in text and ports[0]["device"] in text

    # ---- reboot, soft and hard
    for extra in ([], ["--hard"]):
        res = dep.agentctl("send", "reboot", "--host", node.name, "web-1", "--wait", *extra)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "reboot: 1 done" in res.stdout

    # ---- delete: the guest goes, then its port is unwired (tap gone from the kernel)
    web1 = next(i for i in listed if i["name"] == "web-1")
    tap = f"tap{web1['ports'][0]['id'][:11]}"
    assert tap in node.links()
    res = dep.agentctl("--json", "send", "delete", "--host", node.name, "web-1", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json_lines(res.stdout)[-1]["ok"] is True
    assert "port_unwired" in [line.get("event") for line in json_lines(res.stdout)]
    assert tap not in node.links()
    names = [
        i["name"] for i in json.loads(dep.agentctl("--json", "list", "--host", node.name).stdout)
    ]
    assert sorted(names) == ["db", "web-2"]

    # ---- the deleted instance is now unknown: named as such, exit 2
    res = dep.agentctl("show", "web-1")
    assert res.returncode == 2 and "no instance 'web-1'" in res.stderr

    # ---- delete without --wait: sent, the guest and its port go shortly after
    res = dep.agentctl("send", "delete", "--host", node.name, "web-2")
    assert res.returncode == 0, res.stderr
    wait_for(
        lambda: "web-2" not in dep.agentctl("list", "--host", node.name).stdout,
        10,
        0.3,
        "web-2 gone",
    )
    wait_for(
        lambda: (
            len(json.loads(dep.agentctl("--json", "ports", "--host", node.name).stdout)["ports"])
            == 1
        ),
        10,
        0.3,
        "port gone",
    )

    # ---- delete while the l2-agent is down: warned; the port_deleted waits in the
    # agent's queue and is applied when it returns
    db_tap = f"tap{db['ports'][0]['id'][:11]}"
    assert db_tap in node.links()
    node.stop("l2-agent")
    res = dep.agentctl("send", "delete", "--host", node.name, "db", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ports are unwired when it comes back" in res.stderr
    assert db_tap in node.links()
    node.start("l2-agent")
    wait_for(
        lambda: db_tap not in node.links(), 15, 0.3, f"{db_tap} removed after the l2-agent returned"
    )


def test_concurrent_builds_never_keep_one_address_and_twins_are_ambiguous(
    deployment: Deployment,
) -> None:
    node = deployment.add_host("node1")
    # Two controllers (the client API agentctl is built on, as another program would use
    # it) both plan before either sends: they pick the same address, as two agentctl
    # racing would. Whoever then sees the clash gives its instance up; no two wired
    # ports may keep one address.
    config = load(CtlConfig, [deployment.shared, deployment.ctl_conf])
    clients = [Client.from_config(config) for _ in range(2)]
    try:
        plans = [c.plan_build(node.name, name=f"racer-{i}") for i, c in enumerate(clients)]
        picked = [p.ports[0].port.fixed_ip for p in plans]
        assert picked[0] == picked[1]
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(c.send_build, p, wait=True, timeout=60)
                for c, p in zip(clients, plans, strict=True)
            ]
            outcomes = [f.result() for f in futures]
    finally:
        for c in clients:
            c.close()
    print("picked", picked, "ok", [o.ok for o in outcomes])
    assert [o.ok for o in outcomes] != [True, True], "both kept the same address"
    for outcome in outcomes:
        assert not outcome.tracker.pending
        for failed in outcome.tracker.failed:
            assert failed.reason and "was given at the same time" in failed.reason
    kept = sum(o.ok for o in outcomes)

    def wired_addresses() -> list[str]:
        res = deployment.agentctl("--json", "ports", "--host", node.name)
        return [p["port"]["fixed_ip"] for p in json.loads(res.stdout)["ports"]]

    # the loser's port is unwired: every address left is held once
    wait_for(
        lambda: len(wired_addresses()) == kept,
        10,
        0.3,
        "losers unwired",
    )
    addresses = wired_addresses()
    assert len(addresses) == len(set(addresses))

    for _ in range(2):
        res = deployment.agentctl("send", "build", "--host", node.name, "--name", "twin", "--wait")
        assert res.returncode == 0, res.stdout + res.stderr
    res = deployment.agentctl("show", "twin")
    assert res.returncode == 2
    assert "2 instances are named 'twin'" in res.stderr and "give the uuid" in res.stderr
