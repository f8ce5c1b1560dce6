"""agentctl against real agents: discovery, agents up/down, ports, errors a person can act on."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.functional.ctl.conftest import Deployment

pytestmark = pytest.mark.functional


def test_agents_lists_live_agents_with_version_uptime_then_marks_down(
    deployment: Deployment,
) -> None:
    node = deployment.add_host("node1", agents=("l2-agent",))
    res = deployment.agentctl("--json", "agents")
    assert res.returncode == 0, res.stderr
    agents = {(a["host"], a["kind"]): a for a in json.loads(res.stdout)}
    me = agents[(node.name, "l2")]
    assert me["state"] == "up" and me["version"] and me["uptime_s"] >= 0
    # terminal output: one aligned row per agent, with the headers
    text = deployment.agentctl("agents").stdout
    assert "HOST" in text and "VERSION" in text and node.name in text

    node.stop("l2-agent")
    res = deployment.agentctl("--json", "agents")
    assert res.returncode == 0, res.stderr
    agents = {(a["host"], a["kind"]): a for a in json.loads(res.stdout)}
    assert agents[(node.name, "l2")]["state"] == "down"
    assert agents[(node.name, "l2")]["consumers"] == 0


def test_ports_of_a_host_with_no_ports_and_of_unknown_host(deployment: Deployment) -> None:
    node = deployment.add_host("node1", agents=("l2-agent",))
    res = deployment.agentctl("--json", "ports", "--host", node.name)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"host": node.name, "ports": []}

    ghost = deployment.scope.host("ghost")
    res = deployment.agentctl("ports", "--host", ghost)
    assert res.returncode == 5
    assert ghost in res.stderr and "no agent has ever served this host" in res.stderr
    assert "Traceback" not in res.stderr


def test_broker_down_is_said_within_seconds_without_traceback(
    deployment: Deployment, tmp_path: Path
) -> None:
    down = tmp_path / "down.conf"
    down.write_text("[messaging]\ntransport_url = rabbit://guest:guest@127.0.0.1:1/\n")
    commands = [
        ["list"],
        ["send", "delete", "--host", "node1", "vm1"],
        ["watch"],
        ["ports", "--host", "node1"],
        ["--debug", "agents"],
    ]
    procs = [
        subprocess.Popen(
            deployment.agentctl_cmd(*args, config=down),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=deployment.env(),
        )
        for args in commands
    ]
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, (args, err)
        assert "cannot reach the message broker" in err and "127.0.0.1:1" in err
        # a traceback only with --debug
        assert ("Traceback" in err + out) == ("--debug" in args), (args, err)
    # Alone, the answer comes after the probe gives up (broker_timeout, about 2-3 s) plus
    # start-up; the bound leaves room for a loaded CI machine, and rules out a hang
    # (oslo alone would retry for the whole outage).
    started = time.monotonic()
    res = deployment.agentctl("send", "build", "--host", "node1", "--wait", config=down)
    assert res.returncode == 3
    assert time.monotonic() - started < 15
