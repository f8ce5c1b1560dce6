"""The l2-agent's RPC boundary: every message is checked here and handed on, or refused.

Casts (`port_created`, `port_updated`, `port_deleted`, `report_state`) are acknowledged
by oslo.messaging before the endpoint runs (docs/platform.md), so nothing may escape from
here: a message that does not validate, is addressed to another host or breaks in an
unexpected way is logged once, counted, answered with `port.plug_failed` when a port
uuid can be salvaged, and reported as `agent.message_rejected`; the daemon goes on.

Valid port messages are queued per port (KeyedSerialExecutor) so that messages about one
port are applied one at a time in order of arrival; the endpoint itself returns at once.
It must not touch the kernel or the record itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import structlog
from pydantic import TypeAdapter, ValidationError

from common.workers import KeyedSerialExecutor
from agents.l2.manager import EventSink, L2Manager
from agents.l2.metrics import L2Metrics
from common.errors import InvalidMessage
from common.messages import (
    Message,
    MessageRejected,
    PingReply,
    PortCreated,
    PortDeleted,
    PortList,
    PortUpdated,
    RequestId,
    VifEvent,
    salvage_uuid,
)
from common.rpc import InvalidPayload, expect

log = structlog.get_logger()


class WrongHost(InvalidMessage):
    """A valid port message addressed to another host's agent."""


PortMessage = PortCreated | PortUpdated | PortDeleted
_REQUEST_ID: TypeAdapter[str] = TypeAdapter(RequestId)


class L2Endpoint:
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manager = manager
        self._executor = executor
        self._vif_events = vif_events
        self._agent_events = agent_events
        self._metrics = metrics
        self._ping = ping
        self._heartbeat = heartbeat
        self._clock = clock
        self.host = manager.host

    # ------------------------------------------------------------------ casts

    def port_created(self, ctxt: dict[str, Any], payload: object = None) -> None:
        self._accept("port_created", ctxt, payload, PortCreated)

    def port_updated(self, ctxt: dict[str, Any], payload: object = None) -> None:
        self._accept("port_updated", ctxt, payload, PortUpdated)

    def port_deleted(self, ctxt: dict[str, Any], payload: object = None) -> None:
        self._accept("port_deleted", ctxt, payload, PortDeleted)

    def report_state(self, ctxt: dict[str, Any], **_: object) -> None:
        try:
            self._heartbeat()
        except Exception as err:  # a cast must never raise into oslo (it is already acked)
            self._metrics.rpc_errors.labels(method="report_state", problem="internal").inc()
            log.exception("report_state_failed", error=str(err))

    # ------------------------------------------------------------------ calls

    def list_ports(self, ctxt: dict[str, Any], **_: object) -> PortList:
        return PortList(host=self.host, ports=self._manager.port_infos())

    def ping(self, ctxt: dict[str, Any], **_: object) -> PingReply:
        return self._ping()

    # ------------------------------------------------------------------ boundary

    def _accept(
        self, method: str, ctxt: dict[str, Any], payload: object, model: type[Message]
    ) -> None:
        received = self._clock()
        request_id = ctxt.get("request_id") if isinstance(ctxt, dict) else None
        try:
            msg = expect(payload, model)
            assert isinstance(msg, PortCreated | PortUpdated | PortDeleted)
            if msg.host != self.host:
                # Not reported as plug_failed on this host's vif topic: no build here
                # waits for that port; the operator sees agent.message_rejected.
                raise WrongHost(
                    schema=model.SCHEMA,
                    problem=f"addressed to host {msg.host!r}, this is {self.host!r}",
                )
        except WrongHost as err:
            self._reject(method, None, err.reason, request_id)
            return
        except InvalidMessage as err:
            self._reject(method, payload, err.reason, request_id)
            return
        except Exception as err:  # anything else: same treatment, never crash the server
            self._reject(method, payload, f"{type(err).__name__}: {err}", request_id)
            return
        port_id = msg.port_id if isinstance(msg, PortDeleted) else msg.port.id
        self._executor.submit(port_id, lambda: self._run(method, msg, port_id, received))

    def _run(self, method: str, msg: PortMessage, port_id: UUID, received: float) -> None:
        with structlog.contextvars.bound_contextvars(
            request_id=msg.request_id,
            port_id=str(port_id),
            method=method,
        ):
            try:
                if isinstance(msg, PortCreated):
                    self._manager.port_created(msg, received)
                elif isinstance(msg, PortUpdated):
                    self._manager.port_updated(msg, received)
                else:
                    self._manager.port_deleted(msg, received)
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
        network_id = salvage_uuid(raw, "network_id")
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
            if port_id is not None and method != "port_deleted":
                self._vif_events.error(
                    "port.plug_failed",
                    VifEvent(
                        request_id=_valid_request_id(rid),
                        host=self.host,
                        port_id=port_id,
                        network_id=network_id,
                        instance_uuid=instance_uuid,
                        reason=problem,
                    ),
                    request_id=rid,
                )
            self._agent_events.error(
                "agent.message_rejected",
                MessageRejected(
                    host=self.host,
                    kind="l2",
                    method=method,
                    problem=problem[:2000],
                ),
                request_id=rid,
            )
        except Exception as err:  # reporting a bad message must not take the server down
            log.exception("reject_report_failed", error=str(err))


def _valid_request_id(value: str | None) -> str | None:
    """The request id if it would validate in a VifEvent, else None (it came from a bad message)."""
    if value is None:
        return None
    try:
        return _REQUEST_ID.validate_python(value)
    except ValidationError:
        return None
