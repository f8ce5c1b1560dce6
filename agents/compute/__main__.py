"""compute-agent entry point: parse arguments, load config, wire the parts, run.

Wiring only: every collaborator is built here and handed to its user; no logic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from agents.compute.hypervisor import Hypervisor
from agents.compute.images import ImageStore
from agents.compute.manager import ComputeManager
from agents.compute.reporter import Reporter
from agents.compute.service import ComputeService
from agents.compute.settings import ComputeConfig
from agents.compute.taps import TapProbe
from agents.compute.telemetry import ComputeMetrics
from agents.compute.waiter import VifWaiter
from common import __version__
from common import logging as logging_mod
from common.cli import daemon_parser, load_daemon_config
from common.errors import AgentsError
from common.journal import Journal
from common.metrics import Registry
from common.rpc import Messaging, agent_events_topic
from common.service import run
from common.workers import KeyedSerialExecutor

PROG = "compute-agent"
# One sender batching everything queued: one channel keeps every event in order, and a
# second sender mostly adds GIL contention (bench/compute_bench.py measures both).
NOTIFY_SENDERS = 1


def load_config(args: argparse.Namespace) -> ComputeConfig:
    return load_daemon_config(ComputeConfig, PROG, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = daemon_parser(PROG, "Builds and runs guests for this host (libvirt).").parse_args(argv)
    try:
        config = load_config(args)
    except AgentsError as err:
        print(f"compute-agent: {err}", file=sys.stderr)
        return 2
    logging_mod.setup(config.DEFAULT.log_level, config.DEFAULT.log_format)
    structlog.contextvars.bind_contextvars(host=config.DEFAULT.host)
    settings = config.compute
    host = config.DEFAULT.host

    messaging = Messaging(config.messaging)
    try:
        messaging.verify_tls()  # a broker certificate its CA does not vouch for: stop here
    except AgentsError as err:
        structlog.get_logger().error("start_failed", service=PROG, error=err.reason)
        return 1
    registry = Registry("compute_agent")
    metrics = ComputeMetrics(registry)
    hypervisor = Hypervisor(settings.libvirt_uri, settings.domain_type)
    # Batched, confirmed publishing (common.rpc.BatchNotifier): one connection per sender.
    reporter = Reporter(
        None,
        host=host,
        batch_publishers=[
            messaging.batch_notifier(
                f"compute.{host}", agent_events_topic(config.messaging, host), declare=False
            )
            for _ in range(NOTIFY_SENDERS)
        ],
    )
    state = Path(config.DEFAULT.state_dir) / "compute-agent" / host
    manager = ComputeManager(
        config=config,
        hypervisor=hypervisor,
        images=ImageStore(settings.image_dir, settings.instances_dir),
        waiter=VifWaiter(retention=settings.vif_event_retention),
        reporter=reporter,
        metrics=metrics,
        version=__version__,
        taps=TapProbe(),
        journal=Journal(state / "journal"),
        tombstones=state / "tombstones.json",
        executor=KeyedSerialExecutor(4, name="compute-intake"),
    )

    def reload_config() -> None:
        fresh = load_config(args)
        logging_mod.set_level(fresh.DEFAULT.log_level)

    service = ComputeService(
        manager=manager,
        hypervisor=hypervisor,
        reporter=reporter,
        messaging=messaging,
        registry=registry,
        metrics_listen=config.metrics.listen,
        heartbeat_interval=settings.heartbeat_interval,
        reload_config=reload_config,
        ask_desired=lambda: messaging.desired_state(host, "compute"),
    )
    return run(service, name="compute-agent", grace=settings.stop_grace)


if __name__ == "__main__":
    sys.exit(main())
