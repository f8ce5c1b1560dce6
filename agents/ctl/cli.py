"""`agentctl`: the operator's command line over the client API.

Owns running a command (the grammar is in `parser`), turning results into text or
JSON, and turning errors into documented exit codes:

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
from typing import TYPE_CHECKING, Any, TextIO

from agents.ctl import completion
from agents.ctl.errors import (
    AgentDown,
    AmbiguousName,
    InstanceNotFound,
    NetworkExhausted,
    NoLiveAgents,
    UnknownChoice,
)
from agents.ctl.parser import build_parser
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
    RemoteCallTimeout: EXIT_TIMEOUT,
    NoAgentForHost: EXIT_NO_AGENT,
    AgentDown: EXIT_NO_AGENT,
    NoLiveAgents: EXIT_NO_AGENT,
    NetworkExhausted: EXIT_FAILED,
    RemoteError: EXIT_FAILED,
    InvalidMessage: EXIT_FAILED,
}


def exit_code(err: AgentsError) -> int:
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILED


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
    if args.command == "completion" and args.shell == "bash":
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
    if not files:
        ui.warn(
            "no config file read (give --config-file or $AGENTS_CONFIG, or install"
            " /etc/agents/shared.conf): no flavors or networks are known"
        )
    config = load(CtlConfig, files)
    _precheck(args, config)
    if args.command == "completion":
        ui.out.write("".join(f"{word}\n" for word in _completion_words(args.shell, config)))
        return EXIT_OK
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


def _completion_words(kind: str, config: CtlConfig) -> list[str]:
    """Words the completion script offers; read locally, never from the broker."""
    from agents.ctl.seen import SeenStore
    from agents.ctl.settings import state_dir

    if kind == "flavors":
        return sorted(config.flavors)
    if kind == "networks":
        return list(config.networks)
    seen = SeenStore(state_dir(config.agentctl), config.messaging.control_exchange).load()
    return sorted({hb.host for hb in seen.values()})
