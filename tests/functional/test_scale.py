"""bench/scale.py at CI size: 10 simulated hosts, 3 instances each, nothing lost.

Ten hosts come up at once through `Lab.add_hosts` (a namespace each, the real l2-agent
and compute-agent on libvirt's test driver), 30 builds go in from concurrent API
clients, and the bench prints its SCALE line with every figure. No instance may be
lost, every create operation must be done, and the instances must be spread over all
ten hosts (and, on PostgreSQL, over three hosts with 8 clients at once). The 50- and
100-host runs are the closing note's (docs/operations.md).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.functional.conftest import run_bench

pytestmark = pytest.mark.functional

SCALE = re.compile(
    r"^SCALE hosts=(?P<hosts>\d+) instances=(?P<instances>\d+) builds_per_s=(?P<bps>\d+)"
    r" list_ms=(?P<list>\d+) show_ms=(?P<show>\d+) agents_ms=(?P<agents>\d+)"
    r" controller_rss_mib=(?P<crss>\d+) agent_rss_mib=(?P<arss>\d+) lost=(?P<lost>\d+)$"
)
SPREAD = re.compile(r"^SPREAD per_host_min=(?P<min>\d+) per_host_max=(?P<max>\d+) ")


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bench("scale.py", *args, timeout=300)


def test_ten_hosts_build_everything_and_print_the_scale_line(root: None) -> None:
    started = time.monotonic()
    proc = _bench("--hosts", "10", "--instances-per-host", "3", "--runs", "3")
    took = time.monotonic() - started
    lines = proc.stdout.splitlines()
    found = [m for m in map(SCALE.match, lines) if m]
    assert len(found) == 1, (proc.returncode, proc.stdout, proc.stderr[-4000:])
    scale = found[0]
    assert int(scale["hosts"]) == 10
    assert int(scale["instances"]) == 30
    assert int(scale["lost"]) == 0, proc.stdout
    for figure in ("bps", "list", "show", "agents", "crss", "arss"):
        assert int(scale[figure]) > 0, (figure, scale.group(0))
    spread = next(m for m in map(SPREAD.match, lines) if m)
    assert (int(spread["min"]), int(spread["max"])) == (3, 3), spread.group(0)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"scale bench at 10 hosts: {took:.0f}s")


def test_concurrent_creates_on_postgresql_spread_over_the_hosts(root: None) -> None:
    """8 clients at once on PostgreSQL (READ COMMITTED): each create places after
    taking the network's lock, so it sees what the previous one placed. Placing before
    the lock put all 6 of 6 instances on one host."""
    proc = _bench("--postgres", "--hosts", "3", "--instances-per-host", "4", "--runs", "1")
    lines = proc.stdout.splitlines()
    scale = next((m for m in map(SCALE.match, lines) if m), None)
    assert scale is not None and int(scale["lost"]) == 0, proc.stdout + proc.stderr[-4000:]
    spread = next(m for m in map(SPREAD.match, lines) if m)
    assert (int(spread["min"]), int(spread["max"])) == (4, 4), spread.group(0)
