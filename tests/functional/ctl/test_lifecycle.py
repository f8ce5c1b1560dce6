"""agentctl's whole instance life cycle through the controller, against real agents: build,
list, show (and --timeline), console-log, ports, reboot, delete.

Checked with independent clients where it matters: iproute2 for the taps, the
l2-agent's own record of its ports.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Address

import pytest

from agents.lab.lab import Lab
from agents.lab.procs import wait_for
from tests.functional.conftest import json_lines

pytestmark = pytest.mark.functional

NET1_START = IPv4Address("10.10.0.10")  # net1's allocation_start in etc/shared.conf


def test_build_list_show_timeline_console_ports_reboot_delete(lab: Lab) -> None:
    node = lab.add_host("node1")

    # ---- build two, on a terminal: live progress per instance and a summary
    res = lab.agentctl("send", "build", "--name", "web", "--count", "2", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for name in ("web-1", "web-2"):
        for fact in ("create_started", "port_wired", "guest_defined", "guest_started", "running"):
            assert re.search(rf"^\s+{name} {fact}", out, re.M), (name, fact, out)
    assert "create: 2 done, 0 failed, 0 unfinished" in out

    # ---- list: both running on the only host, distinct addresses from the pool's bottom
    listed = json.loads(lab.agentctl("--json", "list", "--host", node.host).stdout)
    assert sorted(i["name"] for i in listed) == ["web-1", "web-2"]
    assert {(i["state"], i["host"]) for i in listed} == {("running", node.host)}
    ips = sorted(IPv4Address(i["ports"][0]["fixed_ip"]) for i in listed)
    assert ips == [NET1_START, NET1_START + 1]

    # ---- a later build takes the next address; JSON lines of progress, then a summary
    res = lab.agentctl("--json", "send", "build", "--host", node.host, "--name", "db", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    *progress, summary = json_lines(res.stdout)
    assert summary["ok"] is True and summary["operation"] == "create"
    (db,) = summary["instances"]
    assert db["state"] == "running" and db["ports"][0]["fixed_ip"] == str(NET1_START + 2)
    assert db["ports"][0]["mac"].startswith("fa:16:3e:")
    assert {p["instance_uuid"] for p in progress} == {db["uuid"]}
    assert [p["event"] for p in progress][-1] == "running" and progress[-1]["final"]
    assert "port_wired" in [p["event"] for p in progress]

    # ---- list of every host, terminal table
    res = lab.agentctl("list")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split()[:4] == ["NAME", "UUID", "HOST", "STATE"]
    assert {"web-1", "web-2", "db"} <= {line.split()[0] for line in res.stdout.splitlines()[1:]}

    # ---- show by name and by uuid; --timeline: every hop of the create, timed
    res = lab.agentctl("show", "db")
    assert res.returncode == 0, res.stderr
    assert f"uuid:       {db['uuid']}" in res.stdout and "state:      running" in res.stdout
    shown = json.loads(lab.agentctl("--json", "show", db["uuid"]).stdout)
    assert shown["name"] == "db" and shown["host"] == node.host
    assert [op["kind"] for op in shown["operations"]] == ["create"]
    res = lab.agentctl("show", "db", "--timeline")
    assert res.returncode == 0, res.stderr
    hops = re.findall(r"^\s+\+(\d+\.\d) ms\s+(\S+)\s+\S+\s+(\S+)", res.stdout, re.M)
    events = [event for _, _, event in hops]
    for expected in (
        "api.received",
        "casts.sent",
        "port.received",
        "port.vif_plugged",
        "instance.create.start",
        "instance.create.end",
        "operation.done",
    ):
        assert expected in events, (expected, res.stdout)
    offsets = [float(ms) for ms, _, _ in hops]
    assert offsets[0] == 0.0 and offsets == sorted(offsets), res.stdout
    assert events[-1] == "operation.done"
    timeline = json.loads(lab.agentctl("--json", "show", "db", "--timeline").stdout)
    assert {e["source"] for e in timeline["events"]} == {
        "api",
        "controller",
        "l2-agent",
        "compute-agent",
    }

    # ---- console-log: the test driver runs no guest, so write what QEMU's serial file
    # would hold where the compute-agent keeps it (instances_dir/<uuid>/console.log)
    console = node.instances_dir / db["uuid"] / "console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_text("".join(f"boot line {i}\n" for i in range(1, 11)))
    res = lab.agentctl("console-log", "db", "--tail", "3")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "boot line 8\nboot line 9\nboot line 10\n"
    logged = json.loads(lab.agentctl("--json", "console-log", db["uuid"]).stdout)
    assert logged["instance_uuid"] == db["uuid"] and logged["text"].count("boot line") == 10

    # ---- ports: three wired, each on a tap the kernel has, in its network's bridge,
    # and each held by the l2-agent's own record with the controller's address
    ports = json.loads(lab.agentctl("--json", "ports", "--host", node.host).stdout)
    assert len(ports) == 3 and {p["state"] for p in ports} == {"wired"}
    links = node.links()
    for p in ports:
        assert links[p["device"]].get("master") == p["bridge"]
    recorded = {
        r["port_id"]: r["port"]["fixed_ip"]
        for r in node.recorded_ports()
        if r["wanted"] == "present"
    }
    assert recorded == {p["id"]: p["fixed_ip"] for p in ports}
    text = lab.agentctl("ports", "--host", node.host).stdout
    assert "DEVICE" in text and ports[0]["device"] in text

    # ---- reboot, soft and hard
    for extra in ([], ["--hard"]):
        res = lab.agentctl("send", "reboot", "web-1", "--wait", *extra)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "reboot: 1 done" in res.stdout
    kinds = [
        op["kind"]
        for op in json.loads(lab.agentctl("--json", "show", "web-1").stdout)["operations"]
    ]
    assert kinds == ["reboot", "reboot", "create"]

    # ---- delete: the guest goes, then its port is unwired (tap gone from the kernel)
    web1 = next(i for i in listed if i["name"] == "web-1")
    tap = f"tap{web1['ports'][0]['id'][:11]}"
    assert tap in node.links()
    res = lab.agentctl("--json", "send", "delete", "web-1", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json_lines(res.stdout)[-1]["ok"] is True
    wait_for(lambda: tap not in node.links(), 10, 0.1, f"{tap} removed")
    names = [i["name"] for i in json.loads(lab.agentctl("--json", "list").stdout)]
    assert sorted(names) == ["db", "web-2"]

    # ---- the deleted instance is now unknown: named as such, exit 2
    res = lab.agentctl("show", "web-1")
    assert res.returncode == 2 and "no instance 'web-1'" in res.stderr

    # ---- delete without --wait: accepted; the guest and its port go shortly after
    res = lab.agentctl("send", "delete", "web-2")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: "web-2" not in lab.agentctl("list").stdout, 10, 0.2, "web-2 gone")
    wait_for(
        lambda: len(json.loads(lab.agentctl("--json", "ports").stdout)) == 1, 10, 0.2, "port gone"
    )

    # ---- delete while the l2-agent is down: the guest goes; the port_deleted waits in
    # the agent's queue and is applied when it returns
    db_tap = f"tap{db['ports'][0]['id'][:11]}"
    node.stop("l2-agent")
    res = lab.agentctl("send", "delete", "db", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert db_tap in node.links()
    node.start("l2-agent")
    wait_for(lambda: db_tap not in node.links(), 15, 0.2, f"{db_tap} removed after return")
    wait_for(lambda: json.loads(lab.agentctl("--json", "ports").stdout) == [], 10, 0.2, "no ports")


def test_twins_are_ambiguous_by_name_and_found_by_uuid(lab: Lab) -> None:
    lab.add_host("node1")
    uuids = []
    for _ in range(2):
        res = lab.agentctl("--json", "send", "build", "--name", "twin", "--wait")
        assert res.returncode == 0, res.stdout + res.stderr
        uuids.append(json_lines(res.stdout)[-1]["instances"][0]["uuid"])
    res = lab.agentctl("show", "twin")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "twin" in res.stderr and all(u in res.stderr for u in uuids), res.stderr
    for uuid in uuids:
        assert json.loads(lab.agentctl("--json", "show", uuid).stdout)["uuid"] == uuid
