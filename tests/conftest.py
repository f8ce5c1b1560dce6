"""Fixtures every tier shares: a private broker scope per test, root/broker checks.

`BrokerScope` is the lab's (agents/lab/broker.py): one harness for tests, benchmarks
and the quickstart.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from agents.lab.broker import BrokerScope
from agents.lab.procs import broker_available, unique

__all__ = ["BrokerScope", "broker_scope", "root"]

# Run as a background job of a non-interactive shell (`.ci/run &`), the suite inherits
# SIGINT ignored, and so would every process it starts: an ignored signal stays ignored
# across exec, and Python then installs no KeyboardInterrupt handler. The tests that
# press Ctrl-C on an agentctl (SIGINT) need what a terminal gives it: the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def broker_scope() -> Iterator[BrokerScope]:
    if not broker_available():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (rabbitmq-server -detached)")
    scope = BrokerScope(exchange=unique("test-"), suffix=unique(""))
    yield scope
    scope.cleanup()


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
