"""RPC and notification plumbing: the only importer of oslo.messaging, oslo.config and kombu.

What it owns:
- one private `cfg.ConfigOpts` per `Messaging` object (never the global CONF), filled
  from our typed `MessagingSettings`;
- RPC servers and clients on the per-host targets of docs/design.md (topic `compute` or
  `l2-agent`, server = host), casts sent with the mandatory flag so a cast to a host
  nobody ever served fails instead of vanishing (docs/platform.md); and the
  deployment-wide target of the controller (topic `controller`, host None: every
  replica serves it, `Messaging.controller_client()` calls it); a server's own queue
  (`compute.<host>`) is declared with bounds added to oslo's arguments
  (`rpc_queue_bounds`);
- notifications (oslo's messagingv2 wire) published and consumed with kombu, so that
  every `<topic>.<priority>` queue this project declares carries its own bounds
  (`x-max-length`, `x-message-ttl`): oslo's Notifier and notification listener declare
  those queues without arguments, and RabbitMQ refuses a redeclare with other
  arguments (PRECONDITION_FAILED), so the two cannot share a queue with bounds;
- `EventWatcher`: a kombu consumer on an exclusive, auto-delete queue bound to the
  notification exchange, for a transient watcher that must see every event and leave
  nothing behind; `EventConsumer`: a durable shared queue acknowledged after handling;
- `ModelSerializer`: wire models become envelopes on the way out and are validated
  again on the way in;
- a broker cluster: a multi-node `transport_url` becomes kombu's failover list
  (`connection()`), and `queue_type = quorum` makes the RPC server queues (oslo's
  `rabbit_quorum_queue`) and the queues declared here quorum queues with a delivery
  limit and a dead-letter queue (`bounded_queue_args`, `poison_message`);
  `redeclare_queue` moves a queue's messages across a change of its type.

What it must not do: business logic, logging of payload contents, retries beyond what
the caller asked for.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import random
import re
import ssl
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

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
    BrokerAccessRefused,
    BrokerTlsRefused,
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


# The exchange RPC replies travel through (direct, routing key = the caller's reply
# queue). oslo.messaging sends replies through the default exchange, where any queue
# is reachable by its name: an account allowed to reply could then publish straight
# into `compute.<other host>`. With replies on an exchange of their own, the agents'
# accounts get no right on the default exchange at all (docs/security.md).
REPLY_EXCHANGE = "agents_replies"


def _install_reply_exchange() -> None:
    """Once per process: oslo's rabbit driver replies on REPLY_EXCHANGE, and a caller's
    reply queue is bound there. Callers and servers of a deployment must both run this
    (every process here builds its Messaging, which installs it)."""
    from oslo_messaging._drivers import impl_rabbit

    conn_cls: Any = impl_rabbit.Connection
    if getattr(conn_cls, "_agents_reply_exchange", False):
        return

    def declare_direct_consumer(self: Any, topic: str, callback: Any) -> None:
        consumer = impl_rabbit.Consumer(
            exchange_name=REPLY_EXCHANGE,
            queue_name=topic,
            routing_key=topic,
            type="direct",
            durable=self.rabbit_transient_quorum_queue,
            exchange_auto_delete=False,
            queue_auto_delete=False,
            callback=callback,
            rabbit_ha_queues=self.rabbit_ha_queues,
            rabbit_queue_ttl=self.rabbit_transient_queues_ttl,
            enable_cancel_on_failover=self.enable_cancel_on_failover,
            rabbit_quorum_queue=self.rabbit_transient_quorum_queue,
            rabbit_quorum_queue_config=self.rabbit_quorum_queue_config,
        )
        self.declare_consumer(consumer)

    def direct_send(self: Any, msg_id: str, msg: Any) -> None:
        # passive, as oslo's own: a reply to a caller that is gone fails fast (404)
        exchange = kombu.Exchange(
            name=REPLY_EXCHANGE,
            type="direct",
            durable=self.rabbit_transient_quorum_queue,
            auto_delete=False,
            passive=True,
        )
        options = oslo_messaging.TransportOptions(at_least_once=self.direct_mandatory_flag)
        self._ensure_publishing(
            self._publish_and_raises_on_missing_exchange,
            exchange,
            msg,
            routing_key=msg_id,
            transport_options=options,
        )

    def declare_topic_consumer(
        self: Any, exchange_name: str, topic: str, callback: Any = None, queue_name: Any = None
    ) -> None:
        # oslo's, plus bounds on a server's own queue (`compute.<host>`): see
        # rpc_queue_bounds
        consumer = impl_rabbit.Consumer(
            exchange_name=exchange_name,
            queue_name=queue_name or topic,
            routing_key=topic,
            type="topic",
            durable=self.durable,
            exchange_auto_delete=self.amqp_auto_delete,
            queue_auto_delete=self.amqp_auto_delete,
            callback=callback,
            rabbit_ha_queues=self.rabbit_ha_queues,
            enable_cancel_on_failover=self.enable_cancel_on_failover,
            rabbit_quorum_queue=self.rabbit_quorum_queue,
            rabbit_quorum_queue_config=self.rabbit_quorum_queue_config,
        )
        if "." in consumer.queue_name:
            bounded = rpc_queue_bounds(consumer.queue_arguments)
            if _declares_with(self, consumer, bounded):
                consumer.queue_arguments = bounded
            else:  # declared by an older release: used as it is, said once
                log.warning(
                    "rpc_queue_unbounded",
                    queue=consumer.queue_name,
                    fix="delete it once while its agent is stopped; it is declared again",
                )
        self.declare_consumer(consumer)

    conn_cls.declare_direct_consumer = declare_direct_consumer
    conn_cls.direct_send = direct_send
    conn_cls.declare_topic_consumer = declare_topic_consumer
    conn_cls._agents_reply_exchange = True


# A server's own RPC queue (`compute.<host>`, `l2-agent.<host>`) holds casts waiting for
# its agent. Bounded so that a host gone for good cannot make it grow without end: a
# cast waits at most RPC_QUEUE_TTL_S (the controller re-drives what is still wanted, and
# gives an operation up long before: `operation_timeout`; an agent resyncs with the
# controller when it starts), and past RPC_QUEUE_MAX_LENGTH the oldest is dropped.
# An hour is also the agents' default tombstone lifetime: a build queued for longer
# than a deleted instance's tombstone lives can no longer arrive. Calls carry a
# per-message TTL of their timeout, and the lower of the two wins.
RPC_QUEUE_MAX_LENGTH = 100_000
RPC_QUEUE_TTL_S = 3600


def rpc_queue_bounds(arguments: dict[str, Any] | None) -> dict[str, Any]:
    """oslo's arguments for a server queue (quorum type, delivery limit, ...) plus ours."""
    args = {
        **(arguments or {}),
        "x-max-length": RPC_QUEUE_MAX_LENGTH,
        "x-message-ttl": RPC_QUEUE_TTL_S * 1000,
    }
    if args.get("x-queue-type") == "quorum":
        args["x-overflow"] = "drop-head"  # the default, stated: a policy cannot change it
    return args


