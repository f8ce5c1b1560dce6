"""`agents-controller token add|remove|list`: the API's tokens, managed from the shell.

    agents-controller token add --role admin|reader NAME   print a new secret, once
    agents-controller token remove NAME                    the token stops working at once
    agents-controller token list                           roles and names (no secrets)

They act on `[controller] tokens_file` (or `--tokens-file`); the file holds hashes only
(agents.controller.tokens). `add` prints the secret on stdout and nothing else, so
`agents-controller token add --role reader ci > ci.token` (under `umask 077`) is the
whole hand-over. Wiring only: the work is in `tokens`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.controller import tokens
from agents.controller.settings import ControllerConfig
from common.errors import AgentsError

PROG = "agents-controller"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "token",
        help="API tokens: add (prints the secret once), remove, list",
        description="Manage the API's bearer tokens in [controller] tokens_file.",
    )
    p.add_argument(
        "--tokens-file", type=Path, metavar="FILE", help="instead of [controller] tokens_file"
    )
    actions = p.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="mint a token and print its secret (only this once)")
    add.add_argument(
        "--role",
        required=True,
        choices=tokens.ROLES,
        help="admin: everything; reader: GET only (list, show, watch, agents)",
    )
    add.add_argument("name", metavar="NAME", help="who or what holds it (unique)")
    rm = actions.add_parser("remove", help="remove a token: it is refused from the next request")
    rm.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="roles and names of the tokens (no secrets)")


def run(config: ControllerConfig, args: argparse.Namespace) -> int:
    path: Path = args.tokens_file or config.controller.tokens_file
    try:
        if args.token_action == "add":
            secret = tokens.add(path, args.role, args.name)
            print(
                f"{PROG}: token {args.name!r} ({args.role}) added to {path};"
                " its secret is on stdout, shown this once",
                file=sys.stderr,
            )
            print(secret, flush=True)
        elif args.token_action == "remove":
            entry = tokens.remove(path, args.name)
            print(f"{PROG}: token {entry.name!r} ({entry.role}) removed from {path}")
        else:
            for entry in tokens.read(path):
                print(f"{entry.role}\t{entry.name}")
    except AgentsError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file's directory missing or not writable
        print(f"{PROG}: token file {path}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0
