"""common.rpc without a broker: queue bounds, the kombu notification listener's dispatch,
and the deployment-wide RPC target."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from structlog.testing import capture_logs

from common.config import MessagingSettings
from common.messages import VifEvent, envelope
from common.rpc import (
    CONTROLLER_TOPIC,
    IDLE_POLL_MAX_S,
    NOTIFY_QUEUE_MAX_LENGTH,
    InvalidPayload,
    Messaging,
    NotificationListener,
    _bound_idle_poll,
    bounded_queue_args,
    notification_queue,
)

CLASSIC = MessagingSettings(control_exchange="dep1")
QUORUM = MessagingSettings(control_exchange="dep1", queue_type="quorum")


def test_notification_queues_are_bounded_and_declared_alike_everywhere() -> None:
    assert bounded_queue_args(CLASSIC) == {
        "x-max-length": NOTIFY_QUEUE_MAX_LENGTH,
        "x-message-ttl": 3_600_000,
    }
    assert bounded_queue_args(QUORUM)["x-queue-type"] == "quorum"
    assert bounded_queue_args(CLASSIC, 5, 2.5) == {"x-max-length": 5, "x-message-ttl": 2500}
    q = notification_queue(CLASSIC, "vif_events.node1.info")
    assert (q.name, q.routing_key, q.durable, q.auto_delete) == (
        "vif_events.node1.info",
        "vif_events.node1.info",
        True,
        False,
    )
    assert q.exchange.name == "dep1" and q.exchange.type == "topic" and q.exchange.durable
    assert q.queue_arguments == bounded_queue_args(CLASSIC)


class Endpoint:
    def __init__(self, fail: bool = False, result: Any = None) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.fail = fail
        self.result = result

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> Any:
        self.seen.append((ctxt, publisher_id, event_type, payload, md))
        if self.fail:
            raise RuntimeError("boom")
        return self.result


class InfoAndError(Endpoint):
    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> None:
        self.seen.append(("error", event_type))


def test_listener_consumes_the_priorities_its_endpoints_have() -> None:
    only_info = NotificationListener(CLASSIC, ["a", "b"], [Endpoint()])
    assert only_info.queues == ["a.info", "b.info"]
    both = NotificationListener(CLASSIC, ["a"], [Endpoint(), InfoAndError()])
    assert both.queues == ["a.info", "a.error"]
    pooled = NotificationListener(CLASSIC, ["a"], [InfoAndError()], pool="watchers")
    assert pooled.queues == ["watchers"]
    with pytest.raises(ValueError, match="no endpoint"):
        NotificationListener(CLASSIC, ["a"], [object()])


class FakeMessage:
    def __init__(self, routing_key: str) -> None:
        self.delivery_info = {"routing_key": routing_key}
        self.acked = self.requeued = False

    def ack(self) -> None:
        self.acked = True

    def requeue(self) -> None:
        self.requeued = True


def body(payload: Any, priority: str = "INFO") -> str:
    msg = {
        "message_id": "m1",
        "publisher_id": "l2-agent.node1",
        "event_type": "port.vif_plugged",
        "priority": priority,
        "payload": payload,
        "timestamp": "2026-11-29 22:00:00.000001",
        "_context_request_id": "req-1",
    }
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(msg)})


def vif() -> VifEvent:
    return VifEvent(host="node1", port_id=uuid.uuid4())


def test_listener_hands_over_what_oslo_would_and_acks_after() -> None:
    ep = Endpoint()
    listener = NotificationListener(CLASSIC, ["vif_events.node1"], [ep])
    event = vif()
    message = FakeMessage("vif_events.node1.info")
    listener._on_message(body(envelope(event)), message)
    assert message.acked and not message.requeued
    ctxt, publisher, event_type, payload, md = ep.seen[0]
    assert ctxt == {"request_id": "req-1"}
    assert (publisher, event_type, payload) == ("l2-agent.node1", "port.vif_plugged", event)
    assert md == {"message_id": "m1", "timestamp": "2026-11-29 22:00:00.000001"}
    # a payload that does not validate reaches the endpoint as InvalidPayload
    bad = envelope(event)
    bad["data"]["port_id"] = "nope"
    listener._on_message(body(bad), FakeMessage("vif_events.node1.info"))
    assert isinstance(ep.seen[1][3], InvalidPayload)
    # not a notification at all: acked, endpoint not called
    junk = FakeMessage("vif_events.node1.info")
    listener._on_message("not json", junk)
    assert junk.acked and len(ep.seen) == 2
    # a priority no endpoint has: acked, nobody called
    other = FakeMessage("vif_events.node1.error")
    listener._on_message(body(envelope(event), priority="ERROR"), other)
    assert other.acked and len(ep.seen) == 2


def test_a_failing_endpoint_is_acked_unless_requeue_is_allowed() -> None:
    failing = NotificationListener(CLASSIC, ["t"], [Endpoint(fail=True)])
    message = FakeMessage("t.info")
    failing._on_message(body(envelope(vif())), message)
    assert message.acked and not message.requeued
    requeuing = NotificationListener(
        CLASSIC, ["t"], [Endpoint(result="requeue")], allow_requeue=True, retry_pause=0.01
    )
    message = FakeMessage("t.info")
    requeuing._on_message(body(envelope(vif())), message)
    assert message.requeued and not message.acked


def test_host_none_is_the_deployment_wide_target() -> None:
    m = Messaging(CLASSIC)
    try:
        per_host = m._target("compute", "node1")
        assert (per_host.topic, per_host.server) == ("compute", "node1")
        wide = m._target(CONTROLLER_TOPIC, None)
        # replicas share `controller.<exchange>`; another deployment has its own queue
        assert (wide.topic, wide.server) == ("controller", "dep1")
        client = m.controller_client(7)
        assert (client.topic, client.host, client.timeout, client.kind) == (
            "controller",
            None,
            7,
            "agents-controller",
        )
    finally:
        m.close()


def test_a_messaging_bounds_oslos_idle_poll_so_stops_wait_about_a_second() -> None:
    from oslo_messaging._drivers import amqpdriver

    m = Messaging(CLASSIC)
    try:
        # oslo's own value is 5 s: an idle RPC server or reply waiter took up to that
        # long to notice a stop
        assert amqpdriver.ACK_REQUEUE_EVERY_SECONDS_MAX == IDLE_POLL_MAX_S == 1.0
    finally:
        m.close()


def test_an_oslo_without_the_idle_poll_constant_is_used_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from oslo_messaging._drivers import amqpdriver

    monkeypatch.delattr(amqpdriver, "ACK_REQUEUE_EVERY_SECONDS_MAX")
    with capture_logs() as logs:
        _bound_idle_poll()
    assert not hasattr(amqpdriver, "ACK_REQUEUE_EVERY_SECONDS_MAX")
    assert [entry["event"] for entry in logs] == ["oslo_idle_poll_not_bounded"]
