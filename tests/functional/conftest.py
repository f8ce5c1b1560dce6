"""The functional tier's deployment: a lab (agents/lab) with agents-controller on SQLite.

`lab` gives a private control exchange and host names (tests/conftest.py
`broker_scope`), a running controller, and `lab.add_host()` for simulated hosts: a
network namespace each, the real l2-agent and compute-agent as processes (libvirt test
driver, a 16 MiB qcow2 image `tiny`), started and heard by the controller before it
returns. `lab.agentctl()` runs the installed console script against the controller.
Everything is removed afterwards, also when the test failed (agents are SIGKILLed:
their graceful stop is their own tests' subject); the logs are printed for a failed test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agents.lab.broker import BrokerScope
from agents.lab.lab import Lab
from agents.lab.procs import REPO, broker_available


@pytest.fixture
def lab(root: None, broker_scope: BrokerScope) -> Iterator[Lab]:
    started = time.monotonic()
    lab = Lab.create(prefix="fl-", scope=broker_scope, stop_signal=signal.SIGKILL)
    try:
        lab.start_controller()
        yield lab
    finally:
        print(f"lab lived {time.monotonic() - started:.1f}s")
        print(lab.logs())  # pytest shows it only for a failed test
        lab.close()


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.startswith(("{", "["))]


def run_bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`bench/<script>` as a process, as an operator runs it (from the checkout, on the
    real broker), its output shown in the test's report; fails at once without a broker."""
    if not broker_available():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    print(proc.stdout[-20000:])
    print(proc.stderr[-20000:], file=sys.stderr)
    return proc
