"""`l2-agent` entry point: parse arguments, load config, build the collaborators, run.

Wiring only: every object is created here and handed to the ones that use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from agents.l2.endpoint import L2Endpoint
from agents.l2.manager import L2Manager
from agents.l2.metrics import L2Metrics
from agents.l2.netlink import LinkEvent, LinkEvents, Netlink
from agents.l2.service import L2Agent
from agents.l2.settings import L2Config
from agents.l2.store import PortStore
from common import __version__, service
from common import logging as agent_logging
from common.cli import config_files, daemon_parser
from common.config import load
from common.errors import AgentsError
from common.journal import Journal
from common.metrics import Registry
from common.rpc import L2_TOPIC, Messaging, agent_events_topic, vif_events_topic
from common.workers import KeyedSerialExecutor

log = structlog.get_logger()


PROG = "l2-agent"


def load_config(files: Sequence[str], host: str | None) -> L2Config:
    return load(L2Config, files, {"DEFAULT": {"host": host}})


def build(config: L2Config, files: Sequence[str], host: str | None) -> L2Agent:
    # One dispatch thread: oslo hands messages to the endpoint in order of arrival, and
    # the endpoint only queues them (per port) and returns, so order is kept for free.
    messaging = Messaging(config.messaging, dispatch_threads=1)
    messaging.verify_tls()  # a broker certificate its CA does not vouch for: stop here
    host_name = config.DEFAULT.host
    netlink = Netlink(config.l2.namespace)
    state = Path(config.DEFAULT.state_dir) / "l2-agent" / host_name
    store = PortStore(state / "ports")
    metrics = L2Metrics(Registry("l2_agent"))
    vif_events = messaging.notifier(f"l2-agent.{host_name}", vif_events_topic(host_name))
    agent_events = messaging.notifier(
        f"l2-agent.{host_name}", agent_events_topic(config.messaging, host_name), declare=False
    )
    manager = L2Manager(
        config=config, links=netlink, store=store, events=vif_events, metrics=metrics
    )
    executor = KeyedSerialExecutor(config.l2.workers)

    def reload_log_level() -> None:
        fresh = load_config(files, host)
        agent_logging.set_level(fresh.DEFAULT.log_level)

    def close() -> None:
        netlink.close()
        messaging.close()

    def link_events(on_event: Callable[[LinkEvent], None]) -> LinkEvents:
        return LinkEvents(config.l2.namespace, on_event)

    agent = L2Agent(
        manager=manager,
        executor=executor,
        store=store,
        make_server=lambda: messaging.rpc_server(L2_TOPIC, host_name, [endpoint]),
        link_events=link_events,
        agent_events=agent_events,
        metrics=metrics,
        version=__version__,
        heartbeat_interval=config.l2.heartbeat_interval,
        metrics_listen=config.metrics.listen,
        reload_log_level=reload_log_level,
        on_close=close,
        replay=lambda: endpoint.intake.replay(),
        ask_desired=lambda: messaging.desired_state(host_name, "l2"),
    )
    endpoint = L2Endpoint(
        manager=manager,
        executor=executor,
        vif_events=vif_events,
        agent_events=agent_events,
        metrics=metrics,
        ping=agent.ping,
        heartbeat=agent.heartbeat,
        journal=Journal(state / "journal"),
    )
    return agent


def main(argv: Sequence[str] | None = None) -> int:
    args = daemon_parser(PROG, "Wires taps, bridges and uplinks for ports.").parse_args(argv)
    files = config_files(PROG, args)
    try:
        config = load_config(files, args.host)
    except AgentsError as err:
        print(f"l2-agent: {err}", file=sys.stderr)
        return 2
    agent_logging.setup(config.DEFAULT.log_level, config.DEFAULT.log_format)
    try:
        agent = build(config, files, args.host)
    except AgentsError as err:
        log.error("l2_agent_setup_failed", error=err.reason)
        return 1
    return service.run(agent, name="l2-agent", grace=config.l2.stop_grace)


if __name__ == "__main__":
    sys.exit(main())
