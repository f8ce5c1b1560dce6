"""A lab whose daemons each use their own broker account (Lab.create(broker_accounts=True)),
with the permissions tools/install.sh gives them: a build still goes end to end, and the
broker shows each daemon connected as its own user.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from agents.lab.broker import BrokerScope
from agents.lab.lab import Lab

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl"),
]


@pytest.fixture
def lab(root: None, broker_scope: BrokerScope) -> Iterator[Lab]:
    lab = Lab.create(
        prefix="fa-", scope=broker_scope, stop_signal=signal.SIGKILL, broker_accounts=True
    )
    try:
        lab.start_controller()
        yield lab
    finally:
        print(lab.logs())
        accounts = lab.accounts
        lab.close()
        if accounts is not None:
            prefix = accounts.deployment.prefix
            assert not {u for u in accounts.admin.users() if u.startswith(prefix)}


def connected_users() -> set[str]:
    out = subprocess.run(
        ["rabbitmqctl", "--quiet", "list_connections", "user", "--no-table-headers"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return {line.strip() for line in out.splitlines() if line.strip()}


def test_build_with_per_role_accounts(lab: Lab) -> None:
    node1 = lab.add_host("node1")
    result = lab.agentctl(
        "--json", "send", "build", "--host", node1.host, "--name", "acct-1", "--wait",
        "--network", "net1", "--timeout", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (inst,) = json.loads(result.stdout.splitlines()[-1])["instances"]
    assert inst["state"] == "running"
    assert lab.accounts is not None
    prefix = lab.accounts.deployment.prefix
    users = connected_users()
    mine = {f"{prefix}controller", f"{prefix}compute-{node1.host}", f"{prefix}l2-{node1.host}"}
    assert mine <= users, users
    for daemon in ("compute-agent", "l2-agent"):
        log = (node1.log_dir / f"{daemon}.log").read_text()
        assert "broker_access_refused" not in log, log[-3000:]
    assert "broker_access_refused" not in lab.controller.log.read_text()  # type: ignore[union-attr]
