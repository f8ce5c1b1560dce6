"""The broker side of a lab: its control exchange, host names and queues, removed afterwards.

Queue names are global on a RabbitMQ vhost (an oslo server queue is `<topic>.<host>`
whatever the exchange), so a lab needs host names of its own as well as an exchange:
`BrokerScope.host("node1")` gives a unique one and remembers it. `cleanup()` deletes
the per-host queues of every host handed out, the deployment-wide ones named after the
exchange (the controller's RPC queue), the extra queues registered (the controller's
events queue) and the exchange; deleting what is already gone is fine.

Must not delete a queue it was not told about: other deployments share the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.lab.procs import unique

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

    @classmethod
    def new(cls, prefix: str = "lab-") -> BrokerScope:
        return cls(exchange=unique(prefix), suffix=unique(""))

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
            + self.queues,
            exchange=self.exchange,
        )


def delete(queues: list[str], exchange: str | None = None) -> None:
    """Delete `queues` and `exchange` if they exist; a broker that is down is ignored."""
    from common.rpc import delete_queues

    delete_queues(TRANSPORT_URL, queues, exchange)


def _state(queue: str) -> tuple[bool, int]:
    from common.config import MessagingSettings
    from common.errors import BrokerUnreachable
    from common.rpc import queue_state

    try:
        state = queue_state(MessagingSettings(transport_url=TRANSPORT_URL), queue)
    except BrokerUnreachable:
        return False, 0
    return state.exists, state.consumers


def consumers(queue: str) -> int:
    """Consumers of `queue` (0 when nobody declared it yet)."""
    return _state(queue)[1]


def queue_exists(queue: str) -> bool:
    return _state(queue)[0]
