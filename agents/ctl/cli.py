"""`agentctl`: the operator's command line over the client API.

Owns argument parsing (every command has --help with examples), turning results into
text or JSON, and turning errors into documented exit codes:

    0 done   1 the operation failed   2 usage or bad input   3 broker unreachable
    4 timed out   5 no agent serves that host (never did, or is down)

No traceback reaches the user unless --debug is given. Must not talk to the broker
itself: everything goes through `agents.ctl.client.Client`.
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, TextIO

from agents.ctl import completion
from agents.ctl.errors import (
    AgentDown,
    AmbiguousName,
    InstanceNotFound,
    NetworkExhausted,
    NoLiveAgents,
    OperationFailed,
    UnknownChoice,
    WaitTimedOut,
)
from common.errors import (
    AgentsError,
    BrokerUnreachable,
    ConfigError,
    ConfigFileError,
    ConfigSectionError,
    InvalidInput,
    InvalidMessage,
    NoAgentForHost,
    RemoteCallTimeout,
    RemoteError,
)

if TYPE_CHECKING:
    from agents.ctl.client import Client, Outcome
    from agents.ctl.progress import Update
    from agents.ctl.settings import CtlConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3
EXIT_TIMEOUT = 4
EXIT_NO_AGENT = 5

EXIT_CODES: dict[type[AgentsError], int] = {
    InvalidInput: EXIT_USAGE,
    UnknownChoice: EXIT_USAGE,
    AmbiguousName: EXIT_USAGE,
    InstanceNotFound: EXIT_USAGE,
    ConfigError: EXIT_USAGE,
    ConfigFileError: EXIT_USAGE,
    ConfigSectionError: EXIT_USAGE,
    BrokerUnreachable: EXIT_BROKER,
    WaitTimedOut: EXIT_TIMEOUT,
    RemoteCallTimeout: EXIT_TIMEOUT,
    NoAgentForHost: EXIT_NO_AGENT,
    AgentDown: EXIT_NO_AGENT,
    NoLiveAgents: EXIT_NO_AGENT,
    NetworkExhausted: EXIT_FAILED,
    OperationFailed: EXIT_FAILED,
    RemoteError: EXIT_FAILED,
    InvalidMessage: EXIT_FAILED,
}

EXIT_HELP = """\
exit codes:
  0  done            1  the operation failed      2  usage or bad input
  3  broker unreachable   4  timed out   5  no agent serves that host