def _declares_with(conn: Any, consumer: Any, arguments: dict[str, Any]) -> bool:
    """Whether the broker takes `consumer`'s queue with `arguments`: False when it exists
    with others (PRECONDITION_FAILED, which closes only the throwaway channel). Any other
    failure (access refused, a connection lost) is left to oslo's own declare right
    after, which retries, or reports it as the server's start failing."""
    try:
        channel = conn.connection.channel()
    except Exception:
        return True
    try:
        kombu.Queue(
            consumer.queue_name,
            exchange=consumer.exchange,
            routing_key=consumer.routing_key,
            durable=consumer.durable,
            auto_delete=consumer.queue_auto_delete,
            queue_arguments=arguments,
            channel=channel,
        ).declare()
        return True
    except Exception as err:
        return not ("PRECONDITION_FAILED" in str(err) or "inequivalent arg" in str(err))
    finally:
        with contextlib.suppress(Exception):
            channel.close()


class _ConnectionLost(logging.Filter):
    """kombu's consumer loop logs a lost connection (a broker node killed, a restart)
    and each failed reconnect with a traceback. Both are expected events of a broker
    outage or failover: one warning line without a traceback instead (the failed
    reconnects are `broker_connect_failed`, from the consumer's own callback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith("Connection to broker lost"):
            err = record.exc_info[1] if record.exc_info else None
            log.warning("broker_connection_lost", error=f"{type(err).__name__}: {err}"[:300])
            return False
        return not text.startswith("Broker connection error")


def _install_connection_lost_filter() -> None:
    mixins = logging.getLogger("kombu.mixins")
    if not any(isinstance(f, _ConnectionLost) for f in mixins.filters):
        mixins.addFilter(_ConnectionLost())


# How long an idle oslo listener (an RPC server, a caller's reply waiter) may block on
# the socket before it looks at its stop flag again. oslo doubles it up to 5 s while
# idle, so stopping an idle RPC server and closing the transport each waited 0-5 s:
# an idle compute-agent took 8 s to stop under systemd. 1 s bounds each of those waits
# to about a second, for one wake-up a second per idle listener (measured: about 0.7 ms
# of CPU a second per idle agent; docs/operations.md, "Stopping").
IDLE_POLL_MAX_S = 1.0


def _bound_idle_poll() -> None:
    """Once per process: cap oslo's idle poll interval (ACK_REQUEUE_EVERY_SECONDS_MAX,
    read by its listeners on every poll) at IDLE_POLL_MAX_S."""
    from oslo_messaging._drivers import amqpdriver

    current = getattr(amqpdriver, "ACK_REQUEUE_EVERY_SECONDS_MAX", None)
    if not isinstance(current, int | float):  # another oslo: its stop waits as it will
        log.warning("oslo_idle_poll_not_bounded", found=repr(current))
        return
    amqpdriver.ACK_REQUEUE_EVERY_SECONDS_MAX = min(float(current), IDLE_POLL_MAX_S)


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


def agent_events_topic(settings: MessagingSettings, host: str) -> str:
    """The topic an agent of `host` publishes its events on: `<events_topic>.<host>`, so
    the routing key names the publishing host and the broker's topic permissions can
    hold each host to its own keys (docs/security.md); the controller binds
    `<events_topic>.#` and checks the payload's host against the key."""
    return f"{settings.events_topic}.{host}"


def routing_key_host(key: str, topic: str) -> str | None:
    """The host of routing key `<topic>.<host>.<priority>`, or None if it is not one."""
    head = f"{topic}."
    if not key.startswith(head) or key.count(".") < topic.count(".") + 2:
        return None
    return key[len(head) :].rsplit(".", 1)[0]


# "Queue.declare: (403) ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for
# user 'u'", "Basic.publish: (403) ACCESS_REFUSED - write access to topic 'k' in exchange
# 'x' in vhost '/' refused for user 'u'" (RabbitMQ 3.10's wording)
_REFUSED = re.compile(
    r"(?:(?P<method>[A-Z][a-z]+\.[a-z_]+): )?\(403\) ACCESS_REFUSED - "
    r"(?:(?P<operation>[a-z]+) )?access to (?P<resource>.+?)"
    r"(?: in vhost '(?P<vhost>[^']*)')? refused for user '(?P<user>[^']*)'"
)


