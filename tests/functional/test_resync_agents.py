"""Agents resync with the controller on start: what the controller proves gone goes.

The casts that would have said so are lost on purpose (the host's queue is purged
while its agent is down, and its own record of the port is lost too), so only the
resync can tell the agent; the reconcile alone keeps what it cannot prove unwanted.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agents.lab.lab import Lab
from agents.lab.procs import wait_for

pytestmark = pytest.mark.functional


def test_a_released_port_whose_cast_and_record_were_lost_is_unwired_by_resync(lab: Lab) -> None:
    node = lab.add_host("node1")
    built = lab.agentctl_json("send", "build", "--name", "web", "--wait", "--timeout", "60")
    assert built["ok"], built
    port = lab.agentctl_json("show", "web")["ports"][0]
    tap = f"tap{port['id'][:11]}"
    assert tap in node.links()

    node.kill("l2-agent")
    deleted = lab.agentctl_json("send", "delete", "web", "--wait", "--timeout", "60")
    assert deleted["ok"], deleted
    # The port_deleted cast waits in the agent's queue: lose it, and the agent's own
    # record of the port with it.
    subprocess.run(["rabbitmqctl", "-q", "purge_queue", f"l2-agent.{node.host}"], check=True)
    shutil.rmtree(node.state_dir / "l2-agent" / node.host / "ports")
    (node.state_dir / "l2-agent" / node.host / "ports").mkdir()
    assert tap in node.links()

    node.start("l2-agent")
    wait_for(lambda: tap not in node.links(), 30, what=f"resync to unwire {tap}")
    # The tap goes first, the log line a moment later.
    log_file = node.log_dir / "l2-agent.log"
    wait_for(lambda: "released_tap_removed" in log_file.read_text(), 10, what="the log line")
    assert "resync_done" in log_file.read_text()
