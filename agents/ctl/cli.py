"""`agentctl`: the operator's command line, a thin layer over `agents.ctl.client.Client`.

Owns running a command (the grammar is in `parser`), turning results into text or JSON
(`output`), and turning errors into documented exit codes:

    0 done   1 the operation failed   2 usage or bad input   3 controller unreachable
    4 timed out   5 no agent serves that host, or nothing fits
    6 not authorized: the controller refused the token (401/403), or no usable token

No traceback reaches the user unless --debug is given. Must stay a fast client of the
controller's REST API: it imports only the stdlib and `agents.ctl` (never the broker,
the agents, the controller, pydantic or `common`), and what one command needs is
imported inside that command, so `--help` does not pay for `http.client`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from agents.ctl import completion
from agents.ctl.errors import (
    ApiError,
    BadResponse,
    ConfigError,
    ConfigFileError,
    ControllerTimeout,
    ControllerUnreachable,
    CtlError,
    HostMismatch,
    InvalidInput,
    NotAuthorized,
    TokenFileError,
)
from agents.ctl.parser import build_parser

if TYPE_CHECKING:
    from agents.ctl.client import Client, Outcome
    from agents.ctl.progress import Update
    from agents.ctl.settings import CtlSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_NO_AGENT = 5
EXIT_AUTH = 6

EXIT_CODES: dict[type[CtlError], int] = {
    ConfigError: EXIT_USAGE,
    ConfigFileError: EXIT_USAGE,
    InvalidInput: EXIT_USAGE,
    HostMismatch: EXIT_USAGE,
    ControllerUnreachable: EXIT_UNREACHABLE,
    ControllerTimeout: EXIT_TIMEOUT,
    BadResponse: EXIT_FAILED,
    TokenFileError: EXIT_AUTH,
}

# The controller's error codes (docs/api.md); any other code is EXIT_FAILED.
API_EXIT_CODES: dict[str, int] = {
    "request.invalid": EXIT_USAGE,
    "flavor.unknown": EXIT_USAGE,
    "network.unknown": EXIT_USAGE,
    "image.unknown": EXIT_USAGE,
    "instance.not_found": EXIT_USAGE,
    "instance.ambiguous": EXIT_USAGE,
    "idempotency.conflict": EXIT_USAGE,
    "operation.not_found": EXIT_USAGE,
    "host.unavailable": EXIT_NO_AGENT,
    "host.not_found": EXIT_NO_AGENT,
    "scheduler.no_host": EXIT_NO_AGENT,
    "host.no_capacity": EXIT_NO_AGENT,
    "agent.unreachable": EXIT_NO_AGENT,
    "agent.timeout": EXIT_TIMEOUT,
    "auth.required": EXIT_AUTH,
    "auth.invalid": EXIT_AUTH,
    "auth.forbidden": EXIT_AUTH,
}

# `completion hosts|flavors|networks` runs on every Tab: a slow answer is worse than none.
COMPLETION_CONNECT_S = 0.3
COMPLETION_CALL_S = 1.0


def exit_code(err: CtlError) -> int:
    if isinstance(err, NotAuthorized):
        return EXIT_AUTH
    if isinstance(err, ApiError):
        return API_EXIT_CODES.get(err.code, EXIT_FAILED)
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILED


# --------------------------------------------------------------------------- output


class Ui:
    """Where results go: stdout for results, stderr for notes, warnings and errors."""

    def __init__(self, json_mode: bool, debug: bool, out: TextIO, err: TextIO) -> None:
        self.json = json_mode
        self.debug_mode = debug
        self.out = out
        self.err = err

    def result(self, text: str, data: Any) -> None:
        if self.json:
            from agents.ctl.output import to_json

            print(to_json(data), file=self.out, flush=True)
        elif text:
            print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        print(f"agentctl: warning: {text}", file=self.err, flush=True)

    def debug(self, text: str) -> None:
        if self.debug_mode:
            print(f"agentctl: debug: {text}", file=self.err, flush=True)

    def update(self, update: Update) -> None:
        from agents.ctl.output import to_json, update_json, update_line

        if self.json:
            print(to_json(update_json(update)), file=self.out, flush=True)
        else:
            print(f"  {update_line(update)}", file=self.out, flush=True)


# --------------------------------------------------------------------------- commands


def _outcome_code(outcome: Outcome | None) -> int:
    if outcome is None:
        return EXIT_OK
    if outcome.tracker.failed:
        return EXIT_FAILED
    if outcome.timed_out:
        return EXIT_TIMEOUT
    return EXIT_OK


def _follow(
    client: Client,
    args: argparse.Namespace,
    ui: Ui,
    accepted: dict[str, Any],
    started: float,
    summary: Callable[[dict[str, Any], Outcome | None], dict[str, Any]],
) -> int:
    from agents.ctl.output import outcome_text

    timeout = args.timeout or client.wait_timeout
    outcome = None
    if args.wait:
        outcome = client.wait(accepted, timeout=timeout, on_update=ui.update, started=started)
    ui.result(outcome_text(accepted, outcome, timeout), summary(accepted, outcome))
    return _outcome_code(outcome)


def cmd_build(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import PLAN_HEADERS, build_result, plan_rows, table

    started = client.clock()
    accepted = client.build(
        name=args.name,
        count=args.count,
        flavor=args.flavor,
        image=args.image,
        networks=args.network,
        host=args.host,
    )
    if not ui.json:
        ui.result(table(PLAN_HEADERS, plan_rows(accepted["instances"])), None)
    return _follow(client, args, ui, accepted, started, build_result)


def cmd_delete_or_reboot(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import instance_result

    started = client.clock()
    if args.operation == "delete":
        accepted = client.delete(args.instance, host=args.host)
    else:
        accepted = client.reboot(args.instance, args.hard, host=args.host)
    return _follow(client, args, ui, accepted, started, instance_result)


def cmd_list(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    instances = client.list_instances(args.host)
    # imported after the answer: an error exit need not pay for the formatting
    from agents.ctl.output import INSTANCE_HEADERS, instance_rows, table

    ui.result(table(INSTANCE_HEADERS, instance_rows(instances)), instances)
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import instance_details, timeline_lines

    inst = client.show(args.instance, host=args.host)
    if not args.timeline:
        ui.result(instance_details(inst), inst)
        return EXIT_OK
    # by uuid: the name may have been given to another instance in between
    events = client.timeline(inst["uuid"])["events"]
    text = "\n".join([instance_details(inst), "", "timeline:", *timeline_lines(events)])
    ui.result(text, {**inst, "events": events})
    return EXIT_OK


def cmd_console_log(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    logged = client.console_log(args.instance, args.tail, host=args.host)
    if ui.json:
        ui.result("", logged)
        return EXIT_OK
    text: str = logged["text"]
    ui.out.write(text if text.endswith("\n") or not text else text + "\n")
    ui.out.flush()
    if logged["truncated"]:
        ui.note("(older output cut off)")
    return EXIT_OK


def cmd_ports(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    ports = client.ports(args.host)
    from agents.ctl.output import PORT_HEADERS, port_rows, table

    ui.result(table(PORT_HEADERS, port_rows(ports)), ports)
    return EXIT_OK


def cmd_watch(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    from agents.ctl.output import event_line, to_json

    instance = args.instance
    if instance is not None and not _is_uuid(instance):
        instance = client.show(instance)["uuid"]  # the stream filters by uuid only
    # the note goes to stderr in both modes: it tells a script the watch is open
    events = client.events(
        host=args.host,
        instance=instance,
        timeout=args.duration,
        on_open=lambda: ui.note("watching events (Ctrl-C to stop)"),
    )
    from common.stacks import stack_dumps_on_usr2

    # A watch runs until stopped: `kill -USR2` makes a stuck one show every thread's
    # stack on stderr (as the daemons do), and it goes on.
    with stack_dumps_on_usr2():
        for ev in events:
            print(to_json(ev) if ui.json else event_line(ev), file=ui.out, flush=True)
    return EXIT_OK


def cmd_agents(client: Client, args: argparse.Namespace, ui: Ui) -> int:
    if args.window is not None:
        ui.warn("--window is ignored: the controller keeps the table of agents heard")
    hosts = client.hosts()
    from agents.ctl.output import AGENT_HEADERS, agent_rows, table

    ui.result(table(AGENT_HEADERS, agent_rows(hosts)), hosts)
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


def _is_uuid(ref: str) -> bool:
    import uuid

    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


def _precheck(args: argparse.Namespace) -> None:
    """Refuse what agentctl itself owns (waiting, tails) before any request is made.

    Everything about the instances (names, counts, flavors) is the controller's to check.
    """
    for field in ("timeout", "duration"):
        value = getattr(args, field, None)
        if value is not None and not value > 0:
            raise InvalidInput(field=f"--{field}", value=value, problem="must be more than 0")
    if getattr(args, "tail", None) is not None and args.tail < 0:
        raise InvalidInput(field="--tail", value=args.tail, problem="must be 0 or more")


# --------------------------------------------------------------------------- main


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out, err = out or sys.stdout, err or sys.stderr
    env = os.environ if environ is None else environ
    ui = Ui(args.json, args.debug, out, err)
    if args.command == "completion":
        if args.shell == "bash":
            out.write(completion.bash(parser))
            return EXIT_OK
        return _complete(args, env, out)
    try:
        return _run(args, ui, env)
    except CtlError as error:
        code = exit_code(error)
        if args.debug:
            import traceback

            traceback.print_exc(file=err)
        message = str(error)
        valid = getattr(error, "valid", None)
        if valid:
            message += f"; valid: {', '.join(valid)}"
        print(f"agentctl: error: {message}", file=err, flush=True)
        if args.json:
            data: dict[str, Any] = {
                "error": str(error),
                "code": error.code,
                "type": type(error).__name__,
                "exit_code": code,
            }
            if isinstance(error, ApiError):
                data.update(
                    (k, v)
                    for k, v in (("field", error.field), ("value", error.value), ("valid", valid))
                    if v is not None
                )
            ui.result("", data)
        return code
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130
    except BrokenPipeError:
        # `agentctl watch | head`: the reader left; say nothing more, and keep Python's
        # flush at exit from failing on the closed pipe too.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # the last boundary: say what broke, traceback only on --debug
        if args.debug:
            raise
        print(
            f"agentctl: internal error: {type(error).__name__}: {error} (run with --debug)",
            file=err,
        )
        return EXIT_FAILED


def _settings(args: argparse.Namespace, env: Mapping[str, str]) -> CtlSettings:
    from agents.ctl.settings import config_files, load_settings

    settings = load_settings(config_files(args.config_file, env), env)
    if getattr(args, "ca_file", None):
        import os.path

        if not os.path.isfile(args.ca_file):
            raise InvalidInput(field="--ca-file", value=args.ca_file, problem="no such file")
        settings = settings._replace(ca_file=args.ca_file)
    return settings


def _token(args: argparse.Namespace, settings: CtlSettings, env: Mapping[str, str]) -> str | None:
    from agents.ctl.auth import find_token

    token, _source = find_token(getattr(args, "token_file", None), settings, env)
    return token


def _run(args: argparse.Namespace, ui: Ui, env: Mapping[str, str]) -> int:
    from agents.ctl.client import Client

    _precheck(args)
    settings = _settings(args, env)
    ui.debug(f"controller {settings.url}; config files: {args.config_file or '(defaults)'}")
    from agents.ctl.auth import find_token

    token, source = find_token(args.token_file, settings, env)
    # the token itself is never shown: each request's line shows "Bearer ***"
    ui.debug(f"token from {source}" + ("" if token else "; requests go without one"))
    if settings.ca_file:
        ui.debug(f"https verified against {settings.ca_file}")
    client = Client.from_settings(settings, trace=ui.debug if args.debug else None, token=token)
    return _dispatch(args)(client, args, ui)


def _complete(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    """Words offered after --host, --flavor, --network; on any error none (and silence)."""
    from agents.ctl.client import Client

    try:
        settings = _settings(args, env)
        client = Client(
            settings.url,
            token=_token(args, settings, env),
            ca_file=settings.ca_file or None,
            connect_timeout=min(COMPLETION_CONNECT_S, settings.connect_timeout),
            call_timeout=min(COMPLETION_CALL_S, settings.call_timeout),
        )
        if args.shell == "hosts":
            words = sorted({h["host"] for h in client.hosts()})
        elif args.shell == "flavors":
            words = [f["name"] for f in client.flavors()]
        else:
            words = [n["name"] for n in client.networks()]
    except Exception as error:  # a Tab press must never print a traceback into the shell
        return exit_code(error) if isinstance(error, CtlError) else EXIT_FAILED
    out.write("".join(f"{word}\n" for word in words))
    return EXIT_OK
