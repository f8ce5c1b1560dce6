"""One shape for every agent: the jobs both agents do, written once.

Each agent supplies only its manager's work; everything around it lives here:

- `Intake` is the RPC boundary for casts. It validates the message against its wire
  model, checks it is addressed to this host, writes it to the durable journal, and
  queues it per key (instance uuid, port id) on a `KeyedSerialExecutor`; the endpoint
  returns at once and no RPC thread ever waits on a lock held through I/O. A message
  that fails any check is refused through the agent's `on_reject` (one named log line,
  an error event, never a traceback). On start, `replay()` runs what an earlier run
  had taken and not finished, through the same path. On stop, queued work that has
  not begun is left in the journal: handed back, never failed, never dropped.
- `Ticket`: a piece of work that finishes later than its `run` returns (a build
  waiting for its ports) takes the ticket and settles it itself: `done()` forgets the
  journal entry, `hand_back()` keeps it for the next start.
- `AgentEndpoint`: the base of the object oslo dispatches to; each cast method of an
  agent's endpoint is one line routing to the intake.
- `Heartbeat`: a thread that reports the agent every interval until stopped.
- `Resync`: after start, asks the controller what this host should have and applies it.
- `AgentLifecycle`: the start-up order and the stop sequence of every agent, around
  the few steps an agent supplies (`AgentParts`); `ping_reply()` answers a ping.

It must not know what a port or an instance is; the agents' managers do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from common.errors import InvalidMessage
from common.journal import Entry, Journal
from common.messages import AgentKind, DesiredState, Message, PingReply, envelope, open_envelope
from common.workers import KeyedSerialExecutor

log = structlog.get_logger()

Reject = Callable[[str, object, str, str | None], None]


class WrongHost(InvalidMessage):
    """A valid message addressed to another host's agent."""


class Ticket:
    """The journal entry of one piece of work; settled once, by whoever finishes it."""

    def __init__(self, journal: Journal | None, entry: Entry | None) -> None:
        self._journal = journal
        self._entry = entry
        self._lock = threading.Lock()
        self.settled = False
        self.deferred = False

    def defer(self) -> Ticket:
        """The work goes on after `run` returns; its finisher calls done()/hand_back()."""
        self.deferred = True
        return self

    def done(self) -> None:
        with self._lock:
            if self.settled:
                return
            self.settled = True
        if self._journal is not None and self._entry is not None:
            self._journal.done(self._entry)

    def hand_back(self) -> None:
        """Not finished and not failed: the entry stays, the next start replays it."""
        with self._lock:
            self.settled = True


@dataclass(frozen=True)
class CastSpec:
    """How an agent takes one kind of cast.

    `key` orders the work (per instance, per port); `run` does it on a worker thread,
    given the validated message, the monotonic time it was received and its ticket.
    """

    model: type[Message]
    key: Callable[[Any], Hashable]
    run: Callable[[Any, float, Ticket], None]
    # Work the agent must see at once, before queueing, without I/O or waiting
    # (a delete cancels the build in flight of its instance).
    admit: Callable[[Any], None] | None = None
    journal: bool = True


