"""Requests that cannot succeed: each says why, with the documented exit code, fast, and
leaves nothing wired behind.

Exit codes: 2 bad input (the controller's 422 with the valid choices), 5 no host
(unknown, down, or nothing fits), 3 controller unreachable, 1 the operation failed
(with the agent's reason), 4 agentctl's own --timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from agents.lab.lab import Lab
from agents.lab.procs import wait_for
from tests.functional.conftest import json_lines

pytestmark = pytest.mark.functional


def test_bad_input_names_the_valid_choices_and_exits_2(lab: Lab) -> None:
    cases = [
        (
            ["--flavor", "m9.huge"],
            "flavor 'm9.huge' is not known; valid: m1.medium, m1.small, m1.tiny",
        ),
        (["--network", "nope"], "network 'nope' is not known; valid: net1, provider"),
        (["--name", "bad name"], "name = 'bad name'"),
        (["--count", "0"], "count = 0"),
    ]
    procs = [
        subprocess.Popen(
            lab.agentctl_cmd("send", "build", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lab.agentctl_env(),
        )
        for extra, _ in cases
    ]
    for (extra, message), proc in zip(cases, procs, strict=True):
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2, (extra, err)
        assert message in err, err
        assert "Traceback" not in err
    res = lab.agentctl("--json", "send", "build", "--flavor", "m9.huge")
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and doc["code"] == "flavor.unknown"


def test_unknown_host_and_no_host_at_all_exit_5(lab: Lab) -> None:
    res = lab.agentctl("send", "build", "--wait")  # no compute-agent was ever heard
    assert res.returncode == 5, res.stdout + res.stderr
    assert "no live host has room for flavor 'm1.tiny'" in res.stderr

    lab.add_host("node1")
    ghost = lab.scope.host("ghost")
    res = lab.agentctl("--json", "send", "build", "--host", ghost, "--wait")
    assert res.returncode == 5, res.stderr
    assert f"no compute-agent serves host '{ghost}'" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 5 and doc["code"] == "host.unavailable"
    assert json.loads(lab.agentctl("--json", "list").stdout) == []  # nothing was made


def test_controller_down_exits_3_fast_without_traceback(lab: Lab) -> None:
    assert lab.controller is not None
    lab.controller.stop()
    commands = [
        ["list"],
        ["show", "web"],
        ["send", "build", "--wait"],
        ["send", "delete", "web", "--wait"],
        ["watch"],
        ["ports"],
        ["agents"],
    ]
    for args in commands:
        started = time.monotonic()
        res = lab.agentctl(*args, timeout=30)
        took = time.monotonic() - started
        assert res.returncode == 3, (args, res.stdout, res.stderr)
        assert f"the controller at {lab.controller.url} is unreachable" in res.stderr, res.stderr
        assert "Traceback" not in res.stdout + res.stderr
        assert took < 2, f"agentctl {' '.join(args)} took {took:.1f}s to say so"
    doc = json.loads(lab.agentctl("--json", "list").stdout)
    assert doc["exit_code"] == 3 and doc["code"] == "controller.unreachable"

    # the controller comes back on the same address; agentctl works again
    lab.controller.start()
    assert lab.agentctl("list").returncode == 0


def test_compute_agent_down_is_refused_before_anything_is_made(lab: Lab) -> None:
    node = lab.add_host("node1")
    node.kill("compute-agent")  # crashed: the controller notices when heartbeats stop

    def down() -> bool:
        agents = json.loads(lab.agentctl("--json", "agents").stdout)
        return any(a["kind"] == "compute" and a["state"] == "down" for a in agents)

    wait_for(down, 15, 0.3, "the compute-agent marked down")
    res = lab.agentctl("send", "build", "--host", node.host, "--wait")
    assert res.returncode == 5, res.stdout + res.stderr
    assert f"no compute-agent serves host '{node.host}': its compute-agent is down" in res.stderr
    res = lab.agentctl("send", "build", "--wait")  # the scheduler has no live host either
    assert res.returncode == 5 and f"{node.host}: its compute-agent is down" in res.stderr
    assert json.loads(lab.agentctl("--json", "list").stdout) == []


def test_bad_image_and_unwirable_port_fail_with_the_agents_reason(lab: Lab) -> None:
    node = lab.add_host("node1")
    # an image no host has is refused before anything is created
    res = lab.agentctl("send", "build", "--image", "nope", "--name", "bad")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "image 'nope': no live compute host has it" in res.stderr
    assert "tiny" in res.stderr  # what they have
    assert json.loads(lab.agentctl("--json", "list").stdout) == []

    # one the host reported and lost since: the agent's own reason fails the build
    image_dir = node.dir / "images"
    gone = image_dir / "gone.qcow2"
    shutil.copy(image_dir / "tiny.qcow2", gone)

    def reported() -> bool:
        hosts = json.loads(lab.agentctl("--json", "agents").stdout)
        return any("gone" in (h.get("images") or []) for h in hosts)

    wait_for(reported, 30, 0.3, "the image reported in a heartbeat")
    gone.unlink()
    res = lab.agentctl("--json", "send", "build", "--image", "gone", "--name", "bad", "--wait")
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json_lines(res.stdout)[-1]
    assert summary["ok"] is False
    (inst,) = summary["instances"]
    assert inst["state"] == "error" and "image 'gone' not found" in inst["reason"]
    tap = f"tap{inst['ports'][0]['id'][:11]}"
    # the failed instance's port is unwired: nothing stays in the kernel or the record
    wait_for(lambda: tap not in node.links(), 10, 0.2, f"{tap} removed")
    wait_for(
        lambda: not [r for r in node.recorded_ports() if r["wanted"] == "present"],
        10,
        0.2,
        "the l2-agent's record emptied",
    )

    # a port the l2-agent cannot wire (the sample maps physnet1 to eth1, absent here):
    # the failure is shown live, with the l2-agent's reason, and fails the build
    res = lab.agentctl("send", "build", "--name", "flat", "--network", "provider", "--wait")
    assert res.returncode == 1, res.stdout + res.stderr
    failed = [line for line in res.stdout.splitlines() if "flat port_failed" in line]
    assert failed and "eth1" in failed[0], res.stdout
    assert "create: 0 done, 1 failed" in res.stdout
    shown = json.loads(lab.agentctl("--json", "show", "flat").stdout)
    assert shown["state"] == "error" and "failed to plug" in shown["fault"]


def test_no_l2_agent_fails_on_vif_plugging_timeout_and_wait_times_out(lab: Lab) -> None:
    node = lab.add_host("node1", compute={"compute": {"vif_plugging_timeout": 3}})
    node.stop("l2-agent")
    started = time.monotonic()
    res = lab.agentctl("--json", "send", "build", "--name", "lonely", "--wait")
    assert res.returncode == 1, res.stdout + res.stderr
    lonely = json_lines(res.stdout)[-1]["instances"][0]
    assert lonely["state"] == "error" and "vif-plugged" in lonely["reason"]
    assert time.monotonic() - started < 15

    # agentctl's own --timeout, shorter than the agent's deadline: exit 4, and says so
    res = lab.agentctl("send", "build", "--name", "slow", "--wait", "--timeout", "1")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "slow" in res.stdout and "it may still finish" in res.stdout

    # when the l2-agent returns it works through its queue in order; slow's port is wired
    # or unwired with its build, and nothing of lonely stays
    node.start("l2-agent")
    lonely_tap = f"tap{lonely['ports'][0]['id'][:11]}"
    wait_for(lambda: lonely_tap not in node.links(), 15, 0.3, "lonely's tap gone")

    def settled() -> bool:
        shown = json.loads(lab.agentctl("--json", "show", "slow").stdout)
        return shown["task"] is None

    wait_for(settled, 30, 0.3, "slow's create settled")
