"""Typed errors of agentctl and its client API, each carrying the value an operator must fix.

The CLI maps each class to an exit code (see `agents.ctl.cli.EXIT_CODES`); nothing here
logs or prints.
"""

from __future__ import annotations

from common.errors import AgentsError


class UnknownChoice(AgentsError):
    """A flavor, network or image name that the configuration does not define."""

    msg_fmt = "unknown {field} {value!r}; valid: {valid}"

    def __init__(self, *, field: str, value: str, valid: list[str]) -> None:
        super().__init__(field=field, value=value, valid=", ".join(valid) or "(none configured)")


class NetworkExhausted(AgentsError):
    msg_fmt = "network {network!r} has no free address in {start}-{end} ({wanted} wanted)"


class AgentDown(AgentsError):
    """The agent's queue exists (it served the host once) but nobody consumes it now."""

    msg_fmt = "the {kind} of host {host!r} is down: {problem}"


class InstanceNotFound(AgentsError):
    msg_fmt = "no instance {ref!r} on {where}"


class AmbiguousName(AgentsError):
    msg_fmt = "{count} instances are named {ref!r} ({uuids}); give the uuid"


class NoLiveAgents(AgentsError):
    msg_fmt = "no live {kind} answered within {window}s"
