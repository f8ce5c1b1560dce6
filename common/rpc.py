"""RPC and notification plumbing: the only importer of oslo.messaging, oslo.config and kombu.

What it owns:
- one private `cfg.ConfigOpts` per `Messaging` object (never the global CONF), filled
  from our typed `MessagingSettings`;
- RPC servers and clients on the per-host targets of docs/design.md (topic `compute` or
  `l2-agent`, server = host), casts sent with the mandatory flag so a cast to a host
  nobody ever served fails instead of vanishing (docs/platform.md); and the
  deployment-wide target of the controller (topic `controller`, host None: every
  replica serves it, `Messaging.controller_client()` calls it);
- notifications (oslo's messagingv2 wire) published and consumed with kombu, so that
  every `<topic>.<priority>` queue this project declares carries its own bounds
  (`x-max-length`, `x-message-ttl`): oslo's Notifier and notification listener declare
  those queues without arguments, and RabbitMQ refuses a redeclare with other
  arguments (PRECONDITION_FAILED), so the two cannot share a queue with bounds;
- `EventWatcher`: a kombu consumer on an exclusive, auto-delete queue bound to the
  notification exchange, for a transient watcher that must see every event and leave
  nothing behind; `EventConsumer`: a durable shared queue acknowledged after handling;
- `ModelSerializer`: wire models become envelopes on the way out and are validated
  again on the way in.

What it must not do: business logic, logging of payload contents, retries beyond what
the caller asked for.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import kombu
import structlog

# oslo.messaging imports eventlet through oslo.service/futurist, which warns that eventlet
# is deprecated at import; nothing here uses or monkey-patches eventlet (docs/platform.md), so
# the warning only adds noise to every daemon's journal.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import oslo_messaging
from oslo_config import cfg
from oslo_messaging import opts as om_opts
from oslo_messaging._metrics import client as om_metrics
from oslo_messaging._tracing import client as om_tracing
from oslo_messaging.rpc import dispatcher as om_dispatcher
from oslo_messaging.rpc import server as om_server

from common.config import MessagingSettings
from common.errors import (
    BrokerUnreachable,
    InvalidMessage,
    NoAgentForHost,
    RemoteCallTimeout,
    RemoteError,
)
from common.messages import (
    AgentKind,
    DesiredState,
    DesiredStateRequest,
    Message,
    envelope,
    is_envelope,
    open_envelope,
)

log = structlog.get_logger()


class _UnreadableMessage(logging.Filter):
    """oslo's rabbit driver logs a message it cannot even decode (not JSON, not an oslo
    envelope) with a traceback, then skips it. That is bad input, not a bug: one named
    warning line instead (the dispatcher's refusals are `rpc_message_refused`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage().startswith("Failed to process message"):
            err = record.exc_info[1]
            log.warning("rpc_message_unreadable", problem=f"{type(err).__name__}: {err}"[:300])
            return False
        return True


def _install_unreadable_filter() -> None:
    """Once per process (a Messaging is made once per daemon; tests make many)."""
    rabbit = logging.getLogger("oslo.messaging._drivers.impl_rabbit")
    if not any(isinstance(f, _UnreadableMessage) for f in rabbit.filters):
        rabbit.addFilter(_UnreadableMessage())


COMPUTE_TOPIC = "compute"
L2_TOPIC = "l2-agent"
# Served by every agents-controller replica of a deployment (host None): the agents'
# resync call `desired_state` (docs/api.md, "Agents' side").
CONTROLLER_TOPIC = "controller"
AGENT_KINDS = {
    COMPUTE_TOPIC: "compute-agent",
    L2_TOPIC: "l2-agent",
    CONTROLLER_TOPIC: "agents-controller",
}

# Bounds of every notification queue `<topic>.<priority>` this module declares (the
# values tools/install.sh's broker policy used to set): the oldest message is dropped
# past the length, and a message waits at most the TTL. A vif event older than an hour
# is of no use to a build (its vif wait ended long before); agent events are consumed
# from the controller's own queue (`EventConsumer`), never from these.
NOTIFY_QUEUE_MAX_LENGTH = 10_000
NOTIFY_QUEUE_TTL_S = 3600
NOTIFY_PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")


def vif_events_topic(host: str) -> str:
    return f"vif_events.{host}"


@dataclass(frozen=True)
class InvalidPayload:
    """What the serializer hands an endpoint when a message on the wire did not validate.

    The endpoint decides what to report; the raw value is kept so it can salvage an
    instance uuid to address an error notification.
    """

    error: InvalidMessage
    raw: object


class ModelSerializer(oslo_messaging.Serializer):  # type: ignore[misc]
    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        if isinstance(entity, Message):
            return envelope(entity)
        return entity

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        if is_envelope(entity):
            try:
                return open_envelope(entity)
            except InvalidMessage as err:
                return InvalidPayload(error=err, raw=entity)
        return entity

    def serialize_context(self, ctxt: Any) -> Any:
        return dict(ctxt) if isinstance(ctxt, dict) else {}

    def deserialize_context(self, ctxt: Any) -> Any:
        return dict(ctxt) if isinstance(ctxt, dict) else {}


def expect(value: object, model: type[Message]) -> Message:
    """At an endpoint: turn what arrived into `model`, or raise InvalidMessage."""
    if isinstance(value, model):
        return value
    if isinstance(value, InvalidPayload):
        raise value.error
    if isinstance(value, Message):
        raise InvalidMessage(schema=value.SCHEMA, problem=f"expected {model.SCHEMA}")
    return open_envelope(value, expect=model)


_F = TypeVar("_F", bound=Callable[..., Any])


def expected_errors(*errors: type[BaseException]) -> Callable[[_F], _F]:
    """Mark errors a call endpoint raises as answers ("no such instance"), not failures.

    The caller still gets them as RemoteError; the server logs them at debug level instead
    of with a traceback (oslo.messaging's expected_exceptions).
    """
    decorator: Callable[[_F], _F] = oslo_messaging.expected_exceptions(*errors)
    return decorator


class _GuardedDispatcher(om_dispatcher.RPCDispatcher):  # type: ignore[misc]
    """oslo's dispatcher, refusing a malformed message with one named log line.

    oslo logs a traceback for an unknown method, a version it cannot serve, args that
    are not an object or arguments the method does not take, all raised inside its own
    dispatch. Here each is checked first (or caught) and refused as an InvalidMessage:
    one warning line naming the method and the problem; a caller gets the error back,
    without a traceback in anyone's log.
    """

    def dispatch(self, incoming: Any) -> Any:
        message = incoming.message if isinstance(incoming.message, dict) else {}
        method = message.get("method")
        problem = self._problem(method, message.get("args", {}))
        if problem is None:
            try:
                return super().dispatch(incoming)
            except (om_dispatcher.NoSuchMethod, om_dispatcher.UnsupportedVersion) as err:
                problem = str(err)
        log.warning("rpc_message_refused", method=str(method)[:80], problem=problem)
        try:
            raise InvalidMessage(schema=str(method)[:80], problem=problem)
        except InvalidMessage:
            raise om_dispatcher.ExpectedException() from None

    def _problem(self, method: object, args: object) -> str | None:
        if not isinstance(method, str) or not method or method.startswith("_"):
            return f"method must be a public method name, got {method!r:.80}"
        if not isinstance(args, dict):
            return f"args must be an object, got {type(args).__name__}"
        found = [getattr(e, method) for e in self.endpoints if hasattr(e, method)]
        if not found:
            return f"unknown method {method!r}"
        for fn in found:
            try:
                inspect.signature(fn).bind({}, **{str(k): v for k, v in args.items()})
                return None
            except TypeError as err:
                problem = f"arguments do not fit {method}: {err}"
        return problem


class RpcServer:
    def __init__(self, server: Any) -> None:
        self._server = server

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        """Stop consuming: no new message is taken after this returns."""
        self._server.stop()

    def wait(self) -> None:
        """Wait for in-flight endpoint calls to finish."""
        self._server.wait()


class RpcClient:
    """Client for one agent kind on one host, or (host None) for a deployment-wide target."""

    def __init__(self, client: Any, topic: str, host: str | None, timeout: float) -> None:
        self._client = client
        self.topic = topic
        self.host = host
        self.timeout = timeout

    @property
    def kind(self) -> str:
        return AGENT_KINDS.get(self.topic, self.topic)

    @property
    def _where(self) -> str:
        return self.host if self.host is not None else "any"

    def cast(self, method: str, message: Message, request_id: str | None = None) -> None:
        try:
            self._client.cast({"request_id": request_id}, method, payload=message)
        except oslo_messaging.MessageUndeliverable as err:
            raise NoAgentForHost(
                kind=self.kind, host=self._where, problem="no queue for it on the broker"
            ) from err
        except oslo_messaging.MessageDeliveryFailure as err:
            raise BrokerUnreachable(url="(configured transport)", problem=str(err)) from err

    def call(
        self,
        method: str,
        message: Message | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Call `method`; the reply comes back validated (a Message, or InvalidPayload).

        Raises NoAgentForHost (nobody ever served the target), RemoteCallTimeout,
        BrokerUnreachable, or RemoteError (the endpoint raised; `remote_type` names the
        exception class, e.g. "InvalidMessage" for a request it refused).
        """
        client = self._client.prepare(timeout=timeout or self.timeout)
        kwargs: dict[str, Any] = {} if message is None else {"payload": message}
        try:
            return client.call({"request_id": request_id}, method, **kwargs)
        except oslo_messaging.MessagingTimeout as err:
            raise RemoteCallTimeout(
                kind=self.kind, host=self._where, method=method, timeout=timeout or self.timeout
            ) from err
        except oslo_messaging.MessageUndeliverable as err:
            raise NoAgentForHost(
                kind=self.kind, host=self._where, problem="no queue for it on the broker"
            ) from err
        except oslo_messaging.MessageDeliveryFailure as err:
            raise BrokerUnreachable(url="(configured transport)", problem=str(err)) from err
        except oslo_messaging.RemoteError as err:
            raise RemoteError(
                kind=self.kind,
                host=self._where,
                method=method,
                problem=f"{err.exc_type}: {err.value}",
                remote_type=err.exc_type,
            ) from err


class Messaging:
    """Transports and factories for one process. Build once in main(), pass down, close()."""

    def __init__(self, settings: MessagingSettings, dispatch_threads: int | None = None) -> None:
        """`dispatch_threads`: oslo's endpoint thread pool (default 64); 1 keeps arrival order."""
        _install_unreadable_filter()
        self.settings = settings
        self.conf = cfg.ConfigOpts()
        for group, options in om_opts.list_opts():
            self.conf.register_opts(options, group=group)
        # list_opts() omits these two groups, yet every cast/call reads them (docs/platform.md).
        self.conf.register_opts(om_tracing.oslo_messaging_tracing, group="oslo_messaging_tracing")
        self.conf.register_opts(om_metrics.oslo_messaging_metrics, group="oslo_messaging_metrics")
        self.conf([], project="agents", default_config_files=[])
        self.conf.set_override("control_exchange", settings.control_exchange)
        rabbit = "oslo_messaging_rabbit"
        if settings.queue_type == "quorum":
            self.conf.set_override("rabbit_quorum_queue", True, group=rabbit)
        else:
            self.conf.set_override("amqp_durable_queues", settings.durable_queues, group=rabbit)
        self.conf.set_override(
            "heartbeat_timeout_threshold", settings.heartbeat_timeout, group=rabbit
        )
        self.conf.set_override("direct_mandatory_flag", True, group=rabbit)
        if dispatch_threads is not None:
            self.conf.set_override("executor_thread_pool_size", dispatch_threads)
        self.serializer = ModelSerializer()
        self._rpc_transport: Any = None
        self._notifiers: list[Notifier] = []
        self._lock = threading.Lock()

    # the transport is opened lazily: a process that only notifies never needs it
    @property
    def rpc_transport(self) -> Any:
        with self._lock:
            if self._rpc_transport is None:
                self._rpc_transport = oslo_messaging.get_rpc_transport(
                    self.conf, url=self.settings.transport_url
                )
            return self._rpc_transport

    def _target(self, topic: str, host: str | None) -> Any:
        """The per-host target, or (host None) the deployment-wide one.

        oslo needs a server name on a server's target, and names a topic's own queue
        `<topic>` whatever the exchange, so a topic queue would be shared by every
        deployment on the broker. The deployment-wide target therefore uses the control
        exchange as its server name: every replica of one deployment consumes
        `<topic>.<control_exchange>`, and another deployment never answers for it.
        """
        return oslo_messaging.Target(
            topic=topic, server=host if host is not None else self.settings.control_exchange
        )

    def rpc_server(self, topic: str, host: str | None, endpoints: Iterable[object]) -> RpcServer:
        """Serve `endpoints` on `topic` for `host`; host None: deployment-wide (replicas
        share the work, any one of them answers a call)."""
        dispatcher = _GuardedDispatcher(
            list(endpoints), self.serializer, oslo_messaging.DefaultRPCAccessPolicy
        )
        server = om_server.RPCServer(self.rpc_transport, self._target(topic, host), dispatcher)
        return RpcServer(server)

    def rpc_client(self, topic: str, host: str | None, timeout: float | None = None) -> RpcClient:
        client = oslo_messaging.get_rpc_client(
            self.rpc_transport,
            self._target(topic, host),
            serializer=self.serializer,
            timeout=timeout or self.settings.rpc_timeout,
            retry=None if self.settings.send_retry < 0 else self.settings.send_retry,
            transport_options=oslo_messaging.TransportOptions(at_least_once=True),
        )
        return RpcClient(client, topic, host, timeout or self.settings.rpc_timeout)

    def controller_client(self, timeout: float | None = None) -> RpcClient:
        """A client of this deployment's agents-controller (any replica answers).

        The agents' resync on start::

            reply = messaging.controller_client(10).call(
                "desired_state", DesiredStateRequest(host=host, kind="compute"))
            state = expect(reply, DesiredState)

        NoAgentForHost: no controller ever ran in this deployment (no queue);
        RemoteCallTimeout: none is running now; RemoteError: it refused the request
        (`remote_type` "InvalidMessage") or could not read its database.
        """
        return self.rpc_client(CONTROLLER_TOPIC, None, timeout)

    def desired_state(self, host: str, kind: AgentKind, timeout: float = 5.0) -> DesiredState:
        """An agent's resync: ask the controller what `host` should have."""
        reply = self.controller_client(timeout).call(
            "desired_state", DesiredStateRequest(host=host, kind=kind)
        )
        desired = expect(reply, DesiredState)
        assert isinstance(desired, DesiredState)
        return desired

    def fanout_cast(self, topic: str, method: str, request_id: str | None = None) -> None:
        """Cast `method` (no payload) to every live server of `topic`.

        Every oslo RPC server also consumes its topic's fanout queue (exchange
        `<topic>_fanout`, which oslo does NOT scope by control_exchange: servers of
        other deployments on the same broker get it too, so use it only for
        harmless, idempotent methods such as report_state). No mandatory flag: a
        fanout nobody hears is simply nobody's answer.
        """
        client = oslo_messaging.get_rpc_client(
            self.rpc_transport,
            oslo_messaging.Target(topic=topic, fanout=True),
            serializer=self.serializer,
            retry=None if self.settings.send_retry < 0 else self.settings.send_retry,
        )
        try:
            client.cast({"request_id": request_id}, method)
        except oslo_messaging.MessageDeliveryFailure as err:
            raise BrokerUnreachable(url="(configured transport)", problem=str(err)) from err

    def notifier(self, publisher_id: str, topic: str) -> Notifier:
        """Notifications on `topic`, one at a time, confirmed by the broker (thread-safe)."""
        notifier = Notifier(self.settings, publisher_id, topic)
        with self._lock:
            self._notifiers.append(notifier)
        return notifier

    def batch_notifier(self, publisher_id: str, topic: str) -> BatchNotifier:
        return BatchNotifier(self.settings, publisher_id, topic)

    def notification_listener(
        self,
        topics: Iterable[str],
        endpoints: Iterable[object],
        pool: str | None = None,
        allow_requeue: bool = False,
    ) -> RpcServer:
        """Consume notifications of `topics` like oslo's listener (same endpoint methods:
        `info(ctxt, publisher_id, event_type, payload, metadata)`, ...), from bounded
        queues; one thread, in order of arrival, acknowledged after the endpoints ran."""
        return RpcServer(
            NotificationListener(
                self.settings,
                topics,
                endpoints,
                serializer=self.serializer,
                pool=pool,
                allow_requeue=allow_requeue,
            )
        )

    def event_watcher(self, routing_keys: Iterable[str]) -> EventWatcher:
        return EventWatcher(self.settings, routing_keys)

    def close(self) -> None:
        with self._lock:
            if self._rpc_transport is not None:
                self._rpc_transport.cleanup()
            self._rpc_transport = None
            notifiers, self._notifiers = self._notifiers, []
        for notifier in notifiers:
            notifier.close()


# --------------------------------------------------------------------------- kombu side

# (priority "info" | "error", event type, payload, request id)
Notification = tuple[str, str, Message, str | None]


def _durable(settings: MessagingSettings) -> bool:
    return settings.durable_queues or settings.queue_type == "quorum"


def _exchange(settings: MessagingSettings) -> kombu.Exchange:
    """The control exchange, declared exactly as oslo declares it (topic, durable as its
    queues): a redeclare with other flags would be refused."""
    return kombu.Exchange(
        settings.control_exchange, type="topic", durable=_durable(settings), auto_delete=False
    )


def bounded_queue_args(
    settings: MessagingSettings,
    max_length: int = NOTIFY_QUEUE_MAX_LENGTH,
    ttl_s: float = NOTIFY_QUEUE_TTL_S,
) -> dict[str, Any]:
    """Arguments of a queue that cannot grow without bound while nobody consumes it."""
    args: dict[str, Any] = {"x-max-length": max_length, "x-message-ttl": int(ttl_s * 1000)}
    if settings.queue_type == "quorum":
        args["x-queue-type"] = "quorum"
    return args


def notification_queue(settings: MessagingSettings, key: str) -> kombu.Queue:
    """The queue `<topic>.<priority>` as every publisher and listener here declares it."""
    exchange = _exchange(settings)
    return kombu.Queue(
        name=key,
        exchange=exchange,
        routing_key=key,
        durable=_durable(settings),
        auto_delete=False,
        queue_arguments=bounded_queue_args(settings),
    )


def _is_precondition_failed(err: BaseException) -> bool:
    return getattr(err, "code", None) == 406 or "PRECONDITION_FAILED" in str(err)


def declare_queue(conn: Any, queue: kombu.Queue) -> bool:
    """Declare `queue` with its exchange and bindings on a channel of its own.

    True when it now carries the arguments asked for. A queue of that name declared
    earlier with other arguments (by a release that let oslo declare it, or by hand)
    makes RabbitMQ refuse the declare (406 PRECONDITION_FAILED, which closes the
    channel); that queue is then used as it is, bound like the one asked for, and a
    warning names it (delete it while nothing publishes to it, and the next declare
    bounds it). False then. Any other error propagates.
    """
    channel = conn.channel()
    try:
        queue.bind(channel).declare()
        return True
    except Exception as err:
        if not _is_precondition_failed(err):
            raise
        problem = str(err)
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    channel = conn.channel()
    try:
        channel.queue_declare(queue=queue.name, passive=True)
        exchanges = {b.exchange.name: b.exchange for b in queue.bindings if b.exchange}
        if queue.exchange is not None and queue.exchange.name:
            exchanges[queue.exchange.name] = queue.exchange
        for exchange in exchanges.values():
            exchange.bind(channel).declare()
        if queue.exchange is not None and queue.exchange.name and queue.routing_key:
            channel.queue_bind(queue.name, queue.exchange.name, queue.routing_key)
        for b in queue.bindings:
            if b.exchange is not None:
                channel.queue_bind(queue.name, b.exchange.name, b.routing_key or "")
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    log.warning(
        "queue_not_bounded",
        queue=queue.name,
        problem=problem,
        hint="declared earlier with other arguments; delete it (rabbitmqctl delete_queue)"
        " while its consumer is stopped and it is redeclared with bounds",
    )
    return False


class BatchNotifier:
    """Publish notifications as oslo's messagingv2 Notifier does, many per confirm round trip.

    oslo.messaging's rabbit driver opens every connection with publisher confirms
    (`confirm_publish: True` in impl_rabbit, not configurable) and waits for the
    broker's basic.ack after each notification: one round trip and about 0.5 ms of
    Python per event. This sends a batch on one channel in confirm mode and waits once
    for the acks (RabbitMQ acks with multiple=True). Any nack, lost connection or
    timeout publishes the whole batch again, in its order, on a fresh connection: at
    least once, never reordered on its channel; after `send_retry` attempts it raises
    BrokerUnreachable.

    Same wire as oslo: the control exchange (topic, durable as oslo declares it),
    routing key `<topic>.<priority>`, body {"oslo.version": "2.0", "oslo.message": json},
    so `NotificationListener`, `EventConsumer` and `EventWatcher` read it. The queue
    `<topic>.<priority>` is declared before the first publish, as oslo's Notifier does
    (a notification published before any consumer declared its queue waits there), but
    with bounds (`bounded_queue_args`): nobody may consume it.
    Not thread-safe: one per sending thread (or `Notifier`, which locks).
    """

    def __init__(self, settings: MessagingSettings, publisher_id: str, topic: str) -> None:
        self._settings = settings
        self.publisher_id = publisher_id
        self.topic = topic
        self._exchange = _exchange(settings)
        self._conn: Any = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._outstanding: set[int] = set()
        self._nacked = False
        self._next_tag = 1
        self.unbounded: set[str] = set()  # queues found declared without our bounds

    def publish(self, batch: Sequence[Notification], timeout: float = 10.0) -> None:
        """Publish `batch` in order and return once the broker confirmed all of it."""
        attempts = 0
        while True:
            try:
                self._publish_once(batch, timeout)
                return
            except Exception as err:  # amqp raises many kinds; each means "not confirmed"
                self._drop()
                attempts += 1
                retry = self._settings.send_retry
                if retry >= 0 and attempts > retry:
                    raise BrokerUnreachable(
                        url=self._settings.transport_url.split("@")[-1],
                        problem=f"{type(err).__name__}: {err}",
                    ) from err
                # The first retry goes at once (the usual cause is a connection the
                # broker closed while idle); then oslo's 1, 2, 4 s backoff.
                time.sleep(0 if attempts == 1 else min(2 ** (attempts - 2), 4))

    def _connect(self) -> None:
        self._conn = kombu.Connection(
            _kombu_url(self._settings.transport_url),
            connect_timeout=5,
            heartbeat=0,
        )
        self._conn.ensure_connection(max_retries=1, timeout=5)
        self._channel = self._conn.default_channel
        self._channel.confirm_select()
        self._channel.events["basic_ack"].add(self._on_ack)
        self._channel.events["basic_nack"].add(self._on_nack)
        self._next_tag = 1  # delivery tags count from 1 on a channel put in confirm mode
        self._declared = set()

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._outstanding = {t for t in self._outstanding if t > tag}
        else:
            self._outstanding.discard(tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked = True

    def _publish_once(self, batch: Sequence[Notification], timeout: float) -> None:
        if self._conn is None:
            self._connect()
        self._nacked = False
        channel = self._channel
        for priority, event_type, payload, request_id in batch:
            key = f"{self.topic}.{priority}"
            if key not in self._declared:
                # on a channel of its own: a refused declare must not close this one
                if not declare_queue(self._conn, notification_queue(self._settings, key)):
                    self.unbounded.add(key)
                self._declared.add(key)
            message = {
                "message_id": str(uuid.uuid4()),
                "publisher_id": self.publisher_id,
                "event_type": event_type,
                "priority": priority.upper(),
                "payload": envelope(payload),
                "timestamp": str(datetime.now(UTC).replace(tzinfo=None)),
                "_unique_id": uuid.uuid4().hex,
                "_context_request_id": request_id,
            }
            # what kombu's Producer would send (json, persistent), without its per-call cost
            body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)})
            prepared = channel.prepare_message(
                body,
                content_type="application/json",
                content_encoding="utf-8",
                properties={"delivery_mode": 2},
            )
            self._outstanding.add(self._next_tag)
            self._next_tag += 1
            channel.basic_publish(prepared, exchange=self._exchange.name, routing_key=key)
        deadline = time.monotonic() + timeout
        while self._outstanding and not self._nacked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no publisher confirm in time")
            self._conn.drain_events(timeout=remaining)
        if self._nacked:
            raise RuntimeError("the broker nacked a notification")

    def _drop(self) -> None:
        self._outstanding = set()
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def close(self) -> None:
        self._drop()


