"""Errors the API answers with: each carries a stable code, an HTTP status and the field.

The code is namespaced (`instance.not_found`) and never changes meaning, so a client
can act on it; the message is for people. Raised by the store and the handlers, turned
into a JSON body in one place (api); nothing here logs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from common.errors import AgentsError


class ApiError(AgentsError):
    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(
        self,
        *,
        field: str | None = None,
        value: Any = None,
        valid: list[str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(field=field, value=value, **fields)
        self.field = field
        self.value = value
        self.valid = valid

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.field is not None:
            err["field"] = self.field
            err["value"] = self.value
        if self.valid is not None:
            err["valid"] = self.valid
        return {"error": err}


class RequestInvalid(ApiError):
    code, status = "request.invalid", 422
    msg_fmt = "{field} = {value!r}: {problem}"


class BodyNotJson(ApiError):
    code, status = "request.invalid", 422
    msg_fmt = "the request body is not valid JSON (at character {offset}: {reason})"


class UnknownFlavor(ApiError):
    code, status = "flavor.unknown", 422
    msg_fmt = "flavor {value!r} is not known"


class UnknownImage(ApiError):
    code, status = "image.unknown", 422
    msg_fmt = "image {value!r}: {problem}"


class UnknownNetwork(ApiError):
    code, status = "network.unknown", 422
    msg_fmt = "network {value!r} is not known"


class InstanceNotFound(ApiError):
    code, status = "instance.not_found", 404
    msg_fmt = "no instance {value!r}"


class OperationNotFound(ApiError):
    code, status = "operation.not_found", 404
    msg_fmt = "no operation {value!r}"


class AmbiguousName(ApiError):
    code, status = "instance.ambiguous", 409
    msg_fmt = "{count} instances are named {value!r}; give the uuid"


class InstanceBusy(ApiError):
    code, status = "instance.busy", 409
    msg_fmt = "instance {value!r} is busy with a {task} operation ({request_id}); try again"


class NetworkExhaustedError(ApiError):
    code, status = "network.exhausted", 409
    msg_fmt = "{problem}"


class HostUnavailable(ApiError):
    code, status = "host.unavailable", 409
    msg_fmt = "no compute-agent serves host {value!r}: {problem}"


class NoHost(ApiError):
    code, status = "scheduler.no_host", 409
    msg_fmt = "{problem}"


class HostNoCapacity(ApiError):
    code, status = "host.no_capacity", 409
    msg_fmt = "{problem}"


class IdempotencyConflict(ApiError):
    code, status = "idempotency.conflict", 409
    msg_fmt = "Idempotency-Key {value!r} was used before with a different request"


class AgentTimeout(ApiError):
    code, status = "agent.timeout", 504
    msg_fmt = "the compute-agent of host {host!r} did not answer: {problem}"


class AgentUnreachable(ApiError):
    code, status = "agent.unreachable", 503
    msg_fmt = "the compute-agent of host {host!r} cannot be reached: {problem}"


class ServiceUnavailable(ApiError):
    code, status = "service.unavailable", 503
    msg_fmt = "{problem}"


# --------------------------------------------------------------------------- auth
# None of these carries the presented token: `value` is never the secret.

_BEARER = 'Bearer realm="agents-controller"'


class AuthRequired(ApiError):
    code, status = "auth.required", 401
    headers = {"WWW-Authenticate": _BEARER}
    msg_fmt = (
        "this API needs a bearer token: send 'Authorization: Bearer <token>'"
        " (agentctl: AGENTS_TOKEN or [agentctl] token_file)"
    )


class AuthInvalid(ApiError):
    code, status = "auth.invalid", 401
    headers = {"WWW-Authenticate": _BEARER + ', error="invalid_token"'}
    msg_fmt = "{problem}"


class AuthForbidden(ApiError):
    code, status = "auth.forbidden", 403
    headers = {"WWW-Authenticate": _BEARER + ', error="insufficient_scope"'}
    msg_fmt = "token {name!r} has role {role}, which may only read; {request} needs role admin"


class AuthUnavailable(ApiError):
    code, status = "auth.unavailable", 503
    msg_fmt = "the controller cannot check tokens now: {problem}"
