"""The l2-agent's RPC boundary: every message is checked here and handed on, or refused.

Casts (`port_created`, `port_updated`, `port_deleted`, `report_state`) are acknowledged
by oslo.messaging before the endpoint runs (docs/platform.md), so nothing may escape from
here: a message that does not validate, is addressed to another host or breaks in an
unexpected way is logged once, counted, answered with `port.plug_failed` when a port
uuid can be salvaged, and reported as `agent.message_rejected`; the daemon goes on.

The checks, the durable journal and the per-port queue are the shared agent boundary
(`common.agent.Intake`): messages about one port are applied one at a time in order of
arrival, a message taken is on disk before the endpoint returns, and the endpoint
itself returns at once. This module says what each cast does and how a refused one is
reported. It must not touch the kernel or the record itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import structlog

from agents.l2.manager import EventSink, L2Manager
from agents.l2.metrics import L2Metrics
from common.agent import AgentEndpoint, CastSpec, Intake, Ticket
from common.errors import BrokerUnreachable
from common.journal import Journal
from common.messages import (
    MessageRejected,
    PingReply,
    PortCreated,
    PortDeleted,
    PortList,
    PortUpdated,
    VifEvent,
    salvage_uuid,
)
from common.rpc import InvalidPayload
from common.workers import KeyedSerialExecutor

log = structlog.get_logger()


PortMessage = PortCreated | PortUpdated | PortDeleted


def _port_id(msg: PortMessage) -> UUID:
    return msg.port_id if isinstance(msg, PortDeleted) else msg.port.id


class L2Endpoint(AgentEndpoint):
    # what the wire may call (common.rpc refuses every other public method by name)
    RPC_METHODS = frozenset(
        {"port_created", "port_updated", "port_deleted", "report_state", "list_ports", "ping"}
    )

    def __init__(
        self,
        *,
        manager: L2Manager,
        executor: KeyedSerialExecutor,
        vif_events: EventSink,
        agent_events: EventSink,
        metrics: L2Metrics,
        ping: Callable[[], PingReply],
        heartbeat: Callable[[], None],
        journal: Journal | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manager = manager
        self._executor = executor
        self._vif_events = vif_events
        self._agent_events = agent_events
        self._metrics = metrics
        self._ping = ping
        self._heartbeat = heartbeat
        self.host = manager.host
        casts = {
            method: CastSpec(model, _port_id, functools.partial(self._run, method))
            for method, model in (
                ("port_created", PortCreated),
                ("port_updated", PortUpdated),
                ("port_deleted", PortDeleted),
            )
        }
        self.intake = Intake(self.host, casts, executor, journal, self._reject, clock)

    # ------------------------------------------------------------------ casts

    def port_created(self, *args: Any, **kwargs: Any) -> None:
        self._take("port_created", args, kwargs)

    def port_updated(self, *args: Any, **kwargs: Any) -> None:
        self._take("port_updated", args, kwargs)

    def port_deleted(self, *args: Any, **kwargs: Any) -> None:
        self._take("port_deleted", args, kwargs)

    def report_state(self, *args: Any, **_: object) -> None:
        try:
            self._heartbeat()
        except Exception as err:  # a cast must never raise into oslo (it is already acked)
            self._metrics.rpc_errors.labels(method="report_state", problem="internal").inc()
            log.exception("report_state_failed", error=str(err))

    # ------------------------------------------------------------------ calls

    def list_ports(self, *args: Any, **_: object) -> PortList:
        return PortList(host=self.host, ports=self._manager.port_infos())

    def ping(self, *args: Any, **_: object) -> PingReply:
        return self._ping()

    # ------------------------------------------------------------------ work

    def _run(self, method: str, msg: PortMessage, received: float, _ticket: Ticket) -> None:
        port_id = _port_id(msg)
        port = getattr(msg, "port", None)  # a delete names the port only
        instance_uuid = port.instance_uuid if port is not None else None
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id,
            port_id=str(port_id),
            instance_uuid=str(instance_uuid) if instance_uuid else None,
            method=method,
        ):
            try:
                if isinstance(msg, PortCreated):
                    self._manager.port_created(msg, received)
                elif isinstance(msg, PortUpdated):
                    self._manager.port_updated(msg, received)
                else:
                    self._manager.port_deleted(msg, received)
            except BrokerUnreachable as err:
                # The work is done and recorded; only its report did not go out (the
                # broker stayed away through every retry). Not a failed port: the
                # controller casts again what it does not hear of, and a message for a
                # wired port reports it again.
                self._metrics.rpc_errors.labels(method=method, problem="broker").inc()
                log.error("port_report_unsent", error=str(err))
            except Exception as err:  # a bug or an OS error below: report it, keep serving
                self._metrics.rpc_errors.labels(method=method, problem="internal").inc()
                log.exception("port_message_failed", error=str(err))
                if not isinstance(msg, PortDeleted):
                    self._vif_events.error(
                        "port.plug_failed",
                        VifEvent(
                            request_id=msg.request_id,
                            host=self.host,
                            port_id=port_id,
                            network_id=msg.port.network_id,
                            instance_uuid=msg.port.instance_uuid,
                            reason=f"internal error: {type(err).__name__}: {err}",
                        ),
                        request_id=msg.request_id,
                    )

    def _reject(self, method: str, payload: object, problem: str, request_id: object) -> None:
        raw = payload.raw if isinstance(payload, InvalidPayload) else payload
        port_id = salvage_uuid(raw, "port_id", "id")
        instance_uuid = salvage_uuid(raw, "instance_uuid")
        rid = request_id if isinstance(request_id, str) else None
        self._metrics.rpc_errors.labels(method=method, problem="invalid").inc()
        log.error(
            "message_rejected",
            method=method,
            problem=problem,
            port_id=str(port_id) if port_id else None,
            request_id=rid,
        )
        try:
            # No port.plug_failed: a garbled copy may carry the id of a real port whose
            # build is waiting; the controller re-drives the real message if it was this.
            self._agent_events.error(
                "agent.message_rejected",
                MessageRejected(
                    host=self.host,
                    kind="l2",
                    method=method,
                    problem=problem[:2000],
                    instance_uuid=instance_uuid,
                    port_id=port_id,
                ),
                request_id=rid,
            )
        except Exception as err:  # reporting a bad message must not take the server down
            log.exception("reject_report_failed", error=str(err))