class Notifier:
    """Notifications one at a time, each confirmed by the broker before `info` returns.

    What oslo's messagingv2 Notifier did, with two differences: the queue it declares
    is bounded (see BatchNotifier), and a notification that could not be published
    after `[messaging] send_retry` attempts raises BrokerUnreachable instead of being
    logged and dropped. Thread-safe (one connection, used under a lock).
    """

    def __init__(self, settings: MessagingSettings, publisher_id: str, topic: str) -> None:
        self._publisher = BatchNotifier(settings, publisher_id, topic)
        self._lock = threading.Lock()

    @property
    def unbounded(self) -> set[str]:
        return self._publisher.unbounded

    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        with self._lock:
            self._publisher.publish([("info", event_type, payload, request_id)])

    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        with self._lock:
            self._publisher.publish([("error", event_type, payload, request_id)])

    def close(self) -> None:
        with self._lock:
            self._publisher.close()


def _kombu_url(transport_url: str) -> str:
    """oslo's `rabbit://u:p@h1:5672,u:p@h2:5672/vhost` as kombu's failover list.

    kombu separates alternative brokers with ';', each a full URL, where oslo lists
    hosts with ',' in one netloc; a plain scheme swap would hand kombu one bogus host.
    """
    if not transport_url.startswith("rabbit://"):
        return transport_url
    rest = transport_url[len("rabbit://") :]
    netloc, slash, tail = rest.partition("/")
    hosts = [h for h in netloc.split(",") if h]
    return ";".join(f"amqp://{h}{slash}{tail}" for h in hosts) or "amqp://"


