"""The l2-agent as a `common.service.Service`: start-up order, heartbeats, graceful stop.

start(): record loaded and kernel reconciled, link events followed, then the RPC server
consumes (so READY=1 means "serving, and the host matches the record"). stop(grace):
stop consuming, let queued port work finish within `grace`, close everything.
The collaborators are built in __main__ and handed in; this module opens nothing itself.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import structlog

from agents.l2.manager import EventSink, L2Manager
from agents.l2.metrics import L2Metrics
from agents.l2.netlink import LinkEvent, LinkEvents
from agents.l2.store import PortStore
from common.agent import Heartbeat, Resync
from common.messages import (
    AgentHeartbeat,
    DesiredState,
    PingReply,
    PortCreated,
    PortDeleted,
    new_request_id,
)
from common.workers import KeyedSerialExecutor

log = structlog.get_logger()


class Stoppable(Protocol):
    """What the service needs of an RPC server (common.rpc.RpcServer)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait(self) -> None: ...


class L2Agent:
    def __init__(
        self,
        *,
        manager: L2Manager,
        executor: KeyedSerialExecutor,
        store: PortStore,
        make_server: Callable[[], Stoppable],
        link_events: Callable[[Callable[[LinkEvent], None]], LinkEvents],
        agent_events: EventSink,
        metrics: L2Metrics,
        version: str,
        heartbeat_interval: float,
        metrics_listen: str | None = None,
        reload_log_level: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
        replay: Callable[[], int] | None = None,
        ask_desired: Callable[[], DesiredState] | None = None,
    ) -> None:
        self.manager = manager
        self._executor = executor
        self._store = store
        self._make_server = make_server
        self._make_link_events = link_events
        self._agent_events = agent_events
        self._metrics = metrics
        self.version = version
        self._interval = heartbeat_interval
        self._metrics_listen = metrics_listen
        self._reload = reload_log_level
        self._on_close = on_close
        self._replay = replay
        self._ask_desired = ask_desired
        self._resync: Resync | None = None
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._stopping = threading.Event()
        self._server: Stoppable | None = None
        self._events: LinkEvents | None = None
        self._beat: Heartbeat | None = None
        self.metrics_port: int | None = None

    # ------------------------------------------------------------------ Service

    def start(self) -> None:
        if self._metrics_listen:  # port 0: any free port, as common.config documents
            self.metrics_port = self._metrics.registry.serve(self._metrics_listen)
            log.info("metrics_serving", listen=self._metrics_listen, port=self.metrics_port)
        # Follow link events before reconciling so nothing deleted meanwhile is missed.
        self._events = self._make_link_events(self._on_link_event)
        self._events.start()
        self.manager.reconcile()
        # Port messages an earlier run took and did not apply (kill -9) go first, in
        # the order they were taken, then the broker's.
        if self._replay is not None:
            self._replay()
        self._server = self._make_server()
        self._server.start()
        self._beat = Heartbeat(self.heartbeat, self._interval, name="l2-heartbeat")
        self._beat.start()
        if self._ask_desired is not None:
            self._resync = Resync(self._ask_desired, self.apply_desired)
            self._resync.start()
        log.info("l2_agent_started", host=self.manager.host, version=self.version)

    def stop(self, grace: float) -> None:
        self._stopping.set()
        if self._resync is not None:
            self._resync.stop()
        if self._server is not None:
            # No new message is taken from here on; wait() returns once every message
            # already taken (acknowledged by the broker on arrival) has passed through
            # the endpoint into the executor. Closing the executor before that would
            # refuse them, and the broker has already forgotten them.
            self._server.stop()
            self._server.wait()
        finished = self._executor.shutdown(grace)
        if not finished:
            # Not begun within the grace: left in the journal for the next start.
            log.warning("port_work_handed_back", abandoned=self._executor.abandoned, grace_s=grace)
        if self._events is not None:
            self._events.stop()
        if self._beat is not None:
            self._beat.stop(2)
        self._metrics.registry.close()
        self._store.close()
        if self._on_close is not None:
            self._on_close()

    def apply_desired(self, desired: DesiredState) -> dict[str, int]:
        """Resync: wire what the controller wants and this host lacks; unwire what it
        released. Each goes through the port's own queue, behind any message for it."""
        added = released = 0
        now_ = time.monotonic()
        rid = new_request_id()
        for port in desired.ports:
            record = self.manager.record(port.id)
            if record is None or record.wanted != "present":
                msg = PortCreated(request_id=rid, host=self.manager.host, port=port)
                self._executor.submit(
                    port.id, functools.partial(self.manager.port_created, msg, now_)
                )
                added += 1
        for port_id in desired.released_ports:
            record = self.manager.record(port_id)
            if record is not None and record.wanted == "present":
                gone = PortDeleted(request_id=rid, host=self.manager.host, port_id=port_id)
                self._executor.submit(
                    port_id, functools.partial(self.manager.port_deleted, gone, now_)
                )
                released += 1
            elif record is None:
                self._executor.submit(
                    port_id, functools.partial(self.manager.remove_released_tap, port_id)
                )
                released += 1
        return {"ports_added": added, "ports_released": released}

    def healthy(self) -> bool:
        return self._events is not None and self._events.alive()

    def reload(self) -> None:
        if self._reload is not None:
            self._reload()

    # ------------------------------------------------------------------ reports

    def uptime(self) -> float:
        return time.monotonic() - self._t0

    def ping(self) -> PingReply:
        return PingReply(
            host=self.manager.host, kind="l2", version=self.version, uptime_s=self.uptime()
        )

    def heartbeat(self) -> None:
        self._agent_events.info(
            "agent.heartbeat",
            AgentHeartbeat(
                host=self.manager.host,
                kind="l2",
                version=self.version,
                started_at=self.started_at,
                uptime_s=self.uptime(),
                counts=self.manager.counts(),
            ),
        )

    def _on_link_event(self, event: LinkEvent) -> None:
        """Called from the link-event thread: queue a re-check of each affected port."""
        if event.kind != "del":
            return
        affected = self.manager.device_vanished(event.name)
        if not affected:
            return
        self._metrics.link_events.labels(kind=event.kind).inc()
        log.info("device_vanished", device=event.name, ports=len(affected))
        for port_id in affected:
            try:
                self._executor.submit(
                    port_id, functools.partial(self.manager.ensure, port_id, why="device_vanished")
                )
            except RuntimeError:  # stopping: the next start-up reconcile re-wires it
                return
