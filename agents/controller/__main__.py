"""`agents-controller` entry point: arguments, config, then serve (or a db command).

    agents-controller [--config-file FILE]...              serve the API, drive the agents
    agents-controller [--config-file FILE]... db upgrade   migrate the database and exit
    agents-controller [--config-file FILE]... db current   print the schema revision

Wiring only: the objects are made in `service.Controller.start()`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from common import __version__, service
from common import logging as agent_logging
from common.config import load
from common.errors import AgentsError

PROG = "agents-controller"
DEFAULT_FILES = ["/etc/agents/shared.conf", "/etc/agents/controller.conf"]

log = structlog.get_logger()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Holds desired state (instances, ports, addresses, operations) and"
        " drives the agents; serves the REST API.",
    )
    p.add_argument(
        "--config-file",
        action="append",
        dest="config_files",
        default=[],
        metavar="FILE",
        help=f"INI file; repeatable, later wins (default: {' '.join(DEFAULT_FILES)})",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command")
    db = sub.add_parser("db", help="database commands")
    db.add_argument("action", choices=["upgrade", "current"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from agents.controller.settings import ControllerConfig

    args = parser().parse_args(argv)
    files = list(args.config_files) or DEFAULT_FILES
    try:
        config = load(ControllerConfig, files)
    except AgentsError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    agent_logging.setup(config.DEFAULT.log_level, config.DEFAULT.log_format)
    if args.command == "db":
        return _db(config, args.action)
    from agents.controller.service import Controller

    def reload_log_level() -> None:
        agent_logging.set_level(load(ControllerConfig, files).DEFAULT.log_level)

    controller = Controller(config, reload_log_level)
    return service.run(controller, name=PROG, grace=config.controller.stop_grace)


def _db(config: object, action: str) -> int:
    from agents.controller.db.engine import Database
    from agents.controller.settings import ControllerConfig

    assert isinstance(config, ControllerConfig)
    db = Database(config.database_url())
    try:
        if action == "upgrade":
            db.upgrade()
        print(f"{db.safe_url}: revision {db.current_revision()} (head {db.head_revision()})")
        return 0
    except AgentsError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