def probe_broker(settings: MessagingSettings, timeout: float = 3.0) -> None:
    """Raise BrokerUnreachable unless the broker accepts a connection within `timeout`."""
    url = _kombu_url(settings.transport_url)
    shown = settings.transport_url.split("@")[-1]
    if not url.startswith("amqp://"):
        return
    try:
        with kombu.Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout)
    except (TimeoutError, OSError) as err:
        raise BrokerUnreachable(url=shown, problem=str(err) or type(err).__name__) from err
    except Exception as err:  # amqp raises many kinds (AccessRefused, ...); all mean "no"
        raise BrokerUnreachable(url=shown, problem=f"{type(err).__name__}: {err}") from err


def delete_queues(
    transport_url: str, queues: Iterable[str], exchange: str | None = None, timeout: float = 3.0
) -> None:
    """Delete `queues` and then `exchange` where they exist (test and lab clean-up).

    What is already gone is fine, and so is a broker that is down. Deletes only what
    it is told: other deployments share the broker.
    """
    with (
        contextlib.suppress(Exception),
        kombu.Connection(_kombu_url(transport_url), connect_timeout=timeout) as conn,
    ):
        channel: Any = conn.channel()
        for queue in queues:
            try:
                channel.queue_delete(queue)
            except Exception:  # a channel error closes the channel: take a new one
                channel = conn.channel()
        if exchange:
            with contextlib.suppress(Exception):
                channel.exchange_delete(exchange)


