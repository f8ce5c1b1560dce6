"""The unit files: `systemd-analyze verify`, the exposure score, and the contract they keep.

systemd is not PID 1 in the test containers, but `systemd-analyze verify` and
`systemd-analyze security --offline=true` work on unit files without a running
manager: they parse every setting, resolve dependencies against the system's unit
directory and check that ExecStart= names an executable.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.compute.settings import ComputeSettings
from common.service import run
from tests.functional.systemd.units import (
    UNIT_DIR,
    UNITS,
    copy_for_this_checkout,
    one,
    parse,
    words,
)

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"),
]

# Exposure as `systemd-analyze security` scores it (0 = locked down, 10 = unprotected),
# times ten. The l2-agent only needs CAP_NET_ADMIN; the compute-agent runs QEMU.
CONFIG_NAME = {"agents-controller": "controller"}
EXPOSURE_LIMIT = {
    "agents-controller.service": 15,
    "l2-agent.service": 30,
    "compute-agent.service": 75,
}


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_passes(unit: str, tmp_path: Path) -> None:
    path = copy_for_this_checkout(unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # verify only warns about some mistakes (an unknown key, a bad value it ignores)
    complaints = [line for line in result.stderr.splitlines() if unit in line]
    assert complaints == []


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: the same call rejects a unit with a bad setting."""
    path = copy_for_this_checkout("l2-agent.service", tmp_path)
    path.write_text(path.read_text().replace("Type=notify", "Type=notfy"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "Failed to parse service type" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_stays_under_its_limit(unit: str, tmp_path: Path) -> None:
    path = copy_for_this_checkout(unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) * 10 <= EXPOSURE_LIMIT[unit], result.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_unit_keeps_the_daemon_contract(unit: str) -> None:
    agent = unit.removesuffix(".service")
    conf = CONFIG_NAME.get(agent, agent)
    u = parse(UNIT_DIR / unit)
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert one(u, "Service", "Restart") == "on-failure"
    assert int(one(u, "Service", "WatchdogSec")) >= 10
    assert one(u, "Service", "ExecStart") == (
        f"/opt/agents/venv/bin/{agent} --config-file /etc/agents/shared.conf "
        f"--config-file /etc/agents/{conf}.conf --config-dir /etc/agents/{conf}.d"
    )
    assert "rabbitmq-server.service" in words(u, "Unit", "After")
    # the broker may be remote: ordering only, never a hard requirement
    assert "rabbitmq-server.service" not in words(u, "Unit", "Requires")
    assert one(u, "Service", "StandardOutput") == "journal"
    for setting in ("ProtectHome", "PrivateTmp"):
        assert one(u, "Service", setting) == "yes"
    # the agents speak netlink (taps, bridges; libvirt); the controller only TCP and unix
    netlink = {"AF_NETLINK"} if agent != "agents-controller" else set()
    assert set(words(u, "Service", "RestrictAddressFamilies")) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        *netlink,
    }
    assert words(u, "Install", "WantedBy") == ["multi-user.target"]


def test_l2_agent_is_bounded_to_cap_net_admin() -> None:
    u = parse(UNIT_DIR / "l2-agent.service")
    assert words(u, "Service", "CapabilityBoundingSet") == ["CAP_NET_ADMIN"]
    assert one(u, "Service", "NoNewPrivileges") == "yes"
    assert one(u, "Service", "ProtectSystem") == "strict"
    assert "/var/lib/agents" in words(u, "Service", "ReadWritePaths")
    assert words(u, "Service", "DeviceAllow")[0] == "/dev/net/tun"


def test_compute_agent_wants_but_does_not_require_libvirtd() -> None:
    u = parse(UNIT_DIR / "compute-agent.service")
    assert "libvirtd.service" in words(u, "Unit", "After")
    assert "libvirtd.service" in words(u, "Unit", "Wants")
    assert "libvirtd.service" not in words(u, "Unit", "Requires")
    # qemu:///embed guests are the agent's children: a restart must not kill them
    assert one(u, "Service", "KillMode") == "process"
    # TCG is a JIT: W^X enforcement would kill every guest on a host without KVM
    assert "MemoryDenyWriteExecute" not in u["Service"]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_stop_timeout_leaves_room_for_the_agents_grace() -> None:
    """systemd's SIGKILL must come only after the agent's own grace has run out."""
    margin = 10
    compute = parse(UNIT_DIR / "compute-agent.service")
    assert _seconds(one(compute, "Service", "TimeoutStopSec")) >= (
        ComputeSettings().stop_grace + margin
    )
    # the l2-agent runs with common.service.run()'s default grace
    default_grace = inspect.signature(run).parameters["grace"].default
    l2 = parse(UNIT_DIR / "l2-agent.service")
    assert _seconds(one(l2, "Service", "TimeoutStopSec")) >= default_grace + margin
    for u in (compute, l2):
        # a broker reconnect or a fresh qemu:///embed capability probe fits in a start
        assert _seconds(one(u, "Service", "TimeoutStartSec")) >= 60
