"""Typed errors that carry the fields an operator needs to act on them.

Each error formats a message from a template and keeps its fields, so a log line or
an error notification can carry them as data instead of a pre-baked string.
Errors are raised at edges and wrapped once at boundaries; nothing here logs.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AgentsError(Exception):
    """Base of every error this project raises on purpose."""

    msg_fmt: ClassVar[str] = "an unexpected error occurred"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        try:
            message = self.msg_fmt.format(**fields)
        except (KeyError, IndexError):  # a template/field mismatch must not hide the error
            message = f"{self.msg_fmt} {fields!r}"
        super().__init__(message)

    @property
    def reason(self) -> str:
        return str(self)


class ConfigError(AgentsError):
    msg_fmt = "{file}: [{section}] {key} = {value!r}: {problem}"


class ConfigSectionError(AgentsError):
    msg_fmt = "{file}: [{section}]: {problem}"


class ConfigFileError(AgentsError):
    msg_fmt = "{file}: {problem}"


class InvalidMessage(AgentsError):
    """A message from the wire did not validate against its schema."""

    msg_fmt = "invalid {schema} message: {problem}"


class InvalidInput(AgentsError):
    """A value given on the command line or through an API did not validate."""

    msg_fmt = "{field} = {value!r}: {problem}"


class BrokerUnreachable(AgentsError):
    msg_fmt = "cannot reach the message broker at {url}: {problem}"


class NoAgentForHost(AgentsError):
    msg_fmt = "no {kind} serves host {host!r}: {problem}"


class RemoteCallTimeout(AgentsError):
    msg_fmt = "{kind} on host {host!r} did not answer {method} within {timeout}s"


class RemoteError(AgentsError):
    msg_fmt = "{kind} on host {host!r} failed {method}: {problem}"


class BrokerAccessRefused(AgentsError):
    """The broker refused this account an operation (AMQP 403 ACCESS_REFUSED)."""

    msg_fmt = "the broker refused user {user!r} {operation} access to {resource}"


class BrokerTlsRefused(AgentsError):
    """TLS to the broker failed: its certificate is not trusted (wrong CA or name)."""

    msg_fmt = "refusing the broker at {url}: {problem}"
