"""compute-agent entry point: parse arguments, load config, wire the parts, run.

Wiring only: every collaborator is built here and handed to its user; no logic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

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
from common import config as config_mod
from common import logging as logging_mod
from common.errors import AgentsError
from common.metrics import Registry
from common.rpc import Messaging
from common.service import run

DEFAULT_CONFIG_FILES = ["/etc/agents/shared.conf", "/etc/agents/compute-agent.conf"]


def agent_version() -> str:
    try:
        return dist_version("agents")
    except PackageNotFoundError:
        return "0+unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compute-agent", description="Builds and runs guests for this host (libvirt)."
    )
    parser.add_argument(
        "--config-file",
        action="append",
        dest="config_files",
        metavar="FILE",
        help="INI file; repeatable, later files override earlier ones "
        f"(default: {' '.join(DEFAULT_CONFIG_FILES)})",
    )
    parser.add_argument("--host", help="host name this agent serves (overrides [DEFAULT] host)")
    parser.add_argument("--version", action="version", version=f"compute-agent {agent_version()}")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> ComputeConfig:
    return config_mod.load(
        ComputeConfig,
        args.config_files or DEFAULT_CONFIG_FILES,
        overrides={"DEFAULT": {"host": args.host}},
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
    registry = Registry("compute_agent")
    metrics = ComputeMetrics(registry)
    hypervisor = Hypervisor(settings.libvirt_uri, settings.domain_type)
    reporter = Reporter(
        messaging.notifier(f"compute.{host}", config.messaging.events_topic), host=host
    )
    manager = ComputeManager(
        config=config,
        hypervisor=hypervisor,
        images=ImageStore(settings.image_dir, settings.instances_dir),
        waiter=VifWaiter(retention=settings.vif_event_retention),
        reporter=reporter,
        metrics=metrics,
        version=agent_version(),
        taps=TapProbe(),
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
    )
    return run(service, name="compute-agent", grace=settings.stop_grace)


if __name__ == "__main__":
    sys.exit(main())
