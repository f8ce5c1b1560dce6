"""The l2-agent as a `common.service.Service`: the steps of start and stop only it knows.

The order they run in is `common.agent.AgentLifecycle`'s, the same for every agent:
start: link events followed (before reconcile, so nothing deleted meanwhile is missed)
-> record loaded and kernel reconciled -> journal replay -> RPC server consumes ->
metrics -> heartbeats -> resync (so READY=1 means "serving, and the host matches the
record"). stop(grace): stop consuming, let queued port work finish within `grace`
(the rest stays in the journal), close everything.
The collaborators are built in __main__ and handed in; this module opens nothing itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from agents.l2.manager import EventSink, L2Manager
from agents.l2.metrics import L2Metrics
from agents.l2.netlink import LinkEvent, LinkEvents
from agents.l2.store import PortStore
from common.agent import AgentLifecycle, Server, ping_reply
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


class L2Agent:
    def __init__(
        self,
        *,
        manager: L2Manager,
        executor: KeyedSerialExecutor,
        store: PortStore,
        make_server: Callable[[], Server],
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
        self._reload = reload_log_level
        self._on_close = on_close
        self._replay = replay
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._events: LinkEvents | None = None
        self.lifecycle = AgentLifecycle(
            self,
            kind="l2",
            host=manager.host,
            version=version,
            heartbeat_interval=heartbeat_interval,
            metrics=metrics.registry,
            metrics_listen=metrics_listen,  # port 0: any free port, as common.config says
            ask_desired=ask_desired,
            heartbeat_stop_timeout=2.0,
        )

    # ------------------------------------------------------------------ Service

    def start(self) -> None:
        self.lifecycle.start()

    def stop(self, grace: float) -> None:
        self.lifecycle.stop(grace)

    def healthy(self) -> bool:
        return self._events is not None and self._events.alive()

    def reload(self) -> None:
        if self._reload is not None:
            self._reload()

    @property
    def metrics_port(self) -> int | None:
        return self.lifecycle.metrics_port

    # ------------------------------------------------------------------ AgentParts

    def prepare(self) -> None:
        # Follow link events before reconciling so nothing deleted meanwhile is missed.
        self._events = self._make_link_events(self._on_link_event)
        self._events.start()

    def reconcile(self) -> object:
        return self.manager.reconcile()

    def replay(self) -> int:
        return self._replay() if self._replay is not None else 0

    def start_listeners(self) -> None:
        """Link events are followed from prepare() on; nothing else feeds port work."""

    def rpc_server(self) -> Server:
        return self._make_server()

    def drain(self, grace: float) -> None:
        finished = self._executor.shutdown(grace)
        if not finished:
            # Not begun within the grace: left in the journal for the next start.
            log.warning("port_work_handed_back", abandoned=self._executor.abandoned, grace_s=grace)

    def stop_listeners(self) -> None:
        if self._events is not None:
            self._events.stop()

    def close(self) -> None:
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

    # ------------------------------------------------------------------ reports

    def uptime(self) -> float:
        return time.monotonic() - self._t0

    def ping(self) -> PingReply:
        return ping_reply(self.manager.host, "l2", self.version, self.uptime())

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
