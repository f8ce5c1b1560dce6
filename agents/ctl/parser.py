"""agentctl's command line grammar: every command, option, help text and example.

Pure argparse: builds the parser and nothing else (no config, no broker), so `--help`,
`--version` and shell completion answer at once.
"""

from __future__ import annotations

import argparse
from typing import Any

from common import __version__

EXIT_HELP = """\
exit codes:
  0  done            1  the operation failed      2  usage or bad input
  3  broker unreachable   4  timed out   5  no agent serves that host
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _common(json_default: Any) -> argparse.ArgumentParser:
    """--json/--debug accepted before or after the command (SUPPRESS keeps the global one)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--json", action="store_true", default=json_default, help="print JSON (lines) for scripts"
    )
    p.add_argument(
        "--debug", action="store_true", default=json_default, help="show tracebacks and debug logs"
    )
    return p


def _wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the operation to its end; exit 0 only when it succeeded",
    )
    p.add_argument(
        "--timeout", type=float, metavar="S", help="give up waiting after S seconds (exit 4)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentctl",
        formatter_class=_Formatter,
        parents=[_common(False)],
        description="Build, inspect and watch instances on the hosts of an agents deployment.",
        epilog=EXIT_HELP
        + """
configuration: --config-file (repeatable), else $AGENTS_CONFIG (colon separated),
else /etc/agents/shared.conf and /etc/agents/agentctl.conf where they exist.

examples:
  agentctl send build --host node1 --name web --wait
  agentctl list
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
    parser.add_argument("--version", action="version", version=f"agentctl {__version__}")
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
        "send an operation to the agents of one host",
        "  agentctl send build --host node1 --wait\n"
        "  agentctl send delete --host node1 web --wait\n"
        "  agentctl send reboot --host node1 web --hard",
    )
    send_sub = send.add_subparsers(dest="operation", metavar="OPERATION", required=True)

    b = add(
        send_sub,
        "build",
        "build instances: wire their ports (l2-agent), then define and start the guests"
        " (compute-agent)",
        "  agentctl send build --host node1 --wait\n"
        "  agentctl send build --host node1 --name web --count 3 --flavor m1.small --wait\n"
        "  agentctl send build --host node2 --network net1 --network provider --image tiny\n"
        "  agentctl --json send build --host node1 --wait --timeout 60",
    )
    b.add_argument("--host", required=True, help="the host to build on")
    b.add_argument(
        "--name", help="instance name (with --count K: NAME-1 .. NAME-K); random if omitted"
    )
    b.add_argument("--flavor", help="flavor name from the config ([flavor:NAME]); default m1.tiny")
    b.add_argument("--image", help="image name in the compute-agent's image_dir; default tiny")
    b.add_argument(
        "--network",
        action="append",
        metavar="NET",
        help="network name or uuid; repeat for more ports",
    )
    b.add_argument("--count", type=int, default=1, metavar="K", help="build K instances")
    _wait_args(b)

    d = add(
        send_sub,
        "delete",
        "delete an instance and unwire its ports",
        "  agentctl send delete --host node1 web\n"
        "  agentctl send delete --host node1 0b7e...-uuid --wait",
    )
    d.add_argument("--host", required=True, help="the instance's host")
    d.add_argument("instance", metavar="NAME|UUID")
    _wait_args(d)

    r = add(
        send_sub,
        "reboot",
        "reboot an instance (soft: ACPI; --hard: reset)",
        "  agentctl send reboot --host node1 web --wait\n"
        "  agentctl send reboot --host node1 web --hard",
    )
    r.add_argument("--host", required=True, help="the instance's host")
    r.add_argument("instance", metavar="NAME|UUID")
    r.add_argument("--hard", action="store_true", help="hard reboot (destroy and start again)")
    _wait_args(r)

    ls = add(
        sub,
        "list",
        "list instances (of every host with a live compute-agent, or of --host)",
        "  agentctl list\n  agentctl list --host node1 --json",
    )
    ls.add_argument("--host", help="only this host")

    sh = add(
        sub,
        "show",
        "show one instance",
        "  agentctl show web\n  agentctl show --host node1 0b7e...-uuid",
    )
    sh.add_argument("instance", metavar="NAME|UUID")
    sh.add_argument("--host", help="look only on this host")

    cl = add(
        sub,
        "console-log",
        "print an instance's serial console log",
        "  agentctl console-log web\n  agentctl console-log web --tail 20",
    )
    cl.add_argument("instance", metavar="NAME|UUID")
    cl.add_argument("--host", help="look only on this host")
    cl.add_argument("--tail", type=int, metavar="N", help="only the last N lines")

    pt = add(
        sub, "ports", "list the ports a host's l2-agent wired", "  agentctl ports --host node1"
    )
    pt.add_argument("--host", required=True, help="the host")

    w = add(
        sub,
        "watch",
        "stream instance, port and agent events, one line each (JSON lines with --json)",
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
        "list agents: those answering now (up) and those heard before but silent now (down)",
        "  agentctl agents\n  agentctl agents --json",
    )
    ag.add_argument("--window", type=float, metavar="S", help="listen S seconds for heartbeats")

    comp = add(
        sub, "completion", "print a shell completion script", "  source <(agentctl completion bash)"
    )
    comp.add_argument(
        "shell",
        choices=["bash", "hosts", "flavors", "networks"],
        help="bash: the script; hosts, flavors, networks: the words it offers after --host,"
        " --flavor, --network (from the config and the record of agents seen; no broker)",
    )
    return parser
