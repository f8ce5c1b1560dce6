"""The compute-agent as a daemon: start-up order, heartbeat, graceful stop, reload.

It owns the order in which the parts come up and go down:
start: libvirt connection -> start-up reconcile -> journal replay -> vif-event listener ->
RPC server ->
metrics endpoint -> heartbeat thread (READY=1 is sent by common.service.run() after
start() returns, so systemd hears "ready" only once all of that is done);
stop: RPC server stops taking messages and hands over what it took -> queued work and
in-flight builds finish within the grace, the rest is handed back (the vif listener
keeps running so builds can still complete) -> listener, heartbeat, transports, libvirt.

It must not contain build logic (manager.py) nor create its collaborators (__main__).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agents.compute.hypervisor import Hypervisor
from agents.compute.manager import ComputeManager, VifEventEndpoint
from agents.compute.reporter import Reporter
from common.agent import Heartbeat, Resync
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
        self.registry = registry
        self.metrics_listen = metrics_listen
        self.heartbeat_interval = heartbeat_interval
        self._reload_config = reload_config
        self._ask_desired = ask_desired
        self._resync: Resync | None = None
        self._rpc: RpcServer | None = None
        self._listener: RpcServer | None = None
        self._heartbeat: Heartbeat | None = None
        self.metrics_port: int | None = None

    def start(self) -> None:
        host = self.manager.host
        self.hypervisor.connect()
        log.info("libvirt_connected", uri=self.hypervisor.uri)
        self.manager.reconcile()
        # Casts an earlier run took and did not finish (kill -9) go first, in order.
        self.manager.intake.replay()
        self._listener = self.messaging.notification_listener(
            [vif_events_topic(host)], [VifEventEndpoint(self.manager)]
        )
        self._listener.start()
        self._rpc = self.messaging.rpc_server(COMPUTE_TOPIC, host, [self.manager])
        self._rpc.start()
        # Port 0 binds any free port ([metrics] listen); the bound one is logged.
        self.metrics_port = self.registry.serve(self.metrics_listen)
        log.info("metrics_serving", listen=self.metrics_listen, port=self.metrics_port)
        self._heartbeat = Heartbeat(self.manager.emit_heartbeat, self.heartbeat_interval)
        self._heartbeat.start()
        if self._ask_desired is not None:
            self._resync = Resync(self._ask_desired, self.manager.apply_desired)
            self._resync.start()
        log.info("compute_agent_started", host=host, version=self.manager.version)

    def stop(self, grace: float) -> None:
        if self._resync is not None:
            self._resync.stop()
        if self._rpc is not None:
            # No new cast is taken; wait() returns once every cast already taken (and
            # acked by the broker) has passed the endpoint into the journal and queue.
            self._rpc.stop()
            self._rpc.wait()
        self.manager.drain(grace)
        if self._listener is not None:
            self._listener.stop()
            self._listener.wait()
        if self._heartbeat is not None:
            self._heartbeat.stop(5)
        self.reporter.close()
        self.registry.close()
        self.messaging.close()
        self.hypervisor.close()

    def healthy(self) -> bool:
        return self.manager.healthy()

    def reload(self) -> None:
        self._reload_config()
