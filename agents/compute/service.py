"""The compute-agent as a daemon: the steps of start and stop only it knows, and reload.

The order they run in is `common.agent.AgentLifecycle`'s, the same for every agent:
start: libvirt connection -> start-up reconcile -> journal replay -> vif-event listener ->
RPC server -> metrics endpoint -> heartbeat thread -> resync;
stop: RPC server stops taking messages and hands over what it took -> queued work and
in-flight builds finish within the grace, the rest is handed back (the vif listener
keeps running so builds can still complete) -> listener, heartbeat, metrics,
transports, libvirt.

It must not contain build logic (manager.py) nor create its collaborators (__main__).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agents.compute.hypervisor import Hypervisor
from agents.compute.manager import ComputeManager, VifEventEndpoint
from agents.compute.reporter import Reporter
from common.agent import AgentLifecycle
from common.messages import DesiredState
from common.metrics import Registry
from common.rpc import COMPUTE_TOPIC, Messaging, RpcServer, vif_events_topic

log = structlog.get_logger()


class ComputeService:
    def __init__(
        self,
        manager: ComputeManager,
        hypervisor: Hypervisor,
        reporter: Reporter,
        messaging: Messaging,
        registry: Registry,
        metrics_listen: str,
        heartbeat_interval: float,
        reload_config: Callable[[], None],
        ask_desired: Callable[[], DesiredState] | None = None,
    ) -> None:
        self.manager = manager
        self.hypervisor = hypervisor
        self.reporter = reporter
        self.messaging = messaging
        self._reload_config = reload_config
        self._listener: RpcServer | None = None
        self.lifecycle = AgentLifecycle(
            self,
            kind="compute",
            host=manager.host,
            version=manager.version,
            heartbeat_interval=heartbeat_interval,
            metrics=registry,
            metrics_listen=metrics_listen,
            ask_desired=ask_desired,
        )

    # ------------------------------------------------------------------ Service

    def start(self) -> None:
        self.lifecycle.start()

    def stop(self, grace: float) -> None:
        self.lifecycle.stop(grace)

    def healthy(self) -> bool:
        return self.manager.healthy()

    def reload(self) -> None:
        self._reload_config()

    @property
    def metrics_port(self) -> int | None:
        return self.lifecycle.metrics_port

    # ------------------------------------------------------------------ AgentParts

    def prepare(self) -> None:
        self.hypervisor.connect()
        log.info("libvirt_connected", uri=self.hypervisor.uri)

    def reconcile(self) -> object:
        return self.manager.reconcile()

    def replay(self) -> int:
        return self.manager.intake.replay()

    def start_listeners(self) -> None:
        self._listener = self.messaging.notification_listener(
            [vif_events_topic(self.manager.host)], [VifEventEndpoint(self.manager)]
        )
        self._listener.start()

    def rpc_server(self) -> RpcServer:
        return self.messaging.rpc_server(COMPUTE_TOPIC, self.manager.host, [self.manager])

    def heartbeat(self) -> None:
        self.manager.emit_heartbeat()

    def apply_desired(self, desired: DesiredState) -> dict[str, int]:
        return self.manager.apply_desired(desired)

    def drain(self, grace: float) -> None:
        self.manager.drain(grace)

    def stop_listeners(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener.wait()

    def close(self) -> None:
        self.reporter.close()
        self.messaging.close()
        self.hypervisor.close()
