"""Typed errors of agentctl and its client API, each carrying the value an operator must fix.

Each error has a stable `code` (the controller's own code for an `ApiError`, a local one
otherwise) and keeps its fields, so the CLI can print them or put them in JSON. The CLI
maps errors to exit codes (`agents.ctl.cli.exit_code`); nothing here logs, prints or exits.

They derive from `common.errors.AgentsError` (a message template filled from fields);
nothing else of `common` is imported on agentctl's path.
"""

from __future__ import annotations

from typing import Any

from common.errors import AgentsError


class CtlError(AgentsError):
    """Base of every error agentctl raises on purpose."""

    code: str = "agentctl.error"


# ------------------------------------------------------------------ local: usage, config


class ConfigFileError(CtlError):
    msg_fmt = "{file}: {problem}"
    code = "config.invalid"


class ConfigError(CtlError):
    msg_fmt = "{file}: [{section}] {key} = {value!r}: {problem}"
    code = "config.invalid"


class TokenFileError(CtlError):
    """The token agentctl would send cannot be used: file missing, open to others, or not a
    token (the message never quotes the file's content)."""

    msg_fmt = "token file {path}: {problem}"
    code = "token.invalid"


class InvalidInput(CtlError):
    """A command-line value agentctl checks itself (the controller checks the rest)."""

    msg_fmt = "{field} = {value!r}: {problem}"
    code = "input.invalid"


class HostMismatch(CtlError):
    """`--host` was given as a safety check and the instance lives elsewhere."""

    msg_fmt = "instance {ref!r} is on host {actual!r}, not on {host!r} (drop --host or fix it)"
    code = "instance.host_mismatch"


# ------------------------------------------------------------------ talking to the controller


class ControllerUnreachable(CtlError):
    """No connection could be made (refused, name not resolved, connect timeout, reset)."""

    msg_fmt = (
        "the controller at {url} is unreachable ({problem}); is agents-controller running?"
        " (set [agentctl] url or AGENTS_URL)"
    )
    code = "controller.unreachable"


class ControllerTlsError(ControllerUnreachable):
    """https: the TLS handshake failed or the certificate is not trusted (exit 3 too)."""

    msg_fmt = "the controller at {url} cannot be used over TLS: {problem}"
    code = "controller.tls"


class ControllerTimeout(CtlError):
    """Connected, but the answer did not come within call_timeout."""

    msg_fmt = "the controller at {url} did not answer {request} within {timeout}s"
    code = "controller.timeout"


class BadResponse(CtlError):
    """The controller answered, but not with the JSON the contract (docs/api.md) promises."""

    msg_fmt = "unexpected answer from the controller to {request}: {problem}"
    code = "response.invalid"


class ApiError(CtlError):
    """An error body `{"error": {"code", "message", "field", "value", "valid"}}`.

    `str()` is the controller's message; `code` is its stable code (e.g. flavor.unknown).
    """

    msg_fmt = "{message}"

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        value: Any = None,
        valid: list[str] | None = None,
    ) -> None:
        super().__init__(
            status=status, code=code, message=message, field=field, value=value, valid=valid
        )
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.value = value
        self.valid = valid


class NotAuthorized(ApiError):
    """401 or 403: the controller refused the token (or its absence, or its role)."""

    def __str__(self) -> str:
        if self.status == 403:
            return f"the controller refused the request (403 {self.code}): {self.message}"
        if self.code == "auth.required":
            return (
                f"the controller wants a token (401 {self.code}) and none was sent;"
                " set AGENTS_TOKEN, [agentctl] token_file or --token-file"
            )
        return (
            f"the controller refused the token (401 {self.code}): {self.message};"
            " set AGENTS_TOKEN, [agentctl] token_file or --token-file"
        )
