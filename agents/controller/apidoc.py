"""The API's OpenAPI document told the truth: error bodies, bearer auth, the event stream.

FastAPI generates the document from the routes; `finish()` then corrects what it cannot
know: every error is `{"error": {code, message, field, value, valid}}` (not FastAPI's
`{"detail": [...]}`), every route but /healthz needs a bearer token (401; 403 for a
reader's write), `/v1/events` answers `text/event-stream`, and a build's answer links
to the instance it made (OpenAPI links: what a client, or a fuzzer's stateful phase,
follows from a 202 to show, reboot and delete), and names, host names, flavors,
networks and `count` carry the constraints the handlers check (patterns, this
controller's choices, `[controller] max_count`). Pure: a dict in, the same dict out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# the validators of common.messages (Name, HostName), as JSON schema patterns
from common.messages import _HOST_RE, _NAME_RE

OPEN_PATHS = frozenset({"/healthz"})

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, namespaced"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
                "value": {},
                "valid": {"type": "array", "items": {"type": "string"}},
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
# One event of the stream as a client parses it (the fields of the SSE format; `data`
# is an EVENT of docs/api.md as JSON). Comments (`: keepalive`) are not events.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["timeline"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


# (path, method) of the build -> links to (path, method) it feeds, with the instance's uuid
_BUILD = ("/v1/instances", "post")
_FED_BY_BUILD = {
    "ShowInstance": ("/v1/instances/{ref}", "get"),
    "InstanceTimeline": ("/v1/instances/{ref}/timeline", "get"),
    "RebootInstance": ("/v1/instances/{ref}/reboot", "post"),
    "DeleteInstance": ("/v1/instances/{ref}", "delete"),
}


def _constrain(prop: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add `extra` to the string (or array) branch of a property, `anyOf` null or not."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("string", "array"):
            branch.update(extra)


def finish(
    schema: dict[str, Any],
    auth: bool,
    flavors: Sequence[str] = (),
    networks: Sequence[str] = (),
    max_count: int | None = None,
) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    patterns = {"name": _NAME_RE.pattern, "host": _HOST_RE.pattern}
    body = schemas.get("CreateBody", {}).get("properties", {})
    for key, pattern in patterns.items():
        if key in body:
            _constrain(body[key], {"pattern": pattern})
    if flavors and "flavor" in body:
        _constrain(body["flavor"], {"enum": list(flavors)})
    if networks and "networks" in body:
        _constrain(
            body["networks"],
            {"items": {"type": "string", "enum": list(networks)}, "uniqueItems": True},
        )
    if max_count is not None and "count" in body:
        body["count"]["maximum"] = max_count
    schemas["Error"] = ERROR_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if auth:
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a token of `agents-controller token add` (docs/security.md)",
            }
        }
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    for path, operations in paths.items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                if param.get("in") == "query" and param.get("name") in patterns:
                    _constrain(param.get("schema", {}), {"pattern": patterns[param["name"]]})
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error("a field failed validation (`field`, `value`)")
            responses["4XX"] = _error("an error (docs/api.md lists the codes)")
            if auth and path not in OPEN_PATHS:
                op["security"] = [{"bearer": []}]
                responses["401"] = _error("no token (auth.required) or an unknown one")
                if method not in ("get", "head"):
                    responses["403"] = _error("the token's role may only read (auth.forbidden)")
    events = paths.get("/v1/events", {}).get("get")
    if events is not None:
        events["responses"]["200"] = {
            "description": "server-sent events (`event: timeline`, `data: EVENT`)",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        }
    build = paths.get(_BUILD[0], {}).get(_BUILD[1])
    if build is not None and "202" in build.get("responses", {}):
        links = {}
        for name, (path, method) in _FED_BY_BUILD.items():
            target = paths.get(path, {}).get(method)
            if target is not None and "operationId" in target:
                links[name] = {
                    "operationId": target["operationId"],
                    "parameters": {"ref": "$response.body#/instances/0/uuid"},
                }
        build["responses"]["202"]["links"] = links
    return schema
