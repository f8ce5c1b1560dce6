"""`agents-controller broker-accounts ...` and `agents-controller certs ...`: argument
parsing and output of the two broker administration commands.

    broker-accounts setup [--host NODE]...   the controller's account (and hosts')
    broker-accounts add-host NODE            compute-NODE and l2-NODE
    broker-accounts remove-host NODE
    certs make-ca DIR                        a private CA (ca.pem, ca.key)
    certs make-cert DIR NAME [--san X]...    a certificate signed by DIR's CA

Accounts are made with `rabbitmqctl` on the broker's machine, as root; each account's
transport URL (with its password) goes into `<out>/<daemon>.d/broker.conf`, which the
daemon reads through `--config-dir` (systemd/*.service). Passwords are never printed.
Wiring only: the work is in `broker_accounts` and `certs`.
"""

from __future__ import annotations

import argparse
import pwd
import sys
from pathlib import Path
from typing import Any

from common.config import BaseConfig
from common.errors import AgentsError

PROG = "agents-controller"


def add_parsers(sub: Any) -> None:
    acc = sub.add_parser(
        "broker-accounts",
        help="create the broker accounts of the controller and of each host's agents",
    )
    acc.add_argument("action", choices=["setup", "add-host", "remove-host"])
    acc.add_argument("node", nargs="?", help="the host (add-host, remove-host)")
    acc.add_argument("--host", action="append", default=[], help="setup: also this host")
    acc.add_argument(
        "--out",
        type=Path,
        default=Path("/etc/agents"),
        help="where <daemon>.d/broker.conf files go (default /etc/agents; for a host"
        " on another machine: a directory to copy there)",
    )
    acc.add_argument("--broker", help="HOST:PORT the daemons connect to (default: transport_url's)")
    acc.add_argument("--vhost", help="RabbitMQ vhost (default: transport_url's, or /)")
    acc.add_argument("--prefix", default="", help="prefix of the account names")
    acc.add_argument(
        "--controller-user",
        default="agents",
        help="owner of controller.d/broker.conf (the controller's system user)",
    )
    certs = sub.add_parser("certs", help="a private CA and certificates for the broker's TLS")
    certs.add_argument("action", choices=["make-ca", "make-cert"])
    certs.add_argument("dir", type=Path, help="the CA's directory (ca.pem, ca.key)")
    certs.add_argument("name", nargs="?", help="make-cert: the certificate's name")
    certs.add_argument(
        "--san", action="append", default=[], help="DNS name or IP address (repeatable)"
    )
    certs.add_argument("--client", action="store_true", help="a client certificate")
    certs.add_argument("--out", type=Path, help="make-cert: where to write (default: dir)")
    certs.add_argument("--force", action="store_true", help="replace existing files")


def certs(args: argparse.Namespace) -> int:
    from agents.controller import certs as tls

    try:
        if args.action == "make-ca":
            pair = tls.make_ca(args.dir, force=args.force)
        else:
            if not args.name:
                print(f"{PROG}: certs make-cert needs a NAME", file=sys.stderr)
                return 2
            ca = tls.Pair(args.dir / "ca.pem", args.dir / "ca.key")
            pair = tls.make_cert(
                ca, args.out or args.dir, args.name, args.san, not args.client, args.force
            )
    except AgentsError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    print(f"certificate {pair.cert}\nkey {pair.key} (mode 0600)")
    return 0


def _owner(user: str) -> str | None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user


def broker_accounts(config: BaseConfig, args: argparse.Namespace) -> int:
    from agents.controller import broker_accounts as ba

    m = config.messaging
    dep = ba.deployment_of(
        m.transport_url, m.control_exchange, m.events_topic, args.broker, args.vhost, args.prefix
    )
    roles: list[tuple[str, str | None]] = []
    if args.action == "setup":
        roles.append(("controller", None))
        hosts = list(args.host)
    else:
        if not args.node:
            print(f"{PROG}: broker-accounts {args.action} needs the host's name", file=sys.stderr)
            return 2
        hosts = [args.node]
    for host in hosts:
        roles += [("compute", host), ("l2", host)]
    try:
        admin = ba.BrokerAdmin(dep.vhost)
        if args.action == "remove-host":
            ba.remove_accounts(admin, dep, roles)
            print(f"removed the accounts of {args.node}")
            return 0
        owners = {"controller": _owner(args.controller_user), "compute": "root", "l2": "root"}
        ba.set_accounts(admin, dep, roles, args.out, owners)
    except AgentsError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    return 0