# RabbitMQ's permission each AMQP method needs (its 403 text often omits the word)
_OPERATIONS = {
    "Basic.publish": "write",
    "Basic.consume": "read",
    "Basic.get": "read",
    "Queue.declare": "configure",
    "Queue.delete": "configure",
    "Exchange.declare": "configure",
    "Exchange.delete": "configure",
    "Queue.bind": "bind",
    "Queue.unbind": "unbind",
    "Queue.purge": "read",
}


def access_refused(err: BaseException, transport_url: str = "") -> BrokerAccessRefused | None:
    """The broker's ACCESS_REFUSED (403) as a BrokerAccessRefused naming the account,
    the resource and the operation; None for any other error."""
    text = str(err)
    code = getattr(err, "code", None) or getattr(err, "reply_code", None)
    if code != 403 and "ACCESS_REFUSED" not in text:
        return None
    m = _REFUSED.search(text)
    if m is None:
        user = transport_url.split("://", 1)[-1].split(":", 1)[0].split("@", 1)[0] or "?"
        return BrokerAccessRefused(user=user, operation="access", resource="?", detail=text[:300])
    return BrokerAccessRefused(
        user=m.group("user"),
        operation=m.group("operation") or _OPERATIONS.get(m.group("method") or "", "access"),
        resource=m.group("resource"),
        detail=text[:300],
    )


def log_access_refused(refused: BrokerAccessRefused, **where: Any) -> None:
    log.error(
        "broker_access_refused",
        user=refused.fields["user"],
        operation=refused.fields["operation"],
        resource=refused.fields["resource"],
        **where,
    )


def ssl_options(settings: MessagingSettings) -> dict[str, Any] | bool:
    """kombu's `ssl=` for `settings`: False without `ssl_ca_file`; otherwise the broker's
    certificate is required, checked against that CA and against the host name of the
    broker it connects to (kombu fills `server_hostname` from each URL of a failover
    list when it is None)."""
    if settings.ssl_ca_file is None:
        return False
    opts: dict[str, Any] = {
        "ca_certs": str(settings.ssl_ca_file),
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": None,
    }
    if settings.ssl_cert_file is not None and settings.ssl_key_file is not None:
        opts["certfile"] = str(settings.ssl_cert_file)
        opts["keyfile"] = str(settings.ssl_key_file)
    return opts


def connection(
    settings: MessagingSettings, timeout: float = 5.0, **kwargs: Any
) -> kombu.Connection:
    """A kombu connection to the broker of `settings`, over TLS when it is configured.

    With several brokers (a cluster) the list is shuffled, as oslo's driver does, so a
    fleet of processes spreads over the nodes; kombu then fails over round-robin: each
    node is tried once per cycle (`ensure_connected`). The connection carries a name
    (`<program>:<pid>:kombu`) that `rabbitmqctl list_connections client_properties`
    shows, like oslo's own connections.
    """
    urls = _kombu_url(settings.transport_url).split(";")
    random.shuffle(urls)
    kwargs.setdefault(
        "transport_options",
        {"client_properties": {"connection_name": f"{_PROGRAM}:{os.getpid()}:kombu"}},
    )
    return kombu.Connection(
        ";".join(urls),
        connect_timeout=timeout,
        ssl=ssl_options(settings),
        failover_strategy="round-robin",
        **kwargs,
    )


_PROGRAM = os.path.basename(sys.argv[0]) or "python"


def ensure_connected(conn: kombu.Connection, timeout: float) -> None:
    """Connect, trying every node of a failover list once (a node killed a moment ago
    refuses at once), within `timeout` seconds in all; kombu's error otherwise."""
    conn.ensure_connection(
        max_retries=max(1, len(conn.alt)),
        interval_start=0,
        interval_step=0.2,
        interval_max=1,
        timeout=timeout,
    )


