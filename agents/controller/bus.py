"""The controller's side of the broker: casts out after commits, agent events in.

Casts: each `Cast` the store returned is published to the per-host target of
DESIGN's wire (topic `compute` or `l2-agent`, server = host), with the mandatory flag
(a host no agent ever served fails at once instead of vanishing). The operations whose
casts all went out are marked `sent`; one whose cast failed stays open and the
reconciler casts it again. A cast is a hint: the database already holds the request.

Events: every notification the agents emit (instance.*, port.*, agent.*) arrives on
the controller's own durable queue and is applied in a database transaction before
it is acknowledged (`common.rpc.EventConsumer`); the events already waiting go in
together, one transaction per batch (`on_events`); one that cannot be applied sends
its batch through `on_event` one by one, so only it is dropped. A database outage
holds them until it is back. Nothing here decides what an event means; `db.records`
does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import structlog

from agents.controller.db.engine import DatabaseError
from agents.controller.db.records import Records
from agents.controller.db.store import Cast, Store, utcnow
from common.errors import AgentsError
from common.messages import Message
from common.rpc import (
    COMPUTE_TOPIC,
    L2_TOPIC,
    Event,
    Messaging,
    RetryLater,
    RpcClient,
    routing_key_host,
)

log = structlog.get_logger()

TOPICS = {"compute": COMPUTE_TOPIC, "l2": L2_TOPIC}


class Hub:
    """Wakes the event-stream readers when new timeline rows were committed.

    Readers also look at the database on a short timer, so events another controller
    replica recorded reach them too; this only makes the local ones immediate.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(wake)

        def unsubscribe() -> None:
            with self._lock:
                if wake in self._listeners:
                    self._listeners.remove(wake)

        return unsubscribe

    def notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for wake in listeners:
            wake()


class Bus:
    def __init__(self, messaging: Messaging, store: Store, hub: Hub, call_timeout: float) -> None:
        self.messaging = messaging
        self.store = store
        self.records = Records(store)
        self.hub = hub
        self.call_timeout = call_timeout
        self._clients: dict[tuple[str, str], RpcClient] = {}
        self._lock = threading.Lock()
        # events refused because the payload's host is not the one in the routing key
        self.forged_events = 0

    def client(self, kind: str, host: str, timeout: float | None = None) -> RpcClient:
        if timeout is not None:
            return self.messaging.rpc_client(TOPICS[kind], host, timeout=timeout)
        key = (kind, host)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                found = self.messaging.rpc_client(TOPICS[kind], host, timeout=self.call_timeout)
                self._clients[key] = found
            return found

    def publish(self, casts: Iterable[Cast]) -> None:
        """Send `casts` in order; mark their operations sent, or note why not."""
        sent: dict[str, datetime] = {}  # operation -> when its last cast went out
        attempts: dict[str, int] = {}  # operation -> the attempt its casts carry
        failed: dict[str, str] = {}
        for cast in casts:
            if cast.operation_id is not None and cast.operation_id in failed:
                continue  # the build must not go out when its port could not
            try:
                self.client(cast.kind, cast.host).cast(
                    cast.method, cast.message, request_id=_request_id(cast.message)
                )
            except AgentsError as err:
                log.warning("cast_failed", method=cast.method, host=cast.host, error=err.reason)
                if cast.operation_id is not None:
                    failed[cast.operation_id] = f"{cast.method} to {cast.host}: {err.reason}"
                    attempts[cast.operation_id] = cast.attempt
                continue
            if cast.operation_id is not None:
                sent[cast.operation_id] = utcnow()
                attempts[cast.operation_id] = cast.attempt
        ok = {op: at for op, at in sent.items() if op not in failed}
        try:
            self.store.mark_sent(ok, {op: attempts[op] for op in ok})
            for op_id, reason in failed.items():
                self.store.note_cast_failed(op_id, reason, attempts.get(op_id, 0))
        except DatabaseError as err:  # the reconciler casts them again later
            log.error("mark_sent_failed", error=err.reason)
        self.hub.notify()

    def on_event(self, event: Event) -> None:
        self.on_events([event])

    def on_events(self, events: list[Event]) -> None:
        """Apply `events` in one transaction; RetryLater while the database is away."""
        batch: list[tuple[str, Message]] = []
        for event in events:
            payload = event.payload
            if not isinstance(payload, Message):
                log.warning(
                    "event_unreadable", event_type=event.event_type, publisher=event.publisher_id
                )
                continue
            if not self._from_own_host(event, payload):
                continue
            batch.append((event.event_type, payload))
        if not batch:
            return
        sent_at = _sent_at(events[-1].timestamp)
        if sent_at is not None:
            self.store.heard(sent_at)
        try:
            applied = self.records.apply_batch(batch, any(e.redelivered for e in events))
        except DatabaseError as err:
            log.error(
                "event_not_recorded",
                event_type=batch[0][0],
                events=len(batch),
                error=err.reason,
            )
            raise RetryLater() from err
        if applied.casts:
            self.publish(applied.casts)
        elif applied.timeline:
            self.hub.notify()

    def _from_own_host(self, event: Event, payload: Message) -> bool:
        """The broker lets an agent publish only under its own host's routing keys
        (`<events_topic>.<host>.*`, `vif_events.<host>.*`: docs/security.md); an event
        whose payload speaks for another host is refused here (logged, counted, acked).
        An event handed over without a routing key (in-process callers) is not checked."""
        if not event.routing_key:
            return True
        topics = (self.messaging.settings.events_topic, "vif_events")
        key_host = next(
            (h for t in topics if (h := routing_key_host(event.routing_key, t)) is not None),
            None,
        )
        claimed = getattr(payload, "host", None)
        if key_host is not None and key_host == claimed:
            return True
        self.forged_events += 1
        log.warning(
            "event_host_mismatch",
            event_type=event.event_type,
            routing_key=event.routing_key,
            payload_host=claimed,
            publisher=event.publisher_id,
            refused_total=self.forged_events,
        )
        return False

    def on_bad_event(self, err: BaseException, what: Any) -> None:
        log.error("event_dropped", error=str(err), error_type=type(err).__name__)


def _request_id(message: Message) -> str | None:
    rid = getattr(message, "request_id", None)
    return rid if isinstance(rid, str) else None


def _sent_at(timestamp: str) -> datetime | None:
    """The notification's send time (oslo: naive UTC, `YYYY-MM-DD HH:MM:SS.ffffff`)."""
    try:
        at = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
