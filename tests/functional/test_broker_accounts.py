"""Least privilege on the real broker: per-role, per-host accounts (agents/controller/
broker_accounts.py) and what RabbitMQ refuses them.

Accounts are created with rabbitmqctl under a unique prefix for this module and deleted
afterwards, also after a failure; queues and the exchange go with the broker scope.
The daemons' own code paths (common.rpc: oslo RPC servers and clients, the bounded
notifiers, the controller's event consumer) run with those accounts.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from agents.controller.broker_accounts import (
    BrokerAdmin,
    Deployment,
    remove_accounts,
    set_accounts,
)
from agents.controller.bus import Bus
from agents.lab.broker import BrokerScope
from agents.lab.procs import broker_available, unique
from common.config import MessagingSettings
from common.errors import BrokerAccessRefused
from common.messages import AgentHeartbeat, VifEvent
from common.rpc import (
    COMPUTE_TOPIC,
    CONTROLLER_TOPIC,
    L2_TOPIC,
    Event,
    EventConsumer,
    Messaging,
    agent_events_topic,
    connection,
    vif_events_topic,
)

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl (accounts on the broker)"
)


class Deploy:
    def __init__(self, scope: BrokerScope, urls: dict[tuple[str, str | None], str]) -> None:
        self.scope = scope
        self.urls = urls
        self.node1 = scope.host("node1")
        self.node2 = scope.host("node2")
        self.events_topic = f"ev-{scope.suffix}"

    def settings(self, role: str, host: str | None = None) -> MessagingSettings:
        return MessagingSettings(
            transport_url=self.urls[(role, host)],
            control_exchange=self.scope.exchange,
            events_topic=self.events_topic,
            rpc_timeout=5,
            send_retry=1,
        )


@pytest.fixture(scope="module")
def deploy() -> Iterator[Deploy]:
    if not broker_available():
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672")
    scope = BrokerScope(exchange=unique("acc-"), suffix=unique(""))
    node1, node2 = scope.host("node1"), scope.host("node2")
    dep = Deployment(
        exchange=scope.exchange,
        events_topic=f"ev-{scope.suffix}",
        broker="127.0.0.1:5672",
        vhost="/",
        prefix=unique("t") + "-",
    )
    roles: list[tuple[str, str | None]] = [
        ("controller", None),
        ("compute", node1),
        ("l2", node1),
        ("compute", node2),
        ("l2", node2),
    ]
    admin = BrokerAdmin("/")
    try:
        urls = set_accounts(admin, dep, roles, out=None)
        yield Deploy(scope, urls)
    finally:
        try:
            remove_accounts(admin, dep, roles)
        finally:
            scope.queue(f"events-{scope.suffix}")
            scope.cleanup()
        assert not {u for u in admin.users() if u.startswith(dep.prefix)}


class Pinger:
    def ping(self, ctxt: dict[str, Any]) -> None:
        return None


class VifSink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.got = threading.Event()

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any) -> None:
        self.events.append(payload)
        self.got.set()


def vif(host: str) -> VifEvent:
    return VifEvent(host=host, port_id=uuid.uuid4(), reason="plugged")


def refused_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "broker_access_refused"]


def test_each_daemon_works_with_its_own_account(deploy: Deploy) -> None:
    """The controller calls node1's compute-agent; node1's l2-agent's vif event reaches
    node1's compute-agent; node1's agents' events reach the controller's queue; an
    agent's call to the controller is answered: every path of docs/design.md works
    within the grants."""
    ctl = Messaging(deploy.settings("controller"))
    compute = Messaging(deploy.settings("compute", deploy.node1))
    l2 = Messaging(deploy.settings("l2", deploy.node1))
    got: list[Event] = []
    heard = threading.Event()

    def on_event(event: Event) -> None:
        got.append(event)
        heard.set()

    consumer = EventConsumer(
        deploy.settings("controller"),
        f"events-{deploy.scope.suffix}",
        [f"{deploy.events_topic}.#", "vif_events.#"],
        on_event,
        lambda err, what: None,
    )
    sink = VifSink()
    servers = [
        compute.rpc_server(COMPUTE_TOPIC, deploy.node1, [Pinger()]),
        l2.rpc_server(L2_TOPIC, deploy.node1, [Pinger()]),
        ctl.rpc_server(CONTROLLER_TOPIC, None, [Pinger()]),
        compute.notification_listener([vif_events_topic(deploy.node1)], [sink]),
    ]
    try:
        consumer.start(ready_timeout=10)
        for server in servers:
            server.start()
        time.sleep(0.5)
        assert ctl.rpc_client(COMPUTE_TOPIC, deploy.node1).call("ping") is None
        assert ctl.rpc_client(L2_TOPIC, deploy.node1).call("ping") is None
        assert compute.controller_client(5).call("ping") is None  # the agents' resync path
        l2.notifier("l2-agent", vif_events_topic(deploy.node1)).info(
            "port.vif_plugged", vif(deploy.node1)
        )
        assert sink.got.wait(5), "node1's compute-agent did not get node1's vif event"
        events = l2.notifier(
            "l2-agent",
            agent_events_topic(deploy.settings("l2", deploy.node1), deploy.node1),
            declare=False,
        )
        beat = AgentHeartbeat(
            host=deploy.node1, kind="l2", version="t", started_at=vif("x").at, uptime_s=1
        )
        events.info("agent.heartbeat", beat)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            e.event_type == "agent.heartbeat" for e in got
        ):
            heard.wait(0.2)
        keys = {e.event_type: e.routing_key for e in got}
        assert keys.get("agent.heartbeat") == f"{deploy.events_topic}.{deploy.node1}.info"
    finally:
        for server in servers:
            server.stop()
            server.wait()
        consumer.stop()
        for m in (ctl, compute, l2):
            m.close()


def test_l2_agent_of_node2_cannot_publish_a_vif_event_for_node1(deploy: Deploy) -> None:
    l2_node2 = Messaging(deploy.settings("l2", deploy.node2))
    compute1 = Messaging(deploy.settings("compute", deploy.node1))
    sink = VifSink()
    listener = compute1.notification_listener([vif_events_topic(deploy.node1)], [sink])
    listener.start()
    try:
        with capture_logs() as logs, pytest.raises(BrokerAccessRefused) as declared:
            # as the agent's notifier does: declare node1's vif queue, then publish
            l2_node2.notifier("l2-agent", vif_events_topic(deploy.node1)).info(
                "port.vif_plugged", vif(deploy.node1)
            )
        assert declared.value.fields["resource"] == f"queue 'vif_events.{deploy.node1}.info'"
        with capture_logs() as logs, pytest.raises(BrokerAccessRefused) as published:
            l2_node2.notifier("l2-agent", vif_events_topic(deploy.node1), declare=False).info(
                "port.vif_plugged", vif(deploy.node1)
            )
        fields = published.value.fields
        assert fields["operation"] == "write"
        assert fields["user"].endswith(f"l2-{deploy.node2}")
        assert f"topic 'vif_events.{deploy.node1}.info'" in fields["resource"]
        [line] = refused_lines(logs)
        assert line["log_level"] == "error"
        assert line["user"] == fields["user"]
        assert line["operation"] == "write"
        assert deploy.node1 in line["resource"]
        assert not sink.got.wait(1.0), f"node1 got a forged vif event: {sink.events}"
        # its own host's vif events go through, on the same listener of node1: none
        l2_node2.notifier("l2-agent", vif_events_topic(deploy.node2)).info(
            "port.vif_plugged", vif(deploy.node2)
        )
        assert not sink.got.wait(0.5)
    finally:
        listener.stop()
        listener.wait()
        l2_node2.close()
        compute1.close()


@pytest.mark.parametrize(
    "queue", ["l2-agent.{node1}", "compute.{node1}", "vif_events.{node1}.info"]
)
def test_l2_agent_of_node2_cannot_consume_node1s_queues(deploy: Deploy, queue: str) -> None:
    # node1's agents declared their queues (test above, or here)
    owner = Messaging(deploy.settings("compute", deploy.node1))
    l2_owner = Messaging(deploy.settings("l2", deploy.node1))
    servers = [
        owner.rpc_server(COMPUTE_TOPIC, deploy.node1, [Pinger()]),
        l2_owner.rpc_server(L2_TOPIC, deploy.node1, [Pinger()]),
    ]
    name = queue.format(node1=deploy.node1)
    try:
        for server in servers:
            server.start()
        l2_owner.notifier("l2-agent", vif_events_topic(deploy.node1))  # declares lazily
        with connection(deploy.settings("l2", deploy.node2)) as conn:
            channel = conn.channel()
            refused = r"Basic.consume: \(403\) ACCESS_REFUSED"
            with pytest.raises(Exception, match=refused):
                channel.basic_consume(queue=name, callback=lambda m: None)
            channel = conn.channel()
            with pytest.raises(Exception, match=r"ACCESS_REFUSED"):
                channel.basic_get(queue=name)
            # nor a queue of its own bound to node1's keys
            channel = conn.channel()
            own = f"reply_{uuid.uuid4().hex}"  # a name its grants let it declare
            channel.queue_declare(queue=own, exclusive=True, auto_delete=True)
            bind_refused = r"Queue.bind: \(403\) ACCESS_REFUSED - access to topic"
            with pytest.raises(Exception, match=bind_refused):
                channel.queue_bind(own, deploy.scope.exchange, name)
        # and the agent's own path: serving node1 is refused at start, with a named line
        l2_node2 = Messaging(deploy.settings("l2", deploy.node2))
        with capture_logs() as logs, pytest.raises(BrokerAccessRefused):
            l2_node2.rpc_server(L2_TOPIC, deploy.node1, [Pinger()]).start()
        assert refused_lines(logs)[0]["user"].endswith(f"l2-{deploy.node2}")
        l2_node2.close()
    finally:
        for server in servers:
            server.stop()
            server.wait()
        owner.close()
        l2_owner.close()


def test_a_refused_listener_says_so_and_does_not_spin(deploy: Deploy) -> None:
    """compute-node2 listening to node1's vif events: one named error line, then a
    30 s pause before the next try (kombu alone would retry every second)."""
    compute2 = Messaging(deploy.settings("compute", deploy.node2))
    listener = compute2.notification_listener([vif_events_topic(deploy.node1)], [VifSink()])
    started = threading.Thread(target=listener.start, daemon=True)
    try:
        with capture_logs() as logs:
            started.start()
            deadline = time.monotonic() + 10
            while not refused_lines(logs) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)
        lines = refused_lines(logs)
        assert len(lines) == 1, lines
        assert lines[0]["operation"] == "configure"
        assert lines[0]["resource"] == f"queue 'vif_events.{deploy.node1}.info'"
        assert lines[0]["user"].endswith(f"compute-{deploy.node2}")
        assert lines[0]["retry_in_s"] == 30
        # stop() ends the start that is still waiting for the grant: no thread is left
        # behind retrying (and logging) for the rest of the process's life
        listener.stop()
        started.join(5)
        assert not started.is_alive()
    finally:
        listener.stop()
        listener.wait()
        compute2.close()


def test_l2_agent_of_node2_cannot_cast_to_any_compute_agent(deploy: Deploy) -> None:
    owner = Messaging(deploy.settings("compute", deploy.node1))
    server = owner.rpc_server(COMPUTE_TOPIC, deploy.node1, [Pinger()])
    l2_node2 = Messaging(deploy.settings("l2", deploy.node2))
    try:
        server.start()
        for host in (deploy.node1, deploy.node2):
            with capture_logs() as logs, pytest.raises(BrokerAccessRefused) as refused:
                l2_node2.rpc_client(COMPUTE_TOPIC, host).cast("ping", vif(host))
            assert refused.value.fields["operation"] == "write"
            assert f"topic 'compute.{host}'" in refused.value.fields["resource"]
            assert refused_lines(logs), logs
        # nor around the topic exchange: the default exchange reaches any queue by name
        with connection(deploy.settings("l2", deploy.node2)) as conn:
            producer = conn.Producer()
            with pytest.raises(Exception, match=r"ACCESS_REFUSED.*amq\.default"):
                producer.publish({"x": 1}, routing_key=f"compute.{deploy.node1}")
                conn.drain_events(timeout=2)
        # nor by the compute-agent of node2 to its neighbour
        compute2 = Messaging(deploy.settings("compute", deploy.node2))
        with pytest.raises(BrokerAccessRefused):
            compute2.rpc_client(COMPUTE_TOPIC, deploy.node1).cast("ping", vif(deploy.node1))
        compute2.close()
    finally:
        server.stop()
        server.wait()
        l2_node2.close()
        owner.close()


def test_an_agent_speaks_only_for_its_own_host_in_events(deploy: Deploy) -> None:
    """The broker lets node2 publish only under `<events_topic>.<node2>.*`: a payload
    naming node1 sent there is refused by the controller (logged, counted)."""
    l2_node2 = Messaging(deploy.settings("l2", deploy.node2))
    ctl = Messaging(deploy.settings("controller"))
    got: list[Event] = []
    consumer = EventConsumer(
        deploy.settings("controller"),
        deploy.scope.queue(f"events2-{deploy.scope.suffix}"),
        [f"{deploy.events_topic}.#"],
        got.append,
        lambda err, what: None,
    )
    try:
        consumer.start(ready_timeout=10)
        own = agent_events_topic(deploy.settings("l2", deploy.node2), deploy.node2)
        events = l2_node2.notifier("l2-agent", own, declare=False)
        started = vif("x").at
        forged = AgentHeartbeat(
            host=deploy.node1, kind="l2", version="t", started_at=started, uptime_s=1
        )
        events.info("agent.heartbeat", forged)
        # under node1's key: the broker refuses it
        other = agent_events_topic(deploy.settings("l2", deploy.node2), deploy.node1)
        with pytest.raises(BrokerAccessRefused):
            l2_node2.notifier("l2-agent", other, declare=False).info("agent.heartbeat", forged)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = got
        assert event.routing_key == f"{deploy.events_topic}.{deploy.node2}.info"
        bus = Bus(ctl, store=None, hub=None, call_timeout=1)  # type: ignore[arg-type]
        with capture_logs() as logs:
            bus.on_event(event)
        assert bus.forged_events == 1
        [line] = [e for e in logs if e["event"] == "event_host_mismatch"]
        assert line["payload_host"] == deploy.node1
        assert line["routing_key"] == event.routing_key
    finally:
        consumer.stop()
        l2_node2.close()
        ctl.close()
