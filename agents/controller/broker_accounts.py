"""Broker accounts of one deployment: one for the controller, one per agent per host.

What it owns:
- `grants()`: the RabbitMQ permissions of each role (pure): the vhost's configure /
  write / read patterns (queue and exchange names) and the topic permissions on the
  control exchange (routing keys it may publish, binding keys it may bind), so that
  the agents of host H consume only H's queues and publish only H's events;
- `BrokerAdmin`: `rabbitmqctl` run with argument lists (never a shell string); a
  password goes to it on stdin, never on a command line or into a log;
- `write_transport_conf()`: the daemon's `[messaging] transport_url` with its password,
  in a file of its own (mode 0600, owned by the daemon's user), next to shared.conf.

The account names: `<prefix>controller`, `<prefix>compute-<host>`, `<prefix>l2-<host>`.

What the patterns follow from (what oslo.messaging and common.rpc declare, measured):
an RPC server declares the control exchange, the queues `<topic>` and
`<topic>.<server>` bound with those keys, the fanout exchange `<topic>_fanout` and
its queue `<topic>_fanout_<hex>`; a caller declares `reply_<hex>` (queue and direct
exchange); declaring needs `configure` on the name, binding needs `write` on the queue
and `read` on the exchange (and the topic read pattern on the key), consuming needs
`read` on the queue, publishing `write` on the exchange (and the topic write pattern
on the key). The default exchange (`amq.default`) is granted to nobody but the
controller: publishing there would reach any queue by name.

Must not: print or log a password; touch users it does not name.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import structlog

from common.errors import AgentsError

log = structlog.get_logger()

ROLES = ("compute", "l2")
# the notification priorities an agent publishes under its own events topic
_PRIORITY = r"[a-z]+"
_HEX = r"[0-9a-f]+"
# common.rpc.REPLY_EXCHANGE (not imported: this module must not pull oslo in)
REPLY_EXCHANGE = "agents_replies"


class BrokerAdminError(AgentsError):
    msg_fmt = "rabbitmqctl {action} failed: {problem}"


@dataclass(frozen=True)
class Grant:
    """What one account may do on the vhost and on the control exchange."""

    user: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def _any(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def user_name(role: str, host: str | None, prefix: str = "") -> str:
    if role == "controller":
        return f"{prefix}controller"
    if role not in ROLES or not host:
        raise ValueError(f"role must be controller, compute or l2 (with a host), got {role!r}")
    return f"{prefix}{role}-{host}"


def grants(
    role: str,
    host: str | None,
    exchange: str,
    events_topic: str = "agents_events",
    prefix: str = "",
) -> Grant:
    """The permissions of `role` (controller, compute, l2) for `host` in a deployment
    whose control exchange is `exchange`."""
    x = re.escape(exchange)
    ev = re.escape(events_topic)
    controller_call = rf"controller\.{x}"  # the agents' desired_state (deployment-wide target)
    if role == "controller":
        # The controller casts to every host, serves `controller`, reads the events
        # queue: every name of the vhost, but only casts and replies as routing keys.
        return Grant(
            user=user_name(role, None, prefix),
            configure=".*",
            write=".*",
            read=".*",
            topic_write=r"^((compute|l2-agent)\.[^.].*|controller(\..*)?)$",
            topic_read=".*",
        )
    if host is None:
        raise ValueError(f"role {role} needs a host")
    h = re.escape(host)
    topic = "compute" if role == "compute" else "l2-agent"
    t = re.escape(topic)
    own_events = rf"{ev}\.{h}\.{_PRIORITY}"
    vif = rf"vif_events\.{h}\.{_PRIORITY}"
    # oslo's RPC server: its topic queue, its host queue, the fanout exchange and queue;
    # every caller: its reply queue and exchange. Both redeclare the control exchange.
    queues = [x, t, rf"{t}\.{h}", rf"{t}_fanout", rf"{t}_fanout_{_HEX}", rf"reply_{_HEX}", vif]
    queues.append(REPLY_EXCHANGE)
    topic_read = [t, rf"{t}\.{h}", vif]
    topic_write = [own_events, controller_call]
    if role == "l2":
        topic_write.append(vif)  # port.vif_plugged for its own host's compute-agent
    return Grant(
        user=user_name(role, host, prefix),
        configure=_any(*queues),
        write=_any(*[q for q in queues if q != rf"{t}_fanout"]),
        read=_any(*queues),
        topic_write=_any(*topic_write),
        topic_read=_any(*topic_read),
    )


def transport_url(user: str, password: str, address: str, vhost: str) -> str:
    """oslo's form: rabbit://USER:PASSWORD@HOST:PORT/VHOST (vhost `/` is the empty path)."""
    path = "" if vhost == "/" else quote(vhost, safe="")
    return f"rabbit://{quote(user, safe='')}:{quote(password, safe='')}@{address}/{path}"


def new_password() -> str:
    return secrets.token_urlsafe(24)


