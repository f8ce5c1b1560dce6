"""agents-controller as a daemon: start-up order, health, graceful stop.

start(): database reachable and migrated -> networks from config -> broker side
(casts, the durable event queue, the RPC server agents call on topic `controller`:
`desired_state`, see rpcapi.py) -> reconciler (re-drive, host sync) -> HTTP API
listening. READY=1 (sent by common.service.run) comes only after all of that.
stop(grace): the RPC server stops taking calls and the API stops taking requests,
both finish those in flight, then the reconciler and the consumer stop; nothing is
failed on the way out: open operations stay in the database and the next controller
(or this one, restarted) drives them on.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import structlog
import uvicorn

from agents.controller.api import Context, make_app
from agents.controller.api_tls import check_files
from agents.controller.bus import Bus
from agents.controller.db.engine import Database, DatabaseError
from agents.controller.db.store import Store
from agents.controller.reconciler import Reconciler
from agents.controller.rpcapi import ControllerEndpoint
from agents.controller.settings import ControllerConfig, ControllerSettings
from agents.controller.tokens import Tokens
from common.errors import AgentsError
from common.rpc import CONTROLLER_TOPIC, EventConsumer, Messaging, RpcServer

log = structlog.get_logger()


class ListenError(AgentsError):
    msg_fmt = "cannot listen on {listen}: {problem}"


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto is
    # IPPROTO_TCP, and accepted ones inherit it; with proto 0 every response on a kept-
    # alive connection waited ~40 ms for the client's delayed ACK (headers, then body)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as err:
        sock.close()
        raise ListenError(listen=listen, problem=err.strerror or str(err)) from err
    sock.listen(512)
    return sock


def api_security(settings: ControllerSettings) -> Tokens | None:
    """The token file loaded (auth = tokens) and the TLS files checked, or a named error."""
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        check_files(settings.tls_cert_file, settings.tls_key_file)
    if settings.auth == "none":
        log.warning("api_auth_disabled", listen=settings.listen)
        return None
    return Tokens(settings.tokens_file)


class Controller:
    def __init__(self, config: ControllerConfig, reload_log_level: Any = None) -> None:
        self.config = config
        self.settings = config.controller
        self._reload_log_level = reload_log_level
        self.db: Database | None = None
        self.messaging: Messaging | None = None
        self.consumer: EventConsumer | None = None
        self.rpc: RpcServer | None = None
        self.reconciler: Reconciler | None = None
        self.server: uvicorn.Server | None = None
        self._server_thread: threading.Thread | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        import random

        from agents.controller.bus import Hub

        # The API's tokens and TLS files first: a bad one fails the start at once, named.
        tokens = api_security(self.settings)
        db = self.db = Database(self.config.database_url())
        db.ping()
        db.claim_sqlite()  # a second controller on one SQLite file stops here
        store = Store(db, self.settings.agent_down_time)
        # Replicas starting at once on one PostgreSQL database take turns here: the
        # first migrates and syncs the networks, the next finds both done.
        with db.startup_lock():
            db.upgrade()
            store.sync_networks(self.config.networks.values())
        log.info("database_ready", url=db.safe_url, revision=db.current_revision())

        # No probe: the event consumer below waits for the broker as long as it takes
        # (logging why every 10 s), so a broker that is down at boot delays READY
        # instead of failing the start into systemd's start limit.
        self.messaging = Messaging(self.config.messaging)
        self.messaging.verify_tls()  # an untrusted broker certificate: a named start_failed
        hub = Hub()
        bus = Bus(self.messaging, store, hub, self.settings.call_timeout)
        events_topic = self.config.messaging.events_topic
        self.consumer = EventConsumer(
            self.config.messaging,
            self.settings.events_queue,
            [f"{events_topic}.#", "vif_events.#"],
            bus.on_event,
            bus.on_bad_event,
            batch_handler=bus.on_events,
        )
        self.consumer.start()
        # Agents ask for their desired state on start; every replica serves the one
        # deployment-wide queue, any of them answers.
        self.rpc = self.messaging.rpc_server(
            CONTROLLER_TOPIC,
            None,
            [ControllerEndpoint(store, self.settings.events_retention_days)],
        )
        self.rpc.start()
        self.reconciler = Reconciler(store, bus, self.settings)
        self.reconciler.start()

        ctx = Context(
            config=self.config,
            store=store,
            bus=bus,
            hub=hub,
            healthy=self.health,
            rng=random.SystemRandom(),
            tokens=tokens,
        )
        sock = bind(self.settings.listen)
        self.port = sock.getsockname()[1]
        server = self.server = uvicorn.Server(
            uvicorn.Config(
                make_app(ctx),
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(self.settings.stop_grace) or None,
                lifespan="off",
                ssl_certfile=self.settings.tls_cert_file,
                ssl_keyfile=self.settings.tls_key_file,
            )
        )
        self._server_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True
        )
        self._server_thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._server_thread.is_alive() or time.monotonic() > deadline:
                raise ListenError(
                    listen=self.settings.listen, problem="the HTTP server did not start"
                )
            time.sleep(0.01)
        log.info(
            "controller_listening",
            listen=self.settings.listen,
            port=self.port,
            scheme="https" if self.settings.tls_cert_file else "http",
            auth=self.settings.auth,
        )

    def health(self) -> dict[str, str]:
        parts = {"database": "ok", "broker": "ok"}
        try:
            if self.db is not None:
                self.db.ping()
        except DatabaseError as err:
            parts["database"] = err.reason
        if self.consumer is None or not self.consumer.consuming():
            parts["broker"] = "not consuming agent events (reconnecting)"
        return parts

    def healthy(self) -> bool:
        server_ok = self._server_thread is not None and self._server_thread.is_alive()
        loop_ok = self.reconciler is not None and self.reconciler.healthy()
        return server_ok and loop_ok

    def reload(self) -> None:
        if self._reload_log_level is not None:
            self._reload_log_level()

    def stop(self, grace: float) -> None:
        if self.rpc is not None:
            self.rpc.stop()  # no new call is taken; another replica answers it
        if self.server is not None:
            self.server.should_exit = True
        if self._server_thread is not None:
            self._server_thread.join(timeout=grace + 1)
        if self.rpc is not None:
            self.rpc.wait()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.consumer is not None:
            self.consumer.stop()
        if self.messaging is not None:
            self.messaging.close()
        if self.db is not None:
            self.db.close()
