"""Builds that cannot succeed: each says why, with the documented exit code, and leaves
nothing wired behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.functional.ctl.conftest import Deployment, json_lines
from tests.hosts import wait_for

pytestmark = pytest.mark.functional


def test_bad_flavor_network_and_name_list_the_valid_ones(deployment: Deployment) -> None:
    cases = [
        (["--flavor", "m9.huge"], "unknown flavor 'm9.huge'; valid: m1.medium, m1.small, m1.tiny"),
        (["--network", "nope"], "unknown network 'nope'; valid: net1, provider"),
        (["--name", "bad name"], "--name = 'bad name'"),
        (["--count", "0"], "--count = 0: must be at least 1"),
    ]
    procs = [
        subprocess.Popen(
            deployment.agentctl_cmd("send", "build", "--host", "node1", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=deployment.env(),
        )
        for extra, _ in cases
    ]
    for (extra, message), proc in zip(cases, procs, strict=True):
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2, (extra, err)
        assert message in err, err
        assert "Traceback" not in err


def test_unknown_host_is_named_and_exits_5(deployment: Deployment) -> None:
    ghost = deployment.scope.host("ghost")
    res = deployment.agentctl("--json", "send", "build", "--host", ghost, "--wait")
    assert res.returncode == 5, res.stderr
    assert (
        f"no compute-agent serves host '{ghost}': no agent has ever served this host" in res.stderr
    )
    assert json.loads(res.stdout)["exit_code"] == 5


def test_compute_agent_down_is_said_before_casting(deployment: Deployment) -> None:
    node = deployment.add_host("node1", agents=("compute-agent",))
    node.stop("compute-agent", signal.SIGKILL)  # crashed: its queue stays, unconsumed
    res = deployment.agentctl("send", "build", "--host", node.name, "--wait")
    assert res.returncode == 5, res.stdout + res.stderr
    assert f"the compute-agent of host '{node.name}' is down" in res.stderr
    assert "has no consumer" in res.stderr


def test_bad_image_fails_with_the_agents_reason_and_unwires_the_port(
    deployment: Deployment,
) -> None:
    node = deployment.add_host("node1")
    res = deployment.agentctl(
        "--json", "send", "build", "--host", node.name, "--image", "nope", "--wait"
    )
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json_lines(res.stdout)[-1]
    assert summary["ok"] is False
    inst = summary["instances"][0]
    assert inst["state"] == "error" and "nope" in inst["reason"]
    tap = f"tap{inst['ports'][0]['id'][:11]}"
    # agentctl sent port_deleted for the failed instance's port: nothing stays wired
    wait_for(lambda: tap not in node.links(), 10, 0.2, f"{tap} removed")
    ports = json.loads(deployment.agentctl("--json", "ports", "--host", node.name).stdout)["ports"]
    assert ports == []

    # a port the l2-agent cannot wire (no device is mapped to physnet1 on this host):
    # the failure is shown live, with the l2-agent's reason, and fails the build
    res = deployment.agentctl(
        "send", "build", "--host", node.name, "--name", "flat", "--network", "provider", "--wait"
    )
    assert res.returncode == 1, res.stdout + res.stderr
    port_failed = [
        line for line in res.stdout.splitlines() if "flat: port" in line and "failed" in line
    ]
    assert port_failed and "physnet1" in port_failed[0], res.stdout
    assert "create: 0 done, 1 failed" in res.stdout


def test_no_l2_agent_fails_on_vif_plugging_timeout_then_times_out_agentctl(
    deployment: Deployment,
) -> None:
    node = deployment.add_host("node1", vif_timeout=3)
    node.stop("l2-agent")
    started = time.monotonic()
    res = deployment.agentctl(
        "--json", "send", "build", "--host", node.name, "--name", "lonely", "--wait"
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "l2-agent of host" in res.stderr and "is down" in res.stderr  # warned, went on
    lonely = json_lines(res.stdout)[-1]["instances"][0]
    assert lonely["state"] == "error" and "vif-plugged" in lonely["reason"]
    assert time.monotonic() - started < 15

    # agentctl's own --timeout, shorter than the agent's deadline: exit 4, and says so
    node.stop("compute-agent", signal.SIGKILL)
    slow_conf = deployment.tmp / "compute-slow.conf"
    slow_conf.write_text(
        node.confs["compute-agent"]
        .read_text()
        .replace("vif_plugging_timeout = 3", "vif_plugging_timeout = 60")
    )
    node.confs["compute-agent"] = slow_conf
    node.start("compute-agent")
    res = deployment.agentctl(
        "send", "build", "--host", node.name, "--name", "slow", "--wait", "--timeout", "2"
    )
    assert res.returncode == 4, res.stdout + res.stderr
    assert "slow" in res.stdout and "no answer within 2s; it may still finish" in res.stdout

    # When the l2-agent returns it works through its queue in order: lonely's
    # port_created, the port_deleted agentctl sent when lonely failed, slow's port_created.
    node.start("l2-agent")

    def port_ids() -> dict[str, str]:
        res = deployment.agentctl("--json", "ports", "--host", node.name)
        return {p["port"]["id"]: p["state"] for p in json.loads(res.stdout)["ports"]}

    wait_for(lambda: "wired" in port_ids().values(), 15, 0.3, "slow's port wired")
    wait_for(lambda: lonely["ports"][0]["id"] not in port_ids(), 5, 0.3, "lonely's port deleted")
    assert f"tap{lonely['ports'][0]['id'][:11]}" not in node.links()
