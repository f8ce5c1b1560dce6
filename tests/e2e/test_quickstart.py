"""Issue 6 item 9: the README's first command brings up a controller, a host and a guest,
and goes away.

Runs tools/quickstart.sh exactly as an operator would, with its names (namespace, host,
exchange, directory, controller port) moved aside through the environment so it cannot
meet a user's own quickstart or another test run, then follows the instructions it
printed (ping from the namespace, agentctl against the printed AGENTS_URL), then
`--down`, and checks nothing of it is left: namespace, directory, QEMU, controller,
broker queues.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from agents.lab.broker import deployment_queues, host_queues, queue_exists
from agents.lab.host import qemu_pids
from agents.lab.netns import port_open
from agents.lab.procs import REPO, free_port, run, unique

pytestmark = pytest.mark.e2e


def test_quickstart_up_reach_and_down(guest_image_dir: Path) -> None:
    name = unique("qs")
    state_dir = Path("/tmp") / f"{name}-run"
    port = free_port()
    env = {
        **os.environ,
        "AGENTS_QUICKSTART_DIR": str(state_dir),
        "AGENTS_QUICKSTART_NETNS": f"{name}-ns",
        "AGENTS_QUICKSTART_HOST": f"{name}-host",
        "AGENTS_QUICKSTART_EXCHANGE": f"test-{name}",
        "AGENTS_QUICKSTART_PORT": str(port),
        "AGENTS_GUEST_IMAGE_DIR": str(guest_image_dir),
    }
    script = str(REPO / "tools" / "quickstart.sh")
    events_queue = None
    try:
        up = subprocess.run(
            [script], env=env, capture_output=True, text=True, timeout=400, check=False
        )
        assert up.returncode == 0, up.stdout + up.stderr
        events_queue = json.loads((state_dir / "state.json").read_text())["events_queue"]
        ping = re.search(r"^\s+(ip netns exec \S+ ping (\S+))$", up.stdout, re.M)
        assert ping, up.stdout
        reached = run([*ping.group(1).split(), "-c", "1", "-W", "2"], check=False)
        assert reached.returncode == 0, reached.stdout + reached.stderr
        export = re.search(r"export AGENTS_URL=(\S+)", up.stdout)
        assert export and export.group(1) == f"http://127.0.0.1:{port}", up.stdout
        console = re.search(r"^\s+(\S+/agentctl console-log \S+)$", up.stdout, re.M)
        assert console, up.stdout
        token = re.search(r'export AGENTS_TOKEN="\$\(cat (\S+)\)"', up.stdout)
        assert token, up.stdout
        clean_env = {k: v for k, v in env.items() if not k.startswith("AGENTS_CONFIG")}
        clean_env["AGENTS_TOKEN"] = Path(token.group(1)).read_text().strip()
        logged = subprocess.run(
            console.group(1).split(),
            env={**clean_env, "AGENTS_URL": export.group(1)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert f"AGENTS-GUEST-READY name=demo ip={ping.group(2)}" in logged.stdout, logged
        # built through the controller: it knows the guest, with its timeline
        shown = subprocess.run(
            [console.group(1).split()[0], "show", "demo", "--timeline"],
            env={**clean_env, "AGENTS_URL": export.group(1)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0 and "instance.create.end" in shown.stdout, shown
    finally:
        down = subprocess.run(
            [script, "--down"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"{name}-ns" not in run(["ip", "netns", "list"]).stdout
    assert not state_dir.exists()
    assert not qemu_pids(state_dir / "node1" / "libvirt")
    assert not port_open(None, port), "the controller still listens"
    for queue in [*host_queues(f"{name}-host"), *deployment_queues(f"test-{name}"), events_queue]:
        assert queue is not None and not queue_exists(queue), queue