class BrokerAdmin:
    """rabbitmqctl on this machine, as root (argument lists only)."""

    def __init__(self, vhost: str = "/", rabbitmqctl: str | None = None) -> None:
        found = rabbitmqctl or shutil.which("rabbitmqctl")
        if found is None:
            raise BrokerAdminError(
                action="(any)",
                problem="rabbitmqctl is not installed here: run this on the broker's machine",
            )
        self.rabbitmqctl = found
        self.vhost = vhost

    def _run(self, action: str, args: Sequence[str], stdin: str | None = None) -> str:
        try:
            result = subprocess.run(
                [self.rabbitmqctl, "--quiet", *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BrokerAdminError(action=action, problem=str(err)) from err
        if result.returncode != 0:
            problem = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise BrokerAdminError(action=action, problem=" ".join(problem[-3:])[:500])
        return result.stdout

    def users(self) -> set[str]:
        out = self._run("list_users", ["list_users", "--no-table-headers"])
        return {line.split("\t")[0] for line in out.splitlines() if line.strip()}

    def ensure_vhost(self) -> None:
        if self.vhost == "/":
            return
        out = self._run("list_vhosts", ["list_vhosts", "--no-table-headers"])
        if self.vhost not in {ln.strip() for ln in out.splitlines()}:
            self._run("add_vhost", ["add_vhost", self.vhost])

    def set_account(
        self, grant: Grant, password: str, exchange: str, existing: set[str] | None = None
    ) -> None:
        """Create the user (or give it this new password) and set its permissions;
        `existing`: the broker's users, when the caller listed them already."""
        if grant.user in (self.users() if existing is None else existing):
            self._run("change_password", ["change_password", grant.user], stdin=password + "\n")
        else:
            # without a password argument rabbitmqctl reads it from stdin: never in argv
            self._run("add_user", ["add_user", grant.user], stdin=password + "\n")
        self._run(
            "set_permissions",
            [
                *("set_permissions", "-p", self.vhost, grant.user),
                *(grant.configure, grant.write, grant.read),
            ],
        )
        self._run(
            "set_topic_permissions",
            [
                *("set_topic_permissions", "-p", self.vhost, grant.user, exchange),
                *(grant.topic_write, grant.topic_read),
            ],
        )
        log.info("broker_account_set", user=grant.user, vhost=self.vhost, exchange=exchange)

    def delete_user(self, user: str) -> None:
        if user in self.users():
            self._run("delete_user", ["delete_user", user])
            log.info("broker_account_deleted", user=user)


def write_transport_conf(path: Path, url: str, owner: str | None = None) -> None:
    """`[messaging] transport_url = url` in `path`, mode 0600, owned by `owner` (a user
    name; None: the caller). Written beside and renamed over: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(
            fd,
            (
                "# This daemon's own broker account (agents-controller broker-accounts);\n"
                "# readable only by the daemon. Read after shared.conf: this URL wins.\n"
                f"[messaging]\ntransport_url = {url}\n"
            ).encode(),
        )
        os.fchmod(fd, 0o600)
        if owner is not None:
            shutil.chown(tmp, user=owner)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ------------------------------------------------------------------ the command

DAEMON_DIRS = {"controller": "controller.d", "compute": "compute-agent.d", "l2": "l2-agent.d"}


@dataclass(frozen=True)
class Deployment:
    """What the accounts are for: read from the deployment's [messaging] section."""

    exchange: str
    events_topic: str
    broker: str  # HOST:PORT the daemons connect to
    vhost: str
    prefix: str = ""


def deployment_of(
    transport: str,
    exchange: str,
    events_topic: str,
    broker: str | None = None,
    vhost: str | None = None,
    prefix: str = "",
) -> Deployment:
    """The broker address and vhost default to those of `transport` (its first host)."""
    parts = urlsplit(transport)  # rabbit://u:p@h1:5672,u:p@h2:5672/vhost
    address = broker or parts.netloc.split(",")[0].rsplit("@", 1)[-1] or "127.0.0.1:5672"
    path = unquote(parts.path[1:]) if parts.path else ""
    return Deployment(exchange, events_topic, address, vhost or path or "/", prefix)


def _credentials_file(out: Path, role: str) -> Path:
    return out / DAEMON_DIRS[role] / "broker.conf"


def _write(out: Path, role: str, url: str, owner: str | None) -> Path:
    path = _credentials_file(out, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if owner is not None:
        shutil.chown(path.parent, user=owner)
    write_transport_conf(path, url, owner)
    return path


def set_accounts(
    admin: BrokerAdmin,
    dep: Deployment,
    roles: Sequence[tuple[str, str | None]],
    out: Path | None,
    owners: dict[str, str | None] | None = None,
) -> dict[tuple[str, str | None], str]:
    """Create (or re-key) the accounts of `roles` ((role, host) pairs) with fresh
    passwords; write each daemon's credentials file under `out` when given. Returns
    each account's transport URL (holds the password: the caller must not print it)."""
    admin.ensure_vhost()
    urls: dict[tuple[str, str | None], str] = {}
    existing = admin.users()
    for role, host in roles:
        grant = grants(role, host, dep.exchange, dep.events_topic, dep.prefix)
        password = new_password()
        admin.set_account(grant, password, dep.exchange, existing)
        url = transport_url(grant.user, password, dep.broker, dep.vhost)
        urls[(role, host)] = url
        if out is not None:
            path = _write(out, role, url, (owners or {}).get(role))
            print(f"account {grant.user}: credentials in {path}")
    return urls


def remove_accounts(
    admin: BrokerAdmin, dep: Deployment, roles: Sequence[tuple[str, str | None]]
) -> None:
    for role, host in roles:
        admin.delete_user(user_name(role, host, dep.prefix))
