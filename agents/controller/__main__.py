"""`agents-controller` entry point: arguments, config, then serve (or a db command).

    agents-controller [--config-file FILE]...              serve the API, drive the agents
    agents-controller [--config-file FILE]... db upgrade   migrate the database and exit
    agents-controller [--config-file FILE]... db current   print the schema revision
    agents-controller [--config-file FILE]... token add --role admin|reader NAME
                                                 mint an API token: its secret on stdout, once
    agents-controller [--config-file FILE]... token remove NAME | token list

Wiring only: the objects are made in `service.Controller.start()`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from agents.controller import broker_cli, token_cli
from common import __version__, service
from common import logging as agent_logging
from common.cli import add_config_dir, config_dir_files
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
    add_config_dir(p)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command")
    db = sub.add_parser("db", help="database commands")
    db.add_argument("action", choices=["upgrade", "current"])
    broker_cli.add_parsers(sub)
    token_cli.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from agents.controller.settings import ControllerConfig

    args = parser().parse_args(argv)
    if args.command == "certs":  # needs no config
        return broker_cli.certs(args)
    files = (list(args.config_files) or DEFAULT_FILES) + config_dir_files(args.config_dir)
    try:
        config = load(ControllerConfig, files)
    except AgentsError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    agent_logging.setup(config.DEFAULT.log_level, config.DEFAULT.log_format)
    if args.command == "db":
        return _db(config, args.action)
    if args.command == "token":
        return token_cli.run(config, args)
    if args.command == "broker-accounts":
        return broker_cli.broker_accounts(config, args)
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
            with db.startup_lock():  # not beside a replica that is migrating too
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
