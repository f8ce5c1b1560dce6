"""agentctl watch (filters, JSON lines, terminal lines) and a two-host deployment: discovery
across hosts, fixed IPs unique across hosts, agents with counts.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from ipaddress import IPv4Address

import pytest

from tests.functional.ctl.conftest import Deployment, json_lines
from tests.hosts import wait_for

pytestmark = pytest.mark.functional


def _start_watch(dep: Deployment, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        dep.agentctl_cmd("watch", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dep.env(),
    )
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 20)
    assert ready, "agentctl watch did not say it was watching"
    assert "watching events" in proc.stderr.readline()
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out


def test_watch_streams_filtered_events_as_lines_and_json(deployment: Deployment) -> None:
    node = deployment.add_host("node1")
    everything = _start_watch(deployment, "--json", "--host", node.name)
    only_web = _start_watch(deployment, "--instance", "web")
    for name in ("web", "other"):
        res = deployment.agentctl("send", "build", "--host", node.name, "--name", name, "--wait")
        assert res.returncode == 0, res.stdout + res.stderr
    res = deployment.agentctl("send", "delete", "--host", node.name, "web", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    time.sleep(0.5)  # the watchers got the events within milliseconds; leave them a margin
    events = json_lines(_stop(everything))
    lines = _stop(only_web).splitlines()

    types = [e["event_type"] for e in events]
    for expected in (
        "instance.create.start",
        "instance.create.progress",
        "instance.create.end",
        "port.vif_plugged",
    ):
        assert expected in types, types
    assert {e["payload"]["host"] for e in events} == {node.name}
    names = {e["payload"].get("name") for e in events if e["event_type"] == "instance.create.end"}
    assert names == {"web", "other"}

    # terminal lines: one per event, this instance only, readable facts
    assert lines, "no lines for web"
    web_uuid = next(
        e["payload"]["instance_uuid"] for e in events if e["payload"].get("name") == "web"
    )
    web_port = next(
        e["payload"]["port_id"]
        for e in events
        if e["event_type"] == "port.vif_plugged" and e["payload"]["instance_uuid"] == web_uuid
    )
    assert all(web_uuid[:8] in line or web_port[:8] in line for line in lines), lines
    assert not any("other" in line for line in lines), lines
    end = [line for line in lines if "instance.create.end" in line]
    assert len(end) == 1 and node.name in end[0] and "state=running" in end[0]
    # delete and port events carry only the uuid: the filter learned it from the name
    assert any("instance.delete.end" in line for line in lines), "\n".join(lines)
    assert any("port.vif_unplugged" in line for line in lines), "\n".join(lines)


def test_two_hosts_discovery_unique_addresses_and_agents(deployment: Deployment) -> None:
    node1 = deployment.add_host("node1")
    node2 = deployment.add_host("node2")
    built = {}
    for node, name, wait in ((node1, "a", True), (node2, "b", True), (node1, "c", False)):
        args = ["--json", "send", "build", "--host", node.name, "--name", name]
        res = deployment.agentctl(*args, *(["--wait"] if wait else []))
        assert res.returncode == 0, res.stdout + res.stderr
        built[name] = json_lines(res.stdout)[-1]["instances"][0]
    # without --wait: sent, and agentctl's answer says no more than that
    assert built["c"]["state"] == "sent" and built["a"]["state"] == "running"

    def c_running() -> bool:
        res = deployment.agentctl("--json", "list", "--host", node1.name)
        return any(i["name"] == "c" and i["state"] == "running" for i in json.loads(res.stdout))

    wait_for(c_running, 15, 0.3, "c running")
    addresses = [IPv4Address(built[n]["ports"][0]["fixed_ip"]) for n in ("a", "b", "c")]
    # b on node2 knew a's address held on node1: the pool is shared by the network
    assert addresses == [
        IPv4Address("10.10.0.10"),
        IPv4Address("10.10.0.11"),
        IPv4Address("10.10.0.12"),
    ]

    listed = json.loads(deployment.agentctl("--json", "list").stdout)
    assert {(i["name"], i["host"]) for i in listed} == {
        ("a", node1.name),
        ("b", node2.name),
        ("c", node1.name),
    }
    shown = json.loads(deployment.agentctl("--json", "show", "b").stdout)  # found without --host
    assert shown["host"] == node2.name and shown["uuid"] == built["b"]["uuid"]

    agents = {
        (a["host"], a["kind"]): a
        for a in json.loads(deployment.agentctl("--json", "agents").stdout)
    }
    assert set(agents) == {(h.name, k) for h in (node1, node2) for k in ("compute", "l2")}
    assert all(a["state"] == "up" for a in agents.values())
    assert agents[(node1.name, "compute")]["counts"].get("builds_ok") == 2
    assert agents[(node2.name, "compute")]["counts"].get("builds_ok") == 1
    text = deployment.agentctl("agents").stdout
    assert "builds_ok=2" in text and "0.1.0" in text