"""


def exit_code(err: AgentsError) -> int:
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILED


def version() -> str:
    try:
        return metadata.version("agents")
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- parser


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
    parser.add_argument("--version", action="version", version=f"agentctl {version()}")
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
    comp.add_argument("shell", choices=["bash"])
    return parser


# --------------------------------------------------------------------------- commands


class Ui:
    """Where results go: stdout for results, stderr for progress notes and errors."""

    def __init__(self, json_mode: bool, out: TextIO, err: TextIO) -> None:
        self.json = json_mode
        self.out = out
        self.err = err

    def result(self, text: str, data: Any) -> None:
        from agents.ctl.output import to_json

        print(to_json(data) if self.json else text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        print(f"agentctl: warning: {text}", file=self.err, flush=True)

    def update(self, update: Update) -> None:
        from agents.ctl.output import to_json, update_json, update_line

        if self.json:
            print(to_json(update_json(update)), file=self.out, flush=True)
        else:
            print(f"  {update_line(update)}", file=self.out, flush=True)


def _outcome_code(outcome: Outcome) -> int:
    if not outcome.waited:
        return EXIT_OK
    if outcome.tracker.failed:
        return EXIT_FAILED
    if outcome.timed_out:
        return EXIT_TIMEOUT
    return EXIT_OK


def _outcome_text(outcome: Outcome, timeout: float) -> str:
    t = outcome.tracker
    if not outcome.waited:
        return (
            f"{outcome.operation} sent ({outcome.request_id});"
            f" follow it with: agentctl watch --host {outcome.host}"
        )
    lines = [
        f"{outcome.operation}: {len(t.succeeded)} done, {len(t.failed)} failed,"
        f" {len(t.pending)} unfinished"
        f" in {outcome.elapsed_s:.1f}s"
    ]
    lines += [f"  {i.name} ({i.uuid}): {i.reason}" for i in t.failed]
    if outcome.timed_out:
        lines += [
            f"  {i.name} ({i.uuid}): no answer within {timeout:.0f}s;"
            f" it may still finish on {outcome.host}"
            for i in t.pending
        ]
    return "\n".join(lines)


def cmd_build(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import PLAN_HEADERS, instance_result, plan_rows, table

    # before planning: an unknown or dead host is answered without a discovery window
    client.require_agent("compute", args.host)
    plan = client.plan_build(
        args.host,
        name=args.name,
        count=args.count,
        flavor=args.flavor,
        image=args.image,
        networks=args.network,
    )
    if not ui.json:
        ui.result(table(PLAN_HEADERS, plan_rows(plan)), None)
    outcome = client.send_build(plan, wait=args.wait, timeout=args.timeout, on_update=ui.update)
    timeout = args.timeout or client.config.agentctl.wait_timeout
    data = {
        "request_id": plan.request_id,
        "ok": outcome.ok,
        "timed_out": outcome.timed_out,
        "elapsed_s": round(outcome.elapsed_s, 3),
        "instances": instance_result(plan, outcome.tracker.instances if args.wait else None),
    }
    ui.result(_outcome_text(outcome, timeout), data)
    return _outcome_code(outcome)


def cmd_delete_or_reboot(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    if args.operation == "delete":
        outcome = client.send_delete(
            args.host, args.instance, wait=args.wait, timeout=args.timeout, on_update=ui.update
        )
    else:
        outcome = client.send_reboot(
            args.host,
            args.instance,
            hard=args.hard,
            wait=args.wait,
            timeout=args.timeout,
            on_update=ui.update,
        )
    timeout = args.timeout or client.config.agentctl.wait_timeout
    inst = next(iter(outcome.tracker.instances.values()))
    data = {
        "request_id": outcome.request_id,
        "operation": outcome.operation,
        "ok": outcome.ok,
        "timed_out": outcome.timed_out,
        "instance_uuid": str(inst.uuid),
        "name": inst.name,
        "state": {
            "done": "done",
            "failed": "error",
            "pending": "sent" if not args.wait else "timed_out",
        }[inst.state],
        "reason": inst.reason,
    }
    ui.result(_outcome_text(outcome, timeout), data)
    return _outcome_code(outcome)


def cmd_list(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import INSTANCE_HEADERS, instance_rows, table

    instances = client.list_instances(args.host)
    ui.result(
        table(INSTANCE_HEADERS, instance_rows(instances)),
        [i.model_dump(mode="json") for i in instances],
    )
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import instance_details

    info = client.show(args.instance, args.host)
    ui.result(instance_details(info), info.model_dump(mode="json"))
    return EXIT_OK


def cmd_console_log(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    if args.tail is not None and args.tail < 0:
        raise InvalidInput(field="--tail", value=args.tail, problem="must be 0 or more")
    logged = client.console_log(args.instance, args.host, args.tail)
    if ui.json:
        ui.result("", logged.model_dump(mode="json"))
    else:
        ui.out.write(
            logged.text if logged.text.endswith("\n") or not logged.text else logged.text + "\n"
        )
        if logged.truncated:
            ui.note("(older output cut off)")
    return EXIT_OK


def cmd_ports(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import PORT_HEADERS, port_rows, table

    ports = client.ports(args.host)
    ui.result(table(PORT_HEADERS, port_rows(ports.ports)), ports.model_dump(mode="json"))
    return EXIT_OK


def cmd_watch(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import event_json, event_line, to_json

    if args.duration is not None and args.duration <= 0:
        raise InvalidInput(field="--duration", value=args.duration, problem="must be more than 0")
    # the note goes to stderr in both modes: it tells a script the watch is bound
    events = client.watch(
        args.host,
        args.instance,
        duration=args.duration,
        on_ready=lambda: ui.note("watching events (Ctrl-C to stop)"),
    )
    for ev in events:
        print(to_json(event_json(ev)) if ui.json else event_line(ev), file=ui.out, flush=True)
    return EXIT_OK


def cmd_agents(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import AGENT_HEADERS, agent_rows, table

    if args.window is not None and not 0 < args.window <= 30:
        raise InvalidInput(
            field="--window", value=args.window, problem="must be between 0 and 30 seconds"
        )
    agents = client.agents(window=args.window)
    ui.result(table(AGENT_HEADERS, agent_rows(agents)), [a.model_dump(mode="json") for a in agents])
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> Callable[[Client, argparse.Namespace, Ui], int]:
    if args.command == "send":
        return cmd_build if args.operation == "build" else cmd_delete_or_reboot
    return {
        "list": cmd_list,
        "show": cmd_show,
        "console-log": cmd_console_log,
        "ports": cmd_ports,
        "watch": cmd_watch,
        "agents": cmd_agents,
    }[args.command]


# --------------------------------------------------------------------------- main


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = out or sys.stdout, err or sys.stderr
    ui = Ui(args.json, out, err)
    if args.command == "completion":
        out.write(completion.bash(parser))
        return EXIT_OK
    if not args.debug:
        # oslo.messaging imports eventlet, which warns on import; an operator cannot act on it.
        warnings.simplefilter("ignore")
    try:
        return _run(args, ui)
    except AgentsError as error:
        code = exit_code(error)
        if args.debug:
            import traceback

            traceback.print_exc(file=err)
        print(f"agentctl: error: {error}", file=err, flush=True)
        if args.json:
            ui.result("", {"error": str(error), "type": type(error).__name__, "exit_code": code})
        return code
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130
    except Exception as error:  # the last boundary: say what broke, traceback only on --debug
        if args.debug:
            raise
        print(
            f"agentctl: internal error: {type(error).__name__}: {error} (run with --debug)",
            file=err,
        )
        return EXIT_FAILED


def _run(args: argparse.Namespace, ui: Ui) -> int:
    import structlog

    from agents.ctl.settings import CtlConfig, config_files
    from common import logging as agents_logging
    from common.config import load

    files = config_files(args.config_file)
    config = load(CtlConfig, files)
    _precheck(args, config)
    agents_logging.setup("DEBUG" if args.debug else "WARNING", "console")
    # stdout carries results (and JSON for scripts); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from agents.ctl.client import Client  # imports oslo.messaging: about a second of CPU

    with Client.from_config(config, on_warning=ui.warn) as client:
        return _dispatch(args)(client, args, ui)


def _precheck(args: argparse.Namespace, config: CtlConfig) -> None:
    """Refuse bad input before loading the messaging stack, so a typo is answered at once.

    The client checks the same again (it is an API of its own); this only makes it fast.
    """
    from agents.ctl import plan

    if getattr(args, "host", None):
        plan.check_host(args.host)
    if args.command == "send" and args.operation == "build":
        plan.pick_flavor(config, args.flavor)
        plan.pick_networks(config, args.network)
        plan.instance_names(args.name, args.count, random.Random())
        plan.check_name("--image", args.image or config.agentctl.default_image)
    if getattr(args, "timeout", None) is not None and args.timeout <= 0:
        raise InvalidInput(field="--timeout", value=args.timeout, problem="must be more than 0")
