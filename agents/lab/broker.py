"""The broker side of a lab: its control exchange, host names and queues, removed afterwards.

Queue names are global on a RabbitMQ vhost (an oslo server queue is `<topic>.<host>`
whatever the exchange), so a lab needs host names of its own as well as an exchange:
`BrokerScope.host("node1")` gives a unique one and remembers it. `cleanup()` deletes
the per-host queues of every host handed out, the deployment-wide ones named after the
exchange (the controller's RPC queue), the extra queues registered (the controller's
events queue) and the exchange; deleting what is already gone is fine. oslo's
topic-wide queues (`compute`, `l2-agent`, `controller`, one name for every deployment)
go too, but only when no consumer and no message is on them.

`BrokerScope.new(prefix, transport_url, queue_type)` puts a lab on another broker, such
as a cluster of this machine (a host's namespace then relays every node's port).

`BrokerCluster` (agents/lab/cluster.py, re-exported here) is a RabbitMQ cluster on this
machine's loopback; `python -m agents.lab.broker up|down|status|kill|start` drives it
(tools/rabbitmq-cluster.sh).

Must not delete a queue it was not told about, nor a shared one still in use: other
deployments share the broker;
must not touch the machine's own broker, its cookie or epmd.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.lab.cluster import BrokerCluster, BrokerNode, free_base_port
from agents.lab.procs import LabError, unique

__all__ = ["BrokerCluster", "BrokerNode", "BrokerScope", "free_base_port"]

# The broker every lab on this machine shares (oslo.messaging form, as in shared.conf).
TRANSPORT_URL = "rabbit://guest:guest@127.0.0.1:5672/"


def host_queues(host: str) -> list[str]:
    """The durable queues the agents of `host` declare (oslo RPC servers, vif events)."""
    return [
        f"compute.{host}",
        f"l2-agent.{host}",
        f"vif_events.{host}.info",
        f"vif_events.{host}.error",
    ]


SHARED_TOPIC_QUEUES = ["compute", "l2-agent", "controller"]


def deployment_queues(exchange: str) -> list[str]:
    """The durable queues of one deployment as a whole: the controller's RPC server
    queue (deployment-wide oslo targets use the control exchange as server name)."""
    return [f"controller.{exchange}"]


@dataclass
class BrokerScope:
    """A control exchange and host-name suffix of one lab or test, removed afterwards."""

    exchange: str
    suffix: str
    hosts: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    # the broker (or cluster, `BrokerCluster.transport_url`) and queue type of the lab
    transport_url: str = TRANSPORT_URL
    queue_type: str = "classic"

    @classmethod
    def new(
        cls, prefix: str = "lab-", transport_url: str = TRANSPORT_URL, queue_type: str = "classic"
    ) -> BrokerScope:
        return cls(
            exchange=unique(prefix),
            suffix=unique(""),
            transport_url=transport_url,
            queue_type=queue_type,
        )

    @property
    def ports(self) -> list[int]:
        """The broker ports of `transport_url` (all on 127.0.0.1): what a host's
        namespace relays."""
        return broker_ports(self.transport_url)

    def host(self, name: str) -> str:
        full = f"{name}-{self.suffix}" if self.suffix else name
        if full not in self.hosts:
            self.hosts.append(full)
        return full

    def queue(self, name: str) -> str:
        if name not in self.queues:
            self.queues.append(name)
        return name

    def cleanup(self) -> None:
        delete(
            [q for h in self.hosts for q in host_queues(h)]
            + deployment_queues(self.exchange)
            + [f"{self.exchange}.dead-letter"]  # declared with quorum queues only
            + self.queues,
            exchange=self.exchange,
            url=self.transport_url,
        )
        # oslo's topic-wide queues (`compute`, ...) bear one name for every deployment
        # on the broker: gone with the last lab that used them, never under another's
        # consumer or messages
        delete(SHARED_TOPIC_QUEUES, url=self.transport_url, if_unused=True)


def broker_ports(transport_url: str) -> list[int]:
    netloc = transport_url.split("://", 1)[-1].partition("/")[0]
    return [int(h.rpartition(":")[2]) for h in netloc.split(",") if h.rpartition(":")[2].isdigit()]


def delete(
    queues: list[str],
    exchange: str | None = None,
    url: str = TRANSPORT_URL,
    if_unused: bool = False,
) -> None:
    """Delete `queues` and `exchange` if they exist; a broker that is down is ignored.
    `if_unused`: only queues without consumers or messages."""
    from common.rpc import delete_queues

    delete_queues(url, queues, exchange, if_unused=if_unused)


def _state(queue: str, url: str) -> tuple[bool, int]:
    from common.config import MessagingSettings
    from common.errors import BrokerUnreachable
    from common.rpc import queue_state

    try:
        state = queue_state(MessagingSettings(transport_url=url), queue)
    except BrokerUnreachable:
        return False, 0
    return state.exists, state.consumers


def consumers(queue: str, url: str = TRANSPORT_URL) -> int:
    """Consumers of `queue` (0 when nobody declared it yet)."""
    return _state(queue, url)[1]


def queue_exists(queue: str, url: str = TRANSPORT_URL) -> bool:
    return _state(queue, url)[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m agents.lab.broker up|down|status` (tools/rabbitmq-cluster.sh)."""
    parser = argparse.ArgumentParser(
        prog="rabbitmq-cluster", description="A RabbitMQ cluster on this machine's loopback."
    )
    parser.add_argument("action", choices=["up", "down", "status", "kill", "start"])
    parser.add_argument("--name", default="agents-lab")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=5681)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--node", type=int, default=1, help="for kill and start")
    parser.add_argument("--tls", nargs=3, metavar=("CA", "CERT", "KEY"), default=None)
    args = parser.parse_args(argv)
    try:
        cluster = BrokerCluster(
            args.name, args.nodes, args.base_port, tls=args.tls, state_dir=args.state_dir
        )
        if args.action == "up":
            started = time.monotonic()
            cluster.up()
            print(f"up in {time.monotonic() - started:.1f}s")
        elif args.action == "down":
            cluster.down()
        elif args.action == "kill":
            cluster.kill(args.node)
        elif args.action == "start":
            cluster.start(args.node)
        if args.action != "down":
            print(json.dumps(cluster.status(), indent=2))
    except LabError as err:
        print(f"rabbitmq-cluster: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
