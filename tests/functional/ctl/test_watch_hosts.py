"""agentctl watch (filters, JSON lines, terminal lines) and a two-host deployment: the
scheduler's choice, fixed IPs unique across hosts, instances found without --host."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from ipaddress import IPv4Address

import pytest

from agents.lab.lab import Lab
from agents.lab.procs import wait_for
from tests.functional.conftest import json_lines

pytestmark = pytest.mark.functional


def _start_watch(lab: Lab, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        lab.agentctl_cmd("watch", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=lab.agentctl_env(),
    )
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 20)
    assert ready, "agentctl watch did not say it was watching"
    assert "watching events" in proc.stderr.readline()
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR2)  # every thread's stack to stderr, then fail
        time.sleep(0.5)
        proc.kill()
        out, err = proc.communicate(timeout=5)
        pytest.fail(f"agentctl watch did not end on SIGINT; its stacks:\n{err[-4000:]}")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out


def test_watch_streams_filtered_events_as_lines_and_json(lab: Lab) -> None:
    node = lab.add_host("node1")
    res = lab.agentctl("--json", "send", "build", "--name", "web", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    created = json_lines(res.stdout)[-1]
    web = created["instances"][0]
    everything = _start_watch(lab, "--json", "--host", node.host)
    only_web = _start_watch(lab, "--instance", "web")
    res = lab.agentctl("send", "build", "--name", "other", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    for args in (("reboot", "web"), ("delete", "web")):
        res = lab.agentctl("send", *args, "--wait")
        assert res.returncode == 0, res.stdout + res.stderr
    time.sleep(1)  # the stream polls the database about twice a second; leave a margin
    events = json_lines(_stop(everything))
    lines = _stop(only_web).splitlines()

    kinds = [e["event"] for e in events]
    for expected in (
        "api.received",
        "instance.create.start",
        "instance.create.progress",
        "instance.create.end",
        "port.vif_plugged",
        "instance.reboot.end",
        "instance.delete.end",
        "port.vif_unplugged",
        "operation.done",
    ):
        assert expected in kinds, (expected, kinds)
    assert {e["host"] for e in events} <= {node.host, None}
    assert {e["instance"] for e in events} - {None} == {"web", "other"}
    # port.vif_unplugged names no instance (the port record is gone); it still belongs
    # to the operation (request) of one
    requests = {e["request_id"] for e in events if e["instance"] is not None}
    nameless = [e for e in events if e["instance"] is None]
    assert {e["request_id"] for e in nameless} <= requests, nameless
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was sent twice"
    # nothing of web's create: the watch started after it
    assert not [e for e in events if e["request_id"] == created["request_id"]]

    # terminal lines: one per event, web only, readable facts
    assert lines, "no lines for web"
    assert not any("other" in line for line in lines), lines
    assert all("web" in line or web["uuid"][:8] in line for line in lines), lines
    joined = "\n".join(lines)
    for expected in ("instance.reboot.end", "instance.delete.end", "operation.done"):
        assert expected in joined, joined

    res = lab.agentctl("watch", "--duration", "1")  # ends by itself, exit 0
    assert res.returncode == 0, res.stderr


def test_two_hosts_scheduler_unique_addresses_and_lookups(lab: Lab) -> None:
    node1 = lab.add_host("node1")
    node2 = lab.add_host("node2")
    built = {}
    for host, name, wait in ((node1.host, "a", True), (node2.host, "b", True), (None, "c", False)):
        args = ["--json", "send", "build", "--name", name, *(["--host", host] if host else [])]
        res = lab.agentctl(*args, *(["--wait"] if wait else []))
        assert res.returncode == 0, res.stdout + res.stderr
        built[name] = json_lines(res.stdout)[-1]["instances"][0]
    # without --wait: accepted, and agentctl's answer says no more than that
    assert built["a"]["state"] == "running" and built["c"]["state"] != "running"
    assert built["c"]["host"] in (node1.host, node2.host)  # the scheduler chose

    def c_running() -> bool:
        return bool(json.loads(lab.agentctl("--json", "show", "c").stdout)["state"] == "running")

    wait_for(c_running, 15, 0.3, "c running")
    addresses = [IPv4Address(built[n]["ports"][0]["fixed_ip"]) for n in ("a", "b", "c")]
    assert addresses == [IPv4Address(f"10.10.0.{i}") for i in (10, 11, 12)]

    listed = json.loads(lab.agentctl("--json", "list").stdout)
    assert {(i["name"], i["host"]) for i in listed} == {
        ("a", node1.host),
        ("b", node2.host),
        ("c", built["c"]["host"]),
    }
    shown = json.loads(lab.agentctl("--json", "show", "b").stdout)  # found without --host
    assert shown["host"] == node2.host and shown["uuid"] == built["b"]["uuid"]
    res = lab.agentctl("show", "--host", node1.host, "b")  # on another host: refused
    assert res.returncode == 2 and "Traceback" not in res.stderr

    agents = {
        (a["host"], a["kind"]): a for a in json.loads(lab.agentctl("--json", "agents").stdout)
    }
    assert set(agents) == {(h.host, k) for h in (node1, node2) for k in ("compute", "l2")}
    assert all(a["state"] == "up" for a in agents.values())
    used = {h: agents[(h, "compute")]["vcpus_used"] for h in (node1.host, node2.host)}
    assert sum(used.values()) == 3 and min(used.values()) >= 1
