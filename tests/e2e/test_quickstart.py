"""Issue 6 item 9: the README's first command brings up a host, a guest, and goes away.

Runs tools/quickstart.sh exactly as an operator would, with its names (namespace, host,
exchange, directory) moved aside through the environment so it cannot meet a user's own
quickstart or another test run, then follows the instructions it printed, then
`--down`, and checks nothing of it is left.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.lab import qemu_pids
from tests.hosts import REPO, run, unique

pytestmark = pytest.mark.e2e


def test_quickstart_up_reach_and_down(guest_image_dir: Path) -> None:
    name = unique("qs")
    state_dir = Path("/tmp") / f"{name}-run"
    env = {
        **os.environ,
        "AGENTS_QUICKSTART_DIR": str(state_dir),
        "AGENTS_QUICKSTART_NETNS": f"{name}-ns",
        "AGENTS_QUICKSTART_HOST": f"{name}-host",
        "AGENTS_QUICKSTART_EXCHANGE": f"test-{name}",
        "AGENTS_GUEST_IMAGE_DIR": str(guest_image_dir),
    }
    script = str(REPO / "tools" / "quickstart.sh")
    try:
        up = subprocess.run(
            [script], env=env, capture_output=True, text=True, timeout=400, check=False
        )
        assert up.returncode == 0, up.stdout + up.stderr
        ping = re.search(r"^\s+(ip netns exec \S+ ping (\S+))$", up.stdout, re.M)
        assert ping, up.stdout
        reached = run([*ping.group(1).split(), "-c", "1", "-W", "2"], check=False)
        assert reached.returncode == 0, reached.stdout + reached.stderr
        export = re.search(r"export AGENTS_CONFIG=(\S+)", up.stdout)
        assert export, up.stdout
        console = re.search(r"^\s+(\S+/agentctl console-log \S+)$", up.stdout, re.M)
        assert console, up.stdout
        logged = subprocess.run(
            console.group(1).split(),
            env={**env, "AGENTS_CONFIG": export.group(1)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert f"AGENTS-GUEST-READY name=demo ip={ping.group(2)}" in logged.stdout, logged
    finally:
        down = subprocess.run(
            [script, "--down"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"{name}-ns" not in run(["ip", "netns", "list"]).stdout
    assert not state_dir.exists()
    assert not qemu_pids(state_dir / "node1" / "libvirt")
