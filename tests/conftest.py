"""Fixtures every tier shares: a private broker scope per test, root/broker checks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.hosts import broker_available, unique


@dataclass
class BrokerScope:
    """A control exchange and host-name suffix of one test, removed afterwards.

    Queue names are global on a RabbitMQ vhost (an oslo server queue is `<topic>.<host>`
    whatever the exchange), so tests also need host names of their own, not only an
    exchange: `host("node1")` gives a unique one.
    """

    exchange: str
    suffix: str
    hosts: list[str] = field(default_factory=list)

    def host(self, name: str) -> str:
        full = f"{name}-{self.suffix}"
        self.hosts.append(full)
        return full


def _cleanup(scope: BrokerScope) -> None:
    import kombu

    with contextlib.suppress(Exception), kombu.Connection(
        "amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3
    ) as conn:
        channel = conn.channel()
        for host in scope.hosts:
            for queue in (
                f"compute.{host}",
                f"l2-agent.{host}",
                f"vif_events.{host}.info",
                f"vif_events.{host}.error",
            ):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
                    channel = conn.channel()
        with contextlib.suppress(Exception):
            channel.exchange_delete(scope.exchange)


@pytest.fixture
def broker_scope() -> Iterator[BrokerScope]:
    if not broker_available():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (rabbitmq-server -detached)")
    scope = BrokerScope(exchange=unique("test-"), suffix=unique(""))
    yield scope
    _cleanup(scope)


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
