"""agentctl's command line grammar: every command, option, help text and example.

Pure argparse: builds the parser and nothing else (no config, no network), so `--help`,
`--version` and shell completion answer at once. The version is looked up only when
`--version` is given: reading package metadata costs about 20 ms.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

EXIT_HELP = """\
exit codes:
  0  done                    3  controller unreachable
  1  the operation failed    4  timed out
  2  usage or bad input      5  no agent serves that host, or nothing fits
  6  not authorized: the controller refused the token (401/403), or no usable token
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class _Version(argparse.Action):
    """--version, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kw
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from importlib import metadata

        try:
            version = metadata.version("agents")
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            version = "0.0.0+src"
        sys.stdout.write(f"{parser.prog} {version}\n")
        parser.exit()


def _common(json_default: Any) -> argparse.ArgumentParser:
    """--json/--debug accepted before or after the command (SUPPRESS keeps the global one)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--json", action="store_true", default=json_default, help="print JSON (lines) for scripts"
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=json_default,
        help="show tracebacks and each HTTP request",
    )
    return p


def _wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the operation to its end; exit 0 only when it succeeded",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up waiting after S seconds (exit 4; default [agentctl] wait_timeout)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentctl",
        formatter_class=_Formatter,
        parents=[_common(False)],
        description="Build, inspect and watch instances through agents-controller's REST API.",
        epilog=EXIT_HELP
        + """
configuration: --config-file (repeatable), else $AGENTS_CONFIG (colon separated),
else /etc/agents/shared.conf and /etc/agents/agentctl.conf where they exist;
[agentctl] url (default http://127.0.0.1:8780), overridden by $AGENTS_URL.
token: --token-file, else $AGENTS_TOKEN, else [agentctl] token_file, else
~/.config/agents/token (a token file must be mode 0600).

examples:
  agentctl send build --name web --wait
  agentctl list
  agentctl show web --timeline
  agentctl watch --host node1
  agentctl agents --json
""",
    )
    parser.add_argument(
        "--config-file",
        action="append",
        metavar="FILE",
        help="config file (repeatable; later wins)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the API token is in FILE (mode 0600); wins over $AGENTS_TOKEN and token_file",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="CA certificate(s) that signed an https controller's certificate ([agentctl] ca_file)",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common(argparse.SUPPRESS)

    def add(
        parent: Any, name: str, help_: str, examples: str, **kw: Any
    ) -> argparse.ArgumentParser:
        return parent.add_parser(  # type: ignore[no-any-return]
            name,
            help=help_,
            description=help_,
            epilog="examples:\n" + examples + "\n" + EXIT_HELP,
            formatter_class=_Formatter,
            parents=[common],
            **kw,
        )

    send = add(
        sub,
        "send",
        "send an operation to the controller",
        "  agentctl send build --wait\n"
        "  agentctl send delete web --wait\n"
        "  agentctl send reboot web --hard",
    )
    send_sub = send.add_subparsers(dest="operation", metavar="OPERATION", required=True)

    b = add(
        send_sub,
        "build",
        "build instances: the controller picks a host (or --host), addresses and MACs,"
        " then has the host wire the ports and start the guests",
        "  agentctl send build --wait\n"
        "  agentctl send build --name web --count 3 --flavor m1.small --wait\n"
        "  agentctl send build --host node2 --network net1 --network provider --image tiny\n"
        "  agentctl --json send build --wait --timeout 60",
    )
    b.add_argument(
        "--host", help="build there (default: the scheduler picks a live host that fits)"
    )
    b.add_argument(
        "--name", help="instance name (with --count K: NAME-1 .. NAME-K); random if omitted"
    )
    b.add_argument("--flavor", help="flavor name (agentctl completion flavors lists them)")
    b.add_argument("--image", help="image name on the hosts (the controller's default if omitted)")
    b.add_argument(
        "--network",
        action="append",
        metavar="NET",
        help="network name or uuid; repeat for more ports (default: the first network)",
    )
    b.add_argument("--count", type=int, default=1, metavar="K", help="build K instances")
    _wait_args(b)

    d = add(
        send_sub,
        "delete",
        "delete an instance and unwire its ports",
        "  agentctl send delete web\n  agentctl send delete --host node1 0b7e...-uuid --wait",
    )
    d.add_argument("--host", help="refuse (exit 2) unless the instance is on this host")
    d.add_argument("instance", metavar="NAME|UUID")
    _wait_args(d)

    r = add(
        send_sub,
        "reboot",
        "reboot an instance (soft: ACPI; --hard: reset)",
        "  agentctl send reboot web --wait\n  agentctl send reboot --host node1 web --hard",
    )
    r.add_argument("--host", help="refuse (exit 2) unless the instance is on this host")
    r.add_argument("instance", metavar="NAME|UUID")
    r.add_argument("--hard", action="store_true", help="hard reboot (destroy and start again)")
    _wait_args(r)

    ls = add(
        sub,
        "list",
        "list instances (all, or those of --host)",
        "  agentctl list\n  agentctl list --host node1 --json",
    )
    ls.add_argument("--host", help="only this host")

    sh = add(
        sub,
        "show",
        "show one instance and its last operations (--timeline: every hop, timed)",
        "  agentctl show web\n  agentctl show web --timeline\n"
        "  agentctl show --host node1 0b7e...-uuid",
    )
    sh.add_argument("instance", metavar="NAME|UUID")
    sh.add_argument("--host", help="refuse (exit 2) unless the instance is on this host")
    sh.add_argument(
        "--timeline",
        action="store_true",
        help="also print every event of its operations, in ms from each operation's start",
    )

    cl = add(
        sub,
        "console-log",
        "print an instance's serial console log",
        "  agentctl console-log web\n  agentctl console-log web --tail 20",
    )
    cl.add_argument("instance", metavar="NAME|UUID")
    cl.add_argument("--host", help="refuse (exit 2) unless the instance is on this host")
    cl.add_argument("--tail", type=int, metavar="N", help="only the last N lines")

    pt = add(
        sub,
        "ports",
        "list ports: their addresses and where they are wired",
        "  agentctl ports\n  agentctl ports --host node1",
    )
    pt.add_argument("--host", help="only this host")

    w = add(
        sub,
        "watch",
        "stream instance and port events, one line each (JSON lines with --json)",
        "  agentctl watch\n  agentctl watch --host node1\n  agentctl watch --instance web --json\n"
        "  agentctl watch --duration 30",
    )
    w.add_argument("--host", help="only events of this host")
    w.add_argument("--instance", metavar="NAME|UUID", help="only events of this instance")
    w.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )

    ag = add(
        sub,
        "agents",
        "list the agents the controller hears: up, or down (no heartbeat lately)",
        "  agentctl agents\n  agentctl agents --json",
    )
    # Kept so old scripts still run: the controller's host table answers at once.
    ag.add_argument("--window", type=float, metavar="S", help=argparse.SUPPRESS)

    comp = add(
        sub, "completion", "print a shell completion script", "  source <(agentctl completion bash)"
    )
    comp.add_argument(
        "shell",
        choices=["bash", "hosts", "flavors", "networks"],
        help="bash: the script; hosts, flavors, networks: the words it offers after --host,"
        " --flavor, --network (asked of the controller; nothing printed if it does not answer)",
    )
    return parser