def _ssl_cause(err: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind `err` (kombu wraps it in OperationalError), if any."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, ssl.SSLError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def describe_connect_error(settings: MessagingSettings, err: BaseException) -> str:
    """One sentence for a failed connect: a TLS verification failure names the CA file
    and the broker address (the usual cause: a wrong ssl_ca_file or broker cert)."""
    where = settings.transport_url.split("@")[-1]
    err = _ssl_cause(err) or err
    if isinstance(err, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
        return (
            f"TLS: the certificate of the broker at {where} is not trusted by"
            f" ssl_ca_file {settings.ssl_ca_file} ({getattr(err, 'verify_message', err)})"
        )
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake with the broker at {where} failed: {err}"
    return f"{type(err).__name__}: {err}"


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


_RPC_VERSION = re.compile(r"^\d{1,6}\.\d{1,6}(\.\d{1,6})?$")


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
        version = message.get("version", "1.0")
        if problem is None and not (isinstance(version, str) and _RPC_VERSION.match(version)):
            # oslo's version check raises ValueError (with a traceback) on anything but
            # MAJOR.MINOR[.PATCH]
            problem = f"version must be MAJOR.MINOR, got {version!r:.40}"
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
        # An endpoint naming its RPC methods (RPC_METHODS) serves only those: its other
        # public methods (a manager's drain, reconcile, ...) are not for the wire.
        found = [
            getattr(e, method)
            for e in self.endpoints
            if hasattr(e, method) and method in getattr(e, "RPC_METHODS", (method,))
        ]
        if not found:
            return f"unknown method {method!r:.80}"
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
        """Start consuming. BrokerAccessRefused (logged as `broker_access_refused`)
        when this account may not declare or consume the server's queues."""
        try:
            self._server.start()
        except oslo_messaging.MessageDeliveryFailure as err:
            refused = access_refused(err)
            if refused is None:
                raise
            log_access_refused(refused, during="rpc_server_start")
            raise refused from err

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

    def _delivery_failure(self, err: BaseException) -> Exception:
        refused = access_refused(err)
        if refused is not None:  # not an outage: this account may not send there
            log_access_refused(refused, kind=self.kind, host=self._where)
            return refused
        return BrokerUnreachable(url="(configured transport)", problem=str(err))

    def cast(self, method: str, message: Message, request_id: str | None = None) -> None:
        try:
            self._client.cast({"request_id": request_id}, method, payload=message)
        except oslo_messaging.MessageUndeliverable as err:
            raise NoAgentForHost(
                kind=self.kind, host=self._where, problem="no queue for it on the broker"
            ) from err
        except oslo_messaging.MessageDeliveryFailure as err:
            raise self._delivery_failure(err) from err

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
            raise self._delivery_failure(err) from err
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
        _install_reply_exchange()
        _bound_idle_poll()
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
            # RPC server queues (`<topic>.<host>`, `<topic>`) become quorum queues,
            # replicated on every node: a node's death loses none of their casts. Their
            # delivery limit drops a message redelivered that often (no dead-letter
            # exchange on oslo's queues; casts are acked on arrival, so only a message
            # caught in a consumer crash loop ever reaches it).
            self.conf.set_override("rabbit_quorum_queue", True, group=rabbit)
            self.conf.set_override(
                "rabbit_quorum_delivery_limit", settings.delivery_limit, group=rabbit
            )
        else:
            self.conf.set_override("amqp_durable_queues", settings.durable_queues, group=rabbit)
        self.conf.set_override(
            "heartbeat_timeout_threshold", settings.heartbeat_timeout, group=rabbit
        )
        self.conf.set_override("direct_mandatory_flag", True, group=rabbit)
        if settings.ssl_ca_file is not None:
            # with ssl_ca_file oslo requires the broker's certificate and checks its
            # host name (one broker in the URL) against it
            self.conf.set_override("ssl", True, group=rabbit)
            self.conf.set_override("ssl_ca_file", str(settings.ssl_ca_file), group=rabbit)
            if settings.ssl_cert_file is not None and settings.ssl_key_file is not None:
                self.conf.set_override("ssl_cert_file", str(settings.ssl_cert_file), group=rabbit)
                self.conf.set_override("ssl_key_file", str(settings.ssl_key_file), group=rabbit)
        if dispatch_threads is not None:
            self.conf.set_override("executor_thread_pool_size", dispatch_threads)
        self.serializer = ModelSerializer()
        self._rpc_transport: Any = None
        self._notifiers: list[Notifier] = []
        self._lock = threading.Lock()

    def verify_tls(self, timeout: float = 5.0) -> None:
        """With TLS configured, connect once: BrokerTlsRefused when the broker's
        certificate is not trusted by ssl_ca_file (a configuration error, not an outage:
        retrying cannot mend it). A broker that does not answer is left to the usual
        waiting and reconnecting."""
        if not self.settings.ssl:
            return
        try:
            with connection(self.settings, timeout) as conn:
                ensure_connected(conn, timeout)
        except Exception as err:
            tls = _ssl_cause(err)
            if tls is None:
                return  # down or refusing: the daemon waits for it as usual
            raise BrokerTlsRefused(
                url=self.settings.transport_url.split("@")[-1],
                problem=describe_connect_error(self.settings, tls),
            ) from err

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

    def notifier(self, publisher_id: str, topic: str, declare: bool = True) -> Notifier:
        """Notifications on `topic`, one at a time, confirmed by the broker (thread-safe).
        `declare` False: no `<topic>.<priority>` queue is declared (see BatchNotifier)."""
        notifier = Notifier(self.settings, publisher_id, topic, declare)
        with self._lock:
            self._notifiers.append(notifier)
        return notifier

    def batch_notifier(self, publisher_id: str, topic: str, declare: bool = True) -> BatchNotifier:
        return BatchNotifier(self.settings, publisher_id, topic, declare)

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
    """Arguments of a queue that cannot grow without bound while nobody consumes it.

    Quorum queues (RabbitMQ >= 3.10) keep the same bounds: `x-max-length` drops the
    oldest message (`x-overflow` drop-head, the default of both types, stated for
    quorum queues so a policy cannot change it unseen) and `x-message-ttl` expires
    messages. They add `x-delivery-limit`: a message delivered that many times more
    without an ack is dead-lettered to `dead_letter_queue_name()`, never spun forever.
    Classic queues have no delivery limit (RabbitMQ 3.10).
    """
    args: dict[str, Any] = {"x-max-length": max_length, "x-message-ttl": int(ttl_s * 1000)}
    if settings.queue_type == "quorum":
        args["x-overflow"] = "drop-head"
        args["x-queue-type"] = "quorum"
        args["x-delivery-limit"] = settings.delivery_limit
        args["x-dead-letter-exchange"] = ""  # the default exchange: routed by queue name
        args["x-dead-letter-routing-key"] = dead_letter_queue_name(settings)
    return args


DEAD_LETTER_MAX_LENGTH = 10_000
DEAD_LETTER_TTL_S = 14 * 86400


def dead_letter_queue_name(settings: MessagingSettings) -> str:
    return f"{settings.control_exchange}.dead-letter"


def _dead_letter_queue(name: str, source_args: dict[str, Any]) -> kombu.Queue:
    """Where quorum queues of a deployment put a message past its delivery limit:
    bounded (oldest dropped past 10,000, kept 14 days), for an operator to inspect
    (`rabbitmqctl list_queues`; the x-death header names the queue it came from)."""
    return kombu.Queue(
        name=name,
        durable=True,
        auto_delete=False,
        queue_arguments={
            "x-queue-type": source_args.get("x-queue-type", "classic"),
            "x-max-length": DEAD_LETTER_MAX_LENGTH,
            "x-message-ttl": DEAD_LETTER_TTL_S * 1000,
            "x-overflow": "drop-head",
        },
    )


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
    A queue that dead-letters (quorum) gets its dead-letter queue declared first: a
    message dead-lettered to a queue that does not exist is dropped.
    """
    dead_letter = (queue.queue_arguments or {}).get("x-dead-letter-routing-key")
    if dead_letter:
        channel = conn.channel()
        try:
            _dead_letter_queue(str(dead_letter), queue.queue_arguments or {}).bind(
                channel
            ).declare()
        except Exception as err:
            if not _is_precondition_failed(err):
                raise
            log.warning("dead_letter_queue_differs", queue=dead_letter, problem=str(err))
        finally:
            with contextlib.suppress(Exception):
                channel.close()
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

    def __init__(
        self, settings: MessagingSettings, publisher_id: str, topic: str, declare: bool = True
    ) -> None:
        self._settings = settings
        self.publisher_id = publisher_id
        self.topic = topic
        # False: publish only, declare no queue (agent events: the controller's own
        # durable queue is bound to them; a per-host `<topic>.<priority>` queue nobody
        # consumes would only fill up, and declaring it needs `configure` rights)
        self._declare = declare
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
                refused = access_refused(err, self._settings.transport_url)
                if refused is not None:  # permissions do not heal by retrying
                    log_access_refused(refused, topic=self.topic)
                    raise refused from err
                attempts += 1
                retry = self._settings.send_retry
                if retry >= 0 and attempts > retry:
                    raise BrokerUnreachable(
                        url=self._settings.transport_url.split("@")[-1],
                        problem=describe_connect_error(self._settings, err),
                    ) from err
                # The first retry goes at once (the usual cause is a connection the
                # broker closed while idle); then oslo's 1, 2, 4 s backoff.
                time.sleep(0 if attempts == 1 else min(2 ** (attempts - 2), 4))

    def _connect(self) -> None:
        self._conn = connection(self._settings, 5, heartbeat=0)
        ensure_connected(self._conn, 5)
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
            if self._declare and key not in self._declared:
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

    def __init__(
        self, settings: MessagingSettings, publisher_id: str, topic: str, declare: bool = True
    ) -> None:
        self._publisher = BatchNotifier(settings, publisher_id, topic, declare)
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
        with connection(settings, timeout) as conn:
            ensure_connected(conn, timeout)
    except (TimeoutError, OSError) as err:
        if _ssl_cause(err) is not None:
            problem = describe_connect_error(settings, err)
            raise BrokerUnreachable(url=shown, problem=problem) from err
        raise BrokerUnreachable(url=shown, problem=str(err) or type(err).__name__) from err
    except Exception as err:  # amqp raises many kinds (AccessRefused, ...); all mean "no"
        raise BrokerUnreachable(url=shown, problem=describe_connect_error(settings, err)) from err


def delete_queues(
    transport_url: str,
    queues: Iterable[str],
    exchange: str | None = None,
    timeout: float = 3.0,
    if_unused: bool = False,
) -> None:
    """Delete `queues` and then `exchange` where they exist (test and lab clean-up).

    What is already gone is fine, and so is a broker that is down. Deletes only what
    it is told: other deployments share the broker. `if_unused`: only a queue with
    no consumer and no message (the broker refuses the others: they stay).
    """
    with (
        contextlib.suppress(Exception),
        kombu.Connection(_kombu_url(transport_url), connect_timeout=timeout) as conn,
    ):
        ensure_connected(conn, timeout)  # any live node of a cluster will do
        channel: Any = conn.channel()
        for queue in queues:
            try:
                channel.queue_delete(queue, if_unused=if_unused, if_empty=if_unused)
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
        with connection(settings, timeout) as conn:
            ensure_connected(conn, timeout)
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
class QueueBinding:
    exchange: str
    routing_key: str


def declared_arguments(
    settings: MessagingSettings, old: dict[str, Any], name: str = ""
) -> dict[str, Any]:
    """The arguments the daemons of `settings` declare for queue `name` that has `old`
    now (the classic <-> quorum switch): an oslo RPC server queue gets what oslo
    declares (quorum: `rabbit_quorum_queue` with the delivery limit; classic: none),
    plus `rpc_queue_bounds` on a server's own queue (`compute.<host>`: one an older
    release left without gets them now); a bounded queue of ours (events; it has
    `x-max-length`)
    keeps its bounds (`bounded_queue_args`: with quorum, plus delivery limit and
    dead-lettering)."""
    topic, dot, _server = name.partition(".")
    if topic in (COMPUTE_TOPIC, L2_TOPIC, CONTROLLER_TOPIC) and not name.endswith(".switch-tmp"):
        oslo: dict[str, Any] = {}
        if settings.queue_type == "quorum":
            oslo = {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
        return rpc_queue_bounds(oslo) if dot else oslo
    if "x-max-length" in old:
        ttl_ms = old.get("x-message-ttl", NOTIFY_QUEUE_TTL_S * 1000)
        return bounded_queue_args(settings, int(old["x-max-length"]), int(ttl_ms) / 1000)
    if settings.queue_type == "quorum":
        return {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
    return {}


def redeclare_queue(
    settings: MessagingSettings,
    name: str,
    arguments: dict[str, Any],
    bindings: Sequence[QueueBinding],
    timeout: float = 10.0,
) -> tuple[int, int]:
    """Re-declare durable queue `name` with `arguments` (a new type), keeping its
    messages and `bindings`: every message is moved to a temporary queue, the queue is
    deleted (only if empty) and declared anew, bound again, and the messages moved back.

    Each move publishes a copy (body, properties, headers; `x-delivery-count` dropped)
    with publisher confirms and acknowledges the original only once the broker
    confirmed the copy, in order: a crash mid-way leaves every message in one of the
    two queues (the temporary one is `<name>.switch-tmp`, and a second run carries
    on). Run with every consumer and publisher of the queue stopped. Returns (moved
    out, moved back).
    """
    tmp = f"{name}.switch-tmp"
    with connection(settings, timeout) as conn:
        ensure_connected(conn, timeout)
        channel: Any = conn.channel()
        channel.confirm_select()
        channel.queue_declare(queue=tmp, durable=True, auto_delete=False)
        channel.queue_declare(queue=name, passive=True)
        moved_out = _move_all(channel, name, tmp)
        left = channel.queue_declare(queue=name, passive=True).message_count
        if left:
            raise RuntimeError(f"queue {name} still holds {left} messages: is a publisher running?")
        # (no if_empty: quorum queues refuse it; emptiness was checked just above)
        channel.queue_delete(queue=name)
        queue = kombu.Queue(
            name=name,
            durable=True,
            auto_delete=False,
            queue_arguments=arguments,
            bindings=[
                kombu.binding(kombu.Exchange(b.exchange, type="topic", durable=True), b.routing_key)
                for b in bindings
            ],
        )
        channel.close()
        if not declare_queue(conn, queue):
            raise RuntimeError(f"queue {name} was re-declared by someone else meanwhile")
        # a fresh channel: RabbitMQ 3.10 crashes a channel that used the old (classic)
        # queue when it publishes to the new (quorum) queue of the same name
        channel = conn.channel()
        channel.confirm_select()
        moved_back = _move_all(channel, tmp, name)
        channel.queue_delete(queue=tmp, if_empty=True)
    return moved_out, moved_back


def _move_all(channel: Any, source: str, target: str) -> int:
    moved = 0
    while True:
        msg = channel.basic_get(queue=source, no_ack=False)
        if msg is None:
            return moved
        props = dict(msg.properties)
        headers = {k: v for k, v in (props.pop("application_headers", None) or {}).items()}
        headers.pop("x-delivery-count", None)
        copy = channel.prepare_message(
            msg.body,
            priority=props.pop("priority", None),
            content_type=props.pop("content_type", None),
            content_encoding=props.pop("content_encoding", None),
            headers=headers,
            properties=props,
        )
        # confirm mode (py-amqp): basic_publish returns once the broker confirmed it
        channel.basic_publish(copy, exchange="", routing_key=target)
        channel.basic_ack(msg.delivery_tag)
        moved += 1


@dataclass(frozen=True)
class Event:
    """One notification as a watcher sees it."""

    event_type: str
    priority: str
    publisher_id: str
    timestamp: str
    payload: Any  # a validated Message, or the raw payload if it did not validate
    request_id: str | None
    routing_key: str = ""  # as the broker delivered it (names the publishing host)
    # the broker delivered it before (to a consumer that did not acknowledge it)
    redelivered: bool = False


def decode_notification(body: Any, routing_key: str = "") -> Event | None:
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
            routing_key=routing_key,
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
        self._conn = connection(settings, 5)
        ensure_connected(self._conn, 5)
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


def deliveries(message: Any) -> int:
    """How many times `message` has been delivered, this time included (quorum queues
    count earlier deliveries in `x-delivery-count`; other queues say nothing: 1)."""
    with contextlib.suppress(TypeError, ValueError):
        return int((message.headers or {}).get("x-delivery-count", 0)) + 1
    return 1


def message_id(body: Any, message: Any) -> str:
    """The notification's own message_id (inside oslo's envelope), else the AMQP one."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        outer = body if isinstance(body, dict) else json.loads(body)
        inner = outer.get("oslo.message")
        msg = json.loads(inner) if isinstance(inner, str) else outer
        if msg.get("message_id"):
            return str(msg["message_id"])[:80]
    return str((message.properties or {}).get("message_id", "?"))[:80]


