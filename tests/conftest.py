"""Fixtures every tier shares: a private broker scope per test, root/broker checks.

`BrokerScope` is the lab's (agents/lab/broker.py): one harness for tests, benchmarks
and the quickstart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agents.lab.broker import BrokerScope
from agents.lab.procs import broker_available, unique

__all__ = ["BrokerScope", "broker_scope", "root"]


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
