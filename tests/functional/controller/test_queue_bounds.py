"""Every queue the project declares carries its own bounds, measured on the real broker.

A controller runs in this process; an l2-agent's notifiers (vif events, agent events),
a compute-agent's batch notifier and its vif-event listener run beside it, all on this
test's exchange, host and events topic. Then `rabbitmqctl list_queues` shows what each
queue was declared with: every notification queue and the controller's events queue
carry `x-max-length` and `x-message-ttl`, whether or not anyone consumes it. The one
queue oslo declares for the controller's RPC server carries none (oslo passes no
arguments and RabbitMQ refuses a redeclare with others); every message on it is a call
that expires after its timeout (tests/functional/controller/test_resync.py).

An older release left its queues without arguments: those are used as they are,
with a warning naming them, and nothing published to them is lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kombu
import pytest

from agents.controller.db.store import Store
from agents.controller.service import Controller
from agents.lab.broker import BrokerScope
from common.messages import AgentHeartbeat, InstanceEvent, PingReply, VifEvent
from common.rpc import (
    COMPUTE_TOPIC,
    NOTIFY_QUEUE_MAX_LENGTH,
    NOTIFY_QUEUE_TTL_S,
    RPC_QUEUE_MAX_LENGTH,
    RPC_QUEUE_TTL_S,
    Messaging,
    NotificationListener,
    agent_events_topic,
    vif_events_topic,
)
from tests.functional.controller.running import running_controller

pytestmark = pytest.mark.functional

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

BOUNDED = {"x-max-length": NOTIFY_QUEUE_MAX_LENGTH, "x-message-ttl": NOTIFY_QUEUE_TTL_S * 1000}


def queue_arguments() -> dict[str, dict[str, Any]]:
    """Every queue of the broker's default vhost with the arguments it was declared with."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is not installed (tools/setup.sh installs rabbitmq-server)")
    out = subprocess.run(
        [tool, "list_queues", "name", "arguments", "--formatter", "json", "-q"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return {q["name"]: {a[0]: a[2] for a in q["arguments"]} for q in json.loads(out)}


class VifEndpoint:
    """What the compute-agent's listener hands its manager."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> None:
        with self.lock:
            self.seen.append(("info", event_type, payload, ctxt))

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> None:
        with self.lock:
            self.seen.append(("error", event_type, payload, ctxt))


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def vif(host: str, event: str = "plugged") -> VifEvent:
    return VifEvent(request_id="req-b", host=host, port_id=uuid.uuid4(), reason=event)


@pytest.fixture
def topic(broker_scope: BrokerScope) -> str:
    name = f"ev-{broker_scope.suffix}"
    for priority in ("info", "error"):
        broker_scope.queue(f"{name}.{priority}")
    return name


@pytest.fixture
def controller(broker_scope: BrokerScope, tmp_path: Path, topic: str) -> Iterator[Controller]:
    with running_controller(broker_scope, tmp_path, events_topic=topic) as ctl:
        yield ctl


def test_every_queue_a_deployment_declares_carries_bounds(
    controller: Controller, broker_scope: BrokerScope, topic: str
) -> None:
    host = broker_scope.host("node1")
    assert controller.messaging is not None
    settings = controller.messaging.settings
    l2 = Messaging(settings)
    compute = Messaging(settings)
    endpoint = VifEndpoint()
    try:
        # the l2-agent publishes before the compute-agent listens: the events wait
        vif_events = l2.notifier(f"l2-agent.{host}", vif_events_topic(host))
        # as the agents publish their own events: under their host's key, no queue
        own = agent_events_topic(settings, host)
        agent_events = l2.notifier(f"l2-agent.{host}", own, declare=False)
        vif_events.info("port.vif_plugged", vif(host), request_id="req-b")
        vif_events.error("port.plug_failed", vif(host, "no bridge"))
        agent_events.info(
            "agent.heartbeat",
            AgentHeartbeat(
                host=host, kind="l2", version="t", started_at=datetime.now(UTC), uptime_s=1
            ),
        )
        listener = compute.notification_listener([vif_events_topic(host)], [endpoint])
        listener.start()
        batch = compute.batch_notifier(f"compute.{host}", own, declare=False)
        iid = uuid.uuid4()
        batch.publish(
            [
                (
                    "info",
                    "instance.create.start",
                    InstanceEvent(host=host, instance_uuid=iid),
                    None,
                ),
                (
                    "error",
                    "instance.create.error",
                    InstanceEvent(host=host, instance_uuid=iid),
                    None,
                ),
            ]
        )
        batch.close()
        wait_for(lambda: len(endpoint.seen) == 2)
        listener.stop()
        listener.wait()
        # the controller took the agent events from its own queue
        assert controller.db is not None
        store = Store(controller.db, agent_down_time=60)
        wait_for(lambda: any(h["host"] == host for h in store.hosts()))
        wait_for(lambda: store.events_after(0, host=host) != [])
    finally:
        l2.close()
        compute.close()
    assert sorted((kind, ev) for kind, ev, _, _ in endpoint.seen) == [
        ("error", "port.plug_failed"),
        ("info", "port.vif_plugged"),
    ]
    assert next(c for k, _, _, c in endpoint.seen if k == "info") == {"request_id": "req-b"}
    assert all(isinstance(p, VifEvent) for _, _, p, _ in endpoint.seen)

    queues = queue_arguments()
    ours = {
        name: args
        for name, args in queues.items()
        if broker_scope.suffix in name or broker_scope.exchange in name
    }
    # the agents' events declare nothing: the controller's queue is their only one
    notification = {f"vif_events.{host}.info", f"vif_events.{host}.error"}
    events_queue = controller.settings.events_queue
    rpc = f"controller.{broker_scope.exchange}"
    assert set(ours) == notification | {events_queue, rpc}, ours
    for name in notification:
        assert ours[name] == BOUNDED, name
    assert ours[events_queue] == {"x-max-length": 1_000_000, "x-message-ttl": 7 * 86400 * 1000}
    # a server's own RPC queue: oslo's, with our bounds (calls also expire by themselves)
    assert ours[rpc] == {
        "x-max-length": RPC_QUEUE_MAX_LENGTH,
        "x-message-ttl": RPC_QUEUE_TTL_S * 1000,
    }
    # the other queues oslo made for the controller's RPC server expire when unused
    for name, args in queues.items():
        if name.startswith(("controller_fanout_", "reply_")):
            assert "x-expires" in args, name


def test_a_queue_an_older_release_left_unbounded_is_used_as_it_is(
    broker_scope: BrokerScope, controller: Controller, capfd: pytest.CaptureFixture[str]
) -> None:
    host = broker_scope.host("old")
    name = f"{vif_events_topic(host)}.info"
    assert controller.messaging is not None
    settings = controller.messaging.settings
    with kombu.Connection(AMQP_URL) as conn:  # as oslo declared it: no arguments
        exchange = kombu.Exchange(settings.control_exchange, type="topic", durable=True)
        kombu.Queue(name, exchange=exchange, routing_key=name, durable=True).bind(
            conn.channel()
        ).declare()
    m = Messaging(settings)
    endpoint = VifEndpoint()
    try:
        notifier = m.notifier(f"l2-agent.{host}", vif_events_topic(host))
        notifier.info("port.vif_plugged", vif(host))  # before the listener: it waits
        listener = NotificationListener(settings, [vif_events_topic(host)], [endpoint])
        listener.start()
        notifier.info("port.vif_plugged", vif(host))
        wait_for(lambda: len(endpoint.seen) == 2)
        listener.stop()
        listener.wait()
        assert notifier.unbounded == {name} and listener.unbounded == {name}
    finally:
        m.close()
    assert queue_arguments()[name] == {}
    assert queue_arguments()[f"{vif_events_topic(host)}.error"] == BOUNDED
    out, err = capfd.readouterr()
    assert "queue_not_bounded" in out + err and name in out + err


def test_an_rpc_queue_an_older_release_left_unbounded_is_used_as_it_is(
    broker_scope: BrokerScope, controller: Controller, capfd: pytest.CaptureFixture[str]
) -> None:
    """A host's own RPC queue declared without bounds (an earlier release): the agent
    serves from it as it is and says so; a new host's queue gets the bounds."""
    assert controller.messaging is not None
    settings = controller.messaging.settings
    old, new = broker_scope.host("oldrpc"), broker_scope.host("newrpc")
    with kombu.Connection(AMQP_URL) as conn:  # as oslo declared it: no arguments
        exchange = kombu.Exchange(settings.control_exchange, type="topic", durable=True)
        name = f"{COMPUTE_TOPIC}.{old}"
        kombu.Queue(name, exchange=exchange, routing_key=name, durable=True).bind(
            conn.channel()
        ).declare()

    class Pong:
        def __init__(self, host: str) -> None:
            self.host = host

        def ping(self, ctxt: object, **_: object) -> PingReply:
            return PingReply(host=self.host, kind="compute", version="t", uptime_s=1.0)

    m = Messaging(settings)
    servers = [m.rpc_server(COMPUTE_TOPIC, h, [Pong(h)]) for h in (old, new)]
    try:
        for server in servers:
            server.start()
        for h in (old, new):
            reply = m.rpc_client(COMPUTE_TOPIC, h, timeout=15).call("ping")
            assert isinstance(reply, PingReply) and reply.host == h
    finally:
        for server in servers:
            server.stop()
            server.wait()
        m.close()
    queues = queue_arguments()
    assert queues[f"{COMPUTE_TOPIC}.{old}"] == {}
    assert queues[f"{COMPUTE_TOPIC}.{new}"] == {
        "x-max-length": RPC_QUEUE_MAX_LENGTH,
        "x-message-ttl": RPC_QUEUE_TTL_S * 1000,
    }
    out, err = capfd.readouterr()
    assert "rpc_queue_unbounded" in out + err and f"{COMPUTE_TOPIC}.{old}" in out + err
