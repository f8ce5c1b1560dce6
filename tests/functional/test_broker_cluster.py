"""A RabbitMQ cluster on this machine (agents/lab/cluster.py) and what quorum queues buy.

One 3-node cluster for the module (about 20 s to bring up), on loopback ports of its
own beside the machine's broker: its status; a lab (controller + one host, test
driver) on it with `queue_type = quorum` whose builds go on after kill -9 of the node
the agents are connected to; the delivery limit dead-lettering a message that is
requeued forever, with the `poison_message` line naming queue and message id; the
classic -> quorum switch (tools/switch-queue-type.sh) of a deployment's queues with
messages in them: none lost, order kept, and the daemons declare the same queues after.
Last, `down` leaves nothing behind (processes, files, ports, epmd names).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from structlog.testing import capture_logs

from agents.lab.broker import BrokerCluster, BrokerScope, free_base_port
from agents.lab.lab import Lab
from agents.lab.procs import REPO, unique, wait_for
from common.config import MessagingSettings
from common.messages import InstanceRef
from common.rpc import (
    COMPUTE_TOPIC,
    Messaging,
    NotificationListener,
    Notifier,
    dead_letter_queue_name,
    delete_queues,
    vif_events_topic,
)

pytestmark = pytest.mark.functional

AGENTS = ("compute-agent", "l2-agent")


@pytest.fixture(scope="module")
def cluster() -> Iterator[BrokerCluster]:
    started = time.monotonic()
    with BrokerCluster(unique("tbc-"), nodes=3, base_port=free_base_port(3)) as c:
        print(f"cluster up in {time.monotonic() - started:.1f}s")
        yield c


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{port}")]


def queue_types(cluster: BrokerCluster, prefix: str) -> dict[str, str]:
    out = cluster.rabbitmqctl("list_queues", "name", "type", "--formatter", "json")
    return {q["name"]: q["type"] for q in json.loads(out) if q["name"].startswith(prefix)}


def test_cluster_runs_three_nodes_on_loopback_only(cluster: BrokerCluster) -> None:
    status = cluster.status()
    assert status["running_nodes"] == sorted(n.name for n in cluster.nodes)
    for node in cluster.nodes:
        assert _listening(node.port) == [f"127.0.0.1:{node.port}"]
        assert _listening(node.dist_port) == [f"127.0.0.1:{node.dist_port}"]
    cookie = cluster.dir / "home" / ".erlang.cookie"
    assert cookie.stat().st_mode & 0o077 == 0
    assert cookie.read_text() != Path("/var/lib/rabbitmq/.erlang.cookie").read_text()


def test_builds_go_on_after_the_agents_node_is_killed(root: None, cluster: BrokerCluster) -> None:
    scope = BrokerScope.new("tq-", transport_url=cluster.transport_url, queue_type="quorum")
    with Lab.create(prefix="tq-", scope=scope, stop_signal=signal.SIGKILL) as lab:
        try:
            lab.start_controller()
            node = lab.add_host("node1")
            res = lab.agentctl("send", "build", "--name", "before", "--count", "3", "--wait")
            assert res.returncode == 0, res.stdout + res.stderr
            types = queue_types(cluster, "")
            for queue in (f"compute.{node.host}", f"l2-agent.{node.host}"):
                assert types[queue] == "quorum", types
            victim = cluster.busiest_node(AGENTS)
            on_victim = [n for i, n in cluster.connections() if i == victim]
            cluster.kill(victim)
            killed = time.monotonic()
            res = lab.agentctl("send", "build", "--name", "after", "--count", "3", "--wait")
            assert res.returncode == 0, res.stdout + res.stderr
            print(f"3 builds after the kill of node {victim}: {time.monotonic() - killed:.1f}s")
            listed = lab.agentctl_json("list")
            rows = listed if isinstance(listed, list) else listed.get("instances", [])
            states = sorted((i["name"], i["state"]) for i in rows)
            assert len(states) == 6, states
            assert all(state == "running" for _, state in states), states
            # every agent connection that was on the dead node is back (same name:
            # oslo's and ours keep it across a reconnect), on another node
            lost = [n for n in on_victim if n.split(":")[0] in AGENTS]
            assert lost, on_victim

            def back() -> bool:
                names = {n for i, n in cluster.connections() if i != victim}
                return all(n in names for n in lost)

            wait_for(back, 15, 0.5, what=f"connections {lost} on another node")
            print(f"back on other nodes: {lost}")
        except BaseException:
            print(lab.logs())
            raise
        finally:
            for n in cluster.nodes:  # the next tests want three nodes
                if n.pid() is None:
                    cluster.start(n.index)


def test_a_message_requeued_forever_is_dead_lettered_and_reported(
    cluster: BrokerCluster,
) -> None:
    settings = MessagingSettings(
        transport_url=cluster.transport_url,
        queue_type="quorum",
        delivery_limit=2,
        control_exchange=unique("tdl-"),
    )
    topic = unique("poison-")
    seen: list[str] = []

    class AlwaysFails:
        def info(
            self, ctxt: object, pub: str, event: str, payload: object, md: dict[str, Any]
        ) -> str:
            seen.append(str(md["message_id"]))
            return "requeue"

    listener = NotificationListener(
        settings, [topic], [AlwaysFails()], allow_requeue=True, retry_pause=0.05
    )
    notifier = Notifier(settings, "test", topic)
    dlq = dead_letter_queue_name(settings)
    try:
        with capture_logs() as logs:
            listener.start(ready_timeout=20)
            notifier.info("test.poison", InstanceRef(instance_uuid=uuid.uuid4()))
            wait_for(lambda: len(seen) >= 3, 20, what="three deliveries")
            time.sleep(0.5)
        assert len(seen) == 3 and len(set(seen)) == 1, seen  # limit 2: 3 deliveries, no 4th
        poison = [e for e in logs if e["event"] == "poison_message"]
        assert poison == [
            {
                "event": "poison_message",
                "log_level": "error",
                "queue": f"{topic}.info",
                "message_id": seen[0],
                "deliveries": 3,
                "dead_letter_queue": dlq,
            }
        ], logs
        with kombu.Connection(cluster.nodes[0].url.replace("rabbit://", "amqp://")) as conn:
            msg = conn.channel().basic_get(dlq, no_ack=True)
            assert msg is not None
            assert msg.headers["x-first-death-queue"] == f"{topic}.info"
    finally:
        listener.stop()
        listener.wait()
        notifier.close()
        delete_queues(cluster.transport_url, [f"{topic}.info", dlq], settings.control_exchange)


def test_switch_to_quorum_keeps_every_message(cluster: BrokerCluster, tmp_path: Path) -> None:
    exchange, host = unique("tsw-"), unique("h-")
    classic = MessagingSettings(transport_url=cluster.transport_url, control_exchange=exchange)
    quorum = classic.model_copy(update={"queue_type": "quorum"})
    cast_uuids = [uuid.uuid4() for _ in range(20)]
    event_uuids = [uuid.uuid4() for _ in range(30)]
    received: list[uuid.UUID] = []
    events: list[uuid.UUID] = []

    class Compute:
        def get_instance(self, ctxt: object, payload: InstanceRef) -> None:
            received.append(payload.instance_uuid)

    class Vif:
        def info(self, ctxt: object, pub: str, event: str, payload: Any, md: object) -> None:
            events.append(payload.instance_uuid)

    queue = f"{COMPUTE_TOPIC}.{host}"
    vif_queue = f"{vif_events_topic(host)}.info"
    # oslo names a topic's shared queue `compute` whatever the exchange: one queue type
    # per vhost. The lab test above left it quorum on this (private) cluster.
    delete_queues(cluster.transport_url, [COMPUTE_TOPIC])
    first = Messaging(classic)
    second: Messaging | None = None
    listener: NotificationListener | None = None
    try:
        # the deployment on classic queues: the agent declared its queue and stopped;
        # casts and events wait for it
        server = first.rpc_server(COMPUTE_TOPIC, host, [Compute()])
        server.start()
        server.stop()
        server.wait()
        client = first.rpc_client(COMPUTE_TOPIC, host)
        for u in cast_uuids:
            client.cast("get_instance", InstanceRef(instance_uuid=u))
        notifier = Notifier(classic, "test", vif_events_topic(host))
        for u in event_uuids:
            notifier.info("port.vif_plugged", InstanceRef(instance_uuid=u))
        notifier.close()
        first.close()
        assert queue_types(cluster, queue) == {queue: "classic"}

        conf = tmp_path / "shared.conf"
        conf.write_text(
            f"[messaging]\ntransport_url = {cluster.transport_url}\ncontrol_exchange = {exchange}\n"
        )
        switch = subprocess.run(
            [
                str(REPO / "tools" / "switch-queue-type.sh"),
                "switch",
                "--to",
                "quorum",
                "--config-file",
                str(conf),
                "--rabbitmqctl",
                " ".join(cluster.ctl_command()),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=cluster.ctl_env(),
        )
        print(switch.stdout, switch.stderr)
        assert switch.returncode == 0, switch.stderr
        assert f"switched {queue}: classic -> quorum, messages moved out 20, back 20" in (
            switch.stdout
        )
        assert f"switched {vif_queue}: classic -> quorum, messages moved out 30, back 30" in (
            switch.stdout
        )
        types = queue_types(cluster, "")
        assert types[queue] == types[vif_queue] == types[COMPUTE_TOPIC] == "quorum", types

        # the daemons come back on quorum: they declare the same queues and get it all
        second = Messaging(quorum)
        server = second.rpc_server(COMPUTE_TOPIC, host, [Compute()])
        server.start()
        listener = NotificationListener(quorum, [vif_events_topic(host)], [Vif()])
        listener.start(ready_timeout=20)
        wait_for(lambda: len(received) == 20 and len(events) == 30, 30, what="every message")
        assert received == cast_uuids  # in order
        assert events == event_uuids
        server.stop()
        server.wait()
    finally:
        if listener is not None:
            listener.stop()
            listener.wait()
        if second is not None:
            second.close()
        delete_queues(
            cluster.transport_url,
            [queue, COMPUTE_TOPIC, vif_queue, f"{vif_events_topic(host)}.error"],
            exchange,
        )


def test_down_leaves_nothing_behind(cluster: BrokerCluster) -> None:
    """Last in the module: the module's cluster is taken down here, then looked for."""
    epmd = subprocess.run(["epmd", "-names"], capture_output=True, text=True).stdout
    assert all(n.name.split("@")[0] in epmd for n in cluster.nodes)
    cluster.down()
    assert not cluster.dir.exists()
    assert not cluster.pids()
    for node in cluster.nodes:
        assert not _listening(node.port) and not _listening(node.dist_port)
    epmd = subprocess.run(["epmd", "-names"], capture_output=True, text=True).stdout
    assert not [n for n in cluster.nodes if n.name.split("@")[0] in epmd], epmd
    assert "name rabbit at port" in epmd, "the machine's own broker must be left alone"
