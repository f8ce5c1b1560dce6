"""Malformed wire messages at volume (bench/fuzz_wire.py, a bounded run) as a CI test.

1,200 malformed messages of every kind onto both agents' RPC queues, the vif events and
the controller's events queue of a lab; afterwards every daemon still answers, a build
succeeds, nobody logged a traceback, and each daemon named what it refused.
"""

from __future__ import annotations

import json

import pytest

from tests.functional.conftest import run_bench


@pytest.mark.timeout(600)
def test_daemons_survive_malformed_messages(root: None) -> None:
    result = run_bench("fuzz_wire.py", "--total", "1200", "--json", timeout=580)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["total"] == 1200
    assert report["problems"] == []
    assert set(report["by_target"]) == {"compute", "l2", "vif", "events"}
    assert report["largest"] > 100_000  # some bodies near the broker's frame_max
    assert report["build_s"] is not None
    logged = report["logged"]
    for daemon in ("compute-agent", "l2-agent"):
        assert logged[daemon].get("rpc_message_refused", 0) > 0, logged
        assert logged[daemon].get("rpc_message_unreadable", 0) > 0, logged
    assert logged["controller"].get("event_host_mismatch", 0) > 0, logged
    assert logged["controller"].get("event_unreadable", 0) > 0, logged
    assert all(n == 0 for n in report["tracebacks"].values()), report["tracebacks"]
