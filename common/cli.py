"""Command-line surface every agent daemon shares: arguments, config files, version.

Both daemons take the same flags (`--config-file` repeatable, `--host`, `--version`) and
fall back to the same files under /etc/agents, so an operator learns them once.
This module parses and loads; it never builds agent objects or starts anything.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

from common import __version__
from common.config import BaseConfig, load

C = TypeVar("C", bound=BaseConfig)

SHARED_CONFIG = "/etc/agents/shared.conf"


def default_config_files(prog: str) -> list[str]:
    return [SHARED_CONFIG, f"/etc/agents/{prog}.conf"]


def daemon_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config-file",
        action="append",
        dest="config_files",
        default=[],
        metavar="FILE",
        help="INI file; repeatable, later files override earlier ones "
        f"(default: {' '.join(default_config_files(prog))})",
    )
    parser.add_argument("--host", help="host name this agent serves (overrides [DEFAULT] host)")
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    return parser


def config_files(prog: str, args: argparse.Namespace) -> list[str]:
    return list(args.config_files) or default_config_files(prog)


def load_daemon_config(model: type[C], prog: str, args: argparse.Namespace) -> C:
    """Load the daemon's files; `--host` wins over [DEFAULT] host. Raises AgentsError."""
    return load(model, config_files(prog, args), overrides={"DEFAULT": {"host": args.host}})
