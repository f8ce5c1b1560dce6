"""The fault table's quick version (bench/faults.py --quick) as a CI test.

A handful of rows with small bursts on the libvirt test driver, each its own lab
(controller, one host with both agents): kill -9 of the compute-agent, of the
l2-agent and of the controller mid-burst, kill -9 of one of two controller replicas
on PostgreSQL mid-burst, kill -9 of the RabbitMQ node the agents use (a 3-node
cluster of the row's own, quorum queues), every cast delivered again, and malformed
casts of every shape. Each row prints `ROW scenario=... lost=N duplicated=N ...`; no
row may lose or duplicate anything. The broker-bounce row (rabbitmqctl stop_app) and the real
QEMU rows are not in the quick version: they belong to the full table.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.functional.conftest import run_bench

pytestmark = pytest.mark.functional

QUICK_ROWS = {
    "kill-compute-test",
    "kill-l2",
    "kill-controller",
    "controller-replica-kill",
    "broker-node-kill",
    "duplicate-casts",
    "malformed",
}
ROW = re.compile(
    r"^ROW scenario=(?P<scenario>\S+) sent=(?P<sent>\d+) running=(?P<running>\d+) "
    r"error=(?P<error>\d+) lost=(?P<lost>\d+) duplicated=(?P<duplicated>\d+) "
    r"settle_s=(?P<settle>[0-9.]+)$"
)


def test_quick_fault_table_loses_and_duplicates_nothing(root: None) -> None:
    started = time.monotonic()
    proc = run_bench("faults.py", "--quick", timeout=420)
    took = time.monotonic() - started
    rows = {m["scenario"]: m for m in map(ROW.match, proc.stdout.splitlines()) if m}
    assert set(rows) == QUICK_ROWS, (proc.returncode, proc.stdout, proc.stderr[-4000:])
    bad = {
        name: (int(m["lost"]), int(m["duplicated"]))
        for name, m in rows.items()
        if int(m["lost"]) or int(m["duplicated"])
    }
    assert not bad, f"rows that lost or duplicated (lost, duplicated): {bad}\n{proc.stdout}"
    for name, m in rows.items():
        assert int(m["sent"]) > 0, name
        assert int(m["running"]) + int(m["error"]) == int(m["sent"]), m.group(0)
    print(f"quick fault table: {took:.0f}s")
