"""The shapes agentctl relies on in the controller's answers (docs/api.md), checked at the edge.

Each check takes decoded JSON and returns it unchanged when the fields agentctl reads
are there with the right types, or raises `BadResponse` naming the request and the
field. Only what agentctl uses is checked: the controller may add fields freely, and
optional ones are read with `.get()` downstream. Pure; stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.ctl.errors import BadResponse

Json = dict[str, Any]
Check = Callable[[object, str], Json]

_STR = (str,)
_OPT_STR = (str, type(None))


def _object(value: object, request: str, what: str, fields: dict[str, tuple[type, ...]]) -> Json:
    if not isinstance(value, dict):
        raise BadResponse(
            request=request, problem=f"{what} is {type(value).__name__}, not an object"
        )
    for key, types in fields.items():
        if key not in value:
            raise BadResponse(request=request, problem=f"{what} has no {key!r}")
        # bool is an int to Python; a field meant as a number must not accept it, nor the reverse
        got = value[key]
        if not isinstance(got, types) or (isinstance(got, bool) and bool not in types):
            raise BadResponse(
                request=request,
                problem=f"{what}.{key} is {type(got).__name__} {got!r:.60}",
            )
    return value


def list_of(check: Check, value: object, request: str) -> list[Json]:
    if not isinstance(value, list):
        raise BadResponse(request=request, problem=f"expected a list, got {type(value).__name__}")
    return [check(item, request) for item in value]


def port(value: object, request: str) -> Json:
    return _object(value, request, "port", {"id": _STR})


def instance(value: object, request: str) -> Json:
    inst = _object(
        value,
        request,
        "instance",
        {"uuid": _STR, "name": _STR, "host": _OPT_STR, "state": _STR, "ports": (list,)},
    )
    for p in inst["ports"]:
        port(p, request)
    return inst


def accepted(value: object, request: str) -> Json:
    """The 202 of build, delete and reboot."""
    body = _object(
        value,
        request,
        "answer",
        {"request_id": _STR, "operation": _STR, "instances": (list,)},
    )
    if not body["instances"]:
        raise BadResponse(request=request, problem="the answer lists no instance")
    list_of(instance, body["instances"], request)
    return body


def event(value: object, request: str) -> Json:
    return _object(
        value,
        request,
        "event",
        {
            "id": (int,),
            "at": _STR,
            "event": _STR,
            "instance_uuid": _OPT_STR,
            "final": (bool,),
        },
    )


def timeline(value: object, request: str) -> Json:
    body = _object(value, request, "timeline", {"instance": (dict,), "events": (list,)})
    instance(body["instance"], request)
    list_of(event, body["events"], request)
    return body


def console_log(value: object, request: str) -> Json:
    return _object(value, request, "console log", {"text": _STR, "truncated": (bool,)})


def host(value: object, request: str) -> Json:
    return _object(value, request, "host", {"host": _STR, "kind": _STR, "state": _STR})


def named(value: object, request: str) -> Json:
    """A flavor or a network: agentctl reads their names only."""
    return _object(value, request, "entry", {"name": _STR})
