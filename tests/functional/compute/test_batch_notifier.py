"""common.rpc.BatchNotifier on the real broker: the compute-agent's event publisher.

What it must keep from oslo's Notifier: the same wire (an oslo notification listener and
EventWatcher read it unchanged, request id included), the queue `<topic>.<priority>`
declared so nothing is lost before anyone listens, order within a batch, and at least
once: a batch whose connection died is published again on a new one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from agents.lab.procs import unique
from common.config import MessagingSettings
from common.messages import InstanceEvent
from common.rpc import EventWatcher, Messaging
from tests.conftest import BrokerScope


@pytest.fixture
def setup(broker_scope: BrokerScope) -> Iterator[tuple[Messaging, str]]:
    topic = unique("bn-")
    messaging = Messaging(
        MessagingSettings(control_exchange=broker_scope.exchange, events_topic=topic)
    )
    yield messaging, topic
    messaging.close()
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
        for name in (f"{topic}.info", f"{topic}.error"):
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)


def event(iid: uuid.UUID, step: str) -> InstanceEvent:
    return InstanceEvent(host="node1", instance_uuid=iid, step=step)


class Collector:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any, Any]] = []
        self.lock = threading.Lock()

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        with self.lock:
            self.seen.append(("info", event_type, payload, ctxt))

    def error(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        with self.lock:
            self.seen.append(("error", event_type, payload, ctxt))


def wait_len(items: list[Any], n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(items) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(items) >= n, items


def test_oslo_listener_reads_a_batch_in_order_and_queued_before_it_listened(
    setup: tuple[Messaging, str],
) -> None:
    messaging, topic = setup
    notifier = messaging.batch_notifier("compute.node1", topic)
    iid = uuid.uuid4()
    steps = ["start", "p1", "p2", "p3", "end"]
    # published before any listener exists: the declared queue keeps them
    notifier.publish([("info", f"instance.create.{s}", event(iid, s), "req-1") for s in steps])
    notifier.publish([("error", "instance.create.error", event(iid, "boom"), None)])
    collector = Collector()
    listener = messaging.notification_listener([topic], [collector])
    listener.start()
    try:
        wait_len(collector.seen, 6)
    finally:
        listener.stop()
        listener.wait()
        notifier.close()
    infos = [s for s in collector.seen if s[0] == "info"]
    # oslo dispatches on a thread pool, so order is checked with the watcher below
    assert sorted(p.step for _, _, p, _ in infos) == sorted(steps)
    assert all(isinstance(p, InstanceEvent) and p.instance_uuid == iid for _, _, p, _ in infos)
    start = next(i for i in infos if i[2].step == "start")
    assert start[1] == "instance.create.start"
    assert start[3].get("request_id") == "req-1"
    errors = [s for s in collector.seen if s[0] == "error"]
    assert [(e[1], e[2].step) for e in errors] == [("instance.create.error", "boom")]


def test_watcher_sees_events_and_a_batch_survives_a_dead_connection(
    setup: tuple[Messaging, str],
) -> None:
    messaging, topic = setup
    watcher = EventWatcher(messaging.settings, [f"{topic}.info"])
    notifier = messaging.batch_notifier("compute.node1", topic)
    iid = uuid.uuid4()
    try:
        notifier.publish([("info", "instance.create.start", event(iid, "a"), "req-2")])
        # the broker side of the connection goes away under the publisher
        notifier._conn.connection.sock.shutdown(socket.SHUT_RDWR)
        notifier.publish(
            [("info", "instance.create.progress", event(iid, s), None) for s in "bcdef"]
        )
        seen: list[Any] = []
        deadline = time.monotonic() + 10
        while len(seen) < 6 and time.monotonic() < deadline:
            seen += watcher.poll(0.2)
    finally:
        watcher.close()
        notifier.close()
    assert [e.payload.step for e in seen] == list("abcdef")
    assert seen[0].request_id == "req-2"
    assert seen[0].publisher_id == "compute.node1"
    assert seen[0].priority == "info"