class _QueueConsumer:
    """Consume `queues` on one thread, reconnecting; each declared by `declare_queue`.

    `on_message(body, message)` acks, requeues (`give_back`) or rejects each message
    itself. With a cluster URL the connection fails over to another node when its node
    dies (kombu's failover list, `connection()`), and consuming resumes there.
    On quorum queues a message carries `x-delivery-count` (deliveries before this one);
    `give_back` at the last delivery the limit allows dead-letters it and logs
    `poison_message` (queue, message id, deliveries) instead of requeueing it.
    """

    def __init__(
        self,
        settings: MessagingSettings,
        queues: Sequence[kombu.Queue],
        on_message: Callable[[Any, Any], None],
        *,
        prefetch: int,
        name: str,
        on_iteration: Callable[[Callable[[float], bool]], None] | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        from kombu.mixins import ConsumerMixin

        self.queues = list(queues)
        self.name = name
        self.unbounded: set[str] = set()  # queues found declared without our bounds
        _install_connection_lost_filter()
        self.limit = settings.delivery_limit if settings.queue_type == "quorum" else None
        self.dead_letter_queue = dead_letter_queue_name(settings)
        self.current_queue = ""  # the queue of the message in hand (one thread)
        outer = self

        class _Mixin(ConsumerMixin):  # type: ignore[misc]
            def __init__(self, connection: Any) -> None:
                self.connection = connection
                self.consuming = threading.Event()
                self.last_error = ""
                self.conn: Any = None  # the connection consuming now

            def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
                # Declared here, on every (re)connect, each on a channel of its own; the
                # consumer itself then declares nothing (a refused redeclare of an
                # older unbounded queue would close the consuming channel).
                consumers = []
                for queue in outer.queues:
                    try:
                        if not declare_queue(channel.connection, queue):
                            outer.unbounded.add(queue.name)
                    except Exception as err:
                        outer._pause_if_refused(err)
                        raise
                    q = queue.bind(channel)
                    q.no_declare = True
                    # one consumer per queue: a message's queue is known (poison report)
                    consumers.append(
                        consumer_cls(
                            queues=[q],
                            callbacks=[outer._deliver(queue.name, on_message)],
                            accept=["json"],
                            prefetch_count=prefetch,
                        )
                    )
                return consumers

            def on_connection_revived(self) -> None:
                # messages held from the connection before are not ours to ack any more
                self.conn = None
                if on_connect is not None:
                    on_connect()

            def on_consume_ready(self, connection: Any, channel: Any, consumers: Any) -> None:
                self.conn = connection
                self.consuming.set()

            def on_iteration(self) -> None:
                # before each blocking wait for the next message: the caller may take
                # what is already there (drain) and act on what it collected
                if on_iteration is not None and self.conn is not None:
                    on_iteration(self.drain)

            def drain(self, timeout: float) -> bool:
                """Hand over the next message if one comes within `timeout`."""
                try:
                    self.conn.drain_events(timeout=timeout)
                except TimeoutError:
                    return False
                return True

            def on_decode_error(self, message: Any, exc: BaseException) -> None:
                # kombu logs the whole body (up to the frame size) at error level: one
                # named line instead; the message is acknowledged (it can never decode)
                log.warning(
                    "notification_unreadable",
                    consumer=outer.name,
                    content_type=str(message.content_type)[:80],
                    size=len(message.body or b""),
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
                message.ack()

            def on_connection_error(self, exc: BaseException, interval: float) -> None:
                self.consuming.clear()
                self.last_error = describe_connect_error(settings, exc)
                log.warning(
                    "broker_connect_failed",
                    consumer=outer.name,
                    error=self.last_error,
                    retry_in_s=interval,
                )

        self._conn = connection(settings, 5)
        self._settings = settings
        self._mixin = _Mixin(self._conn)
        self._thread: threading.Thread | None = None

    def _deliver(
        self, queue: str, on_message: Callable[[Any, Any], None]
    ) -> Callable[[Any, Any], None]:
        def deliver(body: Any, message: Any) -> None:
            self.current_queue = queue
            if self.limit is not None and deliveries(message) > self.limit:
                # its last chance: if this process dies on it, the broker dead-letters it
                log.warning(
                    "message_last_delivery",
                    queue=queue,
                    message_id=message_id(body, message),
                    deliveries=deliveries(message),
                )
            on_message(body, message)

        return deliver

    def give_back(self, body: Any, message: Any) -> None:
        """Requeue `message`; past the delivery limit, dead-letter it and report it."""
        if self.limit is not None and deliveries(message) > self.limit:
            log.error(
                "poison_message",
                queue=self.current_queue,
                message_id=message_id(body, message),
                deliveries=deliveries(message),
                dead_letter_queue=self.dead_letter_queue,
            )
            message.reject(requeue=False)
            return
        message.requeue()

    def start(self, ready_timeout: float | None = None) -> None:
        """Consume; return once consuming. Without `ready_timeout` it waits for the broker
        as long as it takes (a daemon's start: READY comes after, and SIGTERM interrupts
        the wait), saying why every 10 s; with one, BrokerUnreachable after it. stop()
        from another thread ends the wait: start() returns without consuming."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        names = ", ".join(q.name for q in self.queues)
        began = time.monotonic()
        say_at = 10.0
        while not self._mixin.consuming.wait(0.5):
            if self._mixin.should_stop:
                return
            waited = time.monotonic() - began
            if ready_timeout is not None and waited >= ready_timeout:
                raise BrokerUnreachable(
                    url=str(self._conn.as_uri()).split("@")[-1],
                    problem=f"could not consume {names} within {ready_timeout:.0f}s"
                    + (f" ({self._mixin.last_error})" if self._mixin.last_error else ""),
                )
            if ready_timeout is None and waited >= say_at:
                say_at += 10.0
                log.warning(
                    "waiting_for_broker",
                    consumer=names,
                    waited_s=round(waited),
                    error=self._mixin.last_error,
                )

    def _run(self) -> None:
        # kombu's loop reconnects after connection errors; a channel error (a queue
        # deleted under it, a refused declare) ends it: start again after a pause. A
        # refusal by the broker's permissions will not heal by itself: named at error
        # level, retried every 30 s (an operator may fix the grant meanwhile).
        while not self._mixin.should_stop:
            try:
                self._mixin.run()
            except Exception as err:
                self._mixin.consuming.clear()
                refused = access_refused(err, self._settings.transport_url)
                if refused is not None:
                    self._mixin.last_error = str(refused)
                    log_access_refused(refused, consumer=self.name, retry_in_s=30)
                    pause = 30.0
                else:
                    log.warning("consumer_restarting", consumer=self.name, error=str(err))
                    pause = 1.0
                deadline = time.monotonic() + pause
                while not self._mixin.should_stop and time.monotonic() < deadline:
                    time.sleep(0.2)

    def _pause_if_refused(self, err: BaseException) -> None:
        """The broker's permissions refused a declare: kombu's loop would retry every
        second. Name it at error level and wait 30 s first (an operator may fix the
        grant meanwhile); stop() ends the wait."""
        refused = access_refused(err, self._settings.transport_url)
        if refused is None:
            return
        self._mixin.last_error = str(refused)
        log_access_refused(refused, consumer=self.name, retry_in_s=30)
        deadline = time.monotonic() + 30.0
        while not self._mixin.should_stop and time.monotonic() < deadline:
            time.sleep(0.2)

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

    `handler` returning means done (ack). RetryLater (a database outage): the same
    event is handed to `handler` again every `retry_pause` seconds, kept unacknowledged
    meanwhile, in order, and not requeued: a quorum queue counts every requeue against
    its delivery limit, so an outage longer than the limit would dead-letter good
    events. Stopped meanwhile, it goes back to the queue when the connection closes.
    Any other exception: logged by the caller's handler wrapper and acked, since a
    poison message retried forever would stop every event behind it.

    With `batch_handler`, the events already delivered (up to `batch`, gathered for at
    most `gather_s`: a lone event is not held back) go to it together, and are all
    acknowledged after it returned; so a crash redelivers the whole batch, and the
    handler must be harmless to run twice on it. RetryLater holds the whole batch as
    above; any other exception: the batch's events go to `handler` one by one, so a
    poison event is reported (and acked) alone and the others still count.
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
        batch_handler: Callable[[list[Event]], None] | None = None,
        batch: int = 64,
        gather_s: float = 0.005,
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._retry_pause = retry_pause
        self._stop = threading.Event()
        self._batch_handler = batch_handler
        self._batch = max(1, min(batch, prefetch))
        self._gather_s = gather_s
        self._pending: list[tuple[Any, Any]] = []  # delivered, not yet handled
        self.batches = 0  # batches handed to batch_handler (for tests and benches)
        exchange = _exchange(settings)
        self.queue = kombu.Queue(
            name=queue_name,
            exchange=exchange,
            bindings=[kombu.binding(exchange, routing_key=key) for key in routing_keys],
            durable=True,
            auto_delete=False,
            queue_arguments=bounded_queue_args(settings, max_length, ttl_s),
        )
        if batch_handler is None:
            self._consumer = _QueueConsumer(
                settings, [self.queue], self._on_message, prefetch=prefetch, name="events"
            )
        else:
            self._consumer = _QueueConsumer(
                settings,
                [self.queue],
                self._collect,
                prefetch=prefetch,
                name="events",
                on_iteration=self._flush,
                on_connect=self._pending.clear,
            )

    def _decode(self, body: Any, message: Any) -> Event | None:
        info = getattr(message, "delivery_info", None) or {}
        event = decode_notification(body, str(info.get("routing_key", "")))
        if event is None:
            self._on_error(
                InvalidMessage(schema="notification", problem="not an oslo notification"), body
            )
            message.ack()
            return None
        if info.get("redelivered"):
            event = replace(event, redelivered=True)
        return event

    def _on_message(self, body: Any, message: Any) -> None:
        event = self._decode(body, message)
        if event is not None and self._handle(event):
            message.ack()

    def _handle(self, event: Event) -> bool:
        """`handler` on one event; False when stopped while the database was away."""
        while True:
            try:
                self._handler(event)
            except RetryLater:
                if self._stop.wait(self._retry_pause):
                    return False  # unacknowledged: back to the queue when the connection closes
                continue
            except Exception as err:  # a poison message is reported and dropped, never spun
                self._on_error(err, event)
            return True

    def _collect(self, body: Any, message: Any) -> None:
        self._pending.append((body, message))

    def _flush(self, drain: Callable[[float], bool]) -> None:
        """Take what else is there already (bounded in count and time), then handle it."""
        if not self._pending:
            return
        deadline = time.monotonic() + self._gather_s
        while len(self._pending) < self._batch:
            left = deadline - time.monotonic()
            if left <= 0 or not drain(left):
                break
        taken, self._pending[:] = list(self._pending), []
        batch: list[tuple[Event, Any]] = []
        for body, message in taken:
            event = self._decode(body, message)
            if event is not None:
                batch.append((event, message))
        if not batch:
            return
        if len(batch) > 1:
            outcome = self._handle_batch([event for event, _ in batch])
            if outcome == "stopped":
                return  # unacknowledged: back to the queue when the connection closes
            if outcome == "done":
                for _, message in batch:
                    message.ack()
                return
        for event, message in batch:  # one by one: the poison one alone is dropped
            if not self._handle(event):
                return  # stopped: the rest go back to the queue with the connection
            message.ack()

    def _handle_batch(self, events: list[Event]) -> Literal["done", "one_by_one", "stopped"]:
        """`batch_handler` on `events`: "one_by_one" when it raised (a poison event)."""
        assert self._batch_handler is not None
        while True:
            try:
                self._batch_handler(events)
            except RetryLater:
                if self._stop.wait(self._retry_pause):
                    return "stopped"
                continue
            except Exception as err:
                log.warning(
                    "event_batch_failed",
                    events=len(events),
                    error=f"{type(err).__name__}: {err}"[:200],
                )
                return "one_by_one"
            self.batches += 1
            return "done"

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
    NotificationResult.REQUEUE) is requeued when `allow_requeue`. On quorum queues a
    message requeued up to `[messaging] delivery_limit` times is dead-lettered instead
    (`poison_message`, see `_QueueConsumer`).
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
                self._consumer.give_back(body, message)
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