@dataclass(frozen=True)
class QueueState:
    name: str
    exists: bool
    messages: int = 0
    consumers: int = 0


def queue_state(settings: MessagingSettings, name: str, timeout: float = 3.0) -> QueueState:
    """Passive declare: does queue `name` exist, and how many consumers read it?

    Tells "no agent ever served this host" (no queue) from "its agent is down"
    (queue, no consumer) without the management plugin.
    """
    try:
        with kombu.Connection(_kombu_url(settings.transport_url), connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout)
            channel = conn.channel()
            try:
                ok = channel.queue_declare(queue=name, passive=True)
            except Exception as err:  # amqp.exceptions.NotFound closes the channel
                if "NOT_FOUND" in str(err) or getattr(err, "code", None) == 404:
                    return QueueState(name, exists=False)
                raise
            return QueueState(
                name, exists=True, messages=ok.message_count, consumers=ok.consumer_count
            )
    except (TimeoutError, OSError) as err:
        raise BrokerUnreachable(
            url=settings.transport_url.split("@")[-1], problem=str(err)
        ) from err


@dataclass(frozen=True)
class Event:
    """One notification as a watcher sees it."""

    event_type: str
    priority: str
    publisher_id: str
    timestamp: str
    payload: Any  # a validated Message, or the raw payload if it did not validate
    request_id: str | None