class Intake:
    def __init__(
        self,
        host: str,
        casts: Mapping[str, CastSpec],
        executor: KeyedSerialExecutor,
        journal: Journal | None,
        on_reject: Reject,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.casts = dict(casts)
        self.executor = executor
        self.journal = journal
        self._reject = on_reject
        self._clock = clock

    # ------------------------------------------------------------------ the boundary

    def take(self, method: str, ctxt: object, payload: object, extra: Mapping[str, Any]) -> None:
        """The body of every cast endpoint method. Never raises: the cast is acked."""
        received = self._clock()
        request_id = ctxt.get("request_id") if isinstance(ctxt, dict) else None
        rid = request_id if isinstance(request_id, str) else None
        spec = self.casts[method]
        try:
            if extra:
                raise InvalidMessage(
                    schema=spec.model.SCHEMA,
                    problem=f"unexpected argument(s): {', '.join(sorted(map(str, extra)))}",
                )
            msg = self._validate(spec, payload)
        except InvalidMessage as err:
            self._refuse(method, payload, err.reason, rid)
            return
        except Exception as err:  # anything else: the same treatment, never crash the server
            self._refuse(method, payload, f"{type(err).__name__}: {err}", rid)
            return
        try:
            entry = None
            if self.journal is not None and spec.journal:
                entry = self.journal.add(method, str(spec.key(msg)), envelope(msg))
            self._queue(method, spec, msg, received, Ticket(self.journal, entry))
        except Exception as err:  # a full disk, a closed executor: say so, once
            log.exception("intake_failed", method=method, error=str(err))
            self._refuse(method, payload, f"could not take the message: {err}", rid)

    def _validate(self, spec: CastSpec, payload: object) -> Message:
        # The RPC serializer hands over a validated Message, or (what did not validate)
        # an object carrying the error and the raw value.
        error = getattr(payload, "error", None)
        if isinstance(error, InvalidMessage) and hasattr(payload, "raw"):
            raise error
        if isinstance(payload, Message) and not isinstance(payload, spec.model):
            raise InvalidMessage(schema=payload.SCHEMA, problem=f"expected {spec.model.SCHEMA}")
        msg = payload if isinstance(payload, spec.model) else open_envelope(payload, spec.model)
        host = getattr(msg, "host", self.host)
        if host != self.host:
            raise WrongHost(
                schema=spec.model.SCHEMA,
                problem=f"addressed to host {host!r}, this is {self.host!r}",
            )
        return msg

    def _queue(
        self, method: str, spec: CastSpec, msg: Message, received: float, ticket: Ticket
    ) -> None:
        if spec.admit is not None:
            spec.admit(msg)

        def work() -> None:
            try:
                spec.run(msg, received, ticket)
            except Exception as err:  # the run reports its own errors; this is a bug
                log.exception("work_crashed", method=method, error=str(err))
                ticket.done()  # replaying a crash would crash again
                return
            if not ticket.deferred:
                ticket.done()

        self.executor.submit(spec.key(msg), work)

    def _refuse(self, method: str, payload: object, problem: str, rid: str | None) -> None:
        try:
            self._reject(method, payload, problem, rid)
        except Exception as err:  # reporting a bad message must not take the server down
            log.exception("reject_report_failed", method=method, error=str(err))

    # ------------------------------------------------------------------ start, stop

    def replay(self) -> int:
        """Queue what an earlier run took and did not finish, oldest first."""
        if self.journal is None:
            return 0
        count = 0
        for entry in self.journal.pending():
            spec = self.casts.get(entry.method)
            try:
                if spec is None:
                    raise InvalidMessage(schema="journal", problem=f"unknown method {entry.method}")
                msg = self._validate(spec, entry.body)
            except InvalidMessage as err:
                log.error("journal_entry_refused", entry=entry.name, problem=err.reason)
                self.journal.done(entry)
                continue
            self._queue(entry.method, spec, msg, self._clock(), Ticket(self.journal, entry))
            count += 1
        if count:
            log.info("journal_replayed", entries=count)
        return count

    def stop(self, grace: float) -> bool:
        """Finish queued work within `grace`; what has not begun stays in the journal."""
        finished = self.executor.shutdown(grace)
        if not finished:
            log.warning("work_handed_back", abandoned=self.executor.abandoned, grace_s=grace)
        return finished

    def pending(self) -> int:
        return len(self.journal) if self.journal is not None else 0

    def pending_keys(self, method: str) -> set[str]:
        """The keys of the journal entries of `method` an earlier run left (replay()
        runs them)."""
        if self.journal is None:
            return set()
        return {entry.key for entry in self.journal.pending() if entry.method == method}


class AgentEndpoint:
    """Base of both agents' RPC endpoints: each cast method routes to the intake.

    Cast methods take any arguments (`ctxt`, `payload`, and whatever else a sender put
    in), so a stray argument is refused by the intake with a named log line instead of
    a TypeError inside oslo's dispatcher. Calls are ordinary methods of the subclass.
    """

    intake: Intake

    def _take(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ctxt = args[0] if args else kwargs.pop("ctxt", None)
        payload = kwargs.pop("payload", None)
        extra = {**kwargs, **{f"positional {i}": a for i, a in enumerate(args[1:], 2)}}
        self.intake.take(method, ctxt, payload, extra)


class Heartbeat:
    """Calls `beat` now and every `interval` seconds until stopped; a failure is logged."""

    def __init__(self, beat: Callable[[], None], interval: float, name: str = "heartbeat") -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self._beat()
            except Exception as err:  # the broker may be away; the next beat tries again
                log.warning("heartbeat_failed", error=str(err))
            if self._stop.wait(self._interval):
                return

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class Resync:
    """After start, ask the controller what this host should have, and apply the answer.

    Runs on its own thread once the agent serves, so a controller that is down delays
    nothing: it asks again every `interval` seconds, at most `attempts` times, and then
    leaves the level-triggered re-drive of the controller to close any gap. `apply`
    acts only on what the answer proves (ports released, instances deleted) and on
    what it adds; what is merely absent from it is left alone.
    """

    def __init__(
        self,
        ask: Callable[[], DesiredState],
        apply: Callable[[DesiredState], Mapping[str, int]],
        interval: float = 5.0,
        attempts: int = 12,
    ) -> None:
        self._ask = ask
        self._apply = apply
        self._interval = interval
        self._attempts = attempts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resync", daemon=True)
        self.result: Mapping[str, int] | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                desired = self._ask()
            except Exception as err:  # no controller yet, a timeout: ask again later
                log.info("resync_unanswered", attempt=attempt, error=str(err)[:200])
                if self._stop.wait(self._interval):
                    return
                continue
            try:
                self.result = self._apply(desired)
            except Exception as err:
                log.exception("resync_failed", error=str(err))
                return
            log.info("resync_done", **dict(self.result))
            return
        log.warning("resync_given_up", attempts=self._attempts)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def ping_reply(host: str, kind: AgentKind, version: str, uptime_s: float) -> PingReply:
    """The answer of every agent's `ping` call."""
    return PingReply(host=host, kind=kind, version=version, uptime_s=uptime_s)


class Server(Protocol):
    """An RPC server as the lifecycle drives it (common.rpc.RpcServer)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait(self) -> None: ...


class MetricsEndpoint(Protocol):
    """The /metrics endpoint (common.metrics.Registry)."""

    def serve(self, listen: str) -> int | None: ...
    def close(self) -> None: ...


class AgentParts(Protocol):
    """The steps of start and stop that only the agent knows; `AgentLifecycle` orders them.

    Each step may be called after a failed or interrupted start, so the stop steps
    must cope with what never started.
    """

    def prepare(self) -> None:
        """Open the host before it is reconciled (a libvirt connection, link events)."""
        ...

    def reconcile(self) -> object:
        """Bring the host and the agent's record into line (start-up reconcile)."""
        ...

    def replay(self) -> int:
        """Queue what an earlier run took and did not finish (`Intake.replay`)."""
        ...

    def start_listeners(self) -> None:
        """Start what feeds running work besides the RPC server (notification listeners)."""
        ...

    def rpc_server(self) -> Server:
        """A new, not yet started RPC server on the agent's topic and host."""
        ...

    def heartbeat(self) -> None:
        """Report the agent once (an `agent.heartbeat` event)."""
        ...

    def apply_desired(self, desired: DesiredState) -> Mapping[str, int]:
        """Resync: apply what the controller says this host should have."""
        ...

    def drain(self, grace: float) -> None:
        """Finish taken work within `grace`; hand back (leave journaled) what has not begun."""
        ...

    def stop_listeners(self) -> None:
        """Stop what start_listeners() (or prepare()) started; running work no longer
        needs it."""
        ...

    def close(self) -> None:
        """Close the transports and the host connections."""
        ...


class AgentLifecycle:
    """The start-up order and the stop sequence of every agent (a `common.service.Service`
    delegates its start() and stop() here).

    start: prepare -> reconcile -> replay the journal -> listeners -> RPC server ->
    metrics -> heartbeat -> resync (on its own thread) -> `{kind}_agent_started`
    (`compute_agent_started`, `l2_agent_started`). READY=1 is sent by
    common.service.run() once start() returns, so systemd hears "ready" only then.

    stop: resync stops -> the RPC server stops taking casts and waits until every cast
    already taken (acked by the broker) has passed the endpoint into the journal ->
    the agent drains within the grace (the listeners keep running, so work in flight
    can still complete) -> listeners -> heartbeat -> metrics -> the agent closes.
    """

    def __init__(
        self,
        parts: AgentParts,
        *,
        kind: AgentKind,
        host: str,
        version: str,
        heartbeat_interval: float,
        metrics: MetricsEndpoint | None = None,
        metrics_listen: str | None = None,
        ask_desired: Callable[[], DesiredState] | None = None,
        heartbeat_stop_timeout: float = 5.0,
    ) -> None:
        self._parts = parts
        self.kind = kind
        self.host = host
        self.version = version
        self._interval = heartbeat_interval
        self._metrics = metrics
        self._metrics_listen = metrics_listen
        self._ask_desired = ask_desired
        self._heartbeat_stop = heartbeat_stop_timeout
        self._server: Server | None = None
        self._heartbeat: Heartbeat | None = None
        self._resync: Resync | None = None
        self.metrics_port: int | None = None

    def start(self) -> None:
        parts = self._parts
        parts.prepare()
        parts.reconcile()
        # Work an earlier run took and did not finish (kill -9) goes first, in the order
        # it was taken, then the broker's.
        parts.replay()
        parts.start_listeners()
        self._server = parts.rpc_server()
        self._server.start()
        if self._metrics is not None and self._metrics_listen:
            # Port 0 binds any free port ([metrics] listen); the bound one is logged.
            self.metrics_port = self._metrics.serve(self._metrics_listen)
            log.info("metrics_serving", listen=self._metrics_listen, port=self.metrics_port)
        self._heartbeat = Heartbeat(parts.heartbeat, self._interval, name=f"{self.kind}-heartbeat")
        self._heartbeat.start()
        if self._ask_desired is not None:
            self._resync = Resync(self._ask_desired, parts.apply_desired)
            self._resync.start()
        log.info(f"{self.kind}_agent_started", host=self.host, version=self.version)

    def stop(self, grace: float) -> None:
        parts = self._parts
        took: dict[str, float] = {}
        mark = time.monotonic()

        def step(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            took[f"{name}_s"] = round(now - mark, 3)
            mark = now

        if self._resync is not None:
            self._resync.stop()
        step("resync")
        if self._server is not None:
            # No new cast is taken; wait() returns once every cast already taken (and
            # acked by the broker on arrival) has passed the endpoint into the journal
            # and the queue. Draining before that would refuse them, and the broker has
            # already forgotten them.
            self._server.stop()
            self._server.wait()
        step("rpc_server")
        parts.drain(grace)
        step("drain")
        parts.stop_listeners()
        step("listeners")
        if self._heartbeat is not None:
            self._heartbeat.stop(self._heartbeat_stop)
        if self._metrics is not None:
            self._metrics.close()
        step("heartbeat_metrics")
        parts.close()
        step("close")
        # Where a slow stop spent its time, step by step.
        log.info(f"{self.kind}_agent_stopped", host=self.host, **took)
