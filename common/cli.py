"""Command-line surface every agent daemon shares: arguments, config files, version.

Both daemons take the same flags (`--config-file` repeatable, `--host`, `--version`) and
fall back to the same files under /etc/agents, so an operator learns them once.
This module parses and loads; it never builds agent objects or starts anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path
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
    add_config_dir(parser)
    parser.add_argument("--host", help="host name this agent serves (overrides [DEFAULT] host)")
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    return parser


def add_config_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir",
        dest="config_dir",
        metavar="DIR",
        help="read DIR/*.conf (sorted) after the files, when DIR exists: the daemon's own"
        " secrets, such as its broker account (mode 0700, only its user may read it)",
    )


def config_dir_files(config_dir: str | None) -> list[str]:
    """The *.conf files of `config_dir` in name order; none when it does not exist."""
    if not config_dir:
        return []
    path = Path(config_dir)
    if not path.is_dir():
        return []
    return [str(p) for p in sorted(path.glob("*.conf")) if p.is_file()]


def config_files(prog: str, args: argparse.Namespace) -> list[str]:
    files = list(args.config_files) or default_config_files(prog)
    return files + config_dir_files(getattr(args, "config_dir", None))


def load_daemon_config(model: type[C], prog: str, args: argparse.Namespace) -> C:
    """Load the daemon's files; `--host` wins over [DEFAULT] host. Raises AgentsError."""
    return load(model, config_files(prog, args), overrides={"DEFAULT": {"host": args.host}})