def decode_notification(body: Any) -> Event | None:
    """An oslo messagingv2 notification as an Event; None when it is not one.

    A payload envelope that does not validate is kept raw (`payload` is then a dict).
    """
    try:
        outer = body if isinstance(body, dict) else json.loads(body)
        inner = outer.get("oslo.message")
        msg = json.loads(inner) if isinstance(inner, str) else outer
        payload = msg.get("payload")
        if is_envelope(payload):
            with contextlib.suppress(InvalidMessage):
                payload = open_envelope(payload)
        ctxt = {k[len("_context_") :]: v for k, v in msg.items() if k.startswith("_context_")}
        return Event(
            event_type=str(msg.get("event_type")),
            priority=str(msg.get("priority", "INFO")).lower(),
            publisher_id=str(msg.get("publisher_id")),
            timestamp=str(msg.get("timestamp")),
            payload=payload,
            request_id=ctxt.get("request_id"),
        )
    except (ValueError, AttributeError, TypeError):
        return None


class EventWatcher:
    """Consume notifications on a private exclusive queue: sees every event, leaves nothing.

    oslo.messaging publishes notification `T` with priority `p` to the control exchange
    under routing key `T.p`; binding our own queue to the same exchange and key gives
    us a copy without taking events away from other listeners.
    """

    def __init__(self, settings: MessagingSettings, routing_keys: Iterable[str]) -> None:
        self._settings = settings
        self._conn = kombu.Connection(_kombu_url(settings.transport_url), connect_timeout=5)
        self._conn.ensure_connection(max_retries=1, timeout=5)
        exchange = kombu.Exchange(
            settings.control_exchange,
            type="topic",
            durable=settings.durable_queues or settings.queue_type == "quorum",
        )
        self._queue = kombu.Queue(
            name="",
            exchange=exchange,
            bindings=[kombu.binding(exchange, routing_key=key) for key in routing_keys],
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        self._pending: list[Event] = []
        self._consumer = self._conn.Consumer(
            self._queue, callbacks=[self._on_message], accept=["json"], no_ack=True
        )
        self._consumer.consume()

    def _on_message(self, body: Any, message: Any) -> None:
        event = decode_notification(body)
        if event is not None:  # a watcher ignores what it cannot read
            self._pending.append(event)

    def events(self, timeout: float) -> Iterator[Event]:
        """Yield events as they arrive, for up to `timeout` seconds of silence per wait."""
        while True:
            while self._pending:
                yield self._pending.pop(0)
            try:
                self._conn.drain_events(timeout=timeout)
            except TimeoutError:
                return

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` for at least one event, return all that arrived."""
        if not self._pending:
            try:
                self._conn.drain_events(timeout=timeout)
                while True:  # take whatever else is already buffered
                    self._conn.drain_events(timeout=0.001)
            except TimeoutError:
                pass
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        # closing a dead connection must not mask the caller's error
        with contextlib.suppress(Exception):
            self._conn.release()


@contextmanager
def watching(settings: MessagingSettings, routing_keys: Iterable[str]) -> Iterator[EventWatcher]:
    watcher = EventWatcher(settings, routing_keys)
    try:
        yield watcher
    finally:
        watcher.close()


Callback = Callable[[Event], None]


class RetryLater(Exception):
    """Raised by an EventConsumer handler: the event could not be taken now (database
    down); it goes back to the queue and is offered again after a pause."""


class _QueueConsumer:
    """Consume `queues` on one thread, reconnecting; each declared by `declare_queue`.

    `on_message(body, message)` acks, requeues or rejects each message itself.
    """

    def __init__(
        self,
        settings: MessagingSettings,
        queues: Sequence[kombu.Queue],
        on_message: Callable[[Any, Any], None],
        *,
        prefetch: int,
        name: str,
    ) -> None:
        from kombu.mixins import ConsumerMixin

        self.queues = list(queues)
        self.name = name
        self.unbounded: set[str] = set()  # queues found declared without our bounds
        outer = self

        class _Mixin(ConsumerMixin):  # type: ignore[misc]
            def __init__(self, connection: Any) -> None:
                self.connection = connection
                self.consuming = threading.Event()
                self.last_error = ""

            def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
                # Declared here, on every (re)connect, each on a channel of its own; the
                # consumer itself then declares nothing (a refused redeclare of an
                # older unbounded queue would close the consuming channel).
                ready = []
                for queue in outer.queues:
                    if not declare_queue(channel.connection, queue):
                        outer.unbounded.add(queue.name)
                    q = queue.bind(channel)
                    q.no_declare = True
                    ready.append(q)
                return [
                    consumer_cls(
                        queues=ready,
                        callbacks=[on_message],
                        accept=["json"],
                        prefetch_count=prefetch,
                    )
                ]

            def on_consume_ready(self, connection: Any, channel: Any, consumers: Any) -> None:
                self.consuming.set()

            def on_connection_error(self, exc: BaseException, interval: float) -> None:
                self.consuming.clear()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "broker_connect_failed",
                    consumer=outer.name,
                    error=self.last_error,
                    retry_in_s=interval,
                )

        self._conn = kombu.Connection(_kombu_url(settings.transport_url), connect_timeout=5)
        self._mixin = _Mixin(self._conn)
        self._thread: threading.Thread | None = None

    def start(self, ready_timeout: float | None = None) -> None:
        """Consume; return once consuming. Without `ready_timeout` it waits for the broker
        as long as it takes (a daemon's start: READY comes after, and SIGTERM interrupts
        the wait), saying why every 10 s; with one, BrokerUnreachable after it."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        names = ", ".join(q.name for q in self.queues)
        waited = 0.0
        while not self._mixin.consuming.wait(10.0 if ready_timeout is None else ready_timeout):
            waited += 10.0
            if ready_timeout is not None:
                raise BrokerUnreachable(
                    url=str(self._conn.as_uri()).split("@")[-1],
                    problem=f"could not consume {names} within {ready_timeout:.0f}s"
                    + (f" ({self._mixin.last_error})" if self._mixin.last_error else ""),
                )
            log.warning(
                "waiting_for_broker", consumer=names, waited_s=waited, error=self._mixin.last_error
            )

    def _run(self) -> None:
        # kombu's loop reconnects after connection errors; a channel error (a queue
        # deleted under it, a refused declare) ends it: start again after a pause.
        while not self._mixin.should_stop:
            try:
                self._mixin.run()
            except Exception as err:
                self._mixin.consuming.clear()
                log.warning("consumer_restarting", consumer=self.name, error=str(err))
                time.sleep(1.0)

    def consuming(self) -> bool:
        return self._mixin.consuming.is_set()

    def stop(self) -> None:
        """Take no new message; the one in hand is finished (see wait())."""
        self._mixin.should_stop = True

    def wait(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(Exception):
            self._conn.release()


class EventConsumer:
    """A durable, shared queue of notifications, acknowledged after the handler ran.

    For a service that must act on every event exactly as often as it can prove it did
    (the controller): the queue outlives the process, so events published while it is
    down wait for it; a message is acked only after `handler` returned, so a crash
    mid-way gets it redelivered; replicas sharing `queue_name` share the work. The
    queue carries its own bounds (`x-max-length`, `x-message-ttl`) so it cannot grow
    without limit while nobody consumes it.

    `handler` returning means done (ack). RetryLater: requeued after `retry_pause`
    seconds (a database outage must not spin). Any other exception: logged by the
    caller's handler wrapper and acked, since a poison message retried forever would
    stop every event behind it.
    """

    def __init__(
        self,
        settings: MessagingSettings,
        queue_name: str,
        routing_keys: Iterable[str],
        handler: Callable[[Event], None],
        on_error: Callable[[BaseException, Any], None],
        *,
        max_length: int = 1_000_000,
        ttl_s: float = 7 * 86400,
        prefetch: int = 64,
        retry_pause: float = 1.0,
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._retry_pause = retry_pause
        self._stop = threading.Event()
        exchange = _exchange(settings)
        self.queue = kombu.Queue(
            name=queue_name,
            exchange=exchange,
            bindings=[kombu.binding(exchange, routing_key=key) for key in routing_keys],
            durable=True,
            auto_delete=False,
            queue_arguments=bounded_queue_args(settings, max_length, ttl_s),
        )
        self._consumer = _QueueConsumer(
            settings, [self.queue], self._on_message, prefetch=prefetch, name="events"
        )

    def _on_message(self, body: Any, message: Any) -> None:
        event = decode_notification(body)
        if event is None:
            self._on_error(
                InvalidMessage(schema="notification", problem="not an oslo notification"), body
            )
            message.ack()
            return
        try:
            self._handler(event)
        except RetryLater:
            if not self._stop.wait(self._retry_pause):
                message.requeue()
            return
        except Exception as err:  # a poison message is reported and dropped, never spun
            self._on_error(err, event)
        message.ack()

    def start(self, ready_timeout: float | None = None) -> None:
        self._consumer.start(ready_timeout)

    def consuming(self) -> bool:
        return self._consumer.consuming()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._consumer.stop()
        self._consumer.wait(timeout)


class NotificationListener:
    """oslo's notification listener, on kombu, from queues that carry their own bounds.

    Consumes `<topic>.<priority>` for every topic and every priority some endpoint has
    a method for (oslo's rule), declared as publishers here declare them
    (`notification_queue`); with `pool`, one queue of that name bound to all those keys.
    Each message goes to every endpoint's method of its priority, with oslo's
    arguments `(ctxt, publisher_id, event_type, payload, metadata)`: `ctxt` is the
    request context (`request_id`), `payload` the validated Message (or InvalidPayload),
    `metadata` {"message_id", "timestamp"}. One thread, in order of arrival; a message
    is acknowledged after its endpoints returned, so a crash mid-way gets it again;
    after stop() no message reaches an endpoint (those delivered meanwhile go back to
    the queue).
    An endpoint that raises is logged and the message acknowledged (requeued after a
    pause when `allow_requeue`); one returning "requeue" (oslo's
    NotificationResult.REQUEUE) is requeued when `allow_requeue`.
    """

    def __init__(
        self,
        settings: MessagingSettings,
        topics: Iterable[str],
        endpoints: Iterable[object],
        *,
        serializer: ModelSerializer | None = None,
        pool: str | None = None,
        allow_requeue: bool = False,
        retry_pause: float = 1.0,
    ) -> None:
        self._endpoints = list(endpoints)
        self._serializer = serializer or ModelSerializer()
        self._allow_requeue = allow_requeue
        self._retry_pause = retry_pause
        self._stopping = threading.Event()
        priorities = [
            p
            for p in NOTIFY_PRIORITIES
            if any(callable(getattr(e, p, None)) for e in self._endpoints)
        ]
        keys = [f"{t}.{p}" for t in topics for p in priorities]
        if not keys:
            raise ValueError("no endpoint has a method for any notification priority")
        if pool is None:
            queues = [notification_queue(settings, key) for key in keys]
        else:
            exchange = _exchange(settings)
            queues = [
                kombu.Queue(
                    name=pool,
                    exchange=exchange,
                    bindings=[kombu.binding(exchange, routing_key=key) for key in keys],
                    durable=_durable(settings),
                    auto_delete=False,
                    queue_arguments=bounded_queue_args(settings),
                )
            ]
        self._consumer = _QueueConsumer(
            settings, queues, self._on_message, prefetch=64, name="notifications"
        )

    @property
    def queues(self) -> list[str]:
        return [q.name for q in self._consumer.queues]

    @property
    def unbounded(self) -> set[str]:
        return self._consumer.unbounded

    def _on_message(self, body: Any, message: Any) -> None:
        if self._stopping.is_set():
            # Stopped: not taken. Left unacknowledged, it goes back to the queue when
            # the connection closes (wait()) and waits for the next start.
            return
        try:
            outer = body if isinstance(body, dict) else json.loads(body)
            inner = outer.get("oslo.message")
            msg = json.loads(inner) if isinstance(inner, str) else outer
            if not isinstance(msg, dict) or "event_type" not in msg:
                raise ValueError("no event_type")
        except (ValueError, AttributeError, TypeError) as err:
            log.warning("notification_unreadable", error=str(err))
            message.ack()
            return
        key = str((message.delivery_info or {}).get("routing_key", ""))
        priority = str(msg.get("priority") or key.rsplit(".", 1)[-1]).lower()
        ctxt = {k[len("_context_") :]: v for k, v in msg.items() if k.startswith("_context_")}
        payload = self._serializer.deserialize_entity(ctxt, msg.get("payload"))
        metadata = {"message_id": msg.get("message_id"), "timestamp": msg.get("timestamp")}
        requeue = False
        for endpoint in self._endpoints:
            method = getattr(endpoint, priority, None)
            if not callable(method):
                continue
            try:
                result = method(
                    dict(ctxt),
                    str(msg.get("publisher_id")),
                    str(msg.get("event_type")),
                    payload,
                    metadata,
                )
            except Exception as err:
                log.exception(
                    "notification_endpoint_failed",
                    event_type=msg.get("event_type"),
                    error=str(err),
                )
                result = "requeue"
            requeue = requeue or result == "requeue"
        if requeue and self._allow_requeue:
            # a requeued message comes back at once (docs/platform.md): pause first
            if not self._stopping.wait(self._retry_pause):
                message.requeue()
            return
        message.ack()

    def start(self, ready_timeout: float | None = None) -> None:
        self._consumer.start(ready_timeout)

    def consuming(self) -> bool:
        return self._consumer.consuming()

    def stop(self) -> None:
        self._stopping.set()
        self._consumer.stop()

    def wait(self) -> None:
        self._consumer.wait()
